"""visualize: Figure 3's kernel picture (size, tower panels, comparison), Figure 4's neighbour grid
and top-5 panel, and the ImageNet class names they print."""

import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import datasets, loading, networks, predict, visualize
from alexnet_jax import weights as weights_lib
from configs import smoke

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


def ten_class_config():
    """The smoke config with 10 classes, so that a top-5 can miss."""
    config = smoke.get_config()
    config.data.fake_num_classes = config.model.num_classes = 10
    return config


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Two differently initialised networks of the 10-class smoke config, as .npz weight files that
    carry that config."""
    config = ten_class_config()
    net = networks.from_config(config.model)
    paths = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp("w") / f"w{seed}.npz"
        params = networks.init_params(net, jax.random.key(seed), config.model.image_size)
        weights_lib.save(jax.tree.map(np.asarray, params), str(path), model=net, config=config)
        paths.append(str(path))
    return paths


def _source(path):
    return dict(weights=path)


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
        _source(weight_files[0]), str(tmp_path / "p.png"), images=6, columns=2, batch=16
    )
    # The panel's top 5 of 10 classes are predict's for the same evaluation images.
    network = loading.load_network(weights=weight_files[0])
    data = datasets.create_data(network.config.data, 10)
    _, inputs, labels = visualize.load_images(data.eval, visualize._evenly_spaced(data.eval.size, 6), 64)
    probs = np.asarray(predict.make_predict_fn(network, ten_crop=False)(network.params, inputs))
    for top, row in zip(panel["top5"], probs):
        assert [c for c, _ in top] == list(np.argsort(-row, kind="stable")[:5])
        np.testing.assert_allclose([p for _, p in top], np.sort(row)[::-1][:5], rtol=1e-5)
    hits = [label in [c for c, _ in top] for top, label in zip(panel["top5"], labels)]
    assert list(panel["labels"]) == list(labels) and 0 < sum(hits) < len(hits)  # a top 5 of 10 can miss
    assert (tmp_path / "p.png").exists()


def test_cli_writes_png_and_rejects_bad_commands(weight_files, tmp_path, capsys):
    args = ["kernels", f"--weights={weight_files[0]}", f"--out={tmp_path / 'k.png'}", "--config.data.fake_eval_size=8"]
    assert visualize.run_command_line(args) == 0, capsys.readouterr().err[-2000:]
    assert "tower 1 colour share" in capsys.readouterr().out and (tmp_path / "k.png").exists()
    assert visualize.run_command_line(["kernel", f"--weights={weight_files[0]}"]) == 2
    assert "give one command, kernels | neighbours | predictions" in capsys.readouterr().err


def test_imagenet_class_names_follow_the_label_order():
    classes = datasets.imagenet_classes()
    ids = [wordnet_id for wordnet_id, _ in classes]
    assert len(classes) == 1000 and ids == sorted(ids) and len(set(ids)) == 1000
    import tensorflow_datasets as tfds

    assert ids == list(tfds.builder("imagenet2012").info.features["label"].names)
    assert classes[281] == ("n02123045", "tabby, tabby cat")
    assert datasets.readable_class_names(["n01440764", "class_3"]) == ["tench, Tinca tinca", "class_3"]
