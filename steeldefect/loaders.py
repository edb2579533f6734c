"""tf.data input pipelines for the three stages: binary, multi-label and segmentation.

JPEG decoding, RLE decoding (``rle.decode_tf_channels``), resizing (masks nearest-neighbour) and augmentation all
run inside ``Dataset.map`` with ``AUTOTUNE``. Images leave the loader as uint8 pixels (0-255) and masks as uint8
0/1: a quarter of the bytes of float32, which is what made the full-size loader fast enough, and what a cache has
to hold. The encoder's preprocessing (``models.preprocess``) is the first layer of every model, so training,
evaluation and the cascade share it and cannot drift apart.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from . import rle
from .config import CLASS_IDS, DEFECT_COLUMNS, IMAGE_SHAPE

TASKS = ("binary", "multilabel", "segmentation", "masks")
AUGMENTATIONS = ("ours", "source")
AUTOTUNE = tf.data.AUTOTUNE
DCT_METHOD = "INTEGER_ACCURATE"  # libjpeg's JDCT_ISLOW, OpenCV's default


def select_rows(table: pd.DataFrame, task: str, class_id: int | None = None) -> pd.DataFrame:
    """The rows a task trains on: all (binary), defective (multilabel, joint segmentation), or with class c."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if class_id is not None and (task != "segmentation" or class_id not in CLASS_IDS):
        raise ValueError(
            f"class_id={class_id!r} is only for task='segmentation' and must be one of {CLASS_IDS}"
        )
    if task in ("binary", "masks"):
        return table
    if task == "multilabel" or class_id is None:
        return table[table["has_defect"]]
    return table[table[DEFECT_COLUMNS[class_id - 1]] != ""]


def _check_image_size(image_size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), got {image_size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return height, width


def resize_images(images, image_size: tuple[int, int]) -> tf.Tensor:
    """uint8 ``(..., H, W, 3)`` → uint8 ``(..., h, w, 3)``: bilinear with antialiasing, rounded. Training and the
    cascade resize with this one function."""
    resized = tf.image.resize(images, image_size, method="bilinear", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


def _load(path, rles, labels, *, task, class_id, image_size, mask_shape):
    # The accurate integer DCT: the pixels OpenCV gives the cascade (cv2.imdecode), bit for bit; TensorFlow's
    # default (a fast, inexact DCT) differs by up to 5 grey levels on the real images. Same decoding speed here.
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3, dct_method=DCT_METHOD)
    image = tf.cond(  # full-size training skips the resize
        tf.reduce_all(tf.shape(image)[:2] == image_size), lambda: image, lambda: resize_images(image, image_size)
    )
    image = tf.ensure_shape(image, (*image_size, 3))
    if task == "binary":
        return image, tf.cast(tf.reduce_any(labels > 0, keepdims=True), tf.float32)
    if task == "multilabel":
        return image, tf.cast(labels, tf.float32)
    channels = [class_id] if class_id is not None else list(CLASS_IDS)  # "masks" and joint segmentation: all four
    masks = rle.decode_tf_channels(tf.gather(rles, [c - 1 for c in channels]), mask_shape)
    if tuple(image_size) != tuple(mask_shape):
        masks = tf.image.resize(masks, image_size, method="nearest")
    return image, masks


def _augment(image, target, *, segmentation: bool):
    """Random flips (shared by image and mask), brightness and contrast (image only)."""
    flip_lr = tf.random.uniform(()) < 0.5
    flip_ud = tf.random.uniform(()) < 0.5
    image = tf.cond(flip_lr, lambda: tf.reverse(image, [1]), lambda: image)
    image = tf.cond(flip_ud, lambda: tf.reverse(image, [0]), lambda: image)
    if segmentation:
        target = tf.cond(flip_lr, lambda: tf.reverse(target, [1]), lambda: target)
        target = tf.cond(flip_ud, lambda: tf.reverse(target, [0]), lambda: target)
    pixels = tf.cast(image, tf.float32)
    mean = tf.reduce_mean(pixels)
    pixels = (pixels - mean) * tf.random.uniform((), 0.8, 1.2) + mean + tf.random.uniform((), -20.0, 20.0)
    return tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 255.0)), tf.uint8), target


