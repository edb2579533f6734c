"""The embedded default: a deterministic synthetic Severstal twin, written in the exact Kaggle layout.

The Kaggle images cannot be downloaded where this project is built and tested, so every command falls back to this
twin: ``train.csv`` (2020 format), ``train_images/*.jpg`` (256x1600 grayscale stored as 3-channel JPEG),
``test_images/`` and ``sample_submission.csv``. Everything downstream reads it through the same code as the real
data. The twin follows the paper's statistics (Section 3.1, 3.5): the share of defect-free images, images with
1/2/3 classes, rows per class and per-class mask areas.

Versions 4 to 6 are built to teach: a model trained on it alone should find defects in real steel (judged by transfer,
``benchmarks/bench_transfer.py``; ``realism.compare`` holds its summary statistics to real steel's as diagnostics).
It follows what the literature found to transfer (DESIGN.md, "Real data and the twin"):

- the steel comes in families, sampled broadly and independently of the defects: a plain lit strip with gradients,
  patchy light, fine vertical streaks and a crisp grain along the rows (v5: real steel is sharp at the pixel scale); mottled stains and drips; rough or speckled surfaces; embossed plates
  (diamond grooves); scaled, flaking surfaces; strong vertical streaks. Distractors that real labels call
  defect-free (bright water spots, dark smears, specks, thin faint lines, glare, ripples) lie on defect-free and
  defective images alike; 30 % of the images have a black unlit strip at one side;
- the masks are drawn as annotators drew them, as polygons and boxes: class 1 clusters of small polygons around
  pits; class 2 thin boxes around short vertical scratches; class 3 boxes around vertical scratch strips (often the
  full height), or polygons around groups of flakes or bright scuffs; class 4 large irregular polygons;
- each defect replaces the steel's texture inside its mask (or is added to it), with crisp edges: class-3 strips
  as bundles of thin bright and dark scratch lines with glints (v5; v4 drew a smooth trough), class-2 grooves with a
  bright and a dark flank, pits with a lit rim; class-3 flake groups and class-4 patches as lumpy relief, a raised
  or sunken region lit from one side (v6; v5 drew tiny flecks that vanish at the models' input size), class-3
  scuffs as bright streaks along the rows (v6); blended at a random opacity, its mean set against the ring of steel
  around it. Pixels change only inside the masks.

No real pixel, patch or texture sample is in the generator: only numbers measured on real steel (grey levels,
contrasts, shapes). It is still a stand-in: figures measured on it say the code learns, and how a model trained on
it does on real steel is measured, not assumed.
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

from . import realism, rle
from .config import CLASS_IDS, IMAGE_SHAPE
from .realism import UNLIT_LEVEL

log = logging.getLogger(__name__)

TWIN_VERSION = 6  # bump when the generator's output changes, so that stale folders are regenerated
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
    looks: dict[int, dict]  # class_id -> rendering parameters (kind, contrast, texture, blend, ...)
    family: str = "plain"  # the steel's family of surfaces (FAMILIES)
    distractors: tuple[str, ...] = ()  # defect-free marks drawn on the steel (DISTRACTORS)


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


def _blob_positions(rng, n: int, steel, spacing: float, margin: int) -> list[tuple[int, int]]:
    """``n`` centres scattered along the strip, about ``spacing`` apart in x (so that the parts stay separate)."""
    cx, _ = _point_in(rng, steel, margin=margin)
    xs = cx + (np.arange(n) - (n - 1) / 2) * spacing + rng.normal(0, spacing / 4, n)
    xs = np.clip(xs, steel[0] + margin, max(steel[0] + margin, steel[1] - margin))  # every part on the steel
    ys = rng.uniform(0, IMAGE_SHAPE[0], n)
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]


def _polygon(rng, center, radius: float, aspect: float, angle_deg: float, n_vertices: int, jag: float) -> np.ndarray:
    """An irregular polygon as an annotator draws one: ``n_vertices`` corners at random angles around ``center``, at
    radii ``radius`` +- ``jag``, stretched ``aspect`` times along its axis and turned ``angle_deg`` from the rows."""
    angles = np.sort(rng.uniform(0, 2 * math.pi, n_vertices))
    radii = radius * rng.uniform(1 - jag, 1 + jag, n_vertices)
    stretch = math.sqrt(aspect)
    x, y = radii * np.cos(angles) * stretch, radii * np.sin(angles) / stretch
    turn = math.radians(angle_deg)
    xr = center[0] + x * math.cos(turn) - y * math.sin(turn)
    yr = center[1] + x * math.sin(turn) + y * math.cos(turn)
    return np.round(np.stack([xr, yr], axis=1)).astype(np.int32)


def _quad(center, width: float, height: float, slant_deg: float, taper: float) -> np.ndarray:
    """A box as annotators drew them around scratches: ``width`` x ``height`` about ``center``, leaning
    ``slant_deg`` from the vertical, its top ``taper`` times as wide as its bottom."""
    cx, cy = center
    half_top, half_bottom = width * taper / 2, width / 2
    shift = math.tan(math.radians(slant_deg)) * height / 2
    points = [(cx - half_top + shift, cy - height / 2), (cx + half_top + shift, cy - height / 2),
              (cx + half_bottom - shift, cy + height / 2), (cx - half_bottom - shift, cy + height / 2)]
    return np.round(np.array(points)).astype(np.int32)


def _mask_class1(rng, area, steel, kind) -> np.ndarray:
    """Pits: a loose cluster of a few (median 6-7) small spots, each annotated as a small upright polygon."""
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    n_parts = int(np.clip(round(rng.lognormal(math.log(6.5), 0.35)), 2, 14))
    radius = math.sqrt(area / n_parts / math.pi)
    for x, y in _blob_positions(rng, n_parts, steel, spacing=rng.uniform(3, 8) * radius, margin=40):
        polygon = _polygon(rng, (x, y), radius * rng.uniform(0.8, 1.25), rng.uniform(0.3, 0.8),
                           float(rng.uniform(-15, 15)), int(rng.integers(4, 8)), 0.25)
        cv2.fillPoly(mask, [polygon], 1)
    return mask


def _mask_class2(rng, area, steel, kind) -> np.ndarray:
    """Short scratches within 12 degrees of vertical, each annotated as a thin box: one, or two for the largest."""
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    n_lines = 1 if area < 6000 else int(rng.integers(1, 3))  # mostly one (the real class-2 mask is one)
    per_line = area / n_lines
    for _ in range(n_lines):
        width = float(np.clip(per_line / rng.uniform(120, 256), 6, 24))
        length = float(np.clip(per_line / width, 30, 300))
        cx, _ = _point_in(rng, steel, margin=20)
        cy = rng.uniform(length / 3, IMAGE_SHAPE[0] - length / 3)
        cv2.fillPoly(mask, [_quad((cx, cy), width, length, rng.uniform(-12, 12), rng.uniform(0.8, 1.25))], 1)
    return mask


def _mask_class3(rng, area, steel, kind) -> np.ndarray:
    """Marks along the rolling direction, in a row of (median 3) parts: boxes around vertical scratch strips
    (often the full height), or polygons around groups of flakes (kind "flecks") or scuffs."""
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    n_parts = int(np.clip(round(rng.lognormal(math.log(3.0), 0.5)), 1, 8))
    part = area / n_parts
    if kind == "strips":
        height = IMAGE_SHAPE[0] * 1.05 if rng.random() < 0.5 else float(rng.uniform(60, IMAGE_SHAPE[0]))
        width = float(np.clip(part / height, 6, 1400))
        if width > 3 * height:  # a part this wide is a band the full height of the strip
            height, width = IMAGE_SHAPE[0] * 1.05, part / (IMAGE_SHAPE[0] * 1.05)
        for x, y in _blob_positions(rng, n_parts, steel, spacing=width + rng.uniform(15, 150), margin=20):
            y = float(np.clip(y, height / 2 - 5, IMAGE_SHAPE[0] - height / 2 + 5))
            cv2.fillPoly(mask, [_quad((x, y), width, height, rng.uniform(-4, 4), rng.uniform(0.7, 1.3))], 1)
        return mask
    radius = math.sqrt(part / math.pi)
    for x, y in _blob_positions(rng, n_parts, steel, spacing=2.2 * radius + rng.uniform(10, 80), margin=30):
        aspect = float(rng.uniform(0.4, 2.5))
        cv2.fillPoly(mask, [_polygon(rng, (x, y), radius, aspect, float(rng.uniform(-90, 90)),
                                     int(rng.integers(5, 9)), 0.3)], 1)
    return mask


def _mask_class4(rng, area, steel, kind) -> np.ndarray:
    """Large rough patches: one to a few (median 2) irregular polygons, at any angle."""
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    n_patches = int(np.clip(round(rng.lognormal(math.log(1.8), 0.45)), 1, 5))
    radius = math.sqrt(area / n_patches / math.pi)
    for cx, cy in _blob_positions(rng, n_patches, steel, spacing=3.2 * radius + rng.uniform(10, 80), margin=40):
        angle = float(rng.choice([-1, 1]) * rng.uniform(20, 90))  # real: median 56 degrees from the rows
        cv2.fillPoly(mask, [_polygon(rng, (cx, cy), radius, float(rng.uniform(1.2, 3.0)), angle,
                                     int(rng.integers(8, 17)), 0.4)], 1)
    return mask


_MASKERS = {1: _mask_class1, 2: _mask_class2, 3: _mask_class3, 4: _mask_class4}
# What each class's masks are drawn around, and how often (class 3: scratch strips in boxes, groups of flakes in
# polygons, or bright scuffs in polygons; the shares are our reading of the real sample's class-3 masks).
KINDS = {1: {"pits": 1.0}, 2: {"scratch": 1.0}, 3: {"strips": 0.55, "flecks": 0.25, "scuffs": 0.2},
         4: {"rough": 1.0}}


def _mask_near_area(rng: np.random.Generator, class_id: int, target: float,
                    steel: tuple[int, int]) -> tuple[np.ndarray, str]:
    """A mask of the class whose area is near ``target``, and its kind: shapes lose area to overlaps, the image
    border and the off-strip band, so a mask that falls short is redrawn larger (a few times at most)."""
    kinds = KINDS[class_id]
    kind = str(rng.choice(list(kinds), p=list(kinds.values()))) if len(kinds) > 1 else next(iter(kinds))
    scale, best, best_error = 1.0, None, math.inf
    for _ in range(8):
        mask = _MASKERS[class_id](rng, target * scale, steel, kind)
        mask[:, : steel[0]] = 0
        mask[:, steel[1] :] = 0
        area = max(int(mask.sum()), 1)
        error = abs(math.log(area / target))
        if error < best_error:
            best, best_error = (mask, kind), error
        if error < 0.05:
            break
        scale *= float(np.clip(target / area, 0.25, 4.0))
    return best


# --- the steel ------------------------------------------------------------------------------------------------------
# Real steel comes in families of surfaces (the real sample, looked at): a plain lit strip with light gradients and
# fine vertical streaks; the same with mottled stains and drips; rough or speckled surfaces; embossed plates
# (checker / tear-drop patterns); scaled, flaking surfaces. Bright water or oil spots, dark smears, specks and thin
# vertical lines lie on any of them. All of these are defect-free in the labels, so the twin draws them on
# defect-free and defective images alike, independently of the defects (domain randomisation: the real steel should
# look like one more variation of the twin's). The shares are our choice (the real sample is too small to count them).
FAMILIES = {"plain": 0.30, "stained": 0.32, "rough": 0.12, "plate": 0.08, "flaky": 0.06, "streaky": 0.12}
DISTRACTORS = {"water": 0.18, "smear": 0.15, "specks": 0.30, "lines": 0.35, "glare": 0.35, "ripples": 0.20}
UNLIT_SHARE = 0.30  # images with a black unlit strip at one side (real: 30 %, median width 378 px)
# Lit steel's grey level: per-image median, real p50 78-106 between images (median 88); the spread within an image
# comes from illumination, stains and texture.
STEEL_LEVEL = (92.0, 24.0)
DARK_KNEE = np.float32(50.0)  # grey level below which the lit steel's darker shades are compressed (x 0.35)
# Per class: the median |contrast| drawn for a defect's texture against the 15-px ring of steel around it, and the
# share of defects darker than their ring. Real sample, mask mean against ring: class 1 +3.1, class 2 -4.3, class 3
# |13.6| (signed median -4.9), class 4 -9.5 (|11.4|). Classes 3 and 4 are drawn stronger than that because their
# texture covers only part of the mask and is blended at an opacity below 1 (the measured |contrast| of the twin's
# masks comes out near the real one); the texture inside the mask is what makes a defect visible, as on real steel.
# Class 3 is 16, not v5's 20: v6's scuffs are far brighter than the rest (about +50), and at 20 the class's median
# |contrast| came out 36 % above real steel's on the 600-image twin.
DEFECT_CONTRAST = {1: (3.1, 0.3), 2: (4.3, 0.8), 3: (16.0, 0.6), 4: (32.0, 0.85)}
# Per class: the texture's strength inside the mask (grey levels, a range drawn from per defect): pits, scratch
# grooves and rough scale are sharp, high-contrast detail on real steel even where the mean barely moves. At the
# models' 64x320 input the twin's class-3 and class-4 textures are stronger against their ring than real ones
# (``realism.texture_ratio``); lowered to real steel's, the default's 36 steps of stage 1 learn less and transfer
# less (twins "F" and "v6b", docs/results.md, "What transfers from the twin to real steel").
DEFECT_TEXTURE = {1: (30.0, 60.0), 2: (12.0, 28.0), 3: (25.0, 60.0), 4: (20.0, 50.0)}


def _smooth(rng: np.random.Generator, cells: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Unit Gaussian noise on a ``cells`` grid, resized smoothly to ``size`` (height, width)."""
    small = rng.standard_normal((max(2, cells[0]), max(2, cells[1]))).astype(np.float32)
    return cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def _fractal(rng: np.random.Generator, size: tuple[int, int], cells: tuple[int, int], octaves: int = 3) -> np.ndarray:
    """Perlin-like fractal noise of ``size``: ``octaves`` of smooth noise, each twice as fine and half as strong as
    the last, starting at ``cells``; zero mean, unit standard deviation."""
    total, weight = np.zeros(size, np.float32), 1.0
    for octave in range(octaves):
        total += weight * _smooth(rng, (cells[0] << octave, cells[1] << octave), size)
        weight *= 0.5
    return (total - total.mean()) / max(float(total.std()), 1e-6)


