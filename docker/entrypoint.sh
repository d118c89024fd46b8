#!/bin/sh
# Entrypoint of the gossipfed image.
#
#   fedd-entrypoint anchor [fedd flags...]   run the anchor
#   fedd-entrypoint edge   [fedd flags...]   run an edge
#   fedd-entrypoint <anything else>          exec it (e.g. `fedctl status --dir /data`)
#
# Identity bootstrapping. Edges must know the anchor's libp2p peer id (its multiaddr ends in
# /p2p/<peer id>), and the anchor creates its identity key on its first start. So:
#   * the anchor, once started, writes its peer id to $FEDD_BOOTSTRAP_DIR/anchor.peer_id
#     (a volume shared with the edges, read-only there; the key itself is never shared);
#   * an edge takes the anchor's peer id from $FEDD_ANCHOR_PEER_ID or, when unset, waits
#     (bounded) for that file; it resolves $FEDD_ANCHOR_HOST to an IPv4 address (fedd has no
#     DNS transport, so it dials /ip4/...) and passes
#     --anchor /ip4/<ip>/tcp/$FEDD_ANCHOR_PORT/p2p/<peer id>.
#   * $FEDD_ANCHOR (a complete multiaddr) skips all of that.
#   * $FEDD_IDENTITY_FILE (anchor): a pre-generated identity.key (e.g. a Kubernetes Secret)
#     copied into the data dir on first start, so the peer id is known in advance.
#   * FEDD_SEED_FROM_ORDINAL=1 (edge): derive --seed and --synthetic-seed from the ordinal of
#     a StatefulSet pod name (edge-0, edge-1, ...), so identical pods get their own data.
#
# MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME and OTEL_EXPORTER_OTLP_ENDPOINT are read by
# fedd itself.
set -eu

DATA=${FEDD_DATA_DIR:-/data}
BOOT=${FEDD_BOOTSTRAP_DIR:-/bootstrap}
CONFIG=${FEDD_CONFIG:-}
WAIT_S=${FEDD_WAIT_S:-180}

log() { echo "fedd-entrypoint: $*" >&2; }

peer_id_of() {
    sed -n 's/^ *"peer_id": *"\([^"]*\)".*/\1/p' "$1" 2>/dev/null | head -n 1
}

publish_peer_id() {
    i=0
    while [ "$i" -lt $((WAIT_S * 5)) ]; do
        peer=$(peer_id_of "$DATA/status.json")
        if [ -n "$peer" ]; then
            printf '%s\n' "$peer" >"$BOOT/anchor.peer_id.tmp"
            mv "$BOOT/anchor.peer_id.tmp" "$BOOT/anchor.peer_id"
            log "published the anchor's peer id $peer to $BOOT/anchor.peer_id"
            return 0
        fi
        sleep 0.2
        i=$((i + 1))
    done
    log "warning: the anchor wrote no status.json within ${WAIT_S} s; peer id not published"
}

run_anchor() {
    mkdir -p "$DATA"
    if [ -n "${FEDD_IDENTITY_FILE:-}" ] && [ ! -e "$DATA/identity.key" ]; then
        cp "$FEDD_IDENTITY_FILE" "$DATA/identity.key"
        chmod 600 "$DATA/identity.key"
        log "identity installed from $FEDD_IDENTITY_FILE"
    fi
    if [ -d "$BOOT" ] && [ -w "$BOOT" ]; then
        # status.json is rewritten at every start; publish once the new one is there.
        rm -f "$DATA/status.json" "$BOOT/anchor.peer_id"
        publish_peer_id &
    fi
    exec fedd anchor ${CONFIG:+--config "$CONFIG"} --data-dir "$DATA" "$@"
}

resolve_ipv4() {
    getent ahostsv4 "$1" 2>/dev/null | head -n 1 | cut -d ' ' -f 1
}

run_edge() {
    anchor=${FEDD_ANCHOR:-}
    if [ -z "$anchor" ]; then
        host=${FEDD_ANCHOR_HOST:-anchor}
        port=${FEDD_ANCHOR_PORT:-4001}
        peer=${FEDD_ANCHOR_PEER_ID:-}
        ip=""
        i=0
        while [ "$i" -lt $((WAIT_S * 5)) ]; do
            [ -n "$peer" ] || peer=$(cat "$BOOT/anchor.peer_id" 2>/dev/null || true)
            [ -n "$ip" ] || ip=$(resolve_ipv4 "$host")
            [ -n "$peer" ] && [ -n "$ip" ] && break
            sleep 0.2
            i=$((i + 1))
        done
        if [ -z "$peer" ] || [ -z "$ip" ]; then
            log "no anchor after ${WAIT_S} s (peer id '${peer}', $host -> '${ip}');" \
                "set FEDD_ANCHOR or FEDD_ANCHOR_PEER_ID, or mount the anchor's bootstrap volume"
            exit 1
        fi
        anchor="/ip4/$ip/tcp/$port/p2p/$peer"
    fi
    log "anchor at $anchor"
    if [ "${FEDD_SEED_FROM_ORDINAL:-0}" = 1 ]; then
        ordinal=${HOSTNAME##*-}
        case $ordinal in '' | *[!0-9]*) ordinal=0 ;; esac
        set -- --seed $((ordinal + 1)) --synthetic-seed $((1000 + ordinal + 1)) "$@"
    fi
    exec fedd edge ${CONFIG:+--config "$CONFIG"} --data-dir "$DATA" --anchor "$anchor" "$@"
}

case "${1:-}" in
anchor)
    shift
    run_anchor "$@"
    ;;
edge)
    shift
    run_edge "$@"
    ;;
'' | -*)
    exec fedd "$@"
    ;;
*)
    exec "$@"
    ;;
esac
