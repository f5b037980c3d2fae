"""Datasets and the tf.data pipelines that feed the training and evaluation steps.

Every source is random-access: a number of examples, their labels, and `load(index)` giving the
image at the "resize" size (256 x 256 for ImageNet, section 2). The pipeline then draws the order
from (seed, epoch) and each example's augmentation from (seed, epoch, position), which makes a run
repeatable, lets it resume at any step, and gives each host a disjoint slice of every batch.

Sources (config `data.source`):
  digits  scikit-learn's 1,797 handwritten digits (8 x 8, 10 classes), shipped with the package:
          the embedded default, no download. Every 5th image is held out for evaluation.
  fake    random images of the configured shapes, each class tinted its own colour so that a
          network can learn it: for benchmarks and smoke tests.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf

from alexnet_jax import preprocess


@dataclasses.dataclass(frozen=True)
class Source:
    """One split: `load(index)` -> (float32 (S, S, 3) image in [0, 255] at resize size S, label, ok).

    `ok` is False for a file that could not be decoded (the image is then zeros); `may_fail` says
    whether that can happen at all, so that in-memory sources skip the filtering.
    """

    size: int
    load: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor, tf.Tensor]]
    may_fail: bool = False
    # Optional `load_window(index, top, left, side)`: the same as cropping `load`'s image, but
    # cheaper (a JPEG decodes only that window).
    load_window: Callable | None = None


class UnreadableFiles:
    """The distinct files that failed to decode, thread-safe (tf.data decodes from many threads)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._paths: dict[str, None] = {}  # insertion-ordered set

    def add(self, path: str) -> None:
        with self._lock:
            self._paths[path] = None

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._paths)

    def latest(self) -> str | None:
        with self._lock:
            return next(reversed(self._paths), None)


@dataclasses.dataclass(frozen=True)
class Data:
    """A dataset ready for training: both splits and the statistics the paper subtracts and adds."""

    train: Source
    eval: Source
    num_classes: int
    class_names: tuple[str, ...]
    mean: np.ndarray  # mean image (S, S, 3) or mean pixel (3,), 0-255 scale
    pca_scale: np.ndarray  # std of the pixels along each principal RGB axis (3,), 0-255 scale
    pca_axes: np.ndarray  # the principal axes (covariance eigenvectors) as columns (3, 3)
    unreadable: UnreadableFiles = dataclasses.field(default_factory=UnreadableFiles)


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


def _in_memory(images: np.ndarray, labels: np.ndarray) -> Source:
    image_table, label_table = tf.constant(images), tf.constant(labels.astype(np.int32))
    return Source(
        size=len(labels),
        load=lambda i: (tf.cast(tf.gather(image_table, i), tf.float32), tf.gather(label_table, i), tf.constant(True)),
    )


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w, 3) uint8 -> (N, size, size, 3) uint8 by the paper's shorter-side rule."""
    resized = tf.map_fn(
        lambda im: preprocess.resize_shorter_and_center_crop(tf.cast(im, tf.float32), size),
        tf.constant(images),
        fn_output_signature=tf.float32,
    )
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def _from_arrays(images: np.ndarray, labels: np.ndarray, held_out: np.ndarray, class_names, size: int) -> Data:
    images = _resize_all(images, size)
    mean, pca_scale, pca_axes = rgb_statistics(images[~held_out])
    return Data(
        train=_in_memory(images[~held_out], labels[~held_out]),
        eval=_in_memory(images[held_out], labels[held_out]),
        num_classes=len(class_names),
        class_names=tuple(class_names),
        mean=mean,
        pca_scale=pca_scale,
        pca_axes=pca_axes,
    )


