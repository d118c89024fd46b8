#!/usr/bin/env bash
# Memory of an idle edge daemon: an anchor and two `fedd edge` processes on 127.0.0.1
# train the CNN on synthetic run-to-failure data for two rounds (the default model and
# training settings), stop there, and after IDLE_S seconds with no training in
# progress the script prints each edge's resident set size and its peak:
#   idle_edge: edge=<i> rounds=2 rss_mb=<x> peak_rss_mb=<x>
# Usage: scripts/idle-edge-rss.sh   (FEDD=path/to/fedd; default: the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
FEDD="${FEDD:-$target/release/fedd}"
IDLE_S="${IDLE_S:-10}"
[ -x "$FEDD" ] || { echo "no fedd binary at $FEDD (cargo build --release)" >&2; exit 1; }

root=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$root"
}
trap cleanup EXIT

cat >"$root/node.toml" <<'EOF'
[protocol]
federation = "idle-rss"
heartbeat_ms = 300
member_timeout_ms = 3000
lease_ms = 3000
election_stagger_ms = 200
round_deadline_ms = 120000
round_gap_ms = 50
min_participants = 2
min_fit_fraction = 1.0
max_version = 2

[holdout]
machines = 4
EOF

# Reads a field of a node's status.json (empty while there is none).
status() {
  python3 - "$1/status.json" "$2" <<'EOF' 2>/dev/null || true
import json, sys
s = json.load(open(sys.argv[1]))
v = s.get(sys.argv[2])
print(v[0] if isinstance(v, list) else v)
EOF
}

# Waits up to $3 seconds for `status $1 $2` to be non-empty / at least $4.
wait_for() {
  local dir=$1 field=$2 limit=$3 min=${4:-} t=0 v
  while :; do
    v=$(status "$dir" "$field")
    if [ -n "$v" ] && { [ -z "$min" ] || [ "$v" -ge "$min" ] 2>/dev/null; }; then
      echo "$v"; return 0
    fi
    t=$((t + 1))
    [ "$t" -le $((limit * 5)) ] || { echo "timed out waiting for $field in $dir" >&2; return 1; }
    sleep 0.2
  done
}

mkdir -p "$root/anchor"
"$FEDD" anchor --config "$root/node.toml" --data-dir "$root/anchor" \
  --listen /ip4/127.0.0.1/tcp/0 >"$root/anchor/out" 2>"$root/anchor/log" &
pids+=($!)
addr=$(wait_for "$root/anchor" listen 30)
for i in 1 2; do
  mkdir -p "$root/edge-$i"
  "$FEDD" edge --config "$root/node.toml" --data-dir "$root/edge-$i" \
    --listen /ip4/127.0.0.1/tcp/0 --anchor "$addr" --synthetic-machines 12 \
    >"$root/edge-$i/out" 2>"$root/edge-$i/log" &
  pids+=($!)
done
wait_for "$root/anchor" version 600 2 >/dev/null
sleep "$IDLE_S"
for i in 1 2; do
  pid=${pids[$i]}
  rss=$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
  peak=$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
  echo "idle_edge: edge=$i rounds=$(status "$root/edge-$i" rounds_trained) rss_mb=$rss peak_rss_mb=$peak"
done
