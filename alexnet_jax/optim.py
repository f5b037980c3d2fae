"""The paper's optimiser (section 5) and learning-rate schedules.

Update rule, with the learning rate and weight decay inside the momentum:

    v <- momentum * v - weight_decay * lr * w - lr * grad
    w <- w + v

`optax.sgd(momentum=...)` instead keeps `v <- momentum * v + grad` and scales the step by the
current rate, which differs from the paper as soon as the rate changes; and
`optax.contrib.reduce_on_plateau` scales updates after the momentum, counts patience in steps
and needs the loss at every step, whereas the paper cuts when the *validation* error stalls. So the
rule is written here as an optax transformation that takes the rate as an argument, and the
plateau schedule is a small pure state machine driven by the evaluation loop.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from alexnet_jax import programs


class PaperSGDState(NamedTuple):
    velocity: optax.Params


def _is_bias(path) -> bool:
    return getattr(path[-1], "key", None) == "bias"


@programs.reused  # equal settings, the same functions: the steps built with them are reused too
def paper_sgd(
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    bias_lr_multiplier: float = 1.0,
    bias_weight_decay: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Section 5's SGD. `update(grads, state, params, learning_rate=lr)` returns `v`, to be added.

    Args:
      momentum: 0.9 in the paper.
      weight_decay: 0.0005 in the paper, multiplied by the learning rate inside the momentum.
      bias_lr_multiplier: 2.0 reproduces the original code and Caffe (biases learn twice as fast).
      bias_weight_decay: False reproduces the original code and Caffe (no decay on biases).
    """

    def init(params):
        return PaperSGDState(velocity=jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None, *, learning_rate, **unused):
        del unused
        if params is None:
            raise ValueError("paper_sgd needs the parameters (weight decay acts on them)")

        def leaf(path, v, g, w):
            is_bias = _is_bias(path)
            lr = learning_rate * (bias_lr_multiplier if is_bias else 1.0)
            wd = 0.0 if (is_bias and not bias_weight_decay) else weight_decay
            return momentum * v - (wd * lr) * w - lr * g

        velocity = jax.tree_util.tree_map_with_path(leaf, state.velocity, grads, params)
        return velocity, PaperSGDState(velocity=velocity)

    return optax.GradientTransformationExtraArgs(init, update)


def frozen(optimizer: optax.GradientTransformationExtraArgs, layers) -> optax.GradientTransformationExtraArgs:
    """`optimizer` with the parameters of `layers` (top-level names of the tree) never changed.

    Their updates are zero and so is their part of the optimiser's state (for paper_sgd the velocity:
    no momentum, and the weight decay that lives inside it never acts), while the state keeps the
    tree's whole structure, so a checkpoint of a run with frozen layers restores like any other.
    """
    return _frozen(optimizer, tuple(sorted(set(layers))))


@programs.reused
def _frozen(optimizer: optax.GradientTransformationExtraArgs, layers: tuple) -> optax.GradientTransformationExtraArgs:
    if not layers:
        return optimizer

    def is_frozen(path) -> bool:
        return any(getattr(entry, "key", None) in layers for entry in path)

    def zero_frozen(tree):
        return jax.tree_util.tree_map_with_path(lambda path, x: jnp.zeros_like(x) if is_frozen(path) else x, tree)

    def update(grads, state, params=None, **extra):
        updates, state = optimizer.update(grads, state, params, **extra)
        return zero_frozen(updates), zero_frozen(state)

    return optax.GradientTransformationExtraArgs(optimizer.init, update)


@flax.struct.dataclass
class PlateauState:
    """Learning-rate state of the plateau schedule, saved in checkpoints."""

    learning_rate: float
    best_error: float = math.inf
    evals_without_improvement: int = 0
    cuts: int = 0


def plateau_update(
    state: PlateauState, error: float, *, factor: float, patience: int, min_delta: float, max_cuts: int
) -> PlateauState:
    """The paper's rule: divide the rate by 10 when the validation error "stopped improving" (section 5).

    An evaluation improves when its error is below the reference `best_error` by at least
    `min_delta`; only then does the reference move (to that error), as in Keras'
    ReduceLROnPlateau. After `patience` evaluations in a row without one, the rate is multiplied by
    `factor` and the count restarts; at most `max_cuts` cuts are made in a run. Improvements smaller
    than `min_delta` add up: a steady 0.06 % per evaluation with `min_delta` 0.1 % and `patience` 2
    moves the reference every second evaluation and never cuts the rate.
    """
    improvement = state.best_error - error
    # "At least min_delta", with room for the rounding of errors that are ratios of image counts.
    if improvement > 0 and improvement >= min_delta - 1e-9:
        return state.replace(best_error=float(error), evals_without_improvement=0)
    waited = state.evals_without_improvement + 1
    if waited >= patience and state.cuts < max_cuts:
        return state.replace(
            learning_rate=state.learning_rate * factor, evals_without_improvement=0, cuts=state.cuts + 1
        )
    return state.replace(evals_without_improvement=waited)


def scheduled_learning_rate(schedule, base_rate: float, epoch: float, num_epochs: float) -> float | None:
    """The rate at `epoch` for the step-based schedules; None for "plateau" (driven by evaluations)."""
    if schedule.kind == "plateau":
        return None
    if schedule.kind == "constant":
        return base_rate
    if schedule.kind == "step":
        return base_rate * schedule.factor ** sum(epoch >= e for e in schedule.step_epochs)
    if schedule.kind == "cosine":
        return base_rate * 0.5 * (1.0 + math.cos(math.pi * min(epoch / num_epochs, 1.0)))
    raise ValueError(f"schedule.kind must be plateau, step, cosine or constant; got {schedule.kind!r}")
