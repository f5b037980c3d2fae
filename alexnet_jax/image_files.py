"""Image files as a file system hands them over: listed, read and decoded, whatever fails on the way.

A file can vanish after it was listed, be a dangling link, a directory named like an image, have no
read permission, fail with an I/O error, be empty or hold bytes no decoder reads. None of these stops
a run: the file is flagged (`ok` False, its image zeros) and counted in `UnreadableFiles` with the
operating system's or the decoder's words, and the caller leaves it out of the loss (training) or the
counts (evaluation) without moving any other example. Hidden files and folders (a leading dot, such as
`.ipynb_checkpoints` or macOS's `._photo.jpg`) are not data.

Reading and decoding run in TensorFlow, in parallel, inside the tf.data graph; only a file that
TensorFlow cannot read or decode is tried again in Python (its own open and read, then PIL), in one
`numpy_function` that holds the GIL, so the slow path costs only the rare file that needs it.
"""

from __future__ import annotations

import io
import os
import re
import threading

import numpy as np
import tensorflow as tf
from PIL import Image

from alexnet_jax import files, preprocess

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (a leading dot): never data."""
    return name.startswith(".")


def list_images(directory: str) -> list[str]:
    """The image files (by extension) directly in `directory`, hidden ones left out, sorted."""
    return sorted(
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)
    )


class UnreadableFiles:
    """The distinct files that could not be read or decoded, with why; thread-safe (tf.data reads from
    many threads)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._reasons: dict[str, str] = {}  # insertion-ordered: the latest last
        self.lost_batch: int | None = None  # the first step of which no image could be read here

    def lose_batch(self, step: int) -> None:
        """Notes a training step of which not one image could be read (the data is gone, not a file)."""
        if self.lost_batch is None:
            self.lost_batch = step

    def add(self, path: str, reason: str = "") -> None:
        with self._lock:
            self._reasons.setdefault(path, reason)  # the first reason: why the file failed to be read

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._reasons)

    def latest(self) -> str | None:
        """`path (reason)` of the file counted last, or None."""
        with self._lock:
            if not self._reasons:
                return None
            path = next(reversed(self._reasons))
            return f"{path} ({self._reasons[path]})" if self._reasons[path] else path


def why_unreadable(error: BaseException) -> str:
    """The reason a file could not be used, in a user's words: the operating system's, or what the
    decoder said (without the in-memory object PIL names)."""
    if files.os_errno(error) is not None:
        return files.describe(error)
    text = re.sub(
        r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error).strip().splitlines()[0] if str(error) else ""
    )
    return f"not an image that can be decoded: {text or type(error).__name__}"


def decode_rgb(encoded: bytes) -> np.ndarray:
    """Any image file PIL reads -> (H, W, 3) uint8 RGB. Raises on a corrupt or non-image file."""
    with Image.open(io.BytesIO(encoded)) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # Transparent pixels over white, not over whatever colour their RGB happens to hold.
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))


def read_rgb(path: str) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB; raises OSError or PIL's errors for a file that cannot be read."""
    with open(path, "rb") as f:
        return decode_rgb(f.read())


def tf_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """TensorFlow's decoders (JPEG, PNG, GIF's first frame, BMP), any channel count -> (H, W, 3)
    uint8, transparency over white as `decode_rgb` does. Raises (inside tf.data) on bytes it
    cannot decode."""
    image = tf.io.decode_image(encoded, channels=0, expand_animations=False, dtype=tf.uint8)
    channels = tf.shape(image)[-1]
    colour = tf.cond(channels < 3, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3])

    def over_white():  # gray + alpha (2 channels) or RGBA (4)
        alpha = tf.cast(image[..., -1:], tf.float32) / 255.0
        return tf.cast(tf.round(tf.cast(colour, tf.float32) * alpha + 255.0 * (1.0 - alpha)), tf.uint8)

    return tf.ensure_shape(tf.cond(tf.equal(channels % 2, 0), over_white, lambda: colour), [None, None, 3])


_GROUP = 32  # elements `_first_that_works` tries at once


