"""A training run's directory: what it holds besides checkpoints, who may write to it, and reading it back.

    <workdir>/config.json          the resolved config of the run (older ones: config.<time>.json)
    <workdir>/stats.npz            the mean image and RGB principal axes it trained with
    <workdir>/class_names.json     its class names, in label order
    <workdir>/metrics.jsonl        one JSON line per log, evaluation and final result
    <workdir>/final_metrics.json   the final evaluation
    <workdir>/checkpoints/, best/  Orbax checkpoints (checkpoint.py)
    <workdir>/.lock                held by the run that trains in it

Training takes the lock for its whole life (the operating system releases it on any exit, SIGKILL
included), so a second run started in the same directory stops at once instead of interleaving
checkpoints and metrics with the first. Evaluation, predictions and exports only read.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from typing import Any

import jax

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import networks, optim, parallel, statistics, steps

CONFIG_FILE = "config.json"
CLASS_NAMES_FILE = "class_names.json"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final_metrics.json"
LOCK_FILE = ".lock"


class WorkdirInUse(RuntimeError):
    """Another run holds the workdir's lock."""


class Lock:
    """An exclusive lock on a workdir, held from `acquire` until `release` or the process's end."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._file = None

    def acquire(self) -> Lock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise WorkdirInUse(
                f"{os.path.dirname(self.path)} is in use by another training run ({holder}); wait for it to end, "
                "or give this run another --workdir"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def config_changes(old: dict, new: dict) -> list[str]:
    """`["optim.learning_rate: 0.01 -> 0.02", ...]` between two resolved configs (as dicts)."""
    before, after = _flatten(old), _flatten(new)
    return [
        f"{key}: {before.get(key, '(absent)')!r} -> {after.get(key, '(absent)')!r}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


def resolved(config) -> dict:
    """A config as the plain dict that config.json holds."""
    return json.loads(config.to_json_best_effort())


def saved_config(workdir: str) -> dict | None:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_run_metadata(workdir: str, config, data) -> list[str]:
    """Writes the resolved config, the training statistics and the class names; returns the config
    fields that changed since the workdir's last run (whose config is kept as config.<time>.json)."""
    path = os.path.join(workdir, CONFIG_FILE)
    previous, current = saved_config(workdir), resolved(config)
    changes = config_changes(previous, current) if previous is not None else []
    if changes:
        stamp = datetime.datetime.fromtimestamp(os.path.getmtime(path)).strftime("%Y%m%d-%H%M%S")
        os.replace(path, os.path.join(workdir, f"config.{stamp}.json"))
    with open(path, "w") as f:
        json.dump(current, f, indent=1)
    statistics.write_statistics(workdir, data.mean, data.pca_scale, data.pca_axes)
    with open(os.path.join(workdir, CLASS_NAMES_FILE), "w") as f:
        json.dump(list(data.class_names), f)
    return changes


def class_names(workdir: str) -> list[str] | None:
    path = os.path.join(workdir, CLASS_NAMES_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def rewind_metrics(workdir: str, step: int) -> int:
    """Drops the records after `step` from metrics.jsonl: a run resumed at `step` writes them again.

    Returns how many were dropped. Without this, a resumed run would list the steps between its
    checkpoint and the interruption twice.
    """
    records = read_metrics(workdir)
    kept = [r for r in records if r["step"] <= step and r["kind"] != "final"]
    if len(kept) != len(records):
        path = os.path.join(workdir, METRICS_FILE)
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(path + ".tmp", path)
    return len(records) - len(kept)


def restore_params(workdir: str, config, which: str = "best") -> tuple[Any, int]:
    """(parameters, step) of a workdir's `best` (else newest) or `final` (newest) checkpoint, on one device.

    The stored tree is the canonical one whatever mesh trained it, so it restores onto any layout.
    """
    net = networks.from_config(config.model)
    mesh = parallel.make_mesh(1, 1)
    abstract = jax.eval_shape(
        lambda: steps.create_train_state(net, optim.paper_sgd(), mesh, jax.random.key(0), config.model.image_size, 0.0)
    )
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, steps.state_shardings(abstract, mesh)
    )
    checkpoints = checkpoint_lib.Checkpoints(workdir, read_only=True)
    try:
        restored = checkpoints.restore_best(target) if which == "best" else checkpoints.restore_latest(target)
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}; train first: --mode=train --workdir={workdir}")
    state, _ = restored
    return state.params, int(state.step)
