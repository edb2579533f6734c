"""Train and evaluate one stage of one backbone into a run directory (DESIGN.md, "A run directory ...").

Stages: ``binary`` (all training images), ``multilabel`` (defective images), ``class1`` … ``class4`` (one UNet
per class on the images containing it, as the paper's source pipeline does) and ``joint`` (one 4-channel UNet).
A stage lives in ``run_dir/<backbone>/<stage>/`` (segmentation stages under ``segmentation/``) and holds
``model.json`` + ``model.weights.h5`` (the best epoch on validation loss), ``history.csv`` (every metric per epoch,
train and validation), ``metrics.json`` (the paper's metrics on train, validation and test) and ``timing.json``
(the wall time spent on it, summed over interrupted and resumed attempts). A stage whose
``metrics.json`` exists is done and is skipped; an interrupted one resumes from its last completed epoch
(``keras.callbacks.BackupAndRestore``).

Determinism: one seed sets Python, NumPy and TensorFlow (``keras.utils.set_random_seed``). On CPU, tf.data's
parallel map keeps element order, so runs repeat closely but not bit for bit: multi-threaded reductions in the
convolution kernels can change the last bits, and those differences grow over epochs. Call
``tf.config.experimental.enable_op_determinism()`` for bit-identical runs (slower).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from . import data, distribute, loaders, meter, metrics, models, runfiles
from .config import (
    CLASS_IDS,
    CLASSIFICATION_STAGES,
    MULTILABEL_POS_WEIGHTS,
    SPLITS,
    STAGE1_ENCODER,
    TrainConfig,
)

log = logging.getLogger(__name__)

PRECISIONS = (None, "mixed_float16", "mixed_bfloat16")
LOSS_FILE = "loss.json"  # a weighted multi-label loss: {"loss", "pos_weight": per class}; absent for the paper's
BEST_WEIGHTS = "best.weights.h5"
BACKUP_DIR = "backup"
BACKUP_METADATA = "training_metadata.json"  # what BackupAndRestore writes after each epoch (Keras 3)
BACKUP_WEIGHTS = "latest.weights.h5"  # and the weights it restores from
NOT_TRAINABLE = "not_trainable"  # metrics.json key of a stage without training images: why
ENCODER_FILE = "encoder.weights.h5"  # stage 1's encoder, exported beside it for encoder_weights=STAGE1_ENCODER


def stage_task(stage: str) -> tuple[str, int | None]:
    """``(loader task, class_id)`` of a stage (class_id None: every class, the joint UNet's)."""
    if runfiles.check_stage(stage) in CLASSIFICATION_STAGES:
        return stage, None
    return "segmentation", runfiles.segmentation_key(stage) or None


def stage_counts(table: pd.DataFrame, stage: str) -> dict[str, int]:
    """Images a stage has in each split: all (binary), defective (multilabel, joint) or with its class."""
    task, class_id = stage_task(stage)
    return {split: len(loaders.select_rows(table[table["split"] == split], task, class_id)) for split in SPLITS}


def record_not_trainable(run_dir: str | Path, backbone: str, stage: str, reason: str) -> dict:
    """Mark a stage that has no training image as done without a model: its ``metrics.json`` says why, its
    Table cells stay blank and the cascade leaves it out (it never predicts that stage's classes)."""
    directory = runfiles.stage_dir(run_dir, backbone, stage)
    directory.mkdir(parents=True, exist_ok=True)
    result = {"stage": stage, NOT_TRAINABLE: reason, **dict.fromkeys(SPLITS)}
    _write_json(directory / runfiles.METRICS_FILE, result)
    return result


def is_trained(run_dir: str | Path, backbone: str, stage: str) -> bool:
    """Whether a stage has a trained model (done, and not recorded as not trainable)."""
    return (runfiles.stage_dir(run_dir, backbone, stage) / models.SPEC_FILE).is_file()


def stage_timing(run_dir: str | Path, backbone: str, stage: str) -> dict | None:
    """A stage's ``timing.json`` (``StageClock``: seconds and peak memory over its attempts); None when not recorded
    (a stage trained by a version of this package that did not time stages)."""
    return runfiles.read_optional_json(runfiles.stage_dir(run_dir, backbone, stage) / runfiles.TIMING_FILE)


def stage_seconds(run_dir: str | Path, backbone: str, stage: str) -> float | None:
    """Wall time spent training and evaluating a stage, summed over its attempts; None when not recorded."""
    found = stage_timing(run_dir, backbone, stage)
    return None if found is None else float(found["seconds"])


class StageClock:
    """A stage's wall time over its attempts and its peak memory, kept in ``directory/timing.json`` ({"seconds",
    "attempts", "peak_rss_gib"}: the process's resident memory at its highest while the stage trained and was
    evaluated, over its attempts).

    As a context manager around one attempt it writes the file when the attempt starts, after every epoch
    (``callback()``, the stage's first Keras callback) and when the attempt ends, also by an exception (Ctrl-C,
    kill): a hard kill (SIGKILL, the OOM killer, a reboot) loses at most the epoch under way, as the training
    itself does.
    """

    def __init__(self, directory: Path):
        self.path = directory / runfiles.TIMING_FILE
        before = runfiles.read_optional_json(self.path) or {"seconds": 0.0, "attempts": 0}
        self.before = float(before["seconds"])
        self.attempt = int(before["attempts"]) + 1
        self.peak_before = before.get("peak_rss_gib")  # the largest of the earlier attempts
        self.start = time.perf_counter()

    def write(self) -> None:
        peak = meter.peak_rss_bytes()
        peaks = [p for p in (self.peak_before, None if peak is None else peak / meter.GIB) if p is not None]
        _write_json(self.path, {"seconds": self.before + time.perf_counter() - self.start, "attempts": self.attempt,
                                "peak_rss_gib": max(peaks) if peaks else None})

    def callback(self) -> keras.callbacks.Callback:
        return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: self.write())

    def __enter__(self) -> StageClock:
        meter.reset_peak()  # the stage's own peak memory, not the largest of the stages before it
        self.write()
        return self

    def __exit__(self, *exc_info) -> None:
        self.write()


