"""Segmentation loader throughput (4-class masks, full 256x1600) against bare ``tf.io.decode_jpeg`` of the same
files, in the same process; what the accurate DCT (the loader's, to match OpenCV) costs against TensorFlow's
default; and the synthetic twin's generation speed on one core.

Run: ``python benchmarks/bench_loaders.py``. Target: loader >= 0.8x the bare decode; twin >= 20 images/s.

``--paper``: instead, each stage's training dataset at the paper profile's sizes with the source augmentation
(classifiers 256x512, batch 8; UNets 256x800, batch 4; no cache, as a first epoch reads them), on one CPU core
(tf.data's private thread pool of one thread) and on all of this machine's, against the same dataset without
augmentation (the baseline: what the augmentation costs), and what that means for one GPU: the cores it takes to
feed 150 UNet images/s.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import math  # noqa: E402

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


GPU_UNET_IMAGES_PER_S = 150  # what one GPU's UNet-B0 step takes at 256x800, the rate its loader must feed


def paper_stages(n_images: int = 64) -> None:
    """Images/s of each stage's training dataset at the paper's sizes, on one core and on all."""
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic.make_synthetic_severstal(Path(tmp) / "twin", n_images, seed=1)
        table = data.load_table(root)
        stages = {"binary (256x512, batch 8)": ("binary", None, (256, 512), 8),
                  "multilabel (256x512, batch 8)": ("multilabel", None, (256, 512), 8),
                  "class3 UNet (256x800, batch 4)": ("segmentation", 3, (256, 800), 4)}
        cores = os.cpu_count() or 1
        for name, (task, class_id, size, batch) in stages.items():
            rows = loaders.select_rows(table, task, class_id)
            rates = {}
            for threads, augment in ((1, True), (cores, True), (cores, False)):
                def dataset(threads=threads, augment=augment, rows=rows, task=task, class_id=class_id, size=size,
                            batch=batch):
                    found = loaders.make_dataset(rows, root / "train_images", task, class_id=class_id, image_size=size,
                                                 batch_size=batch, shuffle=True, augment=augment,
                                                 augmentation="source")
                    options = tf.data.Options()
                    options.threading.private_threadpool_size = threads
                    options.threading.max_intra_op_parallelism = 1
                    return found.with_options(options)
                rates[threads, augment] = images_per_second(dataset, len(rows) // batch * batch)
            plain = rates[cores, False]
            line = (f"{name}: {rates[1, True]:.1f} images/s on one core, {rates[cores, True]:.1f} on {cores}; "
                    f"{rates[cores, True] / plain:.2f}x the same dataset without augmentation ({plain:.1f})")
            if task == "segmentation":
                line += (f"; feeding {GPU_UNET_IMAGES_PER_S} UNet images/s takes "
                         f"{math.ceil(GPU_UNET_IMAGES_PER_S / rates[1, True])} cores at this rate")
            print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="each stage's dataset at the paper's sizes, per core")
    if parser.parse_args().paper:
        paper_stages()
        return
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
