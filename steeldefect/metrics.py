"""The paper's metrics (Section 3.6) as pure functions, with Keras forms for training.

Classification (stages 1 and 2): binary cross-entropy, accuracy, precision, recall and F1. For the multi-label
stage every (image, class) pair counts as one binary decision: accuracy is the share of correct pairs (Keras'
``binary_accuracy``, which ``metrics=["acc"]`` resolves to with a BCE loss) and precision / recall / F1 are
*micro*-averaged over the pairs. Micro averaging is what the Keras-2 recipe of the paper's source computes (sums
over all elements of a batch) and it weights each defect equally, so the rare class 2 neither dominates nor
vanishes. Predictions are thresholded at 0.5.

Segmentation (stage 3): the soft Dice coefficient per image, ``(2 Σ y p + s) / (Σ y + Σ p + s)`` on unthresholded
probabilities with smoothing ``s`` (``DICE_SMOOTH`` = 1e-5, as ``sm.losses.dice_loss`` in the source), averaged over
images; ``dice_loss = 1 - dice_coef``. The paper's per-class Dice is this mean over the images that contain the
class. Its training loss, as the source trained, is segmentation-models' ``dice_loss`` (``keras_sm_dice_loss``):
one soft Dice over every pixel of the batch rather than a mean over images. ``kaggle_mean_dice`` is the competition metric on binary masks.

Tables use exact dataset-level values. The paper's numbers were most likely averages of per-batch values
(``model.evaluate`` of batch metrics); ``batch_averaged`` gives that like-for-like form.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

EPSILON = 1e-7  # Keras' clipping epsilon for cross-entropy and its F1 recipe
DICE_SMOOTH = 1e-5
THRESHOLD = 0.5


def _arrays(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, np.float64)
    y_prob = np.asarray(y_prob, np.float64)
    if y_true.shape != y_prob.shape:
        raise ValueError(f"y_true and y_prob shapes differ: {y_true.shape} vs {y_prob.shape}")
    return y_true, y_prob


def binary_crossentropy(y_true, y_prob) -> float:
    """Mean binary cross-entropy over all elements, probabilities clipped to [1e-7, 1 - 1e-7] as Keras does."""
    y_true, y_prob = _arrays(y_true, y_prob)
    p = np.clip(y_prob, EPSILON, 1 - EPSILON)
    return float(np.mean(-(y_true * np.log(p) + (1 - y_true) * np.log(1 - p))))


def _counts(y_true, y_prob, threshold: float) -> tuple[float, float, float]:
    y_true, y_prob = _arrays(y_true, y_prob)
    y_pred = y_prob >= threshold
    positive = y_true >= 0.5
    tp = float(np.sum(y_pred & positive))
    return tp, float(np.sum(y_pred & ~positive)), float(np.sum(~y_pred & positive))


def accuracy(y_true, y_prob, threshold: float = THRESHOLD) -> float:
    """Share of elements predicted right (every (image, class) pair for multi-label)."""
    y_true, y_prob = _arrays(y_true, y_prob)
    return float(np.mean((y_prob >= threshold) == (y_true >= 0.5)))


def exact_match(y_true, y_prob, threshold: float = THRESHOLD) -> float:
    """Share of images whose every label is right (subset accuracy; equals ``accuracy`` for one label)."""
    y_true, y_prob = _arrays(y_true, y_prob)
    right = (y_prob >= threshold) == (y_true >= 0.5)
    return float(np.mean(right.reshape(len(right), -1).all(axis=1)))


def precision(y_true, y_prob, threshold: float = THRESHOLD) -> float:
    """TP / (TP + FP), micro-averaged; 0 when nothing is predicted positive."""
    tp, fp, _ = _counts(y_true, y_prob, threshold)
    return tp / (tp + fp) if tp + fp else 0.0


def recall(y_true, y_prob, threshold: float = THRESHOLD) -> float:
    """TP / (TP + FN), micro-averaged; 0 when there are no positives."""
    tp, _, fn = _counts(y_true, y_prob, threshold)
    return tp / (tp + fn) if tp + fn else 0.0


def f1_score(y_true, y_prob, threshold: float = THRESHOLD) -> float:
    """Harmonic mean of precision and recall (micro); 0 when both are 0."""
    p, r = precision(y_true, y_prob, threshold), recall(y_true, y_prob, threshold)
    return 2 * p * r / (p + r) if p + r else 0.0


def keras2_batch_metrics(y_true, y_prob) -> dict[str, float]:
    """One batch as the source's Keras-2 recipe computes it: rounded predictions, epsilon 1e-7 denominators."""
    y_true, y_prob = _arrays(y_true, y_prob)
    y_pred = np.round(np.clip(y_prob, 0, 1))
    tp = np.sum(np.round(np.clip(y_true * y_pred, 0, 1)))
    p = tp / (np.sum(y_pred) + EPSILON)
    r = tp / (np.sum(np.round(np.clip(y_true, 0, 1))) + EPSILON)
    return {"precision": float(p), "recall": float(r), "f1_score": float(2 * p * r / (p + r + EPSILON))}


