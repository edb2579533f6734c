import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REAL_EXCERPT = Path(__file__).resolve().parents[1].parent / "shared" / "real" / "severstal_train_2019_excerpt.csv"


@pytest.fixture
def real_excerpt() -> Path:
    """The real 2019-format excerpt of the competition's train.csv (../shared/real), or a skip saying why."""
    if not REAL_EXCERPT.is_file():
        pytest.skip(f"real Severstal excerpt not present at {REAL_EXCERPT} (it lives in ../shared/real, outside the repo)")
    return REAL_EXCERPT
