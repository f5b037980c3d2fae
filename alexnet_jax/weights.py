"""Conversion between the canonical parameter tree and PyTorch/Caffe weight conventions, and files.

PyTorch and Caffe store convolution kernels OIHW (grouped ones `(out, in/groups, kh, kw)`), dense
kernels `(out, in)`, and flatten pool5 in CHW order before fc6. The canonical tree stores kernels
HWIO, dense kernels `(in, out)`, and flattens pool5 in HWC order (NHWC activations). Every tensor
maps one to one; only fc6's rows are permuted. Both directions are exact (no arithmetic).

Files (by extension):
  .npz  canonical tree, keys `conv1/kernel` ...; or PyTorch-layout arrays (`conv1.weight` or
        torchvision's `features.0.weight`). No pickle: always safe to read.
  .npy  Caffe's bvlc_alexnet in its common NumPy form (as caffe-tensorflow writes it): a dict
        `{layer: [kernel HWIO, bias]}`, fc kernels `(in, out)`, fc6 rows in HWC order. A pickle.
  .pth  a PyTorch state dict (torchvision's `alexnet` or ours exported). A pickle; needs torch.
Pickles can run arbitrary code when loaded, so `.npy` and `.pth` are read only with
`allow_pickle=True` (`--allow_pickle` on the command line), for files you trust.

From the command line, `python -m alexnet_jax.weights SOURCE OUT [--allow_pickle] [--names=layer]`
converts a weights file, or a training workdir's best checkpoint, to the format OUT's extension names.

Caffe's bvlc_alexnet is the paper's two-tower network trained with LRN k = 1 and alpha = 1e-4 / 5
(Caffe divides alpha by n): use `--config.model.lrn_k=1 --config.model.lrn_alpha=2e-5` with it.
torchvision's weights need `--config.model.variant=torchvision`.
"""

from __future__ import annotations

from alexnet_jax import cli  # first: quiets TensorFlow's start-up before anything imports it

# isort: split
import os
from collections.abc import Mapping

import jax
import numpy as np
from absl import flags

from alexnet_jax import workdir as workdir_lib
from alexnet_jax.networks import count_params
from alexnet_jax.networks.alexnet import LAYER_NAMES

# torchvision.models.alexnet state-dict prefixes of our layers.
TORCHVISION_NAMES = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3": "features.6",
    "conv4": "features.8",
    "conv5": "features.10",
    "fc6": "classifier.1",
    "fc7": "classifier.4",
    "fc8": "classifier.6",
}


def _torch_prefix(weights: Mapping[str, np.ndarray], layer: str) -> str:
    if f"{layer}.weight" in weights:
        return layer
    if f"{TORCHVISION_NAMES[layer]}.weight" in weights:
        return TORCHVISION_NAMES[layer]
    raise KeyError(
        f"no weights for {layer}: expected '{layer}.weight' or '{TORCHVISION_NAMES[layer]}.weight'; "
        f"found keys {sorted(weights)[:8]}..."
    )


