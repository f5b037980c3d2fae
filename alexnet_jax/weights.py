"""Weights files, and the conventions of PyTorch and Caffe: any registered network's tree in and out.

PyTorch and Caffe store convolution kernels OIHW (grouped ones `(out, in/groups, kh, kw)`), dense
kernels `(out, in)`, and flatten the last maps in CHW order before the first dense layer. The
canonical tree (networks.Network) stores kernels HWIO, dense kernels `(in, out)`, and flattens in
HWC order. Every tensor maps one to one; only the first dense layer's rows are permuted. Both
directions are exact (no arithmetic). The layers and their PyTorch names come from the network
(`LAYERS`, `TORCH_NAMES`), never from a list here.

Files (by extension):
  .npz  ours: the canonical tree (`conv1/kernel` ...) with the network's resolved config, its class
        names and its input statistics (`__config__`, `__class_names__`, `__statistics__/mean` ...),
        so that a tool needs nothing else (older files without them still load); or PyTorch-layout
        arrays (`conv1.weight`, or torchvision's `features.0.weight`). No pickle: always safe to read.
  .npy  Caffe's weights in the NumPy dict form that caffe-tensorflow writes, `{layer: {"weights":
        kernel HWIO, "biases": bias}}`, or `{layer: [kernel, bias]}` (the common bvlc_alexnet.npy):
        dense kernels `(in, out)` with rows in HWC order. Caffe's conv1 reads BGR images; its input
        channels are reversed on the way in and out, so that every network here reads RGB. A pickle.
  .pth  a PyTorch state dict (torchvision's `alexnet`, or ours exported). A pickle; needs torch.
Pickles can run arbitrary code when loaded, so `.npy` and `.pth` are read only with
`allow_pickle=True` (`--allow_pickle` on the command line), for files you trust. PyTorch and Caffe
train with inverted dropout, so `.pth` and `.npy` are written in that convention (the kernels after a
dropout layer rescaled when the network uses the paper's, `networks.convert_dropout`).

From the command line, `python -m alexnet_jax.weights SOURCE OUT [--allow_pickle] [--names=layer]
[--config=FILE] [--config.FIELD=VALUE ...]` converts a weights file, or a training workdir's best
checkpoint, to the format OUT's extension names; the network, its input and classes are the
source's own (loading.py), which `--config` and overrides change.
"""

from __future__ import annotations

from alexnet_jax import cli  # first: quiets TensorFlow's start-up before anything imports it

# isort: split
import dataclasses
import io
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import flags

from alexnet_jax import files, networks
from alexnet_jax.networks import alexnet

CONFIG_KEY, CLASS_NAMES_KEY, STATISTICS_PREFIX = "__config__", "__class_names__", "__statistics__/"
LAYOUTS = ("canonical", "torch", "caffe")


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A weights file as read, before it meets a network.

    `layout` "canonical" holds `{layer: {"kernel", "bias"}}`, "torch" a flat state dict, "caffe"
    `{layer: (kernel, bias)}` in the file's own colour order; `config` (a resolved config as a dict),
    `class_names` and `statistics` (`mean`, `pca_scale`, `pca_axes`) are what our .npz files carry.
    """

    path: str
    layout: str
    arrays: dict
    config: dict | None = None
    class_names: list[str] | None = None
    statistics: dict | None = None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """`{"conv1/kernel": shape, ...}` for canonical and Caffe files, the state dict's keys for PyTorch ones."""
        if self.layout == "torch":
            return {key: tuple(np.shape(value)) for key, value in self.arrays.items()}
        return {
            f"{layer}/{leaf}": tuple(np.shape(value))
            for layer, leaves in self.arrays.items()
            for leaf, value in (leaves.items() if isinstance(leaves, dict) else zip(("kernel", "bias"), leaves))
        }


# ------------------------------------------------------------------------------ PyTorch's layout


def _torch_prefix(weights: Mapping[str, Any], layer: str, model) -> str:
    torch_name = model.TORCH_NAMES.get(layer)
    for prefix in (layer, torch_name):
        if prefix and f"{prefix}.weight" in weights:
            return prefix
    expected = f"'{layer}.weight'" + (f" or '{torch_name}.weight'" if torch_name else "")
    raise KeyError(f"no weights for {layer}: expected {expected}; found keys {sorted(weights)[:8]}...")


