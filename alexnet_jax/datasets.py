"""Where the images come from: the sources, their statistics, and the `Data` a run trains on.

Every source is random-access: a number of examples and, given a tf.data dataset of `index`es,
each example's image at the "resize" size (256 x 256 for ImageNet, section 2) as whole uint8 pixels
(as in the paper's stored copy), its label, and whether it could be read.

Sources (config `data.source`):
  digits  scikit-learn's 1,797 handwritten digits (8 x 8, 10 classes), shipped with the package:
          the embedded default, no download. Every 5th image is held out for evaluation.
  fake    random images of the configured shapes, each class tinted its own colour so that a
          network can learn it: for benchmarks and smoke tests.
  folder  `data.data_dir/{train,val}/<class>/*.{jpg,jpeg,png,bmp,gif}`, class names from the
          directories, no build step.
  tfds    `data.name` as built by tensorflow-datasets in `data.data_dir`, in the array_record
          format (random access; `tfds build NAME --file_format=array_record`).

Image files are decoded by TensorFlow inside the tf.data graph, in parallel on every core; the bytes
it cannot decode go to PIL, and a file neither can read is left out and counted (`UnreadableFiles`),
never raised. Grayscale, CMYK, palette and alpha images become RGB, transparent pixels over white.
A folder written by `python -m alexnet_jax.prepare --copy_to` (marked by `prepared.json`) holds
valid 256 x 256 RGB JPEGs only, and training decodes just each crop's window of them.

Statistics (the mean image, the principal axes of the RGB pixel covariance) are the dataset's own
(`stats.npz`, written by `prepare`; statistics.py) or, until it is prepared, ImageNet's published
figures.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import threading
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from PIL import Image

from alexnet_jax import preprocess
from alexnet_jax.statistics import read_statistics, rgb_statistics

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
PREPARED_FILE = "prepared.json"
# ILSVRC-2012's classes in label order with their WordNet lemmas (the list that tensorflow-datasets
# ships for ImageNet models, Apache 2.0), so that predictions read "tabby, tabby cat", not "n02123045".
IMAGENET_CLASSES_FILE = os.path.join(os.path.dirname(__file__), "imagenet_classes.tsv")

IMAGENET_HELP = (
    "ImageNet cannot be downloaded automatically. Download ILSVRC2012_img_train.tar and "
    "ILSVRC2012_img_val.tar from https://image-net.org, put them in {manual_dir}, then run "
    "`tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual_dir} --file_format=array_record` "
    "(README, 'ImageNet')."
)


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
class Source:
    """One split.

    `attach(ds)` maps a dataset of dicts holding an int64 `index` to the same dicts with `image`
    (uint8 (S, S, 3) at the resize size S), `label` (int32) and `ok` (False for a file that could
    not be read; its image is then zeros) added. `attach_window(ds, side)`, where a source has it,
    does the same for dicts that also hold a crop's `top` and `left`, and gives only that
    `side` x `side` window, decoding no more of the file than it needs. `may_fail` says whether
    `ok` can be False at all.
    """

    size: int
    attach: Callable[[tf.data.Dataset], tf.data.Dataset]
    attach_window: Callable[[tf.data.Dataset, int], tf.data.Dataset] | None = None
    may_fail: bool = False

    def examples(self, indices) -> tf.data.Dataset:
        """(image, label, ok) of each index, in order."""
        ds = tf.data.Dataset.from_tensor_slices({"index": tf.constant(indices, tf.int64)})
        return self.attach(ds).map(lambda e: (e["image"], e["label"], e["ok"]))

    def load(self, index: int) -> tuple[np.ndarray, int, bool]:
        """One example as NumPy (for tools and tests; training reads whole datasets)."""
        image, label, ok = next(self.examples([index]).as_numpy_iterator())
        return image, int(label), bool(ok)


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


def statistics_dir(data_config) -> str:
    """Where `stats.npz` of a folder or tfds dataset lives (and `prepare` writes it)."""
    if data_config.source == "folder":
        return data_config.data_dir
    import tensorflow_datasets as tfds  # only tfds sources need it (a heavy import)

    return str(tfds.builder(data_config.name, data_dir=data_config.data_dir or None).data_dir)


# ------------------------------------------------------------------------------------- decoding


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


def _tf_rgb(encoded: tf.Tensor) -> tf.Tensor:
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


def _robust_decode(ds: tf.data.Dataset, resize: int, unreadable: UnreadableFiles) -> tf.data.Dataset:
    """Dicts with the file's `encoded` bytes and `name` -> `image` (uint8 (resize, resize, 3)) and `ok`.

    Each file is decoded by TensorFlow in parallel threads; where it fails, PIL gets the bytes (in
    one `numpy_function`, which holds the GIL, so only the rare file TF rejects takes that path),
    and a file that PIL cannot read either is counted in `unreadable` and flagged, never raised.
    """

    def by_pil(element):
        def decode(encoded, name):
            try:
                return decode_rgb(encoded), True
            except Exception:  # PIL raises many types for bad files; any of them means "skip it"
                unreadable.add(name.decode())
                return np.zeros((1, 1, 3), np.uint8), False

        image, ok = tf.numpy_function(decode, [element["encoded"], element["name"]], (tf.uint8, tf.bool))
        return {**element, "image": tf.ensure_shape(image, [None, None, 3]), "ok": tf.reshape(ok, [])}

    def one(element):
        # The first of: TF's decoding (dropped if it raises), else PIL's.
        by_tf = tf.data.Dataset.from_tensors(element).map(lambda e: {**e, "image": _tf_rgb(e["encoded"]), "ok": True})
        return by_tf.ignore_errors().concatenate(tf.data.Dataset.from_tensors(element).map(by_pil)).take(1)

    def resized(element):
        element = {k: v for k, v in element.items() if k not in ("encoded", "name")}
        image = preprocess.resize_shorter_and_center_crop(element["image"], resize)
        return {**element, "image": tf.where(element["ok"], image, tf.zeros_like(image))}

    decoded = ds.interleave(
        one, cycle_length=16, block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return decoded.map(resized, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _encoded_source(size: int, read: Callable, resize: int, unreadable: UnreadableFiles) -> Source:
    """A source of image files: `read(element) -> element` with `encoded`, `name`, `label` added."""

    def attach(ds):
        return _robust_decode(ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), resize, unreadable)

    return Source(size=size, attach=attach, may_fail=True)


# --------------------------------------------------------------------------------------- sources


def _in_memory(images: np.ndarray, labels: np.ndarray) -> Source:
    image_table, label_table = tf.constant(images), tf.constant(labels.astype(np.int32))

    def attach(ds):
        return ds.map(
            lambda e: {
                **e,
                "image": tf.gather(image_table, e["index"]),
                "label": tf.gather(label_table, e["index"]),
                "ok": tf.constant(True),
            }
        )

    return Source(size=len(labels), attach=attach)


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w, 3) uint8 -> (N, size, size, 3) uint8 by the paper's shorter-side rule (all at once:
    the images share one shape)."""
    if images.shape[1:3] == (size, size):
        return images
    return preprocess.resize_shorter_and_center_crop(tf.constant(images), size).numpy()


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
    from sklearn.datasets import load_digits as sklearn_digits  # only this source needs scikit-learn

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


