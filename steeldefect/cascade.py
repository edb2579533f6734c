"""The paper's cascade made usable: stage 1 → stage 2 → stage 3 → area filter (Section 3).

``Cascade.predict(image)`` runs an image through the binary classifier (defect or not), the multi-label
classifier (which classes) for images predicted defective, the segmentation model of each class predicted
present, and the area filter (``thresholds``), and says for each class why it was kept or dropped.
``steeldefect.cascade.predict(image)`` does the same with the default cascade (``$STEELDEFECT_CASCADE`` or the
latest experiments run). ``python -m steeldefect.cascade`` predicts from the command line.
``Cascade.export`` writes the whole cascade as one SavedModel that needs TensorFlow only (or TFLite stages that
``TFLiteCascade`` runs); ``python -m steeldefect.cascade export`` does it from the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from . import loaders, metrics, models, rle, runfiles, thresholds
from .config import CLASS_COLOURS, CLASS_IDS, DEFECT_COLUMNS, IMAGE_SHAPE, TTA_CHOICES, tta_from_choice

log = logging.getLogger(__name__)

CASCADE_FILE = "cascade.json"
RUNS_DIR = Path("runs")  # relative to the working directory, as experiments writes it
LATEST_FILE = "latest.txt"  # in RUNS_DIR: the path of the latest experiments run
GATINGS = thresholds.GATINGS
# Test-time augmentation: the flips each stage's input is also run through, as axes of an (N, H, W, C) batch. The
# probabilities are averaged over the copies (masks flipped back first) before any threshold.
TTA_FLIPS: dict[str | None, tuple[tuple[int, ...], ...]] = {
    None: ((),), "hflip": ((), (2,)), "hvflip": ((), (2,), (1,), (1, 2)),
}
COLOURS = CLASS_COLOURS  # RGB per class

KEPT = "kept"
NO_DEFECT = "dropped: stage 1 predicted no defect"
ABSENT = "dropped: stage 2 probability below its threshold"
EMPTY = "dropped: stage 3 predicted an empty mask"
# An exported cascade's ``decisions`` output: thresholds.decide's codes per (image, class).
DECISION_CODES = {thresholds.NO_DEFECT: NO_DEFECT, thresholds.ABSENT: ABSENT, thresholds.EMPTY: EMPTY,
                  thresholds.OUT_OF_RANGE: "dropped: area outside the class's limits", thresholds.KEPT: KEPT}

EXPORT_FORMATS = ("savedmodel", "tflite")
TFLITE_PRECISIONS = ("float32", "float16")
METADATA_FILE = "metadata.json"  # an exported cascade's record of itself (a SavedModel's: assets/metadata.json)
SERVING_SIGNATURE = "serving_default"
# The exported SavedModel's outputs, per image of the input batch (N, H, W, 3) uint8.
EXPORT_OUTPUTS = {
    "masks": "(N, H, W, 4) bool: the masks kept, at the input's size (channel = class_id - 1)",
    "defect_prob": "(N,) float32: stage 1's defect probability",
    "class_probs": "(N, 4) float32: stage 2's class probabilities, NaN where stage 2 did not run",
    "areas": "(N, 4) int32: each predicted mask's area at the input's size before the area filter (0: not segmented)",
    "decisions": "(N, 4) int32: why each class was kept or dropped (metadata's decision_codes)",
}


class CascadeError(runfiles.RunFileError, RuntimeError):
    """A cascade that cannot be found or loaded; the message says what is missing and how to make one."""


@dataclass
class CascadeResult:
    """What the cascade says about one image. Masks are at the input's size; ``rles`` at 256x1600."""

    masks: np.ndarray  # (H, W, 4) bool, channel = class_id - 1
    defect_prob: float
    class_probs: np.ndarray  # (4,), NaN where stage 2 did not run
    areas: dict[int, int]  # predicted area per class at the input's size, before the area filter
    rles: dict[int, str]
    decisions: dict[int, str] = field(default_factory=dict)
    codes: np.ndarray | None = None  # (4,) the decisions as ``thresholds.decide`` codes (``DECISION_CODES``)

    @property
    def classes(self) -> list[int]:
        """The classes kept."""
        return [c for c in CLASS_IDS if self.decisions.get(c) == KEPT]


