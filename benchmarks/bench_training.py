"""Training throughput per backbone (UNet and classifier) and the input pipeline's share of a step.

Run: ``python benchmarks/bench_training.py [--backbones efficientnetb0 ...] [--sizes 64x320 256x1600]``.
Prints steps/s and images/s after warm-up, and for each size the same UNet step fed by the tf.data loader
(cached, as training uses it) against in-memory tensors, as a ratio (target: the loader costs < 10 % of a step).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from steeldefect import data, loaders, synthetic, training  # noqa: E402
from steeldefect.config import BACKBONES, TrainConfig  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def seconds_per_step(model, dataset, steps: int) -> float:
    timer = StepTimer()
    model.fit(dataset.repeat(), steps_per_epoch=steps + 2, epochs=1, verbose=0, callbacks=[timer])
    return float(np.median(timer.times[2:]))  # the first steps include tracing


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--sizes", nargs="+", default=["64x320", "256x1600"])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic.make_synthetic_severstal(Path(tmp) / "twin", 48, seed=0)
        table = data.load_table(root)
        rows = table[table["Defect_3"] != ""]
        for size_text in args.sizes:
            size = tuple(int(v) for v in size_text.split("x"))
            batch = 8 if size[0] <= 64 else 2
            print(f"--- {size[0]}x{size[1]}, batch {batch}, CPU threads: {os.cpu_count()}")
            for backbone in args.backbones:
                config = TrainConfig(image_size=size, batch_size=batch)
                for stage, task in (("class3", "segmentation"), ("binary", "binary")):
                    model = training.build_stage_model(backbone, stage, config)
                    dataset = loaders.make_dataset(rows, root / "train_images", task, image_size=size, batch_size=batch,
                                                   class_id=3 if task == "segmentation" else None, cache=True)
                    step = seconds_per_step(model, dataset, args.steps)
                    kind = "UNet      " if task == "segmentation" else "classifier"
                    print(f"{backbone} {kind}: {1 / step:6.2f} steps/s  {batch / step:7.2f} images/s")
                    if backbone == args.backbones[0] and task == "segmentation":
                        images, masks = next(iter(dataset))
                        memory = tf.data.Dataset.from_tensors((images, masks))
                        in_memory = seconds_per_step(model, memory, args.steps)
                        print(f"  input pipeline: step with loader {step * 1e3:.0f} ms, on in-memory tensors "
                              f"{in_memory * 1e3:.0f} ms, loader share {(step - in_memory) / step:+.1%} (target < 10 %)")


if __name__ == "__main__":
    main()
