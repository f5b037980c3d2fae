"""launch/sweep.py: grid expansion, one workdir per run, resumable sweeps, the results table."""

import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch"))
import sweep  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_grid_expands_to_every_combination():
    runs = sweep.expand(["optim.learning_rate=0.01,0.02", "optim.batch_size=32,64,128"])
    assert len(runs) == 6
    assert runs[0] == [("optim.learning_rate", "0.01"), ("optim.batch_size", "32")]
    assert sweep.run_name(runs[-1]) == "optim.learning_rate=0.02,optim.batch_size=128"


def test_sweep_runs_resumes_and_tabulates(tmp_path):
    command = [sys.executable, "launch/sweep.py", "run", "--config=configs/smoke.py", f"--root={tmp_path}",
               "--grid", "optim.learning_rate=0.01,0.02", "--",
               "--config.train.num_epochs=1", "--config.eval.ten_crop=False"]  # fmt: skip
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    assert first.stdout.count("running:") == 2
    assert sorted(os.listdir(tmp_path)) == ["optim.learning_rate=0.01", "optim.learning_rate=0.02"]
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    assert again.stdout.count("done already") == 2
    table = subprocess.run([sys.executable, "launch/sweep.py", "table", f"--root={tmp_path}"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout  # fmt: skip
    lines = table.strip().splitlines()
    assert lines[0].startswith("run") and len(lines) == 3
    assert all(line.rstrip().endswith("done") for line in lines[1:])


def test_dry_run_prints_commands(tmp_path):
    out = subprocess.run(
        [sys.executable, "launch/sweep.py", "run", "--config=configs/smoke.py", f"--root={tmp_path}",
         "--grid", "seed=0,1,2", "--dry_run"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.count("--config.seed=") == 3 and not os.listdir(tmp_path)
