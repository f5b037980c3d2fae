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
  records `data.data_dir` as `prepare --format=records` writes it: fixed-size uint8 records that
          training reads without decoding (records.py).

Image files are read and decoded as image_files.py says: by TensorFlow inside the tf.data graph,
in parallel on every core, with Python and PIL for what TensorFlow rejects; a file that cannot be
read or decoded in any way (vanished, a dangling link, no permission, an I/O error, empty, bad bytes)
is flagged and counted (`UnreadableFiles`), never raised, and keeps its place: an epoch's length and
every other example's position do not depend on it. Grayscale, CMYK, palette and alpha images become
RGB, transparent pixels over white. Hidden files and folders are not data. A folder written by
`python -m alexnet_jax.prepare --copy_to` (marked by `prepared.json`) holds 256 x 256 RGB JPEGs,
and training decodes just each crop's window of them.

Statistics (the mean image, the principal axes of the RGB pixel covariance) are the dataset's own
(`stats.npz`, written by `prepare`; statistics.py) or, until it is prepared, ImageNet's published
figures.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from alexnet_jax import files, preprocess, records
from alexnet_jax.image_files import (  # noqa: F401 (decode_rgb, IMAGE_EXTENSIONS: the tools read files too)
    IMAGE_EXTENSIONS,
    UnreadableFiles,
    decode_rgb,
    is_hidden,
    list_images,
    robust_decode,
    robust_prepared,
)
from alexnet_jax.statistics import read_statistics, rgb_statistics

PREPARED_FILE = records.PREPARED_FILE
# ILSVRC-2012's classes in label order with their WordNet lemmas (the list that tensorflow-datasets
# ships for ImageNet models, Apache 2.0), so that predictions read "tabby, tabby cat", not "n02123045".
IMAGENET_CLASSES_FILE = os.path.join(os.path.dirname(__file__), "imagenet_classes.tsv")

IMAGENET_HELP = (
    "ImageNet cannot be downloaded automatically. Download ILSVRC2012_img_train.tar and "
    "ILSVRC2012_img_val.tar from https://image-net.org, put them in {manual_dir}, then run "
    "`tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual_dir} --file_format=array_record` "
    "(README, 'ImageNet')."
)


@dataclasses.dataclass(frozen=True)
class Source:
    """One split.

    `attach(ds)` maps a dataset of dicts holding an int64 `index` to the same dicts with `image`
    (uint8 (S, S, 3) at the resize size S), `label` (int32) and `ok` (False for a file that could
    not be read; its image is then zeros) added. `attach_window(ds, side)`, where a source has it,
    does the same for dicts that also hold a crop's `top` and `left`, and gives only that
    `side` x `side` window, decoding no more of the file than it needs. `read_batch(ds, side)`,
    where a source has it, takes batches instead (each key (B,)) and gives (B, side, side, 3)
    windows, or whole images for side None: a source that reads a batch at a time is faster so.
    `may_fail` says whether `ok` can be False at all.
    """

    size: int
    attach: Callable[[tf.data.Dataset], tf.data.Dataset]
    attach_window: Callable[[tf.data.Dataset, int], tf.data.Dataset] | None = None
    read_batch: Callable[[tf.data.Dataset, int | None], tf.data.Dataset] | None = None
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


def _encoded_source(size: int, read: Callable, resize: int, unreadable: UnreadableFiles) -> Source:
    """A source of image files: `read(element) -> element` with `name`, `label` and, where the bytes
    are read already (records), `encoded` added."""

    def attach(ds):
        return robust_decode(ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), resize, unreadable)

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