def get_strategy(name: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for ``name``, made once per process (``distribute.start``; a multi-worker one
    only before TensorFlow's first operation, as ``python -m steeldefect.experiments`` makes it)."""
    return distribute.start(name)


# What a worker that is not the chief copies from the chief's stage folder before it trains the stage: the state
# that decides what its training does (resume after which epoch, from which weights, the best value so far), so
# that both run the same steps. Nothing else of the chief's is read, nothing of the chief's written.
_WORKER_COPIES = (models.SPEC_FILE, models.WEIGHTS_FILE, runfiles.HISTORY_FILE, BEST_WEIGHTS, BACKUP_DIR)


def mirror_chief_stage(run_dir: str | Path, scratch: str | Path, backbone: str, stage: str) -> None:
    """Make a non-chief worker's copy of a stage (in its ``scratch`` run folder) start where the chief's does.

    Its own files of the stage are replaced by the chief's training state (model, backup, history, best weights),
    and the chief's finished binary stage is copied where the worker lacks it (a later stage starts from its
    encoder). Safe while the chief runs: the chief changes these files only at the end of an epoch of this stage,
    which cannot come before this worker has joined its training.
    """
    source, target = runfiles.stage_dir(run_dir, backbone, stage), runfiles.stage_dir(scratch, backbone, stage)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in _WORKER_COPIES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name)
        elif (source / name).is_file():
            shutil.copy2(source / name, target / name)
    if stage != "binary" and not is_trained(scratch, backbone, "binary") \
            and runfiles.is_done(run_dir, backbone, "binary"):
        binary, copy = runfiles.stage_dir(run_dir, backbone, "binary"), runfiles.stage_dir(scratch, backbone, "binary")
        copy.mkdir(parents=True, exist_ok=True)
        for name in (models.SPEC_FILE, models.WEIGHTS_FILE):
            shutil.copy2(binary / name, copy / name)


@contextlib.contextmanager
def precision_policy(name: str | None) -> Iterator[None]:
    """Set Keras' global dtype policy for the block (models built inside it keep it)."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown mixed precision {name!r}; valid: {', '.join(map(str, PRECISIONS))}")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name or "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_stage_model(backbone: str, stage: str, config: TrainConfig, *, pos_weight=None) -> keras.Model:
    """The compiled model of a stage: classifier (1 or 4 outputs) or UNet (1 or 4 channels), Adam.

    ``encoder_weights="stage1"`` means random weights for the binary stage; for a later stage resolve it first
    (``initial_encoder_weights``, as ``train_stage`` does). ``pos_weight`` (the multi-label stage only; from
    ``stage_pos_weight``) weights each class's positives in the binary cross-entropy."""
    task, class_id = stage_task(stage)
    if pos_weight is not None and task != "multilabel":
        raise ValueError(f"pos_weight is for the multilabel stage, not {stage!r}")
    config = _binary_from_scratch(stage, config)
    if task == "segmentation":
        channels = 1 if class_id is not None else len(CLASS_IDS)
        model = models.build_unet(backbone, channels, config.image_size, config.encoder_weights,
                                  bn_momentum=config.bn_momentum)
        loss = metrics.SEGMENTATION_LOSSES[config.segmentation_loss]
        model_metrics = [keras.metrics.MeanMetricWrapper(metrics.keras_dice_coef, name="dice_coef")]
    else:
        outputs = 1 if task == "binary" else len(CLASS_IDS)
        model = models.build_classifier(backbone, outputs, config.image_size, config.encoder_weights,
                                        head=config.head, bn_momentum=config.bn_momentum)
        loss = keras.losses.BinaryCrossentropy(name="binary_crossentropy") if pos_weight is None \
            else metrics.WeightedBinaryCrossentropy(pos_weight)
        model_metrics = metrics.keras_classification_metrics(outputs)
    if config.freeze_encoder and task != "binary":
        models.freeze_encoder(model)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss, metrics=model_metrics,
                  jit_compile=False, run_eagerly=config.run_eagerly)  # XLA on CPU: 3x slower to compile and to run (measured)
    # Create the optimizer's slots now: created inside fit's first trace they cost ~10 s (one variable at a time
    # in a graph) and make tf.function trace the train step twice.
    model.optimizer.build(model.trainable_variables)
    return model


