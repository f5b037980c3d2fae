"""The prepared copy as fixed-size records: each image of a split as S x S x 3 uint8 pixels, in a row.

A directory written by `python -m alexnet_jax.prepare --copy_to=DIR --format=records` holds

    DIR/train.u8, DIR/val.u8                  N x S x S x 3 bytes, no header: image i's rows, top to
                                              bottom, RGB, at byte offset i * S * S * 3
    DIR/train_labels.npy, DIR/val_labels.npy  int32, one label per record
    DIR/stats.npz                             the training split's statistics (statistics.py)
    DIR/prepared.json                         format, size, class names and counts; written last

so that reading a training patch costs a read and a copy instead of a JPEG decode: the patch's
rows come in one read (`os.preadv`, which releases the GIL, so batches are read on several
threads at once) and its columns are copied into the batch; the reflection, the mean image and
the colour shift are applied on the device (steps.normalise_images). At 256 x 256 ImageNet's
1,281,167 training images take 251.9 GB (196,608 bytes each) and its 50,000 validation images
9.8 GB; the JPEG copy is several times smaller and decodes each window instead (docs/data.md).
"""

from __future__ import annotations

import os

import numpy as np

from alexnet_jax import files
from alexnet_jax.image_files import UnreadableFiles
from alexnet_jax.statistics import STATS_FILE

FORMAT = "records"
PREPARED_FILE = "prepared.json"  # what `prepare` wrote, and that it finished (the JPEG copy has one too)
_ALIGNMENT = 64
_AGAIN = "delete {} and run prepare again"
_DESCRIPTION_KEYS = ("format", "resize_size", "classes", "written")
SPLITS = ("train", "val")


def pixels_path(directory: str, split: str) -> str:
    return os.path.join(directory, f"{split}.u8")


def labels_path(directory: str, split: str) -> str:
    return os.path.join(directory, f"{split}_labels.npy")


def _aligned_empty(shape: tuple) -> np.ndarray:
    """An uninitialised uint8 array at a 64-byte boundary: TensorFlow takes such an array from
    `tf.numpy_function` without copying it (a batch of 224 x 224 patches is 19 MB)."""
    size = int(np.prod(shape))
    buffer = np.empty(size + _ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % _ALIGNMENT
    return buffer[start : start + size].reshape(shape)


class RecordFile:
    """One split's records, read by index: whole images or windows of them, a batch at a time."""

    def __init__(self, directory: str, split: str, side: int):
        self.path, self.side = pixels_path(directory, split), side
        self.record_bytes = side * side * 3
        try:
            self.labels = np.load(labels_path(directory, split)).astype(np.int32)
        except (ValueError, EOFError) as error:  # empty, cut short, not an array file
            raise files.CorruptFile(
                f"{labels_path(directory, split)} cannot be read ({files.describe(error)}): {_AGAIN.format(directory)}"
            ) from None
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 (open as long as the run reads it)
        size = os.fstat(self._file.fileno()).st_size
        expected = len(self.labels) * self.record_bytes
        if size != expected:
            self._file.close()
            raise ValueError(
                f"{self.path} holds {size:,} bytes where {len(self.labels):,} records of {side} x {side} x 3 "
                f"take {expected:,}: it was cut short or changed after `prepare` wrote it; {_AGAIN.format(directory)}"
            )

    @property
    def count(self) -> int:
        return len(self.labels)

    def read(self, indices: np.ndarray, tops: np.ndarray, lefts: np.ndarray, crop: int, unreadable: UnreadableFiles):
        """(images (B, crop, crop, 3) uint8, ok (B,) bool) for records `indices`, each the window at
        (top, left); crop = side reads whole images. A record the system cannot read (an I/O error,
        a file cut short since it was opened) is zeros with ok False, counted with the reason."""
        images = _aligned_empty((len(indices), crop, crop, 3))
        ok = np.ones(len(indices), bool)
        rows = np.empty((crop, self.side, 3), np.uint8)
        row_bytes = self.side * 3
        for i, (index, top, left) in enumerate(zip(indices.tolist(), tops.tolist(), lefts.tolist())):
            try:
                got = os.preadv(self._file.fileno(), [rows], index * self.record_bytes + top * row_bytes)
                if got != rows.nbytes:
                    raise OSError(f"cut short: {got:,} of {rows.nbytes:,} bytes")
            except OSError as error:
                ok[i], images[i] = False, 0
                unreadable.add(f"{self.path}[{index}]", files.describe(error))
                continue
            images[i] = rows[:, left : left + crop]
        return images, ok

    def close(self) -> None:
        self._file.close()


def description(root: str) -> dict:
    """What `prepared.json` says of a directory `prepare --format=records` finished."""
    marker = os.path.join(root, PREPARED_FILE)
    if not root or not os.path.isfile(marker):
        partial = root and os.path.isfile(pixels_path(root, "train"))
        raise FileNotFoundError(
            f"{root or 'data.data_dir'} holds no finished records: "
            + (
                "prepare was interrupted; rerun the same prepare command to finish it"
                if partial
                else "write them with `python -m alexnet_jax.prepare --copy_to=DIR --format=records`"
            )
        )
    prepared = files.read_json(marker, "")
    if isinstance(prepared, dict) and prepared.get("format", FORMAT) != FORMAT:
        raise ValueError(f"{root} holds a JPEG copy, not records: set --config.data.source=folder")
    if not isinstance(prepared, dict) or not all(key in prepared for key in _DESCRIPTION_KEYS):
        raise files.CorruptFile(f"{marker} is not what prepare writes: {_AGAIN.format(root)}")
    stats = os.path.join(root, STATS_FILE)
    if not os.path.isfile(stats):
        raise FileNotFoundError(f"{stats}, the statistics of the records, is missing: {_AGAIN.format(root)}")
    return prepared


def open_splits(root: str, side: int) -> tuple[list[str], list[RecordFile]]:
    """The class names and both splits' records of `root`, checked against what prepare wrote."""
    prepared = description(root)
    if int(prepared["resize_size"]) != side:
        size = prepared["resize_size"]
        raise ValueError(f"{root} was prepared at {size} x {size}; set --config.data.resize_size={size}")
    opened = []
    for split in SPLITS:
        opened.append(RecordFile(root, split, side))
        written = prepared["written"][split]["images"]
        if opened[-1].count != written:
            for file in opened:
                file.close()
            raise ValueError(
                f"{labels_path(root, split)} holds {opened[-1].count:,} labels where {root}'s prepared.json "
                f"counts {written:,} {split} images written: {_AGAIN.format(root)}"
            )
    return list(prepared["classes"]), opened
