"""Transfer: what a model trained on a twin alone does on real steel.

Run: ``python benchmarks/bench_transfer.py [--twin NAME=DIR ...] [--seeds 0 1 2] [--real ../shared/real]
[--root DIR] [-- EXTRA EXPERIMENT OPTIONS]``, e.g.::

    python benchmarks/bench_transfer.py --root /tmp/transfer                         # twin v4 (this checkout)
    python benchmarks/bench_transfer.py --twin v3=/tmp/v3-400 --twin v4=current --root /tmp/transfer

For each twin and seed it trains B0 with the default profile's settings (``python -m steeldefect.experiments
--backbones efficientnetb0 --seed S --data-dir TWIN``, plus any options after ``--``), then scores every image of
the real Kaggle-layout folder: stage 1's ROC AUC with a bootstrap 95 % interval (2,000 resamples of the images) and
its accuracy against the majority class, stage 2's accuracy on the defective images, and the cascade's Kaggle mean
Dice (paper rule, and the searched thresholds) against all-empty. ``current`` (the default twin) is the twin this
checkout's generator writes, of ``--twin-images`` images (400, the default profile's), seed 0; a DIR is any twin
folder (e.g. one written by an older commit, for a paired comparison on the same real images). Runs that finished
are reused (rerun with the same ``--root`` to add seeds). One JSON line per run, then a Markdown table of medians
over the seeds.

``--few-shot`` then trains B0 on the real folder's own split (``--profile quick``: 64x320, 12 epochs) from random
weights and from the stage-1 encoder of each twin's first-seed run, and scores each on the images it did not train
on (its validation and test images: 13 of the 43 of the real sample).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BOOTSTRAP = 2000


def _bootstrap_auc(truth, scores, seed: int = 0) -> tuple[float, float]:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(truth), len(truth))
        if 0 < truth[pick].sum() < len(pick):
            values.append(roc_auc_score(truth[pick], scores[pick]))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def score(run: Path, real: Path) -> dict:
    """A trained run's figures on every image of ``real``."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from steeldefect import cascade, data

    table = data.load_table(real)
    trained = cascade.Cascade.load(run)
    results = trained.predict_batch([real / "train_images" / name for name in table["ImageId"]])
    truth = table["has_defect"].to_numpy(bool)
    prob = np.array([r.defect_prob for r in results])
    low, high = _bootstrap_auc(truth, prob)
    found = cascade.evaluate_folder(trained, real)  # every variant, the searched thresholds' among them
    majority = max(truth.mean(), 1 - truth.mean())
    return {
        "stage1_roc_auc": round(float(roc_auc_score(truth, prob)), 3), "auc_95": [round(low, 3), round(high, 3)],
        "stage1_acc": round(found["stage1"]["accuracy"], 3), "majority": round(float(majority), 3),
        "stage2_acc": round(found["stage2"]["accuracy"], 3) if found["stage2"] else None,
        "dice": round(found["variants"]["paper cascade"]["kaggle_mean_dice"], 4),
        "dice_searched": round(found["variants"]["searched thresholds"]["kaggle_mean_dice"], 4),
        "all_empty": round(found["all_empty_dice"], 4),
    }


