"""Jitted functions built once per process for equal arguments, and reused.

`jax.jit` keeps its traces and compiled programs per Python function. The factories of the steps
(`steps.make_train_step` and its kind) build a new function on every call, so a process that built
the same steps again (a run resumed in the process that stopped it, `sweep --inline`'s runs of one
network, a tool loading a network it loaded before, the tests' many short runs) traced, lowered and
compiled them all again: 2-3 s a run of the smoke config on a 2-core CPU, more than its 16 steps.
A factory wrapped in `reused` returns the function it built for equal arguments instead.

Equal means equal values of the same type, not the same objects: arrays (a mean image) by their
type, shape, dtype, weak typing and bytes; other arguments (a network's module, a mesh, an
optimiser, numbers) by their type, `==` and `repr`, so that 0.0 and -0.0, or 1 and True, never
share a program. An argument without such a key (a traced value, an unhashable object) builds a new
function, as without this module. As with one jitted function, what a trace reads besides its
arguments (the code, Flax's configuration) is what it was at the first build, and an argument is
taken as it was then: an array changed in place afterwards is not seen as another argument. The
kept functions hold their compiled programs (one per input shape), not parameters.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import threading
from collections.abc import Callable

import jax
import numpy as np

# Functions kept per factory, the least recently used dropped first: enough for a sweep's networks
# on one mesh, and each holds only its traces and programs (parameters are arguments, not constants).
MAX_KEPT = 16


class _Unkeyable(Exception):
    """An argument with no value-based key: the call builds a new function."""


def _key(value):
    """A hashable stand-in for `value`, equal for equal values (the module's docstring)."""
    if isinstance(value, jax.core.Tracer):
        raise _Unkeyable
    if isinstance(value, (list, tuple)):
        return (type(value), *map(_key, value))
    if isinstance(value, np.ndarray) or (hasattr(value, "__array__") and hasattr(value, "shape")):
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise _Unkeyable
        digest = hashlib.sha256(array.tobytes()).digest()
        return (type(value), array.shape, array.dtype, bool(getattr(value, "weak_type", False)), digest)
    try:
        hash(value)
    except TypeError:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):  # statistics.Normalisation's arrays
            return (type(value), *(_key(getattr(value, f.name)) for f in dataclasses.fields(value)))
        raise _Unkeyable from None
    return (type(value), value, repr(value))


def reused(factory: Callable) -> Callable:
    """`factory`, returning the function it built before for equal arguments (the module's docstring)."""
    kept: collections.OrderedDict = collections.OrderedDict()
    lock = threading.Lock()

    @functools.wraps(factory)
    def build(*args, **kwargs):
        try:
            key = (_key(args), tuple(sorted((name, _key(v)) for name, v in kwargs.items())))
        except _Unkeyable:
            return factory(*args, **kwargs)
        with lock:
            if key in kept:
                kept.move_to_end(key)
                return kept[key]
        built = factory(*args, **kwargs)  # outside the lock: a factory may use other reused ones
        with lock:
            kept[key] = built
            if len(kept) > MAX_KEPT:
                kept.popitem(last=False)
        return built

    return build