def prebuild(model: keras.Model, batch) -> bool:
    """Build the compiled loss and metrics on one batch before ``fit`` (another ~8 s off the first epoch on this
    CPU). It uses ``Model._symbolic_build``, a Keras internal: where a release renames or changes it, ``fit`` builds
    them itself, slower, and this returns False instead of failing."""
    build = getattr(model, "_symbolic_build", None)
    if build is None:
        log.info("Model._symbolic_build is gone in Keras %s: fit builds the metrics itself", keras.__version__)
        return False
    try:
        build(data_batch=batch)
    except TypeError as err:  # a changed signature
        log.info("Model._symbolic_build(data_batch=...) failed (%s): fit builds the metrics itself", err)
        return False
    return True


def skip_distributed_rebuild(model: keras.Model) -> None:
    """After ``prebuild``, keep ``fit`` from building ``model``'s loss and metrics a second time under a
    tf.distribute strategy.

    There, Keras 3.15's ``fit`` builds them again from its first distributed batch, which it first averages across
    the replicas with ``strategy.reduce``: that fails under MultiWorkerMirroredStrategy (a tuple of PerReplica
    uint8 images is not reducible). Without a strategy that step does nothing, so this is applied only under one.
    """
    if hasattr(model, "_maybe_symbolic_build"):
        model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def reducible_logs(model: keras.Model) -> None:
    """Make ``model``'s train and test steps return each log as a one-element batch, for MultiWorkerMirroredStrategy.

    Under that strategy, Keras 3.15's ``fit`` averages every step's logs across the workers with
    ``strategy.reduce("MEAN", value, axis=0)``, which fails on the scalar loss and metrics each step returns
    ("Invalid reduction dimension 0 for input with 0 dimensions", tensorflow/tensorflow#72388). With a leading axis
    of one, that average over the workers' values is the log itself, as with one worker.
    """
    for name in ("train_step", "test_step"):
        step = getattr(model, name)

        def batched(data, step=step):
            return {key: tf.expand_dims(value, 0) for key, value in step(data).items()}

        setattr(model, name, batched)


def stage1_encoder(run_dir: str | Path, backbone: str) -> Path:
    """The encoder weights of ``backbone``'s trained binary classifier in ``run_dir`` (exported on first use)."""
    directory = runfiles.stage_dir(run_dir, backbone, "binary")
    path = directory / ENCODER_FILE
    if not path.is_file():
        if not (directory / models.SPEC_FILE).is_file():
            raise FileNotFoundError(
                f"{directory / models.SPEC_FILE} is missing: with encoder_weights={STAGE1_ENCODER!r} the later stages "
                f"of {backbone} start from its trained binary classifier's encoder; train the binary stage first")
        models.save_encoder_weights(models.load_model(directory), path)
    return path


