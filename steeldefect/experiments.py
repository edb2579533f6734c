"""``python -m steeldefect.experiments``: train, evaluate and report the paper's experiments end to end.

With no ``--data-dir`` it writes the synthetic twin (once, into ``data/``) and runs the ``default`` profile: all five
backbones, every stage, Tables 2-7, figures and the cascade. Given a Kaggle folder it runs the same code on it.
Everything lands in a run directory (DESIGN.md); rerunning the same command resumes: finished stages are
skipped, an interrupted one continues from its last epoch. ``--report-only`` rebuilds tables and figures from the
run's files without training.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

from . import __version__, distribute, quiet_tensorflow, runfiles

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, one process per run directory is up to the user
    fcntl = None
from .config import (
    BACKBONES,
    CLASS_IDS,
    CLASSIFICATION_STAGES,
    FREEZE_CHOICES,
    MULTILABEL_POS_WEIGHTS,
    PROFILES,
    SPLIT_SEED,
    STAGE1_ENCODER,
    STEP_COST_MS,
    TTA_CHOICES,
    TrainConfig,
    tta_from_choice,
)

DATA_DIR = Path("data")  # relative to the working directory, as data/README.md says
RUNS_DIR = Path("runs")
STOP_AFTER_ENV = "STEELDEFECT_STOP_AFTER_STAGES"  # test hook: exit as if interrupted after N trained stages
LOCK_FILE = runfiles.LOCK_FILE
PLAN_FILE = "data_plan.json"  # what each stage gets on the run's data, decided before training (data_plan)
MIN_TWIN_IMAGES = 10  # fewer cannot be split into train, validation and test with every stage fed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m steeldefect.experiments",
        description="Reproduce Yulianto et al. (2023): train the three stages for EfficientNet B0-B4, evaluate, "
        "and write Tables 2-7 and the figures into a run directory.",
    )
    parser.add_argument("--data-dir", type=Path, help="Kaggle-layout folder (train.csv, train_images/); default: "
                        "the synthetic twin, generated into data/ on first use")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default",
                        help="scale: smoke (CI, minutes), default (the twin, ~30 min), quick (the twin, hours), "
                             "paper (Kaggle data, GPU)")
    parser.add_argument("--backbones", nargs="+", help="subset of efficientnetb0 ... efficientnetb4")
    parser.add_argument("--run-dir", type=Path, help="where results go (default: runs/<profile>)")
    parser.add_argument("--epochs", type=int, help="epochs for every stage (overrides the profile)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="model input, multiples of 32")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int, default=SPLIT_SEED, help="split and training seed")
    parser.add_argument("--encoder-weights", help=f"imagenet, none, {STAGE1_ENCODER} (stages 2-3 start from the "
                        "backbone's trained stage-1 encoder), or a path to a weights file")
    parser.add_argument("--multilabel-pos-weight", choices=[str(w).lower() for w in MULTILABEL_POS_WEIGHTS],
                        default=None,
                        help="stage 2's loss: none, the paper's binary cross-entropy (default); balanced: each "
                             "class's positives weighted by its negatives / positives in the training images; "
                             "rare: the same weights, but at least 1")
    parser.add_argument("--strategy", choices=("default", "mirrored", "multiworker"), default=None,
                        help="tf.distribute: default (one device), mirrored (the GPUs of this machine), multiworker "
                             "(the cluster of the TF_CONFIG variable; each worker runs the same command, the chief "
                             "writes the run). Default: multiworker when TF_CONFIG names several workers, else default")
    parser.add_argument("--mixed-precision", nargs="?", const="mixed_float16", default=None,
                        choices=("mixed_float16", "mixed_bfloat16"), help="mixed precision policy (GPU)")
    parser.add_argument("--freeze-encoder", choices=sorted(FREEZE_CHOICES), default=None,
                        help="train stage 2 (multilabel) or stages 2-3 (all) with the encoder they start from frozen: "
                             "the classifier's head, the UNet's decoder (default: the profile's)")
    parser.add_argument("--twin-images", type=int, help="size of the synthetic twin (default: the profile's)")
    parser.add_argument("--twin-root", type=Path, default=DATA_DIR,
                        help="folder the synthetic twin is written under, as synthetic-N/ (default: data/)")
    parser.add_argument("--fresh", action="store_true",
                        help="empty the run directory and start over (only a steeldefect run directory, or an empty "
                             "one: a folder of other files is never deleted)")
    parser.add_argument("--tta", choices=TTA_CHOICES, default="none",
                        help="flip test-time augmentation in the cascade the run builds and evaluates (saved in its "
                             "cascade.json; training is unchanged, so a finished run is re-evaluated, not retrained)")
    parser.add_argument("--report-only", action="store_true", help="rebuild tables and figures, no training")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="train without the images of --data-dir that cannot be used (truncated, corrupt, another "
                             "size); they are listed in the run's report. Without it such an image stops the command")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's logs and warnings, and the traceback of an error")
    return parser


def _quiet(verbose: bool, before_first_op=None) -> None:
    """Silence TensorFlow's C++ logs and Python warnings (must run before TensorFlow is imported); call
    ``before_first_op`` before TensorFlow's first operation (``quiet_tensorflow``)."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        if before_first_op is not None:
            before_first_op()
        return
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_tensorflow(before_first_op)


