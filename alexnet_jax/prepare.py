"""Once per dataset: the training-set statistics the paper uses, and its 256 x 256 copy (section 2).

    python -m alexnet_jax.prepare --config=configs/paper.py [--copy_to=DIR [--format=records|jpeg]]
        [--config.data.* ...]

1. Without `--copy_to`: streams the training split once (bounded memory, progress and ETA on the
   console) and writes `stats.npz` beside the data (the image folder, or the tfds build's
   directory): the mean image at the resize size, and the principal axes of the RGB pixel
   covariance with the standard deviation along each, for PCA lighting. Training reads them there.
2. With `--copy_to=DIR`: in the same single pass, also writes every readable image of both splits
   rescaled and centre-cropped to 256 x 256, as the paper's own copy held them, with the statistics
   and a `prepared.json` marker written last. `--format=records` (fixed-size uint8 records,
   records.py: no decoding in training, about 192 KiB an image) or `--format=jpeg` (quality-90 JPEGs
   in `DIR/{train,val}/<class>/`, several times smaller, each crop's window decoded in training).
   Train with `--config.data.source=records` or `folder` and `--config.data.data_dir=DIR`.

Images are decoded and rescaled by TensorFlow on every core. An interrupted copy (a signal, a full
disk, a crash) continues where its last saved position was when the same command runs again: the
position, the partial sums of the statistics and the labels are saved every few seconds, whole or
not at all, and the sums are exact integers in float64, so a resumed copy's statistics are the ones
an uninterrupted pass gives.
"""

from __future__ import annotations

from alexnet_jax import cli  # first: quiets TensorFlow's start-up before anything imports it

# isort: split
import contextlib
import io
import json
import os
import shutil
import time
import zipfile

import numpy as np
import tensorflow as tf
from absl import flags
from ml_collections import config_flags

from alexnet_jax import datasets, files, records, statistics, stopping
from alexnet_jax.progress import Progress

_BATCH = 64  # images decoded per step of the streaming pass; bounds memory to ~50 MB at 256 x 256
_SAVE_EVERY_SECONDS = 10.0  # how much copying an interruption can cost
FORMATS = ("records", "jpeg")
PROGRESS_FILE = "prepare_progress.npz"