def _read_image(image) -> np.ndarray:
    """A path or an ``H×W`` / ``H×W×3`` uint8 array → ``H×W×3`` uint8 RGB."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        # imdecode, not imread: imread decodes a JPEG cut short without an error (the missing rows come out grey),
        # imdecode refuses it.
        pixels = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        if pixels is None:
            raise ValueError(f"{path}: not a readable image (OpenCV could not decode it: not an image, or a "
                             "corrupt or truncated file)")
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8 (0-255), got {array.dtype}")
    if array.ndim in (2, 3) and 0 in array.shape:
        raise ValueError(f"an image array must be H×W or H×W×3 with H, W > 0, got shape {array.shape} (empty)")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 3:
        return array
    raise ValueError(f"an image array must be H×W or H×W×3, got shape {array.shape}")


def _resolve(base: Path, relative: str) -> Path:
    path = (base / relative).resolve()
    if not (path / models.SPEC_FILE).is_file():
        raise CascadeError(f"{base / CASCADE_FILE} names {relative}, but {path / models.SPEC_FILE} is missing")
    return path


class Cascade:
    """The three stages and the area filter of the paper, with the settings that join them.

    Args:
        binary: stage-1 model (1 sigmoid output).
        multilabel: stage-2 model (4 sigmoid outputs).
        segmentation: ``{class_id: model}`` of per-class UNets (1 channel each; a class without one is never
            predicted), or ``{0: model}`` for one joint 4-channel UNet.
        image_size: ``(height, width)`` the UNets take, and the size of the masks they give; each classifier takes
            its own model's input size (the paper profile's take 256x512, its UNets 256x800).
        limits: area limits ``{class_id: (min, max)}`` in 256x1600 pixels (``thresholds.area_thresholds``).
        binary_threshold, label_thresholds, pixel_threshold: decision thresholds (0.5 as in the paper's source).
        gating: ``"paper"`` (stage 1 → 2 → 3) or ``"none"`` (every class segmented, area filter only).
        area_filter: apply the area limits.
        searched: per-class thresholds from ``thresholds.search_thresholds``; used when ``use_searched``.
        never_predicted: ``{class_id: why}`` of classes the cascade never predicts (e.g. no training image).
        tta: test-time augmentation: None (off), ``"hflip"`` (the image and its left-right mirror) or ``"hvflip"``
            (also upside down, and both: 4 copies). Each stage's probabilities are averaged over the copies (masks
            flipped back) before the thresholds; each copy costs one more pass through the models.

    Example:
        >>> cascade = Cascade.load("runs/default")
        >>> result = cascade.predict("data/synthetic/test_images/0a1b2c3d4.jpg")
        >>> result.classes, result.decisions
    """

    def __init__(self, binary, multilabel, segmentation: dict, image_size, limits=None, *,
                 binary_threshold: float = 0.5, label_thresholds: dict[int, float] | None = None,
                 pixel_threshold: float = 0.5, gating: str = "paper", area_filter: bool = True,
                 searched: dict | None = None, use_searched: bool = False, batch_size: int = 8,
                 never_predicted: dict[int, str] | None = None, tta: str | None = None):
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {', '.join(GATINGS)}, got {gating!r}")
        if tta not in TTA_FLIPS:
            raise ValueError(f"tta must be None, 'hflip' or 'hvflip', got {tta!r}")
        if not segmentation or not (set(segmentation) <= set(CLASS_IDS) or set(segmentation) == {0}):
            raise ValueError(f"segmentation needs models for some of classes {CLASS_IDS} or {{0: joint}}, got "
                             f"{sorted(segmentation)}")
        self.never_predicted = {int(c): why for c, why in (never_predicted or {}).items()}
        if 0 not in segmentation:
            for class_id in sorted(set(CLASS_IDS) - set(segmentation)):
                self.never_predicted.setdefault(class_id, "no segmentation model")
        self.binary, self.multilabel, self.segmentation = binary, multilabel, segmentation
        self.image_size = tuple(int(v) for v in image_size)
        self.limits = dict(limits or thresholds.area_thresholds(None))
        self.binary_threshold = binary_threshold
        self.label_thresholds = label_thresholds or dict.fromkeys(CLASS_IDS, 0.5)
        self.pixel_threshold = pixel_threshold
        self.gating, self.area_filter = gating, area_filter
        self.searched, self.use_searched = searched, use_searched
        self.batch_size = batch_size
        self.tta = tta
        self.source: Path | None = None
        self.calls = {"binary": 0, "multilabel": 0, "segmentation": 0}  # images each stage has seen

    # ----- loading and saving

    @classmethod
    def load(cls, path: str | Path, **overrides) -> Cascade:
        """Read a run directory's or a bundle's ``cascade.json`` and the models it names."""
        spec_path = _spec_path(path)
        if not spec_path.is_file():
            raise CascadeError(
                f"{spec_path} is missing: not a cascade. Make one with `python -m steeldefect.experiments` "
                "(it writes cascade.json into the run directory) or save one with Cascade.save(path)."
            )
        spec = runfiles.read_json(spec_path)
        missing = [key for key in ("binary", "multilabel", "segmentation", "image_size", "limits") if key not in spec]
        if missing:
            raise CascadeError(f"{spec_path} lacks {', '.join(missing)}: not a cascade this version of steeldefect "
                               "can load; rebuild it with `python -m steeldefect.experiments` on its run directory")
        base = spec_path.parent.resolve()
        load = lambda rel: models.load_model(_resolve(base, rel))  # noqa: E731
        segmentation = {int(k): load(v) for k, v in spec["segmentation"].items()}
        settings = {**_settings(spec), **overrides}
        cascade = cls(load(spec["binary"]), load(spec["multilabel"]), segmentation, spec["image_size"], **settings)
        cascade.source = base
        return cascade

    def save(self, path: str | Path) -> Path:
        """Write a self-contained bundle: the models (weights + spec) and ``cascade.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        parts = {"binary": self.binary, "multilabel": self.multilabel,
                 **{f"segmentation/{_segmentation_name(k)}": m for k, m in self.segmentation.items()}}
        for name, model in parts.items():
            spec = models.spec_of(model)
            if spec is None:
                raise CascadeError(f"the {name} model has no spec (it was not built by models.build_classifier / "
                                   "build_unet, nor loaded by models.load_model): save it with "
                                   "models.save_model(model, dir, spec) first")
            models.save_model(model, path / name, spec)
        spec = self.to_spec()
        spec.update({"binary": "binary", "multilabel": "multilabel",
                     "segmentation": {str(k): f"segmentation/{_segmentation_name(k)}"
                                      for k in self.segmentation}})
        runfiles.write_json(path / CASCADE_FILE, spec)
        return path

    def export(self, path: str | Path, format: str = "savedmodel", *, precision: str = "float32") -> Path:
        """Write the cascade as a deployable artefact that needs TensorFlow only (no steeldefect, no
        segmentation-models).

        Args:
            path: a new folder.
            format: ``"savedmodel"``: one SavedModel holding the three stages, this cascade's gating, area filter,
                thresholds (the searched ones when ``use_searched``) and TTA; ``tf.saved_model.load(path)`` and its
                ``serving_default`` signature (``EXPORT_OUTPUTS``) run it. ``"tflite"``: each stage as a
                ``.tflite`` file and ``metadata.json``; ``TFLiteCascade.load(path)`` runs them through the same
                decision code as this class.
            precision: the TFLite weights, ``"float32"`` or ``"float16"`` (half the size).

        Both write ``metadata.json`` (a SavedModel as its asset ``assets/metadata.json``): backbones, each stage's
        input size, the thresholds and limits, the decision codes, the steeldefect and TensorFlow versions.
        A SavedModel can run any TensorFlow op: load only one from a path you trust.

        Example:
            >>> Cascade.load("runs/default").export("deploy/cascade")
            >>> served = tf.saved_model.load("deploy/cascade").signatures["serving_default"]
            >>> served(images=tf.constant(batch))["masks"]  # batch: uint8 (N, 256, 1600, 3)
        """
        if format not in EXPORT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
        if precision not in TFLITE_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(TFLITE_PRECISIONS)}, got {precision!r}")
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"{path} exists and is not empty: export into a new folder (nothing was written)")
        for name, model in self._stages().items():
            if not isinstance(model, keras.Model):
                raise CascadeError(f"the {name} stage is a {type(model).__name__}, not a Keras model: only a "
                                   "cascade of Keras models can be exported")
        if format == "savedmodel":
            return _export_savedmodel(self, path)
        return _export_tflite(self, path, precision)

    def _stages(self) -> dict:
        """The models by stage name: ``binary``, ``multilabel``, ``segmentation_joint`` or ``segmentation_class<k>``."""
        return {"binary": self.binary, "multilabel": self.multilabel,
                **{f"segmentation_{_segmentation_name(k)}": m for k, m in self.segmentation.items()}}

    def metadata(self, format: str) -> dict:
        """What an exported cascade records about itself (``export``): JSON-safe, an infinite limit is null."""
        from . import __version__

        rule = self.rule()
        finite = lambda v: None if v == float("inf") else float(v)  # noqa: E731
        pixel = np.broadcast_to(np.asarray(rule["pixel_thresholds"], np.float64), (len(CLASS_IDS),))
        stages = {}
        for name, model in self._stages().items():
            spec = models.spec_of(model) or {}
            stages[name] = {"backbone": spec.get("backbone"), "input_size": list(self._model_size(model)),
                            "outputs": int(model.output_shape[-1])}
        return {
            "format": format, "steeldefect_version": __version__, "tensorflow_version": tf.__version__,
            "stages": stages, "mask_size": list(self.image_size),
            "gating": self.gating, "area_filter": self.area_filter, "tta": self.tta,
            "thresholds": "searched on validation" if self.use_searched and self.searched else "paper",
            "binary_threshold": float(rule["binary_threshold"]),
            "label_thresholds": {str(c): finite(v) for c, v in zip(CLASS_IDS, rule["label_thresholds"], strict=True)},
            "pixel_thresholds": {str(c): float(v) for c, v in zip(CLASS_IDS, pixel, strict=True)},
            "area_limits_256x1600": {str(c): [finite(v) for v in rule["limits"][c]] for c in CLASS_IDS},
            "never_predicted": {str(c): why for c, why in self.never_predicted.items()},
            "decision_codes": {str(code): text for code, text in DECISION_CODES.items()},
            "cascade": {**self.to_spec(), "gating": self.gating, "area_filter": self.area_filter,
                        "use_searched": self.use_searched},
        }

    def to_spec(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "limits": {str(k): list(v) for k, v in self.limits.items()},
            "binary_threshold": self.binary_threshold,
            "label_thresholds": {str(k): v for k, v in self.label_thresholds.items()},
            "pixel_threshold": self.pixel_threshold,
            "searched": {str(k): v for k, v in self.searched.items()} if self.searched else None,
            "never_predicted": {str(k): v for k, v in self.never_predicted.items()},
            "tta": self.tta,
        }

    # ----- prediction

    def rule(self, searched: bool | None = None) -> dict:
        """The thresholds of the decision rule (``thresholds.cascade_masks``' keywords): per class label and pixel
        thresholds and (min, max) areas at 256x1600; ``searched`` picks those searched on validation (default:
        ``use_searched``)."""
        # A class the cascade never predicts has an infinite label threshold: stage 2 never passes it.
        never = [c in self.never_predicted for c in CLASS_IDS]
        if (self.use_searched if searched is None else searched) and self.searched:
            found = [self.searched[c] for c in CLASS_IDS]
            labels = [f["label_threshold"] for f in found]
            rule = {"pixel_thresholds": [f["pixel_threshold"] for f in found],
                    "limits": {c: (f["min_area"], float("inf")) for c, f in zip(CLASS_IDS, found, strict=True)}}
        else:
            labels = [self.label_thresholds[c] for c in CLASS_IDS]
            rule = {"pixel_thresholds": self.pixel_threshold, "limits": self.limits}
        labels = [float("inf") if off else label for label, off in zip(labels, never, strict=True)]
        return {"label_thresholds": labels, "binary_threshold": self.binary_threshold, **rule}

    def decide(self, defect, class_probs, mask_probs, *, gating: str | None = None, area_filter: bool | None = None,
               searched: bool | None = None):
        """``thresholds.cascade_masks`` with this cascade's thresholds: ``(masks, areas, codes)``."""
        return thresholds.cascade_masks(
            defect, class_probs, mask_probs, gating=gating or self.gating,
            area_filter=self.area_filter if area_filter is None else area_filter, **self.rule(searched))

    def _run(self, model, images: np.ndarray, stage: str) -> np.ndarray:
        """``model``'s probabilities for ``images``, averaged over the TTA copies (a mask flipped back first)."""
        self.calls[stage] += len(images)
        total = None
        for axes in TTA_FLIPS[self.tta]:
            found = models.predict(model, np.ascontiguousarray(np.flip(images, axes)) if axes else images,
                                   self.batch_size)
            if axes and found.ndim == 4:  # a mask: back to the image's orientation
                found = np.flip(found, axes)
            total = found if total is None else total + found
        return total / len(TTA_FLIPS[self.tta])

    def _model_size(self, model) -> tuple[int, int]:
        shape = getattr(model, "input_shape", None)
        size = tuple(shape[1:3]) if shape is not None else (None, None)
        return size if None not in size else self.image_size

    @property
    def input_size(self) -> tuple[int, int]:
        """The size to feed ``probabilities``: the models' one input size, or 256x1600 when they differ (each
        stage then resizes from the full image, as prediction does)."""
        sizes = {self._model_size(m) for m in (self.binary, self.multilabel, *self.segmentation.values())}
        return sizes.pop() if len(sizes) == 1 else IMAGE_SHAPE

    def probabilities(self, images: np.ndarray, gating: str | None = None):
        """Stage outputs for uint8 images ``(n, H, W, 3)`` of one size (each model gets them resized to its input,
        once per distinct size): defect probs (n,), class probs (n, 4) (NaN where stage 2 did not run), mask probs
        (n, h, w, 4) at ``image_size`` (0 where stage 3 did not run), and which (image, class) were segmented."""
        gating = gating or self.gating
        n = len(images)
        resized = {tuple(images.shape[1:3]): images}

        def run(model, rows, stage):
            size = self._model_size(model)
            if size not in resized:
                resized[size] = loaders.resize_images(images, size).numpy()
            return self._run(model, resized[size] if rows is None else resized[size][rows], stage)

        defect = run(self.binary, None, "binary").reshape(n) if n else np.zeros(0)
        class_probs = np.full((n, len(CLASS_IDS)), np.nan, np.float32)
        masks = np.zeros((n, *self.image_size, len(CLASS_IDS)), np.float32)
        if gating == "none":
            class_probs[:] = run(self.multilabel, None, "multilabel") if n else 0
            segment = np.tile([c not in self.never_predicted for c in CLASS_IDS], (n, 1))
        else:
            defective = np.flatnonzero(defect >= self.binary_threshold)
            if defective.size:
                class_probs[defective] = run(self.multilabel, defective, "multilabel")
            segment = np.nan_to_num(class_probs, nan=-np.inf) >= np.asarray(self.rule()["label_thresholds"])
        if 0 in self.segmentation:
            rows = np.flatnonzero(segment.any(axis=1))
            if rows.size:
                masks[rows] = run(self.segmentation[0], rows, "segmentation")
            masks *= segment[:, None, None, :]  # classes not segmented stay empty
        else:
            for k, class_id in enumerate(CLASS_IDS):
                rows = np.flatnonzero(segment[:, k])
                if rows.size and class_id in self.segmentation:
                    masks[rows, :, :, k] = run(self.segmentation[class_id], rows, "segmentation")[..., 0]
        return defect, class_probs, masks, segment

    def predict_batch(self, images: Sequence) -> list[CascadeResult]:
        """``predict`` for many images, each stage batched over only the images that reach it."""
        pixels = [_read_image(image) for image in images]
        shapes: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(pixels):
            shapes.setdefault(p.shape[:2], []).append(i)
        results: list[CascadeResult | None] = [None] * len(pixels)
        for indices in shapes.values():  # one pass per input size (usually one: 256x1600)
            defect, class_probs, mask_probs, segmented = self.probabilities(np.stack([pixels[i] for i in indices]))
            for j, i in enumerate(indices):
                results[i] = self._result(pixels[i], defect[j], class_probs[j], mask_probs[j], segmented[j])
        return results

    def predict(self, image) -> CascadeResult:
        """Run one image through the cascade.

        Args:
            image: a path, or an ``H×W`` or ``H×W×3`` uint8 array of any size (resized for the models; the masks
                come back at the input's size).

        Returns:
            A ``CascadeResult``: ``masks`` (H, W, 4) bool, ``defect_prob``, ``class_probs`` (4,), ``areas``,
            ``rles`` (Kaggle strings at 256x1600) and ``decisions`` (why each class was kept or dropped).

        Example:
            >>> result = cascade.predict("steel.jpg")
            >>> result.decisions[3]
            'kept'

        Reproduces the paper's Section 3 pipeline with its Section 3.5 post-processing.
        """
        return self.predict_batch([image])[0]

    def _result(self, pixels, defect_prob, class_probs, mask_probs, segmented) -> CascadeResult:
        height, width = pixels.shape[:2]
        # Classes that were not segmented have empty masks: no resizing or encoding for them (most images reach
        # few classes; this is where the cascade saves time besides the models).
        if (height, width) != self.image_size:
            mask_probs = (cv2.resize(mask_probs, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width, -1)
                          if segmented.any() else np.zeros((height, width, len(CLASS_IDS)), np.float32))
        masks, areas, codes = self.decide(np.asarray([defect_prob]), class_probs[None], mask_probs[None])
        masks, areas, codes = masks[0], areas[0], codes[0]
        scale = height * width / (IMAGE_SHAPE[0] * IMAGE_SHAPE[1])
        limits = self.rule()["limits"]
        decisions, rles = {}, {}
        for k, class_id in enumerate(CLASS_IDS):
            decisions[class_id] = _decision_text(codes[k], areas[k] / scale, limits[class_id])
            if class_id in self.never_predicted:
                decisions[class_id] = f"dropped: never predicted ({self.never_predicted[class_id]})"
            rles[class_id] = ""
            if codes[k] == thresholds.KEPT:
                full = masks[:, :, k]
                if (height, width) != IMAGE_SHAPE:
                    full = cv2.resize(full.astype(np.uint8), IMAGE_SHAPE[::-1], interpolation=cv2.INTER_NEAREST)
                rles[class_id] = rle.encode(full)
        areas = {c: int(areas[k]) if segmented[k] else 0 for k, c in enumerate(CLASS_IDS)}
        return CascadeResult(masks, float(defect_prob), class_probs.astype(np.float32), areas, rles, decisions,
                             codes.astype(np.int32))


