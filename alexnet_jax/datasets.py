"""Sources on disk: tensorflow-datasets builds (ImageNet and others) and folders of image files.

  tfds    `data.name` as built by tensorflow-datasets in `data.data_dir`, in the array_record file
          format (random access; `tfds build NAME --file_format=array_record`). ImageNet needs its
          tar files first: see the README, "ImageNet".
  folder  `data.data_dir/{train,val}/<class>/*.{jpg,jpeg,png,bmp,gif}`, class names from the
          directories, no build step.

Images are decoded and rescaled to the resize size on the fly: with PIL, which turns grayscale,
CMYK, palette and alpha images into RGB and lets a corrupt, truncated or non-image file be left out
and counted rather than stop the run. A folder written by `python -m alexnet_jax.prepare --copy_to`
(marked by `prepared.json`) holds valid 256 x 256 RGB JPEGs only and is decoded by TensorFlow's
faster JPEG decoder. Statistics (mean, PCA of RGB) are ImageNet's published figures unless the
dataset directory holds its own (`stats.npz`, also written by `prepare`).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from alexnet_jax import input_pipeline, preprocess

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
STATS_FILE = "stats.npz"
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


def statistics_dir(data_config) -> str:
    """Where `stats.npz` of a folder or tfds dataset lives (and `prepare` writes it)."""
    if data_config.source == "folder":
        return data_config.data_dir
    import tensorflow_datasets as tfds

    return str(tfds.builder(data_config.name, data_dir=data_config.data_dir or None).data_dir)


def write_statistics(directory: str, mean: np.ndarray, pca_scale: np.ndarray, pca_axes: np.ndarray, **extra) -> str:
    """Writes `directory/stats.npz` (what `read_statistics` reads); returns its path."""
    path = os.path.join(directory, STATS_FILE)
    np.savez(path, mean=mean, pca_scale=pca_scale, pca_axes=pca_axes, **extra)
    return path


def read_statistics(directory: str, resize: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, pca_scale, pca_axes) from `directory/stats.npz`, else ImageNet's built-in figures."""
    path = os.path.join(directory, STATS_FILE)
    if not os.path.exists(path):
        return preprocess.IMAGENET_MEAN_RGB, preprocess.IMAGENET_PCA_SCALE, preprocess.IMAGENET_PCA_AXES
    with np.load(path) as stats:
        mean, scale, axes = stats["mean"], stats["pca_scale"], stats["pca_axes"]
    if mean.shape not in ((3,), (resize, resize, 3)):
        raise ValueError(
            f"{path} holds a {mean.shape[0]} x {mean.shape[1]} mean image but data.resize_size={resize}; "
            "rerun `python -m alexnet_jax.prepare` with this resize size"
        )
    return mean, scale, axes


def imagenet_classes() -> list[tuple[str, str]]:
    """The 1000 ILSVRC-2012 classes as (WordNet id, lemmas), in the label order of tfds and Caffe."""
    with open(IMAGENET_CLASSES_FILE) as f:
        return [tuple(line.rstrip("\n").split("\t")) for line in f if not line.startswith("#")]


def readable_class_names(names: list[str]) -> list[str]:
    """`names` with every ImageNet WordNet id (e.g. a folder named n01440764) replaced by its lemmas."""
    lemmas = dict(imagenet_classes())
    return [lemmas.get(name, name) for name in names]


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


def _robust_source(size: int, read, resize: int, unreadable: input_pipeline.UnreadableFiles):
    """A source of raw image files: `read(index) -> (name, encoded bytes, label)`, decoded by PIL;
    a file that fails is counted in `unreadable` and flagged, never raised."""

    def decode(index):
        name, encoded, label = read(int(index))
        try:
            return decode_rgb(encoded), np.int32(label), True
        except Exception:  # PIL raises many types for bad files; any of them means "skip it"
            unreadable.add(name)
            return np.zeros((resize, resize, 3), np.uint8), np.int32(label), False

    def load(index):
        image, label, ok = tf.numpy_function(decode, [index], (tf.uint8, tf.int32, tf.bool), stateful=False)
        image = tf.ensure_shape(image, [None, None, 3])
        resized = preprocess.resize_shorter_and_center_crop(tf.cast(image, tf.float32), resize)
        return resized, tf.reshape(label, []), tf.reshape(ok, [])

    return input_pipeline.Source(size=size, load=load, may_fail=True)


