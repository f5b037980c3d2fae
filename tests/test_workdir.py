"""The workdir: one run at a time, the config history, the metrics rewound to the restored step."""

import errno
import json
import signal
import subprocess
import sys

import ml_collections
import pytest

from alexnet_jax import workdir as workdir_lib


def test_a_second_lock_on_the_same_workdir_is_refused_until_the_first_ends(tmp_path):
    first = workdir_lib.Lock(str(tmp_path)).acquire()
    with pytest.raises(workdir_lib.WorkdirInUse, match=r"in use by another training run \(pid \d+ on .*started"):
        workdir_lib.Lock(str(tmp_path)).acquire()
    first.release()
    workdir_lib.Lock(str(tmp_path)).acquire().release()


def test_a_killed_runs_lock_is_released_by_the_operating_system(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from alexnet_jax import workdir; lock = workdir.Lock({str(tmp_path)!r}).acquire(); "
            "print('locked', flush=True); import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lib.WorkdirInUse, match=f"pid {holder.pid}"):
        workdir_lib.Lock(str(tmp_path)).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    workdir_lib.Lock(str(tmp_path)).acquire().release()


def test_a_file_system_that_cannot_lock_is_told_from_a_lock_held(tmp_path, monkeypatch):
    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(workdir_lib.fcntl, "flock", no_locks)
    with pytest.raises(workdir_lib.LockUnsupported, match=r"No locks available \(ENOLCK\): this file system does not"):
        workdir_lib.Lock(str(tmp_path)).acquire()


def test_metadata_keeps_the_previous_config_when_it_changes(tmp_path):
    class Data:
        mean, pca_scale, pca_axes, class_names = [0.0, 0.0, 0.0], [1.0] * 3, [[1.0] * 3] * 3, ("a", "b")

    config = ml_collections.ConfigDict({"optim": {"learning_rate": 0.01}})
    workdir_lib.save_run_metadata(str(tmp_path), config, Data)
    workdir_lib.save_run_metadata(str(tmp_path), config, Data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class_names.json", "config.json", "stats.npz"]
    config.optim.learning_rate = 0.02
    workdir_lib.save_run_metadata(str(tmp_path), config, Data)
    previous = [p for p in tmp_path.iterdir() if p.name.startswith("config.") and p.name != "config.json"]
    assert len(previous) == 1 and json.loads(previous[0].read_text())["optim"]["learning_rate"] == 0.01
    assert workdir_lib.saved_config(str(tmp_path))["optim"]["learning_rate"] == 0.02
    assert workdir_lib.class_names(str(tmp_path)) == ["a", "b"]


def test_metrics_are_rewound_to_the_restored_step(tmp_path):
    records = [{"step": s, "kind": k} for s, k in [(1, "train"), (4, "train"), (4, "eval"), (6, "train"), (8, "final")]]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert workdir_lib.rewind_metrics(str(tmp_path), 4) == 2
    assert workdir_lib.read_metrics(str(tmp_path)) == records[:3]
    assert workdir_lib.rewind_metrics(str(tmp_path), 4) == 0
