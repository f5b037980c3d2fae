"""The network of Krizhevsky, Sutskever and Hinton (2012), Figure 2, as one Flax module.

    image 224 x 224 x 3
    conv1  96 11x11 /4, ReLU, LRN, max-pool 3/2    each tower: 48 kernels on the whole image
    conv2 256  5x5,     ReLU, LRN, max-pool 3/2    each tower: 128 kernels on its own 48 maps
    conv3 384  3x3,     ReLU                       each tower: 192 kernels on both towers' 256 maps
    conv4 384  3x3,     ReLU                       each tower: 192 kernels on its own 192 maps
    conv5 256  3x3,     ReLU, max-pool 3/2         each tower: 128 kernels on its own 192 maps
    fc6 4096, ReLU, dropout; fc7 4096, ReLU, dropout; fc8 1000 -> softmax    both towers' inputs

The same module runs both towers on one device (grouped convolutions, LRN windows that stop at the
tower boundary) or, inside `shard_map` with `model_axis` set, one tower per device: each device
holds the output half of every layer, and the cross-tower layers (conv3, fc6, fc7, fc8) gather
their input over the model axis. The parameter tree is the same either way: `conv1` .. `fc8`, each
`kernel` and `bias`; conv kernels HWIO, grouped ones `(kh, kw, in/2, out)`; dense kernels
`(in, out)`, fc6's rows in HWC order over all 256 pool5 channels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from alexnet_jax import layers, vgg

LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

# How a convolution's input reaches it when the towers live on different devices.
FROM_IMAGE = "image"  # conv1: every tower sees the whole (replicated) image.
OWN_TOWER = "own"  # grouped: a tower sees only its own tower's maps; no communication.
BOTH_TOWERS = "both"  # cross: a tower sees both towers' maps; needs an all-gather.


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    name: str
    features: int
    kernel: int
    stride: int
    padding: int | str  # "convnet": cuda-convnet's rounding (layers.Conv)
    tower_input: str
    lrn: bool  # LRN after the activation
    pool: bool  # max-pooling after (LRN and) the activation


@dataclasses.dataclass(frozen=True)
class Architecture:
    towers: int
    convs: tuple[ConvLayer, ...]


def _convs(widths, *, conv1_padding, lrn):
    """The five convolutions of Figure 2 with the given kernel counts."""
    return (
        ConvLayer("conv1", widths[0], 11, 4, conv1_padding, FROM_IMAGE, lrn=lrn, pool=True),
        ConvLayer("conv2", widths[1], 5, 1, 2, OWN_TOWER, lrn=lrn, pool=True),
        ConvLayer("conv3", widths[2], 3, 1, 1, BOTH_TOWERS, lrn=False, pool=False),
        ConvLayer("conv4", widths[3], 3, 1, 1, OWN_TOWER, lrn=False, pool=False),
        ConvLayer("conv5", widths[4], 3, 1, 1, OWN_TOWER, lrn=False, pool=True),
    )


ARCHITECTURES = {
    # Figure 2, section 3.5: two towers that meet at conv3 and the fully connected layers.
    "paper": Architecture(towers=2, convs=_convs((96, 256, 384, 384, 256), conv1_padding="convnet", lrn=True)),
    # Section 3.2's comparison: "a net with half as many kernels in each convolutional layer trained
    # on one GPU"; its footnote keeps conv5 and the fully connected layers at full size.
    "one_tower": Architecture(towers=1, convs=_convs((48, 128, 192, 192, 256), conv1_padding="convnet", lrn=True)),
    # torchvision.models.alexnet ("One weird trick", Krizhevsky 2014): one tower, no LRN.
    "torchvision": Architecture(towers=1, convs=_convs((64, 192, 384, 256, 256), conv1_padding=2, lrn=False)),
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

# Section 3.1: ReLU, or the saturating tanh it is compared with.
ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}


class AlexNet(nn.Module):
    """AlexNet, eight layers, NHWC input of 224 x 224 (227 works too; smaller for quick runs).

    Attributes:
      num_classes: width of fc8.
      variant: a key of ARCHITECTURES ("paper", "one_tower", "torchvision").
      activation: "relu" (section 3.1) or "tanh".
      fc_width: neurons of fc6 and fc7 (4096, section 3.5).
      lrn, lrn_k, lrn_n, lrn_alpha, lrn_beta: section 3.3 (set `lrn=False` to leave it out).
      pool_window, pool_stride: section 3.4's overlapping pooling, z = 3, s = 2 (z = s = 2: plain).
      dropout_rate: on fc6 and fc7 outputs, training only (section 4.2).
      init_scheme: a key of INIT_SCHEMES.
      dtype: compute dtype (float32 or bfloat16); parameters stay `param_dtype`, logits float32.
      grouped_conv, pool_gradient, lrn_gradient: implementations with the same numbers (layers.py).
      model_axis: inside `shard_map`, the mesh axis that splits the towers across devices.
      data_axis: inside `shard_map`, the batch axis: dropout masks follow the global example index.

    `train=True` needs a "dropout" RNG. Each layer's activation is sown into "intermediates" as
    `<layer>_out`, and the pooled maps as `pool1`, `pool2`, `pool5`.
    """

    num_classes: int = 1000
    variant: str = "paper"
    activation: str = "relu"
    fc_width: int = 4096
    lrn: bool = True
    lrn_k: float = 2.0
    lrn_n: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    pool_window: int = 3
    pool_stride: int = 2
    dropout_rate: float = 0.5
    init_scheme: str = "paper"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    grouped_conv: str = "split"
    pool_gradient: str = "custom"
    lrn_gradient: str = "custom"
    model_axis: str | None = None
    data_axis: str | None = None

    def setup(self):
        for field, table in (("variant", ARCHITECTURES), ("init_scheme", INIT_SCHEMES), ("activation", ACTIVATIONS)):
            if getattr(self, field) not in table:
                raise ValueError(f"{field} must be one of {sorted(table)}, got {getattr(self, field)!r}")
        self.arch = ARCHITECTURES[self.variant]
        devices = lax.axis_size(self.model_axis) if self.model_axis else 1
        if self.arch.towers % devices:
            raise ValueError(
                f"the {self.variant!r} variant has {self.arch.towers} tower(s); it cannot be split over "
                f"{devices} devices on the model axis"
            )
        self.devices, self.towers_here = devices, self.arch.towers // devices
        for layer in self.arch.convs:
            padding = "convnet" if layer.padding == "convnet" else ((layer.padding,) * 2,) * 2
            groups = self.towers_here if layer.tower_input == OWN_TOWER else 1
            conv = layers.Conv(
                layer.features // devices,
                kernel_size=layer.kernel,
                stride=layer.stride,
                padding=padding,
                groups=groups,
                grouped_conv=self.grouped_conv,
                **self._layer_args(layer.name),
            )
            setattr(self, layer.name, conv)
        for name, width in (("fc6", self.fc_width), ("fc7", self.fc_width), ("fc8", self.num_classes)):
            if width % devices:
                raise ValueError(f"{name} width {width} does not split over {devices} towers")
            setattr(self, name, layers.Dense(width // devices, **self._layer_args(name)))

    def _layer_args(self, name: str) -> dict:
        default_std, overrides, bias_value, bias_layers = INIT_SCHEMES[self.init_scheme]
        return dict(
            kernel_init=nn.initializers.normal(stddev=overrides.get(name, default_std)),
            bias_init=nn.initializers.constant(bias_value if name in bias_layers else 0.0),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def _both_towers(self, x: jax.Array) -> jax.Array:
        """Both towers' channels in canonical order, from each device's own tower."""
        return lax.all_gather(x, self.model_axis, axis=x.ndim - 1, tiled=True) if self.devices > 1 else x

    def features(self, images: jax.Array) -> jax.Array:
        """conv1 .. pool5: this device's towers' pool5 maps."""
        act = ACTIVATIONS[self.activation]
        x = images
        for layer in self.arch.convs:
            if layer.tower_input == BOTH_TOWERS:
                x = self._both_towers(x)
            x = act(getattr(self, layer.name)(x))
            self.sow("intermediates", f"{layer.name}_out", x)
            if layer.lrn and self.lrn:
                x = layers.local_response_norm(
                    x,
                    self.towers_here,
                    k=self.lrn_k,
                    n=self.lrn_n,
                    alpha=self.lrn_alpha,
                    beta=self.lrn_beta,
                    gradient=self.lrn_gradient,
                )
            if layer.pool:
                if min(x.shape[1:3]) < self.pool_window:
                    raise ValueError(
                        f"input {images.shape[1]}x{images.shape[2]} is too small: {layer.name} gives "
                        f"{x.shape[1]}x{x.shape[2]} maps, fewer than the {self.pool_window}x"
                        f"{self.pool_window} pool"
                    )
                x = layers.max_pool(x, self.pool_window, self.pool_stride, self.pool_gradient)
                self.sow("intermediates", "pool" + layer.name[-1], x)
        return x

    def classifier(self, maps: jax.Array, train: bool = False) -> jax.Array:
        """fc6 .. fc8 on pool5 maps: float32 logits of all classes.

        pool5 is gathered as maps, before the flatten, so that fc6 reads its inputs in the canonical
        HWC order over all channels whatever the layout (flattened towers would put one tower first).
        """
        act = ACTIVATIONS[self.activation]
        x = self._both_towers(maps).reshape(maps.shape[0], -1)
        for name in ("fc6", "fc7"):
            x = act(getattr(self, name)(x))
            if train and self.dropout_rate > 0:
                first = lax.axis_index(self.data_axis) * x.shape[0] if self.data_axis else 0
                x = layers.dropout(self.make_rng("dropout"), x, self.dropout_rate, first, self.model_axis)
            self.sow("intermediates", f"{name}_out", x)
            x = self._both_towers(x)
        x = self.fc8(x)
        self.sow("intermediates", "fc8_out", x)
        return self._both_towers(x).astype(jnp.float32)

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        return self.classifier(self.features(images), train)


def init_params(model: nn.Module, rng: jax.Array, image_size: int) -> dict:
    """The canonical parameter tree, initialised as the model specifies (section 5)."""
    dummy = jnp.zeros((1, image_size, image_size, 3), model.dtype)
    return jax.jit(lambda key: model.init({"params": key}, dummy)["params"])(rng)


def param_shapes(model: nn.Module, image_size: int) -> dict:
    """`init_params`' tree of `jax.ShapeDtypeStruct`, without allocating anything."""
    return jax.eval_shape(lambda: init_params(model, jax.random.key(0), image_size))


