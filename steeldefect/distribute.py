"""Training on several devices or machines: which worker this process is, and the ``tf.distribute`` strategy.

``--strategy mirrored`` mirrors the model over the GPUs of one machine (or, with no GPU, over the logical CPU
devices configured before TensorFlow started, which is how the suite runs it). ``--strategy multiworker`` is
``tf.distribute.MultiWorkerMirroredStrategy`` over the cluster that the ``TF_CONFIG`` environment variable names, as
TensorFlow's multi-worker guide describes: every worker runs the same command with its own ``TF_CONFIG``.

TensorFlow accepts a multi-worker strategy only before its first operation ("Collective ops must be configured at
program startup"), so ``start`` is the first thing ``python -m steeldefect.experiments`` does with TensorFlow.

Who writes what (docs/design.md, "Training on several workers"): the chief (the ``chief`` task, or worker 0 where the
cluster has none) writes the whole run directory; every other worker trains the same steps but keeps its models,
checkpoints and backups in a folder of its own (``scratch_dir``), never in the run, and leaves evaluation, the
cascade and the report to the chief. This module imports only TensorFlow (never Keras), so that the strategy can be
made before anything else runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

STRATEGIES = ("default", "mirrored", "multiworker")
TF_CONFIG = "TF_CONFIG"
SCRATCH_ENV = "STEELDEFECT_WORKER_SCRATCH"  # where non-chief workers keep their files (default: the system temp dir)

_strategies: dict = {}


class ClusterError(ValueError):
    """``TF_CONFIG`` is not a cluster description this package can train on."""


def cluster_config(environ=None) -> dict | None:
    """``TF_CONFIG`` parsed and checked, or None where it is unset or names no cluster.

    Raises:
        ClusterError: naming what is wrong (not JSON, no task, a task that is not in the cluster).

    Example:
        >>> cluster_config({"TF_CONFIG": '{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 1}}'})
        {'cluster': {'worker': ['h:1', 'h:2']}, 'task': {'type': 'worker', 'index': 1}}
    """
    text = (os.environ if environ is None else environ).get(TF_CONFIG, "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ClusterError(f"{TF_CONFIG} is not JSON ({err.msg} at character {err.pos}): {text[:80]}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not cluster:
        return None
    task = config.get("task") or {}
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ClusterError(f"{TF_CONFIG}'s task {json.dumps(task)} is not one of its cluster's tasks "
                           f"({', '.join(f'{k}: {len(v)}' for k, v in cluster.items())}); expected e.g. "
                           '"task": {"type": "worker", "index": 0}')
    return config


def num_workers(environ=None) -> int:
    """How many processes train together: the chief and the workers of ``TF_CONFIG``'s cluster (1 without one)."""
    config = cluster_config(environ)
    if config is None:
        return 1
    return sum(len(config["cluster"].get(kind, ())) for kind in ("chief", "worker"))


def task(environ=None) -> tuple[str, int]:
    """This process's ``(type, index)`` in the cluster; ``("worker", 0)`` without one."""
    config = cluster_config(environ)
    if config is None:
        return "worker", 0
    return config["task"]["type"], int(config["task"]["index"])


def is_chief(environ=None) -> bool:
    """Whether this process writes the run: the ``chief`` task, or worker 0 in a cluster without one."""
    config = cluster_config(environ)
    if config is None:
        return True
    kind, index = task(environ)
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in config["cluster"])


def resolve(name: str | None, environ=None) -> str:
    """The strategy to use for ``--strategy name``: given, or, where not given, "multiworker" when ``TF_CONFIG``
    names a cluster of several workers and "default" otherwise."""
    if name is not None:
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
        return name
    return "multiworker" if num_workers(environ) > 1 else "default"


def scratch_dir(run_dir: str | Path, environ=None) -> Path:
    """The folder where a worker that is not the chief keeps its files of ``run_dir`` (its models, checkpoints and
    backups, which tf.distribute needs it to write but which must not clash with the chief's). The same across
    restarts of the same worker, so that a killed run resumes; under ``$STEELDEFECT_WORKER_SCRATCH`` or the system's
    temporary folder."""
    environ = os.environ if environ is None else environ
    kind, index = task(environ)
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    root = Path(environ.get(SCRATCH_ENV) or tempfile.gettempdir())
    return root / f"steeldefect-{digest}-{kind}-{index}"


def start(name: str):
    """Make the strategy ``name`` (once per process) and return it.

    For "multiworker" call it before TensorFlow's first operation. "mirrored" uses every GPU, or, with none, every
    logical CPU device (one unless configured with ``tf.config.set_logical_device_configuration``).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    if name not in _strategies:
        import tensorflow as tf

        if name == "multiworker":
            cluster_config()  # a bad TF_CONFIG: our message, not TensorFlow's
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        elif name == "mirrored":
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
            strategy = tf.distribute.MirroredStrategy(devices=devices)
        else:
            strategy = tf.distribute.get_strategy()
        _strategies[name] = strategy
    return _strategies[name]


def describe(config: dict) -> str:
    """How a run's strategy (its config.json's settings) divides a batch: over which devices or workers, and what
    each computes."""
    strategy = start(config["strategy"])
    replicas = strategy.num_replicas_in_sync
    where = (f"{num_workers()} worker(s), {replicas} replica(s) in all" if config["strategy"] == "multiworker"
             else f"{replicas} device(s): {', '.join(d.split('/')[-1] for d in strategy.extended.worker_devices)}")
    return (f"{config['strategy']} over {where}; --batch-size is the global batch ({config['batch_size']}, "
            f"{config['segmentation_batch_size']} for the UNets), divided between the replicas, with the learning rate "
            "of one device")
