"""Jitted functions built once per process for equal arguments, and reused.

`jax.jit` keeps its traces and compiled programs per Python function. The factories of the steps
(`steps.make_train_step` and its kind) build a new function on every call, so a process that built
the same steps again (a run resumed in the process that stopped it, `sweep --inline`'s runs of one
network, a tool loading a network it loaded before, the tests' many short runs) traced, lowered and
compiled them all again: 2-3 s a run of the smoke config on a 2-core CPU, more than its 16 steps.
A factory wrapped in `reused` returns the function it built for equal arguments instead.

Equal means equal values, not the same objects: arrays (a mean image) by their shape, dtype and
bytes, other arguments (a network's module, a mesh, an optimiser, numbers) by `==` and by their
`repr`, so that 0.0 and -0.0, or 1 and True, never share a program. An argument that is neither an
array nor hashable builds a new function, as without this module.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
from collections.abc import Callable

import numpy as np

# Functions kept per factory, the least recently used dropped first: enough for a sweep's networks
# on one mesh, and each holds only its traces and programs (parameters are arguments, not constants).
MAX_KEPT = 16


class _Unkeyable(Exception):
    """An argument with no value-based key: the call builds a new function."""


def _key(value):
    """A hashable stand-in for `value`, equal for equal values (the module's docstring)."""
    if isinstance(value, (list, tuple)):
        return (type(value).__qualname__, *map(_key, value))
    if isinstance(value, np.ndarray) or (hasattr(value, "__array__") and hasattr(value, "shape")):
        array = np.ascontiguousarray(value)
        return ("array", array.shape, array.dtype.str, hashlib.sha256(array.tobytes()).digest())
    try:
        hash(value)
    except TypeError:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):  # statistics.Normalisation's arrays
            return (type(value).__qualname__, *(_key(getattr(value, f.name)) for f in dataclasses.fields(value)))
        raise _Unkeyable from None
    return (type(value).__qualname__, value, repr(value))


def reused(factory: Callable) -> Callable:
    """`factory`, returning the function it built before for equal arguments (the module's docstring)."""
    kept: collections.OrderedDict = collections.OrderedDict()

    @functools.wraps(factory)
    def build(*args, **kwargs):
        try:
            key = (_key(args), tuple(sorted((name, _key(v)) for name, v in kwargs.items())))
        except _Unkeyable:
            return factory(*args, **kwargs)
        if key in kept:
            kept.move_to_end(key)
            return kept[key]
        built = kept[key] = factory(*args, **kwargs)
        if len(kept) > MAX_KEPT:
            kept.popitem(last=False)
        return built

    return build
