"""Stage 1 (the binary classifier) at small budgets: what a lever buys in held-out ROC AUC for the seconds it costs.

Run: ``python benchmarks/bench_stage1_levers.py NAME [key=value ...] [--root DIR]``, one setting per process, e.g.::

    python benchmarks/bench_stage1_levers.py base
    python benchmarks/bench_stage1_levers.py cosine schedule=cosine lr=3e-3
    python benchmarks/bench_stage1_levers.py large size=128x640

Keys (default): ``images`` (400, the default profile's twin), ``epochs`` (2), ``size`` (64x320), ``batch`` (16),
``lr`` (1e-3, Adam's peak), ``schedule`` (``plateau``: the package's halving on a plateau; ``cosine``: a linear
warm-up over ``warmup`` (0.1) of the steps, then cosine decay to 0, set before every step), ``backbone``
(efficientnetb0), ``contrast`` (1: the twin's ``defect_contrast``; the held-out twin is always at 1). The stage trains as the default profile trains it (``training.train_stage``: from random weights,
BN momentum 0.9, precise BN, the simple head) on the twin of ``images`` images, seeded. It prints one JSON line: the
stage's seconds (training and its evaluation), the run's test split (40 images at 400: coarse) and, the figure to
compare settings by, accuracy and ROC AUC on a separate 400-image twin (seed 1) that no setting trains on, and where
the real sample is present (``../shared/real``), accuracy and ROC AUC on its 43 images.
The twins and runs go under ``--root`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

DEFAULTS = {"images": "400", "epochs": "2", "size": "64x320", "batch": "16", "lr": "1e-3", "schedule": "plateau",
            "warmup": "0.1", "backbone": "efficientnetb0", "contrast": "1"}
EVAL_IMAGES, EVAL_SEED = 400, 1


def _cosine_callback(peak: float, total_steps: int, warmup: float):
    import keras

    class WarmupCosine(keras.callbacks.Callback):
        """Linear warm-up to ``peak`` then cosine decay to 0, set before each training step (so the package's
        halving on a plateau, at an epoch's end, is overridden at the next step)."""

        def __init__(self):
            super().__init__()
            self.warm = max(1, round(warmup * total_steps))

        def on_train_batch_begin(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            if step < self.warm:
                rate = peak * (step + 1) / self.warm
            else:
                done = min(1.0, (step - self.warm) / max(1, total_steps - self.warm))
                rate = 0.5 * peak * (1 + math.cos(math.pi * done))
            self.model.optimizer.learning_rate.assign(rate)

    return WarmupCosine()


def measure(name: str, options: dict, root: Path, real: Path = Path("../shared/real")) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from sklearn.metrics import roc_auc_score

    from steeldefect import data, models, runfiles, synthetic, training
    from steeldefect.config import TrainConfig

    height, width = (int(v) for v in options["size"].split("x"))
    contrast = float(options["contrast"])
    twin = synthetic.make_synthetic_severstal(root / f"twin-{options['images']}-c{contrast:g}", int(options["images"]),
                                              defect_contrast=contrast)
    held_out = synthetic.make_synthetic_severstal(root / f"heldout-{EVAL_IMAGES}-seed{EVAL_SEED}", EVAL_IMAGES,
                                                  seed=EVAL_SEED)
    table = data.split_table(data.load_table(twin))
    config = TrainConfig(image_size=(height, width), batch_size=int(options["batch"]), epochs=int(options["epochs"]),
                         learning_rate=float(options["lr"]), encoder_weights=None, bn_momentum=0.9, head="simple")
    callbacks = []
    if options["schedule"] == "cosine":
        steps = math.ceil(int((table["split"] == "train").sum()) / config.batch_size) * config.epochs
        callbacks.append(_cosine_callback(config.learning_rate, steps, float(options["warmup"])))
    run = root / "runs" / name
    start = time.perf_counter()
    result = training.train_stage(run, options["backbone"], "binary", config, table=table,
                                  images_dir=twin / "train_images", callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - start
    model = models.load_model(runfiles.stage_dir(run, options["backbone"], "binary"))

    def scores(rows, images_dir):
        truth, prob = training._classification_arrays(model, rows, images_dir, "binary", config)
        truth, prob = truth.ravel(), prob.ravel()
        return float(((prob > 0.5) == truth).mean()), float(roc_auc_score(truth, prob))

    test_acc, test_auc = scores(table[table["split"] == "test"], twin / "train_images")
    held_acc, held_auc = scores(data.load_table(held_out), held_out / "train_images")
    found = {"name": name, **options, "stage_s": round(seconds, 1), "val_acc": round(result["val"]["acc"], 3),
             "test_acc": round(test_acc, 3), "test_auc": round(test_auc, 3),
             "heldout_acc": round(held_acc, 3), "heldout_auc": round(held_auc, 3)}
    if (real / "train.csv").is_file():  # transfer: the same model on real steel (benchmarks/bench_transfer.py)
        found["real_acc"], found["real_auc"] = (round(v, 3) for v in scores(data.load_table(real), real / "train_images"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("settings", nargs="*", help="key=value; keys: " + ", ".join(DEFAULTS))
    parser.add_argument("--root", type=Path, default=None)
    args = parser.parse_args()
    options = dict(DEFAULTS)
    for pair in args.settings:
        key, sep, value = pair.partition("=")
        if not sep or key not in DEFAULTS:
            raise SystemExit(f"{pair!r}: expected key=value with a key among {', '.join(DEFAULTS)}")
        options[key] = value
    # Checked before any twin is written: a typo fails at once, not after the first minute.
    if options["schedule"] not in ("plateau", "cosine"):
        raise SystemExit(f"schedule: expected plateau or cosine, got {options['schedule']!r}")
    height, sep, width = options["size"].partition("x")
    if not (sep and height.isdigit() and width.isdigit()):
        raise SystemExit(f"size: expected HEIGHTxWIDTH such as 64x320, got {options['size']!r}")
    if args.root is None:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(measure(args.name, options, Path(tmp))))
    else:
        print(json.dumps(measure(args.name, options, args.root)))


if __name__ == "__main__":
    main()
