"""``python -m steeldefect.experiments``: train, evaluate and report the paper's experiments end to end.

With no ``--data-dir`` it writes the synthetic twin (once, into ``data/``) and runs the ``quick`` profile: all five
backbones, every stage, Tables 2-7, figures and the cascade. Given a Kaggle folder it runs the same code on it.
Everything lands in a run directory (DESIGN.md); rerunning the same command resumes: finished stages are
skipped, an interrupted one continues from its last epoch. ``--report-only`` rebuilds tables and figures from the
run's files without training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

from . import quiet_tensorflow

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, one process per run directory is up to the user
    fcntl = None
from .config import (
    BACKBONES,
    CLASSIFICATION_STAGES,
    MULTILABEL_POS_WEIGHTS,
    PROFILES,
    SPLIT_SEED,
    STAGE1_ENCODER,
    STEP_COST_MS,
)

DATA_DIR = Path("data")  # relative to the working directory, as data/README.md says
RUNS_DIR = Path("runs")
STOP_AFTER_ENV = "STEELDEFECT_STOP_AFTER_STAGES"  # test hook: exit as if interrupted after N trained stages
LOCK_FILE = "run.lock"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m steeldefect.experiments",
        description="Reproduce Yulianto et al. (2023): train the three stages for EfficientNet B0-B4, evaluate, "
        "and write Tables 2-7 and the figures into a run directory.",
    )
    parser.add_argument("--data-dir", type=Path, help="Kaggle-layout folder (train.csv, train_images/); default: "
                        "the synthetic twin, generated into data/ on first use")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                        help="scale: smoke (CI), quick (default, the twin), paper (Kaggle data, GPU)")
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
    parser.add_argument("--strategy", choices=("default", "mirrored", "multiworker"), default="default")
    parser.add_argument("--mixed-precision", nargs="?", const="mixed_float16", default=None,
                        choices=("mixed_float16", "mixed_bfloat16"), help="mixed precision policy (GPU)")
    parser.add_argument("--twin-images", type=int, help="size of the synthetic twin (default: the profile's)")
    parser.add_argument("--twin-root", type=Path, default=DATA_DIR,
                        help="folder the synthetic twin is written under, as synthetic-N/ (default: data/)")
    parser.add_argument("--fresh", action="store_true", help="delete the run directory and start over")
    parser.add_argument("--report-only", action="store_true", help="rebuild tables and figures, no training")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's logs and warnings")
    return parser


def _quiet(verbose: bool) -> None:
    """Silence TensorFlow's C++ logs and Python warnings (must run before TensorFlow is imported)."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_tensorflow()


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
    image_size = tuple(args.image_size) if args.image_size else profile.image_size
    encoder_weights = profile.encoder_weights if args.encoder_weights is None else args.encoder_weights
    if str(encoder_weights).lower() == "none":
        encoder_weights = None
    return {
        "profile": profile.name,
        "backbones": list(args.backbones or profile.backbones),
        "stages": list(profile.stages()),
        "image_size": list(image_size),
        "classifier_epochs": args.epochs or profile.classifier_epochs,
        "segmentation_epochs": args.epochs or profile.segmentation_epochs,
        "batch_size": args.batch_size or profile.batch_size,
        "learning_rate": profile.learning_rate,
        "segmentation_loss": profile.segmentation_loss,
        "multilabel_pos_weight": None if args.multilabel_pos_weight == "none" else args.multilabel_pos_weight,
        "head": profile.head,
        "encoder_weights": None if encoder_weights is None else str(encoder_weights),
        "seed": args.seed,
        "strategy": args.strategy,
        "mixed_precision": args.mixed_precision,
    }


def _train_config(settings: dict, stage: str):
    from .config import TrainConfig, starts_from_scratch

    epochs = settings["classifier_epochs"] if _kind(stage) == "classifier" else settings["segmentation_epochs"]
    return TrainConfig(
        image_size=tuple(settings["image_size"]), batch_size=settings["batch_size"], epochs=epochs,
        learning_rate=settings["learning_rate"], encoder_weights=settings["encoder_weights"],
        bn_momentum=0.9 if starts_from_scratch(settings["encoder_weights"]) else None, segmentation_loss=settings["segmentation_loss"],
        multilabel_pos_weight=settings.get("multilabel_pos_weight"), head=settings["head"],
        seed=settings["seed"], strategy=settings["strategy"], mixed_precision=settings["mixed_precision"],
    )


