"""Would two networks in one file beat one network averaged over its mirror image? Checked on
two cross-validations of the same folds.

    python3 bench/pair.py CV_A CV_B    (needs numpy, onnxruntime, onnx, pillow)

Each fold's two models run in onnxruntime on the fold's validation slices (preprocessed as the
device does), on the input plane and on its top-bottom mirror image (each map mirrored back).
The settings below average those maps; every one is scored by mean per-slice Dice, with each
fold's threshold chosen as training chooses it (pooled Dice over the fold's own validation
slices, with that setting's averaging) and, apart, on the other folds' slices. Differences are
against A averaged over its mirror image (two inferences, as the shipped file does), with 95 %
bootstrap intervals over slices. A comparison for the model card, not part of the product.
"""

import json
import os
import sys

import numpy as np
from PIL import Image

from flips import THRESHOLDS, counts, dice, interval, mirror, validation_thresholds
from fold_models import normalise, session, slice_and_mask

# setting -> the maps averaged, each (model, top-bottom mirror)
SETTINGS = {
    "A": [("A", False)],
    "B": [("B", False)],
    "A, top-bottom": [("A", False), ("A", True)],
    "B, top-bottom": [("B", False), ("B", True)],
    "A + B": [("A", False), ("B", False)],
    "A + B mirrored": [("A", False), ("B", True)],
    "A, top-bottom + B, top-bottom": [("A", False), ("A", True), ("B", False), ("B", True)],
}
INFERENCES = {name: len(maps) for name, maps in SETTINGS.items()}
BASE = "A, top-bottom"


def maps_of(model, image):
    sess, side, normalisation = model
    plane = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), np.float32)
    plane = normalise(plane, normalisation).astype(np.float32)
    out = {}
    for tb in (False, True):
        x = mirror(plane, False, tb)[None, None]
        out[tb] = mirror(sess.run(None, {sess.get_inputs()[0].name: x})[0][0, 0], False, tb)
    return out


def main():
    roots = {"A": sys.argv[1], "B": sys.argv[2]}
    folds = [
        k for k in range(5) if all(os.path.isfile(f"{r}/fold{k}.onnx") for r in roots.values())
    ]
    cases = []
    for k in folds:
        models = {m: session(f"{r}/fold{k}.onnx") for m, r in roots.items()}
        split = json.load(open(f"{roots['A']}/fold{k}/split.json"))
        assert split == json.load(open(f"{roots['B']}/fold{k}/split.json")), "folds differ"
        for sid in split["validation"]:
            image, truth = slice_and_mask(sid)
            maps = {m: maps_of(model, image) for m, model in models.items()}
            scores = {}
            for name, members in SETTINGS.items():
                mean = np.mean([maps[m][tb] for m, tb in members], axis=0).astype(np.float32)
                prob = np.asarray(Image.fromarray(mean).resize(image.shape[::-1], Image.BILINEAR))
                scores[name] = {t: counts(prob, truth, t) for t in THRESHOLDS}
            cases.append((k, sid, scores))
    print(f"A = {roots['A']}, B = {roots['B']}: folds {folds}, {len(cases)} slices")

    def per_slice(name, rule):
        out = []
        for k in folds:
            if rule == "own":
                def score(t):
                    return dice(np.sum([s[name][t] for j, _, s in cases if j == k], axis=0))
            else:
                def score(t):
                    return np.mean([dice(s[name][t]) for j, _, s in cases if j != k])
            t = max(THRESHOLDS, key=score)
            out += [dice(s[name][t]) for j, _, s in cases if j == k]
        return out

    for name in SETTINGS:
        chosen, grid = validation_thresholds(cases, name, folds)
        print(f"{name:>30}: validation-chosen thresholds {chosen}, mean on the grid {grid}")

    for rule, title in (("own", "fold's own (pooled Dice)"), ("other", "other folds")):
        base = per_slice(BASE, rule)
        print(f"threshold chosen on: {title}")
        for name in SETTINGS:
            values = per_slice(name, rule)
            diffs = [a - b for a, b in zip(values, base)]
            low, high = interval(diffs)
            print(
                f"  {name:>30} ({INFERENCES[name]} inferences): mean per-slice Dice "
                f"{np.mean(values):.4f}  vs {BASE} {np.mean(diffs):+.4f} "
                f"({low:+.4f}..{high:+.4f}), "
                f"{sum(d > 0 for d in diffs)} gained, {sum(d < 0 for d in diffs)} lost"
            )


if __name__ == "__main__":
    main()
