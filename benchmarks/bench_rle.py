"""RLE codec speed against the common Kaggle-kernel ``rle2mask`` / ``mask2rle``, run in the same process.

Run: ``python benchmarks/bench_rle.py``. Prints time per mask and the ratio baseline / ours (> 1 = we are faster).
"""

from __future__ import annotations

import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from steeldefect import rle  # noqa: E402

SHAPE = (256, 1600)


def rle2mask(mask_rle: str, shape=SHAPE) -> np.ndarray:
    """Baseline decode, as in the common Kaggle kernels: a Python loop over runs."""
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends, strict=True):
        img[lo:hi] = 1
    return img.reshape(shape, order="F")


def mask2rle(img: np.ndarray) -> str:
    """Baseline encode, as in the common Kaggle kernels."""
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def realistic_masks(n: int = 40, seed: int = 0) -> list[np.ndarray]:
    """Full-size masks shaped like Severstal defects: irregular blobs and long scratches, hundreds of runs."""
    rng = np.random.default_rng(seed)
    masks = []
    for i in range(n):
        mask = np.zeros(SHAPE, np.uint8)
        for _ in range(rng.integers(1, 4)):
            c0 = int(rng.integers(0, 1300))
            width = int(rng.integers(60, 300))
            top = int(rng.integers(0, 200))
            height = int(rng.integers(10, 80))
            for c in range(c0, min(c0 + width, SHAPE[1])):  # a ragged outline: one or two runs per column
                top = int(np.clip(top + rng.integers(-3, 4), 0, 250))
                mask[top : top + max(1, height + int(rng.integers(-5, 6))), c] = 1
                if i % 2 and c % 7 < 3:
                    mask[min(255, top + height + 10) : min(256, top + height + 16), c] = 1
        masks.append(mask)
    return masks


def bench_pair(base_fn, ours_fn, items, repeat=25) -> tuple[float, float]:
    """Seconds per item of each function: best of ``repeat`` interleaved passes (robust to a noisy machine)."""
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for k, fn in enumerate((base_fn, ours_fn)):
            start = time.perf_counter()
            for x in items:
                fn(x)
            best[k] = min(best[k], (time.perf_counter() - start) / len(items))
    return best[0], best[1]


def main() -> None:
    masks = realistic_masks()
    texts = [mask2rle(m) for m in masks]
    assert all(rle.encode(m) == t for m, t in zip(masks, texts, strict=True))
    assert all(np.array_equal(rle.decode(t), rle2mask(t)) for t in texts)
    runs = np.mean([len(t.split()) // 2 for t in texts])
    area = np.mean([m.sum() for m in masks])
    print(f"{len(masks)} masks of {SHAPE[0]}x{SHAPE[1]}, mean {runs:.0f} runs, mean area {area:.0f} px")
    for name, base_fn, ours_fn, items in (
        ("decode", rle2mask, rle.decode, texts),
        ("encode", mask2rle, rle.encode, masks),
    ):
        base, ours = bench_pair(base_fn, ours_fn, items)
        print(f"{name}: baseline {base * 1e6:7.0f} us/mask  steeldefect {ours * 1e6:7.0f} us/mask  ratio {base / ours:.2f}x")


if __name__ == "__main__":
    main()