def _start_cluster() -> None:
    """Make the multi-worker strategy (TF_CONFIG's cluster) before TensorFlow's first operation, as it requires;
    it returns once every worker has joined."""
    kind, index = distribute.task()
    role = "the chief: it writes the run" if distribute.is_chief() else "not the chief: the chief writes the run"
    print(f"cluster: {kind} {index} of {distribute.num_workers()} workers ({role}); waiting for every worker to "
          "start", flush=True)
    distribute.start("multiworker")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _kind(stage: str) -> str:
    """The model a stage trains: "classifier" or "unet" (the keys of config.STEP_COST_MS)."""
    return "classifier" if stage in CLASSIFICATION_STAGES else "unet"


def _work(backbone: str, kind: str, n_images: int, epochs: int) -> float:
    """A stage's training work in units that scale with its wall time: images x epochs x the backbone's step cost."""
    return n_images * epochs * STEP_COST_MS[kind][BACKBONES.index(backbone)]


def estimate_remaining(finished: list[tuple[str, float, float]], todo: list[tuple[str, float]]) -> float | None:
    """Seconds the stages ``todo`` will take, from the stages already timed.

    Args:
        finished: ``(kind, work, seconds)`` of timed stages (kind "classifier" or "unet"; work from ``_work``).
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


def _settings(args, profile) -> dict:
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
    }


def _train_config(settings: dict, stage: str) -> TrainConfig:
    from .config import starts_from_scratch

    classifier = _kind(stage) == "classifier"
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
    )


def _train_configs(settings: dict) -> dict[str, dict]:
    """Every stage's resolved TrainConfig as JSON-ready data (the same for each backbone), for config.json."""
    return {stage: {k: list(v) if isinstance(v, tuple) else v
                    for k, v in dataclasses.asdict(_train_config(settings, stage)).items()}
            for stage in settings["stages"]}


def check_args(args) -> None:
    """Reject bad options with one line naming the option and what was expected, before anything is written."""
    def fail(message: str):
        raise SystemExit(f"error: {message}")

    for backbone in args.backbones or ():
        if backbone not in BACKBONES:
            fail(f"--backbones: unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    if args.backbones and len(set(args.backbones)) != len(args.backbones):
        fail(f"--backbones: {' '.join(args.backbones)} names a backbone twice")
    if args.image_size is not None:
        height, width = args.image_size
        if height < 32 or width < 32 or height % 32 or width % 32:
            fail(f"--image-size: {height} {width} is not a valid model input; height and width must be positive "
                 "multiples of 32 (the UNet halves them five times), e.g. 64 320, 128 800 or 256 1600")
    for option, value, least in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                                 ("--twin-images", args.twin_images, MIN_TWIN_IMAGES)):
        if value is not None and value < least:
            fail(f"{option}: {value} is too small; expected an integer >= {least}")
    weights = args.encoder_weights
    if weights is not None and weights.lower() not in ("imagenet", "none", STAGE1_ENCODER) \
            and not Path(weights).is_file():
        fail(f"--encoder-weights: {weights!r} is neither imagenet, none, {STAGE1_ENCODER} nor an existing weights file")
    if args.report_only and args.fresh:
        fail("--report-only rebuilds a run's report from its files and --fresh deletes them: use one of the two")
    if args.data_dir is not None and (args.twin_images is not None or args.twin_root != DATA_DIR):
        fail("--twin-images and --twin-root choose the synthetic twin, which --data-dir replaces: drop one of them")
    if args.profile == "paper" and args.data_dir is None:
        fail("the paper profile runs on the Kaggle data: pass --data-dir (see data/README.md)")


def _data_fingerprint(data_dir: Path, table) -> dict:
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
LATER_SETTINGS = {"run_eagerly": False, "freeze_encoder": []}


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


