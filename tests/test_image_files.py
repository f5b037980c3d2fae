"""image_files: every image kind docs/data.md names decodes to RGB in TensorFlow's graph (the fast path)
and in Python (the fallback) alike, transparent pixels over white; folders list no hidden files."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_jax import image_files


def encoded(image: Image.Image, form: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=form)
    return buffer.getvalue()


def kinds() -> dict[str, tuple[bytes, np.ndarray]]:
    """{kind: (file bytes, the RGB pixels expected)} for 8 x 6 images of every mode the docs name."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    alpha = np.where(rng.random((6, 8)) < 0.5, 0, 255).astype(np.uint8)  # fully transparent or opaque
    over_white = np.where(alpha[..., None] == 0, 255, rgb).astype(np.uint8)
    gray = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(16)  # a palette image: 16 colours
    palette_rgb = np.asarray(palette.convert("RGB"))
    transparent_index = int(np.asarray(palette)[0, 0])
    see_through = np.where((np.asarray(palette) == transparent_index)[..., None], 255, palette_rgb).astype(np.uint8)
    return {
        "png rgb": (encoded(Image.fromarray(rgb), "PNG"), rgb),
        "png rgba": (encoded(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"), over_white),
        "png gray": (encoded(Image.fromarray(gray), "PNG"), np.repeat(gray[..., None], 3, -1)),
        "png gray+alpha": (
            encoded(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG"),
            np.where(alpha[..., None] == 0, 255, np.repeat(gray[..., None], 3, -1)).astype(np.uint8),
        ),
        "png palette": (encoded(palette, "PNG"), palette_rgb),
        "png palette, one colour transparent": (
            encoded_with_transparency(palette, transparent_index),
            see_through,
        ),
        "bmp": (encoded(Image.fromarray(rgb), "BMP"), rgb),
        "gif": (encoded(palette, "GIF"), palette_rgb),
    }


def encoded_with_transparency(palette: Image.Image, index: int) -> bytes:
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=index)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", list(kinds()))
def test_every_kind_decodes_to_rgb_alike_in_tensorflow_and_python(kind):
    data, expected = kinds()[kind]
    np.testing.assert_array_equal(image_files.decode_rgb(data), expected)
    np.testing.assert_array_equal(image_files.tf_rgb(tf.constant(data)).numpy(), expected)


def test_cmyk_jpeg_decodes_to_rgb_in_both_paths():
    """JPEG is lossy: both decoders give RGB of the right size, within a few levels of each other."""
    cmyk = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("CMYK")
    data = encoded(cmyk, "JPEG")
    by_python, by_tf = image_files.decode_rgb(data), image_files.tf_rgb(tf.constant(data)).numpy()
    assert by_python.shape == by_tf.shape == (16, 16, 3)
    assert np.abs(by_python.astype(int) - by_tf.astype(int)).mean() < 8


def test_hidden_files_are_not_listed(tmp_path):
    for name in ("a.png", "B.JPEG", "._a.png", ".hidden.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert image_files.list_images(str(tmp_path)) == [str(tmp_path / "B.JPEG"), str(tmp_path / "a.png")]
