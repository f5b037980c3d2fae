"""The network against PAPER.md: shapes, parameter counts, LRN, init, dropout and tower grouping."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import model as model_lib

PAPER_SHAPES = {
    "conv1_out": (55, 55, 96),
    "pool1": (27, 27, 96),
    "conv2_out": (27, 27, 256),
    "pool2": (13, 13, 256),
    "conv3_out": (13, 13, 384),
    "conv4_out": (13, 13, 384),
    "conv5_out": (13, 13, 256),
    "pool5": (6, 6, 256),
    "fc6_out": (4096,),
    "fc7_out": (4096,),
    "fc8_out": (1000,),
}
PAPER_PARAMS = {
    "conv1": 34_944,
    "conv2": 307_456,
    "conv3": 885_120,
    "conv4": 663_936,
    "conv5": 442_624,
    "fc6": 37_752_832,
    "fc7": 16_781_312,
    "fc8": 4_097_000,
}


def activations(model, image_size, batch=1):
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    params = model_lib.param_shapes(model, image_size)
    _, state = jax.eval_shape(
        lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]), params, images
    )
    return {k: v[0].shape[1:] for k, v in state["intermediates"].items()}


@pytest.mark.parametrize("image_size", [224, 227])
def test_layer_shapes(image_size):
    assert activations(model_lib.AlexNet(), image_size) == PAPER_SHAPES


def test_conv1_padding_rule():
    # cuda-convnet: output 1 + ceil((in - k) / s), the overhang on the bottom/right.
    assert model_lib.convnet_padding(224, 11, 4) == (0, 3)
    assert model_lib.convnet_padding(227, 11, 4) == (0, 0)
    with pytest.raises(ValueError, match="smaller than"):
        model_lib.convnet_padding(8, 11, 4)


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        activations(model_lib.AlexNet(), 40)


def test_parameter_counts_per_layer_and_total():
    shapes = model_lib.param_shapes(model_lib.AlexNet(), 224)
    assert {k: model_lib.count_params(v) for k, v in shapes.items()} == PAPER_PARAMS
    assert model_lib.count_params(shapes) == 60_965_224
    # Canonical layout: grouped kernels (kh, kw, in/2, out), dense (in, out).
    assert shapes["conv2"]["kernel"].shape == (5, 5, 48, 256)
    assert shapes["conv4"]["kernel"].shape == (3, 3, 192, 384)
    assert shapes["conv5"]["kernel"].shape == (3, 3, 192, 256)
    assert shapes["fc6"]["kernel"].shape == (9216, 4096)


def test_torchvision_variant():
    net = model_lib.AlexNet(variant="torchvision")
    assert model_lib.count_params(model_lib.param_shapes(net, 224)) == 61_100_840
    acts = activations(net, 224)
    assert acts["conv1_out"] == (55, 55, 64) and acts["pool5"] == (6, 6, 256)


def test_num_classes_option():
    shapes = model_lib.param_shapes(model_lib.AlexNet(num_classes=10), 224)
    assert shapes["fc8"]["kernel"].shape == (4096, 10)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="variant must be one of"):
        model_lib.param_shapes(model_lib.AlexNet(variant="vgg"), 224)


@pytest.mark.parametrize("towers,channels", [(2, 96), (2, 256), (1, 64)])
def test_lrn_matches_tensorflow_per_tower(towers, channels):
    x = np.random.default_rng(0).normal(0, 10, (2, 7, 7, channels)).astype(np.float32)
    ours = np.asarray(model_lib.local_response_norm(jnp.asarray(x), towers))
    per_tower = channels // towers
    for t in range(towers):
        part = x[..., t * per_tower : (t + 1) * per_tower]
        ref = tf.nn.local_response_normalization(part, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
        np.testing.assert_allclose(ours[..., t * per_tower : (t + 1) * per_tower], ref.numpy(), rtol=1e-6, atol=1e-6)


def test_lrn_window_stops_at_tower_boundary():
    x = np.random.default_rng(1).normal(0, 50, (1, 3, 3, 96)).astype(np.float32)
    base = np.asarray(model_lib.local_response_norm(jnp.asarray(x), 2))
    bumped = x.copy()
    bumped[..., 47] *= 10.0  # last channel of tower 1
    out = np.asarray(model_lib.local_response_norm(jnp.asarray(bumped), 2))
    np.testing.assert_array_equal(out[..., 48:], base[..., 48:])
    assert not np.allclose(out[..., 45:47], base[..., 45:47])
    # Without the tower split the window would cross.
    crossing = np.asarray(model_lib.local_response_norm(jnp.asarray(bumped), 1))
    assert not np.allclose(crossing[..., 48:50], np.asarray(model_lib.local_response_norm(jnp.asarray(x), 1))[..., 48:50])


def test_lrn_in_bfloat16_computes_in_float32():
    x = jnp.asarray(np.random.default_rng(2).normal(0, 30, (1, 2, 2, 96)), jnp.bfloat16)
    out = model_lib.local_response_norm(x, 2)
    assert out.dtype == jnp.bfloat16
    ref = model_lib.local_response_norm(x.astype(jnp.float32), 2)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), rtol=1e-2)


def _lrn_by_autodiff(x, groups, k=2.0, n=5, alpha=1e-4, beta=0.75):
    """The formula as written, differentiated by JAX: what the hand-written backward must match."""
    xf = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    window = jax.lax.reduce_window(xf * xf, 0.0, jax.lax.add, (1,) * (xf.ndim - 1) + (n,), (1,) * xf.ndim,
                                   ((0, 0),) * (xf.ndim - 1) + ((n // 2, n // 2),))  # fmt: skip
    return (xf * jax.lax.pow(k + alpha * window, -beta)).reshape(x.shape)


@pytest.mark.parametrize("groups,beta", [(2, 0.75), (1, 0.75), (2, 0.5)])
def test_lrn_gradient_matches_autodiff_of_the_formula(groups, beta):
    rng = np.random.default_rng(3)
    x = jnp.asarray(np.maximum(rng.normal(0, 40, (2, 5, 5, 96)), 0).astype(np.float32))
    cotangent = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
    ours = jax.vjp(lambda v: model_lib.local_response_norm(v, groups, beta=beta), x)
    ref = jax.vjp(lambda v: _lrn_by_autodiff(v, groups, beta=beta), x)
    np.testing.assert_allclose(np.asarray(ours[0]), np.asarray(ref[0]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours[1](cotangent)[0]), np.asarray(ref[1](cotangent)[0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(2, 55, 55, 8), (1, 13, 13, 4), (1, 6, 7, 3)])
def test_max_pool_and_its_gradient_equal_select_and_scatter(shape, dtype):
    rng = np.random.default_rng(4)
    # ReLU outputs and coarse values: many ties, where the gradient must go to the first maximum.
    x = jnp.asarray(np.maximum(rng.integers(-3, 4, shape), 0), dtype)
    # Positive cotangents: shares that meet at one input cannot cancel to zero.
    cotangent = jnp.asarray(rng.uniform(0.1, 2.0, size=model_lib.max_pool(x).shape), dtype)
    ours = jax.vjp(model_lib.max_pool, x)
    ref = jax.vjp(lambda v: flax.linen.max_pool(v, (3, 3), strides=(2, 2)), x)
    np.testing.assert_array_equal(np.asarray(ours[0], np.float32), np.asarray(ref[0], np.float32))
    grad, ref_grad = (np.asarray(vjp(cotangent)[0], np.float32) for vjp in (ours[1], ref[1]))
    # The same inputs receive gradient; where overlapping windows add up, the order of the sum may
    # differ, so the values agree to the dtype's rounding.
    np.testing.assert_array_equal(grad != 0, ref_grad != 0)
    tolerance = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(grad, ref_grad, rtol=tolerance, atol=tolerance * np.abs(ref_grad).max())


@pytest.fixture(scope="module")
def paper_params():
    return model_lib.init_params(model_lib.AlexNet(), jax.random.key(0), 224)


def test_init_statistics(paper_params):
    for name in ("conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        std = float(jnp.std(paper_params[name]["kernel"]))
        assert abs(std - 0.01) < 0.0005, (name, std)
        assert abs(float(jnp.mean(paper_params[name]["kernel"]))) < 0.001
    for name in model_lib.LAYER_NAMES:
        expected = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        np.testing.assert_array_equal(np.asarray(paper_params[name]["bias"]), expected)


def test_caffe_init_scheme():
    params = model_lib.init_params(model_lib.AlexNet(init_scheme="caffe", num_classes=10), jax.random.key(0), 67)
    assert abs(float(jnp.std(params["fc7"]["kernel"])) - 0.005) < 0.00025
    np.testing.assert_array_equal(np.asarray(params["fc6"]["bias"]), np.float32(0.1))


SMALL = 67  # 67 x 67 input: 15x15 conv1 maps, 1x1 pool5. Fast, and the same code path.


@pytest.fixture(scope="module")
def small_net():
    net = model_lib.AlexNet(num_classes=10)
    params = model_lib.init_params(net, jax.random.key(3), SMALL)
    images = jax.random.normal(jax.random.key(4), (4, SMALL, SMALL, 3)) * 60.0
    return net, params, images


def test_dropout_only_in_training(small_net):
    net, params, images = small_net
    evaluate = lambda: net.apply({"params": params}, images, train=False)
    np.testing.assert_array_equal(np.asarray(evaluate()), np.asarray(evaluate()))
    train = lambda seed: net.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.key(seed)})
    a, b, again = train(0), train(1), train(0)
    assert not np.allclose(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(again))
    assert not np.allclose(np.asarray(a), np.asarray(evaluate()))
    # About half of fc6's units are dropped.
    _, state = net.apply(
        {"params": params}, images, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["intermediates"]
    )
    fc6 = np.asarray(state["intermediates"]["fc6_out"][0])
    _, state = net.apply({"params": params}, images, mutable=["intermediates"])
    alive = np.asarray(state["intermediates"]["fc6_out"][0]) > 0
    assert 0.4 < (fc6[alive] == 0).mean() < 0.6


def outputs(net, params, images):
    _, state = net.apply({"params": params}, images, mutable=["intermediates"])
    return {k: np.asarray(v[0]) for k, v in state["intermediates"].items()}


def perturb_second_tower(params, layer, scale=3.0):
    kernel = params[layer]["kernel"]
    half = kernel.shape[-1] // 2
    new = dict(params)
    new[layer] = dict(params[layer], kernel=kernel.at[..., half:].multiply(scale))
    return new


def test_grouped_layers_only_see_their_own_tower(small_net):
    net, params, images = small_net
    base = outputs(net, params, images)
    # Changing the second tower's conv1 maps changes what conv2's second tower sees only.
    changed = outputs(net, perturb_second_tower(params, "conv1"), images)
    np.testing.assert_array_equal(changed["conv2_out"][..., :128], base["conv2_out"][..., :128])
    assert not np.allclose(changed["conv2_out"][..., 128:], base["conv2_out"][..., 128:])
    # conv3 is a cross layer: both of its towers see the change.
    for tower in (slice(0, 192), slice(192, 384)):
        assert not np.allclose(changed["conv3_out"][..., tower], base["conv3_out"][..., tower])
    # The second tower's conv3 maps reach conv4 and conv5 of that tower only, then fc6 in full.
    changed = outputs(net, perturb_second_tower(params, "conv3"), images)
    np.testing.assert_array_equal(changed["conv4_out"][..., :192], base["conv4_out"][..., :192])
    np.testing.assert_array_equal(changed["conv5_out"][..., :128], base["conv5_out"][..., :128])
    assert not np.allclose(changed["conv5_out"][..., 128:], base["conv5_out"][..., 128:])
    for tower in (slice(0, 2048), slice(2048, 4096)):
        assert not np.allclose(changed["fc6_out"][..., tower], base["fc6_out"][..., tower])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_grouped_conv_implementations_agree(small_net, dtype):
    _, params, images = small_net
    split = model_lib.AlexNet(num_classes=10, grouped_conv="split", dtype=dtype)
    grouped = model_lib.AlexNet(num_classes=10, grouped_conv="feature_group", dtype=dtype)
    a = split.apply({"params": params}, images)
    b = grouped.apply({"params": params}, images)
    assert a.dtype == jnp.float32  # logits are float32 for the loss whatever the compute dtype
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)
