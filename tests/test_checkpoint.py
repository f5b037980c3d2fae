"""Checkpoints: a damaged one is moved aside and never deleted, another network's stops everything
untouched, a replayed best is kept, and the leftovers of a save cut short do not block a later one."""

import os

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint as checkpoint_lib


def state_of(step, size=6):
    return {"w": np.arange(size, dtype=np.float32) * step, "step": np.int32(step)}


def abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)


def save_steps(workdir, steps, keep=3):
    checkpoints = checkpoint_lib.Checkpoints(str(workdir), keep=keep, asynchronous=False)
    for step in steps:
        checkpoints.save(step, state_of(step), {"plateau": {}, "step": step})
    checkpoints.close()


def snapshot(root):
    """Every file under `root` with its size and modification time."""
    return {
        os.path.relpath(os.path.join(d, f), root): (
            os.path.getsize(os.path.join(d, f)),
            os.path.getmtime(os.path.join(d, f)),
        )
        for d, _, files in os.walk(root)
        for f in files
    }


def test_damaged_checkpoint_is_moved_aside_and_the_run_goes_on(tmp_path, caplog):
    save_steps(tmp_path, [1, 2])
    for path in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, asynchronous=False)
    with caplog.at_level("WARNING", logger="alexnet_jax"):
        restored, record = checkpoints.restore_latest(abstract(state_of(0)))
    np.testing.assert_array_equal(np.asarray(restored["w"]), state_of(1)["w"])
    assert record["step"] == 1 and "checkpoints checkpoint at step 2 is unreadable" in caplog.text
    # Kept for inspection, out of the way: the resumed run saves step 2 again without a collision.
    assert (tmp_path / "damaged" / "checkpoints-2" / "state").is_dir()
    checkpoints.save(2, state_of(2), {"step": 2})
    checkpoints.close()
    assert checkpoint_lib.Checkpoints(str(tmp_path), read_only=True).steps()["checkpoints"] == [1, 2]


def test_a_failure_of_the_machine_is_not_damage(tmp_path, monkeypatch):
    """Out of memory or a permission error while restoring says nothing about the checkpoint: it
    stops the run, and every checkpoint stays where it is."""
    save_steps(tmp_path, [1, 2])
    before = snapshot(tmp_path)
    checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, asynchronous=False)
    for error in (MemoryError("host"), RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating"), PermissionError()):

        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(checkpoints.latest, "restore", fail)
        with pytest.raises(type(error)):
            checkpoints.restore_latest(abstract(state_of(0)))
    checkpoints.close()
    assert snapshot(tmp_path) == before


def test_another_networks_checkpoint_stops_with_nothing_touched(tmp_path):
    save_steps(tmp_path, [1, 2])
    before = snapshot(tmp_path)
    checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, asynchronous=False)
    with pytest.raises(
        checkpoint_lib.IncompatibleCheckpoint, match=r"w is float32\[6\] in the checkpoint, float32\[8\] here"
    ):
        checkpoints.restore_latest(abstract(state_of(0, size=8)))
    with pytest.raises(checkpoint_lib.IncompatibleCheckpoint, match="extra is missing from the checkpoint"):
        checkpoints.restore_latest(abstract({**state_of(0), "extra": np.zeros(2, np.float32)}))
    checkpoints.close()
    assert snapshot(tmp_path) == before


def test_a_replayed_best_is_kept_and_a_later_one_from_another_history_is_moved_aside(tmp_path):
    checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, asynchronous=False)
    checkpoints.save_best(8, state_of(8), {"step": 8})
    checkpoints.save_best(8, state_of(8), {"step": 8})  # a resumed run reaching the same evaluation
    assert checkpoints.steps()["best"] == [8]
    checkpoints.save_best(6, state_of(6), {"step": 6})  # a run that diverged before step 8
    assert checkpoints.steps()["best"] == [6]
    assert (tmp_path / "superseded" / "best-8").is_dir()
    restored, _ = checkpoints.restore_best(abstract(state_of(0)))
    assert int(restored["step"]) == 6
    # Killed again and resumed from before step 6: the step-8 best of the replay goes aside in place
    # of the earlier copy, so repeated interruptions keep one copy per step.
    checkpoints.save_best(8, state_of(8), {"step": 8})
    checkpoints.save_best(4, state_of(4), {"step": 4})
    assert checkpoints.steps()["best"] == [4] and os.listdir(tmp_path / "superseded") == ["best-8"]
    checkpoints.close()


def test_leftovers_of_a_save_cut_short_do_not_block_saving_that_step(tmp_path):
    save_steps(tmp_path, [1])
    leftover = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-123"
    (leftover / "state").mkdir(parents=True)
    (leftover / "state" / "partial").write_bytes(b"half a file")
    save_steps(tmp_path, [2])
    assert checkpoint_lib.Checkpoints(str(tmp_path), read_only=True).steps()["checkpoints"] == [1, 2]
    assert not leftover.exists()
