"""Run files: atomic writes that survive a kill, the run directory's mark, and emptying only what is ours."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steeldefect import __version__, runfiles


def test_write_is_atomic_when_the_writer_dies_before_the_rename(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    runfiles.write_json(path, {"epochs": 1})

    def killed(*args):
        raise KeyboardInterrupt  # the process is stopped between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        runfiles.write_json(path, {"epochs": 2, "padding": "x" * 100_000})
    assert json.loads(path.read_text()) == {"epochs": 1}  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind


def test_a_writer_killed_mid_way_leaves_a_whole_file(tmp_path):
    """A child rewrites a ~2 MB JSON file in a loop and is killed with SIGKILL at some moment: the file that
    remains is one of the versions written, whole (a plain write_text leaves a truncated file most of the time)."""
    path = tmp_path / "metrics.json"
    script = ("import sys\nfrom steeldefect import runfiles\ni = 0\n"
              "while True:\n"
              "    runfiles.write_json(sys.argv[1], {'i': i, 'values': list(range(200_000))})\n"
              "    i += 1\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(path)])
    try:
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    saved = json.loads(path.read_text())
    assert saved["values"][-1] == 199_999 and saved["i"] >= 0


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_run_files_get_the_mode_the_umask_gives_a_new_file(tmp_path, umask, mode):
    """As readable as the user's other files (a colleague, CI or a serving container under another uid can load
    cascade.json and read report.md beside the weights), and no more: the umask decides, as for ``open``."""
    old = os.umask(umask)
    try:
        written = runfiles.write_json(tmp_path / "cascade.json", {"a": 1})
        rewritten = runfiles.write_text(written, "{}\n")  # replacing a file gives the new one the same mode
    finally:
        os.umask(old)
    assert rewritten == written and written.read_text() == "{}\n"
    assert written.stat().st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["cascade.json"]


def test_read_json_names_a_damaged_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"val": {"acc": 0.9')
    with pytest.raises(runfiles.RunFileError, match=r"metrics.json is not valid JSON .*line 1.*--fresh"):
        runfiles.read_json(path)
    path.write_bytes(bytes(range(128, 256)) * 8)  # overwritten with bytes that are not even text
    with pytest.raises(runfiles.RunFileError, match=r"metrics.json is not valid JSON \(not UTF-8 text.*--fresh"):
        runfiles.read_json(path)


def test_read_csv_names_a_damaged_file(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\n1,0.7,0.69\n2,0.6,0.65\n")
    assert runfiles.read_csv(path, ("epoch",), "retrain it")["loss"].tolist() == [0.7, 0.6]
    whole = path.read_bytes()
    for damaged in (whole[: len(whole) // 3], b"", bytes(range(128, 256)) * 4):
        path.write_bytes(damaged)  # cut short (its header cut), emptied, bytes that are not text
        with pytest.raises(runfiles.RunFileError, match=r"history.csv is damaged \(.*\): retrain it$"):
            runfiles.read_csv(path, ("epoch",), "retrain it")


def test_the_mark_tells_a_run_from_a_users_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert not runfiles.is_run_dir(run) and runfiles.foreign_entries(run) == []  # empty: ours to use
    (run / "run.lock").write_text("")
    assert runfiles.foreign_entries(run) == []  # a lock left by a killed process does not count
    runfiles.write_json(run / "config.json", {runfiles.MARK_KEY: runfiles.run_marker(), "profile": "smoke"})
    assert runfiles.is_run_dir(run) and runfiles.foreign_entries(run) == []
    marker = json.loads((run / "config.json").read_text())[runfiles.MARK_KEY]
    assert marker["version"] == __version__ and marker["created"][:2] == "20"
    legacy = tmp_path / "legacy"  # written before the mark existed
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"profile": "quick", "backbones": [], "stages": []}))
    assert runfiles.is_run_dir(legacy)
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"theme": "dark"}')  # a config.json of something else
    (user / "thesis.tex").write_text("x")
    assert not runfiles.is_run_dir(user)
    assert runfiles.foreign_entries(user) == ["config.json", "thesis.tex"]
    assert runfiles.foreign_entries(tmp_path / "missing") == []
    (tmp_path / "file").write_text("x")
    assert runfiles.foreign_entries(tmp_path / "file") == ["file"]


def test_empty_run_dir_removes_links_without_following_them(tmp_path):
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "data.txt").write_text("the user's")
    (outside / "notes.txt").write_text("the user's")
    run = tmp_path / "run"
    (run / "efficientnetb0" / "binary").mkdir(parents=True)
    runfiles.write_json(run / "config.json", {runfiles.MARK_KEY: runfiles.run_marker()})
    (run / "efficientnetb0" / "binary" / "metrics.json").write_text("{}")
    (run / "efficientnetb0" / "link").symlink_to(outside / "keep")  # a link inside a stage folder
    (run / "data").symlink_to(outside, target_is_directory=True)
    (run / "notes.txt").symlink_to(outside / "notes.txt")
    (run / "run.lock").write_text("")
    runfiles.empty_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == ["run.lock"]
    assert (outside / "keep" / "data.txt").read_text() == "the user's" and (outside / "notes.txt").is_file()


def test_empty_run_dir_refuses_a_folder_that_is_not_a_run(tmp_path):
    folder = tmp_path / "mywork"
    (folder / ".git").mkdir(parents=True)
    (folder / "notes.txt").write_text("x")
    with pytest.raises(runfiles.RunFileError,
                       match=r"mywork is not a steeldefect run directory .* holds 2 entries \(.git, notes.txt\): it "
                             r"will not be deleted"):
        runfiles.empty_run_dir(folder)
    assert sorted(p.name for p in folder.iterdir()) == [".git", "notes.txt"]


def test_the_run_layout_has_one_home(tmp_path):
    assert runfiles.stage_dir(tmp_path, "efficientnetb0", "binary") == tmp_path / "efficientnetb0" / "binary"
    assert runfiles.stage_dir(tmp_path, "efficientnetb4", "class3") == tmp_path / "efficientnetb4" / "segmentation" / "class3"
    assert runfiles.stage_dir("r", "efficientnetb1", "joint") == Path("r/efficientnetb1/segmentation/joint")
    with pytest.raises(ValueError, match="unknown stage 'class5'; valid: binary, multilabel, class1, class2, class3, "
                                         "class4, joint"):
        runfiles.stage_dir(tmp_path, "efficientnetb0", "class5")
    with pytest.raises(ValueError, match="unknown backbone 'efficientnetb7'; valid: efficientnetb0"):
        runfiles.stage_dir(tmp_path, "efficientnetb7", "binary")
    assert [runfiles.segmentation_key(s) for s in runfiles.SEGMENTATION_STAGES] == [1, 2, 3, 4, 0]
    assert [runfiles.segmentation_stage(runfiles.segmentation_key(s)) for s in runfiles.SEGMENTATION_STAGES] \
        == list(runfiles.SEGMENTATION_STAGES)
    with pytest.raises(ValueError, match="'multilabel' is a classifier's stage, not a segmentation stage"):
        runfiles.segmentation_key("multilabel")
    with pytest.raises(ValueError, match=r"a segmentation key is 0 \(joint\) or a class id \(1, 2, 3, 4\), got 5"):
        runfiles.segmentation_stage(5)


def test_a_stage_is_done_when_its_metrics_exist(tmp_path):
    assert not runfiles.is_done(tmp_path, "efficientnetb0", "class2")
    assert runfiles.stage_metrics(tmp_path, "efficientnetb0", "class2") is None
    folder = runfiles.stage_dir(tmp_path, "efficientnetb0", "class2")
    folder.mkdir(parents=True)
    runfiles.write_json(folder / runfiles.METRICS_FILE, {"val": {"dice_coef": 0.5}})
    assert runfiles.is_done(tmp_path, "efficientnetb0", "class2")
    assert runfiles.stage_metrics(tmp_path, "efficientnetb0", "class2") == {"val": {"dice_coef": 0.5}}
    assert runfiles.read_optional_json(tmp_path / "absent.json") is None


def test_the_latest_run_is_recorded_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runfiles.latest_run() is None
    runfiles.record_latest("runs/smoke")
    assert (tmp_path / "runs" / "latest.txt").read_text() == f"{tmp_path / 'runs' / 'smoke'}\n"
    assert runfiles.latest_run() == tmp_path / "runs" / "smoke"
