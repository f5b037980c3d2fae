"""Two processes over jax.distributed on 127.0.0.1 train exactly as one process does."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from alexnet_jax import model as model_lib
from alexnet_jax import optim, parallel, steps
from tests.multihost_case import SIZE, make_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path):
    port, out = free_port(), tmp_path / "params.npz"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    workers = [
        subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "distributed_worker.py"), str(i), "2", str(port), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    for worker, log in zip(workers, logs):
        assert worker.returncode == 0, log[-3000:]

    net = model_lib.AlexNet(num_classes=10)
    optimizer = optim.paper_sgd()
    mesh = parallel.make_mesh(1, 1)
    state = steps.create_train_state(net, optimizer, mesh, jax.random.key(0), SIZE, 0.01)
    state, metrics = steps.make_train_step(net, optimizer, mesh)(
        state, parallel.host_batch_to_global(make_batch(), mesh), jax.random.key(3)
    )
    result = np.load(out)
    np.testing.assert_allclose(float(result["loss"]), float(metrics["loss"]), rtol=1e-5)
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(state.params)):
        theirs = result[jax.tree_util.keystr(path)]
        assert np.abs(theirs - leaf).max() <= 1e-5 * np.abs(leaf).max(), jax.tree_util.keystr(path)


def test_local_launch_script_trains_and_resumes_across_processes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHON"] = sys.executable
    command = [os.path.join(ROOT, "launch", "local_cpu.sh"), "2", "2", str(tmp_path), "--config.parallel.model=2",
               "--config.eval.ten_crop=False"]  # fmt: skip
    first = subprocess.run(command + ["--config.train.num_epochs=1"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    # One result, from process 0 (gloo prints its own lines on stdout too).
    assert first.stdout.count('"count"') == 1
    assert json.loads(first.stdout[first.stdout.index("{\n") :])["count"] == 40
    second = subprocess.run(command + ["--config.train.num_epochs=2"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from step 8" in second.stderr
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())[-1] == 16
