"""Wall time, images per second and peak memory of a run's phases, for ``timing.json`` and the report.

The peak is the process's resident set (RSS) high-water mark, ``VmHWM`` in ``/proc/self/status``; on Linux
``reset_peak`` sets it back to the current RSS (``/proc/self/clear_refs``), so that each phase reports its own peak
and not the largest of the phases before it. Elsewhere the peak is the process's since it started (``resource``),
and ``reset_peak`` says it could not reset it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

GIB = 2**30


def _proc_bytes(path: str, key: str) -> int | None:
    """A ``key: N kB`` line of a Linux ``/proc`` file, in bytes; None where there is no such file or line."""
    found = Path(path)
    if found.is_file():
        for line in found.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    return None


def peak_rss_bytes() -> int | None:
    """The process's peak resident memory in bytes (since the last ``reset_peak``); None where unknown."""
    peak = _proc_bytes("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kilobytes on Linux


def available_bytes() -> int | None:
    """Memory the system can give without swapping (``MemAvailable`` in ``/proc/meminfo``); None where unknown."""
    return _proc_bytes("/proc/meminfo", "MemAvailable")


def reset_peak() -> bool:
    """Set the peak back to the current RSS (Linux); whether it could."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def phase(record: dict, name: str, n_images: int | None = None) -> Iterator[None]:
    """Time one phase into ``record[name]``: ``seconds``, ``images`` and ``images_per_s`` (when ``n_images`` is
    given) and ``peak_rss_gib`` (None where unknown; the peak since the process started where it cannot be reset).

    Example:
        >>> phases = {}
        >>> with phase(phases, "test evaluation", n_images=1257):
        ...     evaluate()
        >>> phases["test evaluation"]["peak_rss_gib"]
    """
    own_peak = reset_peak()
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        peak = peak_rss_bytes()
        record[name] = {"seconds": seconds, "images": n_images,
                        "images_per_s": n_images / seconds if n_images and seconds > 0 else None,
                        "peak_rss_gib": None if peak is None else peak / GIB, "peak_is_the_phases": own_peak}
