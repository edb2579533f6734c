"""The files of a run directory: where each one lives, written atomically, and the mark that says a folder is a
steeldefect run.

The layout (DESIGN.md, "A run directory is the contract") is written down here and nowhere else: the file names,
the stage folders (``stage_dir``), stage name <-> class id (``segmentation_key``, ``segmentation_stage``) and
``runs/latest.txt``. This module imports neither TensorFlow nor pandas at import time, so that the report and the
command lines can read a run without them.

Every file a run writes goes through ``write_text`` / ``write_json``: the content goes to a temporary file in the
same folder, which is then renamed over the target (``os.replace``, atomic on POSIX and Windows). A kill at any
moment leaves either the old file or the new one, never a half-written ``config.json`` or ``metrics.json`` that
breaks the next command. ``run_marker`` / ``is_run_dir`` tell a run directory from a user's folder, so that
``--fresh`` only ever empties what steeldefect made (DESIGN.md, "A run directory is the contract").
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, one process per run directory is up to the user
    fcntl = None

from . import __version__
from .config import BACKBONES, CLASS_IDS, CLASSIFICATION_STAGES, JOINT_STAGE, SEGMENTATION_TASKS

MARK_KEY = "steeldefect"  # config.json's mark: {"version": package version, "created": local time}

# ----- the run directory's layout

RUNS_DIR = Path("runs")  # relative to the working directory: where experiments puts runs/<profile>
LATEST_FILE = "latest.txt"  # in RUNS_DIR: the path of the latest experiments run (the default cascade)
# The run's own files, at its top level.
CONFIG_FILE = "config.json"  # the resolved settings, with MARK_KEY
LOCK_FILE = "run.lock"  # held while a process trains the run
SPLITS_FILE = "splits.csv"  # ImageId,split: written once, reused on resume
PLAN_FILE = "data_plan.json"  # what each stage gets on the run's data, decided before training
STATS_FILE = "dataset_stats.json"
THRESHOLDS_FILE = "thresholds.json"  # per-class area limits and where they came from
CASCADE_FILE = "cascade.json"  # written only by Cascade.save
CASCADE_EVAL_FILE = "cascade_eval.json"  # the cascade's evaluation on the test split
TIMING_FILE = "timing.json"  # the run's wall time (at the top) or a stage's ({"seconds", "attempts"})
REPORT_FILE = "report.md"
# A stage's files, in its folder (stage_dir).
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"  # its presence marks the stage done

SEGMENTATION_FOLDER = "segmentation"  # the UNets' stages live in <backbone>/segmentation/<stage>/
# JOINT_STAGE (config): one 4-channel UNet; its key in a cascade's segmentation models is 0.
SEGMENTATION_STAGES: tuple[str, ...] = (*SEGMENTATION_TASKS, JOINT_STAGE)
ALL_STAGES: tuple[str, ...] = (*CLASSIFICATION_STAGES, *SEGMENTATION_STAGES)


def check_stage(stage: str) -> str:
    if stage not in ALL_STAGES:
        raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(ALL_STAGES)}")
    return stage


def stage_dir(run_dir: str | Path, backbone: str, stage: str) -> Path:
    """``run_dir/<backbone>/<stage>`` for the classifiers, ``run_dir/<backbone>/segmentation/<stage>`` else."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    parent = Path(run_dir) / backbone
    return parent / stage if check_stage(stage) in CLASSIFICATION_STAGES else parent / SEGMENTATION_FOLDER / stage


def segmentation_key(stage: str) -> int:
    """A segmentation stage's key in a cascade's models: its class id, 0 for the joint UNet.

    Example:
        >>> segmentation_key("class3"), segmentation_key("joint")
        (3, 0)
    """
    if check_stage(stage) in CLASSIFICATION_STAGES:
        raise ValueError(f"{stage!r} is a classifier's stage, not a segmentation stage")
    return 0 if stage == JOINT_STAGE else int(stage.removeprefix("class"))


def segmentation_stage(key: int) -> str:
    """The inverse of ``segmentation_key``: ``joint`` for 0, ``class<k>`` for class k."""
    if key == 0:
        return JOINT_STAGE
    if key not in CLASS_IDS:
        raise ValueError(f"a segmentation key is 0 (joint) or a class id {CLASS_IDS}, got {key!r}")
    return f"class{key}"


def is_done(run_dir: str | Path, backbone: str, stage: str) -> bool:
    """Whether a stage is done: its ``metrics.json`` exists (a rerun skips it)."""
    return (stage_dir(run_dir, backbone, stage) / METRICS_FILE).is_file()


def stage_metrics(run_dir: str | Path, backbone: str, stage: str) -> dict | None:
    """A stage's ``metrics.json``, or None when the stage has none yet."""
    return read_optional_json(stage_dir(run_dir, backbone, stage) / METRICS_FILE)


