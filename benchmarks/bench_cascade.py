"""Cascade throughput (the paper's gating) against ``gating="none"`` with the same models on the same images.

Run after an experiments run: ``python benchmarks/bench_cascade.py [--run runs/default] [--images 64]``. Prints
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
    parser.add_argument("--run", type=Path, default=Path("runs/default"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="timed passes of each mode, interleaved")
    args = parser.parse_args()
    config = json.loads((args.run / "config.json").read_text())
    table = data.with_split(data.load_table(config["data_dir"]), args.run / "splits.csv")
    rows = table[table["split"] == "test"].head(args.images)
    images_dir = Path(config["data_dir"]) / "train_images"
    paths = [images_dir / image_id for image_id in rows["ImageId"]]
    truth = np.stack([true_masks(row) for _, row in rows.iterrows()])
    print(f"{len(rows)} test images of {args.run}, {int(rows['has_defect'].sum())} with defects")
    cascades = {gating: Cascade.load(args.run, gating=gating) for gating in ("none", "paper")}
    seconds = {gating: [] for gating in cascades}
    dice = {}
    for round_ in range(args.rounds + 1):  # interleaved; round 0 warms up (tracing) and is not counted
        for gating, cascade in cascades.items():
            start = time.perf_counter()
            predicted = cascade.predict_batch(paths)
            if round_:
                seconds[gating].append(time.perf_counter() - start)
            dice[gating] = metrics.kaggle_mean_dice(np.stack([r.masks for r in predicted]), truth)
    for gating in cascades:
        print(f"gating={gating:5s}: {len(paths) / np.median(seconds[gating]):6.2f} images/s (median of "
              f"{args.rounds}), Kaggle mean Dice {dice[gating]:.4f}")
    ratio = np.median(seconds["none"]) / np.median(seconds["paper"])
    print(f"cascade / no gating throughput: {ratio:.2f}x (target >= 1.7x); "
          f"Dice difference {dice['paper'] - dice['none']:+.4f} (must not be negative)")


if __name__ == "__main__":
    main()
