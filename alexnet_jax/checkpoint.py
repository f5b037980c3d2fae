"""A thin layer over Orbax: the last N checkpoints, the best one, and fall-back on corruption.

A checkpoint holds the whole `TrainState` (parameters, momentum, step, learning rate) and a JSON
record of the host-side state: the plateau schedule and the best validation error. The data
position and the random keys are functions of the step and `config.seed` (input_pipeline.py,
steps.py), so the step restores them too. Every process takes part in saving and restoring; Orbax
writes each array's shards from the hosts that hold them.
"""

from __future__ import annotations

import logging

log = logging.getLogger("alexnet_jax")
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """`<workdir>/checkpoints` (the most recent `keep`) and `<workdir>/best` (lowest error)."""

    def __init__(self, workdir: str, keep: int, asynchronous: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous
        )
        self.latest = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)
        best_options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=asynchronous)
        self.best = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "best"), options=best_options)

    @staticmethod
    def _args(state: Any, record: dict) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record))

    def save(self, step: int, state: Any, record: dict, *, force: bool = False) -> None:
        """Saves `state` and `record` as step `step` (asynchronously unless waited for)."""
        if step in self.latest.all_steps():
            return
        self.latest.save(step, args=self._args(state, record), force=force)

    def save_best(self, step: int, state: Any, record: dict) -> None:
        """Replaces the best checkpoint."""
        self.best.save(step, args=self._args(state, record), force=True)

    def wait(self) -> None:
        """Blocks until every asynchronous save has reached the disk."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def restore_best(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """The best checkpoint (lowest validation error), else the newest readable one."""
        return self._restore(self.best, abstract_state) or self._restore(self.latest, abstract_state)

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """The newest readable checkpoint as (state, record), or None when there is none.

        A checkpoint that fails to read (a crash mid-write, a damaged file) is skipped with a
        warning and the one before it is tried.
        """
        return self._restore(self.latest, abstract_state)

    @staticmethod
    def _restore(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict] | None:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                restored = manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()
                    ),
                )
            except Exception as error:  # any failure to read means: try the previous one
                log.warning("checkpoint at step %d is unreadable (%s); trying an earlier one", step, error)
                continue
            return restored["state"], restored["record"]
        return None

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()


def abstract_like(state: Any) -> Any:
    """Shape, dtype and sharding of every leaf: the target that restores into the same layout."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
