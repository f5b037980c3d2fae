"""A thin layer over Orbax: the last N checkpoints, the best one, and what to do when one will not do.

A checkpoint holds the whole `TrainState` (parameters, momentum, step, learning rate) and a JSON
record of the host-side state (the plateau schedule, the lowest validation error so far). The data
position and the random keys are functions of the step and `config.seed`, so the step restores
them too. Every process takes part in saving and restoring; Orbax writes each array's shards from
the hosts that hold them, and the stored tree is the canonical one whatever mesh wrote it.

Two ways a checkpoint can fail to restore, handled differently:

* it does not fit the config (another network: a leaf's shape or dtype differs, or a leaf is
  missing). Nothing is wrong with the files; `IncompatibleCheckpoint` is raised before any array
  is read or any checkpoint touched, and the caller stops.
* it is damaged: its bytes are wrong (a file cut short, overwritten or missing, metadata that does
  not parse). It is moved aside to `<workdir>/damaged/<kind>-<step>` (never deleted; across file
  systems if `checkpoints/` is a link) and the one before it is tried, so that no later save
  collides with it and nothing newer than the restored step is lost.

A failure of the machine or the storage rather than of the bytes (no permission, an I/O error, a
stale file handle, no space, too many open files, storage unavailable, out of memory) is not damage:
`CheckpointUnreadable` names the checkpoint and the operating system's error, and nothing is moved.
Only positive evidence of damage moves a checkpoint; an error of an unknown kind stops the same way.
With several processes, the verdict is one verdict: each process reports what it saw and all act on
the worst (a fault stops all of them, damage seen by any moves the checkpoint aside for all).
A save that fails (no space, an I/O error) raises `CheckpointWriteError`; the checkpoints before it
are intact.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from alexnet_jax import files

log = logging.getLogger("alexnet_jax")


class IncompatibleCheckpoint(ValueError):
    """A checkpoint holds another network than the config describes (shapes, dtypes or leaves differ)."""


class CheckpointUnreadable(OSError):
    """A checkpoint could not be read for a reason that is not its bytes (permissions, I/O, storage)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the ones before it are intact."""


def _key_name(entry) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _leaf_table(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """`{"params/conv1/kernel": (shape, dtype)}` of a tree of arrays, shape structs or array metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))[
        0
    ]
    return {"/".join(_key_name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype)) for path, leaf in leaves}


def differences(stored: Any, expected: Any, limit: int = 2) -> list[str]:
    """Leaves whose shape or dtype differ between a checkpoint's tree and the expected one, described."""
    have, want = _leaf_table(stored), _leaf_table(expected)
    lines = []
    # Parameters first: the optimiser state and the scalars repeat what they say.
    for path in sorted(have.keys() | want.keys(), key=lambda p: (not p.startswith("params"), p)):
        if path not in have:
            lines.append(f"{path} is missing from the checkpoint")
        elif path not in want:
            lines.append(f"{path} is in the checkpoint but not in this network")
        elif have[path] != want[path]:
            (s_shape, s_dtype), (w_shape, w_dtype) = have[path], want[path]
            lines.append(f"{path} is {s_dtype}{list(s_shape)} in the checkpoint, {w_dtype}{list(w_shape)} here")
    if len(lines) > limit:
        lines = lines[:limit] + [f"and {len(lines) - limit} more"]
    return lines


