"""A run's plan, settled before any training: its settings resolved from the profile and the options, each
stage's training settings, the stages to train in order (``Job``) with their cost, what the data gives each stage,
and how long it will take. It imports no TensorFlow (its data functions load the modules that do when called).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import NamedTuple

from .config import (
    BACKBONES,
    CLASS_IDS,
    CLASSIFICATION_STAGES,
    FREEZE_CHOICES,
    PROFILES,
    STEP_COST_MS,
    TrainConfig,
    starts_from_scratch,
)


class Job(NamedTuple):
    """One stage of one backbone to train, in the run's order."""

    backbone: str
    stage: str
    n_train: int  # the stage's training images
    train_config: TrainConfig
    kind: str  # "classifier" or "unet" (stage_kind)
    work: float  # the stage's estimated seconds (stage_seconds_estimate): what the ETA scales by


def stage_kind(stage: str) -> str:
    """The model a stage trains: "classifier" or "unet" (the keys of config.STEP_COST_MS)."""
    return "classifier" if stage in CLASSIFICATION_STAGES else "unet"


# The estimate of a run's time on the 2-core development CPU (``estimate_seconds``), from STEP_COST_MS (a training
# step's cost per image at 64x320) and what a stage costs whatever its data. Checked against measured runs: the
# smoke and default profiles, quick with B0 on the real sample, the paper profile's dry run (tests/test_runplan.py).
STAGE_OVERHEAD_S = {"traced": 60.0, "eager": 12.0}  # building the model, tracing its train and evaluation steps, saving
FORWARD_SHARE = 1 / 3  # a forward pass (evaluation, precise BN) against a training step, per image
BASE_PIXELS = 64 * 320  # the size STEP_COST_MS was measured at; the cost scales with the pixels
CASCADE_OVERHEAD_S = 20.0  # per model the cascade loads and traces for its evaluation


def _ms_per_image(kind: str, backbone: str, image_size, forward: bool) -> float:
    pixels = image_size[0] * image_size[1] / BASE_PIXELS
    return STEP_COST_MS[kind][BACKBONES.index(backbone)] * pixels * (FORWARD_SHARE if forward else 1.0)