def classification_metrics(y_true, y_prob, threshold: float = THRESHOLD) -> dict[str, float]:
    """The paper's five classification metrics (and exact match), exact over the whole set."""
    return {
        "binary_crossentropy": binary_crossentropy(y_true, y_prob),
        "acc": accuracy(y_true, y_prob, threshold),
        "f1_score": f1_score(y_true, y_prob, threshold),
        "precision": precision(y_true, y_prob, threshold),
        "recall": recall(y_true, y_prob, threshold),
        "exact_match": exact_match(y_true, y_prob, threshold),
    }


def batch_averaged(y_true, y_prob, batch_size: int = 16) -> dict[str, float]:
    """The paper-style values: BCE, accuracy and the Keras-2 precision/recall/F1 per batch, averaged by batch
    size as ``model.evaluate`` does (the source evaluates with batch 16)."""
    y_true, y_prob = _arrays(y_true, y_prob)
    totals: dict[str, float] = {}
    for start in range(0, len(y_true), batch_size):
        t, p = y_true[start : start + batch_size], y_prob[start : start + batch_size]
        values = {"binary_crossentropy": binary_crossentropy(t, p), "acc": accuracy(t, p), **keras2_batch_metrics(t, p)}
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + value * len(t)
    return {name: total / len(y_true) for name, total in totals.items()}


def dice_per_image(y_true, y_pred, smooth: float = DICE_SMOOTH) -> np.ndarray:
    """Soft Dice of each image (and channel): arrays ``(n, h, w)`` or ``(n, h, w, c)`` → ``(n,)`` / ``(n, c)``."""
    y_true, y_pred = _arrays(y_true, y_pred)
    if y_true.ndim not in (3, 4):
        raise ValueError(f"dice expects (n, h, w) or (n, h, w, c) arrays, got shape {y_true.shape}")
    axes = (1, 2)
    intersection = np.sum(y_true * y_pred, axis=axes)
    total = np.sum(y_true, axis=axes) + np.sum(y_pred, axis=axes)
    return (2 * intersection + smooth) / (total + smooth)


def dice_coef(y_true, y_pred, smooth: float = DICE_SMOOTH) -> float:
    """Mean over images (and channels) of the soft Dice coefficient."""
    return float(np.mean(dice_per_image(y_true, y_pred, smooth)))


def dice_loss(y_true, y_pred, smooth: float = DICE_SMOOTH) -> float:
    """``1 - dice_coef``."""
    return 1.0 - dice_coef(y_true, y_pred, smooth)


def kaggle_mean_dice(pred_masks, true_masks) -> float:
    """The competition metric: mean over every (image, class) of 2|X∩Y| / (|X| + |Y|), 1 when both are empty.

    Args:
        pred_masks, true_masks: ``(n, h, w, 4)`` (or ``(h, w, 4)``) binary masks.
    """
    return float(np.mean(kaggle_dice_per_pair(pred_masks, true_masks)))


def kaggle_dice_per_pair(pred_masks, true_masks) -> np.ndarray:
    """The Dice of each (image, class) pair, ``(n, c)``, with 1 where both masks are empty."""
    pred = np.asarray(pred_masks).astype(bool)
    true = np.asarray(true_masks).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {true.shape}")
    if pred.ndim == 3:
        pred, true = pred[None], true[None]
    if pred.ndim != 4:
        raise ValueError(f"masks must be (n, h, w, c) or (h, w, c), got shape {pred.shape}")
    intersection = np.sum(pred & true, axis=(1, 2), dtype=np.int64)
    total = np.sum(pred, axis=(1, 2), dtype=np.int64) + np.sum(true, axis=(1, 2), dtype=np.int64)
    return np.where(total == 0, 1.0, 2 * intersection / np.maximum(total, 1))


# Keras forms, for training and its history.csv.

