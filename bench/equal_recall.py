"""Precision and Dice of several evaluated models at equal recall, from their sweep.csv files.

usage: python3 bench/equal_recall.py NAME=DIR [NAME=DIR ...] [--recall 0.6,0.7,0.8]
Each DIR is an output folder of `tvunet eval`. Precision at a given recall is interpolated
linearly between the sweep's thresholds (0.1..0.9), as the paper compares U-Net and TV-UNet.
"""

import csv
import sys


def interpolate(rows, recall, key):
    rows = sorted(rows, key=lambda r: r["recall"])
    for a, b in zip(rows, rows[1:]):
        if a["recall"] <= recall <= b["recall"] and b["recall"] > a["recall"]:
            t = (recall - a["recall"]) / (b["recall"] - a["recall"])
            return a[key] + t * (b[key] - a[key])
    return float("nan")


def main():
    recalls = [0.6, 0.7, 0.8]
    models = []
    for arg in sys.argv[1:]:
        if arg.startswith("--recall"):
            continue
        if "," in arg and "=" not in arg:
            recalls = [float(x) for x in arg.split(",")]
            continue
        name, path = arg.split("=", 1)
        with open(f"{path}/sweep.csv") as f:
            rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
        models.append((name, rows))
    print("| model | " + " | ".join(f"precision @ recall {r}" for r in recalls) + " |")
    print("| --- |" + " --- |" * len(recalls))
    for name, rows in models:
        cells = [f"{interpolate(rows, r, 'precision'):.3f}" for r in recalls]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
