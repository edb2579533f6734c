"""Per-class area limits for predicted masks (the paper's Section 3.5) and a search on validation beyond it.

The paper keeps a predicted mask of class c only if its area lies within [min_c, max_c], the 2nd and 98th
percentiles of the areas of the training masks of class c (at 256x1600): 500-15,500; 700-10,000; 1,100-160,000;
2,800-127,000 pixels on the Kaggle data. ``search_thresholds`` instead picks, per class, the stage-2 label
threshold, the pixel threshold and the minimum area that maximise the Kaggle mean Dice on the validation split,
as the competition's winners did; it is used only when asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd

from . import paper, rle
from .config import AREA_PERCENTILES, CLASS_IDS, DEFECT_COLUMNS, IMAGE_SHAPE

log = logging.getLogger(__name__)

Limits = dict[int, tuple[int, int]]


def area_thresholds(
    table: pd.DataFrame | None = None, percentiles: tuple[float, float] = AREA_PERCENTILES, *, round_to: int = 100
) -> Limits:
    """``{class_id: (min_area, max_area)}`` from the training masks' areas, in 256x1600 pixels.

    Args:
        table: one row per image (``data.load_table``); with a ``split`` column only its ``train`` rows count.
            ``None`` gives the paper's values.
        percentiles: lower and upper percentile. As in the paper's source, the limits are the sorted areas at
            index ``int(p / 100 * n)`` from each end, rounded to ``round_to`` pixels.

    Returns:
        The limits per class; a class without training masks keeps the paper's limits (logged).
    """
    if table is None:
        return dict(paper.AREA_THRESHOLDS)
    if "split" in table.columns:
        table = table[table["split"] == "train"]
    low_p, high_p = percentiles
    limits: Limits = {}
    for class_id, column in zip(CLASS_IDS, DEFECT_COLUMNS, strict=True):
        areas = np.sort([rle.area(text, IMAGE_SHAPE) for text in table[column] if text])
        if areas.size == 0:
            log.warning("class %d has no training masks: using the paper's area limits", class_id)
            limits[class_id] = paper.AREA_THRESHOLDS[class_id]
            continue
        low = areas[int(low_p / 100 * areas.size)]
        high = areas[areas.size - 1 - int((100 - high_p) / 100 * areas.size)]
        limits[class_id] = (int(round(low / round_to) * round_to), int(round(high / round_to) * round_to))
    return limits


def scale_limits(limits: Limits, shape: tuple[int, int]) -> dict[int, tuple[float, float]]:
    """Limits in 256x1600 pixels → limits for masks of ``shape`` (areas scale with the pixel count)."""
    factor = shape[0] * shape[1] / (IMAGE_SHAPE[0] * IMAGE_SHAPE[1])
    return {c: (low * factor, high * factor) for c, (low, high) in limits.items()}


def apply_area_thresholds(masks: np.ndarray, limits: Limits) -> np.ndarray:
    """Empty every class whose mask area lies outside [min, max] (both ends kept).

    Args:
        masks: ``(H, W, 4)`` or ``(N, H, W, 4)`` binary masks; limits are scaled when H x W is not 256x1600.
        limits: ``{class_id: (min_area, max_area)}`` in 256x1600 pixels.

    Returns:
        A bool copy of ``masks`` with the out-of-range classes emptied.
    """
    masks = np.asarray(masks).astype(bool)
    single = masks.ndim == 3
    batch = masks[None] if single else masks
    if batch.ndim != 4 or batch.shape[-1] != len(CLASS_IDS):
        raise ValueError(f"masks must be (H, W, 4) or (N, H, W, 4), got shape {masks.shape}")
    scaled = scale_limits(limits, batch.shape[1:3])
    areas = batch.sum(axis=(1, 2))
    out = batch.copy()
    for k, class_id in enumerate(CLASS_IDS):
        low, high = scaled[class_id]
        outside = (areas[:, k] < low) | (areas[:, k] > high)
        out[outside, :, :, k] = False
    return out[0] if single else out


def _pair_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Kaggle Dice of each image for one class: ``(n, h, w)`` bool → ``(n,)``."""
    intersection = np.sum(pred & truth, axis=(1, 2))
    total = np.sum(pred, axis=(1, 2)) + np.sum(truth, axis=(1, 2))
    return np.where(total == 0, 1.0, 2 * intersection / np.maximum(total, 1))


def search_thresholds(
    class_probs: np.ndarray,
    mask_probs: np.ndarray,
    true_masks: np.ndarray,
    *,
    defect_probs: np.ndarray | None = None,
    binary_threshold: float = 0.5,
    label_thresholds: Iterable[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),  # 0: stage 2 never vetoes
    pixel_thresholds: Iterable[float] = (0.3, 0.4, 0.5, 0.6, 0.7),
    min_areas: Iterable[int] = (0, 250, 500, 1000, 2000, 4000, 8000),
) -> dict[int, dict[str, float]]:
    """Per class, the label threshold, pixel threshold and minimum area (256x1600 pixels) that maximise the
    Kaggle mean Dice on the given (validation) images.

    Args:
        class_probs: ``(n, 4)`` stage-2 probabilities.
        mask_probs: ``(n, h, w, 4)`` stage-3 probabilities.
        true_masks: ``(n, h, w, 4)`` ground truth at the same size.
        defect_probs: ``(n,)`` stage-1 probabilities; images below ``binary_threshold`` predict no defect.

    Returns:
        ``{class_id: {"label_threshold", "pixel_threshold", "min_area", "dice"}}``; ``dice`` is that class's mean
        Dice over the images at the chosen values.
    """
    class_probs = np.asarray(class_probs)
    truth = np.asarray(true_masks).astype(bool)
    n, height, width, _ = truth.shape
    gate = np.ones(n, bool) if defect_probs is None else np.asarray(defect_probs).reshape(n) >= binary_threshold
    factor = height * width / (IMAGE_SHAPE[0] * IMAGE_SHAPE[1])
    result = {}
    for k, class_id in enumerate(CLASS_IDS):
        best = None
        for pixel in pixel_thresholds:
            binary = mask_probs[..., k] >= pixel
            areas = binary.sum(axis=(1, 2))
            dice_if_kept = _pair_dice(binary, truth[..., k])
            dice_if_empty = np.where(truth[..., k].any(axis=(1, 2)), 0.0, 1.0)
            for label in label_thresholds:
                present = gate & (class_probs[:, k] >= label)
                for min_area in min_areas:
                    kept = present & (areas >= min_area * factor)
                    score = float(np.mean(np.where(kept, dice_if_kept, dice_if_empty)))
                    if best is None or score > best["dice"] + 1e-12:
                        best = {"label_threshold": float(label), "pixel_threshold": float(pixel),
                                "min_area": int(min_area), "dice": score}
        result[class_id] = best
    return result