class Checkpoints:
    """`<workdir>/checkpoints` (the most recent `keep`) and `<workdir>/best` (lowest validation error).

    `read_only=True` opens a workdir for reading (evaluation, predictions, exports): nothing is
    written, moved or removed.
    """

    def __init__(self, workdir: str, keep: int = 1, asynchronous: bool = True, read_only: bool = False):
        self.workdir = os.path.abspath(workdir)
        self.read_only = read_only

        def manager(name: str, max_to_keep: int) -> ocp.CheckpointManager:
            # (Orbax's own read_only option warns on every use; ours never calls save instead.)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=not read_only,
                # Leftovers of a save cut short (a kill mid-write) are not checkpoints; a later save
                # of the same step would collide with them.
                cleanup_tmp_directories=not read_only,
                enable_async_checkpointing=asynchronous and not read_only,
            )
            handlers = {"state": ocp.StandardCheckpointHandler(), "record": ocp.JsonCheckpointHandler()}
            return ocp.CheckpointManager(os.path.join(self.workdir, name), options=options, item_handlers=handlers)

        self.latest = manager("checkpoints", keep)
        self.best = manager("best", 1)

    @staticmethod
    def _args(state: Any, record: dict) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record))

    def _one_save_at_a_time(self, other: ocp.CheckpointManager) -> None:
        # Across processes Orbax names its commit barrier after the step, so a best and a periodic
        # checkpoint of the same step written at once would collide.
        if jax.process_count() > 1:
            other.wait_until_finished()

    def _writing(self, what: str, operation) -> None:
        try:
            operation()
        except Exception as error:
            raise CheckpointWriteError(
                f"cannot write {what} in {self.workdir}: {files.describe(error)}; the checkpoints before it are "
                "intact: fix the storage (space, permissions), then rerun the same command to resume"
            ) from error

    def save(self, step: int, state: Any, record: dict) -> None:
        """Saves `state` and `record` as step `step`, asynchronously, unless that step is saved already."""
        if step not in self.latest.all_steps():
            self._one_save_at_a_time(self.best)
            args = self._args(state, record)
            self._writing(f"checkpoint {step}", lambda: self.latest.save(step, args=args, force=True))

    def save_best(self, step: int, state: Any, record: dict) -> None:
        """Makes `state` the best checkpoint.

        A run resumed from before an improving evaluation replays it and reaches the same best
        state at the same step, which is kept as it is. A best checkpoint of a later step is the
        future of the interrupted run, which this one replays (and saves again when it gets there)
        or, after a config change, leaves: it is moved to `superseded/`, since Orbax would otherwise
        keep it as the newest and drop this one. One copy per step is kept there, the newest, so
        repeated interruptions do not pile up copies.
        """
        steps = self.best.all_steps()
        if step in steps:
            return
        for later in (s for s in steps if s > step):
            self.best.wait_until_finished()
            self._move_aside(self.best, "best", later, "superseded", replace=True)
        self._one_save_at_a_time(self.latest)
        args = self._args(state, record)
        self._writing(f"best checkpoint {step}", lambda: self.best.save(step, args=args, force=True))

    def wait(self) -> None:
        """Blocks until every asynchronous save has reached the disk."""
        self._writing("a checkpoint", self.latest.wait_until_finished)
        self._writing("the best checkpoint", self.best.wait_until_finished)

    def saving(self) -> bool:
        """Whether an asynchronous save is still being written."""
        return self.latest.is_saving_in_progress() or self.best.is_saving_in_progress()

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """The newest readable periodic checkpoint as (state, record), or None when there is none.

        Raises IncompatibleCheckpoint when it holds another network than `abstract_state` (the target
        shapes, dtypes and shardings), CheckpointUnreadable on a fault; moves a damaged one aside.
        """
        found = self._restore_first(self._candidates("checkpoints"), abstract_state)
        return found and found[:2]

    def restore_best(self, abstract_state: Any, fall_back: bool = True) -> tuple[Any, dict] | None:
        """The best checkpoint (lowest validation error), else (`fall_back`) the newest readable one."""
        found = self._restore_first(self._candidates("best"), abstract_state)
        best = found and found[:2]
        return best if best is not None or not fall_back else self.restore_latest(abstract_state)

    def restore_newest(self, abstract_state: Any) -> tuple[Any, dict, str, int] | None:
        """The newest readable checkpoint of either kind, as (state, record, kind, step).

        A run killed after an improving evaluation and before its next periodic checkpoint (the
        usual case with the paper's cadence) resumes from its best checkpoint, which holds the whole
        state of that step.
        """
        return self._restore_first(self._candidates("checkpoints", "best"), abstract_state)

    def newest_record(self, *kinds: str) -> tuple[dict, str, int] | None:
        """The record (plateau state, config, data identity) of the newest readable checkpoint of
        `kinds` (default: either kind), as (record, kind, step), reading no array; damaged ones are
        moved aside."""
        for kind, step in self._candidates(*(kinds or ("checkpoints", "best"))):
            record = self._attempt(kind, step, self._read_record)
            if record is not _DAMAGED:
                return record, kind, step
        return None

    def steps(self) -> dict[str, list[int]]:
        """The saved steps, newest last: `{"checkpoints": [...], "best": [...]}`."""
        return {"checkpoints": sorted(self.latest.all_steps()), "best": sorted(self.best.all_steps())}

    def _manager(self, kind: str) -> ocp.CheckpointManager:
        return self.latest if kind == "checkpoints" else self.best

    def _candidates(self, *kinds: str) -> list[tuple[str, int]]:
        """(kind, step) of every saved checkpoint of `kinds`, newest first (at one step, `kinds` order)."""
        found = [(kind, step) for kind in kinds for step in self._manager(kind).all_steps()]
        return sorted(found, key=lambda item: (-item[1], kinds.index(item[0])))

    def _read_record(self, kind: str, step: int) -> dict:
        return self._manager(kind).restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]

    def _restore_first(self, candidates, abstract_state: Any) -> tuple[Any, dict, str, int] | None:
        for kind, step in candidates:
            if step not in self._manager(kind).all_steps():  # moved aside while an earlier one was tried
                continue
            stored = self._attempt(kind, step, self._stored_tree)
            if stored is _DAMAGED:
                continue
            mismatch = differences(stored, abstract_state)
            if mismatch:
                raise IncompatibleCheckpoint(
                    f"{os.path.join(self.workdir, kind, str(step))} holds another network than this config describes: "
                    + "; ".join(mismatch)
                )
            restored = self._attempt(kind, step, self._read_all, abstract_state)
            if restored is not _DAMAGED:
                return restored["state"], restored["record"], kind, step
        return None

    def _read_all(self, kind: str, step: int, abstract_state: Any) -> dict:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore())
        return self._manager(kind).restore(step, args=args)

    def _stored_tree(self, kind: str, step: int) -> Any:
        stored = self._manager(kind).item_metadata(step)["state"]
        return getattr(stored, "tree", stored)

    def _attempt(self, kind: str, step: int, read, *args):
        """`read(kind, step, *args)`; `_DAMAGED` when the checkpoint proved damaged (it is then moved
        aside); CheckpointUnreadable on a fault. Every process reaches the same verdict."""
        try:
            result, error = read(kind, step, *args), None
        except Exception as caught:  # classified below: damage, or a fault of the machine
            result, error = None, caught
        verdict = _agree(_OK if error is None else _DAMAGE if _is_damage(error) else _FAULT)
        if verdict == _OK:
            return result
        path = os.path.join(self.workdir, kind, str(step))
        if verdict == _FAULT:
            cause = files.describe(error) if error is not None else "another process could not read it"
            raise CheckpointUnreadable(
                f"cannot read checkpoint {path}: {cause}; it is not damaged and nothing was moved or changed: fix "
                "the storage or the permissions, then rerun the same command to resume"
            ) from error
        self._damaged(self._manager(kind), kind, step, error)
        return _DAMAGED

    def _damaged(self, manager: ocp.CheckpointManager, kind: str, step: int, error: Exception | None) -> None:
        summary = files.describe(error) if error is not None else "another process found it damaged"
        if self.read_only:
            log.warning("%s checkpoint at step %d is damaged (%s); trying an earlier one", kind, step, summary)
            return
        where = self._move_aside(manager, kind, step, "damaged")
        log.warning(
            "%s checkpoint at step %d is damaged (%s); moved it to %s and trying an earlier one",
            kind,
            step,
            summary,
            where,
        )

    def _move_aside(
        self, manager: ocp.CheckpointManager, kind: str, step: int, reason: str, replace: bool = False
    ) -> str:
        """Renames a step's directory to `<workdir>/<reason>/<kind>-<step>[-n]`: kept, out of Orbax's
        sight (`replace`: in place of an earlier copy of the same step moved there)."""
        source = os.path.join(self.workdir, kind, str(step))
        target = os.path.join(self.workdir, reason, f"{kind}-{step}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if replace and os.path.isdir(target):
                shutil.rmtree(target)
            suffix, candidate = 1, target
            while os.path.exists(candidate):
                suffix, candidate = suffix + 1, f"{target}-{suffix}"
            _move(source, candidate)
            target = candidate
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"moved {kind} {step} aside")
        manager.reload()
        return target

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()


