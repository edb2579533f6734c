"""The embedded default: a deterministic synthetic Severstal twin, written in the exact Kaggle layout.

The Kaggle images cannot be downloaded where this project is built and tested, so every command falls back to this
twin: ``train.csv`` (2020 format), ``train_images/*.jpg`` (256x1600 grayscale stored as 3-channel JPEG),
``test_images/`` and ``sample_submission.csv``. Everything downstream reads it through the same code as the real
data. The twin follows the paper's statistics (Section 3.1, 3.5): the share of defect-free images, images with
1/2/3 classes, rows per class and per-class mask areas. Its looks are modelled on the real classes, not copied:

- class 1: clusters of small pits and spots, dark or bright;
- class 2: thin, nearly vertical scratches;
- class 3: long scratches and scuffs (streaked bands at any angle but near-vertical), the commonest and largest;
- class 4: large dark patches with soft edges.

It is a test bed for the pipeline, not a benchmark: numbers measured on it say the code learns, not how well the
method does on steel.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import rle
from .config import CLASS_IDS, IMAGE_SHAPE

log = logging.getLogger(__name__)

TWIN_VERSION = 2  # bump when the generator's output changes, so that stale folders are regenerated
MARKER = "twin.json"

# Images per class combination: consistent with every count the paper gives (5,902 defect-free; 6,239 / 425 / 2
# images with 1 / 2 / 3 classes; 897 / 247 / 5,150 / 801 rows per class). The split of pairs and singles between
# classes is our choice; the paper prints only the totals.
COMBINATIONS: dict[tuple[int, ...], int] = {
    (): 5902,
    (1,): 769, (2,): 195, (3,): 4759, (4,): 516,
    (1, 2): 35, (1, 3): 91, (2, 3): 14, (2, 4): 1, (3, 4): 284,
    (1, 2, 3): 2,
}

# Per-class areas are log-normal with the paper's thresholds (the 2nd and 98th percentiles of the training areas,
# Section 3.5) as the 2nd and 98th percentiles: ln(area) ~ N(mu, sigma), mu +/- 2.054 sigma = ln(min), ln(max).
_Z98 = 2.0537
_PAPER_AREAS = {1: (500, 15500), 2: (700, 10000), 3: (1100, 160000), 4: (2800, 127000)}
AREA_LOG_PARAMS = {
    c: ((math.log(lo) + math.log(hi)) / 2, (math.log(hi) - math.log(lo)) / (2 * _Z98))
    for c, (lo, hi) in _PAPER_AREAS.items()
}


@dataclass(frozen=True)
class ImagePlan:
    """What one twin image holds: its name, background settings and one mask per class present."""

    image_id: str
    background_seed: int
    steel: tuple[int, int]  # columns [start, stop) of steel; outside it the off-strip band is black
    masks: dict[int, np.ndarray]  # class_id -> (256, 1600) uint8 mask
    looks: dict[int, dict]  # class_id -> rendering parameters (contrast, polarity, ...)


def _combination_counts(n_images: int) -> list[tuple[int, ...]]:
    """Class combinations for ``n_images``, in the paper's proportions (largest-remainder rounding)."""
    total = sum(COMBINATIONS.values())
    exact = {combo: n_images * count / total for combo, count in COMBINATIONS.items()}
    counts = {combo: math.floor(x) for combo, x in exact.items()}
    by_remainder = sorted(exact, key=lambda combo: exact[combo] - counts[combo], reverse=True)
    for combo in by_remainder[: n_images - sum(counts.values())]:
        counts[combo] += 1
    return [combo for combo, count in counts.items() for _ in range(count)]


