"""``python -m steeldefect.experiments``: train, evaluate and report the paper's experiments end to end.

With no ``--data-dir`` it writes the synthetic twin (once, into ``data/``) and runs the ``default`` profile: all five
backbones, every stage, Tables 2-7, figures and the cascade. Given a Kaggle folder it runs the same code on it.
Everything lands in a run directory (DESIGN.md); rerunning the same command resumes: finished stages are
skipped, an interrupted one continues from its last epoch. ``--report-only`` rebuilds tables and figures from the
run's files without training.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from . import distribute, quiet_tensorflow, runfiles, runplan
from .config import (
    BACKBONES,
    CLASSIFICATION_STAGES,
    FREEZE_CHOICES,
    MULTILABEL_POS_WEIGHTS,
    PROFILES,
    SPLIT_SEED,
    STAGE1_ENCODER,
    TTA_CHOICES,
    UNET_MULTIPLE,
    check_image_size,
    tta_from_choice,
)
from .runplan import Job

DATA_DIR = Path("data")  # relative to the working directory, as data/README.md says
STOP_AFTER_ENV = "STEELDEFECT_STOP_AFTER_STAGES"  # test hook: exit as if interrupted after N trained stages
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
    parser.add_argument("--max-steps-per-epoch", type=int, metavar="N",
                        help="a dry run: train at most N batches per epoch (and validate on N), while every split is "
                             "still evaluated, the thresholds searched and the report written on all the images: how "
                             "long and how much memory a full-size run's other phases take, before renting a GPU")
    parser.add_argument("--cache", choices=("auto", "on", "off"), default="auto",
                        help="keep decoded images in memory between epochs: auto (when the stage's images fit in half "
                             "the memory available, else off with a message), on (always) or off")
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
        try:
            check_image_size(args.image_size)
        except ValueError:
            fail(f"--image-size: {' '.join(map(str, args.image_size))} is not a valid model input; height and width "
                 f"must be positive multiples of {UNET_MULTIPLE} (the UNet halves them five times), e.g. 64 320, "
                 "128 800 or 256 1600")
    for option, value, least in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                                 ("--twin-images", args.twin_images, MIN_TWIN_IMAGES),
                                 ("--max-steps-per-epoch", args.max_steps_per_epoch, 1)):
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


def run(args) -> int:
    from . import report

    start = time.time()
    check_args(args)
    profile = PROFILES[args.profile]
    run_dir = args.run_dir or runfiles.RUNS_DIR / profile.name
    if not args.report_only and distribute.is_chief():
        print(runplan.first_line(args), flush=True)
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
    with runfiles.run_lock(run_dir):
        if args.fresh:
            runfiles.empty_run_dir(run_dir)
        return _train_and_report(args, run_dir, profile, start, loaded)


def _load_data(data_dir: Path, skip_bad_images: bool):
    """The table of a Kaggle-layout folder and its bad images ``{ImageId: problem}``; a bad image stops the command
    with one line per file, unless ``skip_bad_images`` leaves it out (reported, and listed in the run)."""
    from . import data

    try:
        table, bad = data.load_usable(data_dir, skip_bad_images=skip_bad_images)
    except data.BadImagesError as err:
        for image_id, problem in err.bad.items():
            print(f"error: {err.images_dir / image_id}: {problem}", file=sys.stderr)
        raise SystemExit(f"error: {len(err.bad)} of {err.n_images} images in {err.images_dir} cannot be used (above); "
                         "fix or remove them, or pass --skip-bad-images to train without them") from None
    if bad:
        print(f"data: skipping {len(bad)} bad image(s) (--skip-bad-images): {', '.join(bad)}")
    return table, bad


@dataclasses.dataclass(frozen=True)
class RunState:
    """What the steps of a run share once its data, settings, split and plan are settled."""

    run_dir: Path
    config: dict  # the run's config.json (its settings)
    plan: dict  # runplan.data_plan: what each stage gets on this data
    table: Any  # pandas.DataFrame: one row per image, with its split
    images_dir: Path
    start: float  # time.time() when the command started
    fresh: bool  # --fresh: the chief empties the run; a worker then reads nothing of it
    scratch: Path | None = None  # a worker that is not the chief writes only here (distribute.scratch_dir)

    @property
    def chief(self) -> bool:
        return self.scratch is None


def _train_and_report(args, run_dir: Path, profile, start: float, loaded=None, scratch: Path | None = None) -> int:
    """Train every stage not yet done, then (on the chief) choose and evaluate the cascade and write the report.

    ``scratch``: this process is a worker but not the chief; it writes only there (``distribute.scratch_dir``)."""
    from . import data

    chief = scratch is None
    data_dir, is_synthetic = _data_source(args, profile, chief)
    table, bad_images = loaded if loaded is not None else (data.load_table(data_dir), {})
    settings = _run_settings(args, profile, data_dir, is_synthetic, table)
    config = (runplan.settle_config(run_dir, settings) if chief
              else runplan.worker_config(run_dir, settings, fresh=args.fresh))
    # A worker reads nothing of the run that --fresh is emptying: it makes the same split from the same seed.
    table, moved = _split(run_dir, table, config, data_dir, resumed=chief or not args.fresh, write=chief)
    # Decided before any training: what each stage gets on this data (a small folder may leave a stage without
    # validation images, or a class without training images), written into the run and its report.
    plan = runplan.data_plan(table, config["stages"], moved=moved, bad_images=bad_images)
    state = RunState(run_dir, config, plan, table, Path(data_dir) / "train_images", start, args.fresh, scratch)
    if not chief:
        return _train_as_worker(state)
    _write_data_files(state)
    _print_run_line(state, profile.name)
    if config["strategy"] != "default":
        print(f"strategy: {distribute.describe(config)}")
    jobs = runplan.jobs(config, table)
    estimate = runplan.estimate_seconds(config, table, jobs)
    print(f"estimate: {runplan.about(estimate['total'])} on a 2-core CPU for these settings and images (the stages "
          f"{runplan.about(estimate['training'])}, the cascade {runplan.about(estimate['cascade'])}); a GPU takes a "
          "fraction of it", flush=True)
    trained, stopped = _train_stages(state, jobs)
    if stopped is not None:
        return stopped
    return _finish(state, jobs, trained, tta=tta_from_choice(args.tta), estimate=estimate)


def _data_source(args, profile, chief: bool) -> tuple[Path, bool]:
    """The data folder and whether it is the synthetic twin; without ``--data-dir`` the chief writes the twin (once)
    and a worker waits for it."""
    from . import synthetic

    if args.data_dir is not None:
        return args.data_dir, synthetic.is_twin(args.data_dir)  # a twin passed by --data-dir is still the twin
    n_images = args.twin_images or profile.twin_images
    data_dir = args.twin_root / f"synthetic-{n_images}"
    print(f"data: the synthetic Severstal twin, {n_images} images, in {data_dir} (written once"
          f"{'' if chief else ', by the chief'})")
    if chief:
        synthetic.make_synthetic_severstal(data_dir, n_images, seed=0)
    else:
        _wait_for_twin(data_dir)
    return data_dir, True


def _run_settings(args, profile, data_dir: Path, is_synthetic: bool, table) -> dict:
    """Everything config.json records of the run: the resolved settings, the data and each stage's TrainConfig."""
    from . import synthetic

    settings = runplan.resolve_settings(args, profile)
    settings.update({"data_dir": str(Path(data_dir).resolve()), "synthetic": is_synthetic,
                     "twin_version": synthetic.twin_version(data_dir) if is_synthetic else None,
                     "data": runplan.data_fingerprint(data_dir, table), "train_configs": runplan.train_configs(settings)})
    return settings


