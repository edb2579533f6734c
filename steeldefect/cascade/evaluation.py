"""How good a cascade is: on a split of a run's table, on a Kaggle-layout folder, and on validation (the outputs
the threshold search and ``Cascade.validation`` are made from). Computed at the models' image size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from .. import data, loaders, metrics, thresholds
from ..config import CLASS_IDS
from .core import Cascade


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
    data_dir = Path(data_dir)
    table, _ = data.load_usable(data_dir)
    result = evaluate_cascade(cascade, table, data_dir / "train_images", batch_size=batch_size)
    return {**result, "split": "all", "data_dir": str(data_dir.resolve())}


def _evaluation_dataset(cascade: Cascade, rows: pd.DataFrame, images_dir, batch_size: int):
    """Images at ``cascade.input_size`` and their true masks at the UNets' size, the size evaluation is done at."""
    dataset = loaders.make_dataset(rows, images_dir, "masks", image_size=cascade.input_size, batch_size=batch_size)
    if cascade.input_size == cascade.image_size:
        return dataset
    return dataset.map(lambda x, y: (x, tf.image.resize(y, cascade.image_size, method="nearest")))


def validation_summary(cascade: Cascade, table: pd.DataFrame, images_dir: str | Path, split: str = "val",
                       batch_size: int = 16) -> thresholds.ValidationSummary:
    """One split through the cascade's stages (every model on every image), streamed into a
    ``thresholds.ValidationSummary``: what the threshold search and ``validation_dice`` need, without the masks
    (its memory does not grow with the masks' size, and by under 400 bytes an image)."""
    rule = cascade.rule(searched=False)
    own = np.broadcast_to(np.asarray(rule["pixel_thresholds"], np.float64), (len(CLASS_IDS),))
    summary = thresholds.ValidationSummary((*thresholds.PIXEL_CANDIDATES, *own))
    rows = table[table["split"] == split]
    for images, truth in _evaluation_dataset(cascade, rows, images_dir, batch_size):
        defect, class_probs, mask_probs, _ = cascade.probabilities(images.numpy(), gating="none")
        summary.add(defect, class_probs, mask_probs, truth.numpy())
    return summary


def validation_dice(cascade: Cascade, summary: thresholds.ValidationSummary) -> dict:
    """Kaggle mean Dice on the summarised (validation) images of the paper's rule, of the searched thresholds (when
    the cascade has them) and of predicting every mask empty (the reference a cascade must beat):
    ``Cascade.validation``."""
    found = {}
    for name, searched in (("paper_rule", False), ("searched", True)):
        rule = cascade.rule(searched=searched)
        found[name] = float(summary.dice(
            pixel_thresholds=rule["pixel_thresholds"], limits=rule["limits"], label_thresholds=rule["label_thresholds"],
            binary_threshold=rule["binary_threshold"], gating=cascade.gating, area_filter=cascade.area_filter).mean())
    found["all_empty"] = float(summary.empty_dice().mean())
    return found
