"""launch/: the single-host and SLURM scripts start `alexnet_jax.main` with the mesh, config and signal
their comments and docs/parallelism.md promise. A `python` (and `srun`) of our own on the PATH records
the command instead of training: what is tested is the scripts' contract, not a run (local_cpu.sh's
runs are tested in test_portability.py)."""

import os
import subprocess

import pytest

from tests.helpers import ROOT

RECORDER = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$RECORD"
"""


@pytest.fixture
def recorded(tmp_path):
    """Runs a launch script with `python` and `srun` that write their arguments to a file; returns them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "srun"):
        (bin_dir / name).write_text(RECORDER)
        (bin_dir / name).chmod(0o755)

    def run(script, *args, **env):
        record = tmp_path / "record"
        environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record), **env}
        done = subprocess.run(
            ["bash", os.path.join(ROOT, "launch", script), *args], env=environment, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return record.read_text().splitlines()

    return run


def test_single_host_runs_the_paper_on_every_device_with_two_towers(recorded):
    args = recorded("single_host.sh", "runs/two", "--config.optim.batch_size=256")
    assert args == [
        "-m",
        "alexnet_jax.main",
        "--config=configs/paper.py",
        "--workdir=runs/two",
        "--config.parallel.model=2",
        "--config.parallel.data=-1",  # every device the host has, in pairs
        "--config.optim.batch_size=256",
    ]


def test_single_host_reads_config_and_model_from_the_environment(recorded):
    args = recorded("single_host.sh", "runs/one", CONFIG="configs/default.py", MODEL="1")
    assert "--config=configs/default.py" in args and "--config.parallel.model=1" in args


def test_slurm_asks_for_sigterm_two_minutes_before_the_limit_and_joins_the_hosts(recorded):
    script = open(os.path.join(ROOT, "launch", "slurm.sbatch")).read()
    assert "#SBATCH --signal=TERM@120" in script.splitlines()  # SLURM: SIGTERM 120 s before the time limit
    args = recorded("slurm.sbatch", "/shared/runs/paper", "--config.train.num_epochs=90")
    assert args[:5] == ["python", "-m", "alexnet_jax.main", "--config=configs/paper.py", "--workdir=/shared/runs/paper"]
    assert "--config.parallel.distributed=True" in args and args[-1] == "--config.train.num_epochs=90"
