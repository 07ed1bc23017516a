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
import onnx
import onnxruntime as ort
from PIL import Image

DATA = "../shared/data/medseg/infnet_medseg100"
THRESHOLDS = [0.3, 0.35, 0.4, 0.45, 0.5]


def probability(session, side, image):
    plane = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), np.float32)
    plane = (plane - plane.mean()) / max(plane.std(), 1.0)
    name = session.get_inputs()[0].name
    prob = session.run(None, {name: plane[None, None]})[0][0, 0]
    return np.asarray(Image.fromarray(prob).resize(image.shape[::-1], Image.BILINEAR))


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    side = int({p.key: p.value for p in onnx.load(path).metadata_props}["tvunet.input_size"])
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]), side


def main():
    roots = sys.argv[1:]
    folds = [k for k in range(5) if all(os.path.isfile(f"{r}/fold{k}.onnx") for r in roots)]
    probs, truths = {}, {}
    for k in folds:
        split = json.load(open(f"{roots[0]}/fold{k}/split.json"))
        models = [session(f"{r}/fold{k}.onnx") for r in roots]
        for sid in split["validation"]:
            image = np.asarray(Image.open(f"{DATA}/images/{sid}.jpg").convert("L"))
            truths[(k, sid)] = np.asarray(Image.open(f"{DATA}/masks_binary/{sid}.png")) > 127
            for r, (s, side) in zip(roots, models):
                probs[(r, k, sid)] = probability(s, side, image)

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