def _refuse_other_settings(run_dir: Path, saved: dict, settings: dict, who: str = "") -> None:
    """Exit with one message naming each setting in which ``saved`` (a run's config.json) differs from ``settings``
    (the chief and every worker refuse the same runs, with the same words)."""
    differing = differing_settings(saved, settings)
    if differing:
        changes = "; ".join(f"{k}: {_describe(saved.get(k))} there, {_describe(settings[k])} now" for k in differing)
        raise SystemExit(
            f"error: {run_dir} holds a run made with other settings ({changes}). Resume it with the command "
            f"and data that made it, start it over with --fresh, or choose a new --run-dir{who}"
        )


def _prepare_run(args, run_dir: Path, settings: dict) -> dict:
    """Write config.json once, with the run's mark; a rerun must match it (else --fresh or another --run-dir)."""
    config_path = run_dir / runfiles.CONFIG_FILE
    if config_path.is_file():
        saved = runfiles.read_json(config_path)
        _refuse_other_settings(run_dir, saved, settings)
        return saved
    run_dir.mkdir(parents=True, exist_ok=True)
    import keras
    import tensorflow as tf

    config = {runfiles.MARK_KEY: runfiles.run_marker(), **settings}
    config["versions"] = {"steeldefect": __version__, "tensorflow": tf.__version__, "keras": keras.__version__}
    config["workers"] = distribute.num_workers()  # processes that trained it (TF_CONFIG's cluster; 1 without one)
    runfiles.write_json(config_path, config)
    return config


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``run_dir/run.lock`` (an advisory ``flock``, freed by the system when the process ends) while a run
    trains: a second process on the same run directory would train the same stages into the same files. A run
    directory this call created and that is still empty at the end is removed (a rejected command leaves none)."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    try:
        if fcntl is None:
            yield
            return
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise SystemExit(f"error: {run_dir} is in use by {holder}; wait for it to end or stop it (one process "
                                 "per run directory; --run-dir starts another run)") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
            try:
                yield
            finally:
                path.unlink(missing_ok=True)
    finally:
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()


def _expected_time(name: str) -> str:
    profile = PROFILES[name]
    return f"about {profile.measured_minutes:.0f} min" if profile.measured_minutes else profile.minutes_note


def first_line(args) -> str:
    """What the run will take here, said before it starts, and how to get a faster or a fuller one."""
    profile = PROFILES[args.profile]
    chosen = args.backbones or profile.backbones
    changed = [f"--{name.replace('_', '-')}" for name in ("data_dir", "epochs", "image_size", "batch_size",
                                                          "twin_images", "freeze_encoder")
               if getattr(args, name, None) is not None]
    if profile.measured_minutes is None:
        expected = profile.minutes_note
    else:
        share = sum(STEP_COST_MS["classifier"][BACKBONES.index(b)] + STEP_COST_MS["unet"][BACKBONES.index(b)]
                    for b in chosen) / sum(map(sum, STEP_COST_MS.values()))
        expected = f"about {profile.measured_minutes * share:.0f} min on a 2-core CPU"
        if changed:
            expected += f" with the profile's own settings ({', '.join(changed)} change{'s' if len(changed) == 1 else ''} it)"
    others = {"smoke": "faster, a pipeline check", "default": "the default", "quick": "fuller, a better detector",
              "paper": "the paper's protocol on the Kaggle data"}
    hints = "; ".join(f"--profile {name} ({_expected_time(name)}, {why})" for name, why in others.items()
                      if name != profile.name)
    return (f"steeldefect: profile {profile.name}, {len(chosen)} backbone(s): {expected}; the ETA after each stage "
            f"says more. Other scales: {hints}")


def run(args) -> int:
    from . import report

    start = time.time()
    check_args(args)
    profile = PROFILES[args.profile]
    run_dir = args.run_dir or RUNS_DIR / profile.name
    if not args.report_only and distribute.is_chief():
        print(first_line(args), flush=True)
    if args.report_only:
        if not distribute.is_chief():  # one writer: the chief rebuilds it
            print(f"worker: --report-only is the chief's to run; nothing done here ({run_dir} is the chief's)")
            return 0
        if not runfiles.is_run_dir(run_dir):
            raise SystemExit(f"error: {run_dir} is not a steeldefect run directory (no {runfiles.CONFIG_FILE} with "
                             "its mark): nothing to report")
        results = report.build_report(run_dir)
        print(f"report rebuilt from {run_dir}: {run_dir / 'report.md'}")
        return 0 if results else 1
    if not distribute.is_chief():
        # A worker that is not the chief trains the same steps with its files in a folder of its own and never
        # touches the run directory: no lock, no --fresh, no check of what is there (the chief does all three).
        loaded = None if args.data_dir is None else _load_data(args.data_dir, args.skip_bad_images)
        scratch = distribute.scratch_dir(run_dir)
        shutil.rmtree(scratch, ignore_errors=True)  # its state of each stage is copied from the chief's
        return _train_and_report(args, run_dir, profile, start, loaded, scratch=scratch)
    foreign = runfiles.foreign_entries(run_dir)
    if foreign:  # never write into, let alone empty, a folder of the user's
        raise SystemExit(f"error: {run_dir} is not a steeldefect run directory and holds {runfiles.listing(foreign)}; "
                         "nothing was deleted or written there. Choose another --run-dir (a new or empty folder)")
    # The data folder's layout, annotations and images are checked before anything is written.
    loaded = None if args.data_dir is None else _load_data(args.data_dir, args.skip_bad_images)
    with run_lock(run_dir):
        if args.fresh:
            runfiles.empty_run_dir(run_dir)
        return _train_and_report(args, run_dir, profile, start, loaded)


