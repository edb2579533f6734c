"""A stage's fixed cost (build, first training step, first evaluation) against its cost per step, by execution mode.

Run: ``python benchmarks/bench_stage_cost.py [--backbone efficientnetb0] [--kind classifier|unet] [--size 64x320]``.

Every mode runs in a fresh process (TensorFlow's graph options are global), on the same data:
``graph`` (what training does: ``tf.function`` steps, Grappler on), ``graph-no-grappler`` (Grappler's meta-optimizer
off: cheaper first call, maybe slower steps) and ``eager`` (``run_eagerly=True``: no tracing, slower steps). It
prints each mode's seconds and, as ratios against ``graph`` in the same run, the first step, the steady step and the
break-even number of steps (where a mode's lower fixed cost is used up by its slower steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("graph", "graph-no-grappler", "eager")


def measure(mode: str, backbone: str, kind: str, size: tuple[int, int], twin: Path, steps: int) -> dict:
    """One mode, in this process: seconds to build, for the first and the median later training step, and for the
    first and a later evaluation pass."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    from steeldefect import data, loaders, training
    from steeldefect.config import TrainConfig

    if mode == "graph-no-grappler":
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    table = data.load_table(twin)
    stage = "binary" if kind == "classifier" else "joint"
    task, class_id = training.stage_task(stage)
    rows = loaders.select_rows(table, task, class_id)
    dataset = loaders.make_dataset(rows, twin / "train_images", task, image_size=size, batch_size=8, cache=True,
                                   drop_remainder=True).take(4).cache()
    list(dataset)  # decode once, outside the timings
    config = TrainConfig(image_size=size, batch_size=8, bn_momentum=0.9, head="simple")
    start = time.perf_counter()
    model = training.build_stage_model(backbone, stage, config)
    training.prebuild(model, next(iter(dataset)))
    if mode == "eager":
        model.run_eagerly = True
    build = time.perf_counter() - start
    times = []
    timer = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda b, logs: times.append(time.perf_counter()),
                                           on_train_batch_end=lambda b, logs: times.append(time.perf_counter()))
    model.fit(dataset.repeat(), steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer])
    step_times = [end - begin for begin, end in zip(times[::2], times[1::2], strict=True)]
    evaluations = []
    for _ in range(2):
        start = time.perf_counter()
        model.evaluate(dataset, verbose=0)
        evaluations.append(time.perf_counter() - start)
    return {"mode": mode, "build_s": build, "first_step_s": step_times[0], "step_s": float(np.median(step_times[2:])),
            "first_eval_s": evaluations[0], "eval_s": evaluations[1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="efficientnetb0")
    parser.add_argument("--kind", choices=("classifier", "unet"), default="classifier")
    parser.add_argument("--size", default="64x320")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one mode, print JSON
    parser.add_argument("--twin", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.one:
        print(json.dumps(measure(args.one, args.backbone, args.kind, size, Path(args.twin), args.steps)))
        return
    from steeldefect import synthetic

    with tempfile.TemporaryDirectory() as tmp:
        twin = synthetic.make_synthetic_severstal(Path(tmp) / "twin", 48, seed=0)
        results = {}
        for mode in args.modes:
            out = subprocess.run([sys.executable, __file__, "--one", mode, "--twin", str(twin), "--backbone",
                                  args.backbone, "--kind", args.kind, "--size", args.size, "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results.get("graph")
    print(f"{args.backbone} {args.kind} at {args.size}, batch 8, {os.cpu_count()} CPU threads")
    print(f"{'mode':<18} {'build':>7} {'1st step':>9} {'step':>7} {'1st eval':>9} {'eval':>7}   vs graph: 1st step, step, "
          "break-even steps")
    for mode, r in results.items():
        line = (f"{mode:<18} {r['build_s']:6.1f}s {r['first_step_s']:8.1f}s {r['step_s']:6.2f}s "
                f"{r['first_eval_s']:8.1f}s {r['eval_s']:6.2f}s")
        if base and mode != "graph":
            saved = (base["first_step_s"] + base["first_eval_s"]) - (r["first_step_s"] + r["first_eval_s"])
            extra = r["step_s"] - base["step_s"]
            even = f"{saved / extra:.0f}" if extra > 0 else "never (no slower)"
            line += (f"   {r['first_step_s'] / base['first_step_s']:.2f}x, {r['step_s'] / base['step_s']:.2f}x, "
                     f"{even}")
        print(line)


if __name__ == "__main__":
    main()