def _prepared_source(paths: list[str], labels: list[int], resize: int) -> Source:
    """A folder written by `prepare`: valid resize x resize RGB JPEGs, decoded by TF alone."""
    path_table, label_table = tf.constant(paths), tf.constant(np.asarray(labels, np.int32))

    def read(e):
        return {
            **e,
            "encoded": tf.io.read_file(tf.gather(path_table, e["index"])),
            "label": tf.gather(label_table, e["index"]),
        }

    def attach(ds):
        def decode(e):
            image = tf.ensure_shape(tf.io.decode_jpeg(e.pop("encoded"), channels=3), [resize, resize, 3])
            return {**e, "image": image, "ok": tf.constant(True)}

        return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE).map(decode, num_parallel_calls=tf.data.AUTOTUNE)

    def attach_window(ds, side):
        def decode(e):
            window = tf.stack([e["top"], e["left"], side, side])
            image = tf.io.decode_and_crop_jpeg(e.pop("encoded"), window, channels=3)
            return {**e, "image": tf.ensure_shape(image, [side, side, 3]), "ok": tf.constant(True)}

        return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE).map(decode, num_parallel_calls=tf.data.AUTOTUNE)

    return Source(size=len(paths), attach=attach, attach_window=attach_window)


def _files_source(paths: list[str], labels: list[int], resize: int, unreadable: UnreadableFiles) -> Source:
    path_table, label_table = tf.constant(paths), tf.constant(np.asarray(labels, np.int32))

    def read(e):
        path = tf.gather(path_table, e["index"])
        return {**e, "encoded": tf.io.read_file(path), "name": path, "label": tf.gather(label_table, e["index"])}

    return _encoded_source(len(paths), read, resize, unreadable)