def selected_classes(names: list[str], spec: str) -> list[str]:
    """The class names that config `data.classes` keeps ("" keeps all): comma-separated names, in its order."""
    if not spec:
        return list(names)
    wanted = [name.strip() for name in str(spec).split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown or len(set(wanted)) != len(wanted):
        problem = f"unknown: {', '.join(unknown)}" if unknown else "a class is named twice"
        raise ValueError(
            f"data.classes={spec!r} must name distinct classes of the data source; {problem} "
            f"(it has {', '.join(names[:12])})"
        )
    return wanted


def _from_arrays(
    images: np.ndarray, labels: np.ndarray, held_out: np.ndarray, class_names, size: int, classes: str = ""
) -> Data:
    kept_names = selected_classes(list(class_names), classes)
    if kept_names != list(class_names):  # data.classes: those classes only, relabelled in its order
        new_label = {class_names.index(name): i for i, name in enumerate(kept_names)}
        keep = np.isin(labels, list(new_label))
        images, held_out = images[keep], held_out[keep]
        labels, class_names = np.array([new_label[int(label)] for label in labels[keep]]), kept_names
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


def load_digits(size: int, classes: str = "") -> Data:
    """scikit-learn's handwritten digits as 3-channel images in [0, 255], every 5th held out (of
    `classes` only, when given: see `selected_classes`)."""
    from sklearn.datasets import load_digits as sklearn_digits  # only this source needs scikit-learn

    digits = sklearn_digits()
    gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=-1)
    held_out = np.arange(len(images)) % 5 == 0
    return _from_arrays(images, digits.target, held_out, [str(d) for d in range(10)], size, classes)


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


def _prepared_source(paths: list[str], labels: list[int], resize: int, unreadable: UnreadableFiles) -> Source:
    """A folder written by `prepare`: resize x resize RGB JPEGs, read and decoded by TensorFlow (only a
    file that fails goes to Python, and is counted if it fails there too)."""
    path_table, label_table = tf.constant(paths), tf.constant(np.asarray(labels, np.int32))

    def read(e):
        return {**e, "name": tf.gather(path_table, e["index"]), "label": tf.gather(label_table, e["index"])}

    def attach(ds):
        return robust_prepared(ds.map(read, num_parallel_calls=tf.data.AUTOTUNE), resize, None, unreadable)

    def attach_window(ds, side):
        return robust_prepared(ds.map(read, num_parallel_calls=tf.data.AUTOTUNE), resize, side, unreadable)

    return Source(size=len(paths), attach=attach, attach_window=attach_window, may_fail=True)


def _files_source(paths: list[str], labels: list[int], resize: int, unreadable: UnreadableFiles) -> Source:
    path_table, label_table = tf.constant(paths), tf.constant(np.asarray(labels, np.int32))

    def read(e):
        return {**e, "name": tf.gather(path_table, e["index"]), "label": tf.gather(label_table, e["index"])}

    return _encoded_source(len(paths), read, resize, unreadable)


