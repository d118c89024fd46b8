#!/usr/bin/env bash
# Training throughput (windows/s per epoch) of burn (flex CPU backend, this repo's
# model crate) against Keras on tensorflow-cpu, same CNN and LSTM, same window count
# and shape (30 × 14), batch 64, Adam, measured side by side in one run.
#
# Usage: scripts/bench-keras.sh [MACHINES [EPOCHS]]
#   MACHINES: synthetic run-to-failure machines for the burn bench [60]; the Keras
#   side trains on the same number of windows. EPOCHS per measurement [3].
# Creates .venv-tf (gitignored) with `pip install tensorflow-cpu` on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
MACHINES=${1:-60}
EPOCHS=${2:-3}
VENV=.venv-tf
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import tensorflow" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q tensorflow-cpu
fi
echo "# cores: $(nproc); burn bench: cargo bench -p model --bench train_epoch -- $MACHINES $EPOCHS" >&2
burn_json=$(cargo bench -q -p model --bench train_epoch -- "$MACHINES" "$EPOCHS" 2>/dev/null | grep '^{')
echo "$burn_json"
windows=$(echo "$burn_json" | head -1 | sed 's/.*"windows":\([0-9]*\).*/\1/')
keras_json=$("$VENV/bin/python" scripts/keras_bench.py "$windows" "$EPOCHS" 2>/dev/null | grep '^{')
echo "$keras_json"
echo
echo "| model | windows | burn (flex) windows/s | Keras (TF-CPU) windows/s | burn / Keras |"
echo "|---|---|---|---|---|"
for arch in cnn lstm; do
  b=$(echo "$burn_json" | grep "\"arch\":\"$arch\"" | sed 's/.*"epoch_s":\([0-9.]*\).*/\1/')
  k=$(echo "$keras_json" | grep "\"arch\": \"$arch\"" | sed 's/.*"epoch_s": \([0-9.]*\).*/\1/')
  awk -v a="${arch^^}" -v n="$windows" -v b="$b" -v k="$k" \
    'BEGIN { printf "| %s | %d | %.0f | %.0f | %.2f× |\n", a, n, n / b, n / k, k / b }'
done