def train(twin: Path, run: Path, seed: int, extra: list[str]) -> float:
    """Train B0 with the default settings on ``twin`` into ``run`` (skipped when it finished); seconds taken."""
    if (run / "cascade.json").is_file():
        return 0.0
    start = time.perf_counter()
    command = [sys.executable, "-m", "steeldefect.experiments", "--backbones", "efficientnetb0", "--seed", str(seed),
               "--data-dir", str(twin), "--run-dir", str(run), *extra]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def score_held_out(run: Path, real: Path) -> dict:
    """A run trained on ``real``'s own split, on the images it did not train on (validation and test)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from steeldefect import cascade, data

    table = data.with_split(data.load_table(real), run / "splits.csv")
    table["split"] = table["split"].replace({"val": "test"})
    held = table[table["split"] == "test"]
    trained = cascade.Cascade.load(run)
    prob = np.array([r.defect_prob for r in trained.predict_batch([real / "train_images" / i for i in held["ImageId"]])])
    truth = held["has_defect"].to_numpy(bool)
    found = cascade.evaluate_cascade(trained, table, real / "train_images", "test")
    return {"n_images": len(held), "stage1_roc_auc": round(float(roc_auc_score(truth, prob)), 3),
            "stage1_acc": round(found["stage1"]["accuracy"], 3), "stage2_acc": round(found["stage2"]["accuracy"], 3),
            "dice": round(found["variants"]["paper cascade"]["kaggle_mean_dice"], 4),
            "all_empty": round(found["all_empty_dice"], 4)}


def few_shot(twins: dict, args) -> None:
    """B0 trained on the real folder's own split (``--profile quick``) from random weights and from the stage-1
    encoder of each twin's first-seed run; scored on the images it did not train on."""
    print("\n| start | stage 1 ROC AUC | stage 1 acc | stage 2 acc | cascade Dice (all-empty) |\n|---|---|---|---|---|")
    starts = {"random weights": "none"}
    for name in twins:
        starts[f"{name} encoder"] = str(args.root / "runs" / f"{name}-seed{args.seeds[0]}" / "efficientnetb0" /
                                        "binary" / "encoder.weights.h5")
    for name, weights in starts.items():
        run = args.root / "few-shot" / name.replace(" ", "-")
        if not (run / "cascade.json").is_file():
            subprocess.run([sys.executable, "-m", "steeldefect.experiments", "--profile", "quick", "--backbones",
                            "efficientnetb0", "--data-dir", str(args.real), "--encoder-weights", weights,
                            "--run-dir", str(run)], check=True, stdout=subprocess.DEVNULL)
        found = score_held_out(run, args.real)
        print(f"| {name} | {found['stage1_roc_auc']:.3f} | {found['stage1_acc']:.3f} | {found['stage2_acc']:.3f} | "
              f"{found['dice']:.4f} ({found['all_empty']:.4f}) |", flush=True)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twin", action="append", default=[], help="NAME=DIR, or NAME=current (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--twin-images", type=int, default=400)
    parser.add_argument("--real", type=Path, default=Path("../shared/real"))
    parser.add_argument("--root", type=Path, default=Path("runs/transfer"))
    parser.add_argument("--few-shot", action="store_true",
                        help="then train B0 on the real folder's own split from random weights and each twin's encoder")
    args = parser.parse_args(argv)
    if not (args.real / "train.csv").is_file():
        raise SystemExit(f"{args.real}: no train.csv; --real must be a Kaggle-layout folder of real images")
    twins = {}
    for pair in args.twin or ["current=current"]:
        name, sep, folder = pair.partition("=")
        if not sep:
            raise SystemExit(f"--twin {pair!r}: expected NAME=DIR or NAME=current")
        twins[name] = folder
    import numpy as np

    from steeldefect import synthetic

    rows = []
    for name, folder in twins.items():
        if folder == "current":
            twin = synthetic.make_synthetic_severstal(args.root / f"twin-v{synthetic.TWIN_VERSION}-{args.twin_images}",
                                                      args.twin_images)
        else:
            twin = Path(folder)
        for seed in args.seeds:
            run = args.root / "runs" / f"{name}-seed{seed}"
            seconds = train(twin, run, seed, extra)
            row = {"twin": name, "seed": seed, "train_s": round(seconds), **score(run, args.real)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| twin | seeds | stage 1 ROC AUC, median (95 % bootstrap of each seed) | stage 1 acc (majority) "
          "| stage 2 acc | cascade Dice paper / searched (all-empty) |\n|---|---|---|---|---|---|")
    for name in twins:
        mine = [r for r in rows if r["twin"] == name]
        median = {k: float(np.median([r[k] for r in mine if r[k] is not None] or [np.nan]))
                  for k in ("stage1_roc_auc", "stage1_acc", "stage2_acc", "dice", "dice_searched")}
        intervals = ", ".join(f"{r['auc_95'][0]:.2f}-{r['auc_95'][1]:.2f}" for r in mine)
        print(f"| {name} | {len(mine)} | {median['stage1_roc_auc']:.3f} ({intervals}) | {median['stage1_acc']:.3f} "
              f"({mine[0]['majority']:.3f}) | {median['stage2_acc']:.3f} | {median['dice']:.4f} / "
              f"{median['dice_searched']:.4f} ({mine[0]['all_empty']:.4f}) |")
    if args.few_shot:
        few_shot(twins, args)


if __name__ == "__main__":
    main()
