"""Does averaging the network over mirror images of the input (test-time flips) help? Checked
on a cross-validation's fold models.

    python3 bench/flips.py CV_DIR    (needs numpy, onnxruntime, onnx, pillow)

CV_DIR is a bench/cv.sh folder (fold<k>.onnx, fold<k>/split.json). Each fold's model runs in
onnxruntime on its own validation slices, preprocessed as the device does, once per mirror image
of the input plane; each map is mirrored back and the maps are averaged as the device's
`FlipAverage` does. Every setting is scored by mean per-slice Dice at a threshold chosen on the
other folds' slices (and at each fold's own threshold from its metadata), with the difference
against no averaging as a 95 % bootstrap interval over slices. A comparison for the model card,
not part of the product.
"""

import json
import os
import random
import sys

import numpy as np
import onnx
from PIL import Image

from fold_models import normalise, session, slice_and_mask

SETTINGS = {
    "none": [(False, False)],
    "left-right": [(False, False), (True, False)],
    "top-bottom": [(False, False), (False, True)],
    "four-way": [(False, False), (True, False), (False, True), (True, True)],
}
THRESHOLDS = [round(0.1 + 0.05 * i, 2) for i in range(17)]  # training's grid, 0.10..0.90


def mirror(plane, left_right, top_bottom):
    if left_right:
        plane = plane[:, ::-1]
    if top_bottom:
        plane = plane[::-1, :]
    return np.ascontiguousarray(plane)


def mirrored_maps(model, image):
    """The network's map for each mirror image of the input plane, mirrored back, at the
    network's side: {(left_right, top_bottom): map}."""
    sess, side, normalisation = model
    plane = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), np.float32)
    plane = normalise(plane, normalisation).astype(np.float32)
    maps = {}
    for lr, tb in SETTINGS["four-way"]:
        x = mirror(plane, lr, tb)[None, None]
        out = sess.run(None, {sess.get_inputs()[0].name: x})[0][0, 0]
        maps[(lr, tb)] = mirror(out, lr, tb)
    return maps


def counts(prob, truth, threshold):
    """(overlap, marked, lesion) pixels at `threshold`."""
    pred = prob >= threshold
    return int((pred & truth).sum()), int(pred.sum()), int(truth.sum())


def dice(c):
    overlap, marked, lesion = c
    return 1.0 if marked + lesion == 0 else 2.0 * overlap / (marked + lesion)


def validation_thresholds(cases, name, folds):
    """As training chooses: each fold's threshold maximises pooled Dice over its validation
    slices (`cases`: (fold, id, {setting: {threshold: counts}})), and a model trained on every
    slice takes their mean on the same grid. Returns (per-fold thresholds, that mean)."""
    chosen = []
    for k in folds:
        def pooled(t):
            return dice(np.sum([s[name][t] for j, _, s in cases if j == k], axis=0))
        chosen.append(max(THRESHOLDS, key=pooled))
    return chosen, round(round(np.mean(chosen) / 0.05) * 0.05, 2)


def interval(diffs, rounds=2000):
    rng = random.Random(7)
    means = sorted(
        float(np.mean([rng.choice(diffs) for _ in diffs])) for _ in range(rounds)
    )
    return means[int(0.025 * rounds)], means[int(0.975 * rounds)]


def main():
    root = sys.argv[1]
    folds = [k for k in range(5) if os.path.isfile(f"{root}/fold{k}.onnx")]
    # per (fold, slice): truth and the averaged map of each setting at slice size
    cases = []
    own_threshold = {}
    for k in folds:
        path = f"{root}/fold{k}.onnx"
        meta = {p.key: p.value for p in onnx.load(path).metadata_props}
        own_threshold[k] = float(meta["tvunet.threshold"])
        model = session(path)
        split = json.load(open(f"{root}/fold{k}/split.json"))
        for sid in split["validation"]:
            image, truth = slice_and_mask(sid)
            maps = mirrored_maps(model, image)
            averaged = {}
            for name, mirrors in SETTINGS.items():
                mean = np.mean([maps[m] for m in mirrors], axis=0).astype(np.float32)
                averaged[name] = np.asarray(
                    Image.fromarray(mean).resize(image.shape[::-1], Image.BILINEAR)
                )
            scores = {
                name: {t: counts(p, truth, t) for t in THRESHOLDS + [own_threshold[k]]}
                for name, p in averaged.items()
            }
            cases.append((k, sid, scores))
    print(f"{root}: folds {folds}, {len(cases)} slices")

    def per_slice(name, rule):
        out = []
        for k in folds:
            if rule == "other folds":
                def others(t):
                    return np.mean([dice(s[name][t]) for j, _, s in cases if j != k])
                t = max(THRESHOLDS, key=others)
            else:
                t = own_threshold[k]
            out += [dice(s[name][t]) for j, _, s in cases if j == k]
        return out

    for name in SETTINGS:
        chosen, mean = validation_thresholds(cases, name, folds)
        print(f"{name:>10}: validation-chosen thresholds {chosen}, mean on the grid {mean}")

    for rule in ("other folds", "fold's own"):
        base = per_slice("none", rule)
        print(f"threshold: {rule}")
        for name in SETTINGS:
            values = per_slice(name, rule)
            diffs = [a - b for a, b in zip(values, base)]
            low, high = interval(diffs)
            gained = sum(d > 0 for d in diffs)
            lost = sum(d < 0 for d in diffs)
            print(
                f"  {name:>10}: mean per-slice Dice {np.mean(values):.4f}  vs none "
                f"{np.mean(diffs):+.4f} ({low:+.4f}..{high:+.4f}), {gained} gained, {lost} lost"
            )


if __name__ == "__main__":
    main()
