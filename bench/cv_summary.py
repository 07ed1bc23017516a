"""Summarises a cross-validation folder written by bench/cv.sh into OUT/cv.json and a table.

Each fold's figures are at that fold's own threshold (chosen on its validation slices during
training). Pooled over folds: every labelled slice is validated exactly once.
"""

import json
import statistics
import sys
from pathlib import Path


def main() -> None:
    out, folds = Path(sys.argv[1]), int(sys.argv[2])
    rows, slices, sweeps = [], [], []
    for k in range(folds):
        report = json.loads((out / f"eval{k}" / "report.json").read_text())
        at = report["at_default"]
        rows.append(
            {
                "fold": k,
                "slices": report["slices"],
                "threshold": report["threshold"],
                "dice_mean_per_slice": at["dice_mean_per_slice"],
                "dice_pooled": at["dice_pooled"],
                "precision": at["precision"],
                "recall": at["recall"],
                "average_precision": report["average_precision"],
            }
        )
        slices += [dice for _, dice in report["per_slice"]]
        sweeps.append(report["sweep"])
    summary = {"folds": rows}
    for key in ("dice_mean_per_slice", "dice_pooled", "average_precision"):
        values = [r[key] for r in rows]
        summary[key] = {"mean": statistics.mean(values), "sd": statistics.stdev(values)}
    thresholds = [r["threshold"] for r in rows]
    # A model trained on all slices has no validation of its own: it takes the folds' mean
    # threshold, each chosen on that fold's validation slices, on the same 0.05 grid.
    summary["threshold"] = {
        "mean": statistics.mean(thresholds),
        "sd": statistics.stdev(thresholds),
        "for_all_slices_model": round(statistics.mean(thresholds) / 0.05) * 0.05,
    }
    # The threshold sweep averaged over folds (each fold's figures on its own validation slices).
    keys = ("recall", "precision", "dice_pooled", "dice_mean_per_slice", "miou")
    summary["sweep_mean_over_folds"] = [
        {"threshold": points[0]["threshold"]}
        | {key: statistics.mean(p[key] for p in points) for key in keys}
        for points in zip(*sweeps)
    ]
    summary["dice_mean_over_all_slices"] = statistics.mean(slices)
    summary["slices"] = len(slices)
    (out / "cv.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| fold | slices | threshold | Dice mean per slice | Dice pooled | AP |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['fold']} | {r['slices']} | {r['threshold']:.2f} | "
            f"{r['dice_mean_per_slice']:.3f} | {r['dice_pooled']:.3f} | "
            f"{r['average_precision']:.3f} |"
        )
    for key in ("dice_mean_per_slice", "dice_pooled", "average_precision"):
        print(f"{key}: mean {summary[key]['mean']:.3f}, sd {summary[key]['sd']:.3f}")
    print(f"mean per-slice Dice over all {len(slices)} slices: {statistics.mean(slices):.3f}")
    print("| threshold | recall | precision | Dice pooled | Dice mean per slice | mIoU |")
    print("| --- | --- | --- | --- | --- | --- |")
    for p in summary["sweep_mean_over_folds"]:
        print(
            f"| {p['threshold']:.1f} | {p['recall']:.3f} | {p['precision']:.3f} | "
            f"{p['dice_pooled']:.3f} | {p['dice_mean_per_slice']:.3f} | {p['miou']:.3f} |"
        )
    t = summary["threshold"]
    print(
        f"threshold: mean {t['mean']:.3f}, sd {t['sd']:.3f}; "
        f"for a model trained on all slices {t['for_all_slices_model']:.2f}"
    )


if __name__ == "__main__":
    main()
