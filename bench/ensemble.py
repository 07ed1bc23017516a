"""Would averaging two or more networks' probability maps help? Checked on cross-validations.

    python3 bench/ensemble.py CV_DIR [CV_DIR ...]    (needs numpy, onnxruntime, pillow)

Each CV_DIR is a bench/cv.sh folder of the same folds (fold<k>.onnx, fold<k>/split.json). On
each fold present in all of them, every model runs on the fold's validation slices in
onnxruntime (bilinear resize and per-slice standardisation, as the device does); every
non-empty combination of the folders is scored by mean per-slice Dice at a threshold chosen on
the other folds' slices. A comparison for the model card, not part of the product.
"""

import itertools
import json
import os
import sys

import numpy as np

from fold_models import probability, session, slice_and_mask

THRESHOLDS = [0.3, 0.35, 0.4, 0.45, 0.5]


def main():
    roots = sys.argv[1:]
    folds = [k for k in range(5) if all(os.path.isfile(f"{r}/fold{k}.onnx") for r in roots)]
    probs, truths = {}, {}
    for k in folds:
        split = json.load(open(f"{roots[0]}/fold{k}/split.json"))
        models = [session(f"{r}/fold{k}.onnx") for r in roots]
        for sid in split["validation"]:
            image, truths[(k, sid)] = slice_and_mask(sid)
            for r, model in zip(roots, models):
                probs[(r, k, sid)] = probability(model, image)

    def scores(combo, threshold, k):
        out = []
        for (j, sid), truth in truths.items():
            if j == k:
                pred = np.mean([probs[(r, k, sid)] for r in combo], axis=0) >= threshold
                out.append(2.0 * (pred & truth).sum() / (pred.sum() + truth.sum()))
        return out

    print(f"folds {folds}, {len(truths)} slices")
    for n in range(1, len(roots) + 1):
        for combo in itertools.combinations(roots, n):
            dice = []
            for k in folds:
                def others(t):
                    return np.mean([d for j in folds if j != k for d in scores(combo, t, j)])
                dice += scores(combo, max(THRESHOLDS, key=others), k)
            print(f"{' + '.join(combo)}: mean per-slice Dice {np.mean(dice):.4f}")


if __name__ == "__main__":
    main()