def _matrices(rows) -> tf.Tensor:
    """A batch of 3x3 matrices ``(n, 3, 3)`` from rows of per-image values (tensors of shape ``(n,)`` or numbers)."""
    n = next(tf.shape(v)[0] for row in rows for v in row if isinstance(v, tf.Tensor))

    def entry(v):
        return v if isinstance(v, tf.Tensor) else tf.fill([n], tf.constant(v, tf.float32))
    return tf.stack([tf.stack([entry(v) for v in row], axis=-1) for row in rows], axis=-2)


def _warp_vectors(matrices: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """TensorFlow's projective-transform vectors ``(n, 8)`` for ``matrices`` that map each output pixel to the input
    pixel it is read from, in (row, column) coordinates about the image centre (as ImageDataGenerator's)."""
    cy, cx = (height - 1) / 2, (width - 1) / 2
    to_centre = tf.constant([[1, 0, cy], [0, 1, cx], [0, 0, 1]], tf.float32)
    from_centre = tf.constant([[1, 0, -cy], [0, 1, -cx], [0, 0, 1]], tf.float32)
    m = to_centre @ matrices @ from_centre
    zeros = tf.zeros_like(m[:, 0, 0])
    # TensorFlow's (x, y) are (column, row): x_in = m11 x + m10 y + m12, y_in = m01 x + m00 y + m02
    return tf.stack([m[:, 1, 1], m[:, 1, 0], m[:, 1, 2], m[:, 0, 1], m[:, 0, 0], m[:, 0, 2], zeros, zeros], axis=1)


def _warp(images: tf.Tensor, vectors: tf.Tensor, interpolation: str) -> tf.Tensor:
    """Every image of a float32 batch through its own transform; edges filled with the nearest pixel."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=vectors, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation=interpolation, fill_mode="NEAREST")


def _draws(seed: tf.Tensor, count: int, n):
    """``uniform(k, low, high, shape=(n,))``: the k-th of ``count`` independent stateless streams of ``seed``."""
    keys = tf.random.experimental.stateless_split(seed, num=count)

    def uniform(k, low, high, shape=None):
        return tf.random.stateless_uniform([n] if shape is None else shape, seed=keys[k], minval=low, maxval=high)

    return uniform


def _scaling(rows, cols) -> tf.Tensor:
    """Matrices that scale (or, with -1, flip) the rows and columns about the centre."""
    return _matrices([[rows, 0.0, 0.0], [0.0, cols, 0.0], [0.0, 0.0, 1.0]])


def _shifting(rows, cols) -> tf.Tensor:
    """Matrices that read each output pixel ``rows`` and ``cols`` pixels away."""
    return _matrices([[1.0, 0.0, rows], [0.0, 1.0, cols], [0.0, 0.0, 1.0]])


def _classifier_transforms(seed: tf.Tensor, n, height: int, width: int) -> tf.Tensor:
    """The classifiers' transforms, as ImageDataGenerator draws and composes them (one affine transform per image:
    rotation, shift, shear, zoom, then the flips): rotation ±5°, shifts up to 20 % of the height and of the width,
    shear 0.2 degrees, zoom 0.95-1.05 along each axis, horizontal and vertical flips with probability 0.5."""
    uniform = _draws(seed, 8, n)

    def flip(k):
        return tf.where(uniform(k, 0.0, 1.0) < 0.5, -1.0, 1.0)

    theta = uniform(0, -math.radians(5), math.radians(5))
    shear = uniform(1, -math.radians(0.2), math.radians(0.2))
    shift_rows, shift_cols = uniform(2, -0.2, 0.2) * height, uniform(3, -0.2, 0.2) * width
    zoom_rows, zoom_cols = uniform(4, 0.95, 1.05), uniform(5, 0.95, 1.05)
    cos, sin = tf.cos(theta), tf.sin(theta)
    rotation = _matrices([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    shearing = _matrices([[1.0, -tf.sin(shear), 0.0], [0.0, tf.cos(shear), 0.0], [0.0, 0.0, 1.0]])
    composed = (rotation @ _shifting(shift_rows, shift_cols) @ shearing @ _scaling(zoom_rows, zoom_cols)
                @ _scaling(flip(6), flip(7)))
    return _warp_vectors(composed, height, width)


def _segmentation_transforms(seed: tf.Tensor, n, height: int, width: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The UNets' transforms: with probability 0.65 per batch, each part on with probability 0.5 per batch: shifts up
    to 25 px vertically and 50 px horizontally (at 256x800; fractions of the height and width), zoom in up to 10 %
    (the same along both axes), horizontal and vertical flips (each image with probability 0.5). Also whether any
    part is on (a batch with none is left as it is)."""
    uniform = _draws(seed, 10, n)
    on = uniform(0, 0.0, 1.0, []) < 0.65
    parts = [tf.logical_and(on, uniform(1 + k, 0.0, 1.0, []) < 0.5) for k in range(4)]
    shift_rows = tf.where(parts[0], uniform(5, -25 / 256, 25 / 256) * height, 0.0)
    shift_cols = tf.where(parts[0], uniform(6, -50 / 800, 50 / 800) * width, 0.0)
    zoom = tf.where(parts[1], uniform(7, 0.9, 1.0), 1.0)
    flip_cols = tf.where(tf.logical_and(parts[2], uniform(8, 0.0, 1.0) < 0.5), -1.0, 1.0)
    flip_rows = tf.where(tf.logical_and(parts[3], uniform(9, 0.0, 1.0) < 0.5), -1.0, 1.0)
    composed = _shifting(shift_rows, shift_cols) @ _scaling(zoom, zoom) @ _scaling(flip_rows, flip_cols)
    return _warp_vectors(composed, height, width), tf.reduce_any(tf.stack(parts))


