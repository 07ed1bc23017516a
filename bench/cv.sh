#!/usr/bin/env bash
# Cross-validation of a training recipe: trains each fold, exports it, evaluates it on its own
# validation slices through the device's inference code, and summarises mean and spread.
#
#   bench/cv.sh OUT FOLDS LANES -- [tvunet train arguments, without --out/--fold/--folds]
#
# LANES runs train side by side, one thread each (two on this 2-core machine). CV_FOLDS="1 2"
# trains only those folds (another run with the same recipe, seed and fold is the same run, so
# its folder can be copied in as OUT/fold<k> with its evaluation as OUT/eval<k>).
# "{fold}" in an argument becomes the fold number, for inputs made per fold (for example
# --extra-data out/soft/fold{fold}, soft labels from that fold's own teacher).
# Writes OUT/fold<k>/ (run), OUT/fold<k>.onnx, OUT/eval<k>/report.json and OUT/cv.json.
set -euo pipefail
out=$1 folds=$2 lanes=$3
shift 3
[ "${1:-}" = "--" ] && shift
bin=${TVUNET:-target/release/tvunet}
data=${CV_DATA:-../shared/data/medseg/infnet_medseg100}
mkdir -p "$out"

one_fold() {
    local k=$1
    RAYON_NUM_THREADS=1 "$bin" train --data "$data" --out "$out/fold$k" --folds "$folds" \
        --fold "$k" "${@:2}" > "$out/fold$k.log" 2>&1
    "$bin" export --checkpoint "$out/fold$k" --out "$out/fold$k.onnx" --data "$data" \
        >> "$out/fold$k.log" 2>&1
    RAYON_NUM_THREADS=1 "$bin" eval --model "$out/fold$k.onnx" --data "$data" \
        --split "$out/fold$k/split.json" --out "$out/eval$k" >> "$out/fold$k.log" 2>&1
    echo "fold $k done"
}

running=0
for k in ${CV_FOLDS:-$(seq 0 $((folds - 1)))}; do
    if [ -f "$out/eval$k/report.json" ]; then
        echo "fold $k already evaluated"
        continue
    fi
    one_fold "$k" "${@//\{fold\}/$k}" &
    running=$((running + 1))
    if [ "$running" -ge "$lanes" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait
for k in $(seq 0 $((folds - 1))); do
    [ -f "$out/eval$k/report.json" ] || { echo "fold $k not evaluated yet"; exit 0; }
done
python3 "$(dirname "$0")/cv_summary.py" "$out" "$folds"
