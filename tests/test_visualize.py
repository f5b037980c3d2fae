"""visualize: Figure 3's kernel picture (size, tower panels, comparison), Figure 4's neighbour grid
and top-5 panel, and the ImageNet class names they print."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import cli, datasets, networks, visualize
from alexnet_jax import weights as weights_lib
from configs import smoke
from tests.helpers import ROOT, run_module

WHITE = np.array(visualize.BACKGROUND, np.uint8)


def test_kernel_figure_has_one_panel_per_tower_in_order():
    kernel = np.random.default_rng(0).normal(size=(11, 11, 3, 96)).astype(np.float32)
    zoom, columns, gap = 2, 16, visualize.TILE_GAP
    figure = visualize.kernel_figure(kernel, towers=2, zoom=zoom, columns=columns)
    side = 11 * zoom
    panel_h, panel_w = 3 * (side + gap) + gap, columns * (side + gap) + gap  # 48 kernels = 3 rows of 16
    label = visualize.LABEL_HEIGHT
    assert figure.shape == (2 * (label + panel_h) + visualize.PANEL_GAP, panel_w, 3)
    between = figure[label + panel_h : label + panel_h + visualize.PANEL_GAP]
    assert (between == WHITE).all()
    pictures = visualize.kernel_images(kernel)
    tower2_top = 2 * label + panel_h + visualize.PANEL_GAP + gap
    for k, top in ((0, label + gap), (48, tower2_top)):  # the first kernel of each tower, magnified
        tile = figure[top : top + side, gap : gap + side]
        np.testing.assert_array_equal(tile, pictures[k].repeat(zoom, 0).repeat(zoom, 1))
    # torchvision's single tower: one panel of 64 kernels (4 rows of 16).
    single = visualize.kernel_figure(kernel[..., :64], towers=1, zoom=zoom, columns=columns)
    assert single.shape == (label + 4 * (side + gap) + gap, panel_w, 3)


def test_kernel_scaling_and_colour_share():
    grey = np.repeat(np.random.default_rng(1).normal(size=(5, 5, 1, 2)), 3, axis=2)
    opponent = np.zeros((5, 5, 3, 1))
    opponent[..., 0, 0], opponent[..., 2, 0] = 1.0, -1.0  # red against blue, no grey part
    kernel = np.concatenate([grey, opponent], axis=-1)
    np.testing.assert_allclose(visualize.colour_fraction(kernel), [0.0, 0.0, 1.0], atol=1e-12)
    each = visualize.kernel_images(kernel, "each")
    assert each.shape == (3, 5, 5, 3) and each.dtype == np.uint8
    assert all(img.min() == 0 and img.max() == 255 for img in each)
    assert visualize.kernel_images(np.zeros((3, 3, 3, 1)), "all").max() == 128  # zero is mid-grey


def test_nearest_neighbours_match_brute_force():
    rng = np.random.default_rng(2)
    pool, queries = rng.normal(size=(50, 16)), rng.normal(size=(4, 16))
    order, distances = visualize.nearest_neighbours(queries, pool, 5)
    brute = np.linalg.norm(queries[:, None] - pool[None], axis=-1)
    np.testing.assert_array_equal(order, np.argsort(brute, axis=1)[:, :5])
    np.testing.assert_allclose(distances, np.sort(brute, axis=1)[:, :5], rtol=1e-9)
    assert visualize.nearest_neighbours(pool[7:8], pool, 1)[0][0, 0] == 7


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Two differently initialised networks of the smoke config, as .npz weight files."""
    config = smoke.get_config()
    net = networks.from_config(config.model)
    paths = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp("w") / f"w{seed}.npz"
        params = networks.init_params(net, jax.random.key(seed), config.model.image_size)
        weights_lib.save(jax.tree.map(np.asarray, params), str(path))
        paths.append(str(path))
    return paths


def _source(path):
    return dict(workdir=None, weights=path, config_path=os.path.join(ROOT, "configs", "smoke.py"))


def test_kernels_compare_two_networks(weight_files, tmp_path):
    out = tmp_path / "kernels.png"
    figure = visualize.kernels_command(
        _source(weight_files[0]), _source(weight_files[1]), str(out), zoom=2, scale="each"
    )
    one = visualize.kernel_figure(np.zeros((11, 11, 3, 96)), towers=2, zoom=2)
    assert figure.shape == (visualize.LABEL_HEIGHT + one.shape[0], 2 * one.shape[1] + visualize.PANEL_GAP, 3)
    assert np.asarray(Image.open(out)).shape == figure.shape
    left, right = figure[:, : one.shape[1]], figure[:, one.shape[1] + visualize.PANEL_GAP :]
    assert not np.array_equal(left, right)  # two different networks


def test_neighbour_grid_and_prediction_panel(weight_files, tmp_path):
    result = visualize.neighbours_command(
        _source(weight_files[0]), str(tmp_path / "n.png"), queries=3, neighbours=4, max_pool=50, batch=16
    )
    assert (result["queries"], result["pool"]) == (3, 50)
    side, gap = 128, visualize.TILE_GAP  # 64-pixel crops shown at 128 (a whole-number magnification)
    height, width = result["figure"].shape[:2]
    assert height == 3 * (side + 2 * gap)  # a row per query
    assert width == (side + 2 * gap) + visualize.PANEL_GAP + 4 * (side + gap) + gap  # query | 4 neighbours
    assert Image.open(tmp_path / "n.png").size == (width, height)
    panel = visualize.predictions_command(
        _source(weight_files[0]), str(tmp_path / "p.png"), images=3, columns=2, batch=16
    )
    for top in panel["top5"]:
        probs = [p for _, p in top]
        assert len(top) == 4 and probs == sorted(probs, reverse=True)  # 4 classes in the smoke config
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "p.png").exists()


def test_cli_writes_png_and_rejects_bad_commands(weight_files, tmp_path):
    args = ("kernels", f"--weights={weight_files[0]}", "--config=configs/smoke.py", f"--out={tmp_path / 'k.png'}")
    code, out, err = run_module("alexnet_jax.visualize", *args)
    assert code == 0, err[-2000:]
    assert "tower 1 colour share" in out and (tmp_path / "k.png").exists()
    with pytest.raises(cli.UserError, match="give one command, kernels | neighbours | predictions"):
        visualize.main(["visualize", "kernel"])


def test_imagenet_class_names_follow_the_label_order():
    classes = datasets.imagenet_classes()
    ids = [wordnet_id for wordnet_id, _ in classes]
    assert len(classes) == 1000 and ids == sorted(ids) and len(set(ids)) == 1000
    import tensorflow_datasets as tfds

    assert ids == list(tfds.builder("imagenet2012").info.features["label"].names)
    assert classes[281] == ("n02123045", "tabby, tabby cat")
    assert datasets.readable_class_names(["n01440764", "class_3"]) == ["tench, Tinca tinca", "class_3"]
