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
* it is damaged (a file cut short or overwritten). It is moved aside to
  `<workdir>/damaged/<kind>-<step>` (never deleted) and the one before it is tried, so that no later
  save collides with it and nothing newer than the restored step is lost. A failure of the machine
  rather than the files (out of memory, permissions, the network) is raised as it is.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger("alexnet_jax")


class IncompatibleCheckpoint(ValueError):
    """A checkpoint holds another network than the config describes (shapes, dtypes or leaves differ)."""


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

    def save(self, step: int, state: Any, record: dict) -> None:
        """Saves `state` and `record` as step `step`, asynchronously, unless that step is saved already."""
        if step not in self.latest.all_steps():
            self._one_save_at_a_time(self.best)
            self.latest.save(step, args=self._args(state, record), force=True)

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
        self.best.save(step, args=self._args(state, record), force=True)

    def wait(self) -> None:
        """Blocks until every asynchronous save has reached the disk."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def saving(self) -> bool:
        """Whether an asynchronous save is still being written."""
        return self.latest.is_saving_in_progress() or self.best.is_saving_in_progress()

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """The newest readable checkpoint as (state, record), or None when there is none.

        Raises IncompatibleCheckpoint when the newest one holds another network than
        `abstract_state` (the target shapes, dtypes and shardings); moves a damaged one aside.
        """
        return self._restore(self.latest, "checkpoints", abstract_state)

    def restore_best(self, abstract_state: Any, fall_back: bool = True) -> tuple[Any, dict] | None:
        """The best checkpoint (lowest validation error), else (`fall_back`) the newest readable one."""
        best = self._restore(self.best, "best", abstract_state)
        return best if best is not None or not fall_back else self.restore_latest(abstract_state)

    def steps(self) -> dict[str, list[int]]:
        """The saved steps, newest last: `{"checkpoints": [...], "best": [...]}`."""
        return {"checkpoints": sorted(self.latest.all_steps()), "best": sorted(self.best.all_steps())}

    def _restore(self, manager: ocp.CheckpointManager, kind: str, abstract_state: Any) -> tuple[Any, dict] | None:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                stored = manager.item_metadata(step)["state"]
                stored = getattr(stored, "tree", stored)
            except Exception as error:  # unreadable metadata: the checkpoint is damaged
                _raise_unless_damage(error)
                self._damaged(manager, kind, step, error)
                continue
            mismatch = differences(stored, abstract_state)
            if mismatch:
                raise IncompatibleCheckpoint(
                    f"{os.path.join(self.workdir, kind, str(step))} holds another network than this config describes: "
                    + "; ".join(mismatch)
                )
            try:
                restored = manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()
                    ),
                )
            except Exception as error:  # the tree fits but its data cannot be read: damaged
                _raise_unless_damage(error)
                self._damaged(manager, kind, step, error)
                continue
            return restored["state"], restored["record"]
        return None

    def _damaged(self, manager: ocp.CheckpointManager, kind: str, step: int, error: Exception) -> None:
        summary = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        if self.read_only:
            log.warning("%s checkpoint at step %d is unreadable (%s); trying an earlier one", kind, step, summary)
            return
        where = self._move_aside(manager, kind, step, "damaged")
        log.warning(
            "%s checkpoint at step %d is unreadable (%s); moved it to %s and trying an earlier one",
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
            os.rename(source, candidate)
            target = candidate
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"moved {kind} {step} aside")
        manager.reload()
        return target

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()


# Failures that say nothing about the checkpoint's bytes: the machine, the permissions or the
# network. Moving the checkpoint aside for one of these would restart a healthy run from scratch.
_NOT_DAMAGE = (MemoryError, PermissionError, TimeoutError, ConnectionError)
_NOT_DAMAGE_MESSAGES = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory")


def _raise_unless_damage(error: Exception) -> None:
    if isinstance(error, _NOT_DAMAGE) or any(text in str(error) for text in _NOT_DAMAGE_MESSAGES):
        raise error


def abstract_like(state: Any) -> Any:
    """Shape, dtype and sharding of every leaf: the target that restores into the same layout."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