class Sums:
    """The statistics' sums over the images seen so far: whole numbers, exact in float64 for any
    ImageNet-sized split, so the order and the batches they come in do not change the result."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.image = state.get("sum_image")  # (S, S, 3) float64, or None before the first batch
        self.pixel = state.get("sum_pixel", np.zeros(3))
        self.outer = state.get("sum_outer", np.zeros((3, 3)))
        self.count = int(state.get("sum_count", 0))

    def add(self, sums: dict) -> None:
        self.image = sums["image"] if self.image is None else self.image + sums["image"]
        self.pixel, self.outer = self.pixel + sums["pixel"], self.outer + sums["outer"]
        self.count += int(sums["count"])

    def state(self) -> dict:
        extra = {} if self.image is None else {"sum_image": self.image}
        return {**extra, "sum_pixel": self.pixel, "sum_outer": self.outer, "sum_count": self.count}

    def statistics(self) -> dict:
        """The mean image and the RGB principal axes (what `stats.npz` holds)."""
        if self.count == 0:
            raise ValueError("the training split has no readable images")
        pixels = self.count * self.image.shape[0] * self.image.shape[1]
        pixel_mean = self.pixel / pixels
        covariance = (self.outer - pixels * np.outer(pixel_mean, pixel_mean)) / (pixels - 1)
        scale, axes = statistics.principal_axes(covariance)
        return {
            "mean": (self.image / self.count).astype(np.float32),
            "pca_scale": scale,
            "pca_axes": axes,
            "count": np.int64(self.count),
        }


def _with_sums(batch: dict) -> dict:
    """A batch of examples with the sums of its uint8 images, computed by TensorFlow (in parallel,
    without the GIL)."""
    images = batch["image"]
    flat = tf.reshape(tf.cast(images, tf.float64), [-1, 3])
    return {
        **batch,
        "sums": {
            "image": tf.reduce_sum(tf.cast(images, tf.float64), axis=0),
            "pixel": tf.reduce_sum(flat, axis=0),
            "outer": tf.matmul(flat, flat, transpose_a=True),
            "count": tf.shape(images)[0],
        },
    }


def _readable(source: datasets.Source, start: int) -> tf.data.Dataset:
    """The readable examples of a split from index `start` on, in order: index, image, label."""
    indexed = source.attach(tf.data.Dataset.from_tensor_slices({"index": np.arange(start, source.size)}))
    return indexed.filter(_is_readable).map(_example)


def _is_readable(element: dict) -> tf.Tensor:
    return element["ok"]


def _example(element: dict) -> dict:
    return {key: element[key] for key in ("index", "image", "label")}


def compute_statistics(source: datasets.Source) -> dict:
    """Mean image and RGB principal axes of a split, in one streaming pass."""
    progress, sums, done = Progress("statistics", source.size), Sums(), 0
    ds = _readable(source, 0).batch(_BATCH)
    ds = ds.map(_with_sums, num_parallel_calls=tf.data.AUTOTUNE)
    for batch in ds.prefetch(2).as_numpy_iterator():
        sums.add(batch["sums"])
        done = int(batch["index"][-1]) + 1
        progress.update(done)
    progress.update(source.size, force=True)
    return sums.statistics()


class _Position:
    """Where an interrupted copy stands, saved in `DIR/prepare_progress.npz` whole or not at all."""

    def __init__(self, directory: str, settings: dict):
        self.path, self.settings = os.path.join(directory, PROGRESS_FILE), settings
        self.split, self.next, self.written, self.sums = 0, 0, 0, Sums()
        self.labels: list[np.ndarray] = []
        self.done: dict = {}  # per finished split: images written, files unreadable
        if not os.path.exists(self.path):
            return
        try:
            with np.load(self.path) as saved:
                state = {key: saved[key] for key in saved.files}
            stored = json.loads(str(state["settings"]))
        except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise files.CorruptFile(
                f"{self.path} cannot be read ({files.describe(error)}): delete it to copy again from the start"
            ) from None
        if stored != settings:
            changed = ", ".join(
                f"{k} {stored.get(k)!r} -> {settings.get(k)!r}" for k in settings if stored.get(k) != settings[k]
            )
            raise ValueError(
                f"{directory} holds an unfinished copy written with other settings ({changed}): "
                f"rerun with those, or delete {directory} to start again"
            )
        self.split, self.next, self.written = int(state["split"]), int(state["next"]), int(state["written"])
        self.sums = Sums(state)
        self.labels, self.done = [state["labels"]], json.loads(str(state["done"]))

    def save(self) -> None:
        state = {
            "settings": json.dumps(self.settings),
            "done": json.dumps(self.done),
            "split": self.split,
            "next": self.next,
            "written": self.written,
            "labels": np.concatenate(self.labels) if self.labels else np.zeros(0, np.int32),
            **self.sums.state(),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **state)
        files.write_atomically(self.path, lambda f: f.write(buffer.getvalue()), binary=True)

    def next_split(self, split: str) -> None:
        self.done[split] = {"images": self.written, "unreadable": self.next - self.written}
        self.split, self.next, self.written, self.labels, self.sums = self.split + 1, 0, 0, [], Sums()


def _jpeg_writer(directory: str, split: str, class_names, quality: int):
    """A tf.data map that writes each example as DIR/split/<class>/<index>.jpg (on TensorFlow's threads)."""
    names = [n.replace("/", "_") for n in class_names]
    for name in names:
        os.makedirs(os.path.join(directory, split, name), exist_ok=True)
    table = tf.constant(names)

    def write(e):
        file = tf.strings.as_string(e["index"], width=8, fill="0")
        path = tf.strings.join([directory, "/", split, "/", tf.gather(table, e["label"]), "/", file, ".jpg"])
        tf.io.write_file(path, tf.io.encode_jpeg(e["image"], quality=quality))
        return e

    return write


def _copy_split(data: datasets.Data, position: _Position, directory: str, file_format: str, quality: int) -> None:
    """Copies split `position.split` from `position.next` on, saving the position as it goes."""
    split = records.SPLITS[position.split]
    source = data.train if split == "train" else data.eval
    ds = _readable(source, position.next)
    if file_format == "jpeg":
        ds = ds.map(_jpeg_writer(directory, split, data.class_names, quality), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(_BATCH)
    if split == "train":
        ds = ds.map(_with_sums, num_parallel_calls=tf.data.AUTOTUNE)
    pixels = None
    if file_format == "records":
        pixels = open(records.pixels_path(directory, split), "r+b" if position.next else "wb")  # noqa: SIM115
        saved_bytes = position.written * position.settings["resize_size"] ** 2 * 3
        if os.fstat(pixels.fileno()).st_size < saved_bytes:
            pixels.close()
            raise ValueError(
                f"{records.pixels_path(directory, split)} is shorter than what was saved as written: it was cut "
                f"or changed since; delete {directory} and prepare again"
            )
        pixels.truncate(saved_bytes)  # drops what was written past the saved position
        pixels.seek(0, os.SEEK_END)
    progress, saved = Progress(f"copy {split}", source.size), time.monotonic()
    try:
        for batch in ds.prefetch(4).as_numpy_iterator():
            _check_not_gone(position.next, batch["index"], data)
            with stopping.held():  # a signal waits until the batch is written and counted
                if pixels is not None:
                    pixels.write(batch["image"].tobytes())
                if "sums" in batch:
                    position.sums.add(batch["sums"])
                position.labels.append(batch["label"].astype(np.int32))
                position.written += len(batch["label"])
                position.next = int(batch["index"][-1]) + 1
            progress.update(position.next)
            if time.monotonic() - saved > _SAVE_EVERY_SECONDS:
                _save(position, pixels)
                saved = time.monotonic()
    except BaseException:  # a signal, a full disk: keep what is written for the next run
        _save(position, pixels)
        raise
    finally:
        if pixels is not None:
            pixels.close()
    _check_not_gone(position.next, np.array([source.size]), data)
    position.next = source.size
    progress.update(source.size, force=True)


def _check_space(directory: str, position: _Position, side: int) -> None:
    """Stops before writing when the records cannot fit (JPEGs' size is not known in advance)."""
    to_write = sum(position.settings[split] for split in records.SPLITS[position.split :]) - position.written
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(os.path.abspath(existing))
    needed, free = to_write * side * side * 3, shutil.disk_usage(existing).free
    if needed > free:
        raise ValueError(
            f"the records need {needed / 1e9:,.1f} GB more and {directory} has {free / 1e9:,.1f} GB free: "
            "free some space, choose another --copy_to, or write the smaller --format=jpeg copy",
        )


class SourceGone(OSError):
    """The data stopped being readable in the middle of a copy."""


def _check_not_gone(position: int, readable: np.ndarray, data: datasets.Data) -> None:
    """Stops when a whole batch of files in a row could not be read, between `position` and the next
    `readable` indices: a source that went away (an unmounted disk, a dropped network file system)
    would otherwise give a copy with holes."""
    missed = int(np.max(np.diff(np.concatenate([[position], readable])) - 1))
    if missed >= _BATCH:
        raise SourceGone(
            f"{missed} files in a row could not be read (latest: {data.unreadable.latest()}): "
            "the data may be gone; fix the storage and rerun the same command to continue"
        )


def _save(position: _Position, pixels) -> None:
    """The position, once every byte before it is on disk."""
    if pixels is not None:
        pixels.flush()
        os.fsync(pixels.fileno())
    elif position.settings["format"] == "jpeg":
        os.sync()  # the JPEGs TensorFlow wrote
    position.save()


def write_copy(
    data: datasets.Data, directory: str, side: int, *, file_format: str = "records", quality: int = 90
) -> dict:
    """Both splits of `data` (images `side` x `side`) in `directory` as `file_format` ("records" or
    "jpeg"), the training split's statistics computed in the same pass; resumes an interrupted copy.
    Returns what `prepared.json` says."""
    if file_format not in FORMATS:
        raise ValueError(f"--format={file_format!r} is not one of {', '.join(FORMATS)}")
    settings = {
        "format": file_format,
        "resize_size": side,
        "quality": quality if file_format == "jpeg" else None,
        "classes": list(data.class_names),
        "train": data.train.size,
        "val": data.eval.size,
    }
    marker = os.path.join(directory, datasets.PREPARED_FILE)
    if os.path.exists(marker):
        done = files.read_json(marker, "")
        if {k: done.get(k) for k in settings} == settings:
            with contextlib.suppress(FileNotFoundError):  # left by a stop between the marker and its removal
                os.unlink(os.path.join(directory, PROGRESS_FILE))
            return done
        raise ValueError(
            f"{directory} already holds a finished copy ({done.get('format', 'jpeg')}, {done.get('resize_size')} px, "
            f"{done.get('train')} + {done.get('val')} images): choose another --copy_to, or delete it to write it again"
        )
    position, stats = _Position(directory, settings), None
    if not os.path.exists(position.path) and os.path.isdir(directory) and os.listdir(directory):
        raise ValueError(f"{directory} holds other files: give --copy_to a new or empty directory")
    if file_format == "records":
        _check_space(directory, position, side)
    os.makedirs(directory, exist_ok=True)
    position.save()  # from the first byte on, a rerun knows what this directory holds
    while position.split < len(records.SPLITS):
        split = records.SPLITS[position.split]
        _copy_split(data, position, directory, file_format, quality)
        labels = np.concatenate(position.labels) if position.labels else np.zeros(0, np.int32)
        if file_format == "records":
            path = records.labels_path(directory, split)
            files.write_atomically(path, lambda f, labels=labels: np.save(f, labels), binary=True)
        if split == "train":
            stats = position.sums.statistics()
            statistics.write_statistics(directory, **stats)
        position.next_split(split)
        position.save()
    if stats is None:  # resumed after the training split was done
        with np.load(os.path.join(directory, statistics.STATS_FILE)) as saved:
            stats = {key: saved[key] for key in saved.files}
    report = {**settings, "written": position.done, "statistics_images": int(stats["count"])}
    files.write_json(marker, report)
    os.unlink(position.path)
    return report


def prepare(config, copy_to: str | None, file_format: str = "records", quality: int = 90) -> dict:
    """Writes stats.npz beside the data, or the copy with its statistics; returns what was done."""
    data = datasets.create_data(config.data, config.model.num_classes)
    if copy_to:
        report = write_copy(data, copy_to, config.data.resize_size, file_format=file_format, quality=quality)
        with np.load(os.path.join(copy_to, statistics.STATS_FILE)) as saved:
            stats = {key: saved[key] for key in saved.files}
        report = {**report, "copy": copy_to}
    else:
        stats = compute_statistics(data.train)
        report = {"statistics_images": int(stats["count"])}
    report["pca_scale"] = np.asarray(stats["pca_scale"]).tolist()
    if config.data.source in ("folder", "tfds"):
        report["statistics"] = statistics.write_statistics(
            datasets.statistics_dir(config.data), **{k: stats[k] for k in ("mean", "pca_scale", "pca_axes", "count")}
        )
    report["unreadable_files"] = data.unreadable.count
    return report


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    report = prepare(cli.config_value(_CONFIG), flags.FLAGS.copy_to, flags.FLAGS.format, flags.FLAGS.quality)
    if "classes" in report:  # prepared.json has them all; a thousand lines would bury the rest
        report["classes"] = len(report["classes"])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    # Defined here, not on import, so that importing this module defines no flags.
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file naming the dataset (data.*).")
    flags.DEFINE_string("copy_to", None, "Also write the 256 x 256 copy of both splits here (resumable).")
    flags.DEFINE_enum("format", "records", FORMATS, "The copy's format: fixed-size uint8 records, or JPEGs.")
    flags.DEFINE_integer("quality", 90, "JPEG quality of a --format=jpeg copy.")
    flags.mark_flag_as_required("config")
    cli.run(main)