def initial_encoder_weights(run_dir: str | Path, backbone: str, stage: str, config: TrainConfig) -> TrainConfig:
    """``config`` with ``encoder_weights="stage1"`` resolved for ``stage``: None (random) for the binary stage, the
    binary stage's encoder file for the others; other values unchanged."""
    config = _binary_from_scratch(stage, config)
    if config.encoder_weights != STAGE1_ENCODER:
        return config
    return dataclasses.replace(config, encoder_weights=str(stage1_encoder(run_dir, backbone)))


def _binary_from_scratch(stage: str, config: TrainConfig) -> TrainConfig:
    """``encoder_weights="stage1"`` means random weights for the binary stage itself (it is stage 1)."""
    if config.encoder_weights == STAGE1_ENCODER and runfiles.check_stage(stage) == "binary":
        return dataclasses.replace(config, encoder_weights=None)
    return config


def _write_json(path: Path, payload: dict) -> None:
    runfiles.write_json(path, payload, default=_json_default)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def read_history(path: str | Path) -> pd.DataFrame:
    """A stage's ``history.csv`` (one row per epoch) as a DataFrame; a damaged one is named (``RunFileError``)."""
    return runfiles.read_csv(path, ("epoch",), HISTORY_REMEDY)


HISTORY_REMEDY = ("delete it, and the stage's backup/ folder beside it, to train that stage again from its start "
                  "(a finished stage: delete its folder and rerun, which resumes)")


def check_resume_files(directory: Path) -> None:
    """The weights a resumed stage reads back (``BackupAndRestore``'s ``latest.weights.h5``, the best epoch's
    ``best.weights.h5``) open as HDF5 files; one cut short, emptied or overwritten is named before training starts,
    not found by Keras half-way (a traceback that names neither)."""
    import h5py

    for path, remedy in ((directory / BACKUP_DIR / BACKUP_WEIGHTS, f"delete {directory / BACKUP_DIR} to train this "
                          "stage again from its start"),
                         (directory / BEST_WEIGHTS, "delete it and rerun: the stage resumes from its backup and keeps "
                          "the best of the epochs still to come")):
        if not path.is_file():
            continue
        try:
            with h5py.File(path, "r"):
                pass
        except OSError as err:
            raise runfiles.RunFileError(f"{path} is damaged ({runfiles.first_line(err)}): {remedy}") from err


