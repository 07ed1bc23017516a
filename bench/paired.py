"""Compares two cross-validations of the same folds slice by slice.

    python3 bench/paired.py A_DIR B_DIR [NAME_A NAME_B]

Each DIR holds eval<k>/report.json or fold<k>/report.json per fold (bench/cv.sh or a model's
cv/ folder). Every labelled slice is validated once in each, at its fold's own threshold, so
the per-slice Dice pairs up. Prints the mean per-slice Dice of each, the mean difference B - A
with a 95 % bootstrap interval over slices, how many slices gained or lost, and the per-fold
differences.
"""

import json
import random
import statistics
import sys
from pathlib import Path


def per_slice(root: Path) -> dict[int, dict[str, float]]:
    folds = {}
    for k in range(5):
        for name in (f"eval{k}", f"fold{k}"):
            report = root / name / "report.json"
            if report.is_file():
                data = json.loads(report.read_text())
                folds[k] = {str(sid): dice for sid, dice in data["per_slice"]}
                break
    return folds


def main() -> None:
    a_dir, b_dir = Path(sys.argv[1]), Path(sys.argv[2])
    name_a = sys.argv[3] if len(sys.argv) > 3 else a_dir.name
    name_b = sys.argv[4] if len(sys.argv) > 4 else b_dir.name
    a, b = per_slice(a_dir), per_slice(b_dir)
    folds = sorted(set(a) & set(b))
    pairs, by_fold = [], []
    for k in folds:
        ids = sorted(set(a[k]) & set(b[k]))
        diffs = [b[k][i] - a[k][i] for i in ids]
        pairs += [(a[k][i], b[k][i]) for i in ids]
        by_fold.append((k, statistics.mean(a[k][i] for i in ids), statistics.mean(diffs)))
    diffs = [y - x for x, y in pairs]
    rng = random.Random(7)
    boot = sorted(
        statistics.mean(rng.choice(diffs) for _ in diffs) for _ in range(10_000)
    )
    lo, hi = boot[249], boot[9_749]
    print(f"folds {folds}, {len(pairs)} slices")
    print(f"{name_a}: mean per-slice Dice {statistics.mean(x for x, _ in pairs):.3f}")
    print(f"{name_b}: mean per-slice Dice {statistics.mean(y for _, y in pairs):.3f}")
    print(
        f"{name_b} - {name_a}: {statistics.mean(diffs):+.4f} (95 % bootstrap over slices "
        f"{lo:+.4f}..{hi:+.4f}); {sum(d > 0 for d in diffs)} slices gained, "
        f"{sum(d < 0 for d in diffs)} lost"
    )
    for k, mean_a, d in by_fold:
        print(f"  fold {k}: {name_a} {mean_a:.3f}, difference {d:+.4f}")


if __name__ == "__main__":
    main()
