"""Scores the masks bench/arm.sh wrote: each run against the radiologist's masks, and each ARM
run against the x86 run of the same model file.

    python3 bench/arm_masks.py OUT DATA    (needs numpy and pillow)

OUT holds one folder per run (NAME.mask.png per slice, from `tvunet-edge infer`); DATA is the
labelled folder (masks_binary/NAME.png). Runs named `*-int8` are compared with `x86-int8`, the
others with `x86-fp32`.
"""

import os
import sys

import numpy as np
from PIL import Image


def masks(folder):
    """{slice name: boolean mask} for the NAME.mask.png files in `folder`."""
    found = {}
    for entry in sorted(os.listdir(folder)):
        if entry.endswith(".mask.png"):
            found[entry[: -len(".mask.png")]] = np.asarray(Image.open(os.path.join(folder, entry))) > 127
    return found


def dice(a, b):
    """Dice of two boolean masks; 1 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main():
    out, data = sys.argv[1], sys.argv[2]
    runs = sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d)))
    truth_dir = os.path.join(data, "masks_binary")
    loaded = {run: masks(os.path.join(out, run)) for run in runs}
    print(
        f"{'run':<10} {'slices':>6} {'Dice/slice':>10} {'pooled':>7} {'marked %':>8}"
        f" | {'vs x86':<8} {'pixels agree %':>14} {'differ':>7} {'same masks':>10} {'Dice/slice diff':>15}"
    )
    for run in runs:
        got = loaded[run]
        names = sorted(got)
        if not names:
            print(f"{run:<10} no masks in {os.path.join(out, run)}")
            continue
        missing = [n for n in names if not os.path.exists(os.path.join(truth_dir, n + ".png"))]
        if missing:
            listed = ", ".join(missing[:5])
            raise SystemExit(f"{run}: no radiologist's mask in {truth_dir} for {listed}")
        truth = {n: np.asarray(Image.open(os.path.join(truth_dir, n + ".png"))) > 127 for n in names}
        for n in names:
            if got[n].shape != truth[n].shape:
                raise SystemExit(f"{run}/{n}: mask {got[n].shape} against truth {truth[n].shape}")
        per_slice = [dice(got[n], truth[n]) for n in names]
        overlap = sum(int((got[n] & truth[n]).sum()) for n in names)
        marked = sum(int(got[n].sum()) for n in names)
        lesion = sum(int(truth[n].sum()) for n in names)
        pixels = sum(got[n].size for n in names)
        line = (
            f"{run:<10} {len(names):>6} {np.mean(per_slice):>10.4f} {2 * overlap / (marked + lesion):>7.4f}"
            f" {100 * marked / pixels:>8.2f}"
        )
        reference = "x86-int8" if run.endswith("-int8") else "x86-fp32"
        if not run.startswith("x86") and not loaded.get(reference):
            line += f" | no {reference} run in {out} to compare with"
        elif not run.startswith("x86"):
            ref = loaded[reference]
            common = [n for n in names if n in ref]
            differ = sum(int((got[n] != ref[n]).sum()) for n in common)
            total = sum(got[n].size for n in common)
            same = sum(bool((got[n] == ref[n]).all()) for n in common)
            ref_mean = np.mean([dice(ref[n], truth[n]) for n in common])
            mean = np.mean([dice(got[n], truth[n]) for n in common])
            line += (
                f" | {reference:<8} {100 * (1 - differ / total):>14.4f} {differ:>7}"
                f" {same:>5} of {len(common):<2} {mean - ref_mean:>+15.5f}"
            )
        print(line)


if __name__ == "__main__":
    main()
