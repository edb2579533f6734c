import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from steeldefect.experiments import STOP_AFTER_ENV  # noqa: E402  (imports no TensorFlow)

# No example database: it would write .hypothesis/ into the repository while the notebook tests, on another worker,
# check that nothing is written there.
settings.register_profile("steeldefect", database=None)
settings.load_profile("steeldefect")

REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "real"
REAL_EXCERPT = REAL_DIR / "severstal_train_2019_excerpt.csv"


@pytest.fixture
def real_dir() -> Path:
    """The real Severstal sample in the Kaggle layout (../shared/real), or a skip saying why."""
    if not (REAL_DIR / "train.csv").is_file():
        pytest.skip(f"real Severstal sample not present at {REAL_DIR} (it lives in ../shared/real, outside the repo)")
    return REAL_DIR


@pytest.fixture
def real_excerpt() -> Path:
    """The real 2019-format excerpt of the competition's train.csv (../shared/real), or a skip saying why."""
    if not REAL_EXCERPT.is_file():
        pytest.skip(f"real Severstal excerpt not present at {REAL_EXCERPT} (it lives in ../shared/real, outside the repo)")
    return REAL_EXCERPT


SMOKE_BACKBONES = ["efficientnetb0", "efficientnetb2"]  # two of five keep the suite in budget; the profile trains all


@dataclass
class SmokeRun:
    """The smoke profile run once per test session: interrupted after its first stage, then resumed."""

    cwd: Path
    run_dir: Path
    first: subprocess.CompletedProcess  # the interrupted run
    first_stamp: int  # mtime of the stage finished by the interrupted run, before the resumed run
    second: subprocess.CompletedProcess  # the resumed run


def run_smoke(cwd: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "steeldefect.experiments", "--profile", "smoke", "--backbones", *SMOKE_BACKBONES,
               *extra]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Every test using a shared costly fixture (``smoke_run``; ``tiny_trained`` of test_cascade) joins one xdist
    group: one worker runs them all and makes the fixture once."""
    for item in items:
        for shared in ("smoke_run", "tiny_trained"):
            if shared in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(shared))


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """``python -m steeldefect.experiments --profile smoke`` (two backbones) in a fresh folder, stopped by the test
    hook after one trained stage and rerun to completion; shared by the end-to-end and notebook tests."""
    cwd = tmp_path_factory.mktemp("smoke")
    first = run_smoke(cwd, env={STOP_AFTER_ENV: "1"})
    run_dir = cwd / "runs" / "smoke"
    finished = run_dir / "efficientnetb0" / "binary" / "metrics.json"
    stamp = finished.stat().st_mtime_ns if finished.is_file() else -1
    second = run_smoke(cwd)
    return SmokeRun(cwd, run_dir, first, stamp, second)