def count_params(tree: Any) -> int:
    """Number of scalars in a parameter tree (of arrays or shape structs)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def layer_names(model: nn.Module) -> tuple[str, ...]:
    """The layers of a network's parameter tree, input to output."""
    return vgg.LAYER_NAMES if isinstance(model, vgg.VGG16) else LAYER_NAMES


def from_config(model_config) -> nn.Module:
    """The module that a config's `model` section describes (`model.name`: alexnet or vgg16), with
    each "auto" implementation choice resolved for this backend (`implementation_choices`)."""
    choices = implementation_choices(model_config)
    common = dict(
        num_classes=model_config.num_classes,
        dropout_rate=model_config.dropout_rate,
        dtype=jnp.dtype(model_config.dtype),
        pool_gradient=choices["pool_gradient"],
    )
    if model_config.name == "vgg16":
        return vgg.VGG16(**common)
    return AlexNet(
        **common,
        variant=model_config.variant,
        activation=model_config.activation,
        fc_width=model_config.fc_width,
        lrn=model_config.lrn,
        lrn_k=model_config.lrn_k,
        lrn_n=model_config.lrn_n,
        lrn_alpha=model_config.lrn_alpha,
        lrn_beta=model_config.lrn_beta,
        pool_window=model_config.pool_window,
        pool_stride=model_config.pool_stride,
        init_scheme=model_config.init_scheme,
        grouped_conv=choices["grouped_conv"],
        lrn_gradient=choices["lrn_gradient"],
    )


# What "auto" means per backend, as measured (BENCHMARKS.md, "Implementation choices"). On XLA:CPU
# the hand-written pieces and the split convolutions are 2-7x faster each. On an H200 (bfloat16,
# batch 512) `feature_group` trained 17 % slower than `split`, and select-and-scatter pooling and
# autodiff LRN were within 2 % of the hand-written ones: no reason to change.
AUTO_CHOICES = {
    "cpu": {"grouped_conv": "split", "pool_gradient": "custom", "lrn_gradient": "custom"},
    "gpu": {"grouped_conv": "split", "pool_gradient": "custom", "lrn_gradient": "custom"},
}


def implementation_choices(model_config, backend: str | None = None) -> dict[str, str]:
    """The config's grouped_conv, pool_gradient and lrn_gradient, "auto" replaced for `backend`."""
    table = AUTO_CHOICES.get(backend or jax.default_backend(), AUTO_CHOICES["gpu"])
    return {key: table[key] if model_config[key] == "auto" else model_config[key] for key in table}
