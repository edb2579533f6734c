"""The paper's cascade: stage 1 -> stage 2 -> stage 3 -> area filter (Section 3), its decision and prediction.

``Cascade.predict(image)`` runs an image through the binary classifier (defect or not), the multi-label
classifier (which classes) for images predicted defective, the segmentation model of each class predicted
present, and the area filter (``thresholds``), and says for each class why it was kept or dropped.
``predict(image)`` does the same with the default cascade (``$STEELDEFECT_CASCADE`` or the latest experiments
run). ``Cascade.save`` writes ``cascade.json`` (the only writer of that file) and ``Cascade.load`` reads it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .. import loaders, models, rle, runfiles, thresholds
from ..config import CLASS_IDS, IMAGE_SHAPE

log = logging.getLogger(__name__)

GATINGS = thresholds.GATINGS
# Test-time augmentation: the flips each stage's input is also run through, as axes of an (N, H, W, C) batch. The
# probabilities are averaged over the copies (masks flipped back first) before any threshold.
TTA_FLIPS: dict[str | None, tuple[tuple[int, ...], ...]] = {
    None: ((),), "hflip": ((), (2,)), "hvflip": ((), (2,), (1,), (1, 2)),
}

KEPT = "kept"
NO_DEFECT = "dropped: stage 1 predicted no defect"
ABSENT = "dropped: stage 2 probability below its threshold"
EMPTY = "dropped: stage 3 predicted an empty mask"
# Why a class was kept or dropped, per thresholds.decide code: CascadeResult.decisions and an exported cascade's
# ``decisions`` output. An area out of range is said with the area and the limits where they are known.
DECISION_CODES = {thresholds.NO_DEFECT: NO_DEFECT, thresholds.ABSENT: ABSENT, thresholds.EMPTY: EMPTY,
                  thresholds.OUT_OF_RANGE: "dropped: area outside the class's limits", thresholds.KEPT: KEPT}
SPEC_KEYS = ("binary", "multilabel", "segmentation", "image_size", "limits")  # what a cascade.json must have


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


def read_image(image) -> np.ndarray:
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
        validation: Kaggle mean Dice on the validation images when the thresholds were searched (``paper_rule``,
            ``searched``, ``all_empty``; ``evaluation.validation_dice``), saved with the cascade.

    Example:
        >>> cascade = Cascade.load("runs/default")
        >>> result = cascade.predict("data/synthetic/test_images/0a1b2c3d4.jpg")
        >>> result.classes, result.decisions
    """

    def __init__(self, binary, multilabel, segmentation: dict, image_size, limits=None, *,
                 binary_threshold: float = 0.5, label_thresholds: dict[int, float] | None = None,
                 pixel_threshold: float = 0.5, gating: str = "paper", area_filter: bool = True,
                 searched: dict | None = None, use_searched: bool = False, batch_size: int = 8,
                 never_predicted: dict[int, str] | None = None, tta: str | None = None,
                 validation: dict | None = None):
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
        self.validation = validation
        self.source: Path | None = None  # the folder it was loaded from
        self.sources: dict[str, Path] = {}  # each loaded model's folder, by part name (save references them)
        self.calls = {"binary": 0, "multilabel": 0, "segmentation": 0}  # images each stage has seen

    # ----- loading and saving

    @classmethod
    def load(cls, path: str | Path, **overrides) -> Cascade:
        """Read a run directory's or a bundle's ``cascade.json`` and the models it names."""
        spec_path = spec_file(path)
        if not spec_path.is_file():
            raise CascadeError(
                f"{spec_path} is missing: not a cascade. Make one with `python -m steeldefect.experiments` "
                "(it writes cascade.json into the run directory) or save one with Cascade.save(path)."
            )
        spec = runfiles.read_json(spec_path)
        missing = [key for key in SPEC_KEYS if key not in spec]
        if missing:
            raise CascadeError(f"{spec_path} lacks {', '.join(missing)}: not a cascade this version of steeldefect "
                               "can load; rebuild it with `python -m steeldefect.experiments` on its run directory")
        base = spec_path.parent.resolve()
        folders = {name: _model_folder(base, spec[name]) for name in ("binary", "multilabel")}
        folders["segmentation"] = {int(k): _model_folder(base, v) for k, v in spec["segmentation"].items()}
        cascade = cls.from_folders(folders, spec["image_size"], **{**settings_from_spec(spec), **overrides})
        cascade.source = base
        return cascade

    @classmethod
    def from_folders(cls, folders: dict, image_size, **settings) -> Cascade:
        """A cascade of saved models (``models.save_model``): ``folders`` gives the folder of ``binary``,
        ``multilabel`` and, under ``segmentation``, of each segmentation model by key (as ``segmentation``).
        ``settings``: ``Cascade``'s keyword arguments.

        Example:
            >>> Cascade.from_folders({"binary": run / "efficientnetb0/binary", ...,
            ...                       "segmentation": {0: run / "efficientnetb0/segmentation/joint"}}, (64, 320))
        """
        load = models.load_model
        segmentation = {int(k): load(v) for k, v in folders["segmentation"].items()}
        cascade = cls(load(folders["binary"]), load(folders["multilabel"]), segmentation, image_size, **settings)
        cascade.sources = {name: Path(folders[name]).resolve() for name in ("binary", "multilabel")}
        cascade.sources.update({_part_name(k): Path(v).resolve() for k, v in folders["segmentation"].items()})
        return cascade

    def save(self, path: str | Path) -> Path:
        """Write ``cascade.json`` into ``path`` with the models it names: a model loaded from a folder inside
        ``path`` (a run directory's stages) is named where it is; any other is saved into ``path`` (weights +
        spec), which makes a self-contained bundle."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        parts = {"binary": self.binary, "multilabel": self.multilabel,
                 **{_part_name(k): m for k, m in self.segmentation.items()}}
        where = {}
        for name, model in parts.items():
            source = self.sources.get(name)
            if source is not None and source.is_relative_to(path.resolve()):
                where[name] = source.relative_to(path.resolve()).as_posix()
                continue
            spec = models.spec_of(model)
            if spec is None:
                raise CascadeError(f"the {name} model has no spec (it was not built by models.build_classifier / "
                                   "build_unet, nor loaded by models.load_model): save it with "
                                   "models.save_model(model, dir, spec) first")
            models.save_model(model, path / name, spec)
            where[name] = name
        spec = {"binary": where["binary"], "multilabel": where["multilabel"],
                "segmentation": {str(k): where[_part_name(k)] for k in self.segmentation}, **self.to_spec()}
        runfiles.write_json(path / runfiles.CASCADE_FILE, spec)
        return path

    def export(self, path: str | Path, format: str = "savedmodel", *, precision: str = "float32") -> Path:
        """Write the cascade as a deployable artefact that needs TensorFlow only: one SavedModel (``"savedmodel"``)
        or a ``.tflite`` file per stage (``"tflite"``, run by ``TFLiteCascade``). See ``export.export``.

        Example:
            >>> Cascade.load("runs/default").export("deploy/cascade")
            >>> served = tf.saved_model.load("deploy/cascade").signatures["serving_default"]
            >>> served(images=tf.constant(batch))["masks"]  # batch: uint8 (N, 256, 1600, 3)
        """
        from .export import export  # the one import up the package: export builds on this module

        return export(self, path, format, precision=precision)

    def stage_models(self) -> dict:
        """The models by stage name: ``binary``, ``multilabel``, ``segmentation_joint`` or ``segmentation_class<k>``."""
        return {"binary": self.binary, "multilabel": self.multilabel,
                **{f"segmentation_{runfiles.segmentation_stage(k)}": m for k, m in self.segmentation.items()}}

    def to_spec(self) -> dict:
        """The settings ``cascade.json`` records beside the models (``settings_from_spec`` reads them back)."""
        return {
            "image_size": list(self.image_size),
            "limits": {str(k): list(v) for k, v in self.limits.items()},
            "binary_threshold": self.binary_threshold,
            "label_thresholds": {str(k): v for k, v in self.label_thresholds.items()},
            "pixel_threshold": self.pixel_threshold,
            "searched": {str(k): v for k, v in self.searched.items()} if self.searched else None,
            "never_predicted": {str(k): v for k, v in self.never_predicted.items()},
            "tta": self.tta,
            **({"validation": self.validation} if self.validation is not None else {}),
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

    def model_size(self, model) -> tuple[int, int]:
        shape = getattr(model, "input_shape", None)
        size = tuple(shape[1:3]) if shape is not None else (None, None)
        return size if None not in size else self.image_size

    @property
    def input_size(self) -> tuple[int, int]:
        """The size to feed ``probabilities``: the models' one input size, or 256x1600 when they differ (each
        stage then resizes from the full image, as prediction does)."""
        sizes = {self.model_size(m) for m in (self.binary, self.multilabel, *self.segmentation.values())}
        return sizes.pop() if len(sizes) == 1 else IMAGE_SHAPE

    def probabilities(self, images: np.ndarray, gating: str | None = None):
        """Stage outputs for uint8 images ``(n, H, W, 3)`` of one size (each model gets them resized to its input,
        once per distinct size): defect probs (n,), class probs (n, 4) (NaN where stage 2 did not run), mask probs
        (n, h, w, 4) at ``image_size`` (0 where stage 3 did not run), and which (image, class) were segmented."""
        gating = gating or self.gating
        n = len(images)
        resized = {tuple(images.shape[1:3]): images}

        def run(model, rows, stage):
            size = self.model_size(model)
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
        pixels = [read_image(image) for image in images]
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




def _part_name(key: int) -> str:
    """A segmentation model's folder in a bundle: ``segmentation/joint`` or ``segmentation/class<k>``."""
    return f"{runfiles.SEGMENTATION_FOLDER}/{runfiles.segmentation_stage(key)}"