def source_augmentation(segmentation: bool):
    """The source pipeline's augmentation (``shared/paper/source-pipeline.md``) as a function of ``(batch seed,
    uint8 images, target)``; each image of the batch draws its own transform, from the batch's seed alone
    (stateless: batches can be augmented in parallel and still give the same result for the same seed).

    Classifiers (Keras' ImageDataGenerator there, ``_classifier_transforms``): one affine transform per image composed
    as ImageDataGenerator composes it (rotation ±5°, shifts up to 20 % of width and height, shear 0.2 degrees, zoom
    ±5 %), then horizontal and vertical flips, every batch. UNets (``_segmentation_transforms``): with probability
    0.65 per batch, shifts up to 50 px horizontally and 25 px vertically (at 256x800: fractions of the width and
    height), zoom in up to 10 % ("zoom 0.9") and flips, each part on with probability 0.5, image and mask together;
    masks are moved with nearest-neighbour sampling and stay 0/1. Images are sampled bilinearly; edges are filled
    with the nearest pixel (ImageDataGenerator's default; our choice for the UNets, where the source does not say).
    """

    def augment(batch_seed, images, target):
        seed = tf.stack([batch_seed, tf.constant(0, tf.int64)])
        shape = tf.shape(images)
        height, width = int(images.shape[1]), int(images.shape[2])
        pixels = tf.cast(images, tf.float32)
        if segmentation:
            vectors, any_on = _segmentation_transforms(seed, shape[0], height, width)
            masks = tf.cast(target, tf.float32)
            pixels, masks = tf.cond(
                any_on,
                lambda: (_warp(pixels, vectors, "BILINEAR"), _warp(masks, vectors, "NEAREST")),
                lambda: (pixels, masks))
            target = tf.cast(masks >= 0.5, target.dtype)
        else:
            pixels = _warp(pixels, _classifier_transforms(seed, shape[0], height, width), "BILINEAR")
        return tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 255.0)), tf.uint8), target

    return augment


def cache_bytes(n_images: int, task: str, image_size: tuple[int, int], class_id: int | None = None) -> int:
    """The memory ``make_dataset(..., cache=True)`` fills for ``n_images`` rows: each decoded uint8 image at
    ``image_size`` and its target (float32 labels, or uint8 masks: 1 channel for a class, 4 for every class).

    Example:
        >>> cache_bytes(9048, "binary", (256, 512)) / 2**30  # the paper's stage-1 training images
        3.31...
    """
    height, width = _check_image_size(image_size)
    target = {"binary": 4, "multilabel": 4 * len(CLASS_IDS)}.get(task)
    if target is None:
        target = height * width * (1 if task == "segmentation" and class_id is not None else len(CLASS_IDS))
    return int(n_images) * (height * width * 3 + target)