def from_torch_layout(weights: Mapping[str, Any], model=None) -> dict[str, dict[str, np.ndarray]]:
    """The canonical tree of `model` (default: the paper's AlexNet) from PyTorch-convention arrays.

    Args:
      weights: `<layer>.weight` / `<layer>.bias` for each layer of `model.LAYERS`, or the PyTorch
        names of `model.TORCH_NAMES` (torchvision's `features.N` / `classifier.N`). Values are
        array-likes (a torch tensor works after `.numpy()`).

    Returns:
      `{layer: {"kernel", "bias"}}` as float32 NumPy arrays in the canonical layout.
    """
    model = model or alexnet.AlexNet()
    params, maps_channels = {}, None
    for layer in model.LAYERS:
        prefix = _torch_prefix(weights, layer, model)
        w = np.asarray(weights[f"{prefix}.weight"], dtype=np.float32)
        b = np.asarray(weights[f"{prefix}.bias"], dtype=np.float32)
        if w.ndim == 4:
            kernel, maps_channels = w.transpose(2, 3, 1, 0), w.shape[0]  # OIHW -> HWIO
        elif maps_channels is not None:  # the first dense layer: its rows follow a CHW flatten
            out_features, in_features = w.shape
            side = int(round((in_features // maps_channels) ** 0.5))
            if side * side * maps_channels != in_features:
                raise ValueError(f"{layer} input {in_features} is not a square map of {maps_channels} channels")
            kernel = w.reshape(out_features, maps_channels, side, side).transpose(2, 3, 1, 0)
            kernel, maps_channels = kernel.reshape(in_features, out_features), None
        else:
            kernel = w.T
        params[layer] = {"kernel": np.ascontiguousarray(kernel), "bias": b}
    return params


def to_torch_layout(params: Mapping[str, Mapping[str, Any]], model=None, names: str = "layer") -> dict[str, np.ndarray]:
    """The inverse of `from_torch_layout`: `names` "layer" for `conv1.weight` keys, "torch" (or
    "torchvision") for the network's PyTorch names (`features.0.weight` ...)."""
    model = model or alexnet.AlexNet()
    if names not in ("layer", "torch", "torchvision"):
        raise ValueError(f"names must be 'layer' or 'torch', got {names!r}")
    if names != "layer" and not model.TORCH_NAMES:
        raise ValueError(f"{type(model).__name__} has no PyTorch names; use names='layer'")
    out, maps_channels = {}, None
    for layer in model.LAYERS:
        kernel = np.asarray(params[layer]["kernel"], dtype=np.float32)
        if kernel.ndim == 4:
            w, maps_channels = kernel.transpose(3, 2, 0, 1), kernel.shape[-1]  # HWIO -> OIHW
        elif maps_channels is not None:
            in_features, out_features = kernel.shape
            side = int(round((in_features // maps_channels) ** 0.5))
            hwc = kernel.reshape(side, side, maps_channels, out_features)
            w, maps_channels = hwc.transpose(3, 2, 0, 1).reshape(out_features, in_features), None
        else:
            w = kernel.T
        prefix = layer if names == "layer" else model.TORCH_NAMES[layer]
        out[f"{prefix}.weight"] = np.ascontiguousarray(w)
        out[f"{prefix}.bias"] = np.asarray(params[layer]["bias"], dtype=np.float32)
    return out


# -------------------------------------------------------------------------------- Caffe's layout


def from_caffe_layout(layers: Mapping[str, Any], model=None) -> dict[str, dict[str, np.ndarray]]:
    """The canonical tree from Caffe's NumPy dict form: `{layer: (kernel, bias)}`, `[kernel, bias]` or
    `{"weights": kernel, "biases": bias}` per layer.

    That form already stores kernels HWIO (grouped `(kh, kw, in/2, out)`), dense `(in, out)` and the
    first dense layer in HWC row order, i.e. the canonical layout, except that Caffe's first layer
    reads BGR images (OpenCV's order): its input channels are reversed here, so that the network
    takes RGB.
    """
    model = model or alexnet.AlexNet()
    params = {}
    for layer in model.LAYERS:
        if layer not in layers:
            raise KeyError(f"no weights for {layer} in the Caffe dict (keys: {sorted(layers)})")
        kernel, bias = _caffe_pair(layer, layers[layer])
        params[layer] = {"kernel": _swap_colour_order(layer, kernel, model), "bias": np.asarray(bias, np.float32)}
    return params


def _caffe_pair(layer: str, value) -> tuple[np.ndarray, np.ndarray]:
    """A Caffe layer's (kernel, bias), from [kernel, bias] or {"weights": kernel, "biases": bias}:
    numeric arrays, the kernel of 2 or 4 axes (fc or conv) and the bias of one, else ValueError."""
    if isinstance(value, Mapping):
        if "weights" not in value or "biases" not in value:
            raise KeyError(f"Caffe layer {layer} holds {sorted(value)}, not 'weights' and 'biases'")
        value = value["weights"], value["biases"]
    try:
        kernel, bias = value
        kernel, bias = np.asarray(kernel), np.asarray(bias)
    except (TypeError, ValueError):  # not a pair
        raise ValueError(f"Caffe layer {layer} holds a {type(value).__name__}, not [weights, biases]") from None
    if kernel.dtype.kind not in "fiu" or bias.dtype.kind not in "fiu" or kernel.ndim not in (2, 4) or bias.ndim != 1:
        raise ValueError(
            f"Caffe layer {layer} holds {kernel.dtype}{list(kernel.shape)} and {bias.dtype}{list(bias.shape)}, not a "
            "kernel of 2 or 4 axes and a bias of one"
        )
    return kernel, bias


def to_caffe_layout(params: Mapping[str, Mapping[str, Any]], model=None) -> dict[str, list[np.ndarray]]:
    """The inverse of `from_caffe_layout`, as `{layer: [kernel, bias]}` (the first layer back to BGR input)."""
    model = model or alexnet.AlexNet()
    return {
        layer: [
            _swap_colour_order(layer, params[layer]["kernel"], model),
            np.asarray(params[layer]["bias"], np.float32),
        ]
        for layer in model.LAYERS
    }


def _swap_colour_order(layer: str, kernel, model) -> np.ndarray:
    """The first layer's kernel with its input channels reversed (RGB <-> BGR); other kernels as they are."""
    kernel = np.asarray(kernel, np.float32)
    return kernel[:, :, ::-1].copy() if layer == model.LAYERS[0] else kernel


# ------------------------------------------------------------------------------------------ files


class PickleRefused(ValueError):
    """A weights format that needs unpickling was given without allow_pickle."""


def _refuse_pickle(path: str, what: str) -> None:
    raise PickleRefused(
        f"{path} is {what}, which is a Python pickle: loading a pickle can run arbitrary code. "
        "Pass allow_pickle=True (--allow_pickle) only for files you trust, or convert it to .npz once."
    )


def read(path: str, *, allow_pickle: bool = False) -> WeightsFile:
    """A weights file (.npz, .npy or .pth; see the module docstring) as it is stored."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file at {path}")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            flat = {key: arrays[key] for key in arrays.files}
        config = json.loads(str(flat.pop(CONFIG_KEY))) if CONFIG_KEY in flat else None
        names = [str(name) for name in flat.pop(CLASS_NAMES_KEY)] if CLASS_NAMES_KEY in flat else None
        stats = {k[len(STATISTICS_PREFIX) :]: flat.pop(k) for k in list(flat) if k.startswith(STATISTICS_PREFIX)}
        if not any("/" in key for key in flat):
            return WeightsFile(path, "torch", flat)
        tree: dict[str, dict] = {}
        for key, value in flat.items():
            layer, _, leaf = key.partition("/")
            tree.setdefault(layer, {})[leaf] = value
        return WeightsFile(path, "canonical", tree, config, names, stats or None)
    if extension == ".npy":
        if not allow_pickle:
            _refuse_pickle(path, "a NumPy .npy dict")
        layers = np.load(path, allow_pickle=True, encoding="latin1").item()
        if not isinstance(layers, dict):
            raise ValueError(f"{path} holds a {type(layers).__name__}, not Caffe's {{layer: [kernel, bias]}} dict")
        return WeightsFile(path, "caffe", {layer: _caffe_pair(layer, value) for layer, value in layers.items()})
    if extension in (".pth", ".pt"):
        if not allow_pickle:
            _refuse_pickle(path, "a PyTorch state dict")
        torch = _torch("reading .pth files")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return WeightsFile(path, "torch", {key: value.float().numpy() for key, value in state.items()})
    raise ValueError(f"unknown weights format {extension!r} for {path}: use .npz, .npy or .pth")


def _torch(what: str):
    try:
        import torch
    except ImportError:
        raise ImportError(f"{what} needs PyTorch: pip install torch (or convert to .npz elsewhere)") from None
    return torch


def canonical(weights: WeightsFile, model, image_size: int) -> dict[str, dict[str, np.ndarray]]:
    """The file's parameters as `model`'s canonical tree, float32, every shape checked against `model`'s
    at `image_size` x `image_size` inputs."""
    if weights.layout == "torch":
        params = from_torch_layout(weights.arrays, model)
    elif weights.layout == "caffe":
        params = from_caffe_layout(weights.arrays, model)
    else:
        missing = [layer for layer in model.LAYERS if layer not in weights.arrays]
        if missing:
            raise KeyError(f"{weights.path} has no {', '.join(missing)} (it holds {', '.join(weights.arrays)})")
        params = {
            layer: {leaf: np.asarray(weights.arrays[layer][leaf], np.float32) for leaf in ("kernel", "bias")}
            for layer in model.LAYERS
        }
    expected = networks.param_shapes(model, image_size)
    wrong = [
        f"{layer}/{leaf} {params[layer][leaf].shape} in the file, {expected[layer][leaf].shape} in the network"
        for layer in model.LAYERS
        for leaf in ("kernel", "bias")
        if params[layer][leaf].shape != expected[layer][leaf].shape
    ]
    if wrong:
        raise ValueError(f"{weights.path} does not fit the configured network: {'; '.join(wrong[:3])}")
    return params


def save(
    params: Mapping[str, Mapping[str, Any]],
    path: str,
    *,
    model=None,
    config=None,
    class_names=None,
    statistics: Mapping[str, np.ndarray] | None = None,
    names: str = "torch",
) -> None:
    """Writes `params` of `model` (default: the paper's AlexNet) as .npz (canonical, with `config`,
    `class_names` and `statistics` when given), .npy (Caffe's form) or .pth (a PyTorch state dict
    with `names`). .npy and .pth get inverted dropout (module docstring)."""
    model = model or alexnet.AlexNet()
    extension = os.path.splitext(path)[1].lower()
    if extension == ".npz":
        flat = {
            f"{layer}/{leaf}": np.asarray(params[layer][leaf]) for layer in model.LAYERS for leaf in ("kernel", "bias")
        }
        if config is not None:
            resolved = config if isinstance(config, dict) else json.loads(config.to_json_best_effort())
            flat[CONFIG_KEY] = np.array(json.dumps(resolved))
        if class_names is not None:
            flat[CLASS_NAMES_KEY] = np.array([str(name) for name in class_names])
        flat.update({STATISTICS_PREFIX + key: np.asarray(value) for key, value in (statistics or {}).items()})
        buffer = io.BytesIO()
        np.savez(buffer, **flat)
        files.write_atomically(path, lambda f: f.write(buffer.getvalue()), binary=True)
        return
    if extension not in (".npy", ".pth", ".pt"):
        raise ValueError(f"unknown weights format {extension!r} for {path}: use .npz, .npy or .pth")
    inverted = model.clone(dropout_scaling="inverted")
    params = networks.convert_dropout(dict(params), inverted, model.dropout_scaling, model.dropout_rate)
    if extension == ".npy":
        np.save(path, np.array(to_caffe_layout(params, model), dtype=object), allow_pickle=True)
    else:
        torch = _torch("writing .pth files")
        state = {
            key: torch.from_numpy(np.array(value)) for key, value in to_torch_layout(params, model, names=names).items()
        }
        torch.save(state, path)


def load(path: str, *, allow_pickle: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """The canonical tree of a weights file, for the network the file itself describes (loading.py)."""
    from alexnet_jax import loading  # loading reads weights files with this module

    return loading.load_network(weights=path, allow_pickle=allow_pickle).params


def convert(source: str, out: str, *, allow_pickle: bool = False, names: str = "torch", config=None) -> dict:
    """Writes the weights of `source` (a weights file, or a training workdir's best checkpoint) to `out`,
    in the format its extension names, with the network's config, class names and statistics in an
    .npz; `config` replaces the source's own. Returns the canonical tree as written to .npz."""
    from alexnet_jax import loading

    network = loading.load_network(
        workdir=source if os.path.isdir(source) else None,
        weights=None if os.path.isdir(source) else source,
        config=config,
        allow_pickle=allow_pickle,
    )
    network.save(out, names=names)
    return network.params


def main(argv, source):
    if len(argv) != 3:
        raise cli.UserError("give SOURCE (weights file or workdir) and OUT (.npz, .npy or .pth)")
    f = source.flag_values
    network = source.network()
    network.save(argv[2], names=f.names)
    print(
        f"wrote {argv[2]}: {len(network.params)} layers, {networks.count_params(network.params):,} parameters "
        f"({network.describe()})"
    )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_enum(
        "names",
        "torch",
        ["torch", "torchvision", "layer"],
        ".pth keys: the network's PyTorch names (torchvision's features.0.weight ...) or ours (conv1.weight ...).",
        flag_values=flag_values,
    )


def run_command_line(argv: list[str]) -> int:
    """`python -m alexnet_jax.weights ARGV` in this process; returns the exit code."""
    from alexnet_jax import loading

    define = lambda source: define_flags(source.flag_values)  # noqa: E731
    return loading.run_tool(define, main, ["alexnet_jax.weights", *argv], positional_source=True)


if __name__ == "__main__":
    from alexnet_jax import loading

    _SOURCE = loading.NetworkSource(positional_source=True)
    define_flags(_SOURCE.flag_values)
    _SOURCE.run(lambda argv: main(argv, _SOURCE), user_errors=(KeyError, ImportError))
