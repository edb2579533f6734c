"""The models of the three stages over one registry of EfficientNet backbones B0-B4.

``build_classifier`` (stages 1 and 2) puts the paper's source-pipeline head on an EfficientNet encoder from the
``efficientnet`` package; ``build_unet`` (stage 3) is ``segmentation_models``' UNet with that encoder. Both take
uint8-range pixels: their first layer is ``Preprocess`` (the encoders' "torch" preprocessing), the one place where
pixels become model input. Models are saved as weights plus the spec to rebuild them (``save_model`` /
``load_model``), which needs no custom-object registration and no unsafe deserialisation.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

os.environ["SM_FRAMEWORK"] = "tf.keras"  # segmentation_models reads this at import; the one place we set it

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

with contextlib.redirect_stdout(io.StringIO()):  # it announces its framework on stdout
    import segmentation_models as sm  # noqa: E402
import efficientnet.tfkeras as efn  # noqa: E402

from . import runfiles  # noqa: E402
from .config import STAGE1_ENCODER, check_image_size  # noqa: E402

BACKBONES = {
    "efficientnetb0": efn.EfficientNetB0,
    "efficientnetb1": efn.EfficientNetB1,
    "efficientnetb2": efn.EfficientNetB2,
    "efficientnetb3": efn.EfficientNetB3,
    "efficientnetb4": efn.EfficientNetB4,
}
HEADS = ("paper", "simple")
SPEC_ATTRIBUTE = "_steeldefect_spec"  # not tracked by Keras (set with object.__setattr__)
# ImageNet statistics: the EfficientNet encoders use "torch" mode, x / 255 then per-channel standardisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.weights.h5"


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights were asked for but cannot be found locally or downloaded."""