def _load_data(data_dir: Path, skip_bad_images: bool):
    """The table of a Kaggle-layout folder and its bad images ``{ImageId: problem}``; a bad image stops the command
    with one line per file, unless ``skip_bad_images`` leaves it out (reported, and listed in the run)."""
    from . import data

    table = data.load_table(data_dir)
    images_dir = Path(data_dir) / "train_images"
    bad = data.check_images(images_dir, table["ImageId"])
    if bad and not skip_bad_images:
        for image_id, problem in bad.items():
            print(f"error: {images_dir / image_id}: {problem}", file=sys.stderr)
        raise SystemExit(f"error: {len(bad)} of {len(table)} images in {images_dir} cannot be used (above); fix or "
                         "remove them, or pass --skip-bad-images to train without them")
    if bad:
        print(f"data: skipping {len(bad)} bad image(s) (--skip-bad-images): {', '.join(bad)}")
        table = table[~table["ImageId"].isin(list(bad))].reset_index(drop=True)
    return table, bad


def _train_and_report(args, run_dir: Path, profile, start: float, loaded=None, scratch: Path | None = None) -> int:
    """Train every stage not yet done, then (on the chief) choose and evaluate the cascade and write the report.

    ``scratch``: this process is a worker but not the chief; it writes only there (``distribute.scratch_dir``)."""
    from . import cascade as cascade_lib
    from . import data, report, synthetic, thresholds, training

    chief = scratch is None
    data_dir, is_synthetic = args.data_dir, args.data_dir is None
    if is_synthetic:
        n_images = args.twin_images or profile.twin_images
        data_dir = args.twin_root / f"synthetic-{n_images}"
        print(f"data: the synthetic Severstal twin, {n_images} images, in {data_dir} (written once"
              f"{'' if chief else ', by the chief'})")
        if chief:
            synthetic.make_synthetic_severstal(data_dir, n_images, seed=0)
        else:
            _wait_for_twin(data_dir)
    else:
        is_synthetic = synthetic.is_twin(data_dir)  # a twin passed by --data-dir is still the twin
    table, bad_images = loaded if loaded is not None else (data.load_table(data_dir), {})
    settings = _settings(args, profile)
    settings.update({"data_dir": str(Path(data_dir).resolve()), "synthetic": is_synthetic,
                     "twin_version": synthetic.twin_version(data_dir) if is_synthetic else None,
                     "data": _data_fingerprint(data_dir, table), "train_configs": _train_configs(settings)})
    config = _prepare_run(args, run_dir, settings) if chief else _worker_config(args, run_dir, settings)
    # A worker reads nothing of the run that --fresh is emptying: it makes the same split from the same seed.
    resumed = chief or not args.fresh

    splits_path, plan_path = run_dir / "splits.csv", run_dir / PLAN_FILE
    if splits_path.is_file() and resumed:
        try:
            table = data.with_split(table, splits_path)
        except data.DataError as err:
            raise SystemExit(f"error: {err} ({data_dir}); use --fresh") from err
        moved = runfiles.read_json(plan_path)["moved_to_train"] if plan_path.is_file() else []
    else:
        table, moved = data.keep_classes_in_train(data.split_table(table, seed=config["seed"], keep_every_class=False))
        if chief:
            runfiles.write_text(splits_path, table[["ImageId", "split"]].to_csv(index=False))
    # Decided before any training: what each stage gets on this data (a small folder may leave a stage without
    # validation images, or a class without training images), written into the run and its report.
    plan = data_plan(table, config["stages"], moved=moved, bad_images=bad_images)
    if not chief:
        return _train_as_worker(args, run_dir, scratch, config, plan, table, Path(data_dir) / "train_images", start)
    runfiles.write_json(plan_path, plan)
    stats = data.dataset_stats(table[table["split"] == "train"])
    all_stats = data.dataset_stats(table)
    runfiles.write_json(run_dir / "dataset_stats.json", {
        "n_images": all_stats.n_images, "rows_per_class": all_stats.rows_per_class,
        "images_by_n_classes": all_stats.images_by_n_classes,
        "areas": {c: stats.areas[c].tolist() for c in stats.areas},
        "split_sizes": table["split"].value_counts().to_dict(),
    }, indent=None)
    limits = thresholds.area_thresholds(table)
    runfiles.write_json(run_dir / "thresholds.json", {
        "limits": {str(c): list(v) for c, v in limits.items()},
        "source": "2nd/98th percentiles of the training masks' areas (paper, Section 3.5)",
        "paper": {str(c): list(v) for c, v in thresholds.area_thresholds(None).items()},
    })
    _print_run_line(run_dir, profile.name, table, config, plan)
    if config["strategy"] != "default":
        print(f"strategy: {_strategy_line(config)}")
    images_dir = Path(data_dir) / "train_images"
    jobs = _jobs(config, table)
    trained, stopped = _train_stages(args, run_dir, jobs, plan, table, images_dir, start)
    if stopped is not None:
        return stopped

    final_start = time.time()
    evaluation = _build_cascade(run_dir, config, plan, table, images_dir, tta=tta_from_choice(args.tta))
    stage_times = {f"{b}/{s}": training.stage_seconds(run_dir, b, s) for b, s, *_ in jobs}
    final = time.time() - final_start
    total = sum(v for v in stage_times.values() if v is not None) + final
    runfiles.write_json(run_dir / "timing.json", {
        "total_s": total,  # every stage's recorded time (over all attempts) + the final steps of this process
        "stages_s": stage_times,  # None: not recorded (trained by a version that did not time stages)
        "final_s": final,  # choosing and evaluating the cascade, overlays
        "this_process_s": time.time() - start,
        "stages_trained": trained,  # by this process
    })
    report.build_report(run_dir)
    cascade_lib.RUNS_DIR.mkdir(parents=True, exist_ok=True)
    runfiles.write_text(cascade_lib.RUNS_DIR / cascade_lib.LATEST_FILE, str(run_dir.resolve()) + "\n")
    if evaluation is not None:
        dice = {name: variant["kaggle_mean_dice"] for name, variant in evaluation["variants"].items()}
        searched = f", {dice['searched thresholds']:.4f} with thresholds searched on validation" \
            if "searched thresholds" in dice else ""
        outcome = f"cascade Kaggle mean Dice on test {dice['paper cascade']:.4f} (paper's rule){searched}"
    else:
        outcome = "no cascade evaluated (see the data lines above)"
    print(f"done in {_duration(total)}{report.untimed_note(stage_times)}: {outcome}; report {run_dir / 'report.md'}")
    if evaluation is not None:
        print("use it: steeldefect.cascade.predict(image) (this run is now the default cascade)")
    print((run_dir / "tables" / "table7.md").read_text())
    return 0