def load_digits(size: int) -> Data:
    """scikit-learn's handwritten digits as 3-channel images in [0, 255], every 5th held out."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=-1)
    held_out = np.arange(len(images)) % 5 == 0
    return _from_arrays(images, digits.target, held_out, [str(d) for d in range(10)], size)


def load_fake(config, size: int) -> Data:
    """Noise images with a per-class colour tint, sizes from config.data.fake_*; learnable."""
    rng = np.random.default_rng(0)
    n_train, n_eval, classes = config.fake_train_size, config.fake_eval_size, config.fake_num_classes
    labels = rng.integers(0, classes, n_train + n_eval)
    tints = rng.uniform(64, 192, (classes, 3))
    noise = rng.normal(0, 40, (n_train + n_eval, size, size, 3))
    images = np.clip(tints[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    held_out = np.arange(n_train + n_eval) >= n_train
    return _from_arrays(images, labels, held_out, [f"class_{i}" for i in range(classes)], size)


def create_data(data_config, num_classes: int) -> Data:
    """The dataset that `data_config` names, with a clear error for what is missing or wrong."""
    size = data_config.resize_size
    if data_config.source == "digits":
        data = load_digits(size)
    elif data_config.source == "fake":
        data = load_fake(data_config, size)
    else:
        from alexnet_jax import datasets

        data = datasets.load(data_config)
    if data.num_classes != num_classes:
        raise ValueError(
            f"data source {data_config.source!r} has {data.num_classes} classes but model.num_classes={num_classes}; "
            f"set --config.model.num_classes={data.num_classes}"
        )
    return data


def eval_crops(image: tf.Tensor, mean: np.ndarray | None, crop: int, ten_crop: bool) -> tf.Tensor:
    """Section 4.1's test-time patches of a resized image minus `mean` (if any): the centre patch,
    or the 4 corners and centre and their reflections. Shape (1 or 10, crop, crop, 3)."""
    if mean is not None:
        image = image - tf.constant(mean, tf.float32)
    return preprocess.ten_crops(image, crop) if ten_crop else preprocess.center_crop(image, crop)[None]


def train_batches(
    data: Data, data_config, *, crop: int, global_batch: int, start_step: int, seed: int
) -> Iterator[dict]:
    """Endless training batches (this host's slice) from step `start_step` on.

    A batch holds uint8 `images` (B, crop, crop, 3), cropped and mirrored; int32 `labels`; each
    image's `window` (top, left, mirrored) in the resized image; and its PCA `lighting` offset.
    `steps.normalise_images` turns them into the network's input on the device: float, minus
    the same window of the mean image, plus the offset (`normalise` below does it on the host).

    The order of epoch e is a permutation drawn from (seed, e); the last partial batch of an epoch
    is dropped, as each epoch is a fresh permutation. Each image's patch, reflection and colour
    shift are drawn with keys from (seed, epoch * N + position), so the batch at a given step is
    the same however the run got there. Unreadable files are left out (the source counts
    them); an epoch with some then ends a few batches early, and batches after such a file can
    differ between a resumed and an uninterrupted run.
    """
    n = data.train.size
    steps_per_epoch = n // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"optim.batch_size={global_batch} is larger than the {n} training examples")
    hosts, host = jax.process_count(), jax.process_index()
    local = global_batch // hosts

    size = data_config.resize_size

    def example(index, position):
        key = tf.stack([tf.constant(seed, tf.int64), position])
        crop_key, light_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        if data_config.random_crop:
            top, left, mirror = preprocess.random_window(size, crop, crop_key)
            mirror = mirror & data_config.random_flip
        else:
            top = left = tf.constant((size - crop) // 2)
            mirror = tf.constant(False)
        if data.train.load_window is not None:
            image, label, ok = data.train.load_window(index, top, left, crop)
        else:
            image, label, ok = data.train.load(index)
            image = image[top : top + crop, left : left + crop, :]
        # Whole pixel values, as in the paper's stored 256 x 256 copy; uint8 is a quarter of the bytes.
        image = preprocess.mirror_if(tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), mirror)
        if data_config.pca_lighting_std > 0:
            lighting = preprocess.pca_offset(data.pca_scale, data.pca_axes, data_config.pca_lighting_std, light_key)
        else:
            lighting = tf.zeros([3])
        window = tf.stack([top, left, tf.cast(mirror, tf.int32)])
        return {"images": image, "labels": label, "window": window, "lighting": lighting, "ok": ok}

    epoch, first = divmod(start_step, steps_per_epoch)
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        positions = np.arange(first * global_batch, steps_per_epoch * global_batch)
        positions = positions.reshape(-1, hosts, local)[:, host].reshape(-1)
        ds = tf.data.Dataset.from_tensor_slices((order[positions], epoch * n + positions))
        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if data.train.may_fail:
            ds = ds.filter(lambda e: e["ok"])
        ds = ds.map(lambda e: {k: v for k, v in e.items() if k != "ok"})
        yield from ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
        epoch, first = epoch + 1, 0


def normalise(batch: dict, mean: np.ndarray | None) -> np.ndarray:
    """NumPy twin of `steps.normalise_images`: the float images a training batch stands for."""
    images = batch["images"].astype(np.float32)
    if mean is not None and mean.ndim == 3:
        side = images.shape[1]
        for i, (top, left, mirrored) in enumerate(batch["window"]):
            patch = mean[top : top + side, left : left + side]
            images[i] -= patch[:, ::-1] if mirrored else patch
    elif mean is not None:
        images -= mean
    return images + batch["lighting"][:, None, None, :]


def eval_batches(data: Data, data_config, *, crop: int, global_batch: int, ten_crop: bool) -> Iterator[dict]:
    """Every evaluation example once (this host's slice), the last batch padded and masked.

    Images are (B, crops, crop, crop, 3): the centre crop, or section 4.1's ten patches. An
    unreadable file is masked out like padding (and counted by its source).
    """
    n = data.eval.size
    hosts, host = jax.process_count(), jax.process_index()
    local = global_batch // hosts
    padded = -(-n // global_batch) * global_batch
    positions = np.arange(padded).reshape(-1, hosts, local)[:, host].reshape(-1)

    def example(position):
        real = position < n
        image, label, ok = data.eval.load(tf.where(real, position, 0))
        crops = eval_crops(image, data.mean if data_config.subtract_mean else None, crop, ten_crop)
        return {"images": crops, "labels": label, "mask": tf.cast(real & ok, tf.float32)}

    ds = tf.data.Dataset.from_tensor_slices(positions).map(example, num_parallel_calls=tf.data.AUTOTUNE)
    yield from ds.batch(local).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
