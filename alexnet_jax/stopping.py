"""SIGTERM and SIGINT at any moment of a run: the workdir is left resumable and one line says so.

A scheduler's preemption notice (SIGTERM) or Ctrl-C (SIGINT) can come while a run starts (reading the
data, restoring, compiling), while it trains, or during its final evaluation:

* while it trains, the signal becomes a request that the loop sees after the current step: it saves
  a checkpoint of that step and stops (`StopRequest.agreed`);
* at any other moment, nothing is half-done that a rerun would not redo (every file the run writes
  is written whole or not at all, and checkpoints are committed atomically by Orbax), so the signal
  ends the run at once with `Interrupted`.

Either way a rerun of the same command resumes. Before any of that, while Python imports JAX and
TensorFlow, `stop_at_once` ends the process with the same line (nothing has been read or written).

This module imports nothing heavy (JAX only where several processes must agree), so that a command
can hold the signals from its first line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys

log = logging.getLogger("alexnet_jax")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stopped_line(signal_name: str) -> str:
    """What a command prints when a signal stops it outside the training loop."""
    return f"stopped by {signal_name}; nothing was lost: rerun the same command to resume"


@contextlib.contextmanager
def _handled_by(handler):
    """SIGTERM and SIGINT go to `handler` inside the block; the handlers before it are restored after
    it (and given to the block)."""
    previous = {number: signal.signal(number, handler) for number in SIGNALS}
    try:
        yield previous
    finally:
        for number, before in previous.items():
            signal.signal(number, before)


@contextlib.contextmanager
def held():
    """SIGTERM and SIGINT wait until the block is done, then act as they would have: for bookkeeping
    that must not stop half-way. (Masking the signals would not do: the kernel hands a process's
    signal to any thread that does not mask it, TensorFlow's among them, and Python then runs the
    handler in the main thread wherever it is; a handler that only takes note works for all.)"""
    pending: list[int] = []
    with _handled_by(lambda signum, frame: pending.append(signum)) as previous:
        yield
    if pending:
        handler = previous[pending[0]]
        if callable(handler):
            handler(pending[0], None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(pending[0])


class Interrupted(BaseException):
    """A signal ended the run outside the training loop; the workdir is resumable. A BaseException, as
    KeyboardInterrupt is: no `except Exception` on the way (a checkpoint read, a decode) takes it for
    a fault of its own."""


def _stop_now(signum, frame):
    del frame
    print(stopped_line(signal.Signals(signum).name), file=sys.stderr, flush=True)
    os._exit(0)


def stop_at_once() -> None:
    """SIGTERM and SIGINT end the process at once with the one line and exit code 0: for a command's
    start-up (its imports), before `signals_interrupt` takes over."""
    for number in SIGNALS:
        signal.signal(number, _stop_now)


def _raise(signum, frame):
    del frame
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_interrupt():
    """SIGTERM and SIGINT raise `Interrupted` (every command line: a one-line stop, not a traceback or
    a silent death); a run's `StopRequest` takes them over while it trains."""
    with _handled_by(_raise):
        yield


class StopRequest:
    """Holds SIGTERM and SIGINT for the life of a run (a context manager).

    Outside `training()`, a signal raises `Interrupted` at once; inside, it sets a flag that the loop
    checks after every step.
    """

    def __init__(self):
        self.requested: str | None = None
        self._in_loop = False
        self._previous = {}

    def __enter__(self) -> StopRequest:
        for number in SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if not self._in_loop:
            _raise(signum, frame)
        if self.requested is None:
            log.warning("%s: saving a checkpoint and stopping after this step", name)
        self.requested = name

    def training(self, active: bool) -> None:
        """Between `training(True)` and `training(False)`, signals wait for the loop."""
        self._in_loop = active
        if not active and self.requested:
            raise Interrupted(self.requested)

    def agreed(self, at_log_step: bool) -> bool:
        """Whether to save and stop after this step. With several processes, all must stop at the
        same step (the save is collective), and each may see the signal at another step: they agree
        at log steps, stopping when any of them was signalled."""
        import jax  # here, not at the top: see the module's docstring
        import numpy as np
        from jax.experimental import multihost_utils

        if jax.process_count() == 1:
            return self.requested is not None
        if not at_log_step:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested is not None))))