def _print_run_line(run_dir: Path, profile_name: str, table, config: dict, plan: dict) -> None:
    from . import report

    print(f"run: {run_dir} · profile {profile_name} · {len(table)} images "
          f"(train {int((table['split'] == 'train').sum())}, val {int((table['split'] == 'val').sum())}, "
          f"test {int((table['split'] == 'test').sum())}) · image size {report.sizes_text(config)}")
    for line in report.plan_lines(plan):
        print(f"data: {line}")


def _jobs(config: dict, table) -> list[tuple]:
    """Every stage to run, in order: ``(backbone, stage, training images, TrainConfig, kind, work)``."""
    from . import loaders
    from .training import stage_task

    jobs = []
    for backbone in config["backbones"]:
        for stage in config["stages"]:
            task, class_id = stage_task(stage)
            n_train = len(loaders.select_rows(table[table["split"] == "train"], task, class_id))
            train_config = _train_config(config, stage)
            kind = _kind(stage)
            jobs.append((backbone, stage, n_train, train_config, kind, _work(backbone, kind, n_train, train_config.epochs)))
    return jobs


def _strategy_line(config: dict) -> str:
    """How the run's strategy divides a batch: over which devices or workers, and what each computes."""
    from . import training

    strategy = training.get_strategy(config["strategy"])
    replicas = strategy.num_replicas_in_sync
    where = (f"{distribute.num_workers()} worker(s), {replicas} replica(s) in all" if config["strategy"] == "multiworker"
             else f"{replicas} device(s): {', '.join(d.split('/')[-1] for d in strategy.extended.worker_devices)}")
    return (f"{config['strategy']} over {where}; --batch-size is the global batch ({config['batch_size']}, "
            f"{config['segmentation_batch_size']} for the UNets), divided between the replicas, with the learning rate "
            "of one device")


