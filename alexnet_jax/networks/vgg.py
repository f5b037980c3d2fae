"""VGG-16 (Simonyan and Zisserman 2014, configuration D), the second network of the registry.

Thirteen 3 x 3 convolutions (stride 1, padding 1, ReLU) in five blocks, each block closed by a
2 x 2 max-pool of stride 2, then fc6 and fc7 (4096, ReLU, dropout 0.5) and fc8: 138,357,544
parameters for 1000 classes and 224 x 224 inputs. Same parameter conventions as AlexNet (HWIO
kernels, dense `(in, out)`, HWC flatten before fc6), layer names as in the released Caffe model
(`conv1_1` .. `conv5_3`, `fc6` .. `fc8`). One tower: it runs on meshes with `model` = 1.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from alexnet_jax.networks import layers

# Configuration D: output channels of each convolution, block by block.
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
CONV_NAMES = tuple(f"conv{b + 1}_{i + 1}" for b, block in enumerate(BLOCKS) for i in range(len(block)))
LAYER_NAMES = CONV_NAMES + ("fc6", "fc7", "fc8")
# torchvision.models.vgg16's state-dict prefixes of our layers (ReLUs and pools take the other indices).
_TORCH_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TORCH_NAMES = {
    **{name: f"features.{index}" for name, index in zip(CONV_NAMES, _TORCH_CONV_INDICES)},
    "fc6": "classifier.0",
    "fc7": "classifier.3",
    "fc8": "classifier.6",
}


class VGG16(nn.Module):
    """VGG-16, NHWC input (224 x 224, or any multiple of 32 down to 32).

    Attributes mirror AlexNet's where they apply; `model_axis` and `data_axis` are set inside
    `shard_map` (the model axis must have size 1: VGG has no towers).
    Weights ~ N(0, 0.01^2) and biases 0, the VGG paper's random initialisation. Dropout on the
    outputs of fc6 and fc7, scaled as `dropout_scaling` says (networks/layers.py, DROPOUT_SCALINGS).
    """

    LAYERS: ClassVar[tuple[str, ...]] = LAYER_NAMES
    HEAD: ClassVar[tuple[str, ...]] = ("fc6", "fc7", "fc8")
    TORCH_NAMES: ClassVar[dict[str, str]] = TORCH_NAMES
    towers: ClassVar[int] = 1
    dropout_inputs: ClassVar[tuple[str, ...]] = ("fc7", "fc8")

    num_classes: int = 1000
    dropout_rate: float = 0.5
    dropout_scaling: str = "inverted"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.01
    pool_gradient: str = "custom"
    model_axis: str | None = None
    data_axis: str | None = None

    def setup(self):
        if self.model_axis and lax.axis_size(self.model_axis) != 1:
            raise ValueError("VGG-16 has one tower; it cannot be split over the model axis (use parallel.model=1)")
        args = dict(
            kernel_init=nn.initializers.normal(stddev=self.init_std),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        widths = [width for block in BLOCKS for width in block]
        for name, width in zip(CONV_NAMES, widths):
            setattr(self, name, layers.Conv(width, kernel_size=3, padding=((1, 1), (1, 1)), **args))
        for name, width in (("fc6", 4096), ("fc7", 4096), ("fc8", self.num_classes)):
            setattr(self, name, layers.Dense(width, **args))

    def features(self, images: jax.Array) -> jax.Array:
        """conv1_1 .. pool5."""
        if images.shape[1] % 32 or images.shape[2] % 32:
            raise ValueError(f"VGG-16 needs an input side divisible by 32 (five 2x2 pools), got {images.shape[1:3]}")
        x = images
        names = iter(CONV_NAMES)
        for block, widths in enumerate(BLOCKS, start=1):
            for _ in widths:
                name = next(names)
                x = nn.relu(getattr(self, name)(x))
                self.sow("intermediates", f"{name}_out", x)
            x = layers.max_pool(x, 2, 2, self.pool_gradient)
            self.sow("intermediates", f"pool{block}", x)
        return x

    def classifier(self, maps: jax.Array, train: bool = False) -> jax.Array:
        """fc6 .. fc8: float32 logits."""
        x = maps.reshape(maps.shape[0], -1)
        for name in ("fc6", "fc7"):
            x = nn.relu(getattr(self, name)(x))
            if self.dropout_rate > 0 and train:
                first = lax.axis_index(self.data_axis) * x.shape[0] if self.data_axis else 0
                rng = self.make_rng("dropout")
                x = layers.dropout(rng, x, self.dropout_rate, first, None, self.dropout_scaling)
            elif self.dropout_rate > 0:
                x = x * layers.dropout_test_scale(self.dropout_rate, self.dropout_scaling)
            self.sow("intermediates", f"{name}_out", x)
        x = self.fc8(x)
        self.sow("intermediates", "fc8_out", x)
        return x.astype(jnp.float32)

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        return self.classifier(self.features(images), train)


# The registry's view of this file (networks/__init__.py).
CONFIG_FIELDS: dict[str, tuple] = {"model.dropout_scaling": layers.DROPOUT_SCALINGS}


def build(model_config, implementations: dict[str, str]) -> VGG16:
    """The VGG-16 that a config's `model` section describes (only `pool_gradient` of the implementations applies)."""
    return VGG16(
        num_classes=model_config.num_classes,
        dropout_rate=model_config.dropout_rate,
        dropout_scaling=model_config.dropout_scaling,
        dtype=jnp.dtype(model_config.dtype),
        pool_gradient=implementations["pool_gradient"],
    )