def _model_folder(base: Path, relative: str) -> Path:
    path = (base / relative).resolve()
    if not (path / models.SPEC_FILE).is_file():
        raise CascadeError(f"{base / runfiles.CASCADE_FILE} names {relative}, but {path / models.SPEC_FILE} is missing")
    return path


def settings_from_spec(spec: dict) -> dict:
    """``Cascade`` keyword arguments from a ``cascade.json`` (``to_spec``)."""
    return {
        "limits": {int(k): tuple(v) for k, v in spec["limits"].items()},
        "binary_threshold": spec.get("binary_threshold", 0.5),
        "label_thresholds": {int(k): v for k, v in spec.get("label_thresholds", {}).items()} or None,
        "pixel_threshold": spec.get("pixel_threshold", 0.5),
        "searched": {int(k): v for k, v in spec["searched"].items()} if spec.get("searched") else None,
        "never_predicted": {int(k): v for k, v in (spec.get("never_predicted") or {}).items()},
        "tta": spec.get("tta"),
        "validation": spec.get("validation"),
    }


def _decision_text(code: int, full_area: float, limits: tuple[float, float]) -> str:
    """Why a class was kept or dropped, from its ``thresholds.decide`` code (area at 256x1600)."""
    if code == thresholds.OUT_OF_RANGE:
        low, high = limits
        return f"dropped: area {full_area:.0f} px (at 256x1600) outside [{low:.0f}, {high:.0f}]"
    return DECISION_CODES[int(code)]


