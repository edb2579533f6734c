"""A cascade for deployment: one SavedModel that needs TensorFlow only, or a TFLite file per stage.

``export(cascade, path)`` (``Cascade.export``) writes the whole cascade - the three stages, its gating, area filter,
thresholds and TTA - as one SavedModel whose ``serving_default`` signature (``EXPORT_OUTPUTS``) decides exactly as
``Cascade.predict``; or each stage as a ``.tflite`` file that ``TFLiteCascade`` joins with ``Cascade``'s own decision
code. Both record ``metadata.json``.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .. import loaders, models, runfiles, thresholds
from ..config import CLASS_IDS, IMAGE_SHAPE
from .core import DECISION_CODES, TTA_FLIPS, Cascade, CascadeError, settings_from_spec

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


def export(cascade: Cascade, path: str | Path, format: str = "savedmodel", *, precision: str = "float32") -> Path:
    """Write the cascade as a deployable artefact that needs TensorFlow only (no steeldefect, no
    segmentation-models).

    Args:
        cascade: a ``Cascade`` of Keras models.
        path: a new folder.
        format: ``"savedmodel"``: one SavedModel holding the three stages, this cascade's gating, area filter,
            thresholds (the searched ones when ``use_searched``) and TTA; ``tf.saved_model.load(path)`` and its
            ``serving_default`` signature (``EXPORT_OUTPUTS``) run it. ``"tflite"``: each stage as a
            ``.tflite`` file and ``metadata.json``; ``TFLiteCascade.load(path)`` runs them through the same
            decision code as ``Cascade``.
        precision: the TFLite weights, ``"float32"`` or ``"float16"`` (half the size).

    Both write ``metadata.json`` (a SavedModel as its asset ``assets/metadata.json``): backbones, each stage's
    input size, the thresholds and limits, the decision codes, the steeldefect and TensorFlow versions.
    A SavedModel can run any TensorFlow op: load only one from a path you trust.

    Example:
        >>> export(Cascade.load("runs/default"), "deploy/cascade")
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
    for name, model in cascade.stage_models().items():
        if not isinstance(model, keras.Model):
            raise CascadeError(f"the {name} stage is a {type(model).__name__}, not a Keras model: only a "
                               "cascade of Keras models can be exported")
    if format == "savedmodel":
        return _export_savedmodel(cascade, path)
    return _export_tflite(cascade, path, precision)


def metadata(cascade: Cascade, format: str) -> dict:
    """What an exported cascade records about itself (``export``): JSON-safe, an infinite limit is null."""
    from .. import __version__

    rule = cascade.rule()
    finite = lambda v: None if v == float("inf") else float(v)  # noqa: E731
    pixel = np.broadcast_to(np.asarray(rule["pixel_thresholds"], np.float64), (len(CLASS_IDS),))
    stages = {}
    for name, model in cascade.stage_models().items():
        spec = models.spec_of(model) or {}
        stages[name] = {"backbone": spec.get("backbone"), "input_size": list(cascade.model_size(model)),
                        "outputs": int(model.output_shape[-1])}
    return {
        "format": format, "steeldefect_version": __version__, "tensorflow_version": tf.__version__,
        "stages": stages, "mask_size": list(cascade.image_size),
        "gating": cascade.gating, "area_filter": cascade.area_filter, "tta": cascade.tta,
        "thresholds": "searched on validation" if cascade.use_searched and cascade.searched else "paper",
        "binary_threshold": float(rule["binary_threshold"]),
        "label_thresholds": {str(c): finite(v) for c, v in zip(CLASS_IDS, rule["label_thresholds"], strict=True)},
        "pixel_thresholds": {str(c): float(v) for c, v in zip(CLASS_IDS, pixel, strict=True)},
        "area_limits_256x1600": {str(c): [finite(v) for v in rule["limits"][c]] for c in CLASS_IDS},
        "never_predicted": {str(c): why for c, why in cascade.never_predicted.items()},
        "decision_codes": {str(code): text for code, text in DECISION_CODES.items()},
        # the settings TFLiteCascade.load rebuilds the cascade from (its validation record stays with the run)
        "cascade": {**{k: v for k, v in cascade.to_spec().items() if k != "validation"}, "gating": cascade.gating,
                    "area_filter": cascade.area_filter, "use_searched": cascade.use_searched},
    }


