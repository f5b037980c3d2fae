"""On-disk sources: image folders (any colour mode, broken files skipped) and tfds builds."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_jax import datasets, input_pipeline, train
from configs import smoke


COLOURS = {"cat": (200, 40, 40), "dog": (40, 40, 200)}
GOOD_FILES = ("alpha.png", "cmyk.jpg", "gray.png", "rgb.jpg")  # sorted, as the source lists them


def write_image_folder(root, bad=True):
    """Per class: RGB, grayscale, CMYK and RGBA images of one colour, plus broken files."""
    for split in ("train", "val"):
        for name, colour in COLOURS.items():
            directory = root / split / name
            directory.mkdir(parents=True)
            plain = Image.new("RGB", (40, 30), colour)
            plain.save(directory / "rgb.jpg", quality=95)
            plain.convert("L").save(directory / "gray.png")
            plain.convert("CMYK").save(directory / "cmyk.jpg", quality=95)
            with_alpha = plain.convert("RGBA")
            with_alpha.putalpha(255)
            with_alpha.save(directory / "alpha.png")
            (directory / "notes.txt").write_text("not an image, and not listed")
            if bad:
                (directory / "corrupt.jpg").write_bytes(b"this is not a JPEG")
                encoded = (directory / "rgb.jpg").read_bytes()
                (directory / "truncated.jpg").write_bytes(encoded[: len(encoded) // 2])


def folder_config(root, resize=24):
    config = smoke.get_config().data
    config.source, config.data_dir, config.resize_size = "folder", str(root), resize
    config.random_crop = config.random_flip = False
    config.pca_lighting_std, config.subtract_mean = 0.0, False
    return config


def test_image_folder_colour_modes_become_rgb(tmp_path):
    write_image_folder(tmp_path, bad=False)
    data = datasets.load(folder_config(tmp_path))
    assert data.class_names == ("cat", "dog") and data.train.size == 8 and data.eval.size == 8
    for index in range(8):
        image, label, ok = data.train.load(tf.constant(index))
        name = ("cat", "dog")[int(label)]
        assert bool(ok) and image.shape == (24, 24, 3) and int(label) == index // 4
        expected = COLOURS[name] if GOOD_FILES[index % 4] != "gray.png" else (np.dot(COLOURS[name], [0.299, 0.587, 0.114]),) * 3
        np.testing.assert_allclose(image.numpy().mean(axis=(0, 1)), expected, atol=6)


def test_bad_files_are_skipped_and_counted(tmp_path):
    write_image_folder(tmp_path)
    config = folder_config(tmp_path)
    data = datasets.load(config)
    assert data.train.size == 12  # 6 listed files per class, 2 of them broken
    batches = input_pipeline.train_batches(data, config, crop=24, global_batch=4, start_step=0, seed=0)
    labels = np.concatenate([next(batches)["labels"] for _ in range(2)])  # 8 readable examples
    assert sorted(labels.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    next(batches)  # the first epoch is over (its broken files were all read), the second begins
    assert data.unreadable.count == 4 and data.unreadable.latest().endswith(("corrupt.jpg", "truncated.jpg"))
    evaluation = list(input_pipeline.eval_batches(data, config, crop=24, global_batch=4, ten_crop=False))
    assert sum(b["mask"].sum() for b in evaluation) == 8  # broken validation files are masked out


def test_missing_folder_names_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected .*/train/<class>/\*.jpg .*/val/<class>/\*.jpg"):
        datasets.load(folder_config(tmp_path / "nowhere"))


def build_tfds(data_dir, file_format="array_record"):
    """A real 3-class tensorflow-datasets build in `data_dir` (no download)."""
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)

    def split(n):
        images = rng.integers(0, 256, (n, 20, 30, 3), dtype=np.uint8)
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(n) % 3})

    features = tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(names=["a", "b", "c"])}
    )
    tfds.dataset_builders.store_as_tfds_dataset(
        name="tiny_images", version="1.0.0", features=features, data_dir=str(data_dir),
        split_datasets={"train": split(24), "validation": split(10)}, file_format=file_format,
    )  # fmt: skip


def tfds_config(data_dir):
    config = smoke.get_config()
    config.data.source, config.data.name, config.data.data_dir = "tfds", "tiny_images", str(data_dir)
    config.data.resize_size, config.model.num_classes = 72, 3
    config.optim.batch_size, config.eval.batch_size = 8, 8
    config.train.num_epochs, config.eval.ten_crop = 1, True
    return config


def test_tfds_build_feeds_training_and_evaluation(tmp_path):
    build_tfds(tmp_path)
    config = tfds_config(tmp_path)
    data = datasets.load(config.data)
    assert (data.train.size, data.eval.size, data.class_names) == (24, 10, ("a", "b", "c"))
    image, _, ok = data.train.load(tf.constant(4))
    assert tuple(image.shape) == (72, 72, 3) and bool(ok)
    labels = [int(data.train.load(tf.constant(i))[1]) for i in range(24)]
    assert np.bincount(labels).tolist() == [8, 8, 8]
    config.parallel.data = 1
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["count"] == 10 and result["unreadable"] == 0 and "ten_crop_top1_error" in result


def test_tfds_not_prepared_or_wrong_format_is_explained(tmp_path):
    config = tfds_config(tmp_path)
    config.data.name = "mnist"
    with pytest.raises(FileNotFoundError, match=r"is not prepared .*`tfds build mnist --data_dir=.* --file_format=array_record`"):
        datasets.load(config.data)
    config.data.name = "imagenet2012"
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_val.tar"):
        datasets.load(config.data)
    config.data.name = "no_such_dataset"
    with pytest.raises(FileNotFoundError, match="neither in the tensorflow-datasets catalog nor built in"):
        datasets.load(config.data)
    build_tfds(tmp_path / "tfrecord", file_format="tfrecord")
    config = tfds_config(tmp_path / "tfrecord")
    with pytest.raises(ValueError, match="needs array_record"):
        datasets.load(config.data)
