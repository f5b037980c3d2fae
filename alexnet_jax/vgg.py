"""VGG-16 (Simonyan and Zisserman 2014, configuration D), the second network of the registry.

Thirteen 3 x 3 convolutions (stride 1, padding 1, ReLU) in five blocks, each block closed by a
2 x 2 max-pool of stride 2, then fc6 and fc7 (4096, ReLU, dropout 0.5) and fc8: 138,357,544
parameters for 1000 classes and 224 x 224 inputs. Same parameter conventions as AlexNet (HWIO
kernels, dense `(in, out)`, HWC flatten before fc6), layer names as in the released Caffe model
(`conv1_1` .. `conv5_3`, `fc6` .. `fc8`). One tower: it runs on meshes with `model` = 1.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from alexnet_jax.model import _Conv, _Dense, mesh_dropout

# Configuration D: output channels of each convolution, block by block.
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
CONV_NAMES = tuple(f"conv{b + 1}_{i + 1}" for b, block in enumerate(BLOCKS) for i in range(len(block)))
LAYER_NAMES = CONV_NAMES + ("fc6", "fc7", "fc8")


class VGG16(nn.Module):
    """VGG-16, NHWC input (224 x 224, or any multiple of 32 down to 32).

    Attributes mirror AlexNet's where they apply; `model_axis` and `data_axis` are set inside
    `shard_map` (the model axis must have size 1: VGG has no towers).
    Weights ~ N(0, 0.01^2) and biases 0, the VGG paper's random initialisation.
    """

    num_classes: int = 1000
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.01
    model_axis: str | None = None
    data_axis: str | None = None

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, first_example=None) -> jax.Array:
        if self.model_axis and lax.axis_size(self.model_axis) != 1:
            raise ValueError("VGG-16 has one tower; it cannot be split over the model axis (use parallel.model=1)")
        if images.shape[1] % 32 or images.shape[2] % 32:
            raise ValueError(f"VGG-16 needs an input side divisible by 32 (five 2x2 pools), got {images.shape[1:3]}")
        layer = dict(
            kernel_init=nn.initializers.normal(stddev=self.init_std),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = images
        names = iter(CONV_NAMES)
        for block, widths in enumerate(BLOCKS, start=1):
            for width in widths:
                name = next(names)
                x = nn.relu(_Conv(features=width, kernel_size=3, padding=((1, 1), (1, 1)), name=name, **layer)(x))
                self.sow("intermediates", f"{name}_out", x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            self.sow("intermediates", f"pool{block}", x)
        x = x.reshape(x.shape[0], -1)
        for name, width in (("fc6", 4096), ("fc7", 4096), ("fc8", self.num_classes)):
            x = _Dense(features=width, name=name, **layer)(x)
            if name != "fc8":
                x = nn.relu(x)
                if train:
                    x = mesh_dropout(
                        self.make_rng("dropout"), x, self.dropout_rate, self.model_axis, self.data_axis, first_example
                    )
            self.sow("intermediates", f"{name}_out", x)
        return x.astype(jnp.float32)
