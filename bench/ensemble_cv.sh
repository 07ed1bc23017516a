#!/usr/bin/env bash
# Cross-validation of a two-network file: for each fold, `tvunet ensemble` puts fold k of CV_A
# (fed the slice) and fold k of CV_B (fed its top-bottom mirror) in one file at that fold's
# threshold, and `tvunet eval` scores the file on the fold's validation slices through the
# device's inference code.
#
#   bench/ensemble_cv.sh CV_A CV_B OUT "T0 T1 T2 T3 T4"
#
# The thresholds are each fold's own, chosen on its validation slices with the same averaging
# (`python3 bench/pair.py CV_A CV_B` prints them). Writes OUT/fold<k>.onnx, OUT/eval<k>/ and
# OUT/cv.json.
set -euo pipefail
a=$1 b=$2 out=$3
read -r -a thresholds <<< "$4"
bin=${TVUNET:-target/release/tvunet}
data=${CV_DATA:-../shared/data/medseg/infnet_medseg100}
mkdir -p "$out"
for k in "${!thresholds[@]}"; do
    "$bin" ensemble --model "$a/fold$k.onnx" --model "$b/fold$k.onnx" \
        --mirror none --mirror top-bottom --threshold "${thresholds[$k]}" \
        --out "$out/fold$k.onnx" --data "$data" > "$out/fold$k.log" 2>&1
    RAYON_NUM_THREADS=1 "$bin" eval --model "$out/fold$k.onnx" --data "$data" \
        --split "$a/fold$k/split.json" --out "$out/eval$k" >> "$out/fold$k.log" 2>&1
    echo "fold $k: $(tail -2 "$out/fold$k.log" | head -1)"
done
python3 "$(dirname "$0")/cv_summary.py" "$out" "${#thresholds[@]}"