class HistoryRecorder(keras.callbacks.Callback):
    """Writes ``history.csv`` (epoch, learning rate, every metric) whole and atomically after each epoch.

    Unlike ``CSVLogger(append=True)``, a resumed run neither repeats nor loses rows: the file is cut back to the
    epochs that ``BackupAndRestore`` restored and continued from there.
    """

    def __init__(self, path: Path, rows: list[dict]):
        super().__init__()
        self.path, self.rows = path, rows

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))}
        row.update({k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"})
        self.rows.append(row)
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        runfiles.write_text(self.path, text.getvalue())


class RecalibrateBatchNorm(keras.callbacks.Callback):
    """Precise BN before every validation pass, so val_loss (early stopping, best checkpoint) measures the
    model as it will be used."""

    def __init__(self, dataset: tf.data.Dataset, max_batches: int):
        super().__init__()
        self.dataset, self.max_batches = dataset, max_batches

    def on_test_begin(self, logs=None):
        models.recalibrate_batchnorm(self.model, self.dataset, self.max_batches)


def _restored_epoch(backup_dir: Path) -> int:
    """The epoch ``keras.callbacks.BackupAndRestore`` will resume after (its ``training_metadata.json``; 0: none).

    A backup folder that holds files but not that one is refused: either Keras changed its backup layout or the
    backup is damaged, and going on would rewrite ``history.csv`` from epoch 0 over restored weights."""
    meta = backup_dir / BACKUP_METADATA
    if meta.is_file():
        return int(runfiles.read_json(meta)["epoch"])
    if backup_dir.is_dir() and any(backup_dir.iterdir()):
        raise runfiles.RunFileError(
            f"{backup_dir} holds {', '.join(sorted(p.name for p in backup_dir.iterdir()))} but no {BACKUP_METADATA} "
            "(keras.callbacks.BackupAndRestore's record of the last finished epoch): the backup is damaged or from "
            "another Keras version. Delete that folder to train this stage again from its start")
    return 0


def _previous_rows(history_path: Path, restored_epoch: int) -> list[dict]:
    if restored_epoch == 0 or not history_path.is_file():
        return []
    rows = read_history(history_path).to_dict("records")
    return [r for r in rows if int(r["epoch"]) <= restored_epoch]


def _datasets(table: pd.DataFrame, images_dir: Path, stage: str, config: TrainConfig, split: str, *, train: bool,
              cache: bool | None = None):
    task, class_id = stage_task(stage)
    rows = table[table["split"] == split]
    dataset = loaders.make_dataset(
        rows, images_dir, task, class_id=class_id, image_size=config.image_size,
        batch_size=config.batch_size if train else config.eval_batch_size, shuffle=train, augment=train and config.augment,
        augmentation=config.augmentation,
        cache=config.cache if cache is None else cache, seed=config.seed,
        # A partial last batch would make Keras trace the train step again (~20 s for an EfficientNet on CPU).
        drop_remainder=train and len(loaders.select_rows(rows, task, class_id)) >= config.batch_size,
    )
    # Under --strategy multiworker every worker runs this whole pipeline and keeps its share of each batch (DATA
    # sharding: the images are one list in one dataset, not files that FILE sharding could divide). The batch size
    # stays the global batch, so a step, an epoch and the learning rate are those of a single worker's run.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def train_stage(
    run_dir: str | Path,
    backbone: str,
    stage: str,
    config: TrainConfig,
    *,
    table: pd.DataFrame,
    images_dir: str | Path,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    evaluate: bool = True,
) -> dict | None:
    """Train one stage of one backbone into its folder of ``run_dir``, evaluate it, and return its metrics.

    Args:
        run_dir: the run directory.
        backbone: ``"efficientnetb0"`` … ``"efficientnetb4"``.
        stage: ``"binary"``, ``"multilabel"``, ``"class1"`` … ``"class4"`` or ``"joint"``.
        config: the training settings.
        table: one row per image with a ``split`` column (``data.split_table``).
        images_dir: the folder of the images.
        callbacks: extra Keras callbacks (e.g. to stop early in a test).
        verbose: Keras' ``fit`` verbosity (the progress bar by default).
        evaluate: False trains only (a worker that is not the chief: the chief evaluates and writes the metrics).

    Returns:
        The stage's metrics (``metrics.json``): the paper's metrics on train, validation and test; None when
        ``evaluate`` is False.

    Example:
        >>> train_stage("runs/demo", "efficientnetb0", "binary", TrainConfig(epochs=2), table=split, images_dir=d)

    Reproduces one training process of the paper's Section 3 (one cell of Tables 2-6).
    """
    directory = runfiles.stage_dir(run_dir, backbone, stage)
    metrics_path = directory / runfiles.METRICS_FILE
    if metrics_path.is_file():
        log.info("%s/%s is done (%s exists): skipped", backbone, stage, metrics_path)
        return runfiles.read_json(metrics_path)
    if "split" not in table.columns:
        raise ValueError("the table needs a 'split' column (data.split_table)")
    directory.mkdir(parents=True, exist_ok=True)
    images_dir = Path(images_dir)
    with StageClock(directory) as clock:
        model = None
        if not (directory / models.SPEC_FILE).is_file():
            model = _fit(directory, backbone, stage, initial_encoder_weights(run_dir, backbone, stage, config),
                         table=table, images_dir=images_dir, callbacks=[clock.callback(), *callbacks], verbose=verbose)
            if stage == "binary" and config.encoder_weights == STAGE1_ENCODER:
                models.save_encoder_weights(model, directory / ENCODER_FILE)  # the later stages start from it
        if not evaluate:
            return None
        # The model just trained is the one saved; evaluating it in memory saves rebuilding and loading it (seconds
        # per stage). Under a strategy or mixed precision, the saved model is reloaded as the cascade will load it.
        same = model is not None and config.strategy == "default" and config.mixed_precision is None
        result = evaluate_stage(directory, stage, config, table=table, images_dir=images_dir,
                                model=model if same else None)
        _write_json(metrics_path, result)
    return result


def cache_fits(table: pd.DataFrame, stage: str, config: TrainConfig, *, what: str = "") -> bool:
    """Whether the stage keeps its decoded train and validation images in memory (``TrainConfig.cache``): sized
    before it is filled (``loaders.cache_bytes``) against ``cache_max_share`` of the memory available now; a cache
    that would not fit is turned off with a warning that says so. A dry run (``max_steps_per_epoch``) reads a few
    batches per epoch: it caches nothing."""
    if not config.cache or config.max_steps_per_epoch:
        return False
    task, class_id = stage_task(stage)
    rows = table[table["split"].isin(["train", "val"])]
    n_images = len(loaders.select_rows(rows, task, class_id))
    need = loaders.cache_bytes(n_images, task, config.image_size, class_id)
    available = meter.available_bytes()
    if config.cache_max_share is None or available is None or need <= config.cache_max_share * available:
        return True
    log.warning("%s: the image cache would take %.1f GiB (%d images at %dx%d), more than %.0f %% of the %.1f GiB "
                "available: it is off, images are decoded every epoch (--cache on keeps it anyway)", what or stage,
                need / meter.GIB, n_images, *config.image_size, 100 * config.cache_max_share, available / meter.GIB)
    return False


def stage_pos_weight(stage: str, config: TrainConfig, table: pd.DataFrame) -> np.ndarray | None:
    """The per-class weights of the multi-label loss that ``config.multilabel_pos_weight`` asks for: None (the paper's
    plain binary cross-entropy, and for every other stage), for "balanced" ``metrics.balanced_pos_weight`` of the
    stage's training images (the defective images of the train split); for "rare", the same but at least 1: the
    rare classes' positives count more, the common class's no less (balancing also weighs class 3's down)."""
    choice = config.multilabel_pos_weight
    if choice not in MULTILABEL_POS_WEIGHTS:
        raise ValueError(f"multilabel_pos_weight must be one of {MULTILABEL_POS_WEIGHTS}, got {choice!r}")
    if choice is None or stage_task(stage)[0] != "multilabel":
        return None
    rows = loaders.select_rows(table[table["split"] == "train"], "multilabel")
    weights = metrics.balanced_pos_weight(data.class_labels(rows))
    return np.maximum(weights, 1.0) if choice == "rare" else weights


def _fit(directory: Path, backbone: str, stage: str, config: TrainConfig, *, table: pd.DataFrame, images_dir: Path,
         callbacks: list, verbose: int | str) -> keras.Model:
    """Train the stage's model in ``directory`` (resuming from its backup) and save the best epoch."""
    keras.utils.set_random_seed(config.seed)
    history_path = directory / runfiles.HISTORY_FILE
    backup_dir = directory / BACKUP_DIR
    check_resume_files(directory)
    restored = _restored_epoch(backup_dir)
    rows = _previous_rows(history_path, restored)
    if restored:
        log.info("%s/%s: resuming after epoch %d", backbone, stage, restored)
    counts = stage_counts(table, stage)
    if not counts["train"]:
        raise ValueError(f"{backbone}/{stage}: no training image ({counts}); record it with record_not_trainable")
    cache = cache_fits(table, stage, config, what=f"{backbone}/{stage}")  # decided before any image is decoded
    train = _datasets(table, images_dir, stage, config, "train", train=True, cache=cache)
    # Without validation images (a small folder), the stage trains on its training loss: the checkpoint, early
    # stopping and the learning-rate schedule follow it, and precise BN runs once at the end.
    val = _datasets(table, images_dir, stage, config, "val", train=False, cache=cache) if counts["val"] else None
    if config.max_steps_per_epoch:  # a dry run: a few batches per epoch, to time the rest of the run at full size
        train = train.take(config.max_steps_per_epoch)
        val = None if val is None else val.take(config.max_steps_per_epoch)
        # precise BN's batches too: at 256x512 its 25 batches cost a minute an epoch on a CPU
        config = dataclasses.replace(config, bn_recalibration_batches=min(config.bn_recalibration_batches,
                                                                          config.max_steps_per_epoch))
    monitor = "val_loss" if val is not None else "loss"
    if val is None:
        log.info("%s/%s: no validation image; it trains without validation (monitoring the training loss)",
                    backbone, stage)
    # Precise BN reads a few un-augmented training batches each epoch: no need to cache them a second time.
    calibration = _datasets(table, images_dir, stage, config, "train", train=False, cache=False)
    pos_weight = stage_pos_weight(stage, config, table)
    if pos_weight is not None:
        _write_json(directory / LOSS_FILE, {"loss": "weighted_binary_crossentropy", "pos_weight": pos_weight.tolist()})
        log.info("%s/%s: positives weighted per class %s", backbone, stage, np.round(pos_weight, 3).tolist())
    with precision_policy(config.mixed_precision), get_strategy(config.strategy).scope():
        model = build_stage_model(backbone, stage, config, pos_weight=pos_weight)
        built = prebuild(model, next(iter(train)))
        if built and config.strategy != "default":
            skip_distributed_rebuild(model)
        if config.strategy == "multiworker":
            reducible_logs(model)
    best_path = directory / BEST_WEIGHTS
    best_so_far = min((r[monitor] for r in rows if monitor in r), default=None)
    stage_callbacks = _stage_callbacks(directory, config, monitor, best_so_far, rows, calibration) + list(callbacks)
    model.fit(train, validation_data=val, epochs=config.epochs, callbacks=stage_callbacks, verbose=verbose,
              shuffle=False)  # tf.data shuffles
    if best_path.is_file():
        model.load_weights(best_path)
    if val is None and config.bn_recalibration_batches:  # no validation pass ran it
        models.recalibrate_batchnorm(model, calibration, config.bn_recalibration_batches)
    models.save_model(model, directory, models.spec_of(model))  # the spec build_stage_model built it from
    best_path.unlink(missing_ok=True)
    shutil.rmtree(backup_dir, ignore_errors=True)
    return model


def _stage_callbacks(directory: Path, config: TrainConfig, monitor: str, best_so_far: float | None, rows: list[dict],
                     calibration: tf.data.Dataset) -> list[keras.callbacks.Callback]:
    """A stage's callbacks: precise BN, backup (resume), history.csv, best-epoch checkpoint, early stopping, the
    learning-rate schedule, TensorBoard."""
    # With one epoch its end is the stage's end: a backup (to resume in a later epoch) and a best-epoch checkpoint
    # (the only epoch is the best) would be written and deleted moments later, two saves of the whole model per
    # stage (seconds each for an EfficientNet; a third of the smoke profile's saving and loading).
    several = config.epochs > 1
    found = [
        *([keras.callbacks.BackupAndRestore(str(directory / BACKUP_DIR))] if several else []),
        HistoryRecorder(directory / runfiles.HISTORY_FILE, rows),
        *([keras.callbacks.ModelCheckpoint(
            str(directory / BEST_WEIGHTS), monitor=monitor, save_best_only=True, save_weights_only=True,
            initial_value_threshold=best_so_far,
        )] if several else []),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=config.early_stopping_patience),
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=config.reduce_lr_patience),
    ]
    if config.bn_recalibration_batches:
        found.insert(0, RecalibrateBatchNorm(calibration, config.bn_recalibration_batches))
    if config.tensorboard:
        found.append(keras.callbacks.TensorBoard(str(directory / "tensorboard")))
    return found


