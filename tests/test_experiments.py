"""The main job end to end: the smoke profile on a tiny twin, interrupted and resumed, then its report."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from steeldefect import experiments, report, runfiles
from steeldefect.config import TABLE_ROWS

from .conftest import SMOKE_BACKBONES, run_smoke
from .test_data import HEADER_2020, make_layout


def test_help_and_bad_data_dir(tmp_path, capsys):
    result = subprocess.run([sys.executable, "-m", "steeldefect.experiments", "--help"], capture_output=True,
                            text=True, check=True)
    for option in ("--data-dir", "--profile", "--backbones", "--run-dir", "--epochs", "--image-size", "--fresh",
                   "--report-only", "--encoder-weights", "--strategy", "--mixed-precision", "--verbose"):
        assert option in result.stdout
    assert experiments.main(["--data-dir", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "expected the Kaggle layout" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="the paper profile runs on the Kaggle data: pass --data-dir"):
        experiments.main(["--profile", "paper", "--run-dir", str(tmp_path / "run")])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_kill_and_ctrl_c_end_a_run_through_its_finally_blocks(tmp_path, signum):
    """SIGTERM unwinds the run like Ctrl-C, so a stage's finally (its timing.json) still runs; main says how to go on."""
    # A shell that starts a job in the background (as CI may) leaves SIGINT ignored in it and its children; the
    # child here takes Ctrl-C as a terminal would deliver it.
    script = ("import os, signal, sys, time\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "from steeldefect import experiments\n"
              "def run(args):\n"
              "    try:\n"
              f"        os.kill(os.getpid(), {int(signum)})\n"
              "        time.sleep(30)\n"
              "    finally:\n"
              "        print('cleanup ran', flush=True)\n"
              "experiments.run = run\n"
              "sys.exit(experiments.main(['--run-dir', 'r']))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 128 + signum and "cleanup ran" in result.stdout, result.stderr[-2000:]
    assert "interrupted: rerun the same command to resume" in result.stderr
    before = signal.getsignal(signal.SIGTERM)
    experiments.main(["--data-dir", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "run")])
    assert signal.getsignal(signal.SIGTERM) is before  # main() in this process leaves the handler as it was


def _user_folder(root):
    """A folder of someone's work: what `--run-dir <it> --fresh` once deleted."""
    (root / "mywork").mkdir(parents=True)
    (root / "mywork" / "notes.txt").write_text("three years of notes")
    (root / "thesis.tex").write_text("\\documentclass{book}")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return {p.relative_to(root): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


@pytest.mark.parametrize("fresh", [True, False])
def test_a_folder_that_is_not_a_run_is_never_deleted_nor_written(tmp_path, monkeypatch, fresh):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "folder"
    before = _user_folder(folder)
    argv = ["--profile", "smoke", "--backbones", "efficientnetb0", "--run-dir", str(folder)] + (["--fresh"] if fresh else [])
    with pytest.raises(SystemExit, match=r"folder is not a steeldefect run directory and holds 3 entries "
                                         r"\(.git, mywork, thesis.tex\); nothing was deleted or written there"):
        experiments.main(argv)
    assert {p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")} == before
    assert not (tmp_path / "data").exists()  # refused before the twin was written


def test_fresh_empties_a_run_directory_and_only_that(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []
    monkeypatch.setattr(experiments, "_train_and_report", lambda args, run_dir, *rest: seen.append(
        sorted(p.name for p in run_dir.iterdir())) or 0)
    run_dir = tmp_path / "run"
    (run_dir / "efficientnetb0" / "binary").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"steeldefect": {"version": "0.1.0"}, "profile": "smoke"}))
    (run_dir / "report.md").write_text("old")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    (run_dir / "data").symlink_to(outside, target_is_directory=True)
    assert experiments.main(["--profile", "smoke", "--run-dir", str(run_dir), "--fresh"]) == 0
    assert seen == [["run.lock"]] and (outside / "keep.txt").is_file()