def _prepare_run(args, run_dir: Path, settings: dict) -> dict:
    """Write config.json once; a rerun must match it (else --fresh)."""
    config_path = run_dir / "config.json"
    if config_path.is_file():
        saved = json.loads(config_path.read_text())
        differing = [k for k, v in settings.items() if saved.get(k) != v]
        if differing:
            raise SystemExit(
                f"error: {run_dir} holds a run with other settings ({', '.join(differing)}); use --fresh to start "
                "over or --run-dir for a new run"
            )
        return saved
    run_dir.mkdir(parents=True, exist_ok=True)
    import keras
    import tensorflow as tf

    config = dict(settings)
    config["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``run_dir/run.lock`` (an advisory ``flock``, freed by the system when the process ends) while a run
    trains: a second process on the same run directory would train the same stages into the same files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    if fcntl is None:
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise SystemExit(f"error: {run_dir} is in use by {holder}; wait for it to end or stop it (one process per "
                             "run directory; --run-dir starts another run)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def run(args) -> int:
    from . import report

    start = time.time()
    profile = PROFILES[args.profile]
    run_dir = args.run_dir or RUNS_DIR / profile.name
    if args.report_only:
        results = report.build_report(run_dir)
        print(f"report rebuilt from {run_dir}: {run_dir / 'report.md'}")
        return 0 if results else 1
    if profile.name == "paper" and args.data_dir is None:
        raise SystemExit("error: the paper profile runs on the Kaggle data: pass --data-dir (see data/README.md)")
    with run_lock(run_dir):
        if args.fresh:
            for child in run_dir.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                elif child.name != LOCK_FILE:
                    child.unlink()
        return _train_and_report(args, run_dir, profile, start)


def _train_and_report(args, run_dir: Path, profile, start: float) -> int:
    from . import cascade as cascade_lib
    from . import data, report, synthetic, thresholds, training
    from .cascade import Cascade

    data_dir, is_synthetic = args.data_dir, args.data_dir is None
    if is_synthetic:
        n_images = args.twin_images or profile.twin_images
        data_dir = args.twin_root / f"synthetic-{n_images}"
        print(f"data: the synthetic Severstal twin, {n_images} images, in {data_dir} (written once)")
        synthetic.make_synthetic_severstal(data_dir, n_images, seed=0)
    else:
        is_synthetic = synthetic.is_twin(data_dir)  # a twin passed by --data-dir is still the twin
    settings = _settings(args, profile)
    settings.update({"data_dir": str(Path(data_dir).resolve()), "synthetic": is_synthetic})
    config = _prepare_run(args, run_dir, settings)

    table = data.load_table(data_dir)
    splits_path = run_dir / "splits.csv"
    if splits_path.is_file():
        try:
            table = data.with_split(table, splits_path)
        except data.DataError as err:
            raise SystemExit(f"error: {err} ({data_dir}); use --fresh") from err
    else:
        table = data.split_table(table, seed=config["seed"])
        table[["ImageId", "split"]].to_csv(splits_path, index=False)
    stats = data.dataset_stats(table[table["split"] == "train"])
    all_stats = data.dataset_stats(table)
    (run_dir / "dataset_stats.json").write_text(json.dumps({
        "n_images": all_stats.n_images, "rows_per_class": all_stats.rows_per_class,
        "images_by_n_classes": all_stats.images_by_n_classes,
        "areas": {c: stats.areas[c].tolist() for c in stats.areas},
        "split_sizes": table["split"].value_counts().to_dict(),
    }) + "\n")
    limits = thresholds.area_thresholds(table)
    (run_dir / "thresholds.json").write_text(json.dumps({
        "limits": {str(c): list(v) for c, v in limits.items()},
        "source": "2nd/98th percentiles of the training masks' areas (paper, Section 3.5)",
        "paper": {str(c): list(v) for c, v in thresholds.area_thresholds(None).items()},
    }, indent=2) + "\n")
    print(f"run: {run_dir} · profile {profile.name} · {len(table)} images "
          f"(train {int((table['split'] == 'train').sum())}, val {int((table['split'] == 'val').sum())}, "
          f"test {int((table['split'] == 'test').sum())}) · image size {config['image_size'][0]}x{config['image_size'][1]}")

    images_dir = Path(data_dir) / "train_images"
    jobs = []
    for backbone in config["backbones"]:
        for stage in config["stages"]:
            task, class_id = training.stage_task(stage)
            n_train = len(training.loaders.select_rows(table[table["split"] == "train"], task, class_id))
            train_config = _train_config(config, stage)
            kind = _kind(stage)
            jobs.append((backbone, stage, n_train, train_config, kind, _work(backbone, kind, n_train, train_config.epochs)))
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
    trained = 0
    for index, (backbone, stage, n_train, train_config, _, _) in enumerate(jobs, start=1):
        done = training.is_done(run_dir, backbone, stage)
        finished = [(k, w, training.stage_seconds(run_dir, b, s)) for b, s, _, _, k, w in jobs
                    if training.is_done(run_dir, b, s)]
        left = estimate_remaining([f for f in finished if f[2] is not None],
                                  [(k, w) for b, s, _, _, k, w in jobs[index - 1:] if not training.is_done(run_dir, b, s)])
        eta = f" · ETA run {_duration(left)}" if left is not None and not done else ""
        print(f"[{index}/{len(jobs)}] {backbone} · {stage} · {n_train} training images · "
              f"{train_config.epochs} epochs{' · done, skipped' if done else ''} · elapsed "
              f"{_duration(time.time() - start)}{eta}", flush=True)
        if done:
            continue
        training.train_stage(run_dir, backbone, stage, train_config, table=table, images_dir=images_dir,
                             verbose=2 if not sys.stdout.isatty() else "auto")
        trained += 1
        if stop_after and trained >= stop_after:
            print(f"stopping after {trained} stage(s) ({STOP_AFTER_ENV})")
            return 130

    final_start = time.time()
    print("cascade: choosing each stage's backbone on the validation split", flush=True)
    choice = _choose_cascade(run_dir, config)
    (run_dir / "cascade.json").write_text(json.dumps(choice, indent=2) + "\n")
    cascade = Cascade.load(run_dir)
    val_outputs = cascade_lib.validation_outputs(cascade, table, images_dir, "val")
    defect, class_probs, mask_probs, truth = val_outputs
    choice["searched"] = {str(c): v for c, v in thresholds.search_thresholds(
        class_probs, mask_probs.astype("float32"), truth, defect_probs=defect).items()}
    (run_dir / "cascade.json").write_text(json.dumps(choice, indent=2) + "\n")
    cascade = Cascade.load(run_dir)
    print("cascade: evaluating on the test split", flush=True)
    evaluation = cascade_lib.evaluate_cascade(cascade, table, images_dir, "test")
    (run_dir / "cascade_eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    _overlays(cascade, table, images_dir, run_dir / "figures")
    stage_times = {f"{b}/{s}": training.stage_seconds(run_dir, b, s) for b, s, *_ in jobs}
    final = time.time() - final_start
    total = sum(v for v in stage_times.values() if v is not None) + final
    (run_dir / "timing.json").write_text(json.dumps({
        "total_s": total,  # every stage's recorded time (over all attempts) + the final steps of this process
        "stages_s": stage_times,  # None: not recorded (trained by a version that did not time stages)
        "final_s": final,  # choosing and evaluating the cascade, overlays
        "this_process_s": time.time() - start,
        "stages_trained": trained,  # by this process
    }, indent=2) + "\n")
    report.build_report(run_dir)
    cascade_lib.RUNS_DIR.mkdir(parents=True, exist_ok=True)
    (cascade_lib.RUNS_DIR / cascade_lib.LATEST_FILE).write_text(str(run_dir.resolve()) + "\n")
    dice = {name: variant["kaggle_mean_dice"] for name, variant in evaluation["variants"].items()}
    searched = f", {dice['searched thresholds']:.4f} with thresholds searched on validation" \
        if "searched thresholds" in dice else ""
    print(f"done in {_duration(total)}{report.untimed_note(stage_times)}: cascade Kaggle mean Dice on test "
          f"{dice['paper cascade']:.4f} (paper's rule){searched}; report {run_dir / 'report.md'}")
    print((run_dir / "tables" / "table7.md").read_text())
    return 0


def _choose_cascade(run_dir: Path, config: dict) -> dict:
    """Per stage, the backbone with the best validation value: lowest BCE (classifiers), highest Dice (UNets)."""
    from . import training

    def metric(backbone, stage, key):
        found = json.loads((training.stage_dir(run_dir, backbone, stage) / "metrics.json").read_text())
        return found["val"][key] if found.get("val") else None

    backbones = config["backbones"]
    choice: dict = {"image_size": config["image_size"]}
    for stage in CLASSIFICATION_STAGES:
        scores = [(metric(b, stage, "binary_crossentropy"), b) for b in backbones]
        best = min((s for s in scores if s[0] is not None), default=(None, backbones[0]))[1]
        choice[stage] = str(training.stage_dir(run_dir, best, stage).relative_to(run_dir))
    segmentation = {}
    if "joint" in config["stages"]:
        def joint_score(b):
            found = json.loads((training.stage_dir(run_dir, b, "joint") / "metrics.json").read_text())
            values = [v["dice_coef"] for v in (found.get("val") or {}).values() if v and v["dice_coef"] is not None]
            return sum(values) / len(values) if values else -1.0
        best = max(backbones, key=joint_score)
        segmentation["0"] = str(training.stage_dir(run_dir, best, "joint").relative_to(run_dir))
    else:
        for stage in config["stages"][2:]:
            best = max(backbones, key=lambda b, s=stage: metric(b, s, "dice_coef") or -1.0)
            segmentation[stage.removeprefix("class")] = str(training.stage_dir(run_dir, best, stage).relative_to(run_dir))
    choice["segmentation"] = segmentation
    limits = json.loads((run_dir / "thresholds.json").read_text())["limits"]
    choice["limits"] = limits
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
    _quiet(args.verbose)
    from . import data

    previous = None
    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM) ends the run like Ctrl-C: the stage being trained records its time before exiting (its
        # last finished epoch is already saved), so the rerun resumes it with nothing lost but the epoch in progress.
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except (FileNotFoundError, data.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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


