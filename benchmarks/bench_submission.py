"""A submission over thousands of images: ``python -m steeldefect.cascade --run RUN FOLDER --submission out.csv``
on the first SMALL and on LARGE images of a folder, each in its own process: the peak memory (``/usr/bin/time``'s
maximum resident set) and images/s of each, and their ratio (target: the large run's peak within 1.2x of the small
one's). Then the large run again, stopped (SIGINT, as Ctrl-C) after a third of its images and started again: how
many images the second command predicted, and whether its file equals the uninterrupted one.

Run: ``python benchmarks/bench_submission.py --run RUN_DIR --images FOLDER [--small 500] [--large 5506]``
(a twin's ``test_images/`` holds as many as ``make_synthetic_severstal(..., n_test_images=5506)`` wrote).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def submission(run: Path, folder: Path, out: Path) -> tuple[float, float, str]:
    """Seconds, peak RSS in GiB and stdout of one CLI submission over ``folder``."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "steeldefect.cascade", "--run", str(run),
                           str(folder), "--submission", str(out)], capture_output=True, text=True, check=True)
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return time.perf_counter() - start, peak_kib / 2**20, done.stdout


def linked_folder(source: Path, names: list[str], target: Path) -> Path:
    """A folder of symbolic links to ``names`` in ``source``: the first N images without copying them."""
    target.mkdir(parents=True)
    for name in names:
        (target / name).symlink_to(source / name)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run directory or bundle with cascade.json")
    parser.add_argument("--images", type=Path, required=True, help="a folder of .jpg images")
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=5506)
    args = parser.parse_args()
    names = sorted(p.name for p in args.images.iterdir() if p.suffix == ".jpg")
    if len(names) < args.large:
        raise SystemExit(f"{args.images} holds {len(names)} images, fewer than --large {args.large}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        found = {}
        for n in (args.small, args.large):
            folder = linked_folder(args.images, names[:n], scratch / f"images-{n}")
            seconds, peak, _ = submission(args.run, folder, scratch / f"submission-{n}.csv")
            found[n] = (seconds, peak)
            print(f"{n} images: {seconds:.0f} s, {n / seconds:.1f} images/s, peak RSS {peak:.2f} GiB", flush=True)
        ratio = found[args.large][1] / found[args.small][1]
        print(f"peak ratio {ratio:.2f} (target <= 1.2){'' if ratio <= 1.2 else '  MISSED'}")

        folder, out = scratch / f"images-{args.large}", scratch / "resumed.csv"
        command = [sys.executable, "-m", "steeldefect.cascade", "--run", str(args.run), str(folder), "--submission",
                   str(out)]
        stopped = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(found[args.large][0] / 3)
        stopped.send_signal(signal.SIGINT)
        stopped.wait()
        partial = out.with_name(out.name + ".partial")
        kept = max(0, (len(partial.read_text().splitlines()) - 1) // 4) if partial.is_file() else 0
        again = subprocess.run(command, capture_output=True, text=True, check=True)
        predicted = sum(1 for line in again.stdout.splitlines() if ": defect p=" in line)
        same = out.read_text() == (scratch / f"submission-{args.large}.csv").read_text()
        print(f"stopped after {found[args.large][0] / 3:.0f} s with {kept} images in {partial.name}; the same "
              f"command predicted the other {predicted} and wrote a file "
              f"{'equal to' if same else 'DIFFERENT from'} the uninterrupted one")


if __name__ == "__main__":
    main()
