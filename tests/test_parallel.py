"""Every device layout computes the single-device network, at the paper's operating point.

224 pixel crops of 256 x 256 images, 1,000 classes, on the meshes (1, 1), (1, 2) (the paper's two
towers) and (4, 2), and 227 pixel crops (conv1 unpadded, the same 6 x 6 pool5) on (2, 2): a whole
training step with the default micro-batching (its loss, and its update: the gradients), and the
10-crop evaluation step, each against plain single-device code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from alexnet_jax import input_pipeline, networks, optim, parallel, steps
from alexnet_jax.networks import alexnet
from tests.helpers import assert_trees_close, labels_with_hits

# Each mesh once; 227 pixels where both axes split.
CASES = [(224, (1, 1)), (224, (1, 2)), (224, (4, 2)), (227, (2, 2))]
RESIZE, TRAIN_BATCH, EVAL_BATCH = 256, 16, 4
LEARNING_RATE, WEIGHT_DECAY = 0.01, 5e-4


def forward_on_mesh(net, mesh, params, images):
    """Evaluation-mode logits of `images` with the network laid out on `mesh`."""
    tower_net = net.clone(model_axis=parallel.MODEL, data_axis=parallel.DATA)
    forward = jax.shard_map(
        lambda p, x: tower_net.apply({"params": p}, x),
        mesh=mesh,
        in_specs=(parallel.param_specs(params), P(parallel.DATA)),
        out_specs=P(parallel.DATA),
        check_vma=False,
    )
    return jax.jit(forward)(params, images)


def host_ten_crops(images: np.ndarray, mean: np.ndarray, crop: int) -> np.ndarray:
    """Section 4.1's ten patches, cut in NumPy: (N, 10, crop, crop, 3)."""
    centred = images.astype(np.float32) - mean
    far, mid = images.shape[1] - crop, (images.shape[1] - crop) // 2
    corners = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
    patches = [centred[:, top : top + crop, left : left + crop] for top, left in corners]
    return np.stack(patches + [p[:, :, ::-1] for p in patches], axis=1)


def operating_point(size: int, paper_params) -> dict:
    """Batches at `size` and what plain single-device code computes from them."""
    net, rng = alexnet.AlexNet(), np.random.default_rng(size)
    mean = rng.uniform(90, 140, (RESIZE, RESIZE, 3)).astype(np.float32)
    far = RESIZE - size
    train_batch = {
        "images": rng.integers(0, 256, (TRAIN_BATCH, size, size, 3), dtype=np.uint8),
        "labels": rng.integers(0, 1000, TRAIN_BATCH).astype(np.int32),
        "window": np.stack(
            [
                rng.integers(0, far + 1, TRAIN_BATCH),
                rng.integers(0, far + 1, TRAIN_BATCH),
                rng.integers(0, 2, TRAIN_BATCH),
            ],
            axis=1,
        ).astype(np.int32),
        "lighting": rng.normal(0, 10, (TRAIN_BATCH, 3)).astype(np.float32),
    }
    eval_batch = {
        "images": rng.integers(0, 256, (EVAL_BATCH, RESIZE, RESIZE, 3), dtype=np.uint8),
        "mask": np.array([1, 1, 1, 0], np.float32),  # the last one is padding
    }
    root_key = jax.random.key(5)
    # The reference: plain single-device code, no shard_map, no chunks, the host's normalisation.
    images = jnp.asarray(input_pipeline.normalise(train_batch, mean))

    def loss_fn(params):
        out = net.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.fold_in(root_key, 0)})
        return optax.softmax_cross_entropy_with_integer_labels(out, train_batch["labels"]).mean()

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(paper_params)
    grads = jax.device_get(grads)  # the update in NumPy: no small programs to compile
    velocity = jax.tree.map(lambda w, g: -WEIGHT_DECAY * LEARNING_RATE * w - LEARNING_RATE * g, paper_params, grads)
    crops = host_ten_crops(eval_batch["images"], mean, size).reshape(-1, size, size, 3)
    probs = jax.nn.softmax(jax.jit(lambda p, x: net.apply({"params": p}, x))(paper_params, crops))
    probs = np.asarray(probs).reshape(EVAL_BATCH, 10, -1).mean(axis=1)
    ranked = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    real = eval_batch["mask"] > 0
    # Labels that the reference gets partly right (1 of the 3 real examples top-1, 2 top-5), and a
    # padding example that would be a hit if the mask were ignored.
    labels, _, _ = labels_with_hits(probs[real])
    eval_batch["labels"] = np.concatenate([labels, ranked[~real, 0]]).astype(np.int32)
    reference = {
        "loss": float(loss),
        "velocity": velocity,
        "params": jax.tree.map(np.add, paper_params, velocity),
        "top1": int((ranked[:, 0] == eval_batch["labels"])[real].sum()),
        "top5": int((ranked == eval_batch["labels"][:, None]).any(axis=1)[real].sum()),
        "loss_sum": float(-np.log(probs[np.arange(EVAL_BATCH), eval_batch["labels"]] + 1e-12)[real].sum()),
    }
    return dict(
        size=size,
        net=net,
        mean=mean,
        train_batch=train_batch,
        eval_batch=eval_batch,
        root_key=root_key,
        reference=reference,
    )