def _files_source(paths, labels, resize, unreadable, prepared: bool) -> input_pipeline.Source:
    if prepared:
        path_table = tf.constant(paths)
        label_table = tf.constant(np.asarray(labels, np.int32))

        def load(i):
            image = tf.io.decode_jpeg(tf.io.read_file(tf.gather(path_table, i)), channels=3)
            image = tf.ensure_shape(image, [resize, resize, 3])
            return tf.cast(image, tf.float32), tf.gather(label_table, i), tf.constant(True)

        def load_window(i, top, left, side):
            window = tf.stack([top, left, side, side])
            image = tf.io.decode_and_crop_jpeg(tf.io.read_file(tf.gather(path_table, i)), window, channels=3)
            image = tf.ensure_shape(image, [side, side, 3])
            return tf.cast(image, tf.float32), tf.gather(label_table, i), tf.constant(True)

        return input_pipeline.Source(size=len(paths), load=load, load_window=load_window)

    def read(index):
        with open(paths[index], "rb") as f:
            return paths[index], f.read(), labels[index]

    return _robust_source(len(paths), read, resize, unreadable)


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
        raise FileNotFoundError(f"no images in {os.path.join(root, split)}/<class>/ (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return paths, labels


def load_folder(data_config) -> input_pipeline.Data:
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
    unreadable = input_pipeline.UnreadableFiles()
    splits = [_list_split(root, split, classes) for split in (data_config.train_split, eval_split)]
    train, evaluation = (_files_source(*s, resize, unreadable, prepared is not None) for s in splits)
    mean, scale, axes = read_statistics(root, resize)
    return input_pipeline.Data(train, evaluation, len(classes), tuple(classes), mean, scale, axes, unreadable)


def _prepared_size(root: str) -> int | None:
    path = os.path.join(root, PREPARED_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return int(json.load(f)["resize_size"])


def _tfds_source(name, split, data_dir, resize, unreadable) -> input_pipeline.Source:
    import tensorflow_datasets as tfds

    records = tfds.data_source(
        name, split=split, data_dir=data_dir, download=False, decoders={"image": tfds.decode.SkipDecoding()}
    )

    def read(index):
        record = records[index]
        return f"{name}/{split}[{index}]", record["image"], record["label"]

    return _robust_source(len(records), read, resize, unreadable)


def load_tfds(data_config) -> input_pipeline.Data:
    """A tensorflow-datasets build, read by random access; a clear message if it is not built."""
    import tensorflow_datasets as tfds

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
        manual_dir = os.path.join(os.path.dirname(os.path.dirname(builder.data_dir)), "downloads", "manual")
        hint = (
            IMAGENET_HELP.format(manual_dir=manual_dir, data_dir=os.path.dirname(os.path.dirname(builder.data_dir)))
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
    resize, unreadable = data_config.resize_size, input_pipeline.UnreadableFiles()
    train, evaluation = (
        _tfds_source(data_config.name, split, data_dir, resize, unreadable)
        for split in (data_config.train_split, data_config.eval_split)
    )
    label = builder.info.features["label"]
    mean, scale, axes = read_statistics(builder.data_dir, resize)
    return input_pipeline.Data(train, evaluation, label.num_classes, tuple(label.names), mean, scale, axes, unreadable)


def load(data_config) -> input_pipeline.Data:
    """The on-disk source that `data_config.source` names."""
    if data_config.source == "folder":
        return load_folder(data_config)
    if data_config.source == "tfds":
        return load_tfds(data_config)
    raise ValueError(f"data.source={data_config.source!r} is not one of 'tfds', 'folder', 'digits', 'fake'")
