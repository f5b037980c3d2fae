"""The AlexNet network of Krizhevsky, Sutskever and Hinton (2012) as one Flax module.

One module serves three layouts, chosen by where it runs:

* single device, paper variant: both towers on one device; grouped layers (conv2, conv4, conv5)
  use two channel groups and LRN windows stop at the tower boundary;
* inside `shard_map` with `model_axis` set and two devices on it: each device holds one tower,
  i.e. the output half of every layer's kernel, and the cross-tower layers (conv3, fc6, fc7, fc8)
  all-gather their input over the model axis;
* the torchvision single-tower variant (no grouping, no LRN, 64-192-384-256-256 kernels).

The parameter tree is the same in all three (see `canonical_shapes`): keys `conv1` .. `fc8`, each
with `kernel` and `bias`; conv kernels HWIO with grouped kernels stored as `(kh, kw, in/2, out)`,
dense kernels `(in, out)` with fc6's input in HWC flatten order. Sharding a tree on the output
axis gives each tower its own kernels with no reshaping.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

# How a layer's input reaches it when the towers live on different devices.
FROM_IMAGE = "image"  # conv1: every tower sees the whole (replicated) image.
OWN_TOWER = "own"  # grouped: a tower sees only its own tower's maps; no communication.
BOTH_TOWERS = "both"  # cross: a tower sees both towers' maps; needs an all-gather.


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One convolutional layer of an architecture (section 3.5 of the paper)."""

    name: str
    features: int
    kernel: int
    stride: int
    padding: int | None  # None: cuda-convnet's rounding (see `convnet_padding`).
    tower_input: str
    lrn: bool  # LRN after the ReLU (conv1, conv2 in the paper).
    pool: bool  # overlapping 3/2 max-pool after (LRN and) ReLU.


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The layer list of a variant and how many towers it splits into."""

    towers: int
    convs: tuple[ConvLayer, ...]
    hidden: int = 4096  # fc6 and fc7 width.


ARCHITECTURES = {
    # Figure 2 and section 3.5 of the paper: two towers that meet at conv3 and the fc layers.
    "paper": Architecture(
        towers=2,
        convs=(
            ConvLayer("conv1", 96, 11, 4, None, FROM_IMAGE, lrn=True, pool=True),
            ConvLayer("conv2", 256, 5, 1, 2, OWN_TOWER, lrn=True, pool=True),
            ConvLayer("conv3", 384, 3, 1, 1, BOTH_TOWERS, lrn=False, pool=False),
            ConvLayer("conv4", 384, 3, 1, 1, OWN_TOWER, lrn=False, pool=False),
            ConvLayer("conv5", 256, 3, 1, 1, OWN_TOWER, lrn=False, pool=True),
        ),
    ),
    # torchvision.models.alexnet ("One weird trick", Krizhevsky 2014): one tower, no LRN.
    "torchvision": Architecture(
        towers=1,
        convs=(
            ConvLayer("conv1", 64, 11, 4, 2, FROM_IMAGE, lrn=False, pool=True),
            ConvLayer("conv2", 192, 5, 1, 2, OWN_TOWER, lrn=False, pool=True),
            ConvLayer("conv3", 384, 3, 1, 1, BOTH_TOWERS, lrn=False, pool=False),
            ConvLayer("conv4", 256, 3, 1, 1, OWN_TOWER, lrn=False, pool=False),
            ConvLayer("conv5", 256, 3, 1, 1, OWN_TOWER, lrn=False, pool=True),
        ),
    ),
}

# Section 5: weights ~ N(0, std^2); biases 1 where ReLUs need a positive start, else 0.
# Each scheme: (default std, per-layer std overrides, bias value, layers with that bias).
_BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")
INIT_SCHEMES = {
    "paper": (0.01, {}, 1.0, _BIAS_ONE_LAYERS),
    # cuda-convnet2's layers-imagenet-2gpu-model.cfg used std 0.03 on conv3-conv5.
    "cuda-convnet": (0.01, {"conv3": 0.03, "conv4": 0.03, "conv5": 0.03}, 1.0, _BIAS_ONE_LAYERS),
    # Caffe's bvlc_alexnet: fc6/fc7 std 0.005 and bias 0.1.
    "caffe": (0.01, {"fc6": 0.005, "fc7": 0.005}, 0.1, _BIAS_ONE_LAYERS),
}

POOL_WINDOW, POOL_STRIDE = 3, 2  # overlapping pooling, section 3.4 (z = 3, s = 2).


def convnet_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Padding (before, after) that reproduces cuda-convnet's output size `1 + ceil((size-k)/s)`.

    The original code let the last window overhang the bottom/right edge, which is how a 224 x 224
    crop gives conv1 its 55 x 55 output (pad 0 top/left, 3 bottom/right). A 227 input needs none.
    """
    if size < kernel:
        raise ValueError(f"input size {size} is smaller than the {kernel}x{kernel} kernel")
    out = 1 + math.ceil((size - kernel) / stride)
    return 0, (out - 1) * stride + kernel - size


