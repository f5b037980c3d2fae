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
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from alexnet_jax.networks import layers

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
    dropout_before: tuple[str, ...]  # the layers whose input units dropout acts on


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
    # Section 4.2: dropout on the outputs of fc6 and fc7 ("the first two fully-connected layers").
    "paper": Architecture(2, _convs((96, 256, 384, 384, 256), conv1_padding="convnet", lrn=True), ("fc7", "fc8")),
    # Section 3.2's comparison: "a net with half as many kernels in each convolutional layer trained
    # on one GPU"; its footnote keeps conv5 and the fully connected layers at full size.
    "one_tower": Architecture(1, _convs((48, 128, 192, 192, 256), conv1_padding="convnet", lrn=True), ("fc7", "fc8")),
    # torchvision.models.alexnet ("One weird trick", Krizhevsky 2014): one tower, no LRN, and its
    # classifier drops the inputs of fc6 and fc7 (Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear).
    "torchvision": Architecture(1, _convs((64, 192, 384, 256, 256), conv1_padding=2, lrn=False), ("fc6", "fc7")),
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
# Section 3.3's windows: within each tower's channels, as on the paper's two GPUs, or over all of a
# layer's channels, as Caffe's bvlc_alexnet (norm1, norm2) computes them although its convolutions
# are grouped.
LRN_SPANS = ("tower", "all")
# torchvision.models.alexnet's state-dict prefixes of our layers.
TORCH_NAMES = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3": "features.6",
    "conv4": "features.8",
    "conv5": "features.10",
    "fc6": "classifier.1",
    "fc7": "classifier.4",
    "fc8": "classifier.6",
}


class AlexNet(nn.Module):
    """AlexNet, eight layers, NHWC input of 224 x 224 (227 works too; smaller for quick runs).

    Attributes:
      num_classes: width of fc8.
      variant: a key of ARCHITECTURES ("paper", "one_tower", "torchvision").
      activation: "relu" (section 3.1) or "tanh".
      fc_width: neurons of fc6 and fc7 (4096, section 3.5).
      lrn, lrn_k, lrn_n, lrn_alpha, lrn_beta: section 3.3 (set `lrn=False` to leave it out).
      lrn_span: "tower" (windows within a tower's channels) or "all" (Caffe's); see LRN_SPANS.
      pool_window, pool_stride: section 3.4's overlapping pooling, z = 3, s = 2 (z = s = 2: plain).
      dropout_rate: on fc6 and fc7 outputs (section 4.2; torchvision's variant: on fc6 and fc7 inputs).
      dropout_scaling: "paper" (outputs times 1 - rate at test time) or "inverted" (kept units divided
        by 1 - rate in training), see layers.DROPOUT_SCALINGS; "inverted" unless a config says otherwise.
      init_scheme: a key of INIT_SCHEMES.
      init_bias: the initial bias of the layers that section 5 starts at 1 (conv2, conv4, conv5, fc6,
        fc7) in place of the scheme's value; None keeps the scheme's. Tanh units want 0 there.
      dtype: compute dtype (float32 or bfloat16); parameters stay `param_dtype`, logits float32.
      grouped_conv, pool_gradient, lrn_gradient: implementations with the same numbers (networks/layers.py).
      model_axis: inside `shard_map`, the mesh axis that splits the towers across devices.
      data_axis: inside `shard_map`, the batch axis: dropout masks follow the global example index.

    `train=True` needs a "dropout" RNG. Each layer's activation is sown into "intermediates" as
    `<layer>_out` (fc6's and fc7's as fc7 and fc8 read them: after dropout, or after the paper's
    test-time factor), and the pooled maps as `pool1`, `pool2`, `pool5`.
    """

    LAYERS: ClassVar[tuple[str, ...]] = LAYER_NAMES
    HEAD: ClassVar[tuple[str, ...]] = ("fc6", "fc7", "fc8")
    TORCH_NAMES: ClassVar[dict[str, str]] = TORCH_NAMES

    num_classes: int = 1000
    variant: str = "paper"
    activation: str = "relu"
    fc_width: int = 4096
    lrn: bool = True
    lrn_k: float = 2.0
    lrn_n: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_span: str = "tower"
    pool_window: int = 3
    pool_stride: int = 2
    dropout_rate: float = 0.5
    dropout_scaling: str = "inverted"
    init_scheme: str = "paper"
    init_bias: float | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    grouped_conv: str = "split"
    pool_gradient: str = "custom"
    lrn_gradient: str = "custom"
    model_axis: str | None = None
    data_axis: str | None = None

    @property
    def towers(self) -> int:
        """2 for the paper's network, 1 for the single-tower variants."""
        return ARCHITECTURES[self.variant].towers

    @property
    def dropout_inputs(self) -> tuple[str, ...]:
        """The layers whose inputs dropout acts on (fc7 and fc8 for the paper's network)."""
        return ARCHITECTURES[self.variant].dropout_before

    def setup(self):
        choices = (
            ("variant", ARCHITECTURES),
            ("init_scheme", INIT_SCHEMES),
            ("activation", ACTIVATIONS),
            ("lrn_span", LRN_SPANS),
            ("dropout_scaling", layers.DROPOUT_SCALINGS),
        )
        for field, table in choices:
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
        if self.lrn_span == "all" and devices > 1:
            raise ValueError(
                "lrn_span='all' normalises across the towers: it needs both on one device (parallel.model=1)"
            )
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
        bias_value = bias_value if self.init_bias is None else self.init_bias
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
                    self.towers_here if self.lrn_span == "tower" else 1,
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

    def _dropout(self, x: jax.Array, train: bool, model_axis: str | None) -> jax.Array:
        """Dropout in training; at test time the paper's factor 1 - rate (or nothing, inverted)."""
        if self.dropout_rate == 0:
            return x
        if not train:
            return x * layers.dropout_test_scale(self.dropout_rate, self.dropout_scaling)
        first = lax.axis_index(self.data_axis) * x.shape[0] if self.data_axis else 0
        rng = self.make_rng("dropout")
        return layers.dropout(rng, x, self.dropout_rate, first, model_axis, self.dropout_scaling)

    def classifier(self, maps: jax.Array, train: bool = False) -> jax.Array:
        """fc6 .. fc8 on pool5 maps: float32 logits of all classes.

        pool5 is gathered as maps, before the flatten, so that fc6 reads its inputs in the canonical
        HWC order over all channels whatever the layout (flattened towers would put one tower first).
        Dropout acts on the units of `dropout_inputs`' inputs where they live: on each device's own
        tower's share of fc6 and fc7, or (torchvision's variant, one tower) on the whole pool5.
        """
        act = ACTIVATIONS[self.activation]
        dropped = self.arch.dropout_before
        x = self._both_towers(maps).reshape(maps.shape[0], -1)
        if "fc6" in dropped:
            x = self._dropout(x, train, None)  # every device holds all of pool5
        for name, following in (("fc6", "fc7"), ("fc7", "fc8")):
            x = act(getattr(self, name)(x))
            if following in dropped:
                x = self._dropout(x, train, self.model_axis)
            self.sow("intermediates", f"{name}_out", x)  # as the next layer reads it
            x = self._both_towers(x)
        x = self.fc8(x)
        self.sow("intermediates", "fc8_out", x)
        return self._both_towers(x).astype(jnp.float32)

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        return self.classifier(self.features(images), train)


