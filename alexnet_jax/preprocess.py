"""The paper's image preprocessing on the host, as TensorFlow ops usable inside tf.data (sections 2, 4.1).

What needs the pixels of a whole file (the rescaling to 256) or decides an example's augmentation
happens here; the float conversion, the mean image, the colour shift and the test-time crops
happen on the device (steps.py), so that the host ships uint8 pixels. Randomness is stateless:
every op takes a `seed` (a shape-(2,) int tensor), so an example gets the same augmentation for the
same (run seed, epoch, position), which makes runs repeatable and resumable mid-epoch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def resize_shorter_and_center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Section 2: rescale so the shorter side is `size`, take the central `size` x `size`, and round
    to whole uint8 pixels, as the paper's stored 256 x 256 copy holds them. `image` is (H, W, C),
    or (N, H, W, C) for images of one shape.

    The longer side becomes `size * long // short` and the square's offset rounds the centre up, as
    torchvision's `Resize(size)` and `CenterCrop` compute them (`int(size * long / short)`, `round((W -
    crop) / 2)`), so that a crop of this square is torchvision's evaluation crop of the same photo up
    to the interpolation: TensorFlow's antialiased bilinear resize and PIL's differ by at most 1 in 255
    on scikit-learn's two photos (tests/test_predict.py)."""
    shape = tf.shape(image)[-3:-1]
    new_hw = tf.maximum(shape * size // tf.reduce_min(shape), size)  # integers: no float rounding of `size`
    resized = tf.image.resize(tf.cast(image, tf.float32), new_hw, method="bilinear", antialias=True)
    top = (new_hw[0] - size + 1) // 2
    left = (new_hw[1] - size + 1) // 2
    cropped = resized[..., top : top + size, left : left + size, :]
    pixels = tf.cast(tf.clip_by_value(tf.round(cropped), 0, 255), tf.uint8)
    return tf.ensure_shape(pixels, [None] * (len(image.shape) - 3) + [size, size, None])


def random_window(size: int | tf.Tensor, crop: int, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Section 4.1's patch: (top, left) uniform over all offsets, and a mirror flag with p = 1/2."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    top = tf.random.stateless_uniform([], seeds[0], 0, size - crop + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[1], 0, size - crop + 1, dtype=tf.int32)
    return top, left, tf.random.stateless_uniform([], seeds[2]) < 0.5


def pca_offset(scale: np.ndarray, axes: np.ndarray, std: float, seed: tf.Tensor) -> tf.Tensor:
    """Section 4.1's colour shift `[p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T`, a_i ~ N(0, std^2): an RGB 3-vector.

    `axes` holds the eigenvectors p_i of the RGB pixel covariance as columns, `scale` the l_i, read as
    the standard deviation along each axis in pixel units (the square root of the eigenvalue), as
    cuda-convnet2's `--color-noise` does. The offset's covariance is then `std^2` times the pixel
    covariance, on any pixel scale. (fb.resnet.torch, GluonCV and mmpretrain instead take the
    eigenvalues of 0-1 pixels as l_i: a first-axis shift about half as large, and second- and
    third-axis shifts 7 to 15 times smaller.) One draw per image per use, added to every pixel.
    """
    alpha = tf.random.stateless_normal([3], seed, stddev=std)
    return tf.linalg.matvec(tf.constant(axes, tf.float32), alpha * tf.constant(scale, tf.float32))
