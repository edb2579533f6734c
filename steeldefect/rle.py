"""The Kaggle run-length codec for Severstal masks.

Convention (Kaggle, Severstal): pixels are numbered from 1, top to bottom and then left to right (column-major,
Fortran order) over a ``(height, width)`` image, 256x1600 for Severstal; a mask is written as ``"start length"``
pairs separated by spaces. ``''``, ``None`` and NaN mean an empty mask.

``decode``/``encode`` are the NumPy reference. ``decode_tf`` does the same with TensorFlow ops only, so that it runs
in parallel inside ``tf.data``; it trusts its input, so strings are checked with ``validate`` where they enter
(``steeldefect.data``).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

DEFAULT_SHAPE: tuple[int, int] = (256, 1600)  # Severstal (height, width); config.IMAGE_SHAPE says the same

_DIGITS_AND_SPACES = re.compile(r"[0-9\s]*")
_DIGIT_ZERO = ord("0")
_SPACE = ord(" ")


class RLEError(ValueError):
    """A run-length string that is not a valid Kaggle encoding for the given shape."""


def _is_empty(rle: object) -> bool:
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return isinstance(rle, str) and not rle.strip()


def _parse(rle: object, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validated zero-based run starts and their lengths."""
    if _is_empty(rle):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not isinstance(rle, str):
        raise RLEError(f"an RLE must be a string, None or NaN, got {type(rle).__name__}: {rle!r}")
    if _DIGITS_AND_SPACES.fullmatch(rle) is None:
        for position, token in enumerate(rle.split(), start=1):
            if not token.isdigit():
                raise RLEError(f"token {position} ({token!r}) is not a positive integer")
    values = np.fromstring(rle, dtype=np.int64, sep=" ")  # text mode; the string is digits and spaces only
    if values.size % 2:
        raise RLEError(f"an RLE needs 'start length' pairs, got an odd number of tokens ({values.size})")
    starts, lengths = values[0::2] - 1, values[1::2]
    n_pixels = shape[0] * shape[1]
    if (bad := np.flatnonzero(starts < 0)).size:
        raise RLEError(f"run {bad[0] + 1} starts at pixel 0; starts are 1-indexed (>= 1)")
    if (bad := np.flatnonzero(lengths < 1)).size:
        raise RLEError(f"run {bad[0] + 1} has length {lengths[bad[0]]}; lengths must be >= 1")
    ends = starts + lengths
    if (bad := np.flatnonzero(ends > n_pixels)).size:
        i = bad[0]
        raise RLEError(
            f"run {i + 1} ({starts[i] + 1} {lengths[i]}) ends at pixel {ends[i]}, past the last pixel "
            f"{n_pixels} of a {shape[0]}x{shape[1]} image"
        )
    if (bad := np.flatnonzero(starts[1:] < ends[:-1])).size:
        i = bad[0] + 1
        raise RLEError(
            f"run {i + 1} (start {starts[i] + 1}) overlaps or precedes run {i} "
            f"(pixels {starts[i - 1] + 1}..{ends[i - 1]}); runs must be in increasing order without overlap"
        )
    return starts, lengths


def validate(rle: object, shape: tuple[int, int] = DEFAULT_SHAPE) -> None:
    """Raise ``RLEError`` naming the problem if ``rle`` is not a valid encoding for ``shape``."""
    _parse(rle, shape)


def area(rle: object, shape: tuple[int, int] = DEFAULT_SHAPE) -> int:
    """Number of mask pixels of a (validated) RLE, without decoding it."""
    return int(_parse(rle, shape)[1].sum())


def decode(rle: object, shape: tuple[int, int] = DEFAULT_SHAPE) -> np.ndarray:
    """Decode a Kaggle RLE into a ``(height, width)`` uint8 mask of 0/1.

    Args:
        rle: ``"start length ..."`` (1-indexed, column-major), or ``''``/``None``/NaN for an empty mask.
        shape: ``(height, width)`` of the image.

    Returns:
        A uint8 array of shape ``shape`` (a column-major view, as the encoding is).

    Raises:
        RLEError: for an odd number of tokens, a token that is not a positive integer, a start < 1, a run past
            the last pixel, or runs out of order / overlapping.

    Example:
        >>> decode("1 1 257 1", (256, 1600))[[0, 0, 1], [0, 1, 1]]
        array([1, 1, 0], dtype=uint8)
    """
    height, width = shape
    starts, lengths = _parse(rle, shape)
    flat = np.zeros(height * width, np.uint8)
    if lengths.size:
        # Index of every mask pixel: a running count plus, per run, the offset of its start.
        offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        flat[np.arange(offsets.size) + offsets] = 1
    return flat.reshape((width, height)).T


