"""The tf.data pipelines that turn a dataset's sources into the batches the steps take.

The order of each epoch and every example's augmentation are drawn from (seed, epoch, position),
which makes a run repeatable, lets it resume at any step, and gives each host a disjoint slice of
every batch. Batches carry uint8 pixels: the float conversion, the mean image, the colour shift,
the reflection and the test-time crops happen on the device (steps.py), and the host ships a
quarter of the bytes and copies each patch once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import jax
import numpy as np
import tensorflow as tf

from alexnet_jax import datasets, preprocess, statistics


def _host_positions(count: int, global_batch: int) -> tuple[np.ndarray, int]:
    """This host's positions in each batch of `global_batch` over positions 0 .. count-1, and its
    share of a batch."""
    hosts, host = jax.process_count(), jax.process_index()
    local = global_batch // hosts
    return np.arange(count).reshape(-1, hosts, local)[:, host].reshape(-1), local


def train_batches(
    data: datasets.Data, data_config, *, crop: int, global_batch: int, start_step: int, seed: int
) -> Iterator[dict]:
    """Endless training batches (this host's slice) from step `start_step` on.

    A batch holds uint8 `images` (B, crop, crop, 3), each the patch as cut from the resized image;
    int32 `labels`; each patch's `window` (top, left, mirrored) in the resized image; and its PCA
    `lighting` offset. `steps.normalise_images` turns them into the network's input on the device:
    float, minus the same window of the mean image, plus the offset, reflected where `window` says
    (`normalise` below does it on the host).

    The order of epoch e is a permutation drawn from (seed, e); the last partial batch of an epoch
    is dropped, as each epoch is a fresh permutation. Each image's patch, reflection and colour
    shift are drawn with keys from (seed, epoch * N + position), so the batch at a given step is
    the same however the run got there. Without `random_crop` the patch is the centre one; the
    reflection still follows `random_flip`. A file that cannot be read keeps its place with `weight`
    0 (the loss leaves it out; the source counts it), so an epoch's length and every other example's
    position do not depend on which files failed. A batch of which this host could read nothing is
    noted in `data.unreadable.lost_batch` (the loop stops on it before anything is saved).
    """
    n = data.train.size
    steps_per_epoch = n // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"optim.batch_size={global_batch} is larger than the {n} training examples")
    size, source = data_config.resize_size, data.train

    def augmentation(element):
        key = tf.stack([tf.constant(seed, tf.int64), element["position"]])
        crop_key, light_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        top, left, mirror = preprocess.random_window(size, crop, crop_key)
        if not data_config.random_crop:
            top = left = tf.constant((size - crop) // 2)
        mirror = mirror & data_config.random_flip
        if data_config.pca_lighting_std > 0:
            lighting = preprocess.pca_offset(data.pca_scale, data.pca_axes, data_config.pca_lighting_std, light_key)
        else:
            lighting = tf.zeros([3])
        return {"index": element["index"], "top": top, "left": left, "mirror": mirror, "lighting": lighting}

    def finish(e):  # one example, or a batch of them (from a source that reads batches)
        image = e["image"]
        if source.attach_window is None and source.read_batch is None:
            image = image[e["top"] : e["top"] + crop, e["left"] : e["left"] + crop, :]
        window = tf.stack([e["top"], e["left"], tf.cast(e["mirror"], tf.int32)], axis=-1)
        return {
            "images": image,
            "labels": e["label"],
            "window": window,
            "lighting": e["lighting"],
            "weight": tf.cast(e["ok"], tf.float32),
        }

    def examples(ds, local: int):  # batches of `local` augmented examples at `ds`'s indices
        ds = ds.map(augmentation, num_parallel_calls=tf.data.AUTOTUNE)
        if source.read_batch is not None:
            ds = source.read_batch(ds.batch(local, drop_remainder=True), crop)
            return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
        ds = source.attach(ds) if source.attach_window is None else source.attach_window(ds, crop)
        return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE).batch(local, drop_remainder=True)

    epoch, first = divmod(start_step, steps_per_epoch)
    step = start_step
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        positions, local = _host_positions(steps_per_epoch * global_batch, global_batch)
        positions = positions[first * local :]
        ds = tf.data.Dataset.from_tensor_slices({"index": order[positions], "position": epoch * n + positions})
        for batch in examples(ds, local).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
            step += 1
            if not batch["weight"].any():
                data.unreadable.lose_batch(step)
            yield batch
        epoch, first = epoch + 1, 0


class Waited:
    """An iterator's items, with the seconds spent waiting for them: a training loop that waits for
    its batches is bound by its input pipeline (the training log reports the share)."""

    def __init__(self, items: Iterable):
        self._items, self.seconds = iter(items), 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self._items)
        finally:
            self.seconds += time.perf_counter() - start


def normalise(batch: dict, normalisation) -> np.ndarray:
    """NumPy twin of `steps.normalise_images`: the float images a training batch stands for.

    `normalisation`: a `statistics.Normalisation`, or a mean image or pixel (subtracted), or None."""
    if isinstance(normalisation, statistics.Normalisation):
        mean, scale = normalisation.offset, normalisation.scale
    else:
        mean, scale = normalisation, None
    images = batch["images"].astype(np.float32)
    if mean is not None and mean.ndim == 3:
        side = images.shape[1]
        for i, (top, left, _) in enumerate(batch["window"]):
            images[i] -= mean[top : top + side, left : left + side]
    elif mean is not None:
        images -= mean
    images = images + batch["lighting"][:, None, None, :]
    mirrored = batch["window"][:, 2] > 0
    images[mirrored] = images[mirrored, :, ::-1]
    return images if scale is None else images * scale


def eval_batches(data: datasets.Data, *, global_batch: int) -> Iterator[dict]:
    """Every evaluation example once (this host's slice), the last batch padded and masked.

    Batches hold the uint8 resized `images` (B, S, S, 3), `labels` and `mask`; the evaluation step
    cuts the centre crop or the paper's ten on the device (`steps.test_crops`). An unreadable file
    is masked out like padding (and counted by its source).
    """
    n = data.eval.size
    positions, local = _host_positions(-(-n // global_batch) * global_batch, global_batch)
    ds = tf.data.Dataset.from_tensor_slices({"index": np.where(positions < n, positions, 0), "real": positions < n})

    def finish(e):  # one example, or a batch of them
        return {"images": e["image"], "labels": e["label"], "mask": tf.cast(e["real"] & e["ok"], tf.float32)}

    if data.eval.read_batch is not None:
        ds = data.eval.read_batch(ds.batch(local), None).map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = data.eval.attach(ds).map(finish, num_parallel_calls=tf.data.AUTOTUNE).batch(local)
    yield from ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