def _split(run_dir: Path, table, config: dict, data_dir: Path, *, resumed: bool, write: bool):
    """``(table with its split, images moved into train)``: the run's splits.csv when it has one (a resumed run),
    else a new seeded split, written when ``write``."""
    from . import data

    splits_path, plan_path = run_dir / runfiles.SPLITS_FILE, run_dir / runfiles.PLAN_FILE
    if splits_path.is_file() and resumed:
        try:
            table = data.with_split(table, splits_path)
        except data.DataError as err:
            raise SystemExit(f"error: {err} ({data_dir}); use --fresh") from err
        moved = runfiles.read_json(plan_path)["moved_to_train"] if plan_path.is_file() else []
        return table, moved
    table, moved = data.keep_classes_in_train(data.split_table(table, seed=config["seed"], keep_every_class=False))
    if write:
        runfiles.write_text(splits_path, table[["ImageId", "split"]].to_csv(index=False))
    return table, moved


def _write_data_files(state: RunState) -> None:
    """The plan, the dataset's statistics and the area limits (paper, Section 3.5), written before training."""
    from . import data, thresholds

    run_dir, table = state.run_dir, state.table
    runfiles.write_json(run_dir / runfiles.PLAN_FILE, state.plan)
    stats = data.dataset_stats(table[table["split"] == "train"])
    all_stats = data.dataset_stats(table)
    runfiles.write_json(run_dir / runfiles.STATS_FILE, {
        "n_images": all_stats.n_images, "rows_per_class": all_stats.rows_per_class,
        "images_by_n_classes": all_stats.images_by_n_classes,
        "areas": {c: stats.areas[c].tolist() for c in stats.areas},
        "split_sizes": table["split"].value_counts().to_dict(),
    }, indent=None)
    limits = thresholds.area_thresholds(table)
    runfiles.write_json(run_dir / runfiles.THRESHOLDS_FILE, {
        "limits": {str(c): list(v) for c, v in limits.items()},
        "source": "2nd/98th percentiles of the training masks' areas (paper, Section 3.5)",
        "paper": {str(c): list(v) for c, v in thresholds.area_thresholds(None).items()},
    })


