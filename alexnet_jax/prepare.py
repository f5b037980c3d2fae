"""Once per dataset: the training-set statistics the paper uses, and its 256 x 256 copy (section 2).

    python -m alexnet_jax.prepare --config=configs/paper.py [--copy_to=DIR] [--config.data.* ...]

1. Streams the training split once (bounded memory, progress and ETA on the console) and writes
   `stats.npz` beside the data (the image folder, or the tfds build's directory): the mean image
   at the resize size, and the principal axes of the RGB pixel covariance with the standard
   deviation along each, for PCA lighting. Training reads them from there.
2. With `--copy_to=DIR`, also writes every readable image of both splits, rescaled and centre-
   cropped to 256 x 256, as quality-90 JPEGs in `DIR/{train,val}/<class>/`, with the statistics and
   a `prepared.json` marker. Train on it with `--config.data.source=folder --config.data.data_dir=DIR`:
   small, valid JPEGs decode several times faster than the originals, as the paper's own copy did.
"""

from __future__ import annotations

from alexnet_jax import cli  # first: quiets TensorFlow's start-up before anything imports it

# isort: split
import json
import os

import numpy as np
import tensorflow as tf
from absl import flags
from ml_collections import config_flags

from alexnet_jax import datasets, statistics
from alexnet_jax.progress import Progress

_BATCH = 64  # images decoded per step of the streaming pass; bounds memory to ~50 MB at 256 x 256


def _images(source: datasets.Source) -> tf.data.Dataset:
    """Every readable image of a split (uint8 at the resize size), with its label, in order."""
    return (
        source.examples(np.arange(source.size))
        .filter(lambda image, label, ok: ok)
        .map(lambda image, label, ok: (image, label))
    )


def compute_statistics(source: datasets.Source) -> dict:
    """Mean image and RGB principal axes of a split, in one streaming pass (float64 sums)."""
    progress = Progress("statistics", source.size)
    image_sum, pixel_sum, outer_sum, count, pixels = None, np.zeros(3), np.zeros((3, 3)), 0, 0
    for images, _ in _images(source).batch(_BATCH).prefetch(2).as_numpy_iterator():
        batch = images.astype(np.float64)
        image_sum = batch.sum(axis=0) if image_sum is None else image_sum + batch.sum(axis=0)
        flat = batch.reshape(-1, 3)
        pixel_sum += flat.sum(axis=0)
        outer_sum += flat.T @ flat
        count, pixels = count + len(batch), pixels + len(flat)
        progress.update(count)
    if count == 0:
        raise ValueError("the training split has no readable images")
    progress.update(count, force=True)
    pixel_mean = pixel_sum / pixels
    covariance = (outer_sum - pixels * np.outer(pixel_mean, pixel_mean)) / (pixels - 1)
    scale, axes = statistics.principal_axes(covariance)
    return {
        "mean": (image_sum / count).astype(np.float32),
        "pca_scale": scale,
        "pca_axes": axes,
        "count": np.int64(count),
    }


def write_copy(data: datasets.Data, directory: str, quality: int) -> dict:
    """Both splits as `directory/{train,val}/<class>/<index>.jpg`; returns images written per split."""
    written = {}
    for split, source in (("train", data.train), ("val", data.eval)):
        for name in data.class_names:
            os.makedirs(os.path.join(directory, split, name.replace("/", "_")), exist_ok=True)
        names = tf.constant([n.replace("/", "_") for n in data.class_names])
        indexed = source.attach(tf.data.Dataset.from_tensor_slices({"index": np.arange(source.size)}))

        def write(e, split=split, names=names):
            file = tf.strings.as_string(e["index"], width=8, fill="0")
            path = tf.strings.join([directory, "/", split, "/", tf.gather(names, e["label"]), "/", file, ".jpg"])
            tf.io.write_file(path, tf.io.encode_jpeg(e["image"], quality=quality))
            return e["index"]

        ds = indexed.filter(lambda e: e["ok"]).map(write, num_parallel_calls=tf.data.AUTOTUNE)
        progress = Progress(f"copy {split}", source.size)
        count = 0
        for _ in ds.prefetch(16).as_numpy_iterator():
            count += 1
            progress.update(count)
        progress.update(count, force=True)
        written[split] = count
    return written


def prepare(config, copy_to: str | None, quality: int) -> dict:
    """Writes stats.npz beside the data (and the copy, if asked); returns what was done."""
    data = datasets.create_data(config.data, config.model.num_classes)
    stats = compute_statistics(data.train)
    report = {"statistics_images": int(stats["count"]), "pca_scale": stats["pca_scale"].tolist()}
    if config.data.source in ("folder", "tfds"):
        report["statistics"] = statistics.write_statistics(datasets.statistics_dir(config.data), **stats)
    if copy_to:
        report["copied"] = write_copy(data, copy_to, quality)
        statistics.write_statistics(copy_to, **stats)
        with open(os.path.join(copy_to, datasets.PREPARED_FILE), "w") as f:
            json.dump({"resize_size": config.data.resize_size, "quality": quality, **report["copied"]}, f)
        report["copy"] = copy_to
    report["unreadable_files"] = data.unreadable.count
    return report


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    report = prepare(cli.config_value(_CONFIG), flags.FLAGS.copy_to, flags.FLAGS.quality)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    # Defined here, not on import, so that importing this module defines no flags.
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file naming the dataset (data.*).")
    flags.DEFINE_string("copy_to", None, "Also write the 256 x 256 JPEG copy of both splits here.")
    flags.DEFINE_integer("quality", 90, "JPEG quality of the copy.")
    flags.mark_flag_as_required("config")
    cli.run(main)
