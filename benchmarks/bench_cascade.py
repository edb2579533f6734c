"""Cascade throughput (the paper's gating) against ``gating="none"`` with the same models on the same images.

Run after an experiments run: ``python benchmarks/bench_cascade.py [--run runs/quick] [--images 64]``. Prints
images/s of both and their ratio (target >= 1.7x on the twin's defect mix), and the Kaggle mean Dice of both on
those images (the cascade's must not be lower).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from steeldefect import data, metrics  # noqa: E402
from steeldefect.cascade import Cascade, true_masks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=Path("runs/quick"))
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    config = json.loads((args.run / "config.json").read_text())
    table = data.with_split(data.load_table(config["data_dir"]), args.run / "splits.csv")
    rows = table[table["split"] == "test"].head(args.images)
    images_dir = Path(config["data_dir"]) / "train_images"
    paths = [images_dir / image_id for image_id in rows["ImageId"]]
    truth = np.stack([true_masks(row) for _, row in rows.iterrows()])
    print(f"{len(rows)} test images of {args.run}, {int(rows['has_defect'].sum())} with defects")
    results = {}
    for gating in ("none", "paper", "none", "paper"):  # twice each, interleaved; the first pass of each warms up
        cascade = results.get(gating, {}).get("cascade") or Cascade.load(args.run, gating=gating)
        start = time.perf_counter()
        predicted = cascade.predict_batch(paths)
        seconds = time.perf_counter() - start
        masks = np.stack([r.masks for r in predicted])
        results[gating] = {"cascade": cascade, "seconds": seconds,
                           "dice": metrics.kaggle_mean_dice(masks, truth)}
    for gating in ("none", "paper"):
        r = results[gating]
        print(f"gating={gating:5s}: {len(paths) / r['seconds']:6.2f} images/s, Kaggle mean Dice {r['dice']:.4f}")
    ratio = results["none"]["seconds"] / results["paper"]["seconds"]
    print(f"cascade / no gating throughput: {ratio:.2f}x (target >= 1.7x); "
          f"Dice difference {results['paper']['dice'] - results['none']['dice']:+.4f} (must not be negative)")


if __name__ == "__main__":
    main()