@pytest.mark.parametrize(("argv", "message"), [
    (["--backbones", "efficientnetb9"], r"--backbones: unknown backbone 'efficientnetb9'; valid: efficientnetb0, "),
    (["--backbones", "efficientnetb0", "efficientnetb0"], "--backbones: efficientnetb0 efficientnetb0 names a backbone twice"),
    (["--image-size", "64", "400"], r"--image-size: 64 400 is not a valid model input; height and width must be "
                                    "positive multiples of 32"),
    (["--image-size", "0", "320"], "--image-size: 0 320"),
    (["--epochs", "0"], r"--epochs: 0 is too small; expected an integer >= 1"),
    (["--batch-size", "-1"], r"--batch-size: -1 is too small"),
    (["--twin-images", "3"], r"--twin-images: 3 is too small; expected an integer >= 10"),
    (["--max-steps-per-epoch", "0"], r"--max-steps-per-epoch: 0 is too small; expected an integer >= 1"),
    (["--encoder-weights", "/no/such/weights.h5"], "--encoder-weights: '/no/such/weights.h5' is neither imagenet"),
    (["--report-only", "--fresh"], "--report-only rebuilds a run.s report from its files and --fresh deletes them: use one"),
    (["--data-dir", "d", "--twin-images", "20"], "--twin-images and --twin-root choose the synthetic twin"),
])
def test_bad_options_are_rejected_before_anything_is_written(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=f"^error: {message}"):
        experiments.main(["--profile", "smoke", "--run-dir", "run", *argv])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run directory, no twin