def _first_that_works(ds: tf.data.Dataset, fast, slow, grouped: bool = False) -> tf.data.Dataset:
    """Each element through `fast` (TensorFlow ops), or through `slow` where `fast` raises.

    A graph cannot catch an op's error; a dataset that drops the failed attempt can, at the cost of
    building two small datasets. `grouped` (for outputs of one shape) pays that once per group of
    elements instead of once per element: a group that `fast` gets through whole passes in one go,
    and only a group with a failure is redone element by element."""

    def each(element):
        tried = tf.data.Dataset.from_tensors(element).map(fast).ignore_errors()
        return tried.concatenate(tf.data.Dataset.from_tensors(element).map(slow)).take(1)

    if not grouped:
        return ds.interleave(
            each, cycle_length=16, block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    spec = ds.map(fast).element_spec

    def group(elements):
        whole = tf.data.Dataset.from_tensors(elements).map(lambda g: tf.map_fn(fast, g, fn_output_signature=spec))
        one_by_one = tf.data.Dataset.from_tensors(elements).unbatch().flat_map(each).batch(_GROUP)
        return whole.ignore_errors().concatenate(one_by_one).take(1)

    grouped_ds = ds.batch(_GROUP).interleave(
        group, cycle_length=4, block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return grouped_ds.unbatch()


def robust_decode(ds: tf.data.Dataset, resize: int, unreadable: UnreadableFiles) -> tf.data.Dataset:
    """Dicts with a `name` -> the same with `image` (uint8 (resize, resize, 3), shorter side to `resize`
    and the centre square) and `ok`. The bytes are the element's `encoded` where it has them (a
    record read already), else the file at `name`. A file that cannot be read or decoded is flagged
    and counted, never raised."""
    has_bytes = "encoded" in ds.element_spec

    def by_tf(e):
        encoded = e["encoded"] if has_bytes else tf.io.read_file(e["name"])
        return {**e, "image": tf_rgb(encoded), "ok": tf.constant(True)}

    def by_python(e):
        def decode(encoded, name):
            try:
                return (decode_rgb(encoded) if has_bytes else read_rgb(name.decode())), True
            except Exception as error:  # every failure of a file (OSError, PIL's many types) means "skip it"
                unreadable.add(name.decode(), why_unreadable(error))
                return np.zeros((1, 1, 3), np.uint8), False

        encoded = e["encoded"] if has_bytes else tf.constant(b"")
        image, ok = tf.numpy_function(decode, [encoded, e["name"]], (tf.uint8, tf.bool))
        return {**e, "image": tf.ensure_shape(image, [None, None, 3]), "ok": tf.reshape(ok, [])}

    def resized(e):
        e = {k: v for k, v in e.items() if k not in ("encoded", "name")}
        image = preprocess.resize_shorter_and_center_crop(e["image"], resize)
        return {**e, "image": tf.where(e["ok"], image, tf.zeros_like(image))}

    decoded = _first_that_works(ds, by_tf, by_python)
    return decoded.map(resized, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def robust_prepared(ds: tf.data.Dataset, resize: int, side: int | None, unreadable: UnreadableFiles) -> tf.data.Dataset:
    """Dicts with the `name` of a file of a prepared copy (a `resize` x `resize` RGB JPEG) -> `image`:
    the whole image, or (`side`) only the `side` x `side` window at the element's `top`, `left`,
    decoding no more of the file than that window; and `ok`. A file that cannot be read, decoded, or
    is not of the prepared size is flagged and counted, never raised."""
    out = resize if side is None else side

    def by_tf(e):
        encoded = tf.io.read_file(e["name"])
        if side is None:
            image = tf.io.decode_jpeg(encoded, channels=3)
        else:
            image = tf.io.decode_and_crop_jpeg(encoded, tf.stack([e["top"], e["left"], side, side]), channels=3)
        return {**e, "image": tf.ensure_shape(image, [out, out, 3]), "ok": tf.constant(True)}

    def by_python(e):
        def decode(name, top, left):
            try:
                image = read_rgb(name.decode())
                if image.shape[:2] != (resize, resize):
                    raise ValueError(f"a {image.shape[0]} x {image.shape[1]} image in a copy prepared at {resize}")
                window = image if side is None else image[top : top + side, left : left + side]
                return np.ascontiguousarray(window), True
            except Exception as error:  # every failure of a file means "skip it"
                unreadable.add(name.decode(), why_unreadable(error))
                return np.zeros((out, out, 3), np.uint8), False

        corner = (e["top"], e["left"]) if side is not None else (tf.constant(0), tf.constant(0))
        image, ok = tf.numpy_function(decode, [e["name"], *corner], (tf.uint8, tf.bool))
        return {**e, "image": tf.ensure_shape(image, [out, out, 3]), "ok": tf.reshape(ok, [])}

    decoded = _first_that_works(ds, by_tf, by_python, grouped=True)
    return decoded.map(lambda e: {k: v for k, v in e.items() if k != "name"})