def record_latest(run_dir: str | Path) -> Path:
    """Make ``run_dir`` the default cascade: its absolute path goes into ``runs/latest.txt``."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    return write_text(RUNS_DIR / LATEST_FILE, str(Path(run_dir).resolve()) + "\n")


def latest_run() -> Path | None:
    """The run ``runs/latest.txt`` names (``record_latest``), or None when there is none."""
    latest = RUNS_DIR / LATEST_FILE
    return Path(latest.read_text().strip()) if latest.is_file() else None


def read_optional_json(path: str | Path) -> dict | None:
    """``read_json`` of a run file that may not exist yet (None then)."""
    path = Path(path)
    return read_json(path) if path.is_file() else None


# ----- atomic writes, and reading run files with errors that name them


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: a reader (or the next command after a kill) sees the old or the new
    file whole."""
    path = Path(path)
    handle, tmp = _new_temporary(path)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _new_temporary(path: Path) -> tuple[int, str]:
    """A new file beside ``path`` for its next content, created with the mode the user's umask gives any new file
    (0644 under umask 022), as ``open`` does: ``tempfile.mkstemp`` always makes 0600, and ``os.replace`` would keep
    that, leaving run files that a colleague or a serving container under another uid cannot read."""
    for _ in range(100):
        tmp = path.parent / f".tmp-{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_json(path: str | Path, payload, *, indent: int | None = 2, default=None) -> Path:
    """``write_text`` of ``payload`` as JSON (with a final newline)."""
    return write_text(path, json.dumps(payload, indent=indent, default=default) + "\n")


def read_json(path: str | Path) -> dict:
    """A run file's JSON; a file that is not JSON raises ``RunFileError`` naming it (never a bare JSONDecodeError)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = (f"{err.msg}, line {err.lineno}" if isinstance(err, json.JSONDecodeError)
                 else f"not UTF-8 text: byte {err.start}")
        raise RunFileError(f"{path} is not valid JSON ({where}): the file is damaged; delete it to have it rebuilt, "
                           "or start the run over with --fresh") from None


def read_csv(path: str | Path, columns: tuple[str, ...], remedy: str):
    """A run's CSV file (``history.csv``, ``splits.csv``) as a DataFrame with at least ``columns``; one that cannot
    be read so (cut short, emptied, overwritten) raises ``RunFileError`` naming it and saying ``remedy``."""
    import pandas as pd  # here: this module is imported by everything, pandas by far fewer

    path = Path(path)
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):  # every run CSV is written whole, its last line ended
        raise RunFileError(f"{path} is damaged (cut short: its last line is incomplete): {remedy}")
    try:
        frame = pd.read_csv(io.BytesIO(raw))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise RunFileError(f"{path} is damaged ({first_line(err)}): {remedy}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RunFileError(f"{path} is damaged (no column {', '.join(missing)}; it has {', '.join(map(str, frame.columns))}"
                           f"): {remedy}")
    return frame


def first_line(err: BaseException) -> str:
    """The first line of an error's message, for a one-line error that wraps it (its repr when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


class RunFileError(ValueError):
    """A run directory's file that cannot be used as it is; the message names it and says what to do."""


def run_marker() -> dict:
    """The mark ``config.json`` carries: the package and its version, and when the run was created."""
    return {"version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a steeldefect run: its ``config.json`` has the mark (``run_marker``), or is one that
    runs wrote before the mark existed (it has the run's ``profile``, ``backbones`` and ``stages``)."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file() or config.is_symlink():
        return False
    try:
        saved = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False
    return isinstance(saved, dict) and (MARK_KEY in saved or {"profile", "backbones", "stages"} <= set(saved))


def foreign_entries(path: str | Path) -> list[str]:
    """What in ``path`` keeps a run from being created or emptied there: its entries, unless it is missing, empty
    (a left-over ``run.lock`` aside) or a run directory (``is_run_dir``)."""
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_dir():
        return [path.name]
    if is_run_dir(path):
        return []
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)


def empty_run_dir(path: str | Path, keep: tuple[str, ...] = (LOCK_FILE,)) -> None:
    """Delete everything in a run directory but ``keep``; a symbolic link is removed, never followed.

    Raises ``RunFileError`` (and deletes nothing) when ``path`` is not a run directory or an empty folder.
    """
    path = Path(path)
    found = foreign_entries(path)
    if found:
        raise RunFileError(f"{path} is not a steeldefect run directory (no {CONFIG_FILE} with its mark) and holds "
                           f"{listing(found)}: it will not be deleted; choose another --run-dir")
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)  # rmtree removes links inside without following them
        else:
            child.unlink()


def listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'} ({shown}{', ...' if len(names) > limit else ''})"


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
