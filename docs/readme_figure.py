"""The picture at the top of README: a cascade's prediction overlaid on a test image of the synthetic twin.

Run: ``python docs/readme_figure.py [RUN_DIR] [OUT]`` (defaults: ``runs/default`` and ``docs/cascade.jpg``).

Among the run's defective test images it takes the one where the cascade's masks (the paper's rule) agree best with
the truth (the mean Dice over the classes present in either), draws the truth above the prediction, and writes the
picture at half size (a JPEG at quality 85 when OUT ends in .jpg). It refuses a run that was not trained on the synthetic twin: no pixel of the real
competition images goes into the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from steeldefect import cascade, data, runfiles  # noqa: E402


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    scores = []
    for k in range(truth.shape[-1]):
        total = pred[..., k].sum() + truth[..., k].sum()
        if total:
            scores.append(2 * (pred[..., k] & truth[..., k]).sum() / total)
    return float(np.mean(scores)) if scores else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", default=Path("runs/default"))
    parser.add_argument("out", type=Path, nargs="?", default=Path("docs/cascade.jpg"))
    args = parser.parse_args()
    config = runfiles.read_json(args.run / "config.json")
    if not config.get("synthetic"):
        print(f"error: {args.run} was not trained on the synthetic twin; the README picture shows twin images only",
              file=sys.stderr)
        return 2
    images_dir = Path(config["data_dir"]) / "train_images"
    table = data.with_split(data.load_table(Path(config["data_dir"])), args.run / "splits.csv")
    rows = table[(table["split"] == "test") & table["has_defect"]]
    trained = cascade.Cascade.load(args.run)
    scored = []
    for (_, row), result in zip(rows.iterrows(), trained.predict_batch([images_dir / n for n in rows["ImageId"]]),
                                strict=True):
        scored.append((_dice(result.masks, cascade.true_masks(row)), row, result))
    score, row, result = max(scored, key=lambda s: s[0])
    path = images_dir / row["ImageId"]
    panels = []
    for masks, text in ((cascade.true_masks(row), "truth"), (result.masks, f"cascade (Dice {score:.2f})")):
        panel = cascade.overlay(path, masks)
        cv2.putText(panel, text, (12, 36), cv2.FONT_HERSHEY_SIMPLEX, 1.1, (255, 255, 255), 2, cv2.LINE_AA)
        panels.append(panel)
    picture = cv2.vconcat(panels)
    picture = cv2.resize(picture, (picture.shape[1] // 2, picture.shape[0] // 2), interpolation=cv2.INTER_AREA)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"{args.out}: {row['ImageId']} (test split of {args.run}), classes "
          f"{[c for c in (1, 2, 3, 4) if cascade.true_masks(row)[..., c - 1].any()]} true, {result.classes} kept, "
          f"Dice {score:.2f}; best of {len(scored)} defective test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