def make_dataset(
    table: pd.DataFrame,
    images_dir: str | Path,
    task: str,
    *,
    image_size: tuple[int, int],
    batch_size: int,
    class_id: int | None = None,
    shuffle: bool = False,
    augment: bool = False,
    cache: bool = False,
    seed: int = 0,
    mask_shape: tuple[int, int] = IMAGE_SHAPE,
    drop_remainder: bool = False,
    augmentation: str = "ours",
) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` of ``(image, target)`` for one stage of the cascade.

    Args:
        table: one row per image (``data.load_table``), usually one split of it.
        images_dir: the folder holding the ``ImageId`` JPEGs.
        task: ``"binary"`` (all rows, target ``(1,)`` = has_defect), ``"multilabel"`` (defective rows, target
            ``(4,)``) or ``"segmentation"`` (target ``(h, w, 1)`` for ``class_id=c`` on the rows that have class c;
            ``(h, w, 4)`` on defective rows when ``class_id`` is None), or ``"masks"`` (every row with its
            ``(h, w, 4)`` masks, empty ones included: what the cascade is evaluated on).
        image_size: ``(height, width)`` the images (and masks) are resized to.
        batch_size: images per batch (the last batch may be smaller).
        class_id: 1-4 for a per-class segmentation dataset.
        shuffle: reshuffle every epoch (seeded).
        augment: augment the images (and masks with them) by ``augmentation``.
        cache: keep decoded, resized images in memory after the first epoch.
        seed: shuffle seed, and the source augmentation's.
        mask_shape: ``(height, width)`` the RLEs refer to (256x1600 for Severstal).
        drop_remainder: drop a last, smaller batch (training: keeps one batch shape, so one trace).
        augmentation: ``"ours"`` (random flips shared by image and mask, brightness and contrast) or ``"source"``
            (the source pipeline's, ``source_augmentation``).

    Returns:
        Batches of uint8 images ``(n, h, w, 3)`` (the models preprocess them) and targets: float32 labels for the
        classifiers, uint8 0/1 masks for segmentation.

    Example:
        >>> ds = make_dataset(table, "data/synthetic/train_images", "binary", image_size=(64, 320), batch_size=8)
        >>> images, targets = next(iter(ds))  # (8, 64, 320, 3), (8, 1)

    Reproduces the inputs of the paper's three training processes (Section 3).
    """
    image_size = _check_image_size(image_size)
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r}; valid: {', '.join(AUGMENTATIONS)}")
    rows = select_rows(table, task, class_id)
    if rows.empty:
        what = f"task {task!r}" + (f", class {class_id}" if class_id is not None else "")
        raise ValueError(f"no images for {what} in a table of {len(table)} rows")
    images_dir = Path(images_dir)
    paths = np.array([str(images_dir / image_id) for image_id in rows["ImageId"]])
    # object, not str: a NumPy str array is fixed-width, n x 4 x the longest RLE x 4 bytes (gigabytes for thousands
    # of images with a few long RLEs); TensorFlow's strings are as long as each is
    rles = rows[list(DEFECT_COLUMNS)].to_numpy(dtype=object)
    labels = (rles != "").astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((paths, rles, labels))

    def load(path, rle_row, label_row):
        return _load(path, rle_row, label_row, task=task, class_id=class_id, image_size=image_size,
                     mask_shape=mask_shape)

    if cache:
        dataset = dataset.map(load, num_parallel_calls=AUTOTUNE).cache()
        if shuffle:
            dataset = dataset.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    else:
        if shuffle:  # shuffle file names, not decoded images
            dataset = dataset.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.map(load, num_parallel_calls=AUTOTUNE)
    segmentation = task in ("segmentation", "masks")
    if augment and augmentation == "ours":
        dataset = dataset.map(lambda x, y: _augment(x, y, segmentation=segmentation), num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if augment and augmentation == "source":  # per batch, as the source; a seed per batch, new every epoch
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        augment_batch = source_augmentation(segmentation)
        dataset = tf.data.Dataset.zip((seeds, dataset)).map(
            lambda batch_seed, batch: augment_batch(batch_seed, *batch), num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)
