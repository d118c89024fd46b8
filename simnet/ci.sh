#!/usr/bin/env bash
# CI gate for simnet (called by .ci/run): the same seed twice gives the same trace hash,
# another seed a different one, and a 200-seed sweep with faults has no failure.
set -euo pipefail
cd "$(dirname "$0")/.."
SIMNET="${SIMNET:-target/release/simnet}"
[ -x "$SIMNET" ] || cargo build --release -q -p simnet
run() { "$SIMNET" run --peers 40 --rounds 20 --seed "$1" --trainer fake | tail -n 1; }
a=$(run 7); b=$(run 7); c=$(run 8)
echo "$a"; echo "$c"
hash() { sed -n 's/.*trace_hash=\([0-9a-f]*\).*/\1/p' <<<"$1"; }
[ -n "$(hash "$a")" ] || { echo "no trace hash in: $a" >&2; exit 1; }
[ "$(hash "$a")" = "$(hash "$b")" ] || { echo "seed 7 gave two different traces" >&2; exit 1; }
[ "$(hash "$a")" != "$(hash "$c")" ] || { echo "seeds 7 and 8 gave the same trace" >&2; exit 1; }
grep -q ' safety_violations=0 ' <<<"$a "
out=$("$SIMNET" sweep --seeds 1..200 | tail -n 1)
echo "$out"
[ "$out" = "sweep: seeds=200 failed=0 safety_violations=0 liveness_failures=0" ]
