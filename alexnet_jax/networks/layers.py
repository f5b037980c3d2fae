"""The layers the networks are built of: convolutions that keep the canonical kernel layout, LRN,
overlapping max-pooling and dropout that gives every device layout the same masks.

Three of them have two implementations with the same numbers (to float rounding), chosen per
backend by `model.from_config` (config `model.grouped_conv`, `model.pool_gradient`,
`model.lrn_gradient`; "auto" picks what was measured fastest on that backend):

* grouped convolutions: `feature_group_count`, or one convolution per group and a concatenation
  (`split`), which XLA:CPU runs about 2.4x faster;
* max-pooling's gradient: XLA's select-and-scatter (`xla`), or a hand-written one (`custom`) that
  keeps the position of each window's maximum and places the gradient back with 9 strided pads,
  4-7x faster on XLA:CPU;
* LRN's gradient: autodiff of the formula (`autodiff`), or a hand-written one (`custom`) with one
  more window sum, about twice as fast on XLA:CPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

GROUPED_CONV = ("split", "feature_group")
POOL_GRADIENTS = ("custom", "xla")
LRN_GRADIENTS = ("custom", "autodiff")
# Where dropout's factor goes. "paper": kept units pass unscaled in training and every output is
# multiplied by 1 - rate at test time (section 4.2, "multiply their outputs by 0.5"). "inverted":
# kept units are divided by 1 - rate in training and nothing changes at test time (PyTorch's and
# Caffe's dropout, hence torchvision's and bvlc_alexnet's weights). The two compute the same test-time
# function once the layer that reads the dropped units has its kernel scaled by 1 - rate
# (`networks.convert_dropout`).
DROPOUT_SCALINGS = ("paper", "inverted")


def convnet_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Padding (before, after) that reproduces cuda-convnet's output size `1 + ceil((size - k) / s)`.

    The original code let the last window overhang the bottom/right edge, which is how a 224 x 224
    crop gives conv1 its 55 x 55 output (pad 0 top/left, 3 bottom/right). A 227 input needs none.
    """
    if size < kernel:
        raise ValueError(f"input size {size} is smaller than the {kernel}x{kernel} kernel")
    out = 1 + math.ceil((size - kernel) / stride)
    return 0, (out - 1) * stride + kernel - size


def _channel_window_sum(v: jax.Array, n: int) -> jax.Array:
    """Sum over the n channels centred on each channel (last axis), zeros beyond the edges."""
    half = n // 2
    return lax.reduce_window(
        v,
        0.0,
        lax.add,
        window_dimensions=(1,) * (v.ndim - 1) + (n,),
        window_strides=(1,) * v.ndim,
        padding=((0, 0),) * (v.ndim - 1) + ((half, half),),
    )


def _negative_power(base: jax.Array, beta: float) -> jax.Array:
    # base ** -0.75 as two reciprocal square roots: about twice as fast as pow on XLA:CPU.
    if beta == 0.75:
        return lax.rsqrt(base) * lax.rsqrt(jnp.sqrt(base))
    return lax.pow(base, -beta)


