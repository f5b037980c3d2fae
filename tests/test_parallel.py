"""Two towers on two devices and data parallelism equal the single-device network exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from alexnet_jax import model as model_lib
from alexnet_jax import optim, parallel, steps

MESHES = [(1, 1), (1, 2), (2, 2), (4, 2)]
SIZE = 67
BATCH = 8


@pytest.fixture(scope="module")
def setup():
    net = model_lib.AlexNet(num_classes=10)
    params = model_lib.init_params(net, jax.random.key(0), SIZE)
    batch = {
        "images": jax.random.normal(jax.random.key(1), (BATCH, SIZE, SIZE, 3)) * 60.0,
        "labels": jnp.arange(BATCH) % 10,
    }
    return net, params, batch


def reference_gradients(net, params, batch, rng):
    """Plain single-device autodiff, no shard_map: the grouped network as model.py defines it."""

    def loss_fn(p):
        logits = net.apply({"params": p}, batch["images"], train=True, rngs={"dropout": rng})
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, logits, grads


def assert_trees_close(actual, expected, rtol=1e-5):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(expected)):
        a, b = np.asarray(a), np.asarray(b)
        scale = max(np.abs(b).max(), 1e-30)
        assert np.abs(a - b).max() <= rtol * scale, (jax.tree_util.keystr(path), np.abs(a - b).max() / scale)


@pytest.mark.parametrize("shape", MESHES)
def test_logits_and_gradients_match_single_device(setup, shape):
    net, params, batch = setup
    rng = jax.random.key(7)
    ref_loss, ref_logits, ref_grads = reference_gradients(net, params, batch, rng)
    mesh = parallel.make_mesh(*shape)
    sharded = parallel.shard(params, mesh, parallel.param_specs(params))
    loss, logits, grads = steps.make_grad_fn(net, mesh)(sharded, batch, rng)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    assert_trees_close(logits, ref_logits)
    assert_trees_close(grads, ref_grads)
    # The gradients stay in the towers' layout: each device holds its own tower's share.
    kernel = grads["conv2"]["kernel"]
    assert kernel.sharding.shard_shape(kernel.shape) == (5, 5, 48, 256 // shape[1])


@pytest.mark.parametrize("shape,micro_batch", [((1, 1), 2), ((2, 2), 2), ((1, 2), 1)])
def test_micro_batches_give_the_whole_batch_gradients(setup, shape, micro_batch):
    """Chunks of the device batch: the same loss, logits and gradients, dropout masks included."""
    net, params, batch = setup
    rng = jax.random.key(7)
    ref_loss, ref_logits, ref_grads = reference_gradients(net, params, batch, rng)
    mesh = parallel.make_mesh(*shape)
    sharded = parallel.shard(params, mesh, parallel.param_specs(params))
    loss, logits, grads = steps.make_grad_fn(net, mesh, micro_batch=micro_batch)(sharded, batch, rng)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    assert_trees_close(logits, ref_logits)
    assert_trees_close(grads, ref_grads)


def test_micro_batch_resolution():
    assert steps.resolve_micro_batch(-1, 128, 224, "cpu") == steps.CPU_MICRO_BATCH == 16
    assert steps.resolve_micro_batch(-1, 128, 224, "gpu") == 0
    assert steps.resolve_micro_batch(-1, 128, 64, "cpu") == 0  # small inputs: no gain
    assert steps.resolve_micro_batch(-1, 16, 224, "cpu") == 0  # nothing to split
    assert steps.resolve_micro_batch(-1, 40, 224, "cpu") == 0  # 16 does not divide it
    assert steps.resolve_micro_batch(16, 64, 64, "gpu") == 16
    assert steps.resolve_micro_batch(64, 64, 224, "cpu") == 0
    with pytest.raises(ValueError, match="must be -1, 0 or divide the per-device batch 64"):
        steps.resolve_micro_batch(24, 64, 224, "cpu")


def _primitive_sequence(jaxpr, names):
    """Primitives of interest in program order, descending into sub-jaxprs (pjit, shard_map...)."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in names:
            out.append(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out.extend(_primitive_sequence(inner, names))
    return out


COLLECTIVES = {"all_gather", "psum", "psum2", "reduce_scatter", "psum_scatter", "ppermute", "all_to_all", "pmax", "pmin"}


def test_grouped_layers_compile_to_no_collective(setup):
    net, params, batch = setup
    mesh = parallel.make_mesh(1, 2)
    tower_net = net.clone(model_axis="model", data_axis="data")
    forward = jax.shard_map(
        lambda p, x: tower_net.apply({"params": p}, x),
        mesh=mesh,
        in_specs=(parallel.param_specs(params), P("data")),
        out_specs=P("data"),
        check_vma=False,
    )
    jaxpr = jax.make_jaxpr(forward)(params, batch["images"]).jaxpr
    sequence = _primitive_sequence(jaxpr, COLLECTIVES | {"conv_general_dilated", "dot_general"})
    short = [{"conv_general_dilated": "conv", "dot_general": "dot"}.get(p, p) for p in sequence]
    # conv1, conv2 | gather | conv3, conv4, conv5 | gather fc6 | gather fc7 | gather fc8 | gather logits
    assert short == [
        "conv", "conv", "all_gather", "conv", "conv", "conv",
        "all_gather", "dot", "all_gather", "dot", "all_gather", "dot", "all_gather",
    ]  # fmt: skip


def test_backward_pass_communicates_only_at_cross_layers(setup):
    net, params, batch = setup
    mesh = parallel.make_mesh(1, 2)
    jaxpr = jax.make_jaxpr(steps.make_grad_fn(net, mesh))(params, batch, jax.random.key(0)).jaxpr
    sequence = _primitive_sequence(jaxpr, COLLECTIVES)
    # 5 gathers forward, their 5 transposes backward, then a sum over `data` per gradient and the loss.
    assert sequence.count("all_gather") == 5
    assert sum(p in ("reduce_scatter", "psum_scatter") for p in sequence) == 5
    assert len([p for p in sequence if p not in ("all_gather", "reduce_scatter", "psum_scatter")]) == 16 + 1


def test_two_towers_halve_parameter_memory(setup):
    net, params, _ = setup
    full = parallel.bytes_per_device(parallel.shard(params, parallel.make_mesh(1, 1), parallel.param_specs(params)))
    split = parallel.bytes_per_device(parallel.shard(params, parallel.make_mesh(1, 2), parallel.param_specs(params)))
    single = max(full.values())
    assert len(split) == 2
    assert max(split.values()) <= 0.55 * single


def test_training_step_same_under_every_mesh(setup):
    net, _, batch = setup
    optimizer = optim.paper_sgd()
    results = {}
    for shape in MESHES:
        mesh = parallel.make_mesh(*shape)
        state = steps.create_train_state(net, optimizer, mesh, jax.random.key(0), SIZE, 0.01)
        train_step = steps.make_train_step(net, optimizer, mesh)
        global_batch = parallel.host_batch_to_global(jax.tree.map(np.asarray, batch), mesh)
        for _ in range(2):
            state, metrics = train_step(state, global_batch, jax.random.key(3))
        assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))
        results[shape] = (jax.device_get(state.params), float(metrics["loss"]), float(metrics["grad_norm"]))
    ref_params, ref_loss, ref_norm = results[(1, 1)]
    for shape in MESHES[1:]:
        params, loss, norm = results[shape]
        assert_trees_close(params, ref_params)
        np.testing.assert_allclose([loss, norm], [ref_loss, ref_norm], rtol=1e-5)


