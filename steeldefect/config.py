"""Constants of the Severstal data and the paper, and the settings dataclasses shared by every stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass

IMAGE_SHAPE: tuple[int, int] = (256, 1600)  # (height, width) of every Severstal image
CLASS_IDS: tuple[int, ...] = (1, 2, 3, 4)
CLASS_COLOURS: dict[int, tuple[int, int, int]] = {1: (230, 25, 75), 2: (60, 180, 75), 3: (0, 130, 200),
                                                  4: (255, 225, 25)}  # RGB per class, in every picture of masks
DEFECT_COLUMNS: tuple[str, ...] = tuple(f"Defect_{c}" for c in CLASS_IDS)
BACKBONES: tuple[str, ...] = tuple(f"efficientnetb{i}" for i in range(5))
SPLITS: tuple[str, ...] = ("train", "val", "test")

# The source pipeline stratifies on the first class present in this order (rarest first), 0 for none.
STRATIFY_PRIORITY: tuple[int, ...] = (2, 4, 1, 3)
TEST_SIZE = 0.10  # share of all images held out for test (paper, Section 4)
VAL_SIZE = 0.20  # share of the remaining images used for validation
SPLIT_SEED = 42  # random_state of the source pipeline

# encoder_weights value: the binary stage starts from random weights and every later stage of the same backbone from
# the encoder the binary stage learned - transfer learning as with ImageNet weights, from the one pretrained encoder
# there is when ImageNet's cannot be had (training.stage1_encoder).
STAGE1_ENCODER = "stage1"


def starts_from_scratch(encoder_weights: str | None) -> bool:
    """Whether stage 1 trains from random weights: ``encoder_weights`` None or STAGE1_ENCODER. Such runs need
    BatchNormalization momentum 0.9 instead of EfficientNet's 0.99 (DESIGN.md, "Known facts")."""
    return encoder_weights is None or encoder_weights == STAGE1_ENCODER

# Per-image training step cost of each backbone B0..B4 in milliseconds, measured at 64x320, batch 8, weights=None, on
# the 2-core development CPU (DESIGN.md, "Known facts"). Only the ratios matter: they scale a run's measured stage
# times into its estimate of the time left (the ETA of python -m steeldefect.experiments).
STEP_COST_MS: dict[str, tuple[float, ...]] = {"classifier": (19, 29, 33, 55, 67), "unet": (61, 68, 71, 84, 120)}

AREA_PERCENTILES: tuple[float, float] = (2.0, 98.0)  # paper, Section 3.5

CLASSIFICATION_STAGES: tuple[str, ...] = ("binary", "multilabel")  # the stages that train a classifier
# --freeze-encoder: which stages train with the encoder they start from frozen (TrainConfig.freeze_encoder)
FREEZE_CHOICES: dict[str, tuple[str, ...]] = {"none": (), "multilabel": ("multilabel",),
                                              "all": ("multilabel", "segmentation")}
# TrainConfig.multilabel_pos_weight: None (the paper's plain BCE), "balanced" or "rare" (training.stage_pos_weight)
MULTILABEL_POS_WEIGHTS: tuple[str | None, ...] = (None, "balanced", "rare")
SEGMENTATION_TASKS: tuple[str, ...] = tuple(f"class{c}" for c in CLASS_IDS)  # one UNet per class (the paper's)
JOINT_STAGE = "joint"  # or one 4-channel UNet for every class (runfiles: stage names <-> class ids)
UNET_MULTIPLE = 32  # a UNet halves its input five times: height and width must be multiples of 32


def check_image_size(image_size, what: str = "a UNet") -> tuple[int, int]:
    """``(height, width)`` as ints when both are positive multiples of 32, else ``ValueError`` saying so."""
    height, width = (int(v) for v in image_size)
    if height < UNET_MULTIPLE or width < UNET_MULTIPLE or height % UNET_MULTIPLE or width % UNET_MULTIPLE:
        raise ValueError(
            f"{what} needs image_size (height, width) in multiples of {UNET_MULTIPLE}, got {height}x{width}; "
            f"e.g. 256x1600, 128x800 or 64x320 (64x400 fails: 400 is not a multiple of {UNET_MULTIPLE})"
        )
    return height, width


# Rows of the paper's Tables 2-7: (task, metric). Tasks are the run-directory names of the stages.
CLASSIFICATION_METRICS: tuple[str, ...] = ("binary_crossentropy", "acc", "f1_score", "precision", "recall")
SEGMENTATION_METRICS: tuple[str, ...] = ("dice_loss", "dice_coef")
LOWER_IS_BETTER: frozenset[str] = frozenset({"binary_crossentropy", "dice_loss"})
TABLE_ROWS: tuple[tuple[str, str], ...] = (
    tuple(("binary", m) for m in CLASSIFICATION_METRICS)
    + tuple(("multilabel", m) for m in CLASSIFICATION_METRICS)
    + tuple((task, m) for task in SEGMENTATION_TASKS for m in SEGMENTATION_METRICS)
)


