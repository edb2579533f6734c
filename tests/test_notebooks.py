"""The notebooks: committed without outputs, thin, and executed top to bottom (nbclient) without writing into the
repository. Each runs in ``<tmp>/notebooks/`` so that its default paths (``../data``, ``../runs``) land in ``<tmp>``."""

import base64
import subprocess
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_data.ipynb", "02_classification.ipynb", "03_segmentation.ipynb", "04_cascade.ipynb", "05_results.ipynb"]


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _parameters_index(notebook) -> int:
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def test_the_five_notebooks_are_there():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_stripped_with_one_settings_cell_near_the_top(name):
    notebook = _read(name)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not stripped"
    assert _parameters_index(notebook) <= 2  # after the title cell
    settings = notebook.cells[_parameters_index(notebook)].source
    assert "Settings" in settings
    if "DATA_DIR" in settings:
        assert "kaggle competitions download" in settings  # says how to point it at the Kaggle data


@pytest.mark.parametrize("name", NAMES)
def test_thin_every_definition_lives_in_the_package(name):
    for cell in _read(name).cells:
        if cell.cell_type == "code":
            lines = cell.source.splitlines()
            assert not any(line.startswith(("def ", "class ", "lambda")) for line in lines), name


def _execute(name: str, base: Path, **overrides) -> nbformat.NotebookNode:
    """Run a notebook in ``base/notebooks`` with ``overrides`` injected after its settings cell (as papermill does)."""
    notebook = _read(name)
    injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in overrides.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(_parameters_index(notebook) + 1, injected)
    workdir = base / "notebooks"
    workdir.mkdir(parents=True, exist_ok=True)
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()  # raises on any failing cell
    return notebook


def _outputs(notebook, mime: str) -> list[str]:
    return [output["data"][mime] for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if mime in output.get("data", {})]


def _png_width(encoded: str) -> int:
    """The width of a notebook's base64 PNG output, from its IHDR header."""
    return int.from_bytes(base64.b64decode(encoded)[16:20], "big")


def _text(notebook) -> str:
    return "\n".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                     for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """One folder for the notebook runs: 02 and 03 share the twin in ``../data`` and the run in ``../runs``."""
    return tmp_path_factory.mktemp("notebooks")


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=NOTEBOOKS.parent, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module", autouse=True)
def repository_untouched():
    before = _git_status()
    yield
    assert _git_status() == before, "running the notebooks wrote into the repository"


@pytest.mark.slow
def test_01_data(base):
    notebook = _execute("01_data.ipynb", base, TWIN_IMAGES=120)
    # Figures 3, 4, the examples, Figure 9, real against twin in numbers, the data beside real steel (here alone)
    pictures = _outputs(notebook, "image/png")
    assert len(pictures) == 6
    assert _png_width(pictures[-1]) < 1.1 * _png_width(pictures[2])  # one column: no real folder given
    tables = "\n".join(_outputs(notebook, "text/html"))
    for expected in ("EncodedPixels", "Defect_4", "has_defect", "paper min", "Validation", "within target"):
        assert expected in tables
    assert "120 images" in _text(notebook) and (base / "data" / "synthetic-120" / "train.csv").is_file()


@pytest.mark.slow
def test_01_data_on_the_real_sample(real_dir, tmp_path):
    notebook = _execute("01_data.ipynb", tmp_path, DATA_DIR=str(real_dir), REAL_DIR=str(real_dir))
    assert "43 images" in _text(notebook) and str(real_dir) in _text(notebook)
    pictures = _outputs(notebook, "image/png")
    assert len(pictures) == 6
    assert _png_width(pictures[-1]) > 1.5 * _png_width(pictures[2])  # this folder and real steel, side by side
    assert not (tmp_path / "data").exists()  # no twin was written


# 02 and 03 at the smoke profile's scale (its twin, 32x160, one eager epoch of one step): the notebooks' code path,
# not their numbers (their own settings train for a few minutes each).
SMALL = {"TWIN_IMAGES": 48, "IMAGE_SIZE": (32, 160), "EPOCHS": 1, "BATCH_SIZE": 64, "RUN_EAGERLY": True}


@pytest.mark.slow
def test_02_classification(base):
    notebook = _execute("02_classification.ipynb", base, **SMALL)
    run = base / "runs" / "notebooks" / "efficientnetb0"
    for stage in ("binary", "multilabel"):
        assert (run / stage / "metrics.json").is_file() and (run / stage / "history.csv").is_file()
    assert len(_outputs(notebook, "image/png")) == 2  # Figures 11 and 12
    tables = "\n".join(_outputs(notebook, "text/html"))
    assert tables.count("binary_crossentropy") >= 3 and "Test" in tables


@pytest.mark.slow
def test_03_segmentation(base):
    # one of the four classes keeps the suite in budget (the notebook trains all four: ~4 min here)
    notebook = _execute("03_segmentation.ipynb", base, **SMALL, CLASSES=(3,))
    run = base / "runs" / "notebooks" / "efficientnetb0" / "segmentation"
    assert sorted(p.name for p in run.iterdir()) == ["class3"]
    assert (run / "class3" / "metrics.json").is_file()
    assert len(_outputs(notebook, "image/png")) == 2  # Figure 13 and the validation examples
    tables = "\n".join(_outputs(notebook, "text/html"))
    assert "Defect-3 dice_coef" in tables and "Defect-1" not in tables


@pytest.mark.slow
def test_04_cascade(base, smoke_run):
    submission = base / "submission.csv"
    notebook = _execute("04_cascade.ipynb", base, RUN_DIR=str(smoke_run.run_dir), SUBMISSION=str(submission))
    assert "training the smoke profile" not in _text(notebook)  # it used the given run
    frame = pd.read_csv(submission)
    assert list(frame.columns) == ["ImageId", "EncodedPixels", "ClassId"]
    assert len(frame) == 4 * frame["ImageId"].nunique() and frame["ImageId"].nunique() > 0
    tables = "\n".join(_outputs(notebook, "text/html"))
    assert "decision" in tables and "paper cascade" in tables and "Kaggle mean Dice" in tables
    assert len(_outputs(notebook, "image/png")) == 1


@pytest.mark.slow
def test_05_results(base, smoke_run):
    notebook = _execute("05_results.ipynb", base, RUN_DIR=str(smoke_run.run_dir))
    tables = "\n".join(_outputs(notebook, "text/html"))
    assert "Train backbone" in tables  # Table 7
    assert tables.count("Binary classification") >= 3  # Tables 2 and 4 and Table 7
    assert len(_outputs(notebook, "image/png")) == 3
    assert "Table 2: EfficientNet-B0" in "\n".join(_outputs(notebook, "text/markdown"))
