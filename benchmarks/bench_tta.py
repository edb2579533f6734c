"""Flip TTA: what it buys and what it costs, on a trained run.

Run: ``python benchmarks/bench_tta.py RUN_DIR [--real ../shared/real]``.

For ``tta`` None, ``hflip`` and ``hvflip`` (one process, the run loaded each time) it prints the Kaggle mean Dice by
the paper's rule and stage 1's ROC AUC on the run's test split and, where a real Kaggle-layout folder is given and
present, on every image of it; and the images/s of ``Cascade.predict_batch`` on the test images after a warm-up
pass, as a ratio against no TTA.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from steeldefect import cascade, data, runfiles  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory of python -m steeldefect.experiments")
    parser.add_argument("--real", type=Path, default=Path("../shared/real"), help="a real Kaggle-layout folder")
    args = parser.parse_args()
    data_dir = Path(runfiles.read_json(args.run / "config.json")["data_dir"])
    table = data.with_split(data.load_table(data_dir), args.run / "splits.csv")
    paths = [data_dir / "train_images" / name for name in table.loc[table["split"] == "test", "ImageId"]]
    baseline = None
    for tta in (None, "hflip", "hvflip"):
        trained = cascade.Cascade.load(args.run, tta=tta)
        trained.predict_batch(paths)  # warm-up: every stage traced once
        start = time.perf_counter()
        trained.predict_batch(paths)
        rate = len(paths) / (time.perf_counter() - start)
        baseline = baseline or rate
        found = cascade.evaluate_cascade(trained, table, data_dir / "train_images", "test")
        row = {"tta": tta, "test_dice": round(found["variants"]["paper cascade"]["kaggle_mean_dice"], 4),
               "test_all_empty": round(found["all_empty_dice"], 4), "test_stage1_roc_auc": found["stage1"]["roc_auc"],
               "images_per_s": round(rate, 2), "speed_vs_none": round(rate / baseline, 2)}
        if (args.real / "train.csv").is_file():
            real = cascade.evaluate_folder(trained, args.real)
            row.update({"real_dice": round(real["variants"]["paper cascade"]["kaggle_mean_dice"], 4),
                        "real_all_empty": round(real["all_empty_dice"], 4),
                        "real_stage1_roc_auc": real["stage1"]["roc_auc"]})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