# ----- the default cascade

_default: tuple[Path, Cascade] | None = None  # (its resolved cascade.json, the cascade)


def default_cascade_path() -> Path:
    """``$STEELDEFECT_CASCADE``, else the run named in ``runs/latest.txt``; a ``CascadeError`` says how to make one."""
    env = os.environ.get("STEELDEFECT_CASCADE")
    if env:
        return Path(env)
    latest = runfiles.latest_run()
    if latest is not None:
        return latest
    raise CascadeError(
        "no default cascade: $STEELDEFECT_CASCADE is not set and no experiments run was recorded in "
        f"{runfiles.RUNS_DIR / runfiles.LATEST_FILE}. Run `python -m steeldefect.experiments` to train one, or pass "
        "cascade=Cascade.load(path) with a run directory or bundle."
    )


def spec_file(path: str | Path) -> Path:
    """A run directory's or bundle's ``cascade.json``, given the folder or the file itself."""
    path = Path(path)
    return path if path.suffix == ".json" else path / runfiles.CASCADE_FILE


def load_default() -> Cascade:
    """The default cascade, loaded once per process (and again only when its path changes)."""
    global _default
    path = spec_file(default_cascade_path()).resolve()
    if _default is None or _default[0] != path:
        _default = (path, Cascade.load(path))
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


