"""What several test modules share: command-line runs and tree comparisons."""

import hashlib
import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np

from alexnet_jax import checkpoint, parallel, train, workdir
from alexnet_jax import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def bench_module(name: str):
    """bench/NAME.py loaded as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli_env(devices: int = 1) -> dict:
    """The environment of a command-line run on `devices` simulated CPU devices (the tests' own 8
    would make every run 8-way data-parallel on a 2-core machine)."""
    # Without the TensorFlow settings this process has (`alexnet_jax.cli`'s, the conftest's): each run makes its own.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "TF_USE_LEGACY_KERAS")
    }
    # The tests' other XLA flags (the conftest's compiler settings) kept; the device count replaced.
    flags = [flag for flag in env.get("XLA_FLAGS", "").split() if not flag.startswith(DEVICE_COUNT_FLAG)]
    env["XLA_FLAGS"] = " ".join([*flags, f"{DEVICE_COUNT_FLAG}={devices}"])
    return env


def run_python(*argv: str, devices: int = 1, wait: bool = True, timeout: float = 600, env: dict | None = None):
    """`python argv` from the repository root, with `env` added to the environment: (code, stdout,
    stderr), or the process."""
    process = subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        env={**cli_env(devices), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if not wait:
        return process
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def run_module(module: str, *args: str, **options):
    """`python -m module args`, as `run_python` runs it."""
    return run_python("-m", module, *args, **options)


def run_main_in_process(capsys, *argv: str):
    """`python -m alexnet_jax.main ARGV` in this process, with flags of its own: (exit code, stdout,
    stderr). For runs that stop before training, where a fresh process would only add start-up time."""
    code = main_lib.run_command_line(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(root, *, contents: bool = False, with_lock: bool = True) -> dict:
    """Every file under `root` with its size and modification time, or (`contents`) a digest of its
    bytes; `with_lock=False` leaves out a workdir's lock file, which every run rewrites with its pid."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if with_lock or name != workdir.LOCK_FILE:
                if contents:
                    with open(path, "rb") as f:
                        found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
                else:
                    found[os.path.relpath(path, root)] = (os.path.getsize(path), os.path.getmtime(path))
    return found


def leaf_table(tree) -> dict:
    """`{"['params']['conv1']['kernel']": (shape, dtype)}` of every leaf of `tree`, in tree order."""
    table = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype  # (no copy of an array)
        table[jax.tree_util.keystr(path)] = (tuple(np.shape(leaf)), np.dtype(dtype))
    return table


def assert_same_structure(actual, expected) -> None:
    """The same leaves under the same paths (keys, fields, positions), with the same shapes and
    dtypes: a missing or extra parameter, momentum or metric fails here, before any value is read."""
    have, want = leaf_table(actual), leaf_table(expected)
    only_actual, only_expected = sorted(have.keys() - want.keys())[:5], sorted(want.keys() - have.keys())[:5]
    assert list(have) == list(want), (
        f"tree paths differ: {len(have)} leaves against {len(want)}; "
        f"only in actual {only_actual}, only in expected {only_expected}"
    )
    differing = {path: (have[path], want[path]) for path in want if have[path] != want[path]}
    assert not differing, f"leaf shapes or dtypes differ (actual, expected): {dict(list(differing.items())[:5])}"


def assert_trees_close(actual, expected, rtol=1e-5):
    """The same structure (`assert_same_structure`), then every leaf within `rtol` of the expected
    leaf's largest magnitude."""
    assert_same_structure(actual, expected)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(expected)):
        a, b = np.asarray(a), np.asarray(b)
        scale = max(np.abs(b).max(initial=0.0), 1e-30)
        error = np.abs(a - b).max(initial=0.0)
        assert error <= rtol * scale, (jax.tree_util.keystr(path), error / scale)


def assert_trees_equal(actual, expected):
    """The same structure (`assert_same_structure`), then every leaf bit for bit."""
    assert_same_structure(actual, expected)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path), strict=True)


def labels_with_hits(probs: np.ndarray, min_log_gap: float = 1e-3) -> tuple[np.ndarray, int, int]:
    """Labels for the rows of `probs` (N >= 3 examples' class probabilities) that some top-1 and some
    top-5 predictions get right, but not all: one row's most probable class (a top-1 hit), another
    row's third (a top-5 hit only), every other row's most probable class outside its top 5 (a miss,
    probable enough for its loss to be compared). Of 1,000 classes an untrained network's top classes
    are never the random labels' (zero hits on every layout, which compares nothing). The rows whose
    choices are furthest from their neighbours in log-probability are taken, and each choice must be
    `min_log_gap` clear of the rank it must not cross: rounding on another device layout cannot move
    a label across it. Returns (labels, top-1 hits, top-5 hits)."""
    logp = np.log(np.asarray(probs, np.float64))
    ranked = np.argsort(-logp, axis=1, kind="stable")
    ordered = np.take_along_axis(logp, ranked, axis=1)
    top_gap = ordered[:, 0] - ordered[:, 1]  # a top-1 hit stays one
    third_gap = np.minimum(ordered[:, 0] - ordered[:, 2], ordered[:, 2] - ordered[:, 5])  # stays in the top 5, not 1st
    first = int(np.argmax(top_gap))
    third = max((r for r in range(len(probs)) if r != first), key=lambda r: third_gap[r])
    assert top_gap[first] > min_log_gap and third_gap[third] > min_log_gap, (top_gap, third_gap)
    labels = np.empty(len(probs), np.int32)
    for row in range(len(probs)):  # misses: the first rank from the 6th on that is clear of the 5th
        clear = np.nonzero(ordered[row, 4] - ordered[row, 5:] > min_log_gap)[0]
        labels[row] = ranked[row, 5 + clear[0]]
    labels[first], labels[third] = ranked[first, 0], ranked[third, 2]
    return labels, 1, 2


def workdir_with(path, config, params=None, seed=0, step=1):
    """A workdir as a training run leaves it (config, statistics, class names, a checkpoint that is
    both the newest and the best), holding `params` (default: the config's initialisation), made
    without training."""
    setup = train.build(config)
    state = setup.fresh_state()
    if params is not None:
        state = state.replace(params=parallel.shard(params, setup.mesh, parallel.param_specs(params)))
    state = state.replace(step=jax.numpy.int32(step))
    os.makedirs(path, exist_ok=True)
    workdir.save_run_metadata(str(path), config, setup.data)
    checkpoints = checkpoint.Checkpoints(str(path), keep=1, asynchronous=False)
    record = {"plateau": {"learning_rate": config.optim.learning_rate}, "lowest_error": 0.5}
    checkpoints.save(step, state, record)
    checkpoints.save_best(step, state, record)
    checkpoints.close()
    return state
