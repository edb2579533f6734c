"""Constants of the Severstal data and the paper, and the settings dataclasses shared by every stage."""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_SHAPE: tuple[int, int] = (256, 1600)  # (height, width) of every Severstal image
CLASS_IDS: tuple[int, ...] = (1, 2, 3, 4)
NUM_CLASSES = len(CLASS_IDS)
DEFECT_COLUMNS: tuple[str, ...] = tuple(f"Defect_{c}" for c in CLASS_IDS)
BACKBONES: tuple[str, ...] = tuple(f"efficientnetb{i}" for i in range(5))
SPLITS: tuple[str, ...] = ("train", "val", "test")

# The source pipeline stratifies on the first class present in this order (rarest first), 0 for none.
STRATIFY_PRIORITY: tuple[int, ...] = (2, 4, 1, 3)
TEST_SIZE = 0.10  # share of all images held out for test (paper, Section 4)
VAL_SIZE = 0.20  # share of the remaining images used for validation
SPLIT_SEED = 42  # random_state of the source pipeline

AREA_PERCENTILES: tuple[float, float] = (2.0, 98.0)  # paper, Section 3.5

STAGES: tuple[str, ...] = ("binary", "multilabel", "segmentation")
SEGMENTATION_TASKS: tuple[str, ...] = tuple(f"class{c}" for c in CLASS_IDS)


@dataclass(frozen=True)
class SplitConfig:
    """How images are divided into train / validation / test (paper, Section 4)."""

    test_size: float = TEST_SIZE
    val_size: float = VAL_SIZE
    seed: int = SPLIT_SEED


# Rows of the paper's Tables 2-7: (task, metric). Tasks are the run-directory names of the stages.
CLASSIFICATION_METRICS: tuple[str, ...] = ("binary_crossentropy", "acc", "f1_score", "precision", "recall")
SEGMENTATION_METRICS: tuple[str, ...] = ("dice_loss", "dice_coef")
LOWER_IS_BETTER: frozenset[str] = frozenset({"binary_crossentropy", "dice_loss"})
TABLE_ROWS: tuple[tuple[str, str], ...] = (
    tuple(("binary", m) for m in CLASSIFICATION_METRICS)
    + tuple(("multilabel", m) for m in CLASSIFICATION_METRICS)
    + tuple((task, m) for task in SEGMENTATION_TASKS for m in SEGMENTATION_METRICS)
)