def _shade(height: np.ndarray, light_deg: float) -> np.ndarray:
    """Relief: a height field lit from ``light_deg`` (slopes facing the light bright, the others dark)."""
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3)
    shaded = gx * math.cos(math.radians(light_deg)) + gy * math.sin(math.radians(light_deg))
    return shaded / max(float(shaded.std()), 1e-6)


def _window(rng: np.random.Generator, steel: tuple[int, int], width: int, height: int) -> tuple[slice, slice]:
    x0 = int(rng.integers(steel[0], max(steel[0] + 1, steel[1] - width)))
    y0 = int(rng.integers(0, max(1, IMAGE_SHAPE[0] - height)))
    return slice(y0, min(IMAGE_SHAPE[0], y0 + height)), slice(x0, min(steel[1], x0 + width))


def _hann(size: tuple[int, int]) -> np.ndarray:
    """A window of ``size`` that is 1 in the middle and falls to 0 at the edges (a spot fades out at its window's)."""
    return np.outer(np.hanning(size[0] + 2)[1:-1], np.hanning(size[1] + 2)[1:-1]).astype(np.float32)


def _plate(rng: np.random.Generator) -> np.ndarray:
    """An embossed plate: two families of parallel grooves crossing in diamonds, lit from one side."""
    height, width = IMAGE_SHAPE
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, pitch, groove = rng.uniform(55, 82), rng.uniform(70, 240), rng.uniform(2.5, 9.0)
    depth, flank = rng.uniform(10, 50), rng.uniform(15, 60)  # grey levels: the groove's dark core, its lit flanks
    relief = np.zeros(IMAGE_SHAPE, np.float32)
    for sign in (-1, 1):
        turn = math.radians(sign * angle)
        u = xs * math.sin(turn) + ys * math.cos(turn) + rng.uniform(0, pitch)
        t = ((u % pitch) - pitch / 2) / groove  # signed distance to the nearest groove's centre, in groove widths
        bump = np.exp(-(t**2))
        relief += flank * t * bump - depth * bump  # a dark core, one flank bright and the other dark
    return relief


