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


# The cascade's decision per (image, class), in the order the rule tests them (an earlier reason wins).
NO_DEFECT, ABSENT, EMPTY, OUT_OF_RANGE, KEPT = range(5)
GATINGS = ("paper", "none")
NEVER = 2.0  # a label threshold above any probability: the searched rule never predicts that class


def _per_class(values, what: str) -> np.ndarray:
    array = np.broadcast_to(np.asarray(values, np.float64), (len(CLASS_IDS),))
    if np.isnan(array).any():
        raise ValueError(f"{what} must be numbers, got {values!r}")
    return array


def decide(
    defect_probs: np.ndarray,
    class_probs: np.ndarray,
    areas: np.ndarray,
    *,
    mask_shape: tuple[int, int],
    limits: Limits | dict,
    label_thresholds=0.5,
    binary_threshold: float = 0.5,
    gating: str = "paper",
    area_filter: bool = True,
) -> np.ndarray:
    """The cascade's rule (the paper's Section 3 and 3.5) for every (image, class) at once: the one copy of it in
    NumPy (an exported cascade, ``cascade.export._ServingGraph``, writes it in TensorFlow ops; tests hold the two
    equal).

    Args:
        defect_probs: ``(n,)`` stage-1 probabilities.
        class_probs: ``(n, 4)`` stage-2 probabilities (NaN where stage 2 did not run: the class is absent).
        areas: ``(n, 4)`` pixels of each predicted mask (thresholded at the pixel threshold) at ``mask_shape``.
        mask_shape: ``(height, width)`` of the masks; the limits, given at 256x1600, are scaled to it.
        limits: ``{class_id: (min_area, max_area)}`` at 256x1600 (``max_area`` may be ``inf``).
        label_thresholds: stage 2's threshold, one for all classes or one per class.
        gating: ``"paper"``: stage 1 below ``binary_threshold`` predicts no defect, stage 2 below its label
            threshold predicts the class absent; ``"none"``: every class is segmented (area filter only).
        area_filter: drop a mask whose area lies outside [min, max] (both ends kept).

    Returns:
        ``(n, 4)`` int8 codes: ``NO_DEFECT``, ``ABSENT``, ``EMPTY`` (nothing above the pixel threshold),
        ``OUT_OF_RANGE`` (the area filter) or ``KEPT``.

    Example:
        >>> decide([0.9], [[0.1, 0.1, 0.8, 0.1]], [[0, 0, 900, 0]], mask_shape=(64, 320), limits=paper.AREA_THRESHOLDS)
        array([[1, 1, 4, 1]], dtype=int8)
    """
    if gating not in GATINGS:
        raise ValueError(f"gating must be one of {', '.join(GATINGS)}, got {gating!r}")
    defect = np.asarray(defect_probs, np.float64).reshape(-1)
    n = defect.size
    probs = np.asarray(class_probs, np.float64).reshape(n, len(CLASS_IDS))
    areas = np.asarray(areas).reshape(n, len(CLASS_IDS))
    scaled = scale_limits(limits, mask_shape)
    low, high = (np.array([scaled[c][i] for c in CLASS_IDS], np.float64) for i in (0, 1))
    codes = np.full((n, len(CLASS_IDS)), KEPT, np.int8)
    if area_filter:
        codes[(areas < low) | (areas > high)] = OUT_OF_RANGE
    codes[areas == 0] = EMPTY
    if gating == "paper":
        label = _per_class(label_thresholds, "label_thresholds")
        codes[~(np.nan_to_num(probs, nan=-np.inf) >= label)] = ABSENT
        codes[defect < binary_threshold] = NO_DEFECT
    return codes