# ----- the SavedModel: the cascade in TensorFlow ops


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


class _ServingGraph:
    """The whole cascade as TensorFlow ops on a uint8 batch (N, H, W, 3): ``Cascade.probabilities`` (``stages``),
    then ``Cascade._result`` and ``thresholds.decide`` (``decide``); each stage runs only on the images that reach
    it. Its thresholds are the cascade's ``rule()``, as float32 constants that compare as NumPy does."""

    def __init__(self, cascade: Cascade):
        rule = cascade.rule()
        self.cascade = cascade
        self.binary_threshold = tf.constant(_at_least_float32(rule["binary_threshold"]))
        self.label_thresholds = tf.constant(_at_least_float32(rule["label_thresholds"]))
        self.pixel_thresholds = tf.constant(_at_least_float32(
            np.broadcast_to(np.asarray(rule["pixel_thresholds"], np.float64), (len(CLASS_IDS),))))
        self.low, self.high = (tf.constant([float(rule["limits"][c][i]) for c in CLASS_IDS], tf.float64)
                               for i in (0, 1))
        self.segmentable = tf.constant([c not in cascade.never_predicted for c in CLASS_IDS])
        self.flips = TTA_FLIPS[cascade.tta]

    def __call__(self, images):
        shape = tf.shape(images)
        height, width = shape[1], shape[2]
        defect, passed, class_probs, segment, mask_probs = self.stages(images)
        size = tuple(self.cascade.image_size)
        same = tf.reduce_all(tf.stack([height, width]) == tf.constant(size))
        mask_probs = tf.cond(same, lambda: mask_probs,
                             lambda: tf.image.resize(mask_probs, tf.stack([height, width]), method="bilinear"))
        binary, areas, codes = self.decide(mask_probs, segment, passed, height * width)
        return {"masks": binary & (codes == thresholds.KEPT)[:, None, None, :], "defect_prob": defect,
                "class_probs": class_probs, "areas": areas * tf.cast(segment, tf.int32), "decisions": codes}

    def _averaged(self, model, images):
        total = None
        for axes in self.flips:
            found = tf.cast(model(tf.reverse(images, axes) if axes else images, training=False), tf.float32)
            if axes and found.shape.rank == 4:  # a mask: back to the image's orientation
                found = tf.reverse(found, axes)
            total = found if total is None else total + found
        return total / len(self.flips)

    def _run(self, model, images):  # an EfficientNet cannot take an empty batch (BatchNormalization fails on it)
        return tf.cond(tf.shape(images)[0] > 0, lambda: self._averaged(model, images),
                       lambda: tf.zeros([0, *model.output_shape[1:]]))

    def stages(self, images):
        """``(defect, passed, class_probs, segment, mask_probs)`` as ``Cascade.probabilities`` computes them."""
        cascade, n_classes, size = self.cascade, len(CLASS_IDS), tuple(self.cascade.image_size)
        shape = tf.shape(images)
        n, height, width = shape[0], shape[1], shape[2]
        resized = {}

        def at(model):  # the batch at a model's input size (resized as Cascade.probabilities does)
            key = cascade.model_size(model)
            if key not in resized:
                same = tf.reduce_all(tf.stack([height, width]) == tf.constant(key))
                x = tf.cond(same, lambda: images, lambda: loaders.resize_images(images, key))
                resized[key] = tf.ensure_shape(x, (None, *key, 3))
            return resized[key]

        defect = tf.reshape(self._run(cascade.binary, at(cascade.binary)), [n])
        passed = defect >= self.binary_threshold
        if cascade.gating == "none":
            class_probs = self._run(cascade.multilabel, at(cascade.multilabel))
            segment = tf.tile(self.segmentable[None], [n, 1])
        else:
            rows = _rows(passed)
            found = self._run(cascade.multilabel, tf.gather(at(cascade.multilabel), rows))
            class_probs = tf.tensor_scatter_nd_update(tf.fill([n, n_classes], float("nan")), rows[:, None], found)
            segment = class_probs >= self.label_thresholds  # NaN (stage 2 did not run): False
        if 0 in cascade.segmentation:
            joint = cascade.segmentation[0]
            rows = _rows(tf.reduce_any(segment, axis=1))
            found = self._run(joint, tf.gather(at(joint), rows))
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
                found = self._run(model, tf.gather(at(model), rows))[..., 0]
                channels.append(tf.scatter_nd(rows[:, None], found, tf.stack([n, *size])))
            mask_probs = tf.stack(channels, axis=-1)
        return defect, passed, class_probs, segment, mask_probs

    def decide(self, mask_probs, segment, passed, pixels):
        """``thresholds.decide`` in TF ops: the masks above the pixel thresholds, their areas and the codes. The
        limits, given at 256x1600, are scaled to the input's pixel count; an earlier reason wins."""
        binary = mask_probs >= self.pixel_thresholds
        areas = tf.reduce_sum(tf.cast(binary, tf.int32), axis=[1, 2])
        factor = tf.cast(pixels, tf.float64) / float(IMAGE_SHAPE[0] * IMAGE_SHAPE[1])
        area = tf.cast(areas, tf.float64)
        codes = tf.fill(tf.shape(areas), thresholds.KEPT)
        if self.cascade.area_filter:
            codes = tf.where((area < self.low * factor) | (area > self.high * factor), thresholds.OUT_OF_RANGE, codes)
        codes = tf.where(areas == 0, thresholds.EMPTY, codes)
        if self.cascade.gating == "paper":
            codes = tf.where(segment, codes, thresholds.ABSENT)
            codes = tf.where(passed[:, None], codes, thresholds.NO_DEFECT)
        return binary, areas, codes