def _segmentation_name(key: int) -> str:
    """``joint`` for the joint UNet (key 0), ``class<k>`` for class k's: the name of its folder and export file."""
    return "joint" if key == 0 else f"class{key}"


def _settings(spec: dict) -> dict:
    """``Cascade`` keyword arguments from a ``cascade.json`` (``to_spec``)."""
    return {
        "limits": {int(k): tuple(v) for k, v in spec["limits"].items()},
        "binary_threshold": spec.get("binary_threshold", 0.5),
        "label_thresholds": {int(k): v for k, v in spec.get("label_thresholds", {}).items()} or None,
        "pixel_threshold": spec.get("pixel_threshold", 0.5),
        "searched": {int(k): v for k, v in spec["searched"].items()} if spec.get("searched") else None,
        "never_predicted": {int(k): v for k, v in (spec.get("never_predicted") or {}).items()},
        "tta": spec.get("tta"),
    }


def _decision_text(code: int, full_area: float, limits: tuple[float, float]) -> str:
    """Why a class was kept or dropped, from its ``thresholds.decide`` code (area at 256x1600)."""
    if code == thresholds.OUT_OF_RANGE:
        low, high = limits
        return f"dropped: area {full_area:.0f} px (at 256x1600) outside [{low:.0f}, {high:.0f}]"
    return {thresholds.NO_DEFECT: NO_DEFECT, thresholds.ABSENT: ABSENT, thresholds.EMPTY: EMPTY,
            thresholds.KEPT: KEPT}[int(code)]


