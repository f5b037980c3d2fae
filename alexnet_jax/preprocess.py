"""The paper's image preprocessing as TensorFlow ops (sections 2 and 4.1), usable inside tf.data.

Images arrive as 256 x 256 x 3 (the "resize" size; smaller for quick configs) float32 RGB in
[0, 255]. Randomness is stateless: every op takes a `seed` (a shape-(2,) int tensor), so an example
gets the same augmentation for the same (run seed, epoch, position), which makes runs repeatable
and resumable mid-epoch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Principal axes of ImageNet's RGB pixel covariance: the standard deviation along each axis (the
# square root of the covariance eigenvalue) on the 0-255 scale, and the axes as columns. The
# widely used ILSVRC-2012 figures (fb.resnet.torch; 0.2175, 0.0188, 0.0045 on the 0-1 scale).
# A prepared dataset's own statistics replace them.
IMAGENET_PCA_SCALE = np.array([0.2175, 0.0188, 0.0045], np.float32) * 255.0
IMAGENET_PCA_AXES = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], np.float32
)
# ILSVRC-2012 per-channel training mean on 0-255, the fallback when no mean image is prepared.
IMAGENET_MEAN_RGB = np.array([123.68, 116.78, 103.94], np.float32)


def resize_shorter_and_center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Section 2: rescale so the shorter side is `size`, then take the central `size` x `size`."""
    shape = tf.shape(image)[:2]
    scale = tf.cast(size, tf.float32) / tf.cast(tf.reduce_min(shape), tf.float32)
    new_hw = tf.maximum(tf.cast(tf.round(tf.cast(shape, tf.float32) * scale), tf.int32), size)
    image = tf.image.resize(image, new_hw, method="bilinear", antialias=True)
    top = (new_hw[0] - size) // 2
    left = (new_hw[1] - size) // 2
    return image[top : top + size, left : left + size, :]


def random_window(size: int | tf.Tensor, crop: int, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Section 4.1's patch: (top, left) uniform over all offsets, and a mirror flag with p = 1/2."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    top = tf.random.stateless_uniform([], seeds[0], 0, size - crop + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[1], 0, size - crop + 1, dtype=tf.int32)
    return top, left, tf.random.stateless_uniform([], seeds[2]) < 0.5


def mirror_if(image: tf.Tensor, mirror: tf.Tensor) -> tf.Tensor:
    """The horizontal reflection of an (H, W, C) image when `mirror` is true."""
    return tf.cond(mirror, lambda: tf.reverse(image, axis=[1]), lambda: image)


def pca_offset(scale: np.ndarray, axes: np.ndarray, std: float, seed: tf.Tensor) -> tf.Tensor:
    """Section 4.1's colour shift `[p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T`, a_i ~ N(0, std^2): an RGB 3-vector.

    `axes` holds the eigenvectors p_i of the RGB pixel covariance as columns; `scale` holds l_i,
    read as every widely used implementation reads the paper: the square root of each eigenvalue,
    i.e. the standard deviation along that axis in pixel units. (Taken as variances, l_i would be in
    squared pixel units and shift a 0-255 image by about 1,400.) The offset's covariance is then
    `std^2` times the pixel covariance. One draw per image per use; it is added to every pixel.
    """
    alpha = tf.random.stateless_normal([3], seed, stddev=std)
    return tf.linalg.matvec(tf.constant(axes, tf.float32), alpha * tf.constant(scale, tf.float32))


def center_crop(image: tf.Tensor, crop: int) -> tf.Tensor:
    """The central `crop` x `crop` patch (test-time single crop)."""
    size = tf.shape(image)[0]
    start = (size - crop) // 2
    return image[start : start + crop, start : start + crop, :]


def ten_crops(image: tf.Tensor, crop: int) -> tf.Tensor:
    """Section 4.1's test-time patches: 4 corners and centre, then their reflections -> (10, c, c, 3)."""
    size = tf.shape(image)[0]
    far = size - crop
    mid = far // 2
    corners = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
    patches = [image[t : t + crop, l : l + crop, :] for t, l in corners]
    patches += [tf.reverse(p, axis=[1]) for p in patches]
    return tf.stack(patches)