def _keras_dice_per_image(y_true, y_pred, smooth):
    y_true = tf.cast(y_true, y_pred.dtype)
    intersection = tf.reduce_sum(y_true * y_pred, axis=(1, 2))
    total = tf.reduce_sum(y_true, axis=(1, 2)) + tf.reduce_sum(y_pred, axis=(1, 2))
    return (2 * intersection + smooth) / (total + smooth)


@keras.saving.register_keras_serializable(package="steeldefect")
def keras_dice_coef(y_true, y_pred):
    """Per-image soft Dice (mean over channels), as a Keras metric named ``dice_coef``."""
    return tf.reduce_mean(_keras_dice_per_image(y_true, y_pred, DICE_SMOOTH), axis=-1)


@keras.saving.register_keras_serializable(package="steeldefect")
def keras_dice_loss(y_true, y_pred):
    """``1 - dice_coef`` per image: the paper's segmentation loss."""
    return 1.0 - keras_dice_coef(y_true, y_pred)


@keras.saving.register_keras_serializable(package="steeldefect")
def keras_bce_dice_loss(y_true, y_pred):
    """Pixel BCE plus dice loss per image: an option that trains faster from random initialisation."""
    y_true = tf.cast(y_true, y_pred.dtype)
    bce = tf.reduce_mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
    return bce + keras_dice_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="steeldefect")
def keras_sm_dice_loss(y_true, y_pred):
    """The source pipeline's loss, segmentation-models' own ``sm.losses.dice_loss``: one soft Dice per channel over
    every pixel of the batch (``per_image=False``, smooth 1e-5), averaged over the channels; a scalar per batch."""
    from .models import sm  # models sets SM_FRAMEWORK before importing segmentation_models (the one place)

    return sm.losses.dice_loss(tf.cast(y_true, y_pred.dtype), y_pred)


# "sm_dice": the source's loss (the paper profile); "dice": per-image soft Dice (every image weighs the same, whatever
# its defect's size); "bce_dice": pixel BCE plus the per-image Dice (trains faster from random initialisation).
SEGMENTATION_LOSSES: dict[str, Callable] = {"sm_dice": keras_sm_dice_loss, "dice": keras_dice_loss,
                                            "bce_dice": keras_bce_dice_loss}


def balanced_pos_weight(labels) -> np.ndarray:
    """Per class, the weight that makes its positives count as much as its negatives: ``n_negative / n_positive``.

    Args:
        labels: ``(n_images, n_classes)`` 0/1, e.g. ``data.class_labels`` of the training rows.

    Example:
        >>> balanced_pos_weight([[1, 0], [1, 1], [0, 0], [1, 0]]).tolist()
        [0.3333333432674408, 3.0]
    """
    labels = np.asarray(labels, np.float64)
    positives = labels.sum(axis=0)
    if labels.ndim != 2 or np.any(positives == 0) or np.any(positives == len(labels)):
        raise ValueError(f"balanced weights need every class both present and absent in the labels; counts of "
                         f"positives {positives.astype(int).tolist()} over {len(labels)} rows")
    return ((len(labels) - positives) / positives).astype(np.float32)


class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with each class's positive term weighted: ``-(w_c y log p + (1 - y) log(1 - p))``,
    averaged over the classes (with every ``w_c = 1``, Keras' ``BinaryCrossentropy``). For the multi-label stage,
    where a rare class's positives are outweighed by its negatives (``balanced_pos_weight``)."""

    def __init__(self, pos_weight, name: str = "weighted_binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = [float(w) for w in pos_weight]

    def call(self, y_true, y_pred):
        y_pred = tf.clip_by_value(y_pred, EPSILON, 1.0 - EPSILON)
        y_true = tf.cast(y_true, y_pred.dtype)
        weight = tf.constant(self.pos_weight, y_pred.dtype)
        terms = weight * y_true * tf.math.log(y_pred) + (1.0 - y_true) * tf.math.log(1.0 - y_pred)
        return -tf.reduce_mean(terms, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "pos_weight": self.pos_weight}


def keras_classification_metrics(num_outputs: int) -> list:
    """Epoch-level Keras metrics with the paper's names (Figures 11-12): acc, f1_score, precision, recall."""
    return [
        keras.metrics.BinaryAccuracy(name="acc", threshold=THRESHOLD),
        keras.metrics.F1Score(average="micro", threshold=THRESHOLD, name="f1_score"),
        keras.metrics.Precision(thresholds=THRESHOLD, name="precision"),
        keras.metrics.Recall(thresholds=THRESHOLD, name="recall"),
    ]
