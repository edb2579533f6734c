"""Training on several workers (--strategy multiworker) and devices (--strategy mirrored): who writes what, and the
two-process runs on loopback ports that prove it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steeldefect import distribute
from steeldefect.experiments import STOP_AFTER_ENV

CLUSTER = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}


def tf_config(cluster: dict, kind: str, index: int) -> dict:
    return {distribute.TF_CONFIG: json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}


def test_no_tf_config_is_one_worker_that_is_the_chief():
    assert distribute.cluster_config({}) is None
    assert distribute.cluster_config({distribute.TF_CONFIG: '{"task": {"type": "worker", "index": 0}}'}) is None
    assert distribute.num_workers({}) == 1
    assert distribute.task({}) == ("worker", 0)
    assert distribute.is_chief({})
    assert distribute.resolve(None, {}) == "default"


def test_worker_0_is_the_chief_unless_the_cluster_has_one():
    assert distribute.is_chief(tf_config(CLUSTER, "worker", 0))
    assert not distribute.is_chief(tf_config(CLUSTER, "worker", 1))
    with_chief = {"chief": ["127.0.0.1:3"], **CLUSTER}
    assert distribute.is_chief(tf_config(with_chief, "chief", 0))
    assert not distribute.is_chief(tf_config(with_chief, "worker", 0))
    assert distribute.num_workers(tf_config(with_chief, "worker", 1)) == 3
    assert distribute.task(tf_config(with_chief, "worker", 1)) == ("worker", 1)


def test_strategy_follows_tf_config_unless_given():
    environ = tf_config(CLUSTER, "worker", 1)
    assert distribute.resolve(None, environ) == "multiworker"
    assert distribute.resolve("default", environ) == "default"
    assert distribute.resolve(None, tf_config({"worker": ["127.0.0.1:1"]}, "worker", 0)) == "default"
    with pytest.raises(ValueError, match="unknown strategy 'tpu'; valid: default, mirrored, multiworker"):
        distribute.resolve("tpu", {})


def test_bad_tf_config_is_named():
    with pytest.raises(distribute.ClusterError, match=r"TF_CONFIG is not JSON .*: \{cluster"):
        distribute.cluster_config({distribute.TF_CONFIG: "{cluster: 1}"})
    with pytest.raises(distribute.ClusterError, match=r'task \{"type": "worker", "index": 2\} is not one of its '
                                                      r"cluster's tasks \(worker: 2\)"):
        distribute.cluster_config(tf_config(CLUSTER, "worker", 2))


def test_scratch_dir_is_the_workers_own_and_stable(tmp_path):
    worker1 = {**tf_config(CLUSTER, "worker", 1), distribute.SCRATCH_ENV: str(tmp_path)}
    worker2 = {**tf_config({"worker": [*CLUSTER["worker"], "127.0.0.1:3"]}, "worker", 2),
               distribute.SCRATCH_ENV: str(tmp_path)}
    first = distribute.scratch_dir(tmp_path / "run", worker1)
    assert first.parent == tmp_path and first.name.endswith("-worker-1")
    assert distribute.scratch_dir(tmp_path / "run", worker1) == first  # a restarted worker finds its backups
    assert distribute.scratch_dir(tmp_path / "run", worker2) != first
    assert distribute.scratch_dir(tmp_path / "other", worker1) != first


def test_experiments_refuses_a_bad_tf_config_in_one_line(tmp_path, capsys, monkeypatch):
    from steeldefect import experiments

    monkeypatch.setenv(distribute.TF_CONFIG, json.dumps({"cluster": CLUSTER, "task": {"type": "ps", "index": 0}}))
    assert experiments.main(["--profile", "smoke", "--run-dir", str(tmp_path / "run")]) == 2
    assert "error: TF_CONFIG's task {\"type\": \"ps\", \"index\": 0} is not one of its cluster's tasks" in \
        capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- two processes on loopback ---------------------------------------------------------------------------------

TIMEOUT_S = 420  # per phase; a stage of one backbone takes about 1.5 min with two workers on two cores


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_workers(cwd: Path, scratch: Path, *extra: str, stop_after: int | None = 1) -> list[subprocess.Popen]:
    """Two workers of the smoke profile (B0) with one shared run directory, as a user starts them."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    command = [sys.executable, "-m", "steeldefect.experiments", "--profile", "smoke", "--backbones", "efficientnetb0",
               "--run-dir", "run", *extra]
    env = {**os.environ, distribute.SCRATCH_ENV: str(scratch)}
    if stop_after:
        env[STOP_AFTER_ENV] = str(stop_after)
    return [subprocess.Popen(command, cwd=cwd, env={**env, **tf_config(cluster, "worker", index)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for index in (0, 1)]


def finish(processes: list[subprocess.Popen], timeout_s: float = TIMEOUT_S) -> list[tuple[int, str]]:
    """Wait for every process (killing all of them past the limit) and return ``(returncode, output)``."""
    deadline = time.time() + timeout_s
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=max(1.0, deadline - time.time()))
            results.append((process.returncode, output))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def keys_of(value, prefix=""):
    """Every key path of a nested dict: its shape, not its numbers."""
    if not isinstance(value, dict):
        return {prefix}
    return set().union(*(keys_of(v, f"{prefix}/{k}") for k, v in value.items()))


@pytest.mark.slow
def test_two_workers_train_a_stage_into_one_run_written_by_the_chief(tmp_path, smoke_run):
    scratch = tmp_path / "scratch"
    (chief_rc, chief_out), (worker_rc, worker_out) = finish(start_workers(tmp_path, scratch))
    assert chief_rc == 130 and worker_rc == 130, chief_out[-3000:] + worker_out[-3000:]  # the hook's stop, clean
    assert "stopping after 1 stage(s)" in chief_out and "stopping after 1 stage(s)" in worker_out
    assert "cluster: worker 0 of 2 workers (the chief: it writes the run)" in chief_out
    assert "cluster: worker 1 of 2 workers (not the chief" in worker_out
    assert "strategy: multiworker over 2 worker(s), 2 replica(s) in all; --batch-size is the global batch" in chief_out

    run = tmp_path / "run"
    stage = "efficientnetb0/binary"
    # Exactly one set of the stage's files, the same set a single worker writes, and no stray file.
    assert {f for f in files_under(run) if f.startswith(stage)} == {
        f"{stage}/{name}" for name in ("history.csv", "metrics.json", "model.json", "model.weights.h5", "timing.json",
                                       "encoder.weights.h5")}  # the encoder: stages 2-3 start from it (stage1)
    assert files_under(run) - {f for f in files_under(run) if f.startswith(stage)} == {
        "config.json", "data_plan.json", "dataset_stats.json", "splits.csv", "thresholds.json"}
    config = json.loads((run / "config.json").read_text())
    assert config["strategy"] == "multiworker" and config["workers"] == 2
    # Its metrics have the shape of a single worker's (the smoke run's) stage.
    single = json.loads((smoke_run.run_dir / stage / "metrics.json").read_text())
    assert keys_of(json.loads((run / stage / "metrics.json").read_text())) == keys_of(single)
    # The other worker wrote only into its scratch folder: the same epochs with the same (all-reduced) logs.
    [own] = list(scratch.iterdir())
    assert own.name.endswith("-worker-1")
    assert (own / stage / "history.csv").read_text() == (run / stage / "history.csv").read_text()
    assert not (own / stage / "metrics.json").exists()  # evaluation is the chief's


EPOCH_2_OF_4_STEPS = ("--epochs", "2", "--batch-size", "8")


@pytest.mark.slow
def test_a_killed_worker_stops_the_chief_and_the_same_commands_resume(tmp_path):
    scratch = tmp_path / "scratch"
    # Batch 8: epoch 2 is four steps (the smoke profile's batch 64 makes it one), long enough to be killed inside.
    chief, worker = start_workers(tmp_path, scratch, *EPOCH_2_OF_4_STEPS)
    backup = tmp_path / "run" / "efficientnetb0" / "binary" / "backup" / "training_metadata.json"
    deadline = time.time() + TIMEOUT_S
    try:
        while not backup.is_file():  # epoch 1 is done and backed up
            assert chief.poll() is None and time.time() < deadline, chief.communicate()[0][-3000:]
            time.sleep(0.5)
        time.sleep(3.0)  # into epoch 2
        worker.send_signal(signal.SIGKILL)
        (chief_rc, chief_out), _ = finish([chief, worker], timeout_s=180)
    finally:
        for process in (chief, worker):
            if process.poll() is None:
                process.kill()
    assert chief_rc == 3, chief_out[-3000:]
    assert "a worker was lost: start the same command on every worker again to resume" in chief_out
    assert json.loads(backup.read_text())["epoch"] >= 1

    (chief_rc, chief_out), (worker_rc, worker_out) = finish(start_workers(tmp_path, scratch, *EPOCH_2_OF_4_STEPS))
    assert chief_rc == 130 and worker_rc == 130, chief_out[-3000:] + worker_out[-3000:]
    stage = tmp_path / "run" / "efficientnetb0" / "binary"
    epochs = [line.split(",")[0] for line in (stage / "history.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2"]  # resumed, not restarted: no epoch twice
    assert json.loads((stage / "timing.json").read_text())["attempts"] == 2
    assert (stage / "metrics.json").is_file() and not (stage / "backup").exists()


MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from steeldefect.experiments import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    """--strategy mirrored runs the multi-GPU code path on two logical CPU devices, as a GPU machine would."""
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED, "--profile", "smoke", "--backbones", "efficientnetb0", "--run-dir", "run",
         "--strategy", "mirrored"], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S,
        env={**os.environ, STOP_AFTER_ENV: "1"})
    assert result.returncode == 130, result.stdout[-3000:] + result.stderr[-3000:]
    assert "strategy: mirrored over 2 device(s): device:CPU:0, device:CPU:1" in result.stdout
    metrics = json.loads((tmp_path / "run" / "efficientnetb0" / "binary" / "metrics.json").read_text())
    assert metrics["val"]["n_images"] > 0 and 0.0 <= metrics["val"]["acc"] <= 1.0