def cascade_masks(
    defect_probs: np.ndarray,
    class_probs: np.ndarray,
    mask_probs: np.ndarray,
    *,
    limits: Limits | dict,
    pixel_thresholds=0.5,
    **rule,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cascade's masks from its stages' outputs: threshold the mask probabilities, then ``decide``.

    Args:
        defect_probs, class_probs: as for ``decide``.
        mask_probs: ``(n, h, w, 4)`` stage-3 probabilities.
        limits: area limits at 256x1600.
        pixel_thresholds: one for all classes or one per class.
        **rule: ``label_thresholds``, ``binary_threshold``, ``gating``, ``area_filter`` of ``decide``.

    Returns:
        ``(masks, areas, codes)``: ``(n, h, w, 4)`` bool masks of the classes kept, ``(n, 4)`` areas before the
        area filter, ``(n, 4)`` decision codes.
    """
    mask_probs = np.asarray(mask_probs)
    if mask_probs.ndim != 4 or mask_probs.shape[-1] != len(CLASS_IDS):
        raise ValueError(f"mask probabilities must be (N, H, W, 4), got shape {mask_probs.shape}")
    binary = mask_probs >= _per_class(pixel_thresholds, "pixel_thresholds")
    areas = binary.sum(axis=(1, 2))
    codes = decide(defect_probs, class_probs, areas, mask_shape=mask_probs.shape[1:3], limits=limits, **rule)
    return binary & (codes == KEPT)[:, None, None, :], areas, codes


def apply_area_thresholds(masks: np.ndarray, limits: Limits) -> np.ndarray:
    """Empty every class whose mask area lies outside [min, max] (both ends kept): ``decide`` without gating.

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
    n = len(batch)
    out, _, _ = cascade_masks(np.ones(n), np.ones((n, len(CLASS_IDS))), batch, limits=limits, gating="none")
    return out[0] if single else out


# Candidates of the threshold search (search_thresholds, ValidationSummary.search).
PIXEL_CANDIDATES: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
LABEL_CANDIDATES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # 0: stage 2 never vetoes
AREA_CANDIDATES: tuple[int, ...] = (0, 250, 500, 1000, 2000, 4000, 8000)


class ValidationSummary:
    """What the Kaggle mean Dice of any cascade rule needs, kept per image while the masks are dropped: each
    image's stage outputs and, for each candidate pixel threshold, its masks' areas and their Dice against the truth.

    Fed batch by batch (``add``), it holds ``n x (1 + 4 + 4 x 2 x P)`` numbers for ``n`` images and ``P`` pixel
    thresholds (under 400 bytes an image at P = 5), never a mask: the threshold search (``search``) and the Dice of a
    given rule (``dice``) cost the same memory at 1,000 images as at 12,568, and give exactly what the same
    computation on the whole split at once gives (``search_thresholds`` is this class fed once).

    Example:
        >>> summary = ValidationSummary()
        >>> for defect, class_probs, mask_probs, truth in batches:
        ...     summary.add(defect, class_probs, mask_probs, truth)
        >>> summary.search()[3]["pixel_threshold"]
    """

    def __init__(self, pixel_thresholds: Iterable[float] = PIXEL_CANDIDATES):
        self.pixel_thresholds = tuple(dict.fromkeys(float(p) for p in pixel_thresholds))
        if not self.pixel_thresholds:
            raise ValueError("a ValidationSummary needs at least one pixel threshold")
        self.mask_shape: tuple[int, int] | None = None
        self._parts: list[tuple[np.ndarray, ...]] = []

    def add(self, defect_probs, class_probs, mask_probs, true_masks) -> None:
        """One batch: ``(b,)`` stage-1 and ``(b, 4)`` stage-2 probabilities, ``(b, h, w, 4)`` mask probabilities and
        true masks at the same size."""
        # metrics imports TensorFlow: only here, the rest of the module is NumPy
        from .metrics import kaggle_dice_per_pair

        truth = np.asarray(true_masks).astype(bool)
        mask_probs = np.asarray(mask_probs)
        if truth.ndim != 4 or mask_probs.shape != truth.shape:
            raise ValueError(f"mask_probs and true_masks must be (b, h, w, 4) alike, got {mask_probs.shape} and "
                             f"{truth.shape}")
        if self.mask_shape is None:
            self.mask_shape = truth.shape[1:3]
        elif truth.shape[1:3] != self.mask_shape:
            raise ValueError(f"masks of {truth.shape[1]}x{truth.shape[2]}, but earlier batches were "
                             f"{self.mask_shape[0]}x{self.mask_shape[1]}: one summary is one size")
        b = len(truth)
        areas = np.empty((b, len(self.pixel_thresholds), len(CLASS_IDS)), np.int64)
        dice = np.empty((b, len(self.pixel_thresholds), len(CLASS_IDS)), np.float64)
        for j, pixel in enumerate(self.pixel_thresholds):
            binary = mask_probs >= pixel
            areas[:, j] = binary.sum(axis=(1, 2))
            dice[:, j] = kaggle_dice_per_pair(binary, truth)
        defect = np.asarray(defect_probs, np.float64).reshape(b)
        self._parts.append((defect, np.asarray(class_probs, np.float64).reshape(b, len(CLASS_IDS)),
                            truth.any(axis=(1, 2)), areas, dice))

    @property
    def n_images(self) -> int:
        return sum(len(part[0]) for part in self._parts)

    def _arrays(self):
        """``(defect, class_probs, present, areas, dice)`` of every image so far (the batches joined once)."""
        if not self._parts:
            raise ValueError("the summary holds no image: add batches first")
        if len(self._parts) > 1:
            self._parts = [tuple(np.concatenate(column) for column in zip(*self._parts, strict=True))]
        return self._parts[0]

    def _index(self, pixel: float) -> int:
        try:
            return self.pixel_thresholds.index(float(pixel))
        except ValueError:
            raise ValueError(f"pixel threshold {pixel} was not summarised (the summary has "
                             f"{', '.join(map(str, self.pixel_thresholds))})") from None

    def empty_dice(self) -> np.ndarray:
        """``(n, 4)``: each pair's Dice when nothing is predicted (1 where the class is absent, else 0)."""
        return np.where(self._arrays()[2], 0.0, 1.0)

    def dice(self, *, pixel_thresholds, limits, label_thresholds=0.5, binary_threshold: float = 0.5,
             gating: str = "paper", area_filter: bool = True) -> np.ndarray:
        """``(n, 4)``: each (image, class) pair's Dice under a rule (``decide``'s keywords; ``pixel_thresholds``
        one for every class or one per class, each a summarised one): the Dice of ``cascade_masks``' masks."""
        defect, class_probs, _, areas, dice = self._arrays()
        pixels = np.broadcast_to(np.asarray(pixel_thresholds, np.float64), (len(CLASS_IDS),))
        columns = [self._index(p) for p in pixels]
        classes = np.arange(len(CLASS_IDS))
        codes = decide(defect, class_probs, areas[:, columns, classes], mask_shape=self.mask_shape, limits=limits,
                       label_thresholds=label_thresholds, binary_threshold=binary_threshold, gating=gating,
                       area_filter=area_filter)
        return np.where(codes == KEPT, dice[:, columns, classes], self.empty_dice())

    def search(self, *, binary_threshold: float = 0.5, label_thresholds: Iterable[float] = LABEL_CANDIDATES,
               min_areas: Iterable[int] = AREA_CANDIDATES) -> dict[int, dict[str, float]]:
        """``search_thresholds`` on the summarised images (its Returns)."""
        defect, class_probs, _, areas, dice = self._arrays()
        dice_if_empty = self.empty_dice()
        never = dice_if_empty.mean(axis=0)
        best: dict[int, dict] = {c: {"label_threshold": NEVER, "pixel_threshold": 0.5, "min_area": 0,
                                     "dice": float(never[k])} for k, c in enumerate(CLASS_IDS)}
        for j, pixel in enumerate(self.pixel_thresholds):
            for label in label_thresholds:
                for min_area in min_areas:
                    codes = decide(defect, class_probs, areas[:, j], mask_shape=self.mask_shape,
                                   label_thresholds=label, binary_threshold=binary_threshold,
                                   limits=dict.fromkeys(CLASS_IDS, (min_area, np.inf)))
                    scores = np.where(codes == KEPT, dice[:, j], dice_if_empty).mean(axis=0)
                    for k, class_id in enumerate(CLASS_IDS):
                        if scores[k] > best[class_id]["dice"] + 1e-12:
                            best[class_id] = {"label_threshold": float(label), "pixel_threshold": float(pixel),
                                              "min_area": int(min_area), "dice": float(scores[k])}
        return best


def search_thresholds(
    class_probs: np.ndarray,
    mask_probs: np.ndarray,
    true_masks: np.ndarray,
    *,
    defect_probs: np.ndarray | None = None,
    binary_threshold: float = 0.5,
    label_thresholds: Iterable[float] = LABEL_CANDIDATES,
    pixel_thresholds: Iterable[float] = PIXEL_CANDIDATES,
    min_areas: Iterable[int] = AREA_CANDIDATES,
) -> dict[int, dict[str, float]]:
    """Per class, the label threshold, pixel threshold and minimum area (256x1600 pixels) that maximise the
    Kaggle mean Dice on the given (validation) images, all in memory (``ValidationSummary`` streams the same search
    batch by batch).

    Args:
        class_probs: ``(n, 4)`` stage-2 probabilities.
        mask_probs: ``(n, h, w, 4)`` stage-3 probabilities.
        true_masks: ``(n, h, w, 4)`` ground truth at the same size.
        defect_probs: ``(n,)`` stage-1 probabilities; images below ``binary_threshold`` predict no defect.

    Returns:
        ``{class_id: {"label_threshold", "pixel_threshold", "min_area", "dice"}}``; ``dice`` is that class's mean
        Dice over the images at the chosen values. The first candidate is "never predict this class" (label
        threshold ``NEVER``, above any probability): it scores the all-empty Dice, and another setting is chosen only
        where it scores higher, so the searched cascade is never below predicting nothing on these images.
    """
    n = len(np.asarray(true_masks))
    summary = ValidationSummary(pixel_thresholds)
    summary.add(np.ones(n) if defect_probs is None else defect_probs, class_probs, mask_probs, true_masks)
    return summary.search(binary_threshold=binary_threshold, label_thresholds=label_thresholds, min_areas=min_areas)