def _lrn_forward(x, groups, k, n, alpha, beta):
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    base = k + alpha * _channel_window_sum(xf * xf, n)
    scale = _negative_power(base, beta)
    return (xf * scale).reshape(x.shape).astype(x.dtype), (xf, base, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _lrn_custom(x, groups, k, n, alpha, beta):
    return _lrn_forward(x, groups, k, n, alpha, beta)[0]


def _lrn_backward(groups, k, n, alpha, beta, residuals, g):
    # d b_i / d a_j = [i == j] s_i^-beta - 2 alpha beta a_i a_j s_i^(-beta-1) for j in i's window;
    # windows are symmetric, so the second term's sum over i is another window sum.
    xf, base, scale = residuals
    gf = g.astype(jnp.float32).reshape(xf.shape)
    spread = _channel_window_sum(gf * xf * scale / base, n)
    dx = gf * scale - (2.0 * alpha * beta) * xf * spread
    return (dx.reshape(g.shape).astype(g.dtype),)


_lrn_custom.defvjp(_lrn_forward, _lrn_backward)


def local_response_norm(
    x: jax.Array,
    groups: int,
    *,
    k: float = 2.0,
    n: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    gradient: str = "custom",
) -> jax.Array:
    """Section 3.3's brightness normalisation over channels, windows confined to `groups` blocks.

    `b_i = a_i / (k + alpha * sum_{|j-i| <= n//2} a_j^2) ** beta`, alpha as printed in the paper (not
    divided by n as PyTorch and Caffe do). With `groups=2` the channels are the two towers' and no
    window crosses from one tower into the other, as on the original two GPUs. The sum and the
    power run in float32 whatever the compute dtype.
    """
    if x.shape[-1] % groups:
        raise ValueError(f"{x.shape[-1]} channels do not split into {groups} LRN groups")
    if gradient not in LRN_GRADIENTS:
        raise ValueError(f"lrn_gradient must be one of {LRN_GRADIENTS}, got {gradient!r}")
    args = (groups, float(k), int(n), float(alpha), float(beta))
    if gradient == "custom":
        return _lrn_custom(x, *args)
    return _lrn_forward(x, *args)[0]


def _pool_views(x: jax.Array, window: int, stride: int):
    """The `window` x `window` strided views of x whose elementwise maximum is the pooled output."""
    rows = (x.shape[1] - window) // stride + 1
    cols = (x.shape[2] - window) // stride + 1
    for di in range(window):
        for dj in range(window):
            end = (x.shape[0], di + stride * (rows - 1) + 1, dj + stride * (cols - 1) + 1, x.shape[3])
            yield lax.slice(x, (0, di, dj, 0), end, (1, stride, stride, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_custom(x, window, stride):
    return functools.reduce(jnp.maximum, _pool_views(x, window, stride))


def _max_pool_forward(x, window, stride):
    # Keeps which window position held each output's first maximum (row-major order, as
    # select-and-scatter, cuDNN and PyTorch choose), so that the backward pass needs neither x nor
    # a recomputation of the layers that made it. A chain of elementwise comparisons, not an argmax
    # over the stacked positions, which XLA:CPU materialises at 25x the cost.
    views = _pool_views(x, window, stride)
    best = next(views)
    first = jnp.zeros(best.shape, jnp.int8)
    for position, view in enumerate(views, start=1):
        better = view > best
        first = jnp.where(better, jnp.int8(position), first)
        best = jnp.where(better, view, best)
    return best, (first, x.shape)


def _max_pool_backward(window, stride, residuals, g):
    # Each window position's share, placed back by interior padding. Where windows overlap, an
    # input's shares are added in another order than select-and-scatter's (the last bit can differ).
    first, (_, height, width, _) = residuals
    zero = jnp.zeros((), g.dtype)
    dx = None
    for position in range(window * window):
        di, dj = divmod(position, window)
        below = height - di - (stride * (g.shape[1] - 1) + 1)
        right = width - dj - (stride * (g.shape[2] - 1) + 1)
        padding = ((0, 0, 0), (di, below, stride - 1), (dj, right, stride - 1), (0, 0, 0))
        share = lax.pad(jnp.where(first == position, g, zero), zero, padding)
        dx = share if dx is None else dx + share
    return (dx,)


_max_pool_custom.defvjp(_max_pool_forward, _max_pool_backward)


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, gradient: str = "custom") -> jax.Array:
    """Max-pooling of NHWC maps, no padding; the paper's overlapping 3 x 3, stride 2 by default (section 3.4)."""
    if gradient not in POOL_GRADIENTS:
        raise ValueError(f"pool_gradient must be one of {POOL_GRADIENTS}, got {gradient!r}")
    if gradient == "custom":
        return _max_pool_custom(x, window, stride)
    return nn.max_pool(x, (window, window), strides=(stride, stride))


def dropout(
    rng: jax.Array,
    x: jax.Array,
    rate: float,
    first_example: jax.Array | int,
    model_axis: str | None,
    scaling: str = "inverted",
) -> jax.Array:
    """Training-time dropout of (batch, width) activations; the mask depends only on (rng, global example, neuron).

    `first_example` is the index of x's first row in the global batch. Each example's mask is drawn
    over the layer's full width and this device keeps its tower's slice (`model_axis`), which costs
    a few thousand random bits per example and makes every device layout drop the neurons that one
    device would: sharded and unsharded training agree exactly. Kept units are divided by 1 - rate
    with `scaling="inverted"` and left as they are with "paper" (see DROPOUT_SCALINGS).
    """
    if scaling not in DROPOUT_SCALINGS:
        raise ValueError(f"dropout scaling must be one of {DROPOUT_SCALINGS}, got {scaling!r}")
    if rate == 0.0:
        return x
    local_batch, local_width = x.shape
    towers = lax.axis_size(model_axis) if model_axis else 1
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(first_example + jnp.arange(local_batch))
    keep = jax.vmap(lambda key: jax.random.bernoulli(key, 1.0 - rate, (local_width * towers,)))(keys)
    if towers > 1:
        keep = lax.dynamic_slice_in_dim(keep, lax.axis_index(model_axis) * local_width, local_width, axis=1)
    kept = x / (1.0 - rate) if scaling == "inverted" else x
    return jnp.where(keep, kept, jnp.zeros_like(x))


def dropout_test_scale(rate: float, scaling: str) -> float:
    """The factor on a dropout layer's output at test time: 1 - rate for the paper's scaling, else 1."""
    if scaling not in DROPOUT_SCALINGS:
        raise ValueError(f"dropout scaling must be one of {DROPOUT_SCALINGS}, got {scaling!r}")
    return 1.0 - rate if scaling == "paper" else 1.0


class _Layer(nn.Module):
    """A layer that owns `kernel` and `bias` in the canonical layout, computing in `dtype`."""

    features: int
    kernel_init: Callable = nn.initializers.normal(0.01)
    bias_init: Callable = nn.initializers.zeros
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _params(self, kernel_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return kernel.astype(self.dtype), bias.astype(self.dtype)


class Conv(_Layer):
    """A convolution with kernel (kh, kw, in/groups, out): grouped layers keep that shape.

    `padding` is ((top, bottom), (left, right)), or "convnet" for `convnet_padding` of the input's
    size; `grouped_conv` picks the implementation of `groups` > 1 (see the module docstring).
    """

    kernel_size: int = 3
    stride: int = 1
    padding: tuple[tuple[int, int], tuple[int, int]] | str = ((0, 0), (0, 0))
    groups: int = 1
    grouped_conv: str = "split"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel, bias = self._params((k, k, x.shape[-1] // self.groups, self.features))
        x = x.astype(self.dtype)
        padding = self.padding
        if padding == "convnet":
            padding = tuple(convnet_padding(size, k, self.stride) for size in x.shape[1:3])

        def conv(lhs, rhs, groups=1):
            return lax.conv_general_dilated(
                lhs,
                rhs,
                window_strides=(self.stride, self.stride),
                padding=padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=groups,
            )

        if self.grouped_conv not in GROUPED_CONV:
            raise ValueError(f"grouped_conv must be one of {GROUPED_CONV}, got {self.grouped_conv!r}")
        if self.groups == 1:
            y = conv(x, kernel)
        elif self.grouped_conv == "feature_group":
            y = conv(x, kernel, self.groups)
        else:
            pairs = zip(jnp.split(x, self.groups, axis=-1), jnp.split(kernel, self.groups, axis=-1))
            y = jnp.concatenate([conv(a, b) for a, b in pairs], axis=-1)
        return y + bias


class Dense(_Layer):
    """A fully connected layer with kernel (in, out)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self._params((x.shape[-1], self.features))
        return jnp.dot(x.astype(self.dtype), kernel) + bias
