"""The embedded default: a deterministic synthetic Severstal twin, written in the exact Kaggle layout.

The Kaggle images cannot be downloaded where this project is built and tested, so every command falls back to this
twin: ``train.csv`` (2020 format), ``train_images/*.jpg`` (256x1600 grayscale stored as 3-channel JPEG),
``test_images/`` and ``sample_submission.csv``. Everything downstream reads it through the same code as the real
data. The twin follows the paper's statistics (Section 3.1, 3.5): the share of defect-free images, images with
1/2/3 classes, rows per class and per-class mask areas.

Version 3 looks like steel in numbers: its generator is calibrated on the real sample (43 competition images,
measured by ``steeldefect.realism``; only numbers are stored, never pixels). The background is an anisotropic
power-law texture (vertical streaks, spectral slope about -1.1 along the rows) with dark drips, patchy illumination
and bands along the strip, its grey levels mapped onto real steel's percentiles; 30 % of the images have a black
unlit strip at one side. The defects are as subtle as the real ones: each is a texture inside its mask whose mean
is set against the 15-px ring of steel around it to the real class's contrast (a few grey levels for classes 1-2,
11-14 for classes 3-4), with the real classes' number of parts and shape:

- class 1: a loose cluster of ~6 small upright patches of bright and dark pits;
- class 2: one thin, nearly vertical scratch with a dark core;
- class 3: a row of ~3 upright elongated marks of fine vertical streaks, darker or brighter than the steel;
- class 4: one to a few large rough patches, mostly darker.

``realism.compare`` sets a twin against the real numbers; docs/results.md has the table. It is still a stand-in:
numbers measured on it say the code learns, not how well the method does on steel.
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
import scipy.fft

from . import realism, rle
from .config import CLASS_IDS, IMAGE_SHAPE
from .realism import UNLIT_LEVEL

log = logging.getLogger(__name__)

TWIN_VERSION = 3  # bump when the generator's output changes, so that stale folders are regenerated
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


def _blob_positions(rng, n: int, steel, spacing: float, margin: int) -> list[tuple[int, int]]:
    """``n`` centres scattered along the strip, about ``spacing`` apart in x (so that the parts stay separate)."""
    cx, _ = _point_in(rng, steel, margin=margin)
    xs = cx + (np.arange(n) - (n - 1) / 2) * spacing + rng.normal(0, spacing / 4, n)
    xs = np.clip(xs, steel[0] + margin, max(steel[0] + margin, steel[1] - margin))  # every part on the steel
    ys = rng.uniform(0, IMAGE_SHAPE[0], n)
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]


def _mask_class1(rng, area, steel) -> np.ndarray:
    """Pits: a loose cluster of a few (median 6-7) small upright patches whose areas add up to about ``area``."""
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    n_parts = int(np.clip(round(rng.lognormal(math.log(6.5), 0.35)), 2, 14))
    part = area / n_parts
    minor = math.sqrt(part / math.pi / 2.2)  # elongation ~2, the major axis near vertical
    for x, y in _blob_positions(rng, n_parts, steel, spacing=rng.uniform(4, 8) * minor, margin=40):
        axes = (max(2, round(minor * rng.uniform(0.8, 1.25))), max(3, round(2.2 * minor * rng.uniform(0.8, 1.25))))
        cv2.ellipse(mask, (x, y), axes, float(rng.uniform(-25, 25)), 0, 360, 1, -1)
    return mask


def _mask_class2(rng, area, steel) -> np.ndarray:
    """Thin scratches, within 12 degrees of vertical: one, or two for the largest areas."""
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    n_lines = 1 if area < 6000 else int(rng.integers(1, 3))  # mostly one (the real class-2 mask is one)
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
    """Marks along the rolling direction: a row of (median 3) upright elongated patches, some ragged."""
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    n_parts = int(np.clip(round(rng.lognormal(math.log(3.4), 0.5)), 1, 9))
    part = area / n_parts
    height = float(np.clip(math.sqrt(part * rng.uniform(2, 5)), 12, IMAGE_SHAPE[0] * 1.1))
    width = float(np.clip(part / height, 4, 1600))
    for x, y in _blob_positions(rng, n_parts, steel, spacing=width + rng.uniform(20, 120), margin=30):
        y = int(np.clip(y, height / 2 - 10, IMAGE_SHAPE[0] - height / 2 + 10))
        axes = (max(2, round(width / 2 * rng.uniform(0.85, 1.2))), max(4, round(height / 2 * rng.uniform(0.85, 1.2))))
        cv2.ellipse(mask, (x, y), axes, float(rng.uniform(-12, 12)), 0, 360, 1, -1)
    return mask


def _mask_class4(rng, area, steel) -> np.ndarray:
    """Large rough patches: one to a few (median 2) unions of overlapping ellipses, at any angle."""
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    n_patches = int(np.clip(round(rng.lognormal(math.log(1.8), 0.45)), 1, 6))
    patch = area / n_patches
    radius = math.sqrt(patch / math.pi)
    for cx, cy in _blob_positions(rng, n_patches, steel, spacing=2.6 * radius + rng.uniform(10, 60), margin=60):
        angle = float(rng.choice([-1, 1]) * rng.uniform(20, 90))  # real: median 56 degrees from the rows
        for _ in range(int(rng.integers(2, 5))):
            x = int(cx + rng.normal(0, radius * 0.35))
            y = int(np.clip(cy + rng.normal(0, radius * 0.35), 0, IMAGE_SHAPE[0] - 1))
            axes = (max(4, round(radius * rng.uniform(0.9, 1.5))), max(4, round(radius * rng.uniform(0.5, 0.8))))
            cv2.ellipse(mask, (x, y), axes, angle + float(rng.normal(0, 15)), 0, 360, 1, -1)
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


# Twin v3 is calibrated on real steel: the numbers below are those of the real sample as ``steeldefect.realism``
# measures it (stored in ``realism_real.json``; medians over 43 images), not pixels. ``realism.compare`` checks them.
# Grey levels of the lit steel (the unlit strips left out), per-image percentiles, median over the real images; the
# images vary around them, the brighter levels the more (interquartile ranges: p1 36-51, p50 78-106, p99 138-218).
GREY_QUANTILES = {0: 15.0, 1: 44.0, 5: 55.0, 25: 75.0, 50: 92.0, 75: 115.0, 95: 144.0, 99: 176.0, 100: 240.0}
UNLIT_SHARE = 0.30  # images with a black unlit strip at one side (median width 378 px)
# Per class: median |contrast| of a mask's mean grey against the 15-px ring of steel around it, and the share of
# masks darker than their ring (real: class 1 +3.1, class 2 -4.3, class 3 |13.6| (signed median -4.9), class 4 -9.5
# (|11.4|)); the defects' texture inside the mask is what makes them visible, as on real steel.
DEFECT_CONTRAST = {1: (3.1, 0.2), 2: (4.3, 1.0), 3: (13.6, 0.6), 4: (11.4, 0.9)}


def _plan(rng: np.random.Generator, image_id: str, combo: tuple[int, ...], defect_contrast: float = 1.0) -> ImagePlan:
    width = IMAGE_SHAPE[1]
    steel = (0, width)
    if rng.random() < UNLIT_SHARE:  # unlit black strip at one side, independent of the defects
        band = int(np.clip(rng.lognormal(math.log(378), 0.45), 40, 1100))
        steel = (band, width) if rng.random() < 0.5 else (0, width - band)
    masks, looks = {}, {}
    for class_id in combo:
        masks[class_id] = _mask_near_area(rng, class_id, _target_area(rng, class_id), steel)
        magnitude, dark_share = DEFECT_CONTRAST[class_id]
        looks[class_id] = {
            "contrast": defect_contrast * float((-1.0 if rng.random() < dark_share else 1.0) * magnitude
                                                * rng.lognormal(0, 0.35)),
            "texture": defect_contrast * float(rng.uniform(0.6, 1.4)),  # strength of the texture inside the mask
            "seed": int(rng.integers(2**31)),
        }
    return ImagePlan(image_id, int(rng.integers(2**31)), steel, masks, looks)


def _power_law_field(rng: np.random.Generator, slope: float, anisotropy: float, knee: float) -> np.ndarray:
    """Gaussian noise whose power falls as frequency^-slope above ``knee`` (cycles per pixel; flat below it),
    stretched ``anisotropy`` times along the columns (so that it forms vertical streaks), zero mean, unit variance."""
    height, width = IMAGE_SHAPE
    spectrum = scipy.fft.rfft2(rng.standard_normal(IMAGE_SHAPE, dtype=np.float32))
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    radius2 = fx**2 + (anisotropy * fy) ** 2 + np.float32(knee) ** 2
    field = scipy.fft.irfft2(spectrum * radius2 ** np.float32(-slope / 4), s=IMAGE_SHAPE)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _background(rng: np.random.Generator, steel: tuple[int, int]) -> np.ndarray:
    """Steel: vertical streaks (an anisotropic power-law texture and dark drips), patchy illumination, with
    the grey levels of real steel (its percentiles, jittered per image) and an unlit strip where planned."""
    height, width = IMAGE_SHAPE
    texture = _power_law_field(rng, slope=rng.uniform(1.9, 2.5), anisotropy=rng.uniform(2, 6), knee=1 / 64)
    illumination = cv2.resize(rng.normal(0, 1, (3, 12)).astype(np.float32), (width, height),
                              interpolation=cv2.INTER_CUBIC)
    drips = np.zeros(IMAGE_SHAPE, np.float32)
    for _ in range(int(rng.integers(0, 40))):
        x, w = int(rng.integers(0, width)), int(rng.integers(1, 10))
        top = int(rng.integers(-height, height))
        drips[max(top, 0) : top + int(rng.integers(40, 2 * height)), x : x + w] -= rng.uniform(0.5, 2.5)
    drips = cv2.GaussianBlur(drips, (0, 0), sigmaX=1.5, sigmaY=4)
    across = cv2.resize(rng.normal(0, 1, (int(rng.integers(2, 6)), 1)).astype(np.float32), (1, height),
                        interpolation=cv2.INTER_CUBIC)  # bands along the strip: lighter or darker rows
    across = (across - across.mean()) / max(float(across.std()), 1e-6)
    field = texture + rng.uniform(0.4, 1.2) * illumination + drips + 0.5 * rng.lognormal(0, 0.5) * across
    # map the field's own quantiles onto real steel's grey levels (jittered: images differ in brightness and spread)
    levels = np.array(list(GREY_QUANTILES.values()), np.float32)
    levels = (levels - 20.0) * rng.lognormal(0, 0.3) + 20.0 + rng.normal(0, 6)  # real: darkest levels vary least
    lit = field[:, steel[0] : steel[1]]
    cuts = np.percentile(lit[::4, ::4], list(GREY_QUANTILES))
    cuts[0], cuts[-1] = min(cuts[0], float(field.min())), max(cuts[-1], float(field.max()))
    lo, hi = float(cuts[0]), float(cuts[-1])
    table = np.interp(np.linspace(lo, hi, 4096), np.maximum.accumulate(cuts), levels).astype(np.float32)
    image = table[((field - lo) * np.float32(4095 / max(hi - lo, 1e-6))).astype(np.int32)]  # np.interp, 4x faster
    dark = np.float32(rng.uniform(1, 10))
    image[:, : steel[0]] = dark
    image[:, steel[1] :] = dark
    return image


def _defect_texture(rng: np.random.Generator, class_id: int, mask: np.ndarray, strength: float) -> np.ndarray:
    """What a defect adds to the steel inside its mask, before its mean is set: its texture."""
    height, width = IMAGE_SHAPE
    inside = mask.astype(np.float32)
    if class_id == 1:  # pits: small bright and dark spots scattered over the patches
        spots = np.zeros(IMAGE_SHAPE, np.float32)
        ys, xs = np.nonzero(mask)
        for k in rng.choice(ys.size, size=min(ys.size, max(3, ys.size // 60)), replace=False):
            cv2.circle(spots, (int(xs[k]), int(ys[k])), int(rng.integers(1, 4)), float(rng.choice([-1, 1, 1])), -1)
        return strength * rng.uniform(35, 60) * cv2.GaussianBlur(spots, (0, 0), 0.8) * inside
    if class_id == 2:  # a scratch: a dark core along the mask
        core = cv2.erode(mask, np.ones((1, 5), np.uint8)).astype(np.float32)
        return -strength * rng.uniform(15, 35) * cv2.GaussianBlur(core, (0, 0), 1.0) * inside
    if class_id == 3:  # marks along the rolling direction: fine vertical streaks and flecks
        streaks = cv2.GaussianBlur(rng.normal(0, 1, (height // 8, width)).astype(np.float32), (0, 0), sigmaX=1.2)
        streaks = cv2.resize(streaks, (width, height), interpolation=cv2.INTER_LINEAR)
        return strength * rng.uniform(18, 32) * streaks / max(float(streaks.std()), 1e-6) * inside
    rough = cv2.GaussianBlur(rng.normal(0, 1, IMAGE_SHAPE).astype(np.float32), (0, 0), 3.0)  # class 4: rough patches
    return strength * rng.uniform(12, 22) * rough / max(float(rough.std()), 1e-6) * inside


def _set_contrast(image: np.ndarray, mask: np.ndarray, contrast: float) -> np.ndarray:
    """Shift the defect (with a soft edge) so that its mean grey minus that of the steel around it (the ring that
    ``realism.defect_shape`` measures) is ``contrast``."""
    inside = mask.astype(bool)
    ring = realism.surroundings(mask)
    if not inside.any() or not ring.any():
        return image
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5)
    gain = max(float(soft[inside].mean() - soft[ring].mean()), 0.1)
    for _ in range(3):  # again after clipping: pixels darkened below UNLIT_LEVEL leave the measure
        shown = np.clip(image, 0, 255)
        lit = shown >= UNLIT_LEVEL
        if not (inside & lit).any() or not (ring & lit).any():
            break
        error = contrast - (shown[inside & lit].mean() - shown[ring & lit].mean())
        if abs(error) < 0.5:
            break
        image = image + error / gain * soft
    return image


def _render(plan: ImagePlan) -> np.ndarray:
    """The image of a plan: background, then each defect's texture on its mask and its mean contrast set
    (uint8, (256, 1600, 3))."""
    rng = np.random.default_rng(plan.background_seed)
    image = _background(rng, plan.steel)
    for class_id, mask in plan.masks.items():
        look = plan.looks[class_id]
        image = image + _defect_texture(np.random.default_rng(look["seed"]), class_id, mask, look["texture"])
        image = _set_contrast(image, mask, look["contrast"])
    gray = np.clip(image, 0, 255).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def iter_plans(n_images: int, seed: int = 0, defect_contrast: float = 1.0) -> Iterator[ImagePlan]:
    """The twin's images as plans (names and masks), without rendering: the statistics of a twin of any size."""
    rng = np.random.default_rng(seed)
    combos = _combination_counts(n_images)
    order = rng.permutation(len(combos))
    image_ids = _image_ids(rng, n_images, set())
    for index, (image_id, k) in enumerate(zip(image_ids, order, strict=True)):
        yield _plan(np.random.default_rng([seed, index]), image_id, combos[k], defect_contrast)


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise OSError(f"could not write {path}")