@pytest.fixture(scope="module")
def at_224(paper_params):
    return operating_point(224, paper_params)


@pytest.fixture(scope="module")
def at_227(paper_params):
    return operating_point(227, paper_params)


@pytest.mark.parametrize("size,shape", CASES, ids=[f"{size}px-mesh{data}x{model}" for size, (data, model) in CASES])
def test_every_mesh_computes_the_single_device_network(request, paper_params, size, shape):
    op = request.getfixturevalue(f"at_{size}")
    ref = op["reference"]
    net, mesh = op["net"], parallel.make_mesh(*shape)
    # A whole training step, the micro-batching the training loop would choose (chunks of 8 on a
    # CPU where a device holds all 16 examples, the whole batch where it holds 8 or 4); the new velocity is
    # -wd * lr * w - lr * gradient, so it compares the gradients too.
    optimizer = optim.paper_sgd(momentum=0.9, weight_decay=WEIGHT_DECAY)
    micro_batch = steps.resolve_micro_batch(-1, TRAIN_BATCH // shape[0], op["size"])
    assert micro_batch == (8 if shape[0] == 1 else 0)
    zero_velocity = jax.tree.map(
        lambda leaf: np.zeros(leaf.shape, leaf.dtype), jax.eval_shape(optimizer.init, paper_params)
    )
    state = steps.TrainState(  # (donated to the step: parameters of its own, from the host copy)
        step=jnp.zeros((), jnp.int32),
        params=parallel.shard(paper_params, mesh, parallel.param_specs(paper_params)),
        opt_state=parallel.shard(zero_velocity, mesh, parallel.param_specs(zero_velocity)),
        learning_rate=jnp.float32(LEARNING_RATE),
        nonfinite=jnp.zeros(3, jnp.float32),
    )
    train_step = steps.make_train_step(net, optimizer, mesh, op["mean"], micro_batch)
    state, metrics = train_step(state, parallel.host_batch_to_global(op["train_batch"], mesh), op["root_key"])
    np.testing.assert_allclose(float(metrics["loss"]), ref["loss"], rtol=1e-5)
    assert_trees_close(state.opt_state.velocity, ref["velocity"])
    assert_trees_close(state.params, ref["params"])
    # The stored tree is the canonical one on every mesh: each device holds its tower's output half.
    kernel = state.params["fc6"]["kernel"]
    assert kernel.shape == (9216, 4096) and kernel.sharding.shard_shape(kernel.shape) == (9216, 4096 // shape[1])

    del state, metrics, kernel  # (a copy of the paper's parameters on the (4, 2) mesh is 0.9 GB: one at a time)
    params = parallel.shard(paper_params, mesh, parallel.param_specs(paper_params))
    eval_step = steps.make_eval_step(net, mesh, op["mean"], op["size"], ten_crop=True)
    sums = jax.device_get(eval_step(params, parallel.host_batch_to_global(op["eval_batch"], mesh)))
    assert 0 < ref["top1"] < ref["top5"] < 3  # some hits, not all: the counts are compared, not zeros
    assert (sums["count"], sums["top1_correct"], sums["top5_correct"]) == (3, ref["top1"], ref["top5"])
    np.testing.assert_allclose(float(sums["loss_sum"]), ref["loss_sum"], rtol=1e-5)


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


COLLECTIVES = {
    "all_gather",
    "psum",
    "psum2",
    "reduce_scatter",
    "psum_scatter",
    "ppermute",
    "all_to_all",
    "pmax",
    "pmin",
}


def test_towers_communicate_only_at_the_cross_layers(paper_params):
    net, mesh = alexnet.AlexNet(), parallel.make_mesh(1, 2)
    images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    tower_net = net.clone(model_axis=parallel.MODEL, data_axis=parallel.DATA)
    forward = jax.shard_map(
        lambda p, x: tower_net.apply({"params": p}, x),
        mesh=mesh,
        in_specs=(parallel.param_specs(paper_params), P("data")),
        out_specs=P("data"),
        check_vma=False,
    )
    sequence = _primitive_sequence(
        jax.make_jaxpr(forward)(paper_params, images).jaxpr, COLLECTIVES | {"conv_general_dilated", "dot_general"}
    )
    short = [{"conv_general_dilated": "conv", "dot_general": "dot"}.get(p, p) for p in sequence]
    # conv1, conv2 (own tower) | gather | conv3 | conv4, conv5 (own tower) | gather pool5 maps, fc6 |
    # gather, fc7 | gather, fc8 | gather logits
    assert short == [
        "conv",
        "conv",
        "all_gather",
        "conv",
        "conv",
        "conv",
        "all_gather",
        "dot",
        "all_gather",
        "dot",
        "all_gather",
        "dot",
        "all_gather",
    ]
    # Backward: the 5 gathers' transposes, then one sum over `data` per gradient and the loss, and
    # one of the batch's count of readable examples (the loss is their mean).
    batch = {
        "images": jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.uint8),
        "labels": jax.ShapeDtypeStruct((2,), jnp.int32),
    }
    grad_jaxpr = jax.make_jaxpr(steps.make_grad_fn(net, mesh))(paper_params, batch, jax.random.key(0)).jaxpr
    sequence = _primitive_sequence(grad_jaxpr, COLLECTIVES)
    assert sequence.count("all_gather") == 5
    assert sum(p in ("reduce_scatter", "psum_scatter") for p in sequence) == 5
    assert len([p for p in sequence if p not in ("all_gather", "reduce_scatter", "psum_scatter")]) == 16 + 1 + 1


def test_two_towers_halve_parameter_memory(paper_params):
    full = parallel.bytes_per_device(
        parallel.shard(paper_params, parallel.make_mesh(1, 1), parallel.param_specs(paper_params))
    )
    split = parallel.bytes_per_device(
        parallel.shard(paper_params, parallel.make_mesh(1, 2), parallel.param_specs(paper_params))
    )
    assert len(split) == 2
    assert max(split.values()) <= 0.501 * max(full.values())


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


def test_one_tower_variants_cannot_split():
    net, mesh = alexnet.AlexNet(variant="torchvision", num_classes=10), parallel.make_mesh(1, 2)
    params = networks.param_shapes(net, 64)
    with pytest.raises(ValueError, match="cannot be split"):
        jax.eval_shape(
            lambda p, x: forward_on_mesh(net, mesh, p, x), params, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
        )


def test_prefetch_to_device_keeps_order_and_placement():
    mesh = parallel.make_mesh(4, 2)
    host = [{"x": np.full((8, 2), i, np.float32)} for i in range(5)]
    out = list(parallel.prefetch_to_device(iter(host), mesh, size=2))
    assert [int(b["x"][0, 0]) for b in out] == [0, 1, 2, 3, 4]
    assert out[0]["x"].sharding.spec == P("data")