def _move(source: str, target: str) -> None:
    """Renames a directory, copying it when the target is on another file system (`checkpoints/` may
    be a link to one): the source is removed only once the copy is whole."""
    try:
        os.rename(source, target)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    try:
        shutil.copytree(source, target, symlinks=True)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    shutil.rmtree(source)


_OK, _DAMAGE, _FAULT = 0, 1, 2
_DAMAGED = object()  # what `_attempt` returns for a checkpoint it moved aside
# What tensorstore and Orbax say when a checkpoint's bytes are wrong: a file cut short (OUT_OF_RANGE),
# overwritten (DATA_LOSS, FAILED_PRECONDITION: a compressed stream that does not decode), missing
# (NOT_FOUND, or Orbax's own "does not exist"), or metadata that does not parse.
_DAMAGE_STATUSES = ("DATA_LOSS", "OUT_OF_RANGE", "FAILED_PRECONDITION", "INVALID_ARGUMENT", "NOT_FOUND")


def _is_damage(error: Exception) -> bool:
    """Whether `error` proves the checkpoint's bytes wrong; a fault of the machine never does."""
    if files.is_os_fault(error):
        return False
    if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError, KeyError)):
        return True
    if files.os_errno(error) in (errno.ENOENT, errno.ENOTDIR):
        return True
    # The status may be only in the error Orbax wrapped ("Encountered error while reading array index
    # ..." from an OUT_OF_RANGE of a data file cut short).
    messages = [str(cause) for cause in files.causes(error)]
    return any(status in message for message in messages for status in _DAMAGE_STATUSES) or any(
        "does not exist" in message for message in messages
    )


def _agree(verdict: int) -> int:
    """The worst verdict of every process (one process: its own)."""
    if jax.process_count() == 1:
        return verdict
    return int(np.max(multihost_utils.process_allgather(np.int32(verdict))))


def abstract_like(state: Any) -> Any:
    """Shape, dtype and sharding of every leaf: the target that restores into the same layout."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