def _twin_spec(n_images: int, seed: int, n_test_images: int, defect_contrast: float) -> dict:
    return {"version": TWIN_VERSION, "n_images": n_images, "seed": seed, "n_test_images": n_test_images,
            "defect_contrast": defect_contrast}


def is_twin(data_dir: str | Path) -> bool:
    """Whether a data folder is a synthetic twin (it holds the ``twin.json`` that ``make_synthetic_severstal`` writes)."""
    return (Path(data_dir) / MARKER).is_file()


def twin_version(data_dir: str | Path) -> int | None:
    """The generator version that wrote a twin folder (its ``twin.json``), None for a folder that is not a twin."""
    marker = Path(data_dir) / MARKER
    return json.loads(marker.read_text()).get("version") if marker.is_file() else None


def make_synthetic_severstal(
    out_dir: str | Path, n_images: int, seed: int = 0, *, n_test_images: int | None = None,
    defect_contrast: float = 1.0,
) -> Path:
    """Write a synthetic Severstal twin in the Kaggle layout, or reuse an identical one already there.

    Args:
        out_dir: the folder to write (``train.csv``, ``train_images/``, ``test_images/``,
            ``sample_submission.csv``, and ``twin.json`` describing how it was made).
        n_images: training images (the paper's data has 12,568).
        seed: the same seed gives byte-identical files.
        n_test_images: unlabelled images in ``test_images/`` (default: a tenth of ``n_images``, at least 2).
        defect_contrast: multiplies every defect's contrast and texture. 1 (the default, and what every command
            uses): as subtle as on real steel. Larger values make the defects easier to see, e.g. for a test or a
            lesson that needs small models to learn in a minute; the backgrounds, masks and names stay the same.

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
    if not defect_contrast > 0:
        raise ValueError(f"defect_contrast must be > 0, got {defect_contrast}")
    n_test_images = max(2, n_images // 10) if n_test_images is None else n_test_images
    out_dir = Path(out_dir)
    spec = _twin_spec(n_images, seed, n_test_images, float(defect_contrast))
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
    for plan in iter_plans(n_images, seed, defect_contrast):
        _write_jpeg(tmp / "train_images" / plan.image_id, _render(plan))
        rows.extend(f"{plan.image_id},{c},{rle.encode(plan.masks[c])}" for c in sorted(plan.masks))
    (tmp / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n" + "".join(r + "\n" for r in rows))
    test_rng = np.random.default_rng([seed, n_images, 1])
    taken = {p.name for p in (tmp / "train_images").iterdir()}
    test_ids = _image_ids(test_rng, n_test_images, taken)
    combos = _combination_counts(n_test_images)
    submission = ["ImageId,EncodedPixels,ClassId"]
    for index, image_id in enumerate(test_ids):
        plan = _plan(np.random.default_rng([seed, n_images, 2, index]), image_id, combos[index], defect_contrast)
        _write_jpeg(tmp / "test_images" / image_id, _render(plan))
        submission.extend(f"{image_id},,{c}" for c in CLASS_IDS)
    (tmp / "sample_submission.csv").write_text("\n".join(submission) + "\n")
    (tmp / MARKER).write_text(json.dumps(spec, indent=2) + "\n")
    if out_dir.exists():
        out_dir.rmdir()
    tmp.rename(out_dir)
    return out_dir