def _attach_asset(archive, name: str, asset: tf.saved_model.Asset) -> None:
    """Put ``asset`` on the SavedModel's root object (``loaded.<name>.asset_path``). Keras' ExportArchive has no
    public way to add a file asset (its ``track`` keeps lookup tables only), so this sets it on the archive's
    root trackable, ``_tf_trackable`` (Keras-private; test_export pins it, so a Keras that renames it fails there
    first, and here with this error rather than an AttributeError)."""
    root = getattr(archive, "_tf_trackable", None)
    if root is None:
        raise CascadeError(f"keras {keras.__version__}'s ExportArchive has no _tf_trackable, where the export puts "
                           f"{name}: export --format tflite works; for a SavedModel use the keras version steeldefect "
                           "pins (pyproject.toml)")
    setattr(root, name, asset)


def _export_savedmodel(cascade: Cascade, path: Path) -> Path:
    from keras.export import ExportArchive

    archive = ExportArchive()  # tracks the variables the function uses (track() would store them twice)
    archive.add_endpoint(SERVING_SIGNATURE, _ServingGraph(cascade).__call__,
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    with tempfile.TemporaryDirectory() as scratch:
        found = {**metadata(cascade, "savedmodel"), "signature": SERVING_SIGNATURE,
                 "inputs": {"images": "(N, H, W, 3) uint8 RGB; each stage resizes to its input size"},
                 "outputs": EXPORT_OUTPUTS}
        _attach_asset(archive, "metadata", tf.saved_model.Asset(
            str(runfiles.write_json(Path(scratch) / METADATA_FILE, found))))
        archive.write_out(str(path), verbose=False)
    return path


# ----- TFLite: a file per stage, joined by Cascade's decision code


def _inference(model):
    """``model`` in inference mode, a function of ``images`` only (a traced signature's one argument)."""
    return lambda images: model(images, training=False)


def _export_tflite(cascade: Cascade, path: Path, precision: str) -> Path:
    from keras.export import ExportArchive

    path.mkdir(parents=True, exist_ok=True)
    files = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, model in cascade.stage_models().items():
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
    runfiles.write_json(path / METADATA_FILE, {**metadata(cascade, "tflite"), "precision": precision, "files": files})
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
        segmentation = {runfiles.segmentation_key(name.removeprefix("segmentation_")): stage(name)
                        for name in meta["files"] if name.startswith("segmentation_")}
        spec = meta["cascade"]
        settings = {**settings_from_spec(spec), "gating": spec["gating"], "area_filter": spec["area_filter"],
                    "use_searched": spec["use_searched"], **overrides}
        cascade = cls(stage("binary"), stage("multilabel"), segmentation, spec["image_size"], **settings)
        cascade.source = path.resolve()
        return cascade