def _finish(state: RunState, jobs: list[Job], trained: int, *, tta: str | None, estimate: dict) -> int:
    """After training: the cascade, timing.json, the report, the default cascade, and the closing lines."""
    from . import report, training

    final_start = time.time()
    phases: dict = {}  # meter.phase: each phase after training, its time, images/s and own peak memory
    evaluation = _build_cascade(state, tta=tta, phases=phases)
    timings = {f"{j.backbone}/{j.stage}": training.stage_timing(state.run_dir, j.backbone, j.stage) or {} for j in jobs}
    stage_times = {name: found.get("seconds") for name, found in timings.items()}
    final = time.time() - final_start
    total = sum(v for v in stage_times.values() if v is not None) + final
    timing = {
        "total_s": total,  # every stage's recorded time (over all attempts) + the final steps of this process
        "stages_s": stage_times,  # None: not recorded (trained by a version that did not time stages)
        "final_s": final,  # choosing and evaluating the cascade, overlays
        "this_process_s": time.time() - state.start,
        "stages_trained": trained,  # by this process
        # each stage's peak resident memory, training and evaluating it (None: not recorded)
        "stages_peak_rss_gib": {name: found.get("peak_rss_gib") for name, found in timings.items()},
        "phases": phases,
        "estimate_s": estimate,  # what the run said it would take before training (runplan.estimate_seconds)
    }
    runfiles.write_json(state.run_dir / runfiles.TIMING_FILE, timing)
    report.build_report(state.run_dir)
    runfiles.record_latest(state.run_dir)
    if evaluation is not None:
        dice = {name: variant["kaggle_mean_dice"] for name, variant in evaluation["variants"].items()}
        searched = f", {dice['searched thresholds']:.4f} with thresholds searched on validation" \
            if "searched thresholds" in dice else ""
        outcome = f"cascade Kaggle mean Dice on test {dice['paper cascade']:.4f} (paper's rule){searched}"
    else:
        outcome = "no cascade evaluated (see the data lines above)"
    print(f"done in {_duration(total)}{report.untimed_note(stage_times)}: {outcome}; "
          f"report {state.run_dir / runfiles.REPORT_FILE}")
    if evaluation is not None:
        print("use it: steeldefect.cascade.predict(image) (this run is now the default cascade)")
    print((state.run_dir / "tables" / "table7.md").read_text())
    return 0


def _print_run_line(state: RunState, profile_name: str) -> None:
    from . import report

    table = state.table
    print(f"run: {state.run_dir} · profile {profile_name} · {len(table)} images "
          f"(train {int((table['split'] == 'train').sum())}, val {int((table['split'] == 'val').sum())}, "
          f"test {int((table['split'] == 'test').sum())}) · image size {report.sizes_text(state.config)}")
    for line in report.plan_lines(state.plan):
        print(f"data: {line}")
    if state.config.get("max_steps_per_epoch"):
        print(f"dry run: {report.dry_run_text(state.config)}")


def _wait_for_twin(data_dir: Path, timeout_s: float = 3600.0) -> None:
    """A worker that is not the chief waits for the chief to write the twin (two writers would clash)."""
    from . import synthetic

    deadline = time.time() + timeout_s
    while not synthetic.is_twin(data_dir):
        if time.time() > deadline:
            raise SystemExit(f"error: the chief has not written the synthetic twin into {data_dir} in "
                             f"{_duration(timeout_s)}; is it running, with the same --twin-root and --twin-images?")
        time.sleep(2.0)


