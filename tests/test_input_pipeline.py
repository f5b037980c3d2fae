"""Preprocessing (section 4.1) and the batching, ordering and host sharding of the pipeline."""

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import input_pipeline, preprocess, steps
from configs import smoke


def test_ten_crops_are_corners_centre_and_mirrors():
    image = np.arange(9 * 9 * 3, dtype=np.float32).reshape(9, 9, 3)
    crops = preprocess.ten_crops(tf.constant(image), 5).numpy()
    assert crops.shape == (10, 5, 5, 3)
    expected = [image[:5, :5], image[:5, 4:], image[4:, :5], image[4:, 4:], image[2:7, 2:7]]
    expected += [e[:, ::-1] for e in expected]
    for got, want in zip(crops, expected):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(preprocess.center_crop(tf.constant(image), 5).numpy(), image[2:7, 2:7])


def draw(fn, count):
    """`fn(seed)` for `count` different stateless seeds, run inside tf.data as training does."""
    ds = tf.data.Dataset.range(count).map(lambda i: fn(tf.stack([tf.constant(7, tf.int64), i])))
    return np.concatenate(list(ds.batch(1024).as_numpy_iterator()))


def test_random_crops_cover_every_offset_and_flip_half_the_time():
    windows = draw(lambda seed: tf.stack([tf.cast(v, tf.int32) for v in preprocess.random_window(40, 8, seed)]), 20_000)
    tops, lefts, mirrored = windows.T
    assert set(tops) == set(range(33)) and set(lefts) == set(range(33))
    assert len(set(zip(tops, lefts))) == 33 * 33
    assert 0.48 < mirrored.mean() < 0.52
    image = tf.reshape(tf.range(12.0), (2, 2, 3))
    np.testing.assert_array_equal(preprocess.mirror_if(image, tf.constant(True)).numpy(), image.numpy()[:, ::-1])
    np.testing.assert_array_equal(preprocess.mirror_if(image, tf.constant(False)).numpy(), image.numpy())


def test_pca_offset_has_the_implied_covariance():
    scale = np.array([50.0, 10.0, 2.0], np.float32)
    axes = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0].astype(np.float32)
    offsets = draw(lambda seed: preprocess.pca_offset(scale, axes, 0.1, seed), 40_000)
    expected = 0.1**2 * axes @ np.diag(scale**2) @ axes.T
    np.testing.assert_allclose(np.cov(offsets, rowvar=False), expected, atol=0.03 * expected.max())
    np.testing.assert_allclose(offsets.mean(axis=0), 0, atol=0.05)


def test_rgb_statistics_of_gray_images_have_one_axis():
    images = np.repeat(np.random.default_rng(0).integers(0, 256, (20, 4, 4, 1)), 3, axis=-1).astype(np.uint8)
    mean, scale, axes = input_pipeline.rgb_statistics(images)
    assert mean.shape == (4, 4, 3)
    np.testing.assert_allclose(np.abs(axes[:, 0]), 1 / np.sqrt(3), rtol=1e-5)
    np.testing.assert_allclose(scale[0], np.sqrt(3 * images[..., 0].astype(np.float64).var(ddof=1)), rtol=1e-4)
    assert scale[1] < 1e-3 * scale[0]