def test_a_worker_that_is_not_the_chief_leaves_report_only_to_the_chief(tmp_path, capsys, monkeypatch):
    from steeldefect import experiments

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("the user's")
    monkeypatch.setenv(distribute.TF_CONFIG, tf_config(CLUSTER, "worker", 1)[distribute.TF_CONFIG])
    args = experiments._parser().parse_args(["--report-only", "--run-dir", str(run_dir)])
    args.strategy = "multiworker"
    assert experiments.run(args) == 0
    assert "worker: --report-only is the chief's to run; nothing done here" in capsys.readouterr().out
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]


def test_a_worker_refuses_a_run_of_other_settings_as_the_chief_does(tmp_path):
    from steeldefect import runfiles, runplan

    settings = {"seed": 0, "epochs": 2}
    runfiles.write_json(tmp_path / runfiles.CONFIG_FILE, {**settings, "seed": 1})
    with pytest.raises(SystemExit, match=r"other settings \(seed: 1 there, 0 now\)\. .* \(the chief refuses to resume "
                                         r"it, and so does this worker\)"):
        runplan.worker_config(tmp_path, settings, fresh=False)
    assert runplan.worker_config(tmp_path, settings, fresh=True) == settings  # the chief empties it
    runfiles.write_json(tmp_path / runfiles.CONFIG_FILE, settings)
    assert runplan.worker_config(tmp_path, settings, fresh=False) == settings
