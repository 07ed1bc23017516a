"""Would post-processing the thresholded map help? Checked on a cross-validation's fold models.

    python3 bench/postprocess.py CV_DIR       (needs numpy, onnxruntime, pillow, scipy)

CV_DIR is a bench/cv.sh folder (fold<k>.onnx, fold<k>/split.json). Each fold's model runs on
its own validation slices in onnxruntime (bilinear resize and per-slice standardisation, as
the device does). Candidates: the threshold, a second higher threshold that an 8-connected
lesion must reach somewhere to be kept (hysteresis), and a smallest lesion area as a share of
the slice. For each fold the candidate is chosen on the other folds' slices only, then scored
on this fold's. Prints the mean per-slice Dice with the threshold alone and with the best
post-processing, and their difference with a 95 % bootstrap interval over slices. A
comparison for the model card, not part of the product.
"""

import json
import sys

import numpy as np
from scipy import ndimage

from fold_models import probability, session, slice_and_mask

THRESHOLDS = [0.3, 0.35, 0.4, 0.45, 0.5]
HIGH = [0.0, 0.6, 0.7, 0.8, 0.9]
MIN_SHARE = [0.0, 0.0002, 0.0005, 0.001, 0.002]


def dice(pred, truth):
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2.0 * (pred & truth).sum() / total


def post(prob, threshold, high, min_share):
    mask = prob >= threshold
    if high <= threshold and min_share == 0:
        return mask
    labels, n = ndimage.label(mask, np.ones((3, 3)))
    if n == 0:
        return mask
    index = np.arange(1, n + 1)
    peak = np.asarray(ndimage.maximum(prob, labels, index))
    area = np.asarray(ndimage.sum(mask, labels, index))
    keep = (peak >= high) & (area >= min_share * mask.size)
    return np.concatenate([[False], keep])[labels]


def main():
    root = sys.argv[1]
    grid = [(t, h, a) for t in THRESHOLDS for h in HIGH for a in MIN_SHARE]
    scores = {}
    for k in range(5):
        split = json.load(open(f"{root}/fold{k}/split.json"))
        model = session(f"{root}/fold{k}.onnx")
        for sid in split["validation"]:
            image, truth = slice_and_mask(sid)
            prob = probability(model, image)
            for g in grid:
                scores.setdefault((k, g), []).append(dice(post(prob, *g), truth))
    folds = sorted({k for k, _ in scores})
    plain, best = [], []
    for k in folds:
        def others(g):
            return np.mean([d for j in folds if j != k for d in scores[(j, g)]])
        plain += scores[(k, max([(t, 0.0, 0.0) for t in THRESHOLDS], key=others))]
        chosen = max(grid, key=others)
        best += scores[(k, chosen)]
        print(f"fold {k}: chosen threshold {chosen[0]}, high {chosen[1]}, min share {chosen[2]}")
    diff = np.array(best) - np.array(plain)
    rng = np.random.default_rng(0)
    boot = [rng.choice(diff, len(diff)).mean() for _ in range(2000)]
    low, high = np.percentile(boot, [2.5, 97.5])
    print(f"threshold alone {np.mean(plain):.4f}, with post-processing {np.mean(best):.4f}, "
          f"difference {diff.mean():+.4f} (95 % interval {low:+.4f}..{high:+.4f})")


if __name__ == "__main__":
    main()