def _list_split(root: str, split: str, classes: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        directory = os.path.join(root, split, name)
        if not os.path.isdir(directory):
            continue
        found = list_images(directory)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise FileNotFoundError(
            f"no images in {os.path.join(root, split)}/<class>/ (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return paths, labels


def _prepared(root: str) -> dict | None:
    """What `prepared.json` says of a JPEG copy written by `prepare` (None for other folders)."""
    path = os.path.join(root, PREPARED_FILE)
    if not os.path.exists(path):
        return None
    prepared = files.read_json(path, "")
    if not isinstance(prepared, dict) or "resize_size" not in prepared:
        raise files.CorruptFile(f"{path} is not what prepare writes: delete {root} and run prepare again")
    if prepared.get("format") == records.FORMAT:
        raise ValueError(
            f"{root} holds records written by `prepare --format=records`: set --config.data.source=records"
        )
    return prepared


def _prepared_size(root: str) -> int | None:
    prepared = _prepared(root)
    return None if prepared is None else int(prepared["resize_size"])


def load_folder(data_config) -> Data:
    """`root/train/<class>/*` and `root/val/<class>/*` (class names from `train`)."""
    root = data_config.data_dir
    train_dir = os.path.join(root, data_config.train_split)
    eval_split = data_config.eval_split
    if eval_split == "validation" and not os.path.isdir(os.path.join(root, eval_split)):
        eval_split = "val"  # the tfds name is the config default; folders usually say val
    copy = _prepared(root) if root else None
    prepared = None if copy is None else int(copy["resize_size"])
    if not root or not os.path.isdir(train_dir):
        raise FileNotFoundError(
            f"image folder {root!r} has no {data_config.train_split}/ directory: expected "
            f"{root or 'DIR'}/{data_config.train_split}/<class>/*.jpg and {root or 'DIR'}/{eval_split}/<class>/*.jpg; "
            "set --config.data.data_dir=DIR"
        )
    classes = sorted(d for d in os.listdir(train_dir) if not is_hidden(d) and os.path.isdir(os.path.join(train_dir, d)))
    if copy is not None and "classes" in copy:  # the source's class order, as the records keep it
        classes = [name.replace("/", "_") for name in copy["classes"]]
    classes = selected_classes(classes, data_config.get("classes", ""))
    resize = data_config.resize_size
    if prepared is not None and prepared != resize:
        raise ValueError(f"{root} was prepared at {prepared} x {prepared}; set --config.data.resize_size={prepared}")
    unreadable = UnreadableFiles()
    splits = [_list_split(root, split, classes) for split in (data_config.train_split, eval_split)]
    if prepared is not None:
        train, evaluation = (_prepared_source(*split, resize, unreadable) for split in splits)
    else:
        train, evaluation = (_files_source(*split, resize, unreadable) for split in splits)
    mean, scale, axes = read_statistics(root, resize)
    return Data(train, evaluation, len(classes), tuple(classes), mean, scale, axes, unreadable)


_RECORDS_PER_READ = 64  # records read per call when a tool reads one example at a time (attach)


def _records_source(file: records.RecordFile, unreadable: UnreadableFiles) -> Source:
    """A split of a records directory: windows copied out of fixed-size records, a batch per call."""
    label_table, side = tf.constant(file.labels), file.side

    def read_batch(ds, crop):
        def read(e):
            top = e["top"] if crop else tf.zeros_like(e["index"], tf.int32)
            left = e["left"] if crop else top
            size = crop or side
            images, ok = tf.numpy_function(
                lambda index, top, left: file.read(index, top, left, size, unreadable),
                [e["index"], top, left],
                (tf.uint8, tf.bool),
                stateful=False,
            )
            images, ok = tf.ensure_shape(images, [None, size, size, 3]), tf.ensure_shape(ok, [None])
            return {**e, "image": images, "label": tf.gather(label_table, e["index"]), "ok": ok}

        return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)

    def attach(ds):
        return read_batch(ds.batch(_RECORDS_PER_READ), None).unbatch()

    return Source(size=file.count, attach=attach, read_batch=read_batch, may_fail=True)


def load_records(data_config) -> Data:
    """A directory of records (`records.py`): both splits, their labels and the statistics."""
    root = data_config.data_dir
    classes, splits = records.open_splits(root, data_config.resize_size)
    unreadable = UnreadableFiles()
    train, evaluation = (_records_source(split, unreadable) for split in splits)
    mean, scale, axes = read_statistics(root, data_config.resize_size)
    return Data(train, evaluation, len(classes), tuple(classes), mean, scale, axes, unreadable)


def _tfds_source(name, split, data_dir, resize, unreadable) -> Source:
    import tensorflow_datasets as tfds  # only tfds sources need it (a heavy import)

    records = tfds.data_source(
        name, split=split, data_dir=data_dir, download=False, decoders={"image": tfds.decode.SkipDecoding()}
    )

    def record(index):
        # Reading a record's bytes is the one step done in Python; decoding happens in the graph. A
        # record that cannot be read gives no bytes (decoding then fails, and counts it) and its label.
        try:
            example = records[int(index)]
            return np.asarray(example["image"], object).item(), np.int32(example["label"])
        except Exception as error:  # an I/O error of the record file, a damaged record
            unreadable.add(f"{name}/{split}[{int(index)}]", files.describe(error))
            return b"", np.int32(0)

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
    if data_config.get("classes", "") and data_config.source not in ("digits", "folder"):
        raise ValueError(
            f"data.classes selects classes of the digits and folder sources, not of {data_config.source!r}"
        )
    if data_config.source == "digits":
        data = load_digits(size, data_config.get("classes", ""))
    elif data_config.source == "fake":
        data = load_fake(data_config, size)
    elif data_config.source == "folder":
        data = load_folder(data_config)
    elif data_config.source == "tfds":
        data = load_tfds(data_config)
    elif data_config.source == "records":
        data = load_records(data_config)
    else:
        raise ValueError(
            f"data.source={data_config.source!r} is not one of 'tfds', 'folder', 'records', 'digits', 'fake'"
        )
    if data.num_classes != num_classes:
        raise ValueError(
            f"data source {data_config.source!r} has {data.num_classes} classes but model.num_classes={num_classes}; "
            f"set --config.model.num_classes={data.num_classes}"
        )
    return data


def labelled_split(data_config, class_names: list[str]) -> tuple[Source, UnreadableFiles]:
    """The `data.eval_split` of a folder or tfds dataset, labelled as `class_names` (a network's) number them.

    Each class of the data is found among `class_names` by name (a folder's directory names, tfds's
    label names), so that a folder of some ImageNet classes (`val/n01440764/...`), or tfds's
    imagenet2012, gets the labels of a network's 1,000 classes; a class the network lacks is an error.
    """
    resize, unreadable, split = data_config.resize_size, UnreadableFiles(), data_config.eval_split
    if data_config.source == "folder":
        root = data_config.data_dir
        if split == "validation" and not os.path.isdir(os.path.join(root, split)):
            split = "val"  # the tfds name is the config default; folders usually say val
        directory = os.path.join(root, split)
        if not root or not os.path.isdir(directory):
            raise FileNotFoundError(f"no {directory}/<class>/ folders: set --config.data.data_dir and data.eval_split")
        found = sorted(
            d for d in os.listdir(directory) if not is_hidden(d) and os.path.isdir(os.path.join(directory, d))
        )
        unknown = [name for name in found if name not in class_names]
        if unknown:
            raise ValueError(f"{directory} has classes the network does not know: {', '.join(unknown[:5])}")
        paths, labels = _list_split(root, split, list(class_names))
        prepared = _prepared_size(root)
        make = _prepared_source if prepared == resize else _files_source
        return make(paths, labels, resize, unreadable), unreadable
    if data_config.source == "tfds":
        import tensorflow_datasets as tfds  # only tfds sources need it (a heavy import)

        names = list(tfds.builder(data_config.name, data_dir=data_config.data_dir or None).info.features["label"].names)
        unknown = [name for name in names if name not in class_names]
        if unknown:
            raise ValueError(f"{data_config.name} has classes the network does not know: {', '.join(unknown[:5])}")
        table = tf.constant([list(class_names).index(name) for name in names], tf.int32)
        source = _tfds_source(data_config.name, split, data_config.data_dir or None, resize, unreadable)
        relabelled = dataclasses.replace(
            source, attach=lambda ds: source.attach(ds).map(lambda e: {**e, "label": tf.gather(table, e["label"])})
        )
        return relabelled, unreadable
    raise ValueError(f"data.source={data_config.source!r}: only folder and tfds splits are labelled by class name")


def imagenet_classes() -> list[tuple[str, str]]:
    """The 1000 ILSVRC-2012 classes as (WordNet id, lemmas), in the label order of tfds and Caffe."""
    with open(IMAGENET_CLASSES_FILE) as f:
        return [tuple(line.rstrip("\n").split("\t")) for line in f if not line.startswith("#")]


def readable_class_names(names: list[str]) -> list[str]:
    """`names` with every ImageNet WordNet id (e.g. a folder named n01440764) replaced by its lemmas."""
    lemmas = dict(imagenet_classes())
    return [lemmas.get(name, name) for name in names]