def _train_as_worker(state: RunState) -> int:
    """A non-chief worker's share: the same stages as the chief, in the same order, each starting from the chief's
    state of it; its files go to ``scratch``. Evaluation, the cascade and the report are the chief's."""
    kind, index = distribute.task()
    print(f"worker: {kind} {index} trains with the chief; its files go to {state.scratch}, the run's to "
          f"{state.run_dir} (the chief's)", flush=True)
    print(f"strategy: {distribute.describe(state.config)}")
    _, stopped = _train_stages(state, runplan.jobs(state.config, state.table))
    if stopped is not None:
        return stopped
    shutil.rmtree(state.scratch, ignore_errors=True)  # the chief evaluates its own copy of every stage
    print(f"worker: training done in {_duration(time.time() - state.start)}; the chief evaluates the stages and writes "
          f"the tables, the cascade and the report into {state.run_dir}")
    return 0


def _train_stages(state: RunState, jobs: list[Job]) -> tuple[int, int | None]:
    """Train every stage of ``jobs`` not yet done, in order, each with its ``[i/n]`` line; the stages trained and
    the exit code 130 where the test hook (``STEELDEFECT_STOP_AFTER_STAGES``) stops it, else None.

    On the chief (``scratch`` None) a stage trains into ``run_dir`` and is evaluated there, a stage without training
    images is recorded as not trainable, and the line carries the run's ETA. A worker that is not the chief trains
    the same stages into ``scratch``, each starting from the chief's state of it, and evaluates nothing."""
    from . import training

    run_dir, chief = state.run_dir, state.chief
    # A worker reads what is done once, before training: later the chief marks a stage done only after every worker
    # has trained it. With --fresh the chief empties the run, so nothing is done.
    done_before = set() if chief or state.fresh else {(j.backbone, j.stage) for j in jobs
                                                      if runfiles.is_done(run_dir, j.backbone, j.stage)}
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
    trained = 0
    for index, (backbone, stage, n_train, train_config, _, _) in enumerate(jobs, start=1):
        reason = state.plan["stages"][stage]["not_trainable"]
        if chief:
            done = runfiles.is_done(run_dir, backbone, stage)
            mark, eta = (" · done, skipped", "") if done else ("", _eta(run_dir, jobs, index))
        else:
            done = (backbone, stage) in done_before or bool(reason)
            mark, eta = " · skipped" if done else "", ""
        print(f"[{index}/{len(jobs)}] {backbone} · {stage} · {n_train} training images · {train_config.epochs} "
              f"epochs{mark} · elapsed {_duration(time.time() - state.start)}{eta}", flush=True)
        if done:
            continue
        if reason:
            training.record_not_trainable(run_dir, backbone, stage, reason)
            print(f"    not trainable: {reason}")
            continue
        if not chief and not state.fresh:
            training.mirror_chief_stage(run_dir, state.scratch, backbone, stage)
        training.train_stage(run_dir if chief else state.scratch, backbone, stage, train_config, table=state.table,
                             images_dir=state.images_dir, verbose=2 if not sys.stdout.isatty() else "auto",
                             evaluate=chief)
        trained += 1
        if stop_after and trained >= stop_after:
            print(f"stopping after {trained} stage(s) ({STOP_AFTER_ENV})")
            return trained, 130
    return trained, None


def _eta(run_dir: Path, jobs: list[Job], index: int) -> str:
    """`` · ETA run ...``: the time the stages left from ``jobs[index - 1]`` on will take, from the finished ones."""
    from . import training

    finished = [(j.kind, j.work, training.stage_seconds(run_dir, j.backbone, j.stage)) for j in jobs
                if runfiles.is_done(run_dir, j.backbone, j.stage)]
    left = runplan.estimate_remaining([f for f in finished if f[2] is not None],
                                      [(j.kind, j.work) for j in jobs[index - 1:]
                                       if not runfiles.is_done(run_dir, j.backbone, j.stage)])
    return f" · ETA run {_duration(left)}" if left is not None else ""