def _wait_for_twin(data_dir: Path, timeout_s: float = 3600.0) -> None:
    """A worker that is not the chief waits for the chief to write the twin (two writers would clash)."""
    from . import synthetic

    deadline = time.time() + timeout_s
    while not synthetic.is_twin(data_dir):
        if time.time() > deadline:
            raise SystemExit(f"error: the chief has not written the synthetic twin into {data_dir} in "
                             f"{_duration(timeout_s)}; is it running, with the same --twin-root and --twin-images?")
        time.sleep(2.0)


def _worker_config(args, run_dir: Path, settings: dict) -> dict:
    """A non-chief worker's view of the run's settings: its own, after the same check as the chief's (the chief
    refuses to resume a run made with other settings, and so does the worker, rather than wait for it)."""
    config_path = run_dir / runfiles.CONFIG_FILE
    if config_path.is_file() and not args.fresh:
        _refuse_other_settings(run_dir, runfiles.read_json(config_path), settings,
                               who=" (the chief refuses to resume it, and so does this worker)")
    return dict(settings)


def _train_as_worker(args, run_dir: Path, scratch: Path, config: dict, plan: dict, table, images_dir: Path,
                     start: float) -> int:
    """A non-chief worker's share: the same stages as the chief, in the same order, each starting from the chief's
    state of it; its files go to ``scratch``. Evaluation, the cascade and the report are the chief's."""
    kind, index = distribute.task()
    print(f"worker: {kind} {index} trains with the chief; its files go to {scratch}, the run's to {run_dir} (the "
          "chief's)", flush=True)
    print(f"strategy: {_strategy_line(config)}")
    _, stopped = _train_stages(args, run_dir, _jobs(config, table), plan, table, images_dir, start, scratch=scratch)
    if stopped is not None:
        return stopped
    shutil.rmtree(scratch, ignore_errors=True)  # the chief evaluates its own copy of every stage
    print(f"worker: training done in {_duration(time.time() - start)}; the chief evaluates the stages and writes the "
          f"tables, the cascade and the report into {run_dir}")
    return 0


def _train_stages(args, run_dir: Path, jobs: list, plan: dict, table, images_dir: Path, start: float,
                  scratch: Path | None = None) -> tuple[int, int | None]:
    """Train every stage of ``jobs`` not yet done, in order, each with its ``[i/n]`` line; the stages trained and
    the exit code 130 where the test hook (``STEELDEFECT_STOP_AFTER_STAGES``) stops it, else None.

    On the chief (``scratch`` None) a stage trains into ``run_dir`` and is evaluated there, a stage without training
    images is recorded as not trainable, and the line carries the run's ETA. A worker that is not the chief trains
    the same stages into ``scratch``, each starting from the chief's state of it, and evaluates nothing."""
    from . import training

    chief = scratch is None
    # A worker reads what is done once, before training: later the chief marks a stage done only after every worker
    # has trained it. With --fresh the chief empties the run, so nothing is done.
    done_before = set() if chief or args.fresh else {(b, s) for b, s, *_ in jobs if training.is_done(run_dir, b, s)}
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
    trained = 0
    for index, (backbone, stage, n_train, train_config, _, _) in enumerate(jobs, start=1):
        reason = plan["stages"][stage]["not_trainable"]
        if chief:
            done = training.is_done(run_dir, backbone, stage)
            mark, eta = (" · done, skipped", "") if done else ("", _eta(run_dir, jobs, index))
        else:
            done = (backbone, stage) in done_before or bool(reason)
            mark, eta = " · skipped" if done else "", ""
        print(f"[{index}/{len(jobs)}] {backbone} · {stage} · {n_train} training images · {train_config.epochs} "
              f"epochs{mark} · elapsed {_duration(time.time() - start)}{eta}", flush=True)
        if done:
            continue
        if reason:
            training.record_not_trainable(run_dir, backbone, stage, reason)
            print(f"    not trainable: {reason}")
            continue
        if not chief and not args.fresh:
            training.mirror_chief_stage(run_dir, scratch, backbone, stage)
        training.train_stage(run_dir if chief else scratch, backbone, stage, train_config, table=table,
                             images_dir=images_dir, verbose=2 if not sys.stdout.isatty() else "auto", evaluate=chief)
        trained += 1
        if stop_after and trained >= stop_after:
            print(f"stopping after {trained} stage(s) ({STOP_AFTER_ENV})")
            return trained, 130
    return trained, None


