import subprocess
import sys

from steeldefect import experiments

from .test_data import HEADER_2020, make_layout


def test_main_prints_statistics_beside_the_paper(tmp_path, capsys):
    root = make_layout(tmp_path / "d", HEADER_2020 + "a.jpg,1,1 10\nb.jpg,3,5 5\n", [f"{c}.jpg" for c in "abcdefghij"])
    assert experiments.main(["--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "images: 10 (paper: 12568)" in out
    assert "1: 1 (paper 897)" in out and "3: 1 (paper 5150)" in out
    assert "split: train: 7 (paper 9048), val: 2 (paper 2263), test: 1 (paper 1257)" in out


def test_main_reports_bad_data_dir(tmp_path, capsys):
    assert experiments.main(["--data-dir", str(tmp_path / "missing")]) == 2
    assert "expected the Kaggle layout" in capsys.readouterr().err


def test_default_is_the_synthetic_twin(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert experiments.main(["--twin-images", "20"]) == 0
    out = capsys.readouterr().out
    assert "using the synthetic Severstal twin (20 images)" in out and "images: 20 (paper: 12568)" in out
    assert (tmp_path / "data" / "synthetic" / "train.csv").is_file()


def test_module_entry_point_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "steeldefect.experiments", "--help"], capture_output=True, text=True, check=True
    )
    assert "--data-dir" in result.stdout