def _build_cascade(state: RunState, tta: str | None = None, phases: dict | None = None) -> dict | None:
    """Choose each stage's backbone on validation, search thresholds, evaluate on test, draw overlays; the test
    evaluation, or None where the data leaves no cascade to build or no test image to evaluate it on. ``tta``: the
    cascade's flip TTA (``Cascade``), used for the threshold search and the evaluation and saved with it."""
    from . import cascade as cascade_lib
    from . import meter

    run_dir, config, plan, table = state.run_dir, state.config, state.plan, state.table
    phases = {} if phases is None else phases
    n_images = {split: int((table["split"] == split).sum()) for split in ("val", "test")}
    if any(plan["stages"][s]["not_trainable"] for s in CLASSIFICATION_STAGES) or all(
            plan["stages"][s]["not_trainable"] for s in config["stages"] if s not in CLASSIFICATION_STAGES):
        print("cascade: not built, a stage it needs has no training image (see the data lines above)")
        return None
    print("cascade: choosing each stage's backbone on the validation split", flush=True)
    limits = runfiles.read_json(run_dir / runfiles.THRESHOLDS_FILE)["limits"]
    with meter.phase(phases, "choosing and loading the cascade"):
        cascade = cascade_lib.Cascade.from_folders(
            _chosen_stages(run_dir, config), config["image_size"],
            limits={int(c): tuple(v) for c, v in limits.items()},
            never_predicted={int(c): why for c, why in plan["never_predicted"].items()}, tta=tta)
    if tta:
        print(f"cascade: flip TTA {tta} (each stage averaged over the flipped copies)")
    cascade.save(run_dir)  # names the stages' folders: no model is copied
    if config.get("run_eagerly"):
        # A tiny run (the smoke profile) trained eagerly evaluates eagerly too: tracing the three models' forward
        # passes costs more than the few images they see here.
        for model in (cascade.binary, cascade.multilabel, *cascade.segmentation.values()):
            model.run_eagerly = True
    if (table["split"] == "val").any():
        # streamed: what the search needs per image, not the masks (the same memory at 200 and at 2,263 images)
        with meter.phase(phases, "validation: every stage, threshold search", n_images["val"]):
            summary = cascade_lib.validation_summary(cascade, table, state.images_dir, "val")
            cascade.searched = summary.search(binary_threshold=cascade.binary_threshold)
            cascade.validation = cascade_lib.validation_dice(cascade, summary)
        cascade.save(run_dir)
        found = cascade.validation
        if found["paper_rule"] < found["all_empty"]:
            print(f"cascade: on validation the paper's rule scores {found['paper_rule']:.4f}, below "
                  f"predicting no defect ({found['all_empty']:.4f}); the searched thresholds score "
                  f"{found['searched']:.4f} (Cascade.load(run, use_searched=True))")
    else:
        print("cascade: no validation image, so no thresholds searched (the paper's rule only)")
    if not (table["split"] == "test").any():
        print("cascade: no test image, so no test evaluation")
        return None
    print("cascade: evaluating on the test split", flush=True)
    with meter.phase(phases, "test: the cascade's variants", n_images["test"]):
        evaluation = cascade_lib.evaluate_cascade(cascade, table, state.images_dir, "test")
    runfiles.write_json(run_dir / runfiles.CASCADE_EVAL_FILE, evaluation)
    shown = table[(table["split"] == "test") & table["has_defect"]].head(4)
    with meter.phase(phases, "overlays", len(shown)):
        cascade_lib.overlay_figures(cascade, shown, state.images_dir, run_dir / "figures")
    return evaluation


def _chosen_stages(run_dir: Path, config: dict) -> dict:
    """Per stage, the folder of the backbone with the best validation value (``Cascade.from_folders``' argument):
    lowest BCE (classifiers), highest Dice (UNets); among the backbones that trained it (the first of them where no
    validation value exists). A segmentation stage that no backbone could train is left out: the cascade never
    predicts its class."""
    from . import training

    def val_metrics(backbone, stage):
        return (runfiles.stage_metrics(run_dir, backbone, stage) or {}).get("val") or {}

    def val_dice(backbone, stage):
        found = val_metrics(backbone, stage)
        if stage != runfiles.JOINT_STAGE:
            return found.get("dice_coef")
        values = [v["dice_coef"] for v in found.values() if v and v["dice_coef"] is not None]
        return sum(values) / len(values) if values else None

    chosen: dict = {"segmentation": {}}
    for stage in config["stages"]:
        trained = [b for b in config["backbones"] if training.is_trained(run_dir, b, stage)]
        if not trained:
            continue
        if stage in CLASSIFICATION_STAGES:
            scores = [(val_metrics(b, stage).get("binary_crossentropy"), b) for b in trained]
            best = min((s for s in scores if s[0] is not None), default=(None, trained[0]))[1]
            chosen[stage] = runfiles.stage_dir(run_dir, best, stage)
        else:
            best = max(trained, key=lambda b, s=stage: -1.0 if val_dice(b, s) is None else val_dice(b, s))
            chosen["segmentation"][runfiles.segmentation_key(stage)] = runfiles.stage_dir(run_dir, best, stage)
    return chosen


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


