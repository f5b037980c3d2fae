"""Jitted functions reused for equal arguments, and only for equal ones: a step built again for the
same network, optimiser, mesh and input is the one built before, and any difference builds another."""

import sys
import threading

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from alexnet_jax import optim, parallel, programs, statistics, steps, train
from configs import smoke


def test_equal_values_share_and_any_difference_builds_anew():
    built = []
    factory = programs.reused(lambda *args, **kwargs: built.append((args, kwargs)) or object())
    mean = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    first = factory(mean, 0.0, crop=64)
    assert factory(mean.copy(), 0.0, crop=64) is first  # equal bytes, another array
    others = [
        factory(mean + 1, 0.0, crop=64),  # other bytes
        factory(mean.astype(np.float64), 0.0, crop=64),  # other dtype
        factory(mean.reshape(4, 3), 0.0, crop=64),  # other shape
        factory(mean, -0.0, crop=64),  # equal by ==, another number
        factory(mean, False, crop=64),  # 0.0 == False
        factory(mean, 0.0, crop=63),
        factory(mean, 0.0, crop=64.0),
        factory(mean, (0.0,), crop=64),
    ]
    assert len({id(f) for f in [first, *others]}) == 9 and len(built) == 9
    normalisation = statistics.Normalisation(offset=mean, scale=np.ones(3, np.float32))
    assert factory(normalisation) is factory(statistics.Normalisation(offset=mean.copy(), scale=np.ones(3, np.float32)))
    assert factory(normalisation) is not factory(statistics.Normalisation(offset=mean, scale=None))
    unhashable = {"a": 1}
    assert factory(unhashable) is not factory(unhashable)  # no value-based key: built each time, as without reuse


def test_arrays_that_compute_differently_never_share():
    """A 0-d array and a 1-element one, a weakly typed JAX scalar and a NumPy one, two 8-bit float
    formats of the same bytes, a NumPy scalar and the Python float of its value: each its own."""
    factory = programs.reused(lambda *args: object())
    e4m3, e4m3fnuz = np.ones(1, ml_dtypes.float8_e4m3fn), np.ones(1, ml_dtypes.float8_e4m3fnuz).view(np.uint8)
    cases = [
        (np.float32(2.0), np.array([2.0], np.float32)),
        (jnp.asarray(2.0), np.float32(2.0)),
        (e4m3, e4m3fnuz.view(ml_dtypes.float8_e4m3fnuz)),
        (np.float64(0.5), 0.5),
    ]
    for one, other in cases:
        assert factory(one) is not factory(other), (one, other)
    assert factory(jnp.asarray([1.0, 2.0])) is factory(jnp.asarray([1.0, 2.0]))


def test_traced_arguments_build_anew_and_threads_share_safely():
    """A traced argument (the optimiser's momentum under `vmap`) has no value: the factory builds as
    without reuse. Threads building and reusing at once neither fail nor lose an entry's function."""
    params = {"w": jnp.ones(2)}
    velocities = jax.vmap(
        lambda m: optim.paper_sgd.__wrapped__(momentum=m).update(
            params, optim.PaperSGDState(params), params, learning_rate=1.0
        )[0]["w"]
    )(jnp.array([0.0, 0.9]))
    traced = jax.vmap(
        lambda m: optim.paper_sgd(momentum=m).update(params, optim.PaperSGDState(params), params, learning_rate=1.0)[0][
            "w"
        ]
    )(jnp.array([0.0, 0.9]))
    np.testing.assert_array_equal(traced, velocities)
    factory = programs.reused(lambda n: object())
    errors = []

    def hammer(offset):
        try:
            for i in range(6000):
                factory((i + offset) % (programs.MAX_KEPT + 2))
        except Exception as error:  # noqa: BLE001 (any error is the failure)
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(6)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert errors == []


def test_the_least_recently_used_function_goes_first():
    factory = programs.reused(lambda n: object())
    kept = [factory(n) for n in range(programs.MAX_KEPT)]
    assert factory(0) is kept[0]  # used again: now the most recent
    factory(programs.MAX_KEPT)  # one more: number 1, the least recently used, is dropped
    assert factory(0) is kept[0] and factory(2) is kept[2] and factory(1) is not kept[1]


def config_of(**changes):
    config = smoke.get_config()
    config.parallel.data = 1
    for key, value in changes.items():
        if "__" in key:
            group, field = key.split("__")
            config[group][field] = value
        else:
            config[key] = value
    return config


def test_a_config_built_again_reuses_its_steps_and_every_field_of_the_network_or_update_matters():
    """The training loop's steps for the smoke config: equal configs share them; another dropout rate
    (the network), momentum or bias rate (the optimiser), mesh or mean image each builds new ones."""
    first, again = train.build(config_of()), train.build(config_of())
    assert again.train_step is first.train_step and again.eval_steps["centre"] is first.eval_steps["centre"]
    assert again.optimizer is first.optimizer
    # What a sweep varies between runs of one network: the seed, the rate, the schedule, the epochs.
    varied = train.build(config_of(seed=1, optim__learning_rate=0.05, schedule__kind="cosine", train__num_epochs=3))
    assert varied.train_step is first.train_step and varied.eval_steps["centre"] is first.eval_steps["centre"]
    for change in (
        {"model__dropout_rate": 0.4},
        {"optim__momentum": 0.8},
        {"optim__bias_lr_multiplier": 2.0},
        {"train__freeze": "conv1"},
        {"parallel__model": 2},
    ):
        other = train.build(config_of(**change))
        assert other.train_step is not first.train_step, change
    mesh = parallel.make_mesh(1, 1)
    model, optimizer = first.model, optim.paper_sgd()
    mean = np.zeros((3,), np.float32)
    step = steps.make_train_step(model, optimizer, mesh, mean)
    assert steps.make_train_step(model, optim.paper_sgd(), mesh, mean.copy()) is step
    assert steps.make_train_step(model, optimizer, mesh, mean + 1) is not step
    assert steps.make_train_step(model, optimizer, mesh, mean, micro_batch=8) is not step