def _eta(run_dir: Path, jobs: list, index: int) -> str:
    """`` · ETA run ...``: the time the stages left from ``jobs[index - 1]`` on will take, from the finished ones."""
    from . import training

    finished = [(k, w, training.stage_seconds(run_dir, b, s)) for b, s, _, _, k, w in jobs
                if training.is_done(run_dir, b, s)]
    left = estimate_remaining([f for f in finished if f[2] is not None],
                              [(k, w) for b, s, _, _, k, w in jobs[index - 1:] if not training.is_done(run_dir, b, s)])
    return f" · ETA run {_duration(left)}" if left is not None else ""


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


def _build_cascade(run_dir: Path, config: dict, plan: dict, table, images_dir: Path, tta: str | None = None
                   ) -> dict | None:
    """Choose each stage's backbone on validation, search thresholds, evaluate on test, draw overlays; the test
    evaluation, or None where the data leaves no cascade to build or no test image to evaluate it on. ``tta``: the
    cascade's flip TTA (``Cascade``), used for the threshold search and the evaluation and saved with it."""
    from . import cascade as cascade_lib
    from . import thresholds
    from .cascade import Cascade

    if any(plan["stages"][s]["not_trainable"] for s in CLASSIFICATION_STAGES) or all(
            plan["stages"][s]["not_trainable"] for s in config["stages"] if s not in CLASSIFICATION_STAGES):
        print("cascade: not built, a stage it needs has no training image (see the data lines above)")
        return None
    print("cascade: choosing each stage's backbone on the validation split", flush=True)
    choice = _choose_cascade(run_dir, config)
    choice["never_predicted"] = plan["never_predicted"]
    choice["tta"] = tta
    if tta:
        print(f"cascade: flip TTA {tta} (each stage averaged over the flipped copies)")
    runfiles.write_json(run_dir / "cascade.json", choice)
    cascade = Cascade.load(run_dir)
    if config.get("run_eagerly"):
        # A tiny run (the smoke profile) trained eagerly evaluates eagerly too: tracing the three models' forward
        # passes costs more than the few images they see here.
        for model in (cascade.binary, cascade.multilabel, *cascade.segmentation.values()):
            model.run_eagerly = True
    if (table["split"] == "val").any():
        defect, class_probs, mask_probs, truth = cascade_lib.validation_outputs(cascade, table, images_dir, "val")
        choice["searched"] = {str(c): v for c, v in thresholds.search_thresholds(
            class_probs, mask_probs.astype("float32"), truth, defect_probs=defect).items()}
        # What Cascade.load(run_dir) would now read, without building and loading the models a second time.
        cascade.searched = {int(c): v for c, v in choice["searched"].items()}
        choice["validation"] = _validation_dice(cascade, defect, class_probs, mask_probs, truth)
        runfiles.write_json(run_dir / "cascade.json", choice)
        if choice["validation"]["paper_rule"] < choice["validation"]["all_empty"]:
            print(f"cascade: on validation the paper's rule scores {choice['validation']['paper_rule']:.4f}, below "
                  f"predicting no defect ({choice['validation']['all_empty']:.4f}); the searched thresholds score "
                  f"{choice['validation']['searched']:.4f} (Cascade.load(run, use_searched=True))")
    else:
        print("cascade: no validation image, so no thresholds searched (the paper's rule only)")
    if not (table["split"] == "test").any():
        print("cascade: no test image, so no test evaluation")
        return None
    print("cascade: evaluating on the test split", flush=True)
    evaluation = cascade_lib.evaluate_cascade(cascade, table, images_dir, "test")
    runfiles.write_json(run_dir / "cascade_eval.json", evaluation)
    _overlays(cascade, table, images_dir, run_dir / "figures")
    return evaluation


def _validation_dice(cascade, defect, class_probs, mask_probs, truth) -> dict:
    """Kaggle mean Dice on the validation images of the paper's rule, of the searched thresholds and of predicting
    every mask empty (the reference a cascade must beat)."""
    from . import metrics

    found = {}
    for name, searched in (("paper_rule", False), ("searched", True)):
        masks, _, _ = cascade.decide(defect, class_probs, mask_probs.astype("float32"), searched=searched)
        found[name] = float(metrics.kaggle_dice_per_pair(masks, truth).mean())
    found["all_empty"] = float((~truth.any(axis=(1, 2))).mean())
    return found