def identity_data(n=48, size=8):
    """Image i is filled with the value i, so a batch tells which examples it holds."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 3)).copy()
    source = input_pipeline._in_memory(images, np.arange(n) % 4)
    return input_pipeline.Data(source, source, 4, ("a", "b", "c", "d"), np.zeros(3, np.float32), np.ones(3, np.float32), np.eye(3, dtype=np.float32))


def plain_config():
    return ml_collections.ConfigDict(
        {"subtract_mean": False, "random_crop": False, "random_flip": False, "pca_lighting_std": 0.0, "resize_size": 8}
    )


def example_ids(batches, count):
    return [b["images"][:, 0, 0, 0].astype(int).tolist() for _, b in zip(range(count), batches)]


def test_order_is_a_function_of_seed_and_step():
    data, config = identity_data(), plain_config()
    run = lambda seed, start=0: example_ids(
        input_pipeline.train_batches(data, config, crop=8, global_batch=8, start_step=start, seed=seed), 8
    )
    first = run(0)
    assert first == run(0)
    assert first != run(1)
    assert run(0, start=3) == first[3:] + run(0, start=8)[:3]  # resuming at step 3 sees the same batches
    epoch = sorted(sum(first[:6], []))
    assert epoch == list(range(48))  # one epoch (6 steps) sees every example once


def test_hosts_get_disjoint_slices_of_each_batch(monkeypatch):
    data, config = identity_data(), plain_config()
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    slices = []
    for host in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda host=host: host)
        slices.append(example_ids(input_pipeline.train_batches(data, config, crop=8, global_batch=8, start_step=0, seed=0), 6))
    monkeypatch.undo()
    whole = example_ids(input_pipeline.train_batches(data, config, crop=8, global_batch=8, start_step=0, seed=0), 6)
    for step in range(6):
        assert len(slices[0][step]) == len(slices[1][step]) == 4
        assert not set(slices[0][step]) & set(slices[1][step])
        assert slices[0][step] + slices[1][step] == whole[step]


def test_training_batches_shapes_and_mean_subtraction():
    config = smoke.get_config()
    data = input_pipeline.create_data(config.data, config.model.num_classes)
    batch = next(input_pipeline.train_batches(data, config.data, crop=64, global_batch=32, start_step=0, seed=0))
    assert batch["images"].shape == (32, 64, 64, 3) and batch["images"].dtype == np.uint8
    assert batch["labels"].shape == (32,) and batch["labels"].dtype == np.int32
    assert batch["window"].shape == (32, 3) and batch["lighting"].shape == (32, 3)
    assert set(batch["window"][:, 2]) <= {0, 1} and batch["window"][:, :2].max() <= 72 - 64
    assert data.mean.shape == (72, 72, 3)
    images = input_pipeline.normalise(batch, data.mean)
    assert np.abs(images).max() < 300  # centred 0-255 pixels plus a small colour shift
    assert abs(float(images.mean())) < 20


def test_device_normalisation_equals_host_normalisation():
    config = smoke.get_config()
    data = input_pipeline.create_data(config.data, config.model.num_classes)
    batch = next(input_pipeline.train_batches(data, config.data, crop=64, global_batch=16, start_step=3, seed=1))
    assert batch["window"][:, 2].any() and not batch["window"][:, 2].all()  # both orientations present
    on_device = np.asarray(jax.jit(lambda b: steps.normalise_images(b, data.mean))(batch))
    np.testing.assert_allclose(on_device, input_pipeline.normalise(batch, data.mean), atol=1e-4)
    # The paper's order, written out: the mean image off the whole resized image, then the patch,
    # its reflection and the colour shift. Batch slot i of step 3 holds example order[48 + i].
    order = np.random.default_rng([1, 0]).permutation(data.train.size)
    for i in range(16):
        image = data.train.load(tf.constant(order[48 + i]))[0].numpy() - data.mean
        top, left, mirrored = batch["window"][i]
        patch = image[top : top + 64, left : left + 64]
        expected = (patch[:, ::-1] if mirrored else patch) + batch["lighting"][i]
        np.testing.assert_allclose(on_device[i], expected, atol=1e-3)
    # A mean pixel (ImageNet's built-in statistics) needs no window.
    pixel_mean = np.float32([100, 110, 120])
    np.testing.assert_allclose(
        np.asarray(steps.normalise_images(batch, pixel_mean)),
        batch["images"].astype(np.float32) - pixel_mean + batch["lighting"][:, None, None, :],
        atol=1e-4,
    )


@pytest.mark.parametrize("ten_crop", [False, True])
def test_eval_batches_cover_every_example_once_with_padding(ten_crop):
    data = identity_data(n=20)
    batches = list(input_pipeline.eval_batches(data, plain_config(), crop=8, global_batch=8, ten_crop=ten_crop))
    assert len(batches) == 3
    assert batches[0]["images"].shape == (8, 10 if ten_crop else 1, 8, 8, 3)
    mask = np.concatenate([b["mask"] for b in batches])
    ids = np.concatenate([b["images"][:, 0, 0, 0, 0] for b in batches])
    assert mask.sum() == 20 and mask[20:].sum() == 0
    assert sorted(ids[mask == 1].astype(int)) == list(range(20))


def test_class_count_mismatch_is_a_clear_error():
    config = smoke.get_config()
    with pytest.raises(ValueError, match="set --config.model.num_classes=4"):
        input_pipeline.create_data(config.data, 10)
