"""The training-set statistics the paper subtracts and adds (section 2, 4.1), and their file.

The mean image (or, for ImageNet until a dataset is prepared, the mean pixel), and the principal
axes of the RGB pixel covariance with the standard deviation along each, for PCA lighting. Written
by `prepare` (and with every training run) as `stats.npz`; NumPy only.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np

from alexnet_jax import files

STATS_FILE = "stats.npz"

# ImageNet's RGB statistics, used until a dataset has its own stats.npz. The principal axes of the
# pixel covariance and the standard deviation along each on the 0-255 scale: the square roots of
# the eigenvalues [0.2175, 0.0188, 0.0045] of 0-1 pixels that fb.resnet.torch publishes, times 255.
# Section 4.1's l_i are read as these standard deviations, as cuda-convnet2's `--color-noise` does;
# `prepare` computes the same quantity from the data.
IMAGENET_PCA_SCALE = (np.sqrt(np.array([0.2175, 0.0188, 0.0045])) * 255.0).astype(np.float32)
IMAGENET_PCA_AXES = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], np.float32
)
# ILSVRC-2012's per-channel training mean on 0-255.
IMAGENET_MEAN_RGB = np.array([123.68, 116.78, 103.94], np.float32)
# torchvision's ImageNet normalisation of 0-1 pixels (the `Normalize` of its evaluation transforms).
TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCHVISION_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Caffe's ILSVRC-2012 mean pixel in its B, G, R order on 0-255: the spatial mean of the
# ilsvrc_2012_mean.npy that Caffe's classification example subtracts.
CAFFE_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], np.float32)

NORMALISATIONS = ("mean_image", "none", "torchvision", "caffe")


@dataclasses.dataclass(frozen=True)
class Normalisation:
    """What the network is fed for 0-255 RGB pixels x: `(x - offset) * scale`.

    `offset` is a mean image (S, S, 3), a mean pixel (3,) or None; `scale` a per-channel factor (3,) or
    None. A mean image's window follows each training crop (steps.normalise_images).
    """

    offset: np.ndarray | None = None
    scale: np.ndarray | None = None


def normalisation(kind: str, dataset_mean: np.ndarray | None) -> Normalisation:
    """The input normalisation `kind` (config `data.normalisation`, NORMALISATIONS) with the data's mean.

    "mean_image": minus `dataset_mean`, the training set's mean image or pixel (section 2); "none":
    0-255 as it is; "torchvision": `(x / 255 - mean) / std`, torchvision's; "caffe": minus Caffe's
    mean pixel. Caffe's networks read BGR; the weights converter reverses conv1's input channels
    instead, so every network here reads RGB and the mean pixel is given in RGB order.
    """
    if kind == "mean_image":
        return Normalisation(offset=np.asarray(dataset_mean, np.float32))
    if kind == "none":
        return Normalisation()
    if kind == "torchvision":
        return Normalisation(offset=255.0 * TORCHVISION_MEAN, scale=1.0 / (255.0 * TORCHVISION_STD))
    if kind == "caffe":
        return Normalisation(offset=CAFFE_MEAN_BGR[::-1].copy())
    raise ValueError(f"data.normalisation={kind!r} is not one of {', '.join(map(repr, NORMALISATIONS))}")


def principal_axes(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(std along each axis = sqrt(eigenvalue), axes as columns) of a 3 x 3 RGB covariance,
    largest first: what PCA lighting needs."""
    eigval, eigvec = np.linalg.eigh(covariance)
    order = np.argsort(eigval)[::-1]
    return np.sqrt(eigval[order].clip(0)).astype(np.float32), eigvec[:, order].astype(np.float32)


def rgb_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean image, and the principal axes of the RGB pixel covariance, of (N, S, S, 3) images."""
    images = images.astype(np.float64)
    scale, axes = principal_axes(np.cov(images.reshape(-1, 3), rowvar=False))
    return images.mean(axis=0).astype(np.float32), scale, axes


def write_statistics(directory: str, mean: np.ndarray, pca_scale: np.ndarray, pca_axes: np.ndarray, **extra) -> str:
    """Writes `directory/stats.npz` (what `read_statistics` reads); returns its path."""
    path = os.path.join(directory, STATS_FILE)
    np.savez(path, mean=mean, pca_scale=pca_scale, pca_axes=pca_axes, **extra)
    return path


def read_statistics(directory: str, resize: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, pca_scale, pca_axes) from `directory/stats.npz`, else ImageNet's built-in figures."""
    path = os.path.join(directory, STATS_FILE)
    if not os.path.exists(path):
        return IMAGENET_MEAN_RGB, IMAGENET_PCA_SCALE, IMAGENET_PCA_AXES
    try:
        with np.load(path) as stats:
            mean, scale, axes = stats["mean"], stats["pca_scale"], stats["pca_axes"]
    except (ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:  # empty, cut short, not ours
        raise files.CorruptFile(
            f"{path} cannot be read ({files.describe(error)}): rerun `python -m alexnet_jax.prepare`"
        ) from None
    if mean.shape not in ((3,), (resize, resize, 3)):
        raise ValueError(
            f"{path} holds a {mean.shape[0]} x {mean.shape[1]} mean image but data.resize_size={resize}; "
            "rerun `python -m alexnet_jax.prepare` with this resize size"
        )
    return mean, scale, axes