def _classification_arrays(model, rows, images_dir, stage, config) -> tuple[np.ndarray, np.ndarray]:
    task, _ = stage_task(stage)
    dataset = loaders.make_dataset(rows, images_dir, task, image_size=config.image_size,
                                   batch_size=config.eval_batch_size)
    forward = models.forward_fn(model)
    pairs = [(y.numpy(), forward(x).numpy()) for x, y in dataset]
    return np.concatenate([t for t, _ in pairs]), np.concatenate([p for _, p in pairs])


def _segmentation_scores(model, rows, images_dir, class_id, config) -> dict[int, dict[str, list]]:
    """Per image: soft Dice (the paper's) and Dice of the mask thresholded at 0.5, per channel, streamed."""
    dataset = loaders.make_dataset(rows, images_dir, "segmentation", class_id=class_id,
                                   image_size=config.image_size, batch_size=config.eval_batch_size)
    channels = [class_id] if class_id is not None else list(CLASS_IDS)
    scores = {c: {"soft": [], "hard": [], "present": []} for c in channels}
    forward = models.forward_fn(model)
    for images, masks in dataset:
        probs = forward(images).numpy()
        truth = masks.numpy().astype(np.float32)
        soft = metrics.dice_per_image(truth, probs)
        hard = metrics.dice_per_image(truth, (probs >= metrics.THRESHOLD).astype(np.float32))
        present = truth.any(axis=(1, 2))
        for k, c in enumerate(channels):
            scores[c]["soft"].extend(soft[:, k])
            scores[c]["hard"].extend(hard[:, k])
            scores[c]["present"].extend(present[:, k])
    return scores


