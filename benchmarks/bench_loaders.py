"""Segmentation loader throughput (4-class masks, full 256x1600) against bare ``tf.io.decode_jpeg`` of the same
files, in the same process; what the accurate DCT (the loader's, to match OpenCV) costs against TensorFlow's
default; and the synthetic twin's generation speed on one core.

Run: ``python benchmarks/bench_loaders.py``. Target: loader >= 0.8x the bare decode; twin >= 20 images/s.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import tensorflow as tf  # noqa: E402

from steeldefect import data, loaders, synthetic  # noqa: E402

N_IMAGES = 96
BATCH = 8


def images_per_second(make_dataset, n_images: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in make_dataset():
            pass
        best = min(best, time.perf_counter() - start)
    return n_images / best


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cv2.setNumThreads(1)
        start = time.perf_counter()
        root = synthetic.make_synthetic_severstal(Path(tmp) / "twin", N_IMAGES, seed=0)
        twin_rate = N_IMAGES * 1.1 / (time.perf_counter() - start)  # train + test images
        print(f"synthetic twin: {twin_rate:.1f} images/s on one core (target >= 20)")

        table = data.load_table(root)
        rows = table[table["has_defect"]]
        paths = [str(root / "train_images" / i) for i in rows["ImageId"]]

        def bare(dct_method=""):
            ds = tf.data.Dataset.from_tensor_slices(paths)
            ds = ds.map(lambda p: tf.io.decode_jpeg(tf.io.read_file(p), channels=3, dct_method=dct_method),
                        num_parallel_calls=loaders.AUTOTUNE)
            return ds.batch(BATCH).prefetch(loaders.AUTOTUNE)

        def ours():
            return loaders.make_dataset(rows, root / "train_images", "segmentation", image_size=(256, 1600),
                                        batch_size=BATCH)

        cached = loaders.make_dataset(rows, root / "train_images", "segmentation", image_size=(256, 1600),
                                      batch_size=BATCH, cache=True)
        bare_rate = images_per_second(bare, len(rows))
        accurate_rate = images_per_second(lambda: bare(loaders.DCT_METHOD), len(rows))
        ours_rate = images_per_second(ours, len(rows))
        cached_rate = images_per_second(lambda: cached, len(rows))  # the first pass fills the cache
        print(f"{len(rows)} defective images, 256x1600, batch {BATCH}: bare decode_jpeg {bare_rate:.1f} images/s")
        print(f"bare decode_jpeg with dct_method={loaders.DCT_METHOD} (the loader's): {accurate_rate:.1f} images/s, "
              f"ratio {accurate_rate / bare_rate:.2f}x the default DCT")
        print(f"segmentation loader (4-class masks): {ours_rate:.1f} images/s, ratio {ours_rate / bare_rate:.2f}x "
              "(target >= 0.8x)")
        print(f"segmentation loader, cache=True, after the first epoch: {cached_rate:.1f} images/s, "
              f"ratio {cached_rate / bare_rate:.2f}x")


if __name__ == "__main__":
    main()
