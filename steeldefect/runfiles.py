"""The files of a run directory: written atomically, and the mark that says a folder is a steeldefect run.

Every file a run writes goes through ``write_text`` / ``write_json``: the content goes to a temporary file in the
same folder, which is then renamed over the target (``os.replace``, atomic on POSIX and Windows). A kill at any
moment leaves either the old file or the new one, never a half-written ``config.json`` or ``metrics.json`` that
breaks the next command. ``run_marker`` / ``is_run_dir`` tell a run directory from a user's folder, so that
``--fresh`` only ever empties what steeldefect made (DESIGN.md, "A run directory is the contract").
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import time
from pathlib import Path

from . import __version__

CONFIG_FILE = "config.json"
MARK_KEY = "steeldefect"  # config.json's mark: {"version": package version, "created": local time}
LOCK_FILE = "run.lock"


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