def preprocess(images):
    """uint8 (or float 0-255) ``(..., H, W, 3)`` pixels → float32 encoder input (x/255, ImageNet mean/std)."""
    images = tf.cast(images, tf.float32) / 255.0
    return (images - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


@keras.saving.register_keras_serializable(package="steeldefect")
class Preprocess(keras.layers.Layer):
    """``preprocess`` as the first layer of every model."""

    def call(self, inputs):
        return tf.cast(preprocess(inputs), self.compute_dtype)


def check_backbone(backbone: str) -> str:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    return backbone


def weights_file_name(backbone: str) -> str:
    """The file the ``efficientnet`` package downloads for an encoder's ImageNet weights (no top)."""
    index = check_backbone(backbone)[-1]
    return f"efficientnet-b{index}_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5"


def weights_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: ``$KERAS_HOME/models`` or ``~/.keras/models``."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _download(file_name: str) -> str:
    from efficientnet.model import BASE_WEIGHTS_PATH

    return keras.utils.get_file(file_name, BASE_WEIGHTS_PATH + file_name, cache_subdir="models")


def resolve_encoder_weights(backbone: str, encoder_weights: str | os.PathLike | None) -> Path | None:
    """A local weights file for ``encoder_weights`` (``"imagenet"``, None or a path), downloading if it must."""
    if encoder_weights is None or str(encoder_weights).lower() == "none":
        return None
    if str(encoder_weights) == STAGE1_ENCODER:
        raise ValueError(
            f"encoder_weights={STAGE1_ENCODER!r} means a run's trained stage-1 encoder: resolve it for a stage with "
            "training.initial_encoder_weights(run_dir, backbone, stage, config) (train_stage does) before building")
    if str(encoder_weights) != "imagenet":
        path = Path(encoder_weights)
        if not path.is_file():
            raise FileNotFoundError(f"encoder weights file {path} does not exist")
        return path
    file_name = weights_file_name(backbone)
    cached = weights_cache_dir() / file_name
    if cached.is_file():
        return cached
    try:
        return Path(_download(file_name))
    except Exception as err:  # offline: get_file raises various errors (URL, socket, ...)
        raise WeightsUnavailableError(
            f"ImageNet weights for {backbone} could not be downloaded ({type(err).__name__}: {err}). "
            f"Place the file {file_name} in {weights_cache_dir()} (the Keras cache, $KERAS_HOME/models or "
            f"~/.keras/models) to make the download unnecessary, or pass encoder_weights=None (random "
            f"initialisation) or encoder_weights='/path/to/{file_name}'."
        ) from err


def _encoder(backbone: str, image_size: tuple[int, int], weights: Path | None) -> keras.Model:
    build = BACKBONES[check_backbone(backbone)]
    try:
        return build(include_top=False, weights=None if weights is None else str(weights), input_shape=(*image_size, 3))
    except OSError as err:  # h5py: the weights file is cut short, empty or not HDF5 at all
        raise runfiles.RunFileError(
            f"encoder weights file {weights} cannot be read ({runfiles.first_line(err)}): it "
            "is damaged or not a Keras weights file; copy it again or pass another --encoder-weights (a run's "
            "encoder.weights.h5: retrain that backbone's stage 1 by deleting its binary folder and rerunning)") from err


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer inside ``model``, those of nested models included, each once (a walk over the public
    ``.layers``)."""
    found: dict[int, keras.layers.Layer] = {}
    stack = list(reversed(model.layers))
    while stack:
        layer = stack.pop()
        if id(layer) in found:
            continue
        found[id(layer)] = layer
        stack.extend(reversed(getattr(layer, "layers", [])))
    return list(found.values())


def set_bn_momentum(model: keras.Model, momentum: float | None) -> None:
    """Set the momentum of every BatchNormalization layer (nested models included)."""
    if momentum is None:
        return
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def build_classifier(
    backbone: str,
    num_outputs: int,
    image_size: tuple[int, int] = (256, 1600),
    encoder_weights: str | os.PathLike | None = "imagenet",
    *,
    head: str = "paper",
    bn_momentum: float | None = None,
) -> keras.Model:
    """An EfficientNet classifier with sigmoid outputs: stage 1 (``num_outputs=1``) or stage 2 (``4``).

    Args:
        backbone: ``"efficientnetb0"`` … ``"efficientnetb4"``.
        num_outputs: sigmoid outputs.
        image_size: ``(height, width)`` of the input, at least 32 each.
        encoder_weights: ``"imagenet"``, None, or a path to a weights file for the encoder.
        head: ``"paper"``: global average pooling → Dense 1024 ReLU → BN → Dropout 0.3 → Dense 512 ReLU → BN →
            Dropout 0.3 → Dense 64 ReLU → Dense sigmoid (the source pipeline); ``"simple"``: pooling → Dropout 0.2
            → Dense sigmoid.
        bn_momentum: if given, the momentum of every BatchNormalization layer.

    Returns:
        An uncompiled ``keras.Model`` taking uint8-range ``(h, w, 3)`` pixels.

    Example:
        >>> model = build_classifier("efficientnetb0", 1, (256, 512), encoder_weights=None)
        >>> model.output_shape
        (None, 1)

    Reproduces the classifiers of the paper's Section 3 (binary and multi-label classification).
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid: {', '.join(HEADS)}")
    height, width = (int(v) for v in image_size)
    if height < 32 or width < 32:
        raise ValueError(f"a classifier needs image_size of at least 32x32, got {height}x{width}")
    encoder = _encoder(backbone, (height, width), resolve_encoder_weights(backbone, encoder_weights))
    inputs = keras.Input((height, width, 3), name="image")
    x = encoder(Preprocess(name="preprocess")(inputs))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if head == "paper":
        for units in (1024, 512):
            x = keras.layers.Dense(units, activation="relu")(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Dropout(0.3)(x)
        x = keras.layers.Dense(64, activation="relu")(x)
    else:
        x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_outputs, activation="sigmoid", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"{backbone}_classifier{num_outputs}")
    set_bn_momentum(model, bn_momentum)
    object.__setattr__(model, SPEC_ATTRIBUTE, model_spec(model, "classifier", backbone, head))
    return model


def build_unet(
    backbone: str,
    num_classes: int,
    image_size: tuple[int, int] = (256, 1600),
    encoder_weights: str | os.PathLike | None = "imagenet",
    *,
    bn_momentum: float | None = None,
) -> keras.Model:
    """``segmentation_models``' UNet with an EfficientNet encoder and sigmoid masks (stage 3).

    Args:
        backbone: ``"efficientnetb0"`` … ``"efficientnetb4"``.
        num_classes: output channels (1 for a per-class UNet as in the paper's source, 4 for a joint one).
        image_size: ``(height, width)``, multiples of 32 (256x1600, 128x800, 64x320, …).
        encoder_weights: ``"imagenet"``, None, or a path to a weights file for the encoder.
        bn_momentum: if given, the momentum of every BatchNormalization layer.

    Returns:
        An uncompiled ``keras.Model`` mapping uint8-range ``(h, w, 3)`` pixels to ``(h, w, num_classes)``.

    Example:
        >>> unet = build_unet("efficientnetb0", 1, (128, 800), encoder_weights=None)
        >>> unet.output_shape
        (None, 128, 800, 1)

    Reproduces the UNet-EfficientNet of the paper's Sections 3.3-3.4.
    """
    image_size = check_image_size(image_size, "a UNet")
    weights = resolve_encoder_weights(backbone, encoder_weights)
    unet = sm.Unet(
        check_backbone(backbone), encoder_weights=None, classes=num_classes, activation="sigmoid",
        input_shape=(*image_size, 3),
    )
    if weights is not None:  # copy the encoder's weights into the UNet's layers of the same names
        encoder = _encoder(backbone, image_size, weights)
        for layer in encoder.layers:
            if layer.weights:
                unet.get_layer(layer.name).set_weights(layer.get_weights())
    inputs = keras.Input((*image_size, 3), name="image")
    outputs = unet(Preprocess(name="preprocess")(inputs))
    outputs = keras.layers.Activation("linear", dtype="float32", name="masks")(outputs)  # float32 under mixed precision
    model = keras.Model(inputs, outputs, name=f"{backbone}_unet{num_classes}")
    set_bn_momentum(model, bn_momentum)
    object.__setattr__(model, SPEC_ATTRIBUTE, model_spec(model, "unet", backbone))
    return model


def freeze_encoder(model: keras.Model) -> int:
    """Make the EfficientNet encoder of a classifier or UNet (built here) untrainable: training then updates the
    classifier's head or the UNet's decoder only, and the encoder's BatchNormalization layers run in inference mode
    (they keep the statistics the encoder was loaded with). Call before compiling. Returns the layers frozen.

    Example:
        >>> unet = build_unet("efficientnetb0", 4, (64, 320), encoder_weights=None)
        >>> freeze_encoder(unet) > 0
        True
    """
    spec = spec_of(model)
    if spec is None or spec["kind"] not in ("classifier", "unet"):
        raise ValueError("freeze_encoder takes a classifier or UNet built by build_classifier / build_unet")
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if spec["kind"] == "classifier":  # the encoder is the one nested model
        nested[0].trainable = False
        return len(nested[0].layers)
    # sm.Unet holds the encoder's layers under the encoder's own names (build_unet copies weights by them)
    unet = nested[0]
    names = {layer.name for layer in _encoder(spec["backbone"], tuple(spec["image_size"]), None).layers}
    frozen = [layer for layer in unet.layers if layer.name in names and not isinstance(layer, keras.layers.InputLayer)]
    for layer in frozen:
        layer.trainable = False
    return len(frozen)


def save_encoder_weights(classifier: keras.Model, path: str | Path) -> Path:
    """Write a classifier's EfficientNet encoder weights to ``path`` (``*.weights.h5``, atomically), in the form
    ``build_classifier`` and ``build_unet`` take as ``encoder_weights``: stage 1's trained encoder can start the
    later stages of the same backbone, as ImageNet weights would."""
    path = Path(path)
    encoders = [layer for layer in classifier.layers if isinstance(layer, keras.Model)]
    if spec_of(classifier) is None or spec_of(classifier)["kind"] != "classifier" or len(encoders) != 1:
        raise ValueError(f"{classifier.name}: not a classifier from build_classifier (it has no single encoder)")
    tmp = path.with_name("tmp-" + path.name)
    encoders[0].save_weights(tmp)
    tmp.replace(path)
    return path


def forward_fn(model: keras.Model, training: bool = False):
    """A ``tf.function`` calling ``model`` on uint8 batches of any size, traced once per model and mode (a
    plain call retraces for every new batch size, and tracing an EfficientNet costs seconds); for a model with
    ``run_eagerly`` set, the plain eager call (tiny runs: no tracing at all)."""
    if getattr(model, "run_eagerly", False):
        return lambda images: model(images, training=training)
    key = "_steeldefect_forward_train" if training else "_steeldefect_forward"
    function = getattr(model, key, None)
    if function is None:
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8)
        function = tf.function(lambda images: model(images, training=training), input_signature=[spec])
        object.__setattr__(model, key, function)  # Keras tracks attributes; this is a cache, not state
    return function