def _dice_summary(score: dict[str, list]) -> dict:
    present = np.asarray(score["present"], bool)
    if not present.any():
        return {"dice_coef": None, "dice_loss": None, "dice_coef_thresholded": None, "n_images": 0}
    soft = float(np.mean(np.asarray(score["soft"])[present]))
    return {"dice_coef": soft, "dice_loss": 1.0 - soft,
            "dice_coef_thresholded": float(np.mean(np.asarray(score["hard"])[present])),
            "n_images": int(present.sum())}


def evaluate_stage(
    directory: str | Path, stage: str, config: TrainConfig, *, table: pd.DataFrame, images_dir: str | Path,
    model: keras.Model | None = None,
) -> dict:
    """The paper's metrics of a saved stage on train, validation and test (exact, dataset-level).

    Classifiers: binary cross-entropy, acc, f1_score, precision, recall (micro over (image, class) pairs for
    multi-label) and exact match, plus ``batch_averaged``: the paper-style per-batch values. Segmentation: per
    class, the mean per-image soft Dice over the images that contain the class (the paper's definition),
    ``dice_loss = 1 - dice_coef``, and the Dice of masks thresholded at 0.5. ``model``: the stage's model in
    memory, the same as the one saved in ``directory`` (default: loaded from there).
    """
    directory = Path(directory)
    model = models.load_model(directory) if model is None else model
    model.run_eagerly = config.run_eagerly  # models.forward_fn then calls it without tracing
    task, class_id = stage_task(stage)
    result: dict = {"stage": stage, "image_size": list(config.image_size)}
    for split in SPLITS:
        rows = loaders.select_rows(table[table["split"] == split], task, class_id)
        if rows.empty:
            result[split] = None
            continue
        if task == "segmentation":
            scores = _segmentation_scores(model, rows, Path(images_dir), class_id, config)
            if class_id is not None:
                result[split] = _dice_summary(scores[class_id])
            else:
                result[split] = {f"class{c}": _dice_summary(s) for c, s in scores.items()}
        else:
            y_true, y_prob = _classification_arrays(model, rows, Path(images_dir), stage, config)
            result[split] = {**metrics.classification_metrics(y_true, y_prob), "n_images": len(rows)}
            result.setdefault("batch_averaged", {})[split] = metrics.batch_averaged(
                y_true, y_prob, config.eval_batch_size)
    return result