def test_mesh_errors_name_the_numbers():
    with pytest.raises(ValueError, match="parallel.model must be 1 or 2"):
        parallel.mesh_shape(1, 3, 8)
    with pytest.raises(ValueError, match="parallel.data=8 x parallel.model=2 = 16 devices"):
        parallel.mesh_shape(8, 2, 8)
    assert parallel.mesh_shape(-1, 2, 8) == (4, 2)
    mesh = parallel.make_mesh(4, 2)
    with pytest.raises(ValueError, match="optim.batch_size=130 is not divisible by the 4 data-parallel replicas"):
        parallel.check_batch(130, mesh)
    parallel.check_batch(128, mesh)


def test_torchvision_variant_cannot_split():
    net = model_lib.AlexNet(variant="torchvision", num_classes=10)
    params = model_lib.init_params(net, jax.random.key(0), SIZE)
    mesh = parallel.make_mesh(1, 2)
    batch = {"images": jnp.zeros((2, SIZE, SIZE, 3)), "labels": jnp.zeros((2,), jnp.int32)}
    with pytest.raises(ValueError, match="cannot be split"):
        steps.make_grad_fn(net, mesh)(parallel.shard(params, mesh, parallel.param_specs(params)), batch, jax.random.key(0))


def test_prefetch_to_device_keeps_order_and_placement():
    mesh = parallel.make_mesh(4, 2)
    host = [{"x": np.full((8, 2), i, np.float32)} for i in range(5)]
    out = list(parallel.prefetch_to_device(iter(host), mesh, size=2))
    assert [int(b["x"][0, 0]) for b in out] == [0, 1, 2, 3, 4]
    assert out[0]["x"].sharding.spec == P("data")
