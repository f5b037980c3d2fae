"""Weights files recognised from their contents: the network, input and classes they belong to, and
the accuracy their publishers report.

    ours (.npz with __config__)     the config, class names and statistics the file carries
    torchvision's AlexNet (.pth, or its state dict as .npz): keys features.0.weight ... classifier.6.bias,
                                    conv1 64 x 3 x 11 x 11         -> configs/torchvision.py
    Caffe's bvlc_alexnet (.npy)     conv1 11 x 11 x 3 x 96, conv2 5 x 5 x 48 x 256  -> configs/caffe.py
    other AlexNets in PyTorch's layout or older .npz files of ours: the variant from the kernel
    shapes (96 and 48: the paper's; 48 and 48: one_tower; 64: torchvision), inverted dropout (the
    convention every earlier version trained and every export writes), the paper's constants
    VGG-16 without a config: configs/vgg16.py with inverted dropout

The number of classes comes from the last layer; 1,000 classes are ImageNet's (the label order of
tfds, torchvision and Caffe), others are "class 0", "class 1"...
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from alexnet_jax import config_files, datasets, statistics
from alexnet_jax.networks import alexnet
from alexnet_jax.weights import WeightsFile

# The published ILSVRC-2012 validation figures of imported weights, as top-1 / top-5 errors.
PAPER = {
    "crops": "ten_crop",
    "top1_error": 0.407,
    "top5_error": 0.182,
    "source": "the paper, Table 2 (one CNN, ILSVRC-2012 validation, the average of 10 patches, section 4.1)",
}
PUBLISHED = {
    "torchvision": {
        "crops": "centre",
        "top1_error": 1 - 0.56522,
        "top5_error": 1 - 0.79066,
        "source": "torchvision's AlexNet_Weights.IMAGENET1K_V1: acc@1 56.522, acc@5 79.066 (centre crop)",
    },
    "caffe": {
        "crops": "centre",
        "top1_error": 1 - 0.571,
        "top5_error": 1 - 0.802,
        "source": "BVLC model zoo, bvlc_alexnet: top-1 accuracy 57.1 %, top-5 80.2 % (centre crop)",
    },
}


@dataclasses.dataclass(frozen=True)
class Recognised:
    """What a weights file was recognised as."""

    kind: str  # "alexnet_jax" (ours, with its config), "torchvision", "caffe", "inferred"
    description: str
    config: ml_collections.ConfigDict  # the network and input the weights belong to
    class_names: list[str]
    mean: np.ndarray | None  # the mean image or pixel that `data.normalisation="mean_image"` subtracts
    published: list[dict]  # the publishers' figures, and the paper's where the network is an ImageNet AlexNet


def recognise(weights: WeightsFile) -> Recognised:
    """The network, input, classes and published figures of `weights` (see the module docstring)."""
    shapes = weights.shapes()
    if weights.layout == "canonical" and weights.config is not None:
        config = config_files.upgrade(weights.config)
        kind, description = "alexnet_jax", f"its own config ({config.model.name}, {config.model.get('variant', '')})"
    elif weights.layout == "torch" and shapes.get("features.0.weight") == (64, 3, 11, 11):
        config, kind, description = config_files.shipped("torchvision"), "torchvision", "torchvision's AlexNet"
    elif weights.layout == "caffe" and (shapes.get("conv1/kernel"), shapes.get("conv2/kernel")) == (
        (11, 11, 3, 96),
        (5, 5, 48, 256),
    ):
        config, kind, description = config_files.shipped("caffe"), "caffe", "Caffe's bvlc_alexnet"
    else:
        config, kind = _inferred(weights, shapes), "inferred"
        description = f"inferred from its shapes: {config.model.name} {config.model.get('variant', '')}".strip()
    config.model.num_classes = _num_classes(shapes, config)
    names = weights.class_names or _default_names(config.model.num_classes)
    mean = _mean(weights, config)
    imagenet = config.model.num_classes == 1000 and names == _default_names(1000)
    published = [PUBLISHED[kind]] if kind in PUBLISHED else []
    if config.model.name == "alexnet" and imagenet:
        published.append(PAPER)
    return Recognised(kind, description, config, names, mean, published)


def _inferred(weights: WeightsFile, shapes: dict) -> ml_collections.ConfigDict:
    """The config of a file that carries none, from its layer names and kernel shapes."""
    if "conv1_1/kernel" in shapes:
        config = config_files.shipped("vgg16")
    else:
        conv1, conv2 = _kernel(shapes, "conv1"), _kernel(shapes, "conv2")
        if conv1 is None or conv2 is None:
            raise ValueError(
                f"{weights.path} is not a network this code knows (keys {sorted(shapes)[:6]}...): give --config"
            )
        variants = {(96, 48): "paper", (48, 48): "one_tower", (64, 64): "torchvision"}
        variant = variants.get((conv1[-1], conv2[-2]))
        if variant is None:
            raise ValueError(f"{weights.path}: conv1 {conv1} and conv2 {conv2} fit no AlexNet variant; give --config")
        config = config_files.shipped("torchvision" if variant == "torchvision" else "paper")
        config.model.variant = variant
        config.model.fc_width = _kernel(shapes, "fc6")[-1]
    config.model.dropout_scaling = "inverted"  # what earlier versions trained with and exports write
    return config


def _kernel(shapes: dict, layer: str) -> tuple[int, ...] | None:
    """A layer's kernel shape in the canonical layout, from canonical, Caffe or PyTorch keys."""
    if f"{layer}/kernel" in shapes:
        return shapes[f"{layer}/kernel"]
    for key in (f"{layer}.weight", f"{alexnet.TORCH_NAMES.get(layer)}.weight"):
        if key in shapes:
            shape = shapes[key]
            return tuple(shape[2:]) + (shape[1], shape[0]) if len(shape) == 4 else shape[::-1]
    return None


def _num_classes(shapes: dict, config) -> int:
    """The width of the file's last layer (fc8 in both networks here), else the config's."""
    last = _kernel(shapes, "fc8")
    return int(last[-1]) if last is not None else config.model.num_classes


def _mean(weights: WeightsFile, config) -> np.ndarray | None:
    """The mean image or pixel that came with the file, else ImageNet's mean pixel."""
    if weights.statistics and "mean" in weights.statistics:
        return np.asarray(weights.statistics["mean"], np.float32)
    return statistics.IMAGENET_MEAN_RGB if config.data.normalisation == "mean_image" else None


def _default_names(num_classes: int) -> list[str]:
    if num_classes == 1000:  # taken to be ImageNet's, in the label order every framework uses
        return [wordnet_id for wordnet_id, _ in datasets.imagenet_classes()]
    return [f"class {i}" for i in range(num_classes)]
