"""The networks, and the one registry that the rest of the package asks about them.

    layers.py    the layers: convolutions in the canonical kernel layout, LRN, overlapping pooling, dropout
    alexnet.py   Figure 2's network and its variants (the paper's two towers, one_tower, torchvision)
    vgg.py       VGG-16, configuration D

A network is a Flax module that offers the `Network` interface below; `REGISTRY` maps each
`config.model.name` to the `Entry` that builds it from a config and checks the config's fields for
it. Adding a network is one file that defines the module and its entry, and one line in
`REGISTRY` (docs/network.md): the steps, the training loop, the summary, the weights converter,
the fine-tuning, the tools and the config checks ask the module and its entry, never the network's
name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax import programs
from alexnet_jax.networks import alexnet, layers, vgg


class Network(Protocol):
    """What a network offers to the steps, the summary, the weights converter and the figures.

    The parameter tree is `{layer: {"kernel", "bias"}}` for each name of `LAYERS`, input to output,
    with conv kernels HWIO (grouped ones `(kh, kw, in/groups, out)`), dense kernels `(in, out)`,
    and the flatten before the first dense layer in HWC order. It is the same on every mesh.
    """

    LAYERS: ClassVar[tuple[str, ...]]  # parameter tree keys, input to output
    HEAD: ClassVar[tuple[str, ...]]  # the layers `classifier` runs (the rest are `features`')
    TORCH_NAMES: ClassVar[dict[str, str]]  # layer -> its PyTorch state-dict prefix ({} if none is known)
    num_classes: int
    dropout_rate: float
    dropout_scaling: str  # layers.DROPOUT_SCALINGS: where the factor 1 / (1 - rate) goes
    dtype: Any
    model_axis: str | None  # inside shard_map: the axis that splits the towers (one per device)
    data_axis: str | None  # inside shard_map: the batch axis (dropout masks follow the global example)

    @property
    def towers(self) -> int:
        """Channel groups of the first layers (2 for the paper's network); `model_axis` may split them."""

    @property
    def dropout_inputs(self) -> tuple[str, ...]:
        """The layers whose inputs dropout acts on (() without dropout): `convert_dropout` scales their kernels."""

    def features(self, images: jax.Array) -> jax.Array:
        """Input images (N, H, W, 3) -> the maps the head reads (this device's towers' share)."""

    def classifier(self, maps: jax.Array, train: bool = False) -> jax.Array:
        """`features`' maps -> float32 logits of every class; `train=True` draws dropout from the "dropout" RNG.

        Sows each layer's output as `<layer>_out` into "intermediates" (the figures read fc7_out)."""

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """`classifier(features(images), train)`."""

    def clone(self, **updates) -> Network:
        """Flax's copy with some fields changed (`model_axis`, `data_axis` inside shard_map)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """How a config's `model` section becomes a network, and which of its values can work.

    `build(model_config, implementations)` returns the module, with `implementations` (grouped_conv,
    pool_gradient, lrn_gradient) already resolved for the backend. `fields` lists the config fields
    of this network with the values each accepts; `check(config)` raises ValueError, naming the
    field, for a whole config this network cannot run (image size, mesh). `reference(model,
    image_size)`, where given, returns published per-layer figures that the summary prints beside
    the module's own (see `summary.layer_table` for the form), or None where none apply.
    """

    build: Callable[[Any, dict[str, str]], Network]
    fields: dict[str, tuple]
    check: Callable[[Any], None]
    reference: Callable[[Network, int], dict | None] | None = None


REGISTRY: dict[str, Entry] = {
    "alexnet": Entry(alexnet.build, alexnet.CONFIG_FIELDS, alexnet.check_config, alexnet.reference_figures),
    "vgg16": Entry(vgg.build, vgg.CONFIG_FIELDS, vgg.check_config, vgg.reference_figures),
}


def entry(name: str) -> Entry:
    """The registry entry of `model.name`, with an error that lists the names there are."""
    if name not in REGISTRY:
        raise ValueError(f"model.name={name!r} is not one of {', '.join(map(repr, REGISTRY))}")
    return REGISTRY[name]


# What "auto" means per backend, as measured (BENCHMARKS.md, "Implementation choices"). On XLA:CPU
# the hand-written pieces and the split convolutions are 2-7x faster each. On an H200 (bfloat16,
# batch 512) `feature_group` trained 17 % slower than `split`, and select-and-scatter pooling and
# autodiff LRN were within 2 % of the hand-written ones: no reason to change.
AUTO_CHOICES = {
    "cpu": {"grouped_conv": "split", "pool_gradient": "custom", "lrn_gradient": "custom"},
    "gpu": {"grouped_conv": "split", "pool_gradient": "custom", "lrn_gradient": "custom"},
}
IMPLEMENTATION_FIELDS = {
    "model.grouped_conv": ("auto",) + layers.GROUPED_CONV,
    "model.pool_gradient": ("auto",) + layers.POOL_GRADIENTS,
    "model.lrn_gradient": ("auto",) + layers.LRN_GRADIENTS,
}


def implementation_choices(model_config, backend: str | None = None) -> dict[str, str]:
    """The config's grouped_conv, pool_gradient and lrn_gradient, "auto" replaced for `backend`."""
    table = AUTO_CHOICES.get(backend or jax.default_backend(), AUTO_CHOICES["gpu"])
    return {key: table[key] if model_config[key] == "auto" else model_config[key] for key in table}


def from_config(model_config) -> Network:
    """The module that a config's `model` section describes, each "auto" implementation resolved
    for this backend (`implementation_choices`)."""
    return entry(model_config.name).build(model_config, implementation_choices(model_config))


# An initialisation is compiled for one call, and its program is mostly the random-number generator,
# on which LLVM's default optimisation level (2) spends seconds for nothing: at level 1 the same bits
# come out as fast, and the paper's network compiles in 1.4 s instead of 2.4 s on a 2-core CPU (a
# fresh training state, with its momentum, in 2.5 s instead of 3.5 s): every run's, tool's and
# test's start-up. Passed to `jax.jit` as `compiler_options`.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def initialiser(model: nn.Module, image_size: int) -> Callable[[jax.Array], dict]:
    """`key -> the canonical parameter tree`, for tracing inside another function (`init_params`
    compiles it on its own, with `INIT_COMPILER_OPTIONS`, which only a top-level jit takes)."""
    dummy = jnp.zeros((1, image_size, image_size, 3), model.dtype)
    return lambda key: model.init({"params": key}, dummy)["params"]


@programs.reused
def _compiled_initialiser(model: nn.Module, image_size: int) -> Callable[[jax.Array], dict]:
    return jax.jit(initialiser(model, image_size), compiler_options=INIT_COMPILER_OPTIONS)


def init_params(model: nn.Module, rng: jax.Array, image_size: int) -> dict:
    """The canonical parameter tree, initialised as the model specifies."""
    return _compiled_initialiser(model, image_size)(rng)


def param_shapes(model: nn.Module, image_size: int) -> dict:
    """`init_params`' tree of `jax.ShapeDtypeStruct`, without allocating anything."""
    return jax.eval_shape(initialiser(model, image_size), jax.random.key(0))


def count_params(tree: Any) -> int:
    """Number of scalars in a parameter tree (of arrays or shape structs)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def convert_dropout(params: dict, model: Network, source_scaling: str, source_rate: float) -> dict:
    """`params` trained under (`source_scaling`, `source_rate`) made to compute the same test-time
    function under `model`'s own dropout scaling and rate.

    At test time a dropout layer's output is multiplied by `layers.dropout_test_scale` (1 - rate for
    the paper's scaling, 1 for the inverted one), and only the kernel of the layer that reads it
    sees that factor: it is multiplied by source factor / target factor. Biases and every other
    layer are unchanged; the same scaling and rate change nothing.
    """
    factor = layers.dropout_test_scale(source_rate, source_scaling) / layers.dropout_test_scale(
        model.dropout_rate, model.dropout_scaling
    )
    if factor == 1.0:
        return params
    converted = dict(params)
    for name in (name for name in model.dropout_inputs if name in params):
        converted[name] = {**params[name], "kernel": params[name]["kernel"] * factor}
    return converted
