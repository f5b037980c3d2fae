"""Checkpoints: a damaged one is moved aside and never deleted, another network's stops everything
untouched, a replayed best is kept, and the leftovers of a save cut short do not block a later one."""

import errno
import json
import os

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint as checkpoint_lib
from tests.helpers import snapshot


def state_of(step, size=6):
    return {"w": np.arange(size, dtype=np.float32) * step, "step": np.int32(step)}


def abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)


def save_steps(workdir, steps, keep=3):
    checkpoints = checkpoint_lib.Checkpoints(str(workdir), keep=keep, asynchronous=False)
    for step in steps:
        checkpoints.save(step, state_of(step), {"plateau": {}, "step": step})
    checkpoints.close()


def test_damaged_checkpoint_is_moved_aside_and_the_run_goes_on(tmp_path, caplog):
    save_steps(tmp_path, [1, 2])
    for path in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, asynchronous=False)
    with caplog.at_level("WARNING", logger="alexnet_jax"):
        restored, record = checkpoints.restore_latest(abstract(state_of(0)))
    np.testing.assert_array_equal(np.asarray(restored["w"]), state_of(1)["w"])
    assert record["step"] == 1 and "checkpoints checkpoint at step 2 is damaged" in caplog.text
    # Kept for inspection, out of the way: the resumed run saves step 2 again without a collision.
    assert (tmp_path / "damaged" / "checkpoints-2" / "state").is_dir()
    checkpoints.save(2, state_of(2), {"step": 2})
    checkpoints.close()
    assert checkpoint_lib.Checkpoints(str(tmp_path), read_only=True).steps()["checkpoints"] == [1, 2]


FAULTS = [
    MemoryError("host"),
    RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating"),
    PermissionError(errno.EACCES, "Permission denied"),
    OSError(errno.EIO, "Input/output error"),
    OSError(errno.ESTALE, "Stale file handle"),
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EMFILE, "Too many open files"),
    ValueError("PERMISSION_DENIED: Error reading ...: Permission denied [os_error_code='13']"),
    ValueError("UNKNOWN: Error reading ... [os_error_code='5']"),
    ValueError("UNAVAILABLE: the bucket is not reachable"),
    ValueError("DEADLINE_EXCEEDED: read timed out"),
    TypeError("an error of a kind nobody has seen: not evidence of damage"),
]
DAMAGE = [
    ValueError("OUT_OF_RANGE: Requested byte range [0, 2291) is not valid for value of size 100"),
    ValueError("FAILED_PRECONDITION: ZSTD_decompressStream() failed: Unknown frame descriptor"),
    ValueError("DATA_LOSS: Error decoding manifest: Encoded length (10) is less than minimum length (16)"),
    FileNotFoundError("Metadata file (named _METADATA) does not exist at /w/checkpoints/2/state."),
    json.JSONDecodeError("Expecting value", "{", 1),
]


@pytest.mark.parametrize("error", FAULTS, ids=lambda e: f"{type(e).__name__}:{str(e)[:24]}")
def test_a_failure_of_the_machine_is_not_damage(tmp_path, monkeypatch, error):
    """Out of memory, no permission, I/O errors, a stale handle, no space, too many open files, storage
    unavailable, an error of an unknown kind: one error naming the checkpoint and the system's words,
    and every checkpoint stays where it is."""
    save_steps(tmp_path, [1, 2])
    before = snapshot(tmp_path)
    checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, asynchronous=False)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(checkpoints.latest, "restore", fail)
    with pytest.raises(checkpoint_lib.CheckpointUnreadable, match=f"cannot read checkpoint {tmp_path}/checkpoints/2"):
        checkpoints.restore_latest(abstract(state_of(0)))
    checkpoints.close()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("error", DAMAGE, ids=lambda e: f"{type(e).__name__}:{str(e)[:24]}")
def test_wrong_bytes_are_damage(error):
    assert checkpoint_lib._is_damage(error)


def test_several_processes_take_one_decision(tmp_path, monkeypatch):
    """A process that read the checkpoint well still moves it aside when another found it damaged, and
    stops when another could not read it: every process acts on the worst verdict."""
    save_steps(tmp_path, [1, 2])
    checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, asynchronous=False)
    others = []
    monkeypatch.setattr(checkpoint_lib.jax, "process_count", lambda: 2)
    monkeypatch.setattr(
        checkpoint_lib.multihost_utils, "process_allgather", lambda mine: np.array([int(mine), others.pop(0)])
    )
    monkeypatch.setattr(checkpoint_lib.multihost_utils, "sync_global_devices", lambda name: None)
    others[:] = [checkpoint_lib._FAULT]
    with pytest.raises(checkpoint_lib.CheckpointUnreadable, match="another process could not read it"):
        checkpoints.restore_latest(abstract(state_of(0)))
    others[:] = [checkpoint_lib._OK, checkpoint_lib._DAMAGE, checkpoint_lib._OK, checkpoint_lib._OK]
    restored, record = checkpoints.restore_latest(abstract(state_of(0)))
    assert record["step"] == 1 and (tmp_path / "damaged" / "checkpoints-2").is_dir()
    checkpoints.close()


def test_moving_aside_works_across_file_systems(tmp_path, monkeypatch):
    """`checkpoints/` may be a link to another file system, where a rename fails with EXDEV: the
    directory is copied, and removed only once the copy is whole."""
    source, target = tmp_path / "a", tmp_path / "b"
    (source / "state").mkdir(parents=True)
    (source / "state" / "data").write_bytes(b"bytes")
    real_rename = os.rename

    def rename(a, b):
        if str(a) == str(source):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(a, b)

    monkeypatch.setattr(checkpoint_lib.os, "rename", rename)
    checkpoint_lib._move(str(source), str(target))
    assert not source.exists() and (target / "state" / "data").read_bytes() == b"bytes"


def test_the_newest_checkpoint_of_either_kind_is_restored(tmp_path):
    checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, asynchronous=False)
    checkpoints.save(5, state_of(5), {"step": 5})
    checkpoints.save_best(8, state_of(8), {"step": 8})
    state, record, kind, step = checkpoints.restore_newest(abstract(state_of(0)))
    assert (kind, step, record["step"]) == ("best", 8, 8)
    assert checkpoints.newest_record() == ({"step": 8}, "best", 8)
    checkpoints.close()


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
