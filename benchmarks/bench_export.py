"""The exported cascade against ``Cascade.predict``: speed, latency, parity, sizes.

Run: ``python benchmarks/bench_export.py RUN_DIR [--images 64] [--out /tmp/export-bench]``.

In one process, on the run's test images at their original size (256x1600): it exports the run's cascade as one
SavedModel and as TFLite stages (float32, float16), then prints, as JSON lines,

- images/s of ``Cascade.predict_batch`` and of the SavedModel's ``serving_default`` (batches of 16), and per-image
  latency at batch 1 (median), each as a ratio against ``Cascade.predict``; where the time goes: the models alone
  (``Cascade.probabilities``) against the whole of ``predict`` (resizing masks, decisions, RLE);
- parity: the share of (image, class) decisions and of mask pixels where each export differs from
  ``Cascade.predict``, and the Dice between the export's masks and predict's (1.0 where both are empty);
- the size on disk of each export and its export time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from steeldefect import cascade, data, runfiles  # noqa: E402

BATCH = 16


def _size_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 1)


def _timed(function, batches) -> tuple[list, float]:
    start = time.perf_counter()
    found = [function(batch) for batch in batches]
    return found, time.perf_counter() - start


def _parity(masks: np.ndarray, codes: np.ndarray, ref_masks: np.ndarray, ref_codes: np.ndarray) -> dict:
    both = (masks & ref_masks).sum(axis=(1, 2))
    total = masks.sum(axis=(1, 2)) + ref_masks.sum(axis=(1, 2))
    dice = np.where(total == 0, 1.0, 2 * both / np.maximum(total, 1))
    return {"decisions_differ": round(float((codes != ref_codes).mean()), 6),
            "pixels_differ": round(float((masks != ref_masks).mean()), 8),
            "mean_dice_vs_predict": round(float(dice.mean()), 6), "min_dice_vs_predict": round(float(dice.min()), 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory of python -m steeldefect.experiments")
    parser.add_argument("--images", type=int, default=64, help="test images to use (default 64)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/steeldefect-export-bench"), help="scratch folder")
    args = parser.parse_args()
    data_dir = Path(runfiles.read_json(args.run / "config.json")["data_dir"])
    table = data.with_split(data.load_table(data_dir), args.run / "splits.csv")
    names = table.loc[table["split"] == "test", "ImageId"].head(args.images)
    images = np.stack([cascade.read_image(data_dir / "train_images" / name) for name in names])
    batches = [images[i : i + BATCH] for i in range(0, len(images), BATCH)]
    trained = cascade.Cascade.load(args.run)
    shutil.rmtree(args.out, ignore_errors=True)

    exports = {}
    for name, format, precision in (("savedmodel", "savedmodel", "float32"), ("tflite_float32", "tflite", "float32"),
                                    ("tflite_float16", "tflite", "float16")):
        start = time.perf_counter()
        exports[name] = trained.export(args.out / name, format, precision=precision)
        print(json.dumps({"export": name, "seconds": round(time.perf_counter() - start, 1),
                          "size_mb": _size_mb(exports[name])}), flush=True)

    # Cascade.predict, its models alone, and the SavedModel: a warm-up pass each (tracing), then timed passes.
    served = tf.saved_model.load(str(exports["savedmodel"])).signatures[cascade.SERVING_SIGNATURE]
    serve = lambda batch: {k: v.numpy() for k, v in served(images=tf.constant(batch)).items()}  # noqa: E731
    predict = lambda batch: trained.predict_batch(list(batch))  # noqa: E731
    models_only = lambda batch: trained.probabilities(batch)  # noqa: E731
    lite = {name: cascade.TFLiteCascade.load(exports[name]) for name in ("tflite_float32", "tflite_float16")}
    runners = {"predict": predict, "models_only": models_only, "savedmodel": serve,
               **{name: (lambda batch, c=c: c.predict_batch(list(batch))) for name, c in lite.items()}}
    outputs, rates, latency = {}, {}, {}
    for name, function in runners.items():
        function(batches[0])
        outputs[name], seconds = _timed(function, batches)
        rates[name] = len(images) / seconds
        single = [_timed(function, [images[i : i + 1]])[1] for i in range(min(16, len(images)))]
        latency[name] = statistics.median(single)
    for name in runners:
        print(json.dumps({"runner": name, "images_per_s": round(rates[name], 2),
                          "speed_vs_predict": round(rates[name] / rates["predict"], 2),
                          "batch1_latency_ms": round(1000 * latency[name], 1),
                          "latency_vs_predict": round(latency[name] / latency["predict"], 2)}), flush=True)

    results = [r for batch in outputs["predict"] for r in batch]
    ref_masks, ref_codes = np.stack([r.masks for r in results]), np.stack([r.codes for r in results])
    saved = {k: np.concatenate([o[k] for o in outputs["savedmodel"]]) for k in ("masks", "decisions")}
    print(json.dumps({"parity": "savedmodel", "images": len(images),
                      **_parity(saved["masks"], saved["decisions"], ref_masks, ref_codes)}), flush=True)
    for name in lite:
        found = [r for batch in outputs[name] for r in batch]
        print(json.dumps({"parity": name, "images": len(images),
                          **_parity(np.stack([r.masks for r in found]), np.stack([r.codes for r in found]),
                                    ref_masks, ref_codes)}), flush=True)


if __name__ == "__main__":
    main()
