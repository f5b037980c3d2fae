"""Conversion between the canonical parameter tree and PyTorch/Caffe weight conventions.

PyTorch and Caffe store convolution kernels OIHW (grouped ones `(out, in/groups, kh, kw)`), dense
kernels `(out, in)`, and flatten pool5 in CHW order before fc6. The canonical tree stores kernels
HWIO, dense kernels `(in, out)`, and flattens pool5 in HWC order (NHWC activations). Every tensor
maps one to one; only fc6's rows are permuted. Both directions are exact (no arithmetic).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from alexnet_jax.model import LAYER_NAMES

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