def check_config(config) -> None:
    """Raises ValueError, naming the field, for a config VGG-16 cannot run."""
    if config.model.image_size % 32:
        raise ValueError(f"model.image_size={config.model.image_size}: VGG-16 needs a multiple of 32")
    if config.parallel.model != 1:
        raise ValueError("parallel.model must be 1 for VGG-16, which has no towers")


# The VGG-16 table of the CS231n course notes (cs231n.github.io/convolutional-networks), row by row:
# output shape and weights (its "params", biases not counted), and its total memory of "24M" values.
CS231N_SHAPES = {
    **{f"conv1_{i}": (224, 224, 64) for i in (1, 2)},
    "pool1": (112, 112, 64),
    **{f"conv2_{i}": (112, 112, 128) for i in (1, 2)},
    "pool2": (56, 56, 128),
    **{f"conv3_{i}": (56, 56, 256) for i in (1, 2, 3)},
    "pool3": (28, 28, 256),
    **{f"conv4_{i}": (28, 28, 512) for i in (1, 2, 3)},
    "pool4": (14, 14, 512),
    **{f"conv5_{i}": (14, 14, 512) for i in (1, 2, 3)},
    "pool5": (7, 7, 512),
    "fc6": (4096,),
    "fc7": (4096,),
    "fc8": (1000,),
}
CS231N_WEIGHTS = {
    "conv1_1": 3 * 3 * 3 * 64,
    "conv1_2": 3 * 3 * 64 * 64,
    "conv2_1": 3 * 3 * 64 * 128,
    "conv2_2": 3 * 3 * 128 * 128,
    "conv3_1": 3 * 3 * 128 * 256,
    **{f"conv3_{i}": 3 * 3 * 256 * 256 for i in (2, 3)},
    "conv4_1": 3 * 3 * 256 * 512,
    **{f"conv4_{i}": 3 * 3 * 512 * 512 for i in (2, 3)},
    **{f"conv5_{i}": 3 * 3 * 512 * 512 for i in (1, 2, 3)},
    "fc6": 7 * 7 * 512 * 4096,
    "fc7": 4096 * 4096,
    "fc8": 4096 * 1000,
}


def reference_figures(model: VGG16, image_size: int) -> dict | None:
    """The CS231n notes' VGG-16 table, for 224 x 224 inputs and 1,000 classes."""
    if image_size != 224 or model.num_classes != 1000:
        return None
    return {
        "source": "CS231n",
        "columns": {"output_shape": {k: list(v) for k, v in CS231N_SHAPES.items()}, "weights": CS231N_WEIGHTS},
        "totals": {"values": 24_000_000},
        "notes": {
            ("total", "values"): "The notes print about 24M values (96 MB); their own per-layer figures, as "
            "above, add up to the total here: an arithmetic slip in the notes."
        },
    }