# ----- export: one SavedModel, or TFLite stages run by TFLiteCascade


def _at_least_float32(values) -> np.ndarray:
    """The smallest float32 at or above each threshold: for a float32 ``x``, ``x >= t`` then holds exactly where
    NumPy's comparison against the float64 threshold does (the exported graph decides as ``thresholds.decide``)."""
    values = np.asarray(values, np.float64)
    rounded = np.atleast_1d(values.astype(np.float32))
    below = rounded.astype(np.float64) < np.atleast_1d(values)
    rounded[below] = np.nextafter(rounded[below], np.float32(np.inf))
    return rounded.reshape(values.shape)


def _rows(where) -> tf.Tensor:
    """The int32 indices of the True entries of a (N,) bool tensor."""
    return tf.cast(tf.where(where)[:, 0], tf.int32)


def _serving_function(cascade: Cascade):
    """The whole cascade as one TensorFlow function of a uint8 batch (N, H, W, 3): ``Cascade.probabilities``,
    ``_result`` and ``thresholds.decide`` written in TF ops (each stage runs only on the images that reach it)."""
    rule = cascade.rule()
    binary_threshold = tf.constant(_at_least_float32(rule["binary_threshold"]))
    label_thresholds = tf.constant(_at_least_float32(rule["label_thresholds"]))
    pixel_thresholds = tf.constant(_at_least_float32(
        np.broadcast_to(np.asarray(rule["pixel_thresholds"], np.float64), (len(CLASS_IDS),))))
    low, high = (tf.constant([float(rule["limits"][c][i]) for c in CLASS_IDS], tf.float64) for i in (0, 1))
    segmentable = tf.constant([c not in cascade.never_predicted for c in CLASS_IDS])
    flips = TTA_FLIPS[cascade.tta]
    size = tuple(cascade.image_size)
    n_classes = len(CLASS_IDS)

    def averaged(model, images):
        total = None
        for axes in flips:
            found = tf.cast(model(tf.reverse(images, axes) if axes else images, training=False), tf.float32)
            if axes and found.shape.rank == 4:  # a mask: back to the image's orientation
                found = tf.reverse(found, axes)
            total = found if total is None else total + found
        return total / len(flips)

    def run(model, images):  # an EfficientNet cannot take an empty batch (BatchNormalization fails on it)
        return tf.cond(tf.shape(images)[0] > 0, lambda: averaged(model, images),
                       lambda: tf.zeros([0, *model.output_shape[1:]]))

    def serve(images):
        shape = tf.shape(images)
        n, height, width = shape[0], shape[1], shape[2]
        resized = {}

        def at(model):  # the batch at a model's input size (resized as Cascade.probabilities does)
            key = cascade._model_size(model)
            if key not in resized:
                same = tf.reduce_all(tf.stack([height, width]) == tf.constant(key))
                x = tf.cond(same, lambda: images, lambda: loaders.resize_images(images, key))
                resized[key] = tf.ensure_shape(x, (None, *key, 3))
            return resized[key]

        defect = tf.reshape(run(cascade.binary, at(cascade.binary)), [n])
        passed = defect >= binary_threshold
        if cascade.gating == "none":
            class_probs = run(cascade.multilabel, at(cascade.multilabel))
            segment = tf.tile(segmentable[None], [n, 1])
        else:
            rows = _rows(passed)
            found = run(cascade.multilabel, tf.gather(at(cascade.multilabel), rows))
            class_probs = tf.tensor_scatter_nd_update(tf.fill([n, n_classes], float("nan")), rows[:, None], found)
            segment = class_probs >= label_thresholds  # NaN (stage 2 did not run): False
        if 0 in cascade.segmentation:
            joint = cascade.segmentation[0]
            rows = _rows(tf.reduce_any(segment, axis=1))
            found = run(joint, tf.gather(at(joint), rows))
            mask_probs = tf.scatter_nd(rows[:, None], found, tf.stack([n, *size, n_classes]))
            mask_probs *= tf.cast(segment, tf.float32)[:, None, None, :]
        else:
            channels = []
            for k, class_id in enumerate(CLASS_IDS):
                model = cascade.segmentation.get(class_id)
                if model is None:
                    channels.append(tf.zeros(tf.stack([n, *size])))
                    continue
                rows = _rows(segment[:, k])
                found = run(model, tf.gather(at(model), rows))[..., 0]
                channels.append(tf.scatter_nd(rows[:, None], found, tf.stack([n, *size])))
            mask_probs = tf.stack(channels, axis=-1)
        same = tf.reduce_all(tf.stack([height, width]) == tf.constant(size))
        mask_probs = tf.cond(same, lambda: mask_probs,
                             lambda: tf.image.resize(mask_probs, tf.stack([height, width]), method="bilinear"))
        binary = mask_probs >= pixel_thresholds
        areas = tf.reduce_sum(tf.cast(binary, tf.int32), axis=[1, 2])
        # thresholds.decide: the limits, given at 256x1600, scaled to the input's pixel count; an earlier reason wins
        factor = tf.cast(height * width, tf.float64) / float(IMAGE_SHAPE[0] * IMAGE_SHAPE[1])
        area = tf.cast(areas, tf.float64)
        codes = tf.fill(tf.stack([n, n_classes]), thresholds.KEPT)
        if cascade.area_filter:
            codes = tf.where((area < low * factor) | (area > high * factor), thresholds.OUT_OF_RANGE, codes)
        codes = tf.where(areas == 0, thresholds.EMPTY, codes)
        if cascade.gating == "paper":
            codes = tf.where(segment, codes, thresholds.ABSENT)
            codes = tf.where(passed[:, None], codes, thresholds.NO_DEFECT)
        return {"masks": binary & (codes == thresholds.KEPT)[:, None, None, :], "defect_prob": defect,
                "class_probs": class_probs, "areas": areas * tf.cast(segment, tf.int32), "decisions": codes}

    return serve


