"""Sources: image folders (any colour mode, decoded by TensorFlow, PIL for what it cannot, broken files
skipped and counted), tfds builds, and the statistics they carry."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_jax import datasets, image_files, input_pipeline, statistics
from configs import smoke

COLOURS = {"cat": (200, 40, 40), "dog": (40, 40, 200)}
GOOD_FILES = ("alpha.png", "cmyk.jpg", "gray.png", "rgb.jpg", "tiff.png")  # sorted, as the source lists them


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
            tiff = io.BytesIO()
            plain.save(tiff, "TIFF")  # a format TensorFlow cannot decode, under an image extension
            (directory / "tiff.png").write_bytes(tiff.getvalue())
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


def counting_pil(monkeypatch) -> list:
    """Records the files that reach PIL (those TensorFlow could not decode)."""
    calls, original = [], image_files.decode_rgb
    monkeypatch.setattr(image_files, "decode_rgb", lambda encoded: calls.append(encoded[:4]) or original(encoded))
    return calls


def test_image_folder_colour_modes_become_rgb_and_only_what_tf_cannot_read_goes_to_pil(tmp_path, monkeypatch):
    write_image_folder(tmp_path, bad=False)
    data = datasets.create_data(folder_config(tmp_path), 2)
    assert data.class_names == ("cat", "dog") and data.train.size == 10 and data.eval.size == 10
    calls = counting_pil(monkeypatch)
    for index, (image, label, ok) in enumerate(data.train.examples(range(10)).as_numpy_iterator()):
        name = ("cat", "dog")[int(label)]
        assert ok and image.shape == (24, 24, 3) and image.dtype == np.uint8 and int(label) == index // 5
        gray = GOOD_FILES[index % 5] == "gray.png"
        expected = (np.dot(COLOURS[name], [0.299, 0.587, 0.114]),) * 3 if gray else COLOURS[name]
        np.testing.assert_allclose(image.mean(axis=(0, 1)), expected, atol=6)
    assert calls == [b"II*\x00", b"II*\x00"]  # the two TIFF files, and nothing else


def break_every_way(directory):
    """Every way a file system fails a listed image file, one file each, beside the good ones."""
    (directory / "corrupt.jpg").write_bytes(b"this is not a JPEG")  # bytes no decoder reads
    encoded = (directory / "rgb.jpg").read_bytes()
    (directory / "truncated.jpg").write_bytes(encoded[: len(encoded) // 2])  # cut short
    (directory / "empty.jpg").write_bytes(b"")  # zero bytes
    (directory / "folder.jpg").mkdir()  # a directory named like an image
    (directory / "link.jpg").symlink_to(directory / "moved-away.jpg")  # a dangling link
    (directory / ".hidden.jpg").write_bytes(encoded)  # hidden: not data, not listed


def test_files_that_fail_in_every_way_are_skipped_counted_and_keep_their_places(tmp_path, monkeypatch):
    """Corrupt, cut short, empty, a directory, a dangling link, vanished after the listing, and one whose
    read fails with a system error (injected: as root every file is readable): each is flagged with
    weight 0 in its own place (the batches keep their length and every other example its position),
    counted once with its reason, and masked out of evaluation. Hidden files and folders are not data."""
    write_image_folder(tmp_path, bad=False)
    for split in ("train", "val"):
        for name in COLOURS:
            break_every_way(tmp_path / split / name)
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    listing = image_files.list_images

    def listed_then_deleted(directory):
        return listing(directory) + ([f"{directory}/vanished.jpg"] if directory.endswith("train/cat") else [])

    monkeypatch.setattr(datasets, "list_images", listed_then_deleted)
    read_rgb = image_files.read_rgb

    def io_error(path):  # TensorFlow reads it; the Python path, given it, meets an I/O error
        if path.endswith("tiff.png") and "/train/dog/" in path:
            raise OSError(5, "Input/output error", path)
        return read_rgb(path)

    monkeypatch.setattr(image_files, "read_rgb", io_error)
    config = folder_config(tmp_path)
    data = datasets.create_data(config, 2)
    assert data.class_names == ("cat", "dog") and data.train.size == 2 * 10 + 1
    batches = input_pipeline.train_batches(data, config, crop=24, global_batch=7, start_step=0, seed=0)
    epoch = [next(batches) for _ in range(3)]  # 21 listed // 7: the epoch's length counts every listed file
    labels, weights = (np.concatenate([b[key] for b in epoch]) for key in ("labels", "weight"))
    # The same listing with every file readable gives the same labels in the same places.
    healthy = tmp_path / "healthy"
    write_image_folder(healthy, bad=False)
    for split in ("train", "val"):
        for name in COLOURS:
            for broken in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "folder.jpg", "link.jpg"):
                (healthy / split / name / broken).write_bytes((healthy / split / name / "rgb.jpg").read_bytes())
    (healthy / "train" / "cat" / "vanished.jpg").write_bytes((healthy / "train" / "cat" / "rgb.jpg").read_bytes())
    monkeypatch.setattr(datasets, "list_images", listing)
    reference = datasets.create_data(folder_config(healthy), 2)
    again = input_pipeline.train_batches(
        reference, folder_config(healthy), crop=24, global_batch=7, start_step=0, seed=0
    )
    assert np.concatenate([next(again)["labels"] for _ in range(3)]).tolist() == labels.tolist()
    assert weights.sum() == 21 - 12 and set(weights.tolist()) == {0.0, 1.0}
    assert data.unreadable.count == 12  # 5 broken per class, the vanished file and the I/O error
    reasons = data.unreadable.latest()
    assert reasons and "(" in reasons
    assert any("Input/output error (EIO)" in r for r in data.unreadable._reasons.values())
    assert any("No such file or directory (ENOENT)" in r for r in data.unreadable._reasons.values())
    assert any("Is a directory (EISDIR)" in r for r in data.unreadable._reasons.values())
    evaluation = list(input_pipeline.eval_batches(data, global_batch=4))
    assert sum(b["mask"].sum() for b in evaluation) == 10  # broken validation files are masked out


def test_a_prepared_copy_with_a_broken_file_keeps_every_other_examples_place(tmp_path):
    write_image_folder(tmp_path / "raw", bad=False)
    data = datasets.create_data(folder_config(tmp_path / "raw"), 2)
    from alexnet_jax import prepare

    prepare.write_copy(data, str(tmp_path / "copy"), 24, file_format="jpeg")
    files = sorted((tmp_path / "copy" / "train" / "cat").iterdir())
    files[1].write_bytes(b"")  # emptied
    config = folder_config(tmp_path / "copy")
    config.random_crop = True
    copy = datasets.create_data(config, 2)
    files[2].unlink()  # vanished after the listing
    batches = input_pipeline.train_batches(copy, config, crop=20, global_batch=10, start_step=0, seed=0)
    batch = next(batches)
    assert batch["images"].shape == (10, 20, 20, 3) and batch["weight"].sum() == 8
    assert copy.unreadable.count == 2


def test_missing_folder_names_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected .*/train/<class>/\*.jpg .*/val/<class>/\*.jpg"):
        datasets.create_data(folder_config(tmp_path / "nowhere"), 2)


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
        name="tiny_images",
        version="1.0.0",
        features=features,
        data_dir=str(data_dir),
        split_datasets={"train": split(24), "validation": split(10)},
        file_format=file_format,
    )


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
    data = datasets.create_data(config.data, 3)
    assert (data.train.size, data.eval.size, data.class_names) == (24, 10, ("a", "b", "c"))
    examples = list(data.train.examples(range(24)).as_numpy_iterator())
    assert all(image.shape == (72, 72, 3) and ok for image, _, ok in examples)
    assert np.bincount([label for _, label, _ in examples]).tolist() == [8, 8, 8]
    batch = next(input_pipeline.train_batches(data, config.data, crop=64, global_batch=8, start_step=0, seed=0))
    assert batch["images"].shape == (8, 64, 64, 3) and batch["images"].dtype == np.uint8
    assert set(batch["labels"].tolist()) <= {0, 1, 2}
    evaluation = list(input_pipeline.eval_batches(data, global_batch=8))
    assert [b["images"].shape for b in evaluation] == [(8, 72, 72, 3)] * 2
    assert sum(int(b["mask"].sum()) for b in evaluation) == 10


def test_tfds_not_prepared_or_wrong_format_is_explained(tmp_path):
    config = tfds_config(tmp_path)
    config.data.name = "mnist"
    with pytest.raises(
        FileNotFoundError, match=r"is not prepared .*`tfds build mnist --data_dir=.* --file_format=array_record`"
    ):
        datasets.create_data(config.data, 3)
    config.data.name = "imagenet2012"
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_val.tar"):
        datasets.create_data(config.data, 3)
    config.data.name = "no_such_dataset"
    with pytest.raises(FileNotFoundError, match="neither in the tensorflow-datasets catalog nor built in"):
        datasets.create_data(config.data, 3)
    build_tfds(tmp_path / "tfrecord", file_format="tfrecord")
    config = tfds_config(tmp_path / "tfrecord")
    with pytest.raises(ValueError, match="needs array_record"):
        datasets.create_data(config.data, 3)


def test_builtin_imagenet_statistics_read_the_paper_as_prepare_does():
    """Without stats.npz, the colour shift has the magnitude `prepare` would measure on ImageNet-like
    pixels: the standard deviation along each principal axis on the 0-255 scale."""
    variances = np.array([0.2175, 0.0188, 0.0045]) * 255.0**2  # fb.resnet.torch's eigenvalues, 0-1 pixels
    covariance = statistics.IMAGENET_PCA_AXES @ np.diag(variances) @ statistics.IMAGENET_PCA_AXES.T
    pixels = np.random.default_rng(0).multivariate_normal([120, 115, 105], covariance, size=200_000)
    _, scale, _ = statistics.rgb_statistics(pixels.reshape(-1, 10, 10, 3))
    np.testing.assert_allclose(scale, statistics.IMAGENET_PCA_SCALE, rtol=0.02)
    # With section 4.1's sigma of 0.1, the shift along each axis is about [11.9, 3.5, 1.7] grey levels.
    np.testing.assert_allclose(0.1 * statistics.IMAGENET_PCA_SCALE, [11.9, 3.5, 1.7], atol=0.05)
    mean, scale, axes = statistics.read_statistics("/nonexistent", 256)
    assert scale is statistics.IMAGENET_PCA_SCALE and mean.shape == (3,)


def test_rgb_statistics_of_gray_images_have_one_axis():
    images = np.repeat(np.random.default_rng(0).integers(0, 256, (20, 4, 4, 1)), 3, axis=-1).astype(np.uint8)
    mean, scale, axes = statistics.rgb_statistics(images)
    assert mean.shape == (4, 4, 3)
    np.testing.assert_allclose(np.abs(axes[:, 0]), 1 / np.sqrt(3), rtol=1e-5)
    np.testing.assert_allclose(scale[0], np.sqrt(3 * images[..., 0].astype(np.float64).var(ddof=1)), rtol=1e-4)
    assert scale[1] < 1e-3 * scale[0]


def test_class_count_mismatch_is_a_clear_error():
    config = smoke.get_config()
    with pytest.raises(ValueError, match="set --config.model.num_classes=4"):
        datasets.create_data(config.data, 10)