def stage_seconds_estimate(backbone: str, stage: str, counts: dict[str, int], config: TrainConfig) -> float:
    """A stage's wall time here: training (capped by a dry run's steps), validation and precise BN each epoch,
    the evaluation of every split, and the stage's fixed cost. ``counts``: its images per split."""
    kind = stage_kind(stage)
    if not counts["train"]:
        return 0.0
    batches = -(-counts["train"] // config.batch_size)
    val_batches = -(-counts["val"] // config.eval_batch_size)
    if config.max_steps_per_epoch:
        batches, val_batches = min(batches, config.max_steps_per_epoch), min(val_batches, config.max_steps_per_epoch)
    step = _ms_per_image(kind, backbone, config.image_size, forward=False)
    forward = _ms_per_image(kind, backbone, config.image_size, forward=True)
    trained = min(counts["train"], batches * config.batch_size)
    checked = min(counts["val"], val_batches * config.eval_batch_size)
    calibration = min(config.bn_recalibration_batches, batches) * config.batch_size
    epoch_ms = trained * step + (checked + calibration) * forward
    evaluation_ms = sum(counts.values()) * forward
    overhead = STAGE_OVERHEAD_S["eager" if config.run_eagerly else "traced"]
    return overhead + (config.epochs * epoch_ms + evaluation_ms) / 1000


def cascade_seconds_estimate(config: dict, n_val: int, n_test: int) -> float:
    """The cascade's threshold search on validation and its evaluation on test: every model on every image (the
    variants are derived from one pass), with the first chosen backbone's costs, plus loading each model."""
    backbone = config["backbones"][0]
    stages = config["stages"]
    per_image = sum(_ms_per_image(stage_kind(s), backbone, train_config(config, s).image_size, forward=True)
                    for s in stages)
    return len(stages) * CASCADE_OVERHEAD_S + (n_val + n_test) * per_image / 1000


def about(seconds: float) -> str:
    """A duration as an estimate says it: ``about 40 s``, ``about 12 min``, ``about 2 h 5 min``.

    Example:
        >>> about(7500)
        'about 2 h 5 min'
    """
    if seconds < 90:
        return f"about {seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"about {minutes} min" if minutes < 120 else f"about {minutes // 60} h {minutes % 60} min"


def estimate_seconds(config: dict, table, planned: list[Job] | None = None) -> dict[str, float]:
    """How long the run will take on this kind of machine (2 cores): ``training`` (every stage, with its
    evaluation), ``cascade`` (threshold search and test evaluation) and ``total``, in seconds. ``planned``: the
    run's ``jobs``, when they are already made."""
    training_s = sum(job.work for job in (jobs(config, table) if planned is None else planned))
    split = table["split"]
    cascade_s = cascade_seconds_estimate(config, int((split == "val").sum()), int((split == "test").sum()))
    return {"training": training_s, "cascade": cascade_s, "total": training_s + cascade_s}


def estimate_remaining(finished: list[tuple[str, float, float]], todo: list[tuple[str, float]]) -> float | None:
    """Seconds the stages ``todo`` will take, from the stages already timed.

    Args:
        finished: ``(kind, work, seconds)`` of timed stages (kind "classifier" or "unet"; work: the stage's
            estimated seconds, ``stage_seconds_estimate``).
        todo: ``(kind, work)`` of the stages still to train.

    Returns:
        For each stage to do, its work times the seconds per unit of work of the finished stages of its kind (of all
        finished stages when none of its kind is timed yet); None when nothing is timed.

    Example:
        >>> estimate_remaining([("classifier", 100.0, 50.0)], [("classifier", 300.0), ("unet", 100.0)])
        200.0
    """
    if not finished:
        return None
    overall = sum(s for _, _, s in finished) / sum(w for _, w, _ in finished)
    rates = {}
    for kind in {k for k, _, _ in finished}:
        rates[kind] = sum(s for k, _, s in finished if k == kind) / sum(w for k, w, _ in finished if k == kind)
    return sum(work * rates.get(kind, overall) for kind, work in todo)


def resolve_settings(args, profile) -> dict:
    """The run's settings from the profile and the options (``--image-size`` and ``--batch-size`` set every stage's)."""
    image_size = tuple(args.image_size) if args.image_size else profile.image_size
    classifier_size = tuple(args.image_size) if args.image_size else profile.classifier_image_size or image_size
    batch_size = profile.batch_size if args.batch_size is None else args.batch_size
    segmentation_batch = args.batch_size if args.batch_size is not None else profile.segmentation_batch_size or batch_size
    encoder_weights = profile.encoder_weights if args.encoder_weights is None else args.encoder_weights
    if str(encoder_weights).lower() == "none":
        encoder_weights = None
    return {
        "profile": profile.name,
        "backbones": list(args.backbones or profile.backbones),
        "stages": list(profile.stages()),
        "image_size": list(image_size),
        "classifier_image_size": list(classifier_size),
        "classifier_epochs": profile.classifier_epochs if args.epochs is None else args.epochs,
        "segmentation_epochs": profile.segmentation_epochs if args.epochs is None else args.epochs,
        "batch_size": batch_size,
        "segmentation_batch_size": segmentation_batch,
        "learning_rate": profile.learning_rate,
        "segmentation_loss": profile.segmentation_loss,
        "augmentation": profile.augmentation,
        "run_eagerly": profile.run_eagerly,
        "freeze_encoder": list(profile.freeze_encoder if args.freeze_encoder is None
                               else FREEZE_CHOICES[args.freeze_encoder]),
        "multilabel_pos_weight": None if args.multilabel_pos_weight == "none" else args.multilabel_pos_weight,
        "head": profile.head,
        "encoder_weights": None if encoder_weights is None else str(encoder_weights),
        "seed": args.seed,
        "strategy": args.strategy,
        "mixed_precision": args.mixed_precision,
        "cache": getattr(args, "cache", None) or "auto",
        "max_steps_per_epoch": getattr(args, "max_steps_per_epoch", None),
    }


def train_config(settings: dict, stage: str) -> TrainConfig:
    classifier = stage_kind(stage) == "classifier"
    epochs = settings["classifier_epochs"] if classifier else settings["segmentation_epochs"]
    # Runs written before per-stage sizes existed have one size and one batch for every stage.
    image_size = settings.get("classifier_image_size", settings["image_size"]) if classifier else settings["image_size"]
    batch_size = settings["batch_size"] if classifier else settings.get("segmentation_batch_size", settings["batch_size"])
    return TrainConfig(
        image_size=tuple(image_size), batch_size=batch_size, epochs=epochs,
        augmentation=settings.get("augmentation", "ours"), run_eagerly=settings.get("run_eagerly", False),
        freeze_encoder=(stage if classifier else "segmentation") in settings.get("freeze_encoder", []),
        learning_rate=settings["learning_rate"], encoder_weights=settings["encoder_weights"],
        bn_momentum=0.9 if starts_from_scratch(settings["encoder_weights"]) else None, segmentation_loss=settings["segmentation_loss"],
        multilabel_pos_weight=settings.get("multilabel_pos_weight"), head=settings["head"],
        seed=settings["seed"], strategy=settings["strategy"], mixed_precision=settings["mixed_precision"],
        cache=settings.get("cache", "auto") != "off", cache_max_share=None if settings.get("cache") == "on" else 0.5,
        max_steps_per_epoch=settings.get("max_steps_per_epoch"),
    )


def train_configs(settings: dict) -> dict[str, dict]:
    """Every stage's resolved TrainConfig as JSON-ready data (the same for each backbone), for config.json."""
    return {stage: train_config(settings, stage).to_json() for stage in settings["stages"]}


def data_fingerprint(data_dir: Path, table) -> dict:
    """What identifies the data a run was trained on: its train.csv's bytes and its images, and for a synthetic twin
    how it was made (its twin.json: version, size, seed, defect contrast; the same masks can be drawn at another
    contrast)."""
    from . import synthetic

    digest = hashlib.sha256((Path(data_dir) / "train.csv").read_bytes()).hexdigest()
    fingerprint = {"train_csv_sha256": digest, "n_images": len(table)}
    marker = Path(data_dir) / synthetic.MARKER
    if marker.is_file():
        fingerprint["twin"] = json.loads(marker.read_text())
    return fingerprint


def _describe(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# Settings added after runs were made with this package, and what their absence in a run's config.json means: a run
# made before them resumes as long as the new setting has that value.
LATER_SETTINGS = {"run_eagerly": False, "freeze_encoder": [], "cache": "auto", "max_steps_per_epoch": None}


def differing_settings(saved: dict, settings: dict) -> list[str]:
    """The keys of ``settings`` that a run's saved config.json has otherwise. A key (or a TrainConfig field in
    ``train_configs``) that the run predates counts as equal when it has the value its absence meant (for a field,
    its TrainConfig default)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

    def same(key, old, new):
        if key not in saved:
            return key in LATER_SETTINGS and new == LATER_SETTINGS[key]
        if key == "train_configs" and isinstance(old, dict) and isinstance(new, dict) and old.keys() == new.keys():
            return all({**{k: v for k, v in defaults.items() if k not in old[stage] and k in new[stage]},
                        **old[stage]} == new[stage] for stage in new)
        return old == new

    return [k for k, v in settings.items() if not same(k, saved.get(k), v)]


def refuse_other_settings(run_dir: Path, saved: dict, settings: dict, who: str = "") -> None:
    """Exit with one message naming each setting in which ``saved`` (a run's config.json) differs from ``settings``
    (the chief and every worker refuse the same runs, with the same words)."""
    differing = differing_settings(saved, settings)
    if differing:
        changes = "; ".join(f"{k}: {_describe(saved.get(k))} there, {_describe(settings[k])} now" for k in differing)
        raise SystemExit(
            f"error: {run_dir} holds a run made with other settings ({changes}). Resume it with the command "
            f"and data that made it, start it over with --fresh, or choose a new --run-dir{who}"
        )


def _expected_time(name: str) -> str:
    profile = PROFILES[name]
    return f"about {profile.measured_minutes:.0f} min" if profile.measured_minutes else profile.minutes_note


def first_line(args) -> str:
    """What the run will take here, said before it starts, and how to get a faster or a fuller one. The profile's
    measured time where its own settings run (scaled to the backbones chosen); with other settings or data, the
    estimate for them (``estimate_seconds``) follows on its own line once the data is read."""
    profile = PROFILES[args.profile]
    chosen = args.backbones or profile.backbones
    changed = [f"--{name.replace('_', '-')}" for name in ("data_dir", "epochs", "image_size", "batch_size",
                                                          "twin_images", "freeze_encoder", "max_steps_per_epoch")
               if getattr(args, name, None) is not None]
    later = "the estimate for these settings and this data follows once the data is read"
    if changed or profile.measured_minutes is None:
        known = (f"measured {profile.measured_minutes:.0f} min for its own settings and five backbones"
                 if profile.measured_minutes else profile.minutes_note)
        expected = f"{later} (the profile: {known})"
    else:
        share = sum(STEP_COST_MS["classifier"][BACKBONES.index(b)] + STEP_COST_MS["unet"][BACKBONES.index(b)]
                    for b in chosen) / sum(map(sum, STEP_COST_MS.values()))
        expected = f"about {profile.measured_minutes * share:.0f} min on a 2-core CPU"
    others = {"smoke": "faster, a pipeline check", "default": "the default", "quick": "fuller, a better detector",
              "paper": "the paper's protocol on the Kaggle data"}
    hints = "; ".join(f"--profile {name} ({_expected_time(name)}, {why})" for name, why in others.items()
                      if name != profile.name)
    return (f"steeldefect: profile {profile.name}, {len(chosen)} backbone(s): {expected}; the ETA after each stage "
            f"says more. Other scales: {hints}")


def data_plan(table, stages, *, moved=(), bad_images=None) -> dict:
    """What each stage gets on this data, decided before training: its images per split and, where it has none to
    train on, why it is not trainable; the classes the cascade will never predict (no training image); the images
    moved into train (``data.keep_classes_in_train``) and the bad images left out (``--skip-bad-images``)."""
    from . import data, report, training

    plan = {"stages": {}, "never_predicted": {}, "moved_to_train": list(moved), "bad_images": dict(bad_images or {})}
    for stage in stages:
        counts = training.stage_counts(table, stage)
        plan["stages"][stage] = {**counts, "not_trainable": None if counts["train"] else
                                 f"no training image for stage {stage} ({report.counts_text(counts)})"}
    train = table[table["split"] == "train"]
    labels, all_labels = data.class_labels(train).sum(axis=0), data.class_labels(table).sum(axis=0)
    for k, class_id in enumerate(CLASS_IDS):
        if not labels[k]:
            plan["never_predicted"][str(class_id)] = (f"no training image of class {class_id} "
                                                     f"({int(all_labels[k])} in the whole data)")
    return plan


def jobs(config: dict, table) -> list[Job]:
    """Every stage to train, in order (backbones, then stages)."""
    from . import training

    counts = {stage: training.stage_counts(table, stage) for stage in config["stages"]}  # the same for every backbone
    found = []
    for backbone in config["backbones"]:
        for stage in config["stages"]:
            settings = train_config(config, stage)
            seconds = stage_seconds_estimate(backbone, stage, counts[stage], settings)
            found.append(Job(backbone, stage, counts[stage]["train"], settings, stage_kind(stage), seconds))
    return found


def settle_config(run_dir: Path, settings: dict) -> dict:
    """The run's config.json: written once, with the run's mark and the library versions; a rerun must match it
    (else --fresh or another --run-dir: ``refuse_other_settings``)."""
    from . import __version__, distribute, runfiles

    config_path = run_dir / runfiles.CONFIG_FILE
    if config_path.is_file():
        saved = runfiles.read_json(config_path)
        refuse_other_settings(run_dir, saved, settings)
        return saved
    run_dir.mkdir(parents=True, exist_ok=True)
    import keras
    import tensorflow as tf

    config = {runfiles.MARK_KEY: runfiles.run_marker(), **settings}
    config["versions"] = {"steeldefect": __version__, "tensorflow": tf.__version__, "keras": keras.__version__}
    config["workers"] = distribute.num_workers()  # processes that trained it (TF_CONFIG's cluster; 1 without one)
    runfiles.write_json(config_path, config)
    return config


def worker_config(run_dir: Path, settings: dict, *, fresh: bool) -> dict:
    """A non-chief worker's view of the run's settings: its own, after the same check as the chief's (the chief
    refuses to resume a run made with other settings, and so does the worker, rather than wait for it); with
    ``fresh`` the chief empties the run, so there is nothing to check."""
    from . import runfiles

    config_path = run_dir / runfiles.CONFIG_FILE
    if config_path.is_file() and not fresh:
        refuse_other_settings(run_dir, runfiles.read_json(config_path), settings,
                              who=" (the chief refuses to resume it, and so does this worker)")
    return dict(settings)
