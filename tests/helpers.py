"""What several test modules share: command-line runs and tree comparisons."""

import os
import subprocess
import sys

import jax
import numpy as np

from alexnet_jax import checkpoint, parallel, train, workdir
from alexnet_jax import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_env(devices: int = 1) -> dict:
    """The environment of a command-line run on `devices` simulated CPU devices (the tests' own 8
    would make every run 8-way data-parallel on a 2-core machine)."""
    # Without the TensorFlow settings `alexnet_jax.cli` gave this process: each run makes its own.
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def run_module(
    module: str, *args: str, devices: int = 1, wait: bool = True, timeout: float = 600, env: dict | None = None
):
    """`python -m module args` from the repository root, with `env` added to the environment:
    (code, stdout, stderr), or the process."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
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


def run_main_in_process(capsys, *argv: str):
    """`python -m alexnet_jax.main ARGV` in this process, with flags of its own: (exit code, stdout,
    stderr). For runs that stop before training, where a fresh process would only add start-up time."""
    code = main_lib.run_command_line(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_trees_close(actual, expected, rtol=1e-5):
    """Every leaf within `rtol` of the expected leaf's largest magnitude."""
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(expected)):
        a, b = np.asarray(a), np.asarray(b)
        scale = max(np.abs(b).max(), 1e-30)
        assert np.abs(a - b).max() <= rtol * scale, (jax.tree_util.keystr(path), np.abs(a - b).max() / scale)


def assert_trees_equal(actual, expected):
    """Every leaf bit for bit."""
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


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
