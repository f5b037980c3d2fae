"""The layers: LRN against TensorFlow and per tower, both implementations of each per-backend choice
against each other (values and gradients), cuda-convnet's padding, and layout-free dropout masks."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax.networks import layers


def value_and_vjp(fn, x, cotangent):
    """fn(x) and the gradient that `cotangent` on it sends back to x, compiled as one program, as the
    network's step compiles them (not one small program per operation)."""
    return jax.jit(lambda v, ct: (fn(v), jax.vjp(fn, v)[1](ct)[0]))(x, cotangent)


@pytest.mark.parametrize("towers,channels", [(2, 96), (2, 256), (1, 64)])
def test_lrn_matches_tensorflow_per_tower(towers, channels):
    x = np.random.default_rng(0).normal(0, 10, (2, 7, 7, channels)).astype(np.float32)
    ours = np.asarray(layers.local_response_norm(jnp.asarray(x), towers))
    per_tower = channels // towers
    for t in range(towers):
        part = x[..., t * per_tower : (t + 1) * per_tower]
        # The paper's constants in TensorFlow's convention: depth_radius = n // 2, alpha as printed.
        ref = tf.nn.local_response_normalization(part, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
        np.testing.assert_allclose(ours[..., t * per_tower : (t + 1) * per_tower], ref.numpy(), rtol=1e-6, atol=1e-6)


def test_lrn_window_stops_at_tower_boundary():
    x = np.random.default_rng(1).normal(0, 50, (1, 3, 3, 96)).astype(np.float32)
    lrn = lambda v, groups: np.asarray(layers.local_response_norm(jnp.asarray(v), groups))  # noqa: E731
    bumped = x.copy()
    bumped[..., 47] *= 10.0  # the last channel of tower 1
    np.testing.assert_array_equal(lrn(bumped, 2)[..., 48:], lrn(x, 2)[..., 48:])
    assert not np.allclose(lrn(bumped, 2)[..., 45:47], lrn(x, 2)[..., 45:47])
    # Without the tower split the window would cross.
    assert not np.allclose(lrn(bumped, 1)[..., 48:50], lrn(x, 1)[..., 48:50])


def test_lrn_in_bfloat16_computes_in_float32():
    x = jnp.asarray(np.random.default_rng(2).normal(0, 30, (1, 2, 2, 96)), jnp.bfloat16)
    out = layers.local_response_norm(x, 2)
    assert out.dtype == jnp.bfloat16
    ref = layers.local_response_norm(x.astype(jnp.float32), 2)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), rtol=1e-2)


@pytest.mark.parametrize("groups,beta", [(2, 0.75), (1, 0.75), (2, 0.5)])
def test_lrn_gradients_agree(groups, beta):
    """The hand-written gradient against autodiff of the formula (the `autodiff` choice)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(np.maximum(rng.normal(0, 40, (2, 5, 5, 96)), 0).astype(np.float32))
    cotangent = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
    custom, autodiff = (
        value_and_vjp(lambda v, g=g: layers.local_response_norm(v, groups, beta=beta, gradient=g), x, cotangent)
        for g in layers.LRN_GRADIENTS
    )
    np.testing.assert_allclose(np.asarray(custom[0]), np.asarray(autodiff[0]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(custom[1]), np.asarray(autodiff[1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    "shape,window,stride",
    [((2, 55, 55, 8), 3, 2), ((1, 13, 13, 4), 3, 2), ((1, 6, 7, 3), 3, 2), ((2, 55, 55, 8), 2, 2)],
)
def test_max_pool_gradients_agree(shape, window, stride, dtype):
    """The hand-written gradient against XLA's select-and-scatter (the `xla` choice), ties included."""
    rng = np.random.default_rng(4)
    # ReLU outputs and coarse values: many ties, where the gradient must go to the first maximum.
    x = jnp.asarray(np.maximum(rng.integers(-3, 4, shape), 0), dtype)
    pools = (
        lambda v: layers.max_pool(v, window, stride, "custom"),
        lambda v: flax.linen.max_pool(v, (window, window), strides=(stride, stride)),
    )
    shape = jax.eval_shape(pools[0], x).shape
    assert jax.eval_shape(lambda v: layers.max_pool(v, window, stride, "xla"), x).shape == shape
    # Positive cotangents: shares that meet at one input cannot cancel to zero.
    cotangent = jnp.asarray(rng.uniform(0.1, 2.0, size=shape), dtype)
    (out, grad), (ref_out, ref_grad) = (value_and_vjp(pool, x, cotangent) for pool in pools)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref_out, np.float32))
    grad, ref_grad = np.asarray(grad, np.float32), np.asarray(ref_grad, np.float32)
    # The same inputs receive gradient; where overlapping windows add up, the order of the sum may
    # differ, so the values agree to the dtype's rounding.
    np.testing.assert_array_equal(grad != 0, ref_grad != 0)
    tolerance = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(grad, ref_grad, rtol=tolerance, atol=tolerance * np.abs(ref_grad).max())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_grouped_convolutions_agree(dtype):
    x = jnp.asarray(np.random.default_rng(5).normal(0, 1, (2, 9, 9, 8)), dtype)
    outputs = []
    for implementation in layers.GROUPED_CONV:
        conv = layers.Conv(
            6,
            kernel_size=3,
            padding=((1, 1), (1, 1)),
            groups=2,
            grouped_conv=implementation,
            dtype=dtype,
            kernel_init=flax.linen.initializers.normal(1.0),
        )
        params = conv.init(jax.random.key(0), x)
        assert params["params"]["kernel"].shape == (3, 3, 4, 6)  # (kh, kw, in / groups, out)
        outputs.append(np.asarray(conv.apply(params, x), np.float32))
    tolerance = 1e-5 if dtype == jnp.float32 else 5e-2
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=tolerance, atol=tolerance * np.abs(outputs[1]).max())


def test_convnet_padding_gives_55_from_224_and_227():
    # cuda-convnet: output 1 + ceil((in - k) / s), the overhang on the bottom/right.
    assert layers.convnet_padding(224, 11, 4) == (0, 3)
    assert layers.convnet_padding(227, 11, 4) == (0, 0)
    with pytest.raises(ValueError, match="smaller than"):
        layers.convnet_padding(8, 11, 4)


def test_dropout_masks_follow_the_global_example_not_the_layout():
    """A device holding examples 4..7 of one tower drops what one device holding all would."""
    rng, x = jax.random.key(3), jnp.ones((8, 10))
    whole = np.asarray(layers.dropout(rng, x, 0.5, 0, None))
    assert 0.3 < (whole == 0).mean() < 0.7 and set(np.unique(whole)) == {0.0, 2.0}
    part = np.asarray(layers.dropout(rng, x[4:], 0.5, 4, None))
    np.testing.assert_array_equal(part, whole[4:])
    np.testing.assert_array_equal(np.asarray(layers.dropout(rng, x, 0.0, 0, None)), np.asarray(x))
