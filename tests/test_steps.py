"""The steps on the device: normalisation and test-time crops equal the host's, micro-batches, and the
refusal of a non-finite update."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import datasets, input_pipeline, optim, parallel, steps
from alexnet_jax.networks import alexnet
from configs import smoke
from tests.conftest import COMPILE_FLAGS
from tests.helpers import assert_trees_equal, bench_module


def test_micro_batch_resolution():
    assert steps.resolve_micro_batch(-1, 128, 224, "cpu") == steps.CPU_MICRO_BATCH == 8
    assert steps.resolve_micro_batch(-1, 128, 224, "gpu") == 0
    assert steps.resolve_micro_batch(-1, 128, 64, "cpu") == 0  # small inputs: no gain
    assert steps.resolve_micro_batch(-1, 8, 224, "cpu") == 0  # nothing to split
    assert steps.resolve_micro_batch(-1, 44, 224, "cpu") == 0  # 8 does not divide it
    assert steps.resolve_micro_batch(16, 64, 64, "gpu") == 16
    assert steps.resolve_micro_batch(64, 64, 224, "cpu") == 0
    with pytest.raises(ValueError, match="must be -1, 0 or divide the per-device batch 64"):
        steps.resolve_micro_batch(24, 64, 224, "cpu")


def test_test_crops_are_the_corners_the_centre_and_their_mirrors():
    images = np.random.default_rng(0).integers(0, 256, (2, 9, 9, 3), dtype=np.uint8)
    mean = np.random.default_rng(1).uniform(0, 255, (9, 9, 3)).astype(np.float32)
    crops = np.asarray(steps.test_crops(jnp.asarray(images), mean, 5, ten_crop=True))
    centred = images.astype(np.float32) - mean
    expected = [centred[:, :5, :5], centred[:, :5, 4:], centred[:, 4:, :5], centred[:, 4:, 4:], centred[:, 2:7, 2:7]]
    expected += [e[:, :, ::-1] for e in expected]
    assert crops.shape == (2, 10, 5, 5, 3)
    np.testing.assert_array_equal(crops, np.stack(expected, axis=1))  # bit for bit: the same float32 operations
    centre = np.asarray(steps.test_crops(jnp.asarray(images), mean, 5, ten_crop=False))
    np.testing.assert_array_equal(centre, centred[:, None, 2:7, 2:7])
    pixel_mean = np.float32([100, 110, 120])
    np.testing.assert_array_equal(
        np.asarray(steps.test_crops(jnp.asarray(images), pixel_mean, 9, False))[:, 0],
        images.astype(np.float32) - pixel_mean,
    )


def test_device_normalisation_equals_the_papers_order_of_operations():
    config = smoke.get_config()
    data = datasets.create_data(config.data, config.model.num_classes)
    batch = next(input_pipeline.train_batches(data, config.data, crop=64, global_batch=16, start_step=3, seed=1))
    assert batch["window"][:, 2].any() and not batch["window"][:, 2].all()  # both orientations present
    on_device = np.asarray(jax.jit(lambda b: steps.normalise_images(b, data.mean))(batch))
    np.testing.assert_allclose(on_device, input_pipeline.normalise(batch, data.mean), atol=1e-4)
    # Written out: the mean image off the whole resized image, then the patch, its reflection and
    # the colour shift. Batch slot i of step 3 holds example order[48 + i].
    order = np.random.default_rng([1, 0]).permutation(data.train.size)
    for i in range(16):
        image = data.train.load(order[48 + i])[0].astype(np.float32) - data.mean
        top, left, mirrored = batch["window"][i]
        patch = image[top : top + 64, left : left + 64]
        expected = (patch[:, ::-1] if mirrored else patch) + batch["lighting"][i]
        np.testing.assert_allclose(on_device[i], expected, atol=1e-3)
    # A mean pixel (ImageNet's built-in statistics) needs no window.
    pixel_mean = np.float32([100, 110, 120])
    expected = batch["images"].astype(np.float32) - pixel_mean + batch["lighting"][:, None, None, :]
    mirrored = batch["window"][:, 2] > 0
    expected[mirrored] = expected[mirrored, :, ::-1]
    np.testing.assert_allclose(np.asarray(steps.normalise_images(batch, pixel_mean)), expected, atol=1e-4)


def test_a_non_finite_update_is_refused_and_remembered():
    net = alexnet.AlexNet(num_classes=4, dropout_rate=0.0, fc_width=512)
    optimizer, mesh = optim.paper_sgd(), parallel.make_mesh(1, 2)
    state = steps.create_train_state(net, optimizer, mesh, jax.random.key(0), 64, 0.01)
    train_step = steps.make_train_step(net, optimizer, mesh)
    rng = np.random.default_rng(0)
    batch = {"images": rng.normal(0, 50, (4, 64, 64, 3)).astype(np.float32), "labels": np.arange(4, dtype=np.int32)}
    state, metrics = train_step(state, parallel.host_batch_to_global(batch, mesh), jax.random.key(1))
    assert np.isfinite(float(metrics["loss"])) and float(state.nonfinite[0]) == 0
    before = jax.device_get((state.params, state.opt_state))
    poisoned = dict(batch, images=np.full_like(batch["images"], np.inf))
    state, metrics = train_step(state, parallel.host_batch_to_global(poisoned, mesh), jax.random.key(1))
    assert not np.isfinite(float(metrics["loss"]))
    np.testing.assert_array_equal(np.asarray(state.nonfinite)[0], 2)  # the second step
    assert_trees_equal((state.params, state.opt_state), before)
    # A finite batch after it is refused too: the parameters stay the last finite ones.
    state, _ = train_step(state, parallel.host_batch_to_global(batch, mesh), jax.random.key(1))
    assert int(state.step) == 3 and float(state.nonfinite[0]) == 2
    assert_trees_equal((state.params, state.opt_state), before)


# XLA's own values of the compiler settings that tests/conftest.py changes (for speed only).
XLA_DEFAULTS = {"xla_backend_optimization_level": 2, "xla_cpu_use_fusion_emitters": True}


def test_the_tests_compiler_settings_change_no_number(paper_params):
    """The tests compile with less optimisation than XLA's defaults (tests/conftest.py): a training
    step (convolutions, LRN, pooling, dropout, their gradients, the update) and the paper's 10-crop
    evaluation at 224 x 224 with 1,000 classes, both on two towers, give the same bits either way."""
    assert {flag.split("=")[0].lstrip("-") for flag in COMPILE_FLAGS.split()} == XLA_DEFAULTS.keys()
    assert COMPILE_FLAGS in os.environ["XLA_FLAGS"]
    assert bench_module("compile_settings").SETTINGS["the tests'"] == COMPILE_FLAGS  # what the benchmark measures
    mesh = parallel.make_mesh(1, 2)
    net, optimizer = alexnet.AlexNet(num_classes=4, fc_width=512), optim.paper_sgd()
    rng = np.random.default_rng(0)
    batch = {"images": rng.normal(0, 50, (4, 64, 64, 3)).astype(np.float32), "labels": np.arange(4, dtype=np.int32)}
    batch = parallel.host_batch_to_global(batch, mesh)

    def fresh_state():  # the step takes its state over (donation): one for each compilation
        return steps.create_train_state(net, optimizer, mesh, jax.random.key(0), 64, 0.01)

    lowered = steps.make_train_step(net, optimizer, mesh).lower(fresh_state(), batch, jax.random.key(1))
    assert_trees_equal(*outputs_both_ways(lowered, lambda: (fresh_state(), batch, jax.random.key(1))))

    paper = alexnet.AlexNet()
    params = parallel.shard(paper_params, mesh, parallel.param_specs(paper_params))
    mean = rng.uniform(90, 140, (256, 256, 3)).astype(np.float32)
    images = {
        "images": rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8),
        "labels": np.array([3, 999], np.int32),
        "mask": np.ones(2, np.float32),
    }
    images = parallel.host_batch_to_global(images, mesh)
    lowered = steps.make_eval_step(paper, mesh, mean, 224, ten_crop=True).lower(params, images)
    assert_trees_equal(*outputs_both_ways(lowered, lambda: (params, images)))


def outputs_both_ways(lowered, arguments):
    """What `lowered` computes from `arguments()` compiled with this process's flags and with XLA's
    defaults (fresh arguments for each: a step may take its state over)."""
    compiled = (lowered.compile(), lowered.compile(compiler_options=XLA_DEFAULTS))
    return [jax.device_get(program(*arguments())) for program in compiled]
