"""Section 4.1's augmentations and the batching, ordering and host sharding of the pipeline."""

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import datasets, input_pipeline, preprocess
from configs import smoke


def draw(fn, count):
    """`fn(seed)` for `count` different stateless seeds, run inside tf.data as training does."""
    ds = tf.data.Dataset.range(count).map(lambda i: fn(tf.stack([tf.constant(7, tf.int64), i])))
    return np.concatenate(list(ds.batch(1024).as_numpy_iterator()))


def test_random_crops_cover_every_offset_and_flip_half_the_time():
    windows = draw(
        lambda seed: tf.stack([tf.cast(v, tf.int32) for v in preprocess.random_window(256, 224, seed)]), 20_000
    )
    tops, lefts, mirrored = windows.T
    assert set(tops) == set(range(33)) and set(lefts) == set(range(33))
    assert len(set(zip(tops, lefts))) == 33 * 33
    assert 0.48 < mirrored.mean() < 0.52


def test_pca_offset_has_the_implied_covariance():
    scale = np.array([50.0, 10.0, 2.0], np.float32)
    axes = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0].astype(np.float32)
    offsets = draw(lambda seed: preprocess.pca_offset(scale, axes, 0.1, seed), 40_000)
    expected = 0.1**2 * axes @ np.diag(scale**2) @ axes.T
    np.testing.assert_allclose(np.cov(offsets, rowvar=False), expected, atol=0.03 * expected.max())
    np.testing.assert_allclose(offsets.mean(axis=0), 0, atol=0.05)


def identity_data(n=48, size=8):
    """Image i is filled with the value i, so a batch tells which examples it holds."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 3)).copy()
    source = datasets._in_memory(images, np.arange(n) % 4)
    ones, axes = np.ones(3, np.float32), np.eye(3, dtype=np.float32)
    return datasets.Data(source, source, 4, ("a", "b", "c", "d"), np.zeros(3, np.float32), ones, axes)


def plain_config(**changes):
    options = {"random_crop": False, "random_flip": False, "pca_lighting_std": 0.0, "resize_size": 8, **changes}
    return ml_collections.ConfigDict(options)


def example_ids(batches, count):
    return [b["images"][:, 0, 0, 0].astype(int).tolist() for _, b in zip(range(count), batches)]


def test_order_is_a_function_of_seed_and_step():
    data, config = identity_data(), plain_config()

    def run(seed, start=0):
        batches = input_pipeline.train_batches(data, config, crop=8, global_batch=8, start_step=start, seed=seed)
        return example_ids(batches, 8)

    first = run(0)
    assert first == run(0)
    assert first != run(1)
    assert run(0, start=3) == first[3:] + run(0, start=8)[:3]  # resuming at step 3 sees the same batches
    assert sorted(sum(first[:6], [])) == list(range(48))  # one epoch (6 steps) sees every example once


def test_hosts_get_disjoint_slices_of_each_batch(monkeypatch):
    data, config = identity_data(), plain_config()
    whole = example_ids(input_pipeline.train_batches(data, config, crop=8, global_batch=8, start_step=0, seed=0), 6)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    slices = []
    for host in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda host=host: host)
        batches = input_pipeline.train_batches(data, config, crop=8, global_batch=8, start_step=0, seed=0)
        slices.append(example_ids(batches, 6))
    for step in range(6):
        assert len(slices[0][step]) == len(slices[1][step]) == 4
        assert slices[0][step] + slices[1][step] == whole[step]


def gradient_data(n=32, size=10):
    """Images whose pixel (row, column) holds 10 * row + column, so a crop tells where it was cut."""
    grid = (10 * np.arange(size)[:, None] + np.arange(size)[None, :]).astype(np.uint8)
    images = np.broadcast_to(grid[None, :, :, None], (n, size, size, 3)).copy()
    source = datasets._in_memory(images, np.zeros(n))
    zeros, axes = np.zeros(3, np.float32), np.eye(3, dtype=np.float32)
    return datasets.Data(source, source, 1, ("a",), zeros, zeros, axes), grid


@pytest.mark.parametrize("random_crop", [False, True])
def test_flips_do_not_depend_on_crops(random_crop):
    data, grid = gradient_data()
    config = plain_config(resize_size=10, random_crop=random_crop, random_flip=True)
    batch = next(input_pipeline.train_batches(data, config, crop=6, global_batch=32, start_step=0, seed=0))
    mirrored = batch["window"][:, 2].astype(bool)
    assert 8 <= mirrored.sum() <= 24  # about half of 32
    # The host sends each patch as cut; the reflection happens with the normalisation (on the device).
    normalised = input_pipeline.normalise(batch, None)[..., 0]
    for image, seen, (top, left, flip) in zip(batch["images"][..., 0], normalised, batch["window"]):
        patch = grid[top : top + 6, left : left + 6]
        np.testing.assert_array_equal(image, patch)
        np.testing.assert_array_equal(seen, patch[:, ::-1] if flip else patch)
    if not random_crop:
        assert (batch["window"][:, :2] == 2).all()  # the centre patch
    # Without random_flip nothing is mirrored, whatever the crops.
    config.random_flip = False
    batch = next(input_pipeline.train_batches(data, config, crop=6, global_batch=32, start_step=0, seed=0))
    assert not batch["window"][:, 2].any()


def test_training_batches_shapes_and_mean_subtraction():
    config = smoke.get_config()
    data = datasets.create_data(config.data, config.model.num_classes)
    batch = next(input_pipeline.train_batches(data, config.data, crop=64, global_batch=32, start_step=0, seed=0))
    assert batch["images"].shape == (32, 64, 64, 3) and batch["images"].dtype == np.uint8
    assert batch["labels"].shape == (32,) and batch["labels"].dtype == np.int32
    assert batch["window"].shape == (32, 3) and batch["lighting"].shape == (32, 3)
    assert set(batch["window"][:, 2]) <= {0, 1} and batch["window"][:, :2].max() <= 72 - 64
    assert data.mean.shape == (72, 72, 3)
    images = input_pipeline.normalise(batch, data.mean)
    assert np.abs(images).max() < 300  # centred 0-255 pixels plus a small colour shift
    assert abs(float(images.mean())) < 20


def test_eval_batches_cover_every_example_once_with_padding():
    data = identity_data(n=20)
    batches = list(input_pipeline.eval_batches(data, global_batch=8))
    assert len(batches) == 3
    assert batches[0]["images"].shape == (8, 8, 8, 3) and batches[0]["images"].dtype == np.uint8
    mask = np.concatenate([b["mask"] for b in batches])
    ids = np.concatenate([b["images"][:, 0, 0, 0] for b in batches])
    assert mask.sum() == 20 and mask[20:].sum() == 0
    assert sorted(ids[mask == 1].astype(int)) == list(range(20))