@dataclass(frozen=True)
class TrainConfig:
    """How one stage of one backbone is trained; written beside the results as part of ``config.json``.

    The paper gives no training hyperparameters; everything here not taken from its source pipeline
    (``shared/paper/source-pipeline.md``) is our choice and is documented as such.
    """

    image_size: tuple[int, int] = (64, 320)  # (height, width); UNets need multiples of 32
    batch_size: int = 8  # source pipeline: 8 for the classifiers, 4 for the UNets
    epochs: int = 10
    learning_rate: float = 1e-3  # Adam (our choice; the paper is silent)
    # "imagenet", None (random init), a path to a weights file, or "stage1": stages after the binary one start from
    # the encoder of the same backbone's trained binary classifier (STAGE1_ENCODER)
    encoder_weights: str | None = None
    # From random init, EfficientNet's default BN momentum (0.99) leaves inference at chance after short runs
    # (DESIGN.md, "Known facts"); 0.9 lets the moving statistics keep up. None keeps the encoder's default.
    bn_momentum: float | None = 0.9
    # Before each validation and at the end, BN moving statistics are re-estimated on this many training
    # batches (precise BN): without it, inference after short runs from scratch sits at chance. 0 turns it off.
    bn_recalibration_batches: int = 25
    head: str = "paper"  # classifier head: "paper" (source pipeline's 1024-512-64) or "simple"
    # "sm_dice" (the source's: segmentation-models' dice_loss over the whole batch), "dice" (per-image soft Dice) or
    # "bce_dice" (pixel BCE + per-image Dice); metrics.SEGMENTATION_LOSSES
    segmentation_loss: str = "dice"
    # Multi-label stage: None, the paper's binary cross-entropy, or "balanced": each class's positives weighted by its
    # negatives / positives among the stage's training images (metrics.WeightedBinaryCrossentropy), or "rare": the
    # same but at least 1 (training.stage_pos_weight).
    multilabel_pos_weight: str | None = None
    augment: bool = True
    # "ours": random flips of image and mask, brightness and contrast of the image; "source": the source pipeline's
    # (loaders.source_augmentation; loaders.AUGMENTATIONS)
    augmentation: str = "ours"
    cache: bool = True  # keep decoded, resized images in memory between epochs (when they fit: cache_max_share)
    # The cache is kept only when it fits in this share of the memory available as the stage starts (sized before it
    # is filled: training.cache_fits); None keeps it whatever its size (--cache on).
    cache_max_share: float | None = 0.5
    # A dry run (--max-steps-per-epoch): at most this many training and validation batches per epoch, so that
    # everything else (evaluation of every split, the threshold search, the cascade, the report) can be timed on all
    # the images of a full-size folder. None: every batch.
    max_steps_per_epoch: int | None = None
    early_stopping_patience: int = 5  # epochs without val_loss improvement before stopping
    reduce_lr_patience: int = 2  # epochs without improvement before the learning rate is halved
    seed: int = 0
    strategy: str = "default"  # "default", "mirrored" or "multiworker" (tf.distribute)
    mixed_precision: str | None = None  # None, "mixed_float16" or "mixed_bfloat16"
    tensorboard: bool = False
    eval_batch_size: int = 16  # the source pipeline evaluates with batch 16
    # Keras' eager steps and an eager forward pass for evaluation: no tracing (17-22 s per B0 model on this CPU), but
    # training steps 4-5x slower; it pays below ~7-9 steps per model (benchmarks/bench_stage_cost.py): tiny runs.
    run_eagerly: bool = False
    # A stage after the binary one (which starts from stage 1's or ImageNet's encoder) trains with that encoder
    # frozen: the classifier's head or the UNet's decoder only. No backward pass through the encoder; its
    # BatchNormalization keeps the statistics it starts with (models.freeze_encoder). Ignored for the binary stage.
    freeze_encoder: bool = False

    def to_json(self) -> dict:
        """The settings as JSON-ready data (tuples as lists), as ``config.json`` records them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# Flip test-time augmentation as the command lines name it (--tta): "none" is off, None in Python.
TTA_CHOICES = ("none", "hflip", "hvflip")


def tta_from_choice(choice: str) -> str | None:
    """A ``--tta`` choice as ``Cascade`` takes it: ``"none"`` is None (off)."""
    if choice not in TTA_CHOICES:
        raise ValueError(f"--tta must be one of {', '.join(TTA_CHOICES)}, got {choice!r}")
    return None if choice == "none" else choice


@dataclass(frozen=True)
class Profile:
    """A scale of the whole experiment: ``smoke`` (CI), ``default`` (what the command runs with no option: every
    stage of five backbones on the twin in about half an hour on 2 cores), ``quick`` (the same, 10x the training) or
    ``paper``."""

    name: str
    description: str
    twin_images: int  # size of the synthetic twin used when no data folder is given
    image_size: tuple[int, int]  # the UNets' input (and the classifiers' unless classifier_image_size is given)
    classifier_epochs: int
    segmentation_epochs: int
    batch_size: int  # the classifiers' (and the UNets' unless segmentation_batch_size is given)
    segmentation: str  # "joint" (one 4-channel UNet per backbone) or "per_class" (four UNets, as the source)
    encoder_weights: str | None
    learning_rate: float = 1e-3
    segmentation_loss: str = "dice"
    head: str = "paper"  # classifier head (TrainConfig.head)
    backbones: tuple[str, ...] = BACKBONES
    classifier_image_size: tuple[int, int] | None = None  # None: image_size (the cascade then resizes once)
    segmentation_batch_size: int | None = None  # None: batch_size
    augmentation: str = "ours"  # TrainConfig.augmentation
    run_eagerly: bool = False  # TrainConfig.run_eagerly
    freeze_encoder: tuple[str, ...] = ()  # the stages that train with a frozen encoder: "multilabel", "segmentation"
    # Wall minutes of the whole run (five backbones, twin written) measured on the 2-core development CPU, for the
    # run's first line; None: not measured (an estimate is given in minutes_note).
    measured_minutes: float | None = None
    minutes_note: str = ""

    def stages(self) -> tuple[str, ...]:
        segmentation = (JOINT_STAGE,) if self.segmentation == JOINT_STAGE else SEGMENTATION_TASKS
        return (*CLASSIFICATION_STAGES, *segmentation)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke", "CI scale: a tiny twin, one epoch, all five backbones (checks the pipeline, not the numbers)",
        # 32x160 and eager steps: a stage trains a step or two here, far below the ~7-9 steps where tracing pays
        # (benchmarks/bench_stage_cost.py); B0 and B4 together took 7 min 14 s at 64x320 traced, 3 min 22 s so.
        # Batch 64: the 35 training images are one step (an eager step costs about the same for 8 images as for
        # 35 at this size). Stage 2 on stage 1's frozen encoder, as the default profile trains it.
        twin_images=48, image_size=(32, 160), classifier_epochs=1, segmentation_epochs=1, batch_size=64,
        segmentation="joint", encoder_weights=STAGE1_ENCODER, head="simple", run_eagerly=True,
        freeze_encoder=("multilabel",), measured_minutes=4.9,
    ),
    "default": Profile(
        "default", "what `python -m steeldefect.experiments` runs: every stage of five backbones on a 400-image twin "
        "in about half an hour on a 2-core CPU (the pipeline and its tables, not a good detector: see quick)",
        # Chosen for the wall time (<= 30 min for five backbones on 2 cores; measured 27 min 33 s, and 29 min 51 s on a
        # fresh clone in a new venv, the twin written by the run: this machine's speed varies): 2 epochs per
        # stage; stage 2 trains a head on stage 1's frozen encoder (2.5x faster at the same figures for B0; a frozen
        # UNet encoder cost class 3 Dice, so stage 3 trains whole). At this budget stage 1 stays at chance on twins
        # v3 and v4 (19 min 7 s on v4, best binary test accuracy 0.525) and the paper's rule scores below all-empty;
        # on v6 (18 min 43 s) 0.575 and the cascade at all-empty (0.625 and 0.012 above it before v6's class-3
        # contrast was lowered): docs/results.md, "The default run".
        twin_images=400, image_size=(64, 320), classifier_epochs=2, segmentation_epochs=2, batch_size=16,
        segmentation="joint", encoder_weights=STAGE1_ENCODER, segmentation_loss="bce_dice", head="simple",
        freeze_encoder=("multilabel",), measured_minutes=29.9,
    ),
    "quick": Profile(
        "quick", "the longer run on the synthetic twin: small images, one joint UNet per backbone, stages 2-3 from stage 1's encoder",
        # From random init the paper's 1024-512-64 head did not learn the twin in 4 epochs (train acc 0.57);
        # the simple head reached validation accuracy 0.875 in 3. 12 epochs, not 6: B0's binary test accuracy
        # 0.975 instead of 0.925 (the target is 0.95). Stages 2 and 3 start from stage 1's encoder ("stage1"): from
        # random weights the multi-label classifier never left the class prior (458 defective training images);
        # measured, see README "Measured".
        twin_images=1200, image_size=(64, 320), classifier_epochs=12, segmentation_epochs=12, batch_size=16,
        segmentation="joint", encoder_weights=STAGE1_ENCODER, segmentation_loss="bce_dice", head="simple",
        minutes_note="about 7 h, estimated from B0's 59 min",
    ),
    "paper": Profile(
        "paper", "the paper's protocol on the Kaggle data, as its source pipeline ran it: ImageNet weights, "
        "classifiers at 256x512 (batch 8), four per-class UNets at 256x800 (batch 4), its loss and augmentation; for a GPU",
        # Every setting and where it comes from: docs/design.md, "The paper profile, setting by setting".
        twin_images=0, image_size=(256, 800), classifier_epochs=20, segmentation_epochs=20, batch_size=8,
        segmentation="per_class", encoder_weights="imagenet", learning_rate=3e-4, segmentation_loss="sm_dice",
        classifier_image_size=(256, 512), segmentation_batch_size=4, augmentation="source",
        minutes_note="GPU work, days on a 2-core CPU",
    ),
}