def from_torch_layout(weights: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Canonical tree from PyTorch-convention arrays.

    Args:
      weights: `<layer>.weight` / `<layer>.bias` with layer in `conv1`..`fc8` (Caffe's names), or
        torchvision's `features.N` / `classifier.N` keys. Values are array-likes (a torch tensor
        works after `.numpy()`).

    Returns:
      `{layer: {"kernel", "bias"}}` as float32 NumPy arrays in the canonical layout.
    """
    params = {}
    pool5_channels = None
    for layer in LAYER_NAMES:
        prefix = _torch_prefix(weights, layer)
        w = np.asarray(weights[f"{prefix}.weight"], dtype=np.float32)
        b = np.asarray(weights[f"{prefix}.bias"], dtype=np.float32)
        if w.ndim == 4:
            kernel = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
            pool5_channels = w.shape[0]
        elif layer == "fc6":
            out_features, in_features = w.shape
            hw = in_features // pool5_channels
            side = int(round(hw**0.5))
            if side * side * pool5_channels != in_features:
                raise ValueError(f"fc6 input {in_features} is not a square map of {pool5_channels} channels")
            chw = w.reshape(out_features, pool5_channels, side, side)
            kernel = chw.transpose(2, 3, 1, 0).reshape(in_features, out_features)
        else:
            kernel = w.T
        params[layer] = {"kernel": np.ascontiguousarray(kernel), "bias": b}
    return params


def to_torch_layout(params: Mapping[str, Mapping[str, np.ndarray]], names: str = "layer") -> dict[str, np.ndarray]:
    """The inverse of `from_torch_layout`.

    Args:
      params: canonical tree (JAX or NumPy arrays).
      names: "layer" for `conv1.weight` keys, "torchvision" for `features.0.weight` keys.
    """
    if names not in ("layer", "torchvision"):
        raise ValueError(f"names must be 'layer' or 'torchvision', got {names!r}")
    out = {}
    for layer in LAYER_NAMES:
        kernel = np.asarray(params[layer]["kernel"], dtype=np.float32)
        if kernel.ndim == 4:
            w = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            pool5_channels = kernel.shape[-1]
        elif layer == "fc6":
            in_features, out_features = kernel.shape
            side = int(round((in_features // pool5_channels) ** 0.5))
            hwc = kernel.reshape(side, side, pool5_channels, out_features)
            w = hwc.transpose(3, 2, 0, 1).reshape(out_features, in_features)
        else:
            w = kernel.T
        prefix = layer if names == "layer" else TORCHVISION_NAMES[layer]
        out[f"{prefix}.weight"] = np.ascontiguousarray(w)
        out[f"{prefix}.bias"] = np.asarray(params[layer]["bias"], dtype=np.float32)
    return out


class PickleRefused(ValueError):
    """A weights format that needs unpickling was given without allow_pickle."""


def _refuse_pickle(path: str, what: str) -> None:
    raise PickleRefused(
        f"{path} is {what}, which is a Python pickle: loading a pickle can run arbitrary code. "
        "Pass allow_pickle=True (--allow_pickle) only for files you trust, or convert it to .npz once."
    )


def from_caffe_layout(layers: Mapping[str, object]) -> dict[str, dict[str, np.ndarray]]:
    """Canonical tree from the common NumPy form of Caffe weights: `{layer: [kernel, bias]}`.

    That form already stores kernels HWIO (grouped `(kh, kw, in/2, out)`), dense `(in, out)` and
    fc6 in HWC row order, i.e. the canonical layout, except that Caffe's conv1 reads BGR images
    (OpenCV's order): its input channels are reversed here, so that the network takes RGB.
    """
    params = {}
    for layer in LAYER_NAMES:
        if layer not in layers:
            raise KeyError(f"no weights for {layer} in the Caffe dict (keys: {sorted(layers)})")
        kernel, bias = layers[layer]
        params[layer] = {"kernel": _swap_colour_order(layer, kernel), "bias": np.asarray(bias, np.float32)}
    return params


def to_caffe_layout(params: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """The inverse of `from_caffe_layout` (conv1 back to BGR input)."""
    return {
        layer: [_swap_colour_order(layer, params[layer]["kernel"]), np.asarray(params[layer]["bias"], np.float32)]
        for layer in LAYER_NAMES
    }


def _swap_colour_order(layer: str, kernel) -> np.ndarray:
    """conv1's kernel with its input channels reversed (RGB <-> BGR); other kernels as they are."""
    kernel = np.asarray(kernel, np.float32)
    return kernel[:, :, ::-1].copy() if layer == "conv1" else kernel


def load(path: str, *, allow_pickle: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """A canonical tree from a weights file (.npz, .npy or .pth; see the module docstring)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file at {path}")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            flat = {key: arrays[key] for key in arrays.files}
        if any("/" in key for key in flat):
            return {layer: {leaf: flat[f"{layer}/{leaf}"] for leaf in ("kernel", "bias")} for layer in LAYER_NAMES}
        return from_torch_layout(flat)
    if extension == ".npy":
        if not allow_pickle:
            _refuse_pickle(path, "a NumPy .npy dict")
        return from_caffe_layout(np.load(path, allow_pickle=True, encoding="latin1").item())
    if extension in (".pth", ".pt"):
        if not allow_pickle:
            _refuse_pickle(path, "a PyTorch state dict")
        try:
            import torch
        except ImportError:
            raise ImportError(
                "reading .pth files needs PyTorch: pip install torch (or convert to .npz elsewhere)"
            ) from None
        state = torch.load(path, map_location="cpu", weights_only=True)
        return from_torch_layout({key: value.numpy() for key, value in state.items()})
    raise ValueError(f"unknown weights format {extension!r} for {path}: use .npz, .npy or .pth")


def save(params: Mapping[str, Mapping[str, np.ndarray]], path: str, *, names: str = "torchvision") -> None:
    """Writes `params` as .npz (canonical), .npy (Caffe form) or .pth (PyTorch state dict, `names`)."""
    extension = os.path.splitext(path)[1].lower()
    if extension == ".npz":
        flat = {
            f"{layer}/{leaf}": np.asarray(params[layer][leaf]) for layer in LAYER_NAMES for leaf in ("kernel", "bias")
        }
        np.savez(path, **flat)
    elif extension == ".npy":
        np.save(path, np.array(to_caffe_layout(params), dtype=object), allow_pickle=True)
    elif extension in (".pth", ".pt"):
        try:
            import torch
        except ImportError:
            raise ImportError("writing .pth files needs PyTorch: pip install torch") from None
        state = {key: torch.from_numpy(value) for key, value in to_torch_layout(params, names=names).items()}
        torch.save(state, path)
    else:
        raise ValueError(f"unknown weights format {extension!r} for {path}: use .npz, .npy or .pth")


def convert(source: str, out: str, *, allow_pickle: bool = False, names: str = "torchvision") -> dict:
    """Writes the weights of `source` (a weights file, or a training workdir's best checkpoint) to
    `out`, in the format its extension names; returns the canonical tree."""
    if os.path.isdir(source):
        config = cli.load_config(os.path.join(source, workdir_lib.CONFIG_FILE))
        params = jax.tree.map(np.asarray, workdir_lib.restore_params(source, config, "best")[0])
    else:
        params = load(source, allow_pickle=allow_pickle)
    save(params, out, names=names)
    return params


def main(argv):
    if len(argv) != 3:
        raise cli.UserError("give SOURCE (weights file or workdir) and OUT (.npz, .npy or .pth)")
    params = convert(argv[1], argv[2], allow_pickle=flags.FLAGS.allow_pickle, names=flags.FLAGS.names)
    print(f"wrote {argv[2]}: {len(params)} layers, {count_params(params):,} parameters")


if __name__ == "__main__":
    flags.DEFINE_bool("allow_pickle", False, "Allow reading pickle-based files (.npy, .pth): only ones you trust.")
    flags.DEFINE_enum(
        "names",
        "torchvision",
        ["torchvision", "layer"],
        ".pth keys: torchvision's (features.0.weight ...) or ours (conv1.weight ...).",
    )
    cli.run(main, user_errors=(KeyError, ImportError))