def predict(model: keras.Model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """``model``'s outputs for a uint8 batch ``(N, H, W, 3)`` at the model's size, in batches (inference mode)."""
    forward = forward_fn(model)
    outputs = [np.asarray(forward(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, *model.output_shape[1:]), np.float32)


def build_model(spec: dict) -> keras.Model:
    """Rebuild a model from the spec ``save_model`` writes (random weights; ``load_model`` loads them)."""
    if spec["kind"] == "classifier":
        return build_classifier(spec["backbone"], spec["num_outputs"], tuple(spec["image_size"]), None,
                                head=spec.get("head", "paper"))
    if spec["kind"] == "unet":
        return build_unet(spec["backbone"], spec["num_outputs"], tuple(spec["image_size"]), None)
    raise ValueError(f"unknown model kind {spec['kind']!r} in spec {spec}")


def model_spec(model: keras.Model, kind: str, backbone: str, head: str | None = None) -> dict:
    spec = {"kind": kind, "backbone": backbone, "num_outputs": int(model.output_shape[-1]),
            "image_size": [int(v) for v in model.input_shape[1:3]]}
    if head is not None:
        spec["head"] = head
    return spec


def save_model(model: keras.Model, directory: str | Path, spec: dict) -> None:
    """Write ``model.weights.h5`` and ``model.json`` (the spec) into ``directory``, each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp_weights = directory / ("tmp-" + WEIGHTS_FILE)
    # Without its optimizer: a compiled model's file would also hold Adam's two moments (3x the size), which
    # nothing reads - resuming training uses BackupAndRestore's own files.
    optimizer = getattr(model, "optimizer", None)
    model.optimizer = None
    try:
        model.save_weights(tmp_weights)
    finally:
        model.optimizer = optimizer
    tmp_weights.replace(directory / WEIGHTS_FILE)
    runfiles.write_json(directory / SPEC_FILE, spec)
    object.__setattr__(model, SPEC_ATTRIBUTE, spec)


def load_model(directory: str | Path) -> keras.Model:
    """Rebuild a saved model from ``model.json`` and load ``model.weights.h5``; errors name a missing file."""
    directory = Path(directory)
    for name in (SPEC_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} is missing: not a saved steeldefect model")
    spec = runfiles.read_json(directory / SPEC_FILE)
    try:
        model = build_model(spec)
        model.load_weights(directory / WEIGHTS_FILE)
    except OSError as err:  # h5py: a weights file cut short, emptied or overwritten (a copy that failed, a full disk)
        raise runfiles.RunFileError(
            f"{directory / WEIGHTS_FILE} is damaged ({runfiles.first_line(err)}): "
            "copy it again from where it was trained, or retrain that stage (delete its folder and rerun the "
            "experiments, which resume)") from err
    except (KeyError, TypeError, ValueError) as err:  # a model.json of another version, or weights of another model
        raise runfiles.RunFileError(
            f"{directory}: {SPEC_FILE} and {WEIGHTS_FILE} do not make a model this version of steeldefect can load "
            f"({type(err).__name__}: {runfiles.first_line(err)}); retrain it (delete the "
            "folder and rerun the experiments, which resume) or use the steeldefect version that saved it") from err
    object.__setattr__(model, SPEC_ATTRIBUTE, spec)  # what it was rebuilt from, for saving it again as it is
    return model


def spec_of(model: keras.Model) -> dict | None:
    """The spec a model was built (``build_classifier``, ``build_unet``), loaded or saved with; None for others."""
    return getattr(model, SPEC_ATTRIBUTE, None)


def recalibrate_batchnorm(model: keras.Model, dataset: tf.data.Dataset, max_batches: int = 25) -> int:
    """Re-estimate every BatchNormalization layer's moving statistics on ``dataset`` (precise BN).

    Short runs from random initialisation leave the moving averages far behind the weights, so inference sits
    at chance while training accuracy climbs (DESIGN.md, "Known facts"). Averaging the batch statistics of a few
    forward passes in training mode with the final weights fixes that; no weight is trained. Returns the number
    of batches used.
    """
    layers = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0  # each training-mode call then stores exactly this batch's statistics
    forward = forward_fn(model, training=True)
    sums = [[np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape)] for layer in layers]
    batches = 0
    try:
        for images, _ in dataset.take(max_batches):
            forward(tf.cast(images, tf.uint8))
            for total, layer in zip(sums, layers, strict=True):
                total[0] += keras.ops.convert_to_numpy(layer.moving_mean)
                total[1] += keras.ops.convert_to_numpy(layer.moving_variance)
            batches += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    for (mean, variance), layer in zip(sums, layers, strict=True):
        if batches:
            layer.moving_mean.assign(mean / batches)
            layer.moving_variance.assign(variance / batches)
    return batches