def _list_split(root: str, split: str, classes: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        directory = os.path.join(root, split, name)
        if not os.path.isdir(directory):
            continue
        for file in sorted(os.listdir(directory)):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(directory, file))
                labels.append(label)
    if not paths:
        raise FileNotFoundError(
            f"no images in {os.path.join(root, split)}/<class>/ (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return paths, labels


def _prepared_size(root: str) -> int | None:
    path = os.path.join(root, PREPARED_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return int(json.load(f)["resize_size"])


def load_folder(data_config) -> Data:
    """`root/train/<class>/*` and `root/val/<class>/*` (class names from `train`)."""
    root = data_config.data_dir
    train_dir = os.path.join(root, data_config.train_split)
    eval_split = data_config.eval_split
    if eval_split == "validation" and not os.path.isdir(os.path.join(root, eval_split)):
        eval_split = "val"  # the tfds name is the config default; folders usually say val
    if not root or not os.path.isdir(train_dir):
        raise FileNotFoundError(
            f"image folder {root!r} has no {data_config.train_split}/ directory: expected "
            f"{root or 'DIR'}/{data_config.train_split}/<class>/*.jpg and {root or 'DIR'}/{eval_split}/<class>/*.jpg; "
            "set --config.data.data_dir=DIR"
        )
    classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
    resize = data_config.resize_size
    prepared = _prepared_size(root)
    if prepared is not None and prepared != resize:
        raise ValueError(f"{root} was prepared at {prepared} x {prepared}; set --config.data.resize_size={prepared}")
    unreadable = UnreadableFiles()
    splits = [_list_split(root, split, classes) for split in (data_config.train_split, eval_split)]
    if prepared is not None:
        train, evaluation = (_prepared_source(*split, resize) for split in splits)
    else:
        train, evaluation = (_files_source(*split, resize, unreadable) for split in splits)
    mean, scale, axes = read_statistics(root, resize)
    return Data(train, evaluation, len(classes), tuple(classes), mean, scale, axes, unreadable)


def _tfds_source(name, split, data_dir, resize, unreadable) -> Source:
    import tensorflow_datasets as tfds  # only tfds sources need it (a heavy import)

    records = tfds.data_source(
        name, split=split, data_dir=data_dir, download=False, decoders={"image": tfds.decode.SkipDecoding()}
    )

    def record(index):
        # Reading a record's bytes is the one step done in Python; decoding happens in the graph.
        example = records[int(index)]
        return np.asarray(example["image"], object).item(), np.int32(example["label"])

    def read(e):
        encoded, label = tf.numpy_function(record, [e["index"]], (tf.string, tf.int32), stateful=False)
        where = tf.strings.join([f"{name}/{split}[", tf.strings.as_string(e["index"]), "]"])
        return {**e, "encoded": tf.reshape(encoded, []), "name": where, "label": tf.reshape(label, [])}

    return _encoded_source(len(records), read, resize, unreadable)


def load_tfds(data_config) -> Data:
    """A tensorflow-datasets build, read by random access; a clear message if it is not built."""
    import tensorflow_datasets as tfds  # only tfds sources need it (a heavy import)

    data_dir = data_config.data_dir or None
    try:
        builder = tfds.builder(data_config.name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise FileNotFoundError(
            f"data.name={data_config.name!r} is neither in the tensorflow-datasets catalog nor built in "
            f"data.data_dir={data_config.data_dir or '~/tensorflow_datasets'}"
        ) from None
    if not builder.is_prepared():
        data_dir_flag = f" --data_dir={data_dir}" if data_dir else ""
        root = os.path.dirname(os.path.dirname(builder.data_dir))
        hint = (
            IMAGENET_HELP.format(manual_dir=os.path.join(root, "downloads", "manual"), data_dir=root)
            if data_config.name.startswith("imagenet")
            else f"Build it first: `tfds build {data_config.name}{data_dir_flag} --file_format=array_record`"
        )
        raise FileNotFoundError(f"dataset {data_config.name!r} is not prepared in {builder.data_dir}. {hint}")
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if "array_record" not in file_format:
        raise ValueError(
            f"{data_config.name!r} in {builder.data_dir} is stored as {file_format}; training reads examples by "
            f"index and needs array_record: rebuild with `tfds build {data_config.name} --file_format=array_record`"
        )
    resize, unreadable = data_config.resize_size, UnreadableFiles()
    train, evaluation = (
        _tfds_source(data_config.name, split, data_dir, resize, unreadable)
        for split in (data_config.train_split, data_config.eval_split)
    )
    label = builder.info.features["label"]
    mean, scale, axes = read_statistics(builder.data_dir, resize)
    return Data(train, evaluation, label.num_classes, tuple(label.names), mean, scale, axes, unreadable)


def create_data(data_config, num_classes: int) -> Data:
    """The dataset that `data_config` names, with a clear error for what is missing or wrong."""
    size = data_config.resize_size
    if data_config.source == "digits":
        data = load_digits(size)
    elif data_config.source == "fake":
        data = load_fake(data_config, size)
    elif data_config.source == "folder":
        data = load_folder(data_config)
    elif data_config.source == "tfds":
        data = load_tfds(data_config)
    else:
        raise ValueError(f"data.source={data_config.source!r} is not one of 'tfds', 'folder', 'digits', 'fake'")
    if data.num_classes != num_classes:
        raise ValueError(
            f"data source {data_config.source!r} has {data.num_classes} classes but model.num_classes={num_classes}; "
            f"set --config.model.num_classes={data.num_classes}"
        )
    return data


def imagenet_classes() -> list[tuple[str, str]]:
    """The 1000 ILSVRC-2012 classes as (WordNet id, lemmas), in the label order of tfds and Caffe."""
    with open(IMAGENET_CLASSES_FILE) as f:
        return [tuple(line.rstrip("\n").split("\t")) for line in f if not line.startswith("#")]


def readable_class_names(names: list[str]) -> list[str]:
    """`names` with every ImageNet WordNet id (e.g. a folder named n01440764) replaced by its lemmas."""
    lemmas = dict(imagenet_classes())
    return [lemmas.get(name, name) for name in names]
