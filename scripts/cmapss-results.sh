#!/usr/bin/env bash
# FD001 results table: centralized vs federated (5 edges; iid, quantity, lifetime
# splits; FedAvg), CNN and LSTM, validation RMSE and PHM08 score on 20 held-out
# whole training engines, mean ± std over seeds, wall time per run.
#
# Usage: scripts/cmapss-results.sh [OUT_DIR]
# Environment (defaults in brackets):
#   CMAPSS_DIR   [../shared/data/cmapss]   folder with train_FD001.txt
#   ARCHS        [cnn lstm]                architectures
#   SETTINGS     [central iid quantity lifetime]
#   SEEDS        [1 2 3 4 5]               seeds (LSTM_SEEDS overrides for lstm)
#   LSTM_SEEDS   [$SEEDS]
#   EPOCHS       [60]   max centralized epochs      ROUNDS [40] max federated rounds
#   LSTM_EPOCHS  [30]                               LSTM_ROUNDS [30]
#   EXTRA        []     extra `fedctl train` flags (same for every run)
# Writes one log per run and table.md into OUT_DIR [out/cmapss-results]; prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/cmapss-results}
DIR=${CMAPSS_DIR:-../shared/data/cmapss}
ARCHS=${ARCHS:-cnn lstm}
SETTINGS=${SETTINGS:-central iid quantity lifetime}
SEEDS=${SEEDS:-1 2 3 4 5}
LSTM_SEEDS=${LSTM_SEEDS:-$SEEDS}
EPOCHS=${EPOCHS:-60}
ROUNDS=${ROUNDS:-40}
LSTM_EPOCHS=${LSTM_EPOCHS:-30}
LSTM_ROUNDS=${LSTM_ROUNDS:-30}
EXTRA=${EXTRA:-}
[ -f "$DIR/train_FD001.txt" ] || { echo "missing $DIR/train_FD001.txt (set CMAPSS_DIR)" >&2; exit 1; }
if ! cargo build --release -p fedctl >&2; then
  # Other crates of the workspace may be mid-edit; an existing binary still serves.
  [ -x target/release/fedctl ] || exit 1
  echo "warning: build failed, using the existing target/release/fedctl" >&2
fi
FEDCTL=target/release/fedctl
mkdir -p "$OUT"
for arch in $ARCHS; do
  seeds=$SEEDS; epochs=$EPOCHS; rounds=$ROUNDS
  if [ "$arch" = lstm ]; then seeds=$LSTM_SEEDS; epochs=$LSTM_EPOCHS; rounds=$LSTM_ROUNDS; fi
  for setting in $SETTINGS; do
    for seed in $seeds; do
      log="$OUT/$arch-$setting-$seed.log"
      if [ -s "$log" ] && grep -q '^best:' "$log"; then continue; fi
      if [ "$setting" = central ]; then
        args=(--epochs "$epochs")
      else
        args=(--federated --edges 5 --split "$setting" --rounds "$rounds" --local-epochs 1 --strategy fedavg)
      fi
      # shellcheck disable=SC2086
      cmd=("$FEDCTL" train --data "$DIR/train_FD001.txt" --model "$arch" "${args[@]}" --seed "$seed" $EXTRA --out "$OUT/$arch-$setting-$seed.gfm")
      echo "# ${cmd[*]}" >&2
      "${cmd[@]}" >"$log.tmp" 2>&1
      mv "$log.tmp" "$log"
      grep '^best:' "$log" >&2
    done
  done
done

# Test-protocol metrics on the held-out engines (cut at every raw RUL 7..145, last
# window, raw-RUL target), recomputed from each model file.
for model in "$OUT"/*.gfm; do
  [ -e "$model" ] || continue
  cut="${model%.gfm}.log.cut"
  [ -s "$cut" ] || "$FEDCTL" evaluate --model "$model" --data "$DIR/train_FD001.txt" --holdout >"$cut"
done

# One row per (arch, setting): mean ± std (sample std) over the seeds that finished.
{
  echo "| model | training | seeds | val RMSE (all windows) | val score / 100 windows | test-style RMSE (held-out cuts) | test-style score / 100 cuts | best step | wall time / run |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for arch in $ARCHS; do
    for setting in $SETTINGS; do
      files=$(ls "$OUT/$arch-$setting-"*.log 2>/dev/null || true)
      [ -n "$files" ] || continue
      label=$([ "$setting" = central ] && echo "centralized" || echo "federated, 5 edges, $setting")
      for f in $files; do
        echo "$(grep -h '^best:' "$f") $(sed 's/\([a-z]*\)=/cut_\1=/g' "$f.cut" 2>/dev/null)"
      done | awk -v arch="${arch^^}" -v label="$label" '
        function kv(key,   i, p) { for (i = 2; i <= NF; i++) { split($i, p, "="); if (p[1] == key) return p[2] } }
        { n++; r[n] = kv("val_rmse"); s[n] = 100 * kv("val_score") / kv("val_n"); st[n] = kv("step"); w[n] = kv("wall_s")
          cr[n] = kv("cut_rmse"); cs[n] = 100 * kv("cut_score") / kv("cut_n") }
        function mean(a,   i, t) { t = 0; for (i = 1; i <= n; i++) t += a[i]; return t / n }
        function sd(a,   i, m, t) { if (n < 2) return 0; m = mean(a); t = 0; for (i = 1; i <= n; i++) t += (a[i] - m) ^ 2; return sqrt(t / (n - 1)) }
        END {
          if (n > 1) { rs = sprintf("%.2f ± %.2f", mean(r), sd(r)); ss = sprintf("%.0f ± %.0f", mean(s), sd(s))
                       crs = sprintf("%.2f ± %.2f", mean(cr), sd(cr)); css = sprintf("%.0f ± %.0f", mean(cs), sd(cs)) }
          else { rs = sprintf("%.2f", mean(r)); ss = sprintf("%.0f", mean(s)); crs = sprintf("%.2f", mean(cr)); css = sprintf("%.0f", mean(cs)) }
          printf "| %s | %s | %d | %s | %s | %s | %s | %.0f | %.0f s |\n", arch, label, n, rs, ss, crs, css, mean(st), mean(w)
        }'
    done
  done
  echo "| DCNN, Li et al. 2018 (published, FD001 **test** set) | centralized | – | – | – | 12.61 (test set) | 273.7 (100 engines) | – | – |"
  echo "| LSTM, Zheng et al. 2017 (published, FD001 **test** set) | centralized | – | – | – | 16.14 (test set) | 338 (100 engines) | – | – |"
} | tee "$OUT/table.md"