def local_response_norm(
    x: jax.Array,
    groups: int,
    *,
    k: float = 2.0,
    n: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
) -> jax.Array:
    """Section 3.3's brightness normalisation over channels, windows confined to `groups` blocks.

    `b_i = a_i / (k + alpha * sum_{|j-i| <= n//2} a_j^2) ** beta`, alpha as printed in the paper (not
    divided by n as PyTorch and Caffe do). With `groups=2` the channels are the two towers' and no
    window crosses from one tower into the other, as on the original two GPUs. The sum and the
    power run in float32 whatever the compute dtype.
    """
    channels = x.shape[-1]
    if channels % groups:
        raise ValueError(f"{channels} channels do not split into {groups} LRN groups")
    return _lrn(x, groups, float(k), int(n), float(alpha), float(beta))


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
def _lrn(x, groups, k, n, alpha, beta):
    return _lrn_forward(x, groups, k, n, alpha, beta)[0]


def _lrn_backward(groups, k, n, alpha, beta, residuals, g):
    # d b_i / d a_j = [i == j] s_i^-beta - 2 alpha beta a_i a_j s_i^(-beta-1) for j in i's window;
    # windows are symmetric, so the second term's sum over i is another window sum. Autodiff of
    # reduce_window + pow costs about twice as much on XLA:CPU.
    xf, base, scale = residuals
    gf = g.astype(jnp.float32).reshape(xf.shape)
    spread = _channel_window_sum(gf * xf * scale / base, n)
    dx = gf * scale - (2.0 * alpha * beta) * xf * spread
    return (dx.reshape(g.shape).astype(g.dtype),)


_lrn.defvjp(_lrn_forward, _lrn_backward)


def max_pool(x: jax.Array) -> jax.Array:
    """Overlapping 3 x 3 max-pooling with stride 2, no padding (55 -> 27 -> 13 -> 6)."""
    return _max_pool(x)


def _pool_windows(x: jax.Array):
    """(row offset, column offset, strided view) for each of the 9 positions of a pooling window."""
    rows = (x.shape[1] - POOL_WINDOW) // POOL_STRIDE + 1
    cols = (x.shape[2] - POOL_WINDOW) // POOL_STRIDE + 1
    for di in range(POOL_WINDOW):
        for dj in range(POOL_WINDOW):
            end = (x.shape[0], di + POOL_STRIDE * (rows - 1) + 1, dj + POOL_STRIDE * (cols - 1) + 1, x.shape[3])
            yield di, dj, lax.slice(x, (0, di, dj, 0), end, (1, POOL_STRIDE, POOL_STRIDE, 1))


@jax.custom_vjp
def _max_pool(x):
    return functools.reduce(jnp.maximum, (view for _, _, view in _pool_windows(x)))