def _export_savedmodel(cascade: Cascade, path: Path) -> Path:
    from keras.export import ExportArchive

    archive = ExportArchive()  # tracks the variables the function uses (track() would store them twice)
    archive.add_endpoint(SERVING_SIGNATURE, _serving_function(cascade),
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    with tempfile.TemporaryDirectory() as scratch:
        metadata = {**cascade.metadata("savedmodel"), "signature": SERVING_SIGNATURE,
                    "inputs": {"images": "(N, H, W, 3) uint8 RGB; each stage resizes to its input size"},
                    "outputs": EXPORT_OUTPUTS}
        # An asset of the saved object (loaded.metadata.asset_path); ExportArchive.track keeps only lookup tables'
        # resources, so it goes on the archive's root trackable (Keras-private, tested in test_cascade).
        archive._tf_trackable.metadata = tf.saved_model.Asset(
            str(runfiles.write_json(Path(scratch) / METADATA_FILE, metadata)))
        archive.write_out(str(path), verbose=False)
    return path


def _inference(model):
    """``model`` in inference mode, a function of ``images`` only (a traced signature's one argument)."""
    return lambda images: model(images, training=False)


def _export_tflite(cascade: Cascade, path: Path, precision: str) -> Path:
    from keras.export import ExportArchive

    path.mkdir(parents=True, exist_ok=True)
    files = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, model in cascade._stages().items():
            archive = ExportArchive()
            archive.add_endpoint("serve", _inference(model),
                                 input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8)])
            archive.write_out(f"{scratch}/{name}", verbose=False)
            # from the SavedModel: a Keras 3 model's concrete function converts without its weights
            converter = tf.lite.TFLiteConverter.from_saved_model(f"{scratch}/{name}", signature_keys=["serve"])
            if precision == "float16":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_types = [tf.float16]
            files[name] = f"{name}.tflite"
            (path / files[name]).write_bytes(converter.convert())
    runfiles.write_json(path / METADATA_FILE, {**cascade.metadata("tflite"), "precision": precision, "files": files})
    return path