def _choose_cascade(run_dir: Path, config: dict) -> dict:
    """Per stage, the backbone with the best validation value: lowest BCE (classifiers), highest Dice (UNets);
    among the backbones that trained it (the first of them where no validation value exists). A segmentation stage
    that no backbone could train is left out: the cascade never predicts its class."""
    from . import training

    def metrics_of(backbone, stage):
        return runfiles.read_json(training.stage_dir(run_dir, backbone, stage) / "metrics.json").get("val") or {}

    def val_dice(backbone, stage):
        found = metrics_of(backbone, stage)
        if stage != "joint":
            return found.get("dice_coef")
        values = [v["dice_coef"] for v in found.values() if v and v["dice_coef"] is not None]
        return sum(values) / len(values) if values else None

    choice: dict = {"image_size": config["image_size"]}
    segmentation = {}
    for stage in config["stages"]:
        trained = [b for b in config["backbones"] if training.is_trained(run_dir, b, stage)]
        if not trained:
            continue
        if stage in CLASSIFICATION_STAGES:
            scores = [(metrics_of(b, stage).get("binary_crossentropy"), b) for b in trained]
            best = min((s for s in scores if s[0] is not None), default=(None, trained[0]))[1]
        else:
            best = max(trained, key=lambda b, s=stage: -1.0 if val_dice(b, s) is None else val_dice(b, s))
        where = str(training.stage_dir(run_dir, best, stage).relative_to(run_dir))
        if stage in CLASSIFICATION_STAGES:
            choice[stage] = where
        else:
            segmentation["0" if stage == "joint" else stage.removeprefix("class")] = where
    choice["segmentation"] = segmentation
    choice["limits"] = runfiles.read_json(run_dir / "thresholds.json")["limits"]
    return choice


def _overlays(cascade, table, images_dir: Path, figures: Path, n: int = 4) -> None:
    import cv2

    from . import cascade as cascade_lib

    figures.mkdir(parents=True, exist_ok=True)
    rows = table[(table["split"] == "test") & table["has_defect"]].head(n)
    for _, row in rows.iterrows():
        result = cascade.predict(images_dir / row["ImageId"])
        predicted = cascade_lib.overlay(images_dir / row["ImageId"], result.masks)
        truth = cascade_lib.overlay(images_dir / row["ImageId"], cascade_lib.true_masks(row))
        for panel, text in ((truth, "ground truth"), (predicted, "cascade prediction")):
            cv2.putText(panel, text, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2, cv2.LINE_AA)
        picture = cv2.vconcat([truth, predicted])
        cv2.imwrite(str(figures / f"overlay_{Path(row['ImageId']).stem}.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))


def main(argv: list[str] | None = None) -> int:
    """Run the experiments from the command line.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``); see ``--help``.

    Returns:
        The process exit code (0 on success).

    Example:
        >>> main(["--profile", "smoke"])  # tiny twin, all five backbones, one epoch each
        0

    Reproduces the paper's Section 4: Tables 2-7 and Figures 3, 4, 9, 11-13.
    """
    args = _parser().parse_args(argv)
    try:
        args.strategy = distribute.resolve(args.strategy)
    except distribute.ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    multiworker = args.strategy == "multiworker"
    if args.report_only:
        # Tables and figures come from the run's files: TensorFlow (seconds to import) is not needed.
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        op_errors: tuple[type[BaseException], ...] = ()
    else:
        _quiet(args.verbose, _start_cluster if multiworker else None)
        import tensorflow as tf

        op_errors = (tf.errors.OpError,)

    from . import data

    previous = None
    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM) ends the run like Ctrl-C: the stage being trained records its time before exiting (its
        # last finished epoch is already saved), so the rerun resumes it with nothing lost but the epoch in progress.
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except (FileNotFoundError, data.DataError, runfiles.RunFileError) as err:
        # Expected failures (a missing or damaged file, bad data, a stale model file): one line, no traceback,
        # unless --verbose asks for it. CascadeError is a RunFileError.
        if args.verbose:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    except op_errors as err:
        if not multiworker:
            raise
        if args.verbose:
            traceback.print_exc()
        # A worker that dies (or is stopped) takes the collective operations of the others with it.
        print(f"error: training stopped on {distribute.task()[0]} {distribute.task()[1]}: {type(err).__name__}: "
              f"{str(err).splitlines()[0] if str(err) else ''}. In a cluster that means a worker was lost: start the "
              "same command on every worker again to resume (finished stages are kept, the stage in progress goes "
              "on from its last finished epoch)", file=sys.stderr)
        return 3
    except (KeyboardInterrupt, Terminated) as err:
        print("\ninterrupted: rerun the same command to resume (finished stages are kept; the stage in progress goes on "
              "from its last finished epoch)", file=sys.stderr)
        return 128 + (err.signum if isinstance(err, Terminated) else signal.SIGINT)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so that the run unwinds through its finally blocks."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _terminate(signum, frame):
    raise Terminated(signum)


if __name__ == "__main__":
    sys.exit(main())