def _flakes(rng: np.random.Generator) -> np.ndarray:
    """Scaled, flaking steel: crisp-edged plates of different brightness with relief along their edges."""
    field = _fractal(rng, IMAGE_SHAPE, (int(rng.integers(2, 4)), int(rng.integers(8, 20))), octaves=3)
    levels = np.digitize(field, np.sort(rng.normal(0, 0.8, int(rng.integers(2, 5))))).astype(np.float32)
    plates = rng.normal(0, 1, 8).astype(np.float32)[levels.astype(np.int32)] * np.float32(rng.uniform(20, 50))
    edges = _shade(cv2.GaussianBlur(levels, (0, 0), 1.2), rng.uniform(0, 360))
    return plates + edges * np.float32(rng.uniform(15, 45))


def _stains(rng: np.random.Generator) -> np.ndarray:
    """Mottled stains and drips: soft-edged dark (sometimes light) patches, stretched along the strip."""
    height, width = IMAGE_SHAPE
    field = _fractal(rng, IMAGE_SHAPE, (int(rng.integers(2, 5)), int(rng.integers(12, 40))), octaves=3)
    patches = (field > rng.uniform(0.4, 1.4)).astype(np.float32)
    soft = cv2.GaussianBlur(patches, (0, 0), rng.uniform(1.5, 5.0))
    mottle = 1 + 0.4 * _smooth(rng, (height // 16, width // 16), IMAGE_SHAPE)
    stains = soft * mottle * np.float32((1 if rng.random() < 0.2 else -1) * rng.uniform(8, 35))
    drips = np.zeros(IMAGE_SHAPE, np.float32)
    for _ in range(int(rng.integers(0, 30))):
        x, w = int(rng.integers(0, width)), int(rng.integers(2, 16))
        top = int(rng.integers(-height, height))
        drips[max(top, 0): top + int(rng.integers(30, 2 * height)), x: x + w] -= rng.uniform(5, 25)
    return stains + cv2.GaussianBlur(drips, (0, 0), sigmaX=rng.uniform(1, 3), sigmaY=rng.uniform(3, 10))


def _rough(rng: np.random.Generator) -> np.ndarray:
    """A rough or speckled surface: fine relief over the whole strip."""
    height, width = IMAGE_SHAPE
    bumps = _fractal(rng, IMAGE_SHAPE, (height // int(rng.integers(12, 40)), width // int(rng.integers(8, 30))), 2)
    return _shade(bumps, rng.uniform(0, 360)) * np.float32(rng.uniform(3, 12))


def _streaky(rng: np.random.Generator) -> np.ndarray:
    """Strong vertical streaks: many thin darker and lighter lines along the strip."""
    height, width = IMAGE_SHAPE
    columns = cv2.GaussianBlur(rng.standard_normal((1, width)).astype(np.float32), (0, 0), rng.uniform(0.6, 2.5))
    columns = columns / max(float(columns.std()), 1e-6)
    along = 1 + 0.6 * _smooth(rng, (3, width // 40), IMAGE_SHAPE)
    return columns * along * np.float32(rng.uniform(5, 15))


_FAMILY_LOOKS = {"plain": None, "stained": _stains, "rough": _rough, "plate": _plate, "flaky": _flakes,
                 "streaky": _streaky}


def _water(rng: np.random.Generator, image: np.ndarray, steel) -> None:
    """Bright water or oil spots: a few crisp-edged, nearly white blobs (defect-free on real steel)."""
    for _ in range(int(rng.integers(1, 4))):
        rows, cols = _window(rng, steel, int(rng.integers(30, 300)), int(rng.integers(30, 256)))
        size = (rows.stop - rows.start, cols.stop - cols.start)
        if min(size) < 4:
            continue
        field = _fractal(rng, size, (max(2, size[0] // 24), max(2, size[1] // 24)), octaves=2)
        window = _hann(size)
        spots = cv2.GaussianBlur(((field + 1.5 * window) > rng.uniform(1.2, 2.0)).astype(np.float32), (0, 0), 0.7)
        target = np.float32(rng.uniform(200, 255))
        sheen = np.clip(0.8 + 0.35 * cv2.GaussianBlur(rng.standard_normal(size).astype(np.float32), (0, 0), 1.0),
                        0.3, 1.0)  # a wet spot is uneven, not a flat white
        region = image[rows, cols]
        region += spots * sheen * np.float32(rng.uniform(0.6, 1.0)) * (target - region)


def _smear(rng: np.random.Generator, image: np.ndarray, steel) -> None:
    """A dark, smooth smear with a soft edge."""
    rows, cols = _window(rng, steel, int(rng.integers(60, 500)), int(rng.integers(40, 256)))
    size = (rows.stop - rows.start, cols.stop - cols.start)
    if min(size) < 4:
        return
    window = _hann(size)
    field = _fractal(rng, size, (2, 3), octaves=2) * 0.5 + 2 * window
    image[rows, cols] -= cv2.GaussianBlur((field > 1.0).astype(np.float32), (0, 0), 4) * np.float32(rng.uniform(10, 40))


def _specks(rng: np.random.Generator, image: np.ndarray, steel) -> None:
    """Scattered tiny bright and dark specks."""
    for _ in range(int(rng.integers(5, 80))):
        x, y = _point_in(rng, steel)
        cv2.circle(image, (x, y), int(rng.integers(1, 3)), float(rng.choice([20, 40, 200, 230])), -1)


def _lines(rng: np.random.Generator, image: np.ndarray, steel) -> None:
    """Thin, long, faint vertical lines (defect-free on real steel, unlike the crisp grooves of class 3)."""
    for _ in range(int(rng.integers(1, 9))):
        x, _ = _point_in(rng, steel)
        top, length = int(rng.integers(-128, 200)), int(rng.integers(40, 400))
        image[max(0, top): top + length, x: x + int(rng.integers(1, 4))] += np.float32(
            rng.choice([-1, 1]) * rng.uniform(6, 25))


def _glare(rng: np.random.Generator, image: np.ndarray, steel) -> None:
    """A broad band of brighter light across the strip."""
    xs = np.arange(IMAGE_SHAPE[1], dtype=np.float32)
    centre, width = rng.uniform(*steel), rng.uniform(60, 500)
    image += np.float32(rng.uniform(20, 80)) * np.exp(-(((xs - centre) / width) ** 2))[None, :]


def _ripples(rng: np.random.Generator, image: np.ndarray, steel) -> None:
    """Fine parallel ripples (rolling marks) at a random angle, fading in and out."""
    height, width = IMAGE_SHAPE
    ys, xs = np.ogrid[0:height, 0:width]
    turn = math.radians(rng.uniform(-40, 40) + rng.choice([0, 90]))
    phase = (xs * math.cos(turn) + ys * math.sin(turn)) * np.float32(2 * math.pi / rng.uniform(4, 14))
    fade = np.clip(_smooth(rng, (3, 10), IMAGE_SHAPE), 0, None)
    image += np.sin(phase).astype(np.float32) * fade * np.float32(rng.uniform(2, 8))


_DISTRACTOR_LOOKS = {"water": _water, "smear": _smear, "specks": _specks, "lines": _lines, "glare": _glare,
                     "ripples": _ripples}


def _grain(rng: np.random.Generator) -> np.ndarray:
    """The steel's fine grain: crisp short dashes along the rows (rolling marks) and specks, over the whole strip
    (real steel is sharp at the pixel scale; smooth shading alone reads as a blur)."""
    noise = rng.standard_normal(IMAGE_SHAPE, dtype=np.float32)
    grain = cv2.GaussianBlur(noise, (0, 0), sigmaX=rng.uniform(0.4, 1.2), sigmaY=rng.uniform(0.3, 0.5))
    patchy = np.clip(1 + 0.6 * _smooth(rng, (4, 20), IMAGE_SHAPE), 0.2, None)
    return grain * patchy * np.float32(rng.uniform(3, 9) / max(float(grain.std()), 1e-6))


def _background(rng: np.random.Generator, steel: tuple[int, int], family: str,
                distractors: tuple[str, ...]) -> np.ndarray:
    """Steel of one family with its distractors: a lit strip (level, gradients, patchy light, fine vertical
    streaks, grain) and an unlit strip where planned; float32 grey levels."""
    height, width = IMAGE_SHAPE
    level = float(np.clip(rng.normal(*STEEL_LEVEL), 45, 160))
    ramp = np.linspace(-1, 1, width, dtype=np.float32)[None, :] * np.float32(rng.uniform(-35, 35))
    light = _smooth(rng, (int(rng.integers(2, 4)), int(rng.integers(3, 10))), IMAGE_SHAPE) * np.float32(
        rng.uniform(8, 32))
    columns = cv2.GaussianBlur(rng.standard_normal((1, width)).astype(np.float32), (0, 0), rng.uniform(0.5, 2.0))
    columns *= np.float32(rng.uniform(1.0, 3.5) / max(float(columns.std()), 1e-6))
    image = level + ramp + light + columns * (1 + 0.5 * _smooth(rng, (3, width // 50), IMAGE_SHAPE))
    image += _grain(rng) + rng.standard_normal(IMAGE_SHAPE, dtype=np.float32) * np.float32(rng.uniform(2, 5))
    look = _FAMILY_LOOKS[family]
    if look is not None:
        image += look(rng)
    for name in distractors:
        _DISTRACTOR_LOOKS[name](rng, image, steel)
    # lit steel rarely falls below ~35 grey levels (real p1 36-51 between images): the dark tail is compressed
    image = np.where(image < DARK_KNEE, DARK_KNEE - (DARK_KNEE - image) * np.float32(0.35), image)
    dark = rng.uniform(1, 10) + rng.standard_normal((height, width), dtype=np.float32)
    if steel[0] > 0:
        image[:, : steel[0]] = dark[:, : steel[0]]
    if steel[1] < width:
        image[:, steel[1]:] = dark[:, steel[1]:]
    return image


# --- the defects ----------------------------------------------------------------------------------------------------
def _content_pits(rng, mask, look):
    """Class 1: in each annotated polygon a small pit (dark or bright core with a lit rim), filling part of it."""
    cover = np.zeros(mask.shape, np.float32)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    for k in range(1, count):
        w, h = stats[k, cv2.CC_STAT_WIDTH], stats[k, cv2.CC_STAT_HEIGHT]
        axes = (max(1, round(w * rng.uniform(0.15, 0.4))), max(1, round(h * rng.uniform(0.15, 0.45))))
        centre = (int(centroids[k][0] + rng.normal(0, w / 8)), int(centroids[k][1] + rng.normal(0, h / 8)))
        cv2.ellipse(cover, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    cover = cv2.GaussianBlur(cover, (0, 0), 0.8) * mask
    texture = look["polarity"] * cover + 0.6 * _shade(cv2.GaussianBlur(cover, (0, 0), 1.5), look["light"])
    return texture, cover


def _groove(rng, mask, look):
    """Class 2: a groove along the box, with a bright and a dark flank, streaks along it."""
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    core = np.clip(distance / max(float(distance.max()) * rng.uniform(0.3, 0.8), 1.0), 0, 1)
    height, width = mask.shape
    streaks = _smooth(rng, (max(2, height // 40), max(2, width // 2)), mask.shape)
    texture = (look["polarity"] * core + 0.8 * _shade(cv2.GaussianBlur(core, (0, 0), 1.0), look["light"])
               + 0.5 * streaks * core)
    return texture, np.clip(core * rng.uniform(1.5, 4.0), 0, 1)


def _inner(mask) -> np.ndarray:
    """A mask less its one-pixel rim (float32): where a filled defect's texture lies."""
    return cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)


def _scratches(rng, mask, look):
    """Class 3 (strips): a bundle of thin scratch lines along the box, bright and dark, of different lengths, with
    bright glints, over a rougher ground (the grooves of real class-3 strips are crisp lines, not a smooth trough)."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    lines = np.zeros(mask.shape, np.float32)
    for _ in range(max(2, round((x1 - x0 + 1) / rng.uniform(3, 9)))):
        x, top = rng.uniform(x0, x1 + 1), rng.uniform(y0 - 0.3 * (y1 - y0), y1)
        length = (y1 - y0 + 1) * rng.uniform(0.3, 1.2)
        lean = length * rng.normal(0, 0.03)
        cv2.line(lines, (round(x), round(top)), (round(x + lean), round(top + length)),
                 float(rng.choice([-1.0, 1.0], p=[0.4, 0.6]) * rng.uniform(0.4, 1.0)), int(rng.integers(1, 3)))
    glints = np.zeros(mask.shape, np.float32)
    for k in rng.choice(ys.size, size=min(ys.size, int(rng.integers(0, 2 + ys.size // 400))), replace=False):
        axes = (int(rng.integers(1, 4)), int(rng.integers(2, 14)))
        cv2.ellipse(glints, (int(xs[k]), int(ys[k])), axes, float(rng.normal(0, 10)), 0, 360, 1.0, -1)
    ground = _fractal(rng, mask.shape, (max(2, height // 10), max(2, width // 4)), octaves=2)
    texture = lines + 1.5 * glints + 0.3 * ground
    return texture, _inner(mask)


def _relief(rng, mask, look, lump_px: tuple[float, float]) -> np.ndarray:
    """A raised or sunken region with a lumpy top, lit from the look's side (unit-free): the outline becomes a step
    with a bright and a dark flank, the inside lumps of ``lump_px`` pixels. Real class-4 patches and class-3 flake
    groups are relief that the light throws into shade, and that structure still shows at the models' 5x-smaller
    input (v5's flecks did not)."""
    height, width = mask.shape
    lump = rng.uniform(*lump_px)
    bumps = _fractal(rng, mask.shape, (max(2, round(height / lump)), max(2, round(width / lump))), octaves=2)
    plateau = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), rng.uniform(1.0, 3.0))
    step = float(rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 3.0))
    return _shade(plateau * (step + bumps), look["light"])


def _flecks(rng, mask, look):
    """Class 3 (patches): groups of lumpy flakes in relief, with bright glints where they catch the light."""
    relief = _relief(rng, mask, look, (5.0, 16.0))
    glints = np.clip(relief - np.percentile(relief[mask.astype(bool)], 90), 0, None)
    texture = relief + rng.uniform(1.0, 3.0) * glints
    return texture, _inner(mask)


def _scuffs(rng, mask, look):
    """Class 3 (scuffs): a bright, worn region streaked along the rows: specular streaks and glints that saturate,
    over the steel it replaces."""
    height, width = mask.shape
    streaks = _smooth(rng, (max(2, height // int(rng.integers(3, 8))), max(2, width // int(rng.integers(30, 120)))),
                      mask.shape)
    fine = cv2.GaussianBlur(rng.standard_normal(mask.shape, dtype=np.float32), (0, 0),
                            sigmaX=rng.uniform(3, 10), sigmaY=rng.uniform(0.5, 1.5))
    shine = np.clip(streaks + 1.5 * fine / max(float(fine.std()), 1e-6) - rng.uniform(0.0, 1.0), 0, None)
    return 1.0 + shine, _inner(mask)  # all of it brighter than the steel: a scuff shines, whatever the contrast


def _scale(rng, mask, look):
    """Class 4: rough, scaled relief with crisp, irregular edges inside the annotated polygon."""
    height, width = mask.shape
    edge = _fractal(rng, mask.shape, (max(2, height // 30), max(2, width // 30)), octaves=2)
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    cover = ((edge + inside / max(float(inside.max()), 1.0) * 3.0) > rng.uniform(0.3, 1.2)).astype(np.float32)
    cover = cv2.GaussianBlur(cover * mask, (0, 0), 0.7)
    return _relief(rng, cover > 0.5, look, (8.0, 30.0)), cover


# What draws each kind of mark (the kinds of ``KINDS``): texture and cover inside a mask.
_DRAWERS = {"pits": _content_pits, "scratch": _groove, "strips": _scratches, "flecks": _flecks, "scuffs": _scuffs,
            "rough": _scale}


def _draw_defect(image: np.ndarray, mask: np.ndarray, look: dict) -> None:
    """Draw one defect into ``image`` (in place), inside its mask only: a texture that replaces the steel's (blended
    at the look's opacity, or added to it), its mean set ``contrast`` grey levels off the ring of steel around it."""
    rows, cols = np.nonzero(np.any(mask, axis=1))[0], np.nonzero(np.any(mask, axis=0))[0]
    ring = realism.RING + 1
    y0, y1 = max(0, rows[0] - ring), min(IMAGE_SHAPE[0], rows[-1] + ring + 1)
    x0, x1 = max(0, cols[0] - ring), min(IMAGE_SHAPE[1], cols[-1] + ring + 1)
    region, inside = image[y0:y1, x0:x1], mask[y0:y1, x0:x1].astype(bool)
    around = realism.surroundings(inside) & (region >= UNLIT_LEVEL)
    reference = float(region[around].mean()) if around.any() else float(region[inside].mean())
    rng = np.random.default_rng(look["seed"])
    texture, cover = _DRAWERS[look["kind"]](rng, inside, look)
    texture = texture / max(float(texture[inside].std()), 1e-6)
    change = look["contrast"] + look["texture"] * texture
    if look["blend"] == "replace":
        change = reference + change - region
    region += np.float32(look["opacity"]) * cover * change * inside


def _plan(rng: np.random.Generator, image_id: str, combo: tuple[int, ...], defect_contrast: float = 1.0) -> ImagePlan:
    width = IMAGE_SHAPE[1]
    steel = (0, width)
    # the steel first, drawn the same way for every image: no background statistic can tell the label
    if rng.random() < UNLIT_SHARE:
        band = int(np.clip(rng.lognormal(math.log(378), 0.45), 40, 1100))
        steel = (band, width) if rng.random() < 0.5 else (0, width - band)
    family = str(rng.choice(list(FAMILIES), p=list(FAMILIES.values())))
    distractors = tuple(name for name, share in DISTRACTORS.items() if rng.random() < share)
    masks, looks = {}, {}
    for class_id in combo:
        masks[class_id], kind = _mask_near_area(rng, class_id, _target_area(rng, class_id), steel)
        magnitude, dark_share = DEFECT_CONTRAST[class_id]
        looks[class_id] = {
            "kind": kind,
            "contrast": defect_contrast * float((-1.0 if rng.random() < dark_share else 1.0) * magnitude
                                                * rng.lognormal(0, 0.5)),
            "texture": defect_contrast * float(rng.uniform(*DEFECT_TEXTURE[class_id])),  # grey levels (std)
            "polarity": float(-1.0 if rng.random() < 0.6 else 1.0),  # a dark or a bright core
            "light": float(rng.uniform(0, 360)),  # where the relief is lit from
            "blend": "replace" if rng.random() < 0.7 else "add",
            "opacity": float(rng.uniform(0.6, 1.0)),
            "seed": int(rng.integers(2**31)),
        }
    return ImagePlan(image_id, int(rng.integers(2**31)), steel, masks, looks, family, distractors)


def _render(plan: ImagePlan) -> np.ndarray:
    """The image of a plan: the steel with its distractors, then each defect inside its mask
    (uint8, (256, 1600, 3))."""
    image = _background(np.random.default_rng(plan.background_seed), plan.steel, plan.family, plan.distractors)
    for class_id, mask in plan.masks.items():
        _draw_defect(image, mask, plan.looks[class_id])
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
            uses): drawn as on real steel. Larger values make the defects easier to see, e.g. for a test or a
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
