"""`prepare`: streamed training-set statistics and the 256 x 256 copy."""

import dataclasses

import numpy as np
import pytest

from alexnet_jax import datasets, input_pipeline, prepare, statistics
from configs import smoke
from tests.test_datasets import folder_config, write_image_folder


def test_prepare_statistics_and_copy(tmp_path, capsys):
    write_image_folder(tmp_path / "raw")
    config = smoke.get_config()
    config.data = folder_config(tmp_path / "raw", resize=32)
    config.model.num_classes = 2
    report = prepare.prepare(config, str(tmp_path / "copy"), quality=95)
    assert report["statistics_images"] == 10 and report["unreadable_files"] == 8  # 4 broken per split
    assert report["copied"] == {"train": 10, "val": 10}
    progress = capsys.readouterr().err  # a progress line with the ETA per pass
    assert all(f"{what}: " in progress for what in ("statistics", "copy train", "copy val")) and "ETA" in progress
    # The streamed statistics equal the in-memory computation over the same decoded images.
    data = datasets.create_data(config.data, 2)
    images = np.stack([image for image, _, ok in data.train.examples(range(data.train.size)).as_numpy_iterator() if ok])
    mean, scale, axes = statistics.rgb_statistics(images)
    with np.load(tmp_path / "raw" / "stats.npz") as stats:
        np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(stats["pca_scale"], scale, rtol=1e-3)
        np.testing.assert_allclose(np.abs(stats["pca_axes"]), np.abs(axes), atol=1e-3)
    # The copy is a prepared folder: fast path, nothing unreadable, the statistics travel with it.
    copy_config = folder_config(tmp_path / "copy", resize=32)
    copy = datasets.create_data(copy_config, 2)
    assert copy.train.attach_window is not None and copy.train.size == 10 and copy.class_names == ("cat", "dog")
    np.testing.assert_allclose(copy.mean, mean, rtol=1e-5, atol=1e-3)
    assert copy.train.attach_window is not None
    copy_config.random_crop = copy_config.random_flip = copy_config.subtract_mean = True
    copy_config.pca_lighting_std = 0.1
    batch = next(input_pipeline.train_batches(copy, copy_config, crop=24, global_batch=8, start_step=0, seed=0))
    assert batch["images"].shape == (8, 24, 24, 3)
    # Decoding only the crop window gives the batch that decoding everything and cropping gives.
    whole = dataclasses.replace(copy, train=dataclasses.replace(copy.train, attach_window=None))
    reference = next(input_pipeline.train_batches(whole, copy_config, crop=24, global_batch=8, start_step=0, seed=0))
    np.testing.assert_array_equal(batch["labels"], reference["labels"])
    np.testing.assert_array_equal(batch["images"], reference["images"])
    copy_config.resize_size = 64
    with pytest.raises(ValueError, match="prepared at 32 x 32"):
        datasets.create_data(copy_config, 2)