def _format_ints(values: np.ndarray) -> str:
    """``' '.join(map(str, values))`` for non-negative ints, vectorised (str() per number dominates otherwise)."""
    if values.size == 0:
        return ""
    n_digits = int(np.log10(max(int(values.max()), 1))) + 1
    powers = 10 ** np.arange(n_digits - 1, -1, -1, dtype=np.int64)
    digits = (values[:, None] // powers) % 10
    keep = (values[:, None] >= powers) | (powers == 1)  # drop leading zeros, keep a lone "0"
    chars = np.empty((values.size, n_digits + 1), np.uint8)
    chars[:, :n_digits] = digits + _DIGIT_ZERO
    chars[:, n_digits] = _SPACE
    keep_all = np.ones_like(chars, bool)
    keep_all[:, :n_digits] = keep
    return chars[keep_all][:-1].tobytes().decode("ascii")


def encode(mask: np.ndarray) -> str:
    """Encode a ``(height, width)`` mask (bool or integers, nonzero = defect) as a Kaggle RLE.

    The inverse of ``decode``: an empty mask gives ``''``.

    Example:
        >>> m = np.zeros((256, 1600), np.uint8); m[0, 0] = m[0, 1] = 1
        >>> encode(m)
        '1 1 257 1'
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RLEError(f"encode takes one (height, width) mask, got shape {mask.shape}")
    columns = np.flatnonzero(mask.any(axis=0))
    if columns.size == 0:
        return ""
    first, last = int(columns[0]), int(columns[-1]) + 1
    # Only the columns that hold mask pixels are flattened (column-major); padding with 0 at both ends makes
    # every run start and end at a change.
    height = mask.shape[0]
    flat = np.zeros((last - first) * height + 2, np.int8)
    flat[1:-1] = np.ravel(mask[:, first:last] != 0, order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    runs = changes.astype(np.int64)
    runs[1::2] -= runs[0::2]
    runs[0::2] += first * height + 1
    return _format_ints(runs)


def decode_tf(rle: tf.Tensor | str, shape: tuple[int, int] = DEFAULT_SHAPE) -> tf.Tensor:
    """``decode`` in pure TensorFlow ops (no ``py_function``): a scalar string → ``(height, width)`` uint8.

    The string must be valid (``validate``); an empty string gives an empty mask.
    """
    import tensorflow as tf  # here, not at the top: the NumPy codec (data, report) needs no TensorFlow

    return decode_tf_channels(tf.reshape(tf.convert_to_tensor(rle, tf.string), [1]), shape)[:, :, 0]


def decode_tf_channels(rles: tf.Tensor, shape: tuple[int, int] = DEFAULT_SHAPE) -> tf.Tensor:
    """Several RLEs at once, one per channel: a ``(k,)`` string tensor (``k`` known) → ``(height, width, k)``.

    Each mask pixel's column-major index is mapped straight to its row-major position in the channel-last
    result, so one scatter builds all channels and no transpose is needed.
    """
    import tensorflow as tf

    height, width = shape
    rles = tf.convert_to_tensor(rles, tf.string)
    n_channels = rles.shape[0]
    if n_channels is None:
        raise ValueError("decode_tf_channels needs a statically known number of RLEs")
    # All channels in one pass, with few ops (per-op cost dominates inside tf.data) and int32 arithmetic per
    # pixel (int64 division and ragged row ids were 25x slower on large masks). Every channel holds whole
    # "start length" pairs, so the flattened tokens pair up across channels; a run's start is offset by its
    # channel so that one range covers all channels.
    n_pixels = height * width
    tokens = tf.strings.split(tf.strings.strip(rles))
    values = tf.strings.to_number(tokens.flat_values, out_type=tf.int32)
    channel_of_run = tf.cast(tokens.value_rowids()[0::2], tf.int32)
    starts = values[0::2] - 1 + channel_of_run * n_pixels
    index = tf.ragged.range(starts, starts + values[1::2]).flat_values
    channel = index // n_pixels
    index -= channel * n_pixels
    column = index // height
    row = index - column * height
    pixels = (row * width + column) * n_channels + channel
    flat = tf.scatter_nd(
        pixels[:, None], tf.ones_like(pixels, tf.uint8), tf.constant([n_pixels * n_channels], tf.int32)
    )
    return tf.reshape(flat, (height, width, n_channels))
