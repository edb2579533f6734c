"""Memory of the steps after training that read a whole split: the threshold search on validation
(``thresholds.ValidationSummary``, streamed) and the cascade's evaluation (``cascade.evaluate_cascade``), each at
a small and a large number of images, in one process. Each step's peak resident memory (its own: ``meter.phase``)
and images/s; the target is a large-run peak within 1.2x of the small run's.

The search is fed the paper's mask size (256x800, 4 classes) from random probabilities and masks, batch by batch as
a run feeds it; the evaluation runs a stand-in cascade (Keras layers thresholding grey levels, cheap on a CPU) at
256x800 over a synthetic twin written for it, so that what is measured is the pipeline's memory, not the models'.
For comparison it prints what the search held before it streamed (every mask probability of the split in float16).

Run: ``python benchmarks/bench_streaming.py [--images 226 2263] [--skip-evaluation] [--root /tmp/bench-streaming]``
(226 and 2,263: the validation splits of a 1,257- and the paper's 12,568-image data). About 10 min on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from steeldefect import cascade as cascade_lib  # noqa: E402
from steeldefect import data, meter, synthetic, thresholds  # noqa: E402

MASK_SIZE = (256, 800)  # the paper profile's UNets
BATCH = 16


def search_peak(n_images: int, seed: int = 0) -> dict:
    """The streamed search over ``n_images`` random validation images at MASK_SIZE: its phase record."""
    rng = np.random.default_rng(seed)
    phases: dict = {}
    with meter.phase(phases, "search", n_images):
        summary = thresholds.ValidationSummary()
        for start in range(0, n_images, BATCH):
            b = min(BATCH, n_images - start)
            truth = rng.random((b, *MASK_SIZE, 4), np.float32) > 0.97
            probs = rng.random((b, *MASK_SIZE, 4), np.float32)
            summary.add(rng.random(b), rng.random((b, 4)), probs, truth)
        summary.search()
    return phases["search"]


def stand_in_cascade() -> cascade_lib.Cascade:
    """Stages that read grey levels (no weights to speak of): the cascade's code path at MASK_SIZE."""
    inputs = keras.Input((*MASK_SIZE, 3))
    mean = keras.ops.mean(inputs, axis=(1, 2, 3))[:, None]
    binary = keras.Model(inputs, keras.layers.Lambda(lambda m: tf.sigmoid((m - 90.0) / 4))(mean))
    multilabel = keras.Model(inputs, keras.layers.Lambda(lambda m: tf.sigmoid((m - 90.0) / 4) * tf.ones((1, 4)))(mean))
    grey = keras.ops.mean(inputs, axis=-1, keepdims=True)
    unet = keras.Model(inputs, keras.layers.Lambda(lambda g: tf.sigmoid((g - 120.0) / 8) * tf.ones((1, 1, 1, 4)))(grey))
    return cascade_lib.Cascade(binary, multilabel, {0: unet}, MASK_SIZE)


def evaluation_peak(root: Path, n_images: int) -> dict:
    """``evaluate_cascade`` over a twin of ``n_images`` (every image in the evaluated split): its phase record."""
    folder = synthetic.make_synthetic_severstal(root / f"twin-{n_images}", n_images, seed=3, n_test_images=1)
    table = data.load_table(folder).assign(split="test")
    cascade = stand_in_cascade()
    phases: dict = {}
    with meter.phase(phases, "evaluation", n_images):
        cascade_lib.evaluate_cascade(cascade, table, folder / "train_images", "test")
    return phases["evaluation"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs=2, default=(226, 2263), metavar=("SMALL", "LARGE"))
    parser.add_argument("--skip-evaluation", action="store_true")
    parser.add_argument("--root", type=Path, help="where the twins for the evaluation go (default: a temporary folder)")
    args = parser.parse_args()
    small, large = args.images
    before = large * MASK_SIZE[0] * MASK_SIZE[1] * 4 * 2 / meter.GIB
    print(f"before streaming, the search held every mask probability of the split in float16: {before:.1f} GiB at "
          f"{large} images (and float32 copies per batch), before its boolean copies per threshold")
    steps = [("search", lambda n: search_peak(n))]
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or Path(scratch)
        if not args.skip_evaluation:
            steps.append(("evaluation", lambda n: evaluation_peak(root, n)))
        for name, measure in steps:
            found = {n: measure(n) for n in (small, large)}
            ratio = found[large]["peak_rss_gib"] / found[small]["peak_rss_gib"]
            print(f"{name}: " + "; ".join(f"{n} images: peak {f['peak_rss_gib']:.2f} GiB, {f['images_per_s']:.1f} "
                                          f"images/s" for n, f in found.items())
                  + f"; peak ratio {ratio:.2f} (target <= 1.2){'' if ratio <= 1.2 else '  MISSED'}")


if __name__ == "__main__":
    main()