def test_bad_data_is_rejected_before_a_run_directory_exists(tmp_path, capsys):
    root = make_layout(tmp_path / "d", HEADER_2020 + "a.jpg,9,1 1\n", ["a.jpg"])
    assert experiments.main(["--data-dir", str(root), "--run-dir", str(tmp_path / "run")]) == 2
    assert "line 2: ClassId '9' is not one of 1, 2, 3, 4" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_damaged_run_file_is_one_line_not_a_traceback(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"steeldefect": {"version": "0.1.0"}, "profile": "smoke",
                                                    "backbones": ["efficientnetb0"], "stages": ["binary"]}))
    (run_dir / "dataset_stats.json").write_text('{"n_images": 4')  # cut short by a kill of an older version
    assert experiments.main(["--profile", "smoke", "--run-dir", str(run_dir), "--report-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "dataset_stats.json is not valid JSON" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit, match="not a steeldefect run directory .*nothing to report"):
        experiments.main(["--profile", "smoke", "--run-dir", str(tmp_path / "elsewhere"), "--report-only"])


def test_a_run_is_not_resumed_on_another_twin_or_other_settings(tmp_path, monkeypatch):
    """The run records its twin's version, its data and every stage's settings; a resume with others is refused
    before any training, so stages trained on two twins never mix."""
    from steeldefect import synthetic, training

    monkeypatch.chdir(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_stage", interrupted)
    argv = ["--profile", "smoke", "--backbones", "efficientnetb0", "--twin-images", "10", "--run-dir", "run"]
    assert experiments.main(argv) == 130
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["steeldefect"]["version"] == config["versions"]["steeldefect"]
    assert config["twin_version"] == synthetic.TWIN_VERSION and config["data"]["n_images"] == 10
    assert config["train_configs"]["binary"]["epochs"] == 1 and config["train_configs"]["joint"]["bn_momentum"] == 0.9
    assert experiments.main(argv) == 130  # the same command resumes
    with pytest.raises(SystemExit, match=r"holds a run made with other settings \(classifier_epochs: 1 there, 2 now; "
                                         r"segmentation_epochs: 1 there, 2 now; train_configs: .*--fresh"):
        experiments.main([*argv, "--epochs", "2"])
    # the same masks drawn at another defect contrast are other data (train.csv alone would not tell them apart)
    twin = synthetic.make_synthetic_severstal(tmp_path / "twin", 10, seed=0)
    other = [*argv[:4], "--data-dir", str(twin), "--run-dir", "run-on-folder"]
    assert experiments.main(other) == 130
    synthetic.make_synthetic_severstal(twin, 10, seed=0, defect_contrast=3.0)
    with pytest.raises(SystemExit, match=r"other settings \(data: .* there, .* now\)\. Resume it"):
        experiments.main(other)
    monkeypatch.setattr(synthetic, "TWIN_VERSION", synthetic.TWIN_VERSION + 1)
    with pytest.raises(SystemExit, match=rf"twin_version: {config['twin_version']} there, "
                                         rf"{config['twin_version'] + 1} now; data: .*\)\. Resume it with the command "
                                         "and data"):
        experiments.main(argv)


@pytest.mark.slow
def test_smoke_profile_end_to_end_with_resume(smoke_run):
    tmp_path, run_dir, first, second = smoke_run.cwd, smoke_run.run_dir, smoke_run.first, smoke_run.second
    assert first.returncode == 130, first.stderr[-3000:]
    finished = run_dir / "efficientnetb0" / "binary" / "metrics.json"
    assert "[1/6] efficientnetb0 · binary" in first.stdout and "stopping after 1 stage(s)" in first.stdout
    assert "I0000" not in first.stderr and "absl" not in first.stderr  # a clean console

    assert second.returncode == 0, second.stderr[-3000:]
    first_line = next(line for line in second.stdout.splitlines() if line.startswith("[1/6]"))
    assert first_line.startswith("[1/6] efficientnetb0 · binary") and "done, skipped" in first_line
    assert "done, skipped" not in next(line for line in second.stdout.splitlines() if line.startswith("[2/6]"))
    assert finished.stat().st_mtime_ns == smoke_run.first_stamp  # not retrained
    assert (tmp_path / "data" / "synthetic-48" / "train.csv").is_file()

    tables = run_dir / "tables"
    values = {}
    for number, backbone in ((2, "efficientnetb0"), (4, "efficientnetb2")):
        for suffix in (".md", ".csv", ".tex"):
            assert (tables / f"table{number}{suffix}").is_file()
        frame = pd.read_csv(tables / f"table{number}.csv", index_col=[0, 1])
        assert list(frame.columns) == ["Train", "Validation", "Test"]
        assert [report.row_label(*row) for row in TABLE_ROWS] == list(frame.index)
        values[backbone] = frame
        for (section, metric), row in frame.iterrows():
            for value in row.dropna():
                assert np.isfinite(value)
                if "crossentropy" not in metric:
                    assert 0 <= value <= 1, (section, metric, value)
        assert frame.loc[("Binary classification", "acc")].notna().all()
    table7 = pd.read_csv(tables / "table7.csv", index_col=[0, 1])
    for key in table7.index:
        for column in ("Train", "Validation", "Test"):
            candidates = {b: values[b].loc[key, column] for b in values if not pd.isna(values[b].loc[key, column])}
            if not candidates:
                continue
            lower = "crossentropy" in key[1] or "dice_loss" in key[1]
            best = min(candidates.values()) if lower else max(candidates.values())
            assert table7.loc[key, column] == pytest.approx(best)
            assert table7.loc[key, f"{column} backbone"] in {b.replace("efficientnet", "").upper()
                                                             for b, v in candidates.items() if v == pytest.approx(best)}
    comparison = (tables / "paper_comparison.md").read_text()
    assert "synthetic twin: this comparison is about the pipeline, not the numbers" in comparison
    assert "Kaggle mean Dice" in (tables / "cascade.md").read_text()
    figures = run_dir / "figures"
    names = {p.name for p in figures.glob("*.png")}
    assert {"fig3_rows_per_class.png", "fig4_classes_per_image.png", "fig9_areas.png",
            "fig11_efficientnetb0.png", "fig12_efficientnetb2.png", "fig13_efficientnetb0.png"} <= names
    assert any(n.startswith("overlay_") for n in names)
    for path in figures.glob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
    results = json.loads((run_dir / "results.json").read_text())
    timing = results["wall_time_s"]
    assert set(timing["stages_s"]) == {f"{b}/{s}" for b in ("efficientnetb0", "efficientnetb2")
                                       for s in ("binary", "multilabel", "joint")}
    assert all(seconds > 0 for seconds in timing["stages_s"].values())  # also the stage of the interrupted run
    assert timing["total_s"] == pytest.approx(sum(timing["stages_s"].values()) + timing["final_s"])
    assert timing["stages_trained"] == 5 and "paper cascade" in results["cascade"]["variants"]
    assert "Minutes per stage" in (run_dir / "report.md").read_text()
    validation = runfiles.read_json(run_dir / "cascade.json")["validation"]  # the cascade on its validation images
    assert set(validation) == {"paper_rule", "searched", "all_empty"}
    assert validation["searched"] >= validation["all_empty"]  # "never predict this class" is among the candidates
    assert report.validation_line(validation) in (run_dir / "report.md").read_text()
    assert "ETA run" in next(line for line in second.stdout.splitlines() if line.startswith("[2/6]"))
    cascade = json.loads((run_dir / "cascade.json").read_text())
    assert set(cascade) >= {"binary", "multilabel", "segmentation", "limits", "searched", "image_size"}
    assert json.loads((run_dir / "config.json").read_text())["encoder_weights"] == "stage1"
    for backbone in ("efficientnetb0", "efficientnetb2"):  # stages 2-3 started from stage 1's encoder
        assert (run_dir / backbone / "binary" / "encoder.weights.h5").is_file()
    assert (tmp_path / "runs" / "latest.txt").read_text().strip() == str(run_dir.resolve())
    assert "report.md" in second.stdout and "(paper's rule), " in second.stdout
    assert "with thresholds searched on validation" in second.stdout
    assert "stages 2-3 from stage 1's trained encoder" in (run_dir / "report.md").read_text()

    before = {p.name: p.read_text() for p in tables.glob("*.md")}
    # --report-only rebuilds the same tables from the run's files, without importing TensorFlow
    script = ("import sys; from steeldefect.experiments import main; code = main(sys.argv[1:]); "
              "print('tensorflow imported:', 'tensorflow' in sys.modules); sys.exit(code)")
    rebuilt = subprocess.run([sys.executable, "-c", script, "--profile", "smoke", "--report-only"], cwd=tmp_path,
                             capture_output=True, text=True)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert "report rebuilt from runs/smoke" in rebuilt.stdout and "tensorflow imported: False" in rebuilt.stdout
    assert {p.name: p.read_text() for p in tables.glob("*.md")} == before

    script = ("import steeldefect.cascade as c, pathlib; "
              "img = sorted(pathlib.Path('data/synthetic-48/test_images').iterdir())[0]; "
              "r = c.predict(img); print(r.masks.shape, sorted(r.decisions))")
    predicted = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert "(256, 1600, 4) [1, 2, 3, 4]" in predicted.stdout

    # --tta re-evaluates the finished run with flip TTA (nothing retrained) and saves it with the cascade
    flipped = run_smoke(tmp_path, "--tta", "hflip")
    assert flipped.returncode == 0, flipped.stderr[-2000:]
    assert "cascade: flip TTA hflip" in flipped.stdout
    assert json.loads((run_dir / "cascade.json").read_text())["tta"] == "hflip"
    assert json.loads((run_dir / "timing.json").read_text())["stages_trained"] == 0


def _steel_folder(root, n=12):
    import cv2

    images = root / "train_images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(images / f"{i:09x}.jpg"), rng.integers(40, 200, (256, 1600, 3)).astype(np.uint8))
    (root / "train.csv").write_text(HEADER_2020 + "".join(f"{i:09x}.jpg,3,{1 + 300 * i} 200\n" for i in range(0, n, 2)))
    return root


def test_a_bad_image_stops_the_run_before_training_or_is_skipped_and_listed(tmp_path, monkeypatch, capsys):
    from steeldefect import training

    root = _steel_folder(tmp_path / "real")
    encoded = (root / "train_images" / "000000003.jpg").read_bytes()
    (root / "train_images" / "000000003.jpg").write_bytes(encoded[:1000])  # an interrupted copy
    argv = ["--profile", "smoke", "--backbones", "efficientnetb0", "--data-dir", str(root), "--run-dir",
            str(tmp_path / "run")]
    with pytest.raises(SystemExit, match=r"error: 1 of 12 images in .*train_images cannot be used \(above\); fix or "
                                         r"remove them, or pass --skip-bad-images"):
        experiments.main(argv)
    assert "000000003.jpg: a JPEG that does not decode (corrupt or truncated)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_stage", interrupted)
    assert experiments.main([*argv, "--skip-bad-images"]) == 130
    out = capsys.readouterr().out
    assert "data: skipping 1 bad image(s) (--skip-bad-images): 000000003.jpg" in out
    assert "data: 000000003.jpg left out: a JPEG that does not decode" in out
    plan = json.loads((tmp_path / "run" / "data_plan.json").read_text())
    assert list(plan["bad_images"]) == ["000000003.jpg"] and plan["stages"]["binary"]["train"] + \
        plan["stages"]["binary"]["val"] + plan["stages"]["binary"]["test"] == 11
    assert "000000003.jpg" not in (tmp_path / "run" / "splits.csv").read_text()


@pytest.mark.slow
def test_the_smoke_profile_runs_on_the_real_sample_to_its_tables(real_dir, tmp_path):
    """The real-data path on the 43 real images (read-only: the run and its cache go elsewhere), one backbone."""
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "steeldefect.experiments", "--profile", "smoke", "--backbones",
                             "efficientnetb0", "--data-dir", str(real_dir), "--run-dir", str(run_dir)],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "43 images (train 30, val 8, test 5)" in result.stdout
    for name in ("table2.md", "table7.md", "cascade.md", "paper_comparison.md"):
        assert (run_dir / "tables" / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["synthetic"] is False and config["twin_version"] is None and config["data"]["n_images"] == 43
    assert "synthetic twin" not in (run_dir / "tables" / "paper_comparison.md").read_text()
    script = ("import sys; from steeldefect.cascade import Cascade; "
              "r = Cascade.load(sys.argv[1]).predict(sys.argv[2]); "
              "print(r.masks.shape, r.masks.dtype, sorted(r.decisions), 0 <= r.defect_prob <= 1)")
    image = sorted((real_dir / "train_images").iterdir())[0]
    predicted = subprocess.run([sys.executable, "-c", script, str(run_dir), str(image)], capture_output=True, text=True)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert predicted.stdout.strip() == "(256, 1600, 4) bool [1, 2, 3, 4] True"


DAMAGES = {"truncated": lambda whole: whole[: len(whole) // 3], "empty": lambda whole: b"",
           "garbage": lambda whole: np.random.default_rng(0).bytes(max(len(whole) // 3, 64))}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_each_damaged_run_file_is_named_by_the_command_that_reads_it(smoke_run, tmp_path, capsys, damage):
    """Fault injection on copies of the session's smoke run: each kind of file that a command reads back, damaged
    in turn (cut to a third, emptied, random bytes), gives one line that names it and exit code 2, never a
    traceback (the files a training resume reads are tested at their reader in test_training)."""
    from steeldefect import cascade as cascade_module

    chosen = runfiles.read_json(smoke_run.run_dir / "cascade.json")
    stage = chosen["binary"]  # the stage-1 model the cascade serves
    image = next((smoke_run.cwd / "data" / "synthetic-48" / "train_images").iterdir())
    report_only = ["--report-only", "--profile", "smoke", "--backbones", *SMOKE_BACKBONES]
    cases = [
        (f"{stage}/model.weights.h5", lambda run: cascade_module.main(["--run", str(run), str(image)])),
        (f"{stage}/model.json", lambda run: cascade_module.main(["--run", str(run), str(image)])),
        ("cascade.json", lambda run: cascade_module.main(["--run", str(run), str(image)])),
        (f"{stage}/model.weights.h5", lambda run: cascade_module.main(["export", "--run", str(run),
                                                                       str(run.parent / f"{run.name}-export")])),
        ("efficientnetb0/binary/history.csv", lambda run: experiments.main([*report_only, "--run-dir", str(run)])),
        ("efficientnetb0/binary/metrics.json", lambda run: experiments.main([*report_only, "--run-dir", str(run)])),
        ("cascade_eval.json", lambda run: experiments.main([*report_only, "--run-dir", str(run)])),
    ]
    capsys.readouterr()
    for k, (name, command) in enumerate(cases):
        run = tmp_path / f"run{k}"
        shutil.copytree(smoke_run.run_dir, run)
        target = run / name
        target.write_bytes(DAMAGES[damage](target.read_bytes()))
        assert command(run) == 2, (name, damage)
        printed = capsys.readouterr()
        lines = [line for line in printed.err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and name.split("/")[-1] in lines[0] and str(run) in lines[0], (name, printed.err)
        assert "Traceback" not in printed.err + printed.out, (name, damage)


def test_one_process_per_run_directory(tmp_path):
    run_dir, data_dir = tmp_path / "run", str(_steel_folder(tmp_path / "d", n=3))
    with runfiles.run_lock(run_dir):
        assert (run_dir / "run.lock").read_text().startswith(f"process {os.getpid()} on ")
        with pytest.raises(SystemExit, match=rf"{re.escape(str(run_dir))} is in use by process {os.getpid()} on .*; wait for it"):
            experiments.main(["--data-dir", data_dir, "--run-dir", str(run_dir)])
    assert not run_dir.exists()  # the lock made the folder and, as it stayed empty, took it away again
