"""Section 5's update rule and the plateau schedule."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from alexnet_jax import optim


def run_paper_rule(params, grads_per_step, rates, *, momentum=0.9, wd=5e-4, bias_lr=1.0, bias_wd=True):
    """The paper's equations written out in NumPy, leaf by leaf."""
    w = {k: np.array(v, np.float64) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    for grads, lr in zip(grads_per_step, rates):
        for k in w:
            is_bias = k == "bias"
            rate = lr * (bias_lr if is_bias else 1.0)
            decay = 0.0 if is_bias and not bias_wd else wd
            v[k] = momentum * v[k] - decay * rate * w[k] - rate * grads[k]
            w[k] = w[k] + v[k]
    return w


@pytest.mark.parametrize("bias_lr,bias_wd", [(1.0, True), (2.0, False)])
def test_paper_update_rule_across_a_rate_cut(bias_lr, bias_wd):
    rng = np.random.default_rng(0)
    params = {"kernel": rng.standard_normal((3, 4)).astype(np.float32), "bias": np.ones(4, np.float32)}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()} for _ in range(6)]
    rates = [0.01, 0.01, 0.01, 0.001, 0.001, 0.0001]  # two cuts by 10
    optimizer = optim.paper_sgd(bias_lr_multiplier=bias_lr, bias_weight_decay=bias_wd)
    state = optimizer.init(params)
    ours = {k: jnp.asarray(v) for k, v in params.items()}
    for g, lr in zip(grads, rates):
        updates, state = optimizer.update(g, state, ours, learning_rate=lr)
        ours = optax.apply_updates(ours, updates)
    expected = run_paper_rule(params, grads, rates, bias_lr=bias_lr, bias_wd=bias_wd)
    for k in params:
        np.testing.assert_allclose(np.asarray(ours[k]), expected[k], rtol=1e-6, atol=1e-7)


def test_paper_sgd_needs_params():
    optimizer = optim.paper_sgd()
    with pytest.raises(ValueError, match="needs the parameters"):
        optimizer.update({"w": jnp.ones(2)}, optimizer.init({"w": jnp.ones(2)}), None, learning_rate=0.1)


def run_plateau(errors, patience=2, max_cuts=3, min_delta=0.0):
    state = optim.PlateauState(learning_rate=0.01)
    rates = []
    for error in errors:
        state = optim.plateau_update(
            state, error, factor=0.1, patience=patience, min_delta=min_delta, max_cuts=max_cuts
        )
        rates.append(state.learning_rate)
    return rates, state


def test_plateau_cuts_after_patience_evaluations():
    rates, state = run_plateau([0.9, 0.8, 0.7, 0.7, 0.71, 0.6, 0.6, 0.6])
    #                          improve improve improve wait cut  improve wait cut
    expected = [0.01, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.0001]
    np.testing.assert_allclose(rates, expected, rtol=1e-9)
    assert state.cuts == 2 and state.best_error == pytest.approx(0.6)


def test_plateau_never_cuts_more_than_max():
    rates, state = run_plateau([0.5] * 40, patience=1, max_cuts=3)
    assert state.cuts == 3
    assert min(rates) == pytest.approx(0.01 * 0.1**3)


def test_plateau_min_delta_counts_small_gains_as_stalls():
    rates, state = run_plateau([0.5, 0.4995, 0.4992], patience=2, min_delta=0.001)
    assert rates[-1] == pytest.approx(0.001)
    assert state.best_error == 0.5  # a gain below min_delta does not move the reference
    # A gain of exactly min_delta counts: 50 images of the 50,000 validation images is 0.1 %.
    rates, state = run_plateau([0.42, 20_950 / 50_000, 20_950 / 50_000], patience=2, min_delta=0.001)
    assert state.best_error == 20_950 / 50_000 and state.evals_without_improvement == 1
    rates, state = run_plateau([0.3, 0.3, 0.3], patience=5, min_delta=0.0)
    assert state.evals_without_improvement == 2  # an equal error is no improvement, even with no margin


def test_plateau_slow_steady_improvement_is_not_a_plateau():
    """0.06 % better at every evaluation, with the paper config's min_delta (0.1 %) and patience (2):
    the error falls by more than min_delta every second evaluation, so the rate is never cut.
    (Had the reference followed every small gain, each evaluation would count as a stall and the
    three cuts would all come within six evaluations.)"""
    errors = [0.6 - 0.0006 * i for i in range(30)]
    rates, state = run_plateau(errors, patience=2, min_delta=0.001, max_cuts=3)
    assert state.cuts == 0 and set(rates) == {0.01}
    assert state.best_error == pytest.approx(errors[-2])  # moved on every second evaluation
    # Slower than min_delta per `patience` evaluations: a plateau, cut after every `patience` stalls.
    errors = [0.6 - 0.0004 * i for i in range(8)]
    rates, state = run_plateau(errors, patience=2, min_delta=0.001, max_cuts=3)
    assert rates[:3] == pytest.approx([0.01, 0.01, 0.001]) and state.cuts == 2


def test_step_and_cosine_schedules():
    schedule = ml_collections.ConfigDict({"kind": "step", "factor": 0.1, "step_epochs": (30, 60)})
    assert optim.scheduled_learning_rate(schedule, 0.01, 29.9, 90) == pytest.approx(0.01)
    assert optim.scheduled_learning_rate(schedule, 0.01, 30, 90) == pytest.approx(0.001)
    assert optim.scheduled_learning_rate(schedule, 0.01, 75, 90) == pytest.approx(0.0001)
    schedule.kind = "cosine"
    assert optim.scheduled_learning_rate(schedule, 0.01, 45, 90) == pytest.approx(0.005)
    assert optim.scheduled_learning_rate(schedule, 0.01, 90, 90) == pytest.approx(0.0, abs=1e-12)
    schedule.kind = "constant"
    assert optim.scheduled_learning_rate(schedule, 0.01, 75, 90) == 0.01
    schedule.kind = "plateau"
    assert optim.scheduled_learning_rate(schedule, 0.01, 5, 90) is None
    schedule.kind = "warmup"
    with pytest.raises(ValueError, match="schedule.kind"):
        optim.scheduled_learning_rate(schedule, 0.01, 5, 90)
    assert math.isinf(optim.PlateauState(learning_rate=0.1).best_error)