def predict_masks(run_dir: str | Path, backbone: str, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Mask probabilities ``(N, h, w, 4)`` from a backbone's trained UNets in ``run_dir`` (the joint one, or the
    per-class ones; a class without a model stays 0) for uint8 images ``(N, h, w, 3)`` at the models' size."""
    if is_trained(run_dir, backbone, runfiles.JOINT_STAGE):
        joint = runfiles.stage_dir(run_dir, backbone, runfiles.JOINT_STAGE)
        return models.predict(models.load_model(joint), images, batch_size)
    found = [c for c in CLASS_IDS if is_trained(run_dir, backbone, runfiles.segmentation_stage(c))]
    if not found:
        base = runfiles.stage_dir(run_dir, backbone, runfiles.JOINT_STAGE).parent
        raise FileNotFoundError(f"{base}: no trained UNet (expected joint/ or class1/ ... class4/ with "
                                f"{models.SPEC_FILE})")
    masks = np.zeros((len(images), *images.shape[1:3], len(CLASS_IDS)), np.float32)
    for class_id in found:
        directory = runfiles.stage_dir(run_dir, backbone, runfiles.segmentation_stage(class_id))
        masks[..., class_id - 1] = models.predict(models.load_model(directory), images, batch_size)[..., 0]
    return masks