def _tflite_interpreter(path: Path, num_threads: int | None):
    """LiteRT's interpreter where ``ai-edge-litert`` is installed, else TensorFlow's (deprecated, still in TF)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
            return tf.lite.Interpreter(model_path=str(path), num_threads=num_threads)
    return Interpreter(model_path=str(path), num_threads=num_threads)


class TFLiteModel:
    """One exported stage run by the TFLite interpreter, called as the cascade calls a Keras model."""

    run_eagerly = True  # models.forward_fn calls it as it is: no tf.function around an interpreter

    def __init__(self, path: str | Path, num_threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise CascadeError(f"{self.path} is missing: the TFLite cascade's metadata names it")
        try:  # a file cut short, emptied or overwritten: LiteRT raises ValueError, or UnicodeDecodeError on garbage
            self._runner = _tflite_interpreter(self.path, num_threads).get_signature_runner("serve")
            found = self._runner.get_input_details()["images"]["shape_signature"]
            self.input_shape = (None, *(int(v) for v in found[1:]))
            found = next(iter(self._runner.get_output_details().values()))["shape_signature"]
            self.output_shape = (None, *(int(v) for v in found[1:]))
        except (ValueError, RuntimeError, KeyError, StopIteration, UnicodeDecodeError) as err:
            raise CascadeError(f"{self.path} is not a stage this TFLite cascade can run ({type(err).__name__}: "
                               f"{runfiles.first_line(err)}): the file is "
                               "damaged; export the cascade again (python -m steeldefect.cascade export --format "
                               "tflite)") from err

    def __call__(self, images, training: bool = False) -> np.ndarray:
        return next(iter(self._runner(images=np.asarray(images, np.uint8)).values()))


class TFLiteCascade(Cascade):
    """A cascade exported with ``Cascade.export(path, "tflite")``, its stages run by the TFLite interpreter and
    joined by ``Cascade``'s own gating, thresholds and area filter (``predict``, ``predict_batch`` and
    ``evaluate_cascade`` work as for a ``Cascade``).

    Example:
        >>> cascade = TFLiteCascade.load("deploy/tflite")
        >>> cascade.predict("steel.jpg").classes
    """

    @classmethod
    def load(cls, path: str | Path, *, num_threads: int | None = None, **overrides) -> TFLiteCascade:
        path = Path(path)
        meta_path = path / METADATA_FILE
        if not meta_path.is_file():
            raise CascadeError(f"{meta_path} is missing: not an exported TFLite cascade. Make one with "
                               "`python -m steeldefect.cascade export --run RUN_DIR OUT_DIR --format tflite`")
        meta = runfiles.read_json(meta_path)
        if meta.get("format") != "tflite":
            raise CascadeError(f"{meta_path} says format {meta.get('format')!r}, not 'tflite': load a SavedModel "
                               "with tf.saved_model.load")
        stage = lambda name: TFLiteModel(path / meta["files"][name], num_threads)  # noqa: E731
        segmentation = {0 if name == "segmentation_joint" else int(name.removeprefix("segmentation_class")): stage(name)
                        for name in meta["files"] if name.startswith("segmentation_")}
        spec = meta["cascade"]
        settings = {**_settings(spec), "gating": spec["gating"], "area_filter": spec["area_filter"],
                    "use_searched": spec["use_searched"], **overrides}
        cascade = cls(stage("binary"), stage("multilabel"), segmentation, spec["image_size"], **settings)
        cascade.source = path.resolve()
        return cascade


# ----- the default cascade and module-level helpers

_default: tuple[Path, Cascade] | None = None  # (its resolved cascade.json, the cascade)


def default_cascade_path() -> Path:
    """``$STEELDEFECT_CASCADE``, else the run named in ``runs/latest.txt``; a ``CascadeError`` says how to make one."""
    env = os.environ.get("STEELDEFECT_CASCADE")
    if env:
        return Path(env)
    latest = RUNS_DIR / LATEST_FILE
    if latest.is_file():
        return Path(latest.read_text().strip())
    raise CascadeError(
        "no default cascade: $STEELDEFECT_CASCADE is not set and no experiments run was recorded in "
        f"{latest}. Run `python -m steeldefect.experiments` to train one, or pass "
        "cascade=Cascade.load(path) with a run directory or bundle."
    )


def _spec_path(path: str | Path) -> Path:
    """A run directory's or bundle's ``cascade.json``, given the folder or the file itself."""
    path = Path(path)
    return path if path.suffix == ".json" else path / CASCADE_FILE


def load_default() -> Cascade:
    """The default cascade, loaded once per process (and again only when its path changes)."""
    global _default
    spec_path = _spec_path(default_cascade_path()).resolve()
    if _default is None or _default[0] != spec_path:
        _default = (spec_path, Cascade.load(spec_path))
    return _default[1]


def predict(image, cascade: Cascade | None = None) -> CascadeResult:
    """Run one steel image through the paper's cascade.

    Args:
        image: a path, or an ``H×W`` or ``H×W×3`` uint8 array of any size.
        cascade: a ``Cascade``; by default the one in ``$STEELDEFECT_CASCADE`` or the latest experiments run
            (loaded once).

    Returns:
        A ``CascadeResult`` (masks at the input's size, probabilities, areas, Kaggle RLEs, per-class decisions).

    Example:
        >>> import steeldefect.cascade
        >>> result = steeldefect.cascade.predict("data/synthetic/train_images/0a1b2c3d4.jpg")
        >>> result.classes

    Reproduces the paper's Section 3: binary → multi-label → UNet per class → area filter (Section 3.5).
    """
    return (cascade or load_default()).predict(image)


def _submission_format(images_dir: Path) -> str:
    sample = images_dir.parent / "sample_submission.csv"
    if sample.is_file() and sample.read_text().startswith("ImageId_ClassId"):
        return "2019"
    return "2020"


def iter_predict(paths: Sequence[str | Path], cascade: Cascade | None = None, *, batch_size: int = 16
                 ) -> Iterator[tuple[Path, CascadeResult | None, str | None]]:
    """Predict image files in batches, yielding ``(path, result, None)`` per image, or ``(path, None, error)`` for
    a file that cannot be read (missing, not an image, a truncated JPEG): a bad file never stops the others."""
    cascade = cascade or load_default()
    paths = [Path(p) for p in paths]
    for start in range(0, len(paths), batch_size):
        readable = []
        for path in paths[start : start + batch_size]:
            try:
                readable.append((path, _read_image(path)))
            except (OSError, ValueError) as err:
                log.warning("%s", err)
                yield path, None, str(err)
        results = cascade.predict_batch([pixels for _, pixels in readable])
        for (path, _), result in zip(readable, results, strict=True):
            yield path, result, None


def submission_frame(rows: Sequence[tuple[str, int, str]], submission_format: str = "2020") -> pd.DataFrame:
    """``(ImageId, ClassId, EncodedPixels)`` rows → a Kaggle submission: 2020 ``ImageId,EncodedPixels,ClassId`` or
    2019 ``ImageId_ClassId,EncodedPixels``."""
    if submission_format == "2019":
        return pd.DataFrame({"ImageId_ClassId": [f"{n}_{c}" for n, c, _ in rows],
                             "EncodedPixels": [r for _, _, r in rows]})
    if submission_format != "2020":
        raise ValueError(f"submission_format must be '2019' or '2020', got {submission_format!r}")
    return pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])[["ImageId", "EncodedPixels", "ClassId"]]


def predict_dir(images_dir: str | Path, cascade: Cascade | None = None, *, submission_format: str | None = None,
                batch_size: int = 16) -> pd.DataFrame:
    """Predict every ``.jpg`` in a folder → a DataFrame in the Kaggle submission format, 4 rows per image.

    The format follows ``sample_submission.csv`` beside the folder when present (2019:
    ``ImageId_ClassId,EncodedPixels``), else 2020: ``ImageId,EncodedPixels,ClassId``. A file that cannot be read
    is reported (a logged warning) and left out; ``df.attrs["skipped"]`` maps its name to the reason.
    """
    images_dir = Path(images_dir)
    cascade = cascade or load_default()
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() == ".jpg")
    if not paths:
        raise FileNotFoundError(f"{images_dir}: no .jpg images to predict")
    rows, skipped = [], {}
    with tqdm(total=len(paths), desc="predict", unit="img") as bar:
        for path, result, error in iter_predict(paths, cascade, batch_size=batch_size):
            if result is None:
                skipped[path.name] = error
            else:
                rows.extend((path.name, c, result.rles[c]) for c in CLASS_IDS)
            bar.update(1)
    df = submission_frame(rows, submission_format or _submission_format(images_dir))
    df.attrs["skipped"] = skipped
    return df


def write_submission(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return runfiles.write_text(path, df.to_csv(index=False))


def overlay(image, masks: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """An RGB uint8 picture: each class filled in its own colour and outlined."""
    picture = _read_image(image).copy()
    masks = np.asarray(masks).astype(bool)
    if masks.shape != (*picture.shape[:2], len(CLASS_IDS)):
        raise ValueError(f"masks must be {(*picture.shape[:2], len(CLASS_IDS))} for this image, got {masks.shape}")
    for k, class_id in enumerate(CLASS_IDS):
        mask = masks[:, :, k]
        if not mask.any():
            continue
        colour = np.array(COLOURS[class_id], np.float32)
        picture[mask] = ((1 - alpha) * picture[mask] + alpha * colour).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(picture, contours, -1, COLOURS[class_id], 2)
    return picture


def evaluate_cascade(cascade: Cascade, table: pd.DataFrame, images_dir: str | Path, split: str = "test",
                     batch_size: int = 16) -> dict:
    """Kaggle mean Dice (every image, 4 classes), per-class Dice and presence confusion per class, for the
    paper's cascade, the cascade without the area filter, no gating (segmentation everywhere, area filter) and,
    when the cascade has them, the searched thresholds. Computed at the models' image size."""
    rows = table[table["split"] == split] if "split" in table.columns else table
    images_dir = Path(images_dir)
    variants = {"paper cascade": ("paper", True, False), "without area filter": ("paper", False, False),
                "no gating": ("none", True, False)}
    if cascade.searched:
        variants["searched thresholds"] = ("paper", True, True)
    dice = {name: [] for name in variants}
    confusion = {name: np.zeros((len(CLASS_IDS), 4), np.int64) for name in variants}  # tp, fp, fn, tn
    size = cascade.image_size
    dataset = _evaluation_dataset(cascade, rows, images_dir, batch_size)
    stage_outputs = []  # (defect prob, class probs, true presence) per batch, for the stages' own scores
    # gating="none" runs every model on every image; the gated variants are derived from the same outputs by the
    # cascade's one decision rule (thresholds.cascade_masks), the code that predict runs.
    for images, truth in dataset:
        small, truth = images.numpy(), truth.numpy().astype(bool)
        defect, class_probs, mask_probs, _ = cascade.probabilities(small, gating="none")
        stage_outputs.append((defect, class_probs, truth.any(axis=(1, 2))))
        for name, (gating, area_filter, searched) in variants.items():
            pred, _, _ = cascade.decide(defect, class_probs, mask_probs, gating=gating, area_filter=area_filter,
                                        searched=searched)
            dice[name].append(metrics.kaggle_dice_per_pair(pred, truth))
            has_pred, has_true = pred.any(axis=(1, 2)), truth.any(axis=(1, 2))
            confusion[name] += np.stack([(has_pred & has_true).sum(0), (has_pred & ~has_true).sum(0),
                                         (~has_pred & has_true).sum(0), (~has_pred & ~has_true).sum(0)], axis=1)
    result = {"split": split, "n_images": len(rows), "image_size": list(size), **_stage_scores(cascade, stage_outputs),
              "variants": {}}
    for name in variants:
        pairs = np.concatenate(dice[name]) if dice[name] else np.zeros((0, len(CLASS_IDS)))
        result["variants"][name] = {
            "kaggle_mean_dice": float(pairs.mean()) if pairs.size else None,
            "per_class_dice": {f"class{c}": float(pairs[:, k].mean()) if pairs.size else None
                               for k, c in enumerate(CLASS_IDS)},
            "presence": {f"class{c}": dict(zip(("tp", "fp", "fn", "tn"), map(int, confusion[name][k]), strict=True))
                         for k, c in enumerate(CLASS_IDS)},
        }
    return result


def _stage_scores(cascade: Cascade, outputs) -> dict:
    """Stage 1: ROC AUC of its defect probability (None when the images are all defective or all clean) and its
    accuracy at its threshold; stage 2: its accuracy per (image, class) on the defective images; and the Kaggle mean
    Dice of predicting every mask empty, the reference a cascade must beat."""
    from sklearn.metrics import roc_auc_score

    if not outputs:
        return {"stage1": None, "stage2": None, "all_empty_dice": None}
    defect = np.concatenate([o[0] for o in outputs])
    class_probs = np.concatenate([o[1] for o in outputs])
    present = np.concatenate([o[2] for o in outputs])
    defective = present.any(axis=1)
    labels = np.asarray(cascade.rule()["label_thresholds"])
    stage2 = None
    if defective.any():
        stage2 = {"accuracy": float(((class_probs[defective] >= labels) == present[defective]).mean()),
                  "n_images": int(defective.sum())}
    return {
        "stage1": {"roc_auc": float(roc_auc_score(defective, defect)) if 0 < defective.sum() < len(defect) else None,
                   "accuracy": float(((defect >= cascade.binary_threshold) == defective).mean()),
                   "n_images": len(defect), "n_defective": int(defective.sum())},
        "stage2": stage2,
        "all_empty_dice": float((~present).mean()),
    }


def evaluate_folder(cascade: Cascade, data_dir: str | Path, batch_size: int = 16) -> dict:
    """``evaluate_cascade`` on every image of a Kaggle-layout folder (``train.csv``, ``train_images/``), e.g. real
    steel a cascade trained on the twin never saw: stage 1's ROC AUC and accuracy, stage 2's accuracy, and the
    Kaggle mean Dice of each variant beside the all-empty reference.

    Example:
        >>> evaluate_folder(Cascade.load("runs/default"), "../shared/real")["stage1"]["roc_auc"]
    """
    from . import data

    data_dir = Path(data_dir)
    table = data.load_table(data_dir)
    bad = data.check_images(data_dir / "train_images", table["ImageId"])
    if bad:
        raise data.DataError(f"{data_dir / 'train_images'}: {len(bad)} image(s) cannot be used, e.g. "
                             f"{next(iter(bad))}: {next(iter(bad.values()))}")
    result = evaluate_cascade(cascade, table, data_dir / "train_images", batch_size=batch_size)
    return {**result, "split": "all", "data_dir": str(data_dir.resolve())}


def _evaluation_dataset(cascade: Cascade, rows: pd.DataFrame, images_dir, batch_size: int):
    """Images at ``cascade.input_size`` and their true masks at the UNets' size, the size evaluation is done at."""
    dataset = loaders.make_dataset(rows, images_dir, "masks", image_size=cascade.input_size, batch_size=batch_size)
    if cascade.input_size == cascade.image_size:
        return dataset
    return dataset.map(lambda x, y: (x, tf.image.resize(y, cascade.image_size, method="nearest")))


def validation_outputs(cascade: Cascade, table: pd.DataFrame, images_dir: str | Path, split: str = "val",
                       batch_size: int = 16):
    """Stage outputs and true masks (at the models' size) of one split, for ``thresholds.search_thresholds``."""
    rows = table[table["split"] == split]
    dataset = _evaluation_dataset(cascade, rows, images_dir, batch_size)
    parts = [(*cascade.probabilities(x.numpy(), gating="none")[:3], y.numpy()) for x, y in dataset]
    defect, class_probs, mask_probs, truth = (np.concatenate(p) for p in zip(*parts, strict=True))
    return defect, class_probs, mask_probs.astype(np.float16), truth


def true_masks(row: pd.Series) -> np.ndarray:
    """The (256, 1600, 4) bool masks of a table row."""
    return np.stack([rle.decode(row[col]).astype(bool) for col in DEFECT_COLUMNS], axis=-1)


def main(argv: list[str] | None = None) -> int:
    """``python -m steeldefect.cascade --run RUN_DIR IMAGE_OR_DIR... [--submission out.csv] [--overlays DIR]``.

    An image that cannot be read is reported and the others predicted; the exit code is then 1 (2: no cascade).
    ``python -m steeldefect.cascade export [--run RUN_DIR] OUT_DIR [--format savedmodel|tflite]`` exports it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export"]:
        return _export_command(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m steeldefect.cascade",
                                     description="Predict steel defects with a trained cascade.")
    parser.add_argument("--run", type=Path, default=None,
                        help="run directory or bundle with cascade.json (default: $STEELDEFECT_CASCADE or the latest run)")
    parser.add_argument("inputs", nargs="*", type=Path, help="images or folders of .jpg images")
    parser.add_argument("--evaluate", type=Path, metavar="DATA_DIR",
                        help="instead of predicting, score the cascade on every image of a Kaggle-layout folder "
                             "(train.csv, train_images/): stage 1's ROC AUC and accuracy, stage 2's accuracy, the "
                             "Kaggle mean Dice against predicting every mask empty")
    parser.add_argument("--json", type=Path, help="with --evaluate: write the whole evaluation here")
    parser.add_argument("--submission", type=Path, help="write a Kaggle submission CSV here")
    parser.add_argument("--overlays", type=Path, help="write an overlay PNG per image into this folder")
    parser.add_argument("--searched", action="store_true", help="use the thresholds searched on validation")
    parser.add_argument("--tta", choices=TTA_CHOICES,
                        help="test-time augmentation: average each stage over the image's left-right mirror "
                             "(hflip) or all four flips (hvflip); default: the cascade's own (none unless saved so)")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cascade = _cli_cascade(args)
    except (runfiles.RunFileError, FileNotFoundError) as err:  # CascadeError is a RunFileError
        if args.verbose:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.evaluate is not None:
        return _evaluate_command(cascade, args.evaluate, args.json)
    if not args.inputs:
        parser.error("give images or folders to predict, or --evaluate DATA_DIR")
    paths = []
    for item in args.inputs:
        if item.is_dir():
            paths.extend(sorted(p for p in item.iterdir() if p.suffix.lower() == ".jpg"))
        elif item.is_file():
            paths.append(item)
        else:
            print(f"error: {item}: no such file or folder", file=sys.stderr)
            return 2
    if args.overlays:
        args.overlays.mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    for path, result, error in tqdm(iter_predict(paths, cascade), total=len(paths), desc="predict", unit="img",
                                    disable=len(paths) < 2):
        if result is None:
            print(f"error: {error}", file=sys.stderr)
            failed.append(path.name)
            continue
        kept = ", ".join(f"class {c} ({result.areas[c]} px)" for c in result.classes) or "no defect"
        print(f"{path.name}: defect p={result.defect_prob:.2f}; {kept}")
        rows.extend((path.name, c, result.rles[c]) for c in CLASS_IDS)
        if args.overlays:
            picture = overlay(path, result.masks)
            cv2.imwrite(str(args.overlays / f"{path.stem}.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if args.submission:
        df = submission_frame(rows)
        write_submission(df, args.submission)
        print(f"submission: {args.submission} ({len(df)} rows, {len(df) // len(CLASS_IDS)} images)")
    if failed:
        print(f"error: {len(failed)} of {len(paths)} images could not be read and were not predicted: "
              f"{', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cli_cascade(args) -> Cascade:
    """The cascade a command line names: ``--run`` (or the default), ``--searched`` and ``--tta``."""
    tta = {} if args.tta is None else {"tta": tta_from_choice(args.tta)}
    return Cascade.load(args.run or default_cascade_path(), use_searched=args.searched, **tta)


def _export_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m steeldefect.cascade export",
                                     description="Export a trained cascade for deployment (TensorFlow only).")
    parser.add_argument("--run", type=Path, default=None,
                        help="run directory or bundle with cascade.json (default: $STEELDEFECT_CASCADE or the latest run)")
    parser.add_argument("out", type=Path, help="a new folder for the export")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="savedmodel",
                        help="savedmodel: one SavedModel with gating and area filter (default); tflite: one .tflite "
                             "per stage, run by steeldefect.cascade.TFLiteCascade")
    parser.add_argument("--precision", choices=TFLITE_PRECISIONS, default="float32", help="TFLite weights")
    parser.add_argument("--searched", action="store_true", help="bake in the thresholds searched on validation")
    parser.add_argument("--tta", choices=TTA_CHOICES, help="bake in flip TTA (default: the cascade's)")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cascade = _cli_cascade(args)
        path = cascade.export(args.out, args.format, precision=args.precision)
    except (runfiles.RunFileError, OSError) as err:  # FileExistsError: a folder that is not empty
        if args.verbose:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    print(f"exported the cascade of {cascade.source} to {path} ({args.format}, {size:.1f} MB)")
    if args.format == "savedmodel":
        print(f"run it with TensorFlow alone: tf.saved_model.load({str(path)!r}).signatures"
              f"[{SERVING_SIGNATURE!r}](images=uint8 batch (N, H, W, 3)); what it holds: {path / 'assets' / METADATA_FILE}")
    else:
        print(f"run it: steeldefect.cascade.TFLiteCascade.load({str(path)!r}).predict(image)")
    return 0


def _evaluate_command(cascade: Cascade, data_dir: Path, json_path: Path | None) -> int:
    from . import data

    try:
        found = evaluate_folder(cascade, data_dir)
    except (FileNotFoundError, data.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stage1, stage2 = found["stage1"], found["stage2"]
    auc = "n/a (one class only)" if stage1["roc_auc"] is None else f"{stage1['roc_auc']:.3f}"
    print(f"{found['n_images']} images ({stage1['n_defective']} defective) in {data_dir}")
    print(f"stage 1: ROC AUC {auc}, accuracy {stage1['accuracy']:.3f}")
    if stage2:
        print(f"stage 2: accuracy {stage2['accuracy']:.3f} per (image, class) on the {stage2['n_images']} defective images")
    print(f"Kaggle mean Dice: all masks empty {found['all_empty_dice']:.4f}; " + "; ".join(
        f"{name} {variant['kaggle_mean_dice']:.4f}" for name, variant in found["variants"].items()))
    if json_path:
        runfiles.write_json(json_path, found)
        print(f"evaluation: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