def _image_ids(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        image_id = f"{int(rng.integers(16**9)):09x}.jpg"
        if image_id not in taken:
            taken.add(image_id)
            ids.append(image_id)
    return ids


def _target_area(rng: np.random.Generator, class_id: int) -> float:
    mu, sigma = AREA_LOG_PARAMS[class_id]
    return float(np.exp(rng.normal(mu, sigma)))


def _point_in(rng: np.random.Generator, steel: tuple[int, int], margin: int = 0) -> tuple[int, int]:
    lo, hi = steel[0] + margin, max(steel[0] + margin + 1, steel[1] - margin)
    return int(rng.integers(lo, hi)), int(rng.integers(0, IMAGE_SHAPE[0]))


def _rotated_box(center, length, width, angle_deg) -> np.ndarray:
    return cv2.boxPoints(((float(center[0]), float(center[1])), (float(length), float(width)), float(angle_deg)))


def _mask_class1(rng, area, steel) -> np.ndarray:
    """Pits: a cluster of small round spots whose areas add up to about ``area``."""
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    n_spots = int(np.clip(area / rng.uniform(120, 400), 2, 60))  # spots stay visible at 1/4-1/5 scale
    radius = math.sqrt(area / n_spots / math.pi)
    cx, cy = _point_in(rng, steel, margin=40)
    spread = 3.0 * radius * math.sqrt(n_spots)
    for _ in range(n_spots):
        x = int(cx + rng.normal(0, spread))
        y = int(np.clip(cy + rng.normal(0, spread / 3), 0, IMAGE_SHAPE[0] - 1))
        r = max(2.0, radius * rng.uniform(0.6, 1.3))
        axes = (max(2, round(r * rng.uniform(0.8, 1.25))), max(2, round(r * rng.uniform(0.8, 1.25))))
        cv2.ellipse(mask, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask


def _mask_class2(rng, area, steel) -> np.ndarray:
    """Thin scratches, within 12 degrees of vertical, one to three of them."""
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    n_lines = int(np.clip(math.ceil(area / rng.uniform(2500, 4500)), 1, 3))
    per_line = area / n_lines
    for _ in range(n_lines):
        width = float(np.clip(per_line / rng.uniform(120, 256), 5, 20))
        length = float(np.clip(per_line / width, 30, 300))
        cx, _ = _point_in(rng, steel, margin=20)
        cy = rng.uniform(length / 3, IMAGE_SHAPE[0] - length / 3)
        box = _rotated_box((cx, cy), width, length, rng.uniform(-12, 12))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    return mask


def _mask_class3(rng, area, steel) -> np.ndarray:
    """Long scratches and scuffs: one or two elongated bands at an angle away from vertical."""
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    n_bands = 1 if area < 20000 or rng.random() < 0.6 else 2
    for _ in range(n_bands):
        band = area / n_bands
        aspect = rng.uniform(4, 16)
        width = float(np.clip(math.sqrt(band / aspect), 6, 200))
        length = float(np.clip(band / width, 40, 1600))
        width = float(np.clip(band / length, 6, 256))
        angle = rng.uniform(-55, 55) * min(1.0, 4000 / max(band, 1.0))  # large scuffs lie along the strip
        cx, cy = _point_in(rng, steel, margin=30)
        box = _rotated_box((cx, cy), length, width, angle)
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    return mask


def _mask_class4(rng, area, steel) -> np.ndarray:
    """Large patches: a union of overlapping ellipses around one centre."""
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    n_parts = int(rng.integers(2, 6))
    radius = math.sqrt(area / math.pi) / math.sqrt(n_parts) * 1.1
    cx, cy = _point_in(rng, steel, margin=60)
    for _ in range(n_parts):
        x = int(cx + rng.normal(0, radius * 0.6))
        y = int(np.clip(cy + rng.normal(0, radius * 0.4), 0, IMAGE_SHAPE[0] - 1))
        axes = (max(4, round(radius * rng.uniform(0.8, 1.8))), max(4, round(radius * rng.uniform(0.5, 1.0))))
        cv2.ellipse(mask, (x, y), axes, float(rng.uniform(-30, 30)), 0, 360, 1, -1)
    return mask


_MASKERS = {1: _mask_class1, 2: _mask_class2, 3: _mask_class3, 4: _mask_class4}


def _mask_near_area(rng: np.random.Generator, class_id: int, target: float, steel: tuple[int, int]) -> np.ndarray:
    """A mask of the class whose area is near ``target``: shapes lose area to overlaps, the image border and
    the off-strip band, so a mask that falls short is redrawn larger (a few times at most)."""
    scale, best, best_error = 1.0, None, math.inf
    for _ in range(8):
        mask = _MASKERS[class_id](rng, target * scale, steel)
        mask[:, : steel[0]] = 0
        mask[:, steel[1] :] = 0
        area = max(int(mask.sum()), 1)
        error = abs(math.log(area / target))
        if error < best_error:
            best, best_error = mask, error
        if error < 0.05:
            break
        scale *= float(np.clip(target / area, 0.25, 4.0))
    return best


def _plan(rng: np.random.Generator, image_id: str, combo: tuple[int, ...]) -> ImagePlan:
    width = IMAGE_SHAPE[1]
    steel = (0, width)
    if rng.random() < 0.15:  # off-strip black band at one side, independent of the defects
        band = int(rng.integers(60, 500))
        steel = (band, width) if rng.random() < 0.5 else (0, width - band)
    masks, looks = {}, {}
    for class_id in combo:
        masks[class_id] = _mask_near_area(rng, class_id, _target_area(rng, class_id), steel)
        looks[class_id] = {
            "contrast": float(rng.uniform(0.55, 1.0)),
            "polarity": 1.0 if (class_id == 1 and rng.random() < 0.4) else -1.0,
            "angle": float(rng.uniform(0, math.pi)),
            "period": float(rng.uniform(6, 16)),
            "offset": float(rng.choice([-1.0, 1.0]) * rng.uniform(25, 45)),
        }
    return ImagePlan(image_id, int(rng.integers(2**31)), steel, masks, looks)


def _background(rng: np.random.Generator, steel: tuple[int, int]) -> np.ndarray:
    height, width = IMAGE_SHAPE
    base = rng.uniform(70, 150)
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    banding = sum(
        rng.uniform(2, 9) * np.sin(2 * np.pi * rows / rng.uniform(6, 80) + rng.uniform(0, 2 * np.pi))
        for _ in range(3)
    )
    gradient = rng.uniform(-25, 25) * (cols / width - 0.5) + rng.uniform(-10, 10) * (rows / height - 0.5)
    coarse = cv2.resize(rng.normal(0, 6, (16, 100)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, rng.uniform(3, 8), IMAGE_SHAPE).astype(np.float32)
    image = (base + banding + gradient + coarse + grain).astype(np.float32)
    image[:, : steel[0]] = rng.uniform(0, 12)
    image[:, steel[1] :] = rng.uniform(0, 12)
    return image


def _render(plan: ImagePlan) -> np.ndarray:
    """The image of a plan: background, then each defect painted on its mask (uint8, (256, 1600, 3))."""
    rng = np.random.default_rng(plan.background_seed)
    image = _background(rng, plan.steel)
    height, width = IMAGE_SHAPE
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    for class_id, mask in plan.masks.items():
        look = plan.looks[class_id]
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.2 if class_id != 4 else 4.0)
        strength = look["contrast"]
        if class_id == 1:
            delta = look["polarity"] * strength * rng.uniform(45, 80) * soft
        elif class_id == 2:
            delta = -strength * rng.uniform(40, 75) * soft
        elif class_id == 3:
            theta = look["angle"]
            streaks = np.sin((cols * np.cos(theta) + rows * np.sin(theta)) * 2 * np.pi / look["period"])
            # the streaks vanish when the image is shrunk for training; the offset keeps the scuff visible
            delta = strength * soft * (rng.uniform(22, 40) * streaks + look["offset"])
        else:
            delta = -strength * rng.uniform(0.35, 0.6) * soft * image
        image = image + delta
    gray = np.clip(image, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def iter_plans(n_images: int, seed: int = 0) -> Iterator[ImagePlan]:
    """The twin's images as plans (names and masks), without rendering: the statistics of a twin of any size."""
    rng = np.random.default_rng(seed)
    combos = _combination_counts(n_images)
    order = rng.permutation(len(combos))
    image_ids = _image_ids(rng, n_images, set())
    for index, (image_id, k) in enumerate(zip(image_ids, order, strict=True)):
        yield _plan(np.random.default_rng([seed, index]), image_id, combos[k])


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise OSError(f"could not write {path}")


def _twin_spec(n_images: int, seed: int, n_test_images: int) -> dict:
    return {"version": TWIN_VERSION, "n_images": n_images, "seed": seed, "n_test_images": n_test_images}


def is_twin(data_dir: str | Path) -> bool:
    """Whether a data folder is a synthetic twin (it holds the ``twin.json`` that ``make_synthetic_severstal`` writes)."""
    return (Path(data_dir) / MARKER).is_file()


def twin_version(data_dir: str | Path) -> int | None:
    """The generator version that wrote a twin folder (its ``twin.json``), None for a folder that is not a twin."""
    marker = Path(data_dir) / MARKER
    return json.loads(marker.read_text()).get("version") if marker.is_file() else None


def make_synthetic_severstal(
    out_dir: str | Path, n_images: int, seed: int = 0, *, n_test_images: int | None = None
) -> Path:
    """Write a synthetic Severstal twin in the Kaggle layout, or reuse an identical one already there.

    Args:
        out_dir: the folder to write (``train.csv``, ``train_images/``, ``test_images/``,
            ``sample_submission.csv``, and ``twin.json`` describing how it was made).
        n_images: training images (the paper's data has 12,568).
        seed: the same seed gives byte-identical files.
        n_test_images: unlabelled images in ``test_images/`` (default: a tenth of ``n_images``, at least 2).

    Returns:
        ``out_dir`` as a ``Path``.

    Example:
        >>> root = make_synthetic_severstal("data/synthetic", n_images=200, seed=0)
        >>> sorted(p.name for p in root.iterdir())
        ['sample_submission.csv', 'test_images', 'train.csv', 'train_images', 'twin.json']

    Reproduces the dataset of the paper's Section 3.1 in form and statistics (see the module docstring).
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    n_test_images = max(2, n_images // 10) if n_test_images is None else n_test_images
    out_dir = Path(out_dir)
    spec = _twin_spec(n_images, seed, n_test_images)
    marker = out_dir / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        log.info("reusing the synthetic twin in %s", out_dir)
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        if not marker.is_file():
            raise FileExistsError(
                f"{out_dir} exists and is not a synthetic twin (no {MARKER}); choose another folder"
            )
        shutil.rmtree(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "train_images").mkdir(parents=True)
    (tmp / "test_images").mkdir()
    log.info("writing a synthetic twin of %d images to %s", n_images, out_dir)
    rows = []
    for plan in iter_plans(n_images, seed):
        _write_jpeg(tmp / "train_images" / plan.image_id, _render(plan))
        rows.extend(f"{plan.image_id},{c},{rle.encode(plan.masks[c])}" for c in sorted(plan.masks))
    (tmp / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n" + "".join(r + "\n" for r in rows))
    test_rng = np.random.default_rng([seed, n_images, 1])
    taken = {p.name for p in (tmp / "train_images").iterdir()}
    test_ids = _image_ids(test_rng, n_test_images, taken)
    combos = _combination_counts(n_test_images)
    submission = ["ImageId,EncodedPixels,ClassId"]
    for index, image_id in enumerate(test_ids):
        plan = _plan(np.random.default_rng([seed, n_images, 2, index]), image_id, combos[index])
        _write_jpeg(tmp / "test_images" / image_id, _render(plan))
        submission.extend(f"{image_id},,{c}" for c in CLASS_IDS)
    (tmp / "sample_submission.csv").write_text("\n".join(submission) + "\n")
    (tmp / MARKER).write_text(json.dumps(spec, indent=2) + "\n")
    if out_dir.exists():
        out_dir.rmdir()
    tmp.rename(out_dir)
    return out_dir