def _max_pool_forward(x):
    # Keeps which of the 9 window positions held each output's first maximum (row-major order, as
    # select-and-scatter, cuDNN and PyTorch choose), so that the backward pass needs neither x nor
    # a recomputation of the layers that made it. argmax is a reduction, which XLA materialises;
    # an elementwise chain of comparisons would be re-derived inside each of the 9 backward loops.
    views = [view for _, _, view in _pool_windows(x)]
    first = jnp.argmax(jnp.stack(views), axis=0).astype(jnp.int8)
    return functools.reduce(jnp.maximum, views), (first, x.shape)


def _max_pool_backward(residuals, g):
    # Each window position's share, placed back by interior padding: 4-7x faster than
    # select-and-scatter on XLA:CPU. Where windows overlap, an input's shares are added in another
    # order than select-and-scatter's, which can change the last bit.
    first, (_, height, width, _) = residuals
    zero = jnp.zeros((), g.dtype)
    dx = None
    for position in range(POOL_WINDOW * POOL_WINDOW):
        di, dj = divmod(position, POOL_WINDOW)
        below = height - di - (POOL_STRIDE * (g.shape[1] - 1) + 1)
        right = width - dj - (POOL_STRIDE * (g.shape[2] - 1) + 1)
        interior = POOL_STRIDE - 1
        padding = ((0, 0, 0), (di, below, interior), (dj, right, interior), (0, 0, 0))
        share = lax.pad(jnp.where(first == position, g, zero), zero, padding)
        dx = share if dx is None else dx + share
    return (dx,)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def mesh_dropout(
    rng: jax.Array,
    x: jax.Array,
    rate: float,
    model_axis: str | None,
    data_axis: str | None,
    first_example: jax.Array | int | None = None,
) -> jax.Array:
    """Dropout of (batch, width) activations whose mask depends only on (rng, global example, neuron).

    Drawing each example's full-width mask and keeping this device's slice costs a few thousand
    random bits per example and makes every mesh shape drop the same neurons as a single device,
    so sharded and unsharded training agree exactly. `first_example` is the global index of x's
    first row; by default, this device's place on `data_axis` times the rows it holds (it must be
    given when x is a slice of the device's batch, as with micro-batches).
    """
    if rate == 0.0:
        return x
    local_batch, local_width = x.shape
    model_size = lax.axis_size(model_axis) if model_axis else 1
    if first_example is not None:
        offset = first_example
    else:
        offset = lax.axis_index(data_axis) * local_batch if data_axis else 0
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(offset + jnp.arange(local_batch))
    keep = jax.vmap(lambda key: jax.random.bernoulli(key, 1.0 - rate, (local_width * model_size,)))(keys)
    if model_size > 1:
        keep = lax.dynamic_slice_in_dim(keep, lax.axis_index(model_axis) * local_width, local_width, axis=1)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class _Layer(nn.Module):
    """A layer that owns `kernel` and `bias` in the canonical layout, computing in `dtype`."""

    features: int
    kernel_init: Callable
    bias_init: Callable
    dtype: Any
    param_dtype: Any

    def _params(self, kernel_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return kernel.astype(self.dtype), bias.astype(self.dtype)


class _Conv(_Layer):
    """A convolution with kernel (kh, kw, in/groups, out): grouped layers keep that shape."""

    kernel_size: int = 3
    stride: int = 1
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    groups: int = 1
    grouped_conv: str = "split"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel, bias = self._params((k, k, x.shape[-1] // self.groups, self.features))
        x = x.astype(self.dtype)

        def conv(lhs, rhs, groups=1):
            return lax.conv_general_dilated(
                lhs,
                rhs,
                window_strides=(self.stride, self.stride),
                padding=self.padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=groups,
            )

        if self.groups == 1:
            y = conv(x, kernel)
        elif self.grouped_conv == "feature_group":
            y = conv(x, kernel, self.groups)
        elif self.grouped_conv == "split":
            # XLA:CPU runs grouped convolutions ~2.4x slower than separate ones (PERFORMANCE.md).
            xs = jnp.split(x, self.groups, axis=-1)
            ks = jnp.split(kernel, self.groups, axis=-1)
            y = jnp.concatenate([conv(a, b) for a, b in zip(xs, ks)], axis=-1)
        else:
            raise ValueError(f"grouped_conv must be 'split' or 'feature_group', got {self.grouped_conv!r}")
        return y + bias


class _Dense(_Layer):
    """A fully connected layer with kernel (in, out)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self._params((x.shape[-1], self.features))
        return jnp.dot(x.astype(self.dtype), kernel) + bias


class AlexNet(nn.Module):
    """AlexNet, eight layers, NHWC input of 224 x 224 (or 227, or smaller for quick runs).

    Attributes:
      num_classes: width of fc8.
      variant: "paper" (two towers, grouped, LRN) or "torchvision" (one tower, no LRN).
      lrn: apply LRN where the variant has it (set False to ablate it).
      dropout_rate: dropout on fc6 and fc7 outputs, training only (section 4.2).
      init_scheme: weight/bias initialisation scheme, a key of `INIT_SCHEMES`.
      dtype: compute dtype (float32 or bfloat16); parameters stay `param_dtype`.
      grouped_conv: "split" (two half convolutions, faster on XLA:CPU) or "feature_group"
        (`feature_group_count`); the two give the same numbers.
      lrn_k, lrn_n, lrn_alpha, lrn_beta: section 3.3's constants.
      model_axis: set inside `shard_map`: the mesh axis that splits the towers across devices.
      data_axis: set inside `shard_map`: the batch axis, so that dropout masks follow the global
        example index and every mesh draws the masks that one device would.

    Calling it with `train=True` needs a "dropout" RNG; `first_example` (see `mesh_dropout`) is the
    global index of the first image when `images` is a micro-batch. Each layer's activation is sown into the
    "intermediates" collection as `<layer>_out` (after the ReLU), and `pool1`, `pool2`, `pool5`.
    """

    num_classes: int = 1000
    variant: str = "paper"
    lrn: bool = True
    dropout_rate: float = 0.5
    init_scheme: str = "paper"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    grouped_conv: str = "split"
    lrn_k: float = 2.0
    lrn_n: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    model_axis: str | None = None
    data_axis: str | None = None

    def _model_size(self) -> int:
        return lax.axis_size(self.model_axis) if self.model_axis else 1

    def _gather_towers(self, x: jax.Array) -> jax.Array:
        """Both towers' channels in canonical order, from each device's own tower."""
        if self._model_size() == 1:
            return x
        return lax.all_gather(x, self.model_axis, axis=x.ndim - 1, tiled=True)

    def _init_fns(self, name: str) -> dict[str, Callable]:
        default_std, overrides, bias_value, bias_layers = INIT_SCHEMES[self.init_scheme]
        bias = bias_value if name in bias_layers else 0.0
        return dict(
            kernel_init=nn.initializers.normal(stddev=overrides.get(name, default_std)),
            bias_init=nn.initializers.constant(bias),
        )

    def _dropout(self, x: jax.Array, train: bool, first_example) -> jax.Array:
        if not train:
            return x
        return mesh_dropout(self.make_rng("dropout"), x, self.dropout_rate, self.model_axis, self.data_axis, first_example)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, first_example=None) -> jax.Array:
        if self.variant not in ARCHITECTURES:
            raise ValueError(f"variant must be one of {sorted(ARCHITECTURES)}, got {self.variant!r}")
        if self.init_scheme not in INIT_SCHEMES:
            raise ValueError(f"init must be one of {sorted(INIT_SCHEMES)}, got {self.init_scheme!r}")
        arch = ARCHITECTURES[self.variant]
        model_size = self._model_size()
        if arch.towers % model_size:
            raise ValueError(
                f"the {self.variant!r} variant has {arch.towers} tower(s); it cannot be split over "
                f"{model_size} devices on the model axis"
            )
        towers_here = arch.towers // model_size
        x = images
        for layer in arch.convs:
            if layer.tower_input == BOTH_TOWERS:
                x = self._gather_towers(x)
            if layer.padding is None:
                padding = (
                    convnet_padding(x.shape[1], layer.kernel, layer.stride),
                    convnet_padding(x.shape[2], layer.kernel, layer.stride),
                )
            else:
                padding = ((layer.padding, layer.padding),) * 2
            x = _Conv(
                features=layer.features // model_size,
                kernel_size=layer.kernel,
                stride=layer.stride,
                padding=padding,
                groups=towers_here if layer.tower_input == OWN_TOWER else 1,
                grouped_conv=self.grouped_conv,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=layer.name,
                **self._init_fns(layer.name),
            )(x)
            x = nn.relu(x)
            self.sow("intermediates", f"{layer.name}_out", x)
            if layer.lrn and self.lrn:
                x = local_response_norm(
                    x, towers_here, k=self.lrn_k, n=self.lrn_n, alpha=self.lrn_alpha, beta=self.lrn_beta
                )
            if layer.pool:
                if min(x.shape[1:3]) < POOL_WINDOW:
                    raise ValueError(
                        f"input {images.shape[1]}x{images.shape[2]} is too small: {layer.name} gives "
                        f"{x.shape[1]}x{x.shape[2]} maps, fewer than the {POOL_WINDOW}x{POOL_WINDOW} pool"
                    )
                x = max_pool(x)
                self.sow("intermediates", "pool" + layer.name[-1], x)

        # fc6, fc7 and fc8 all see both towers (HWC flatten order; see weights.py for CHW).
        x = x.reshape(x.shape[0], -1)
        for name, width in (("fc6", arch.hidden), ("fc7", arch.hidden), ("fc8", self.num_classes)):
            x = self._gather_towers(x)
            if width % model_size:
                raise ValueError(f"{name} width {width} does not split over {model_size} towers")
            x = _Dense(
                features=width // model_size,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
                **self._init_fns(name),
            )(x)
            if name != "fc8":
                x = self._dropout(nn.relu(x), train, first_example)
            self.sow("intermediates", f"{name}_out", x)
        return self._gather_towers(x).astype(jnp.float32)


def init_params(model: nn.Module, rng: jax.Array, image_size: int) -> dict:
    """The canonical parameter tree, initialised as `model.init` specifies (section 5)."""
    dummy = jnp.zeros((1, image_size, image_size, 3), model.dtype)
    return jax.jit(lambda key: model.init({"params": key}, dummy)["params"])(rng)


def param_shapes(model: nn.Module, image_size: int) -> dict:
    """`init_params`' tree of `jax.ShapeDtypeStruct`, without allocating anything."""
    return jax.eval_shape(lambda: init_params(model, jax.random.key(0), image_size))


def count_params(tree: Any) -> int:
    """Number of scalars in a parameter tree (of arrays or shape structs)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def from_config(model_config) -> nn.Module:
    """The module that a config's `model` section describes (`model.name`: alexnet or vgg16)."""
    if model_config.name == "vgg16":
        from alexnet_jax import vgg

        return vgg.VGG16(
            num_classes=model_config.num_classes,
            dropout_rate=model_config.dropout_rate,
            dtype=jnp.dtype(model_config.dtype),
        )
    return AlexNet(
        num_classes=model_config.num_classes,
        variant=model_config.variant,
        lrn=model_config.lrn,
        dropout_rate=model_config.dropout_rate,
        init_scheme=model_config.init_scheme,
        dtype=jnp.dtype(model_config.dtype),
        grouped_conv=model_config.grouped_conv,
        lrn_k=model_config.lrn_k,
        lrn_n=model_config.lrn_n,
        lrn_alpha=model_config.lrn_alpha,
        lrn_beta=model_config.lrn_beta,
    )