# The registry's view of this file (networks/__init__.py): the config fields that only AlexNet reads,
# with the values each accepts, how a config builds the module, and what a config must satisfy.
CONFIG_FIELDS = {
    "model.variant": tuple(ARCHITECTURES),
    "model.init_scheme": tuple(INIT_SCHEMES),
    "model.activation": tuple(ACTIVATIONS),
    "model.lrn_span": LRN_SPANS,
    "model.dropout_scaling": layers.DROPOUT_SCALINGS,
}


def build(model_config, implementations: dict[str, str]) -> AlexNet:
    """The AlexNet that a config's `model` section describes."""
    return AlexNet(
        num_classes=model_config.num_classes,
        dropout_rate=model_config.dropout_rate,
        dropout_scaling=model_config.dropout_scaling,
        dtype=jnp.dtype(model_config.dtype),
        variant=model_config.variant,
        activation=model_config.activation,
        fc_width=model_config.fc_width,
        lrn=model_config.lrn,
        lrn_k=model_config.lrn_k,
        lrn_n=model_config.lrn_n,
        lrn_alpha=model_config.lrn_alpha,
        lrn_beta=model_config.lrn_beta,
        lrn_span=model_config.lrn_span,
        pool_window=model_config.pool_window,
        pool_stride=model_config.pool_stride,
        init_scheme=model_config.init_scheme,
        init_bias=model_config.get("init_bias"),
        **implementations,
    )


def check_config(config) -> None:
    """Raises ValueError, naming the field, for a config this network cannot run."""
    model = config.model
    if model.lrn_n < 1 or model.lrn_n % 2 == 0:
        raise ValueError(f"model.lrn_n={model.lrn_n} must be odd and positive: the window is centred on a channel")
    if model.image_size < 64:
        raise ValueError(f"model.image_size={model.image_size} is below 64, the smallest that reaches pool5")
    if config.parallel.model == 2 and ARCHITECTURES[model.variant].towers != 2:
        raise ValueError(f"parallel.model=2 splits the paper's two towers; model.variant={model.variant!r} has one")
    if config.parallel.model == 2 and model.lrn_span == "all" and model.lrn:
        raise ValueError("model.lrn_span='all' normalises across the towers; it needs parallel.model=1")
    if config.parallel.model == 2 and model.num_classes % 2:
        raise ValueError(f"parallel.model=2 splits fc8 in halves: model.num_classes={model.num_classes} must be even")


# Figure 2's neuron counts, and the parameters its layer shapes imply, for the 224-input paper network.
PAPER_NEURONS = {
    "conv1": 253_440,
    "conv2": 186_624,
    "conv3": 64_896,
    "conv4": 64_896,
    "conv5": 43_264,
    "fc6": 4096,
    "fc7": 4096,
    "fc8": 1000,
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
PAPER_TOTAL_PARAMS = 60_965_224


def reference_figures(model: AlexNet, image_size: int) -> dict | None:
    """The paper's figures (Figure 2, section 3.5) for its own network at 224 or 227, 1,000 classes."""
    if (model.variant, model.num_classes, model.fc_width) != ("paper", 1000, 4096) or image_size not in (224, 227):
        return None
    return {
        "source": "paper",
        "columns": {"neurons": PAPER_NEURONS, "params": PAPER_PARAMS},
        "totals": {"params": PAPER_TOTAL_PARAMS},
        "notes": {("conv1", "neurons"): "253,440 = 55 x 48 x 96, a slip in Figure 2."},
    }
