#!/usr/bin/env bash
# How a cross-validated recipe copes with slices exported in another window: every fold's
# model is evaluated on its own validation slices, re-windowed (`tvunet eval --grey-*`), with
# the device's inference code at the fold's own threshold.
#
#   bench/windows.sh CV_DIR OUT
#
# CV_DIR is a bench/cv.sh folder (fold<k>.onnx, fold<k>/split.json). Prints, for each change,
# the mean per-slice Dice over all validation slices and the worst slice.
set -euo pipefail
cv=$1 out=$2
bin=${TVUNET:-target/release/tvunet}
data=${CV_DATA:-../shared/data/medseg/infnet_medseg100}
changes=(
    "as stored|1 1 0"
    "greyer: x0.6 + 60|1 0.6 60"
    "much greyer: x0.4 + 90|1 0.4 90"
    "narrower: x1.4 - 40, clipped|1 1.4 -40"
    "darker: x0.8|1 0.8 0"
    "gamma 0.5 (darks lifted)|0.5 1 0"
    "gamma 2 (darks crushed)|2 1 0"
)
mkdir -p "$out"
for entry in "${changes[@]}"; do
    name=${entry%%|*}
    read -r gamma scale offset <<< "${entry##*|}"
    tag=$(echo "$gamma-$scale-$offset" | tr -d ' ')
    for k in 0 1 2 3 4; do
        [ -f "$cv/fold$k.onnx" ] || continue
        RAYON_NUM_THREADS=1 "$bin" eval --model "$cv/fold$k.onnx" --data "$data" \
            --split "$cv/fold$k/split.json" --out "$out/$tag/eval$k" --grey-gamma "$gamma" \
            --grey-scale "$scale" --grey-offset "$offset" > /dev/null 2>&1
    done
    python3 - "$out/$tag" "$name" <<'PY'
import json, pathlib, sys
dice = []
for report in sorted(pathlib.Path(sys.argv[1]).glob("eval*/report.json")):
    dice += [d for _, d in json.loads(report.read_text())["per_slice"]]
mean = sum(dice) / len(dice)
print(f"{sys.argv[2]:32s} mean per slice {mean:.3f}  worst {min(dice):.3f}  ({len(dice)} slices)")
PY
done
