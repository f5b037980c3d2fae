"""The evaluate command: a weights file on a labelled folder of ImageNet class names (its errors are
predict's probabilities counted by hand), unreadable files counted, the published figures beside,
the result as JSON; a workdir on its own split, as `main --mode=eval` computes it."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import datasets, evaluate, loading, networks, predict, train
from alexnet_jax import weights as weights_lib
from configs import smoke
from tests.helpers import workdir_with

WORDNET_IDS = [wordnet_id for wordnet_id, _ in datasets.imagenet_classes()]


@pytest.fixture(scope="module")
def imagenet_network(tmp_path_factory):
    """A small AlexNet (64 x 64 crops) with ImageNet's 1,000 classes, as an .npz that carries its config."""
    config = smoke.get_config()
    config.model.num_classes = config.data.fake_num_classes = 1000
    model = networks.from_config(config.model)
    params = jax.tree.map(np.asarray, networks.init_params(model, jax.random.key(3), 64))
    path = tmp_path_factory.mktemp("weights") / "imagenet_small.npz"
    mean = np.full((72, 72, 3), 120.0, np.float32)
    weights_lib.save(params, str(path), model=model, config=config, class_names=WORDNET_IDS, statistics={"mean": mean})
    return str(path)


def test_a_weights_file_on_a_folder_of_imagenet_classes(imagenet_network, tmp_path, capsys):
    network = loading.load_network(weights=imagenet_network)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (80, 72 + 8 * i, 3), dtype=np.uint8) for i in range(6)]
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    centre = predict.make_predict_fn(network, ten_crop=False)
    probs = np.stack([np.asarray(centre(network.params, network.resized(image)[None]))[0] for image in images])
    # Each image filed under a class of its own centre-crop ranking: 1st, 3rd, 500th, 1st, 5th, 900th.
    ranks = [0, 2, 499, 0, 4, 899]
    labels = [int(np.argsort(-p, kind="stable")[r]) for p, r in zip(probs, ranks)]
    for i, label in enumerate(labels):
        folder = tmp_path / "data" / "val" / WORDNET_IDS[label]
        folder.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{i}.png").rename(folder / f"{i}.png")
    (tmp_path / "data" / "val" / WORDNET_IDS[labels[0]] / "broken.jpg").write_bytes(b"not an image")
    args = [
        f"--weights={imagenet_network}",
        "--config.data.source=folder",
        f"--config.data.data_dir={tmp_path / 'data'}",
    ]
    assert evaluate.run_command_line(args) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)

    ten = predict.make_predict_fn(network, ten_crop=True)
    ten_probs = np.stack([np.asarray(ten(network.params, network.resized(image)[None]))[0] for image in images])
    for crops, p in (("centre", probs), ("ten_crop", ten_probs)):
        order = np.argsort(-p, axis=1, kind="stable")
        expected_top1 = np.mean(order[:, 0] != labels)
        expected_top5 = np.mean([label not in row[:5] for row, label in zip(order, labels)])
        assert result[crops]["top1_error"] == pytest.approx(expected_top1)
        assert result[crops]["top5_error"] == pytest.approx(expected_top5)
        loss = -np.mean(np.log(p[np.arange(6), labels] + 1e-12))
        assert result[crops]["loss"] == pytest.approx(loss, rel=1e-4)
    assert result["centre"]["top1_error"] == pytest.approx(4 / 6) and result["centre"]["top5_error"] == pytest.approx(
        2 / 6
    )
    assert (result["count"], result["unreadable"]) == (6, 1)
    # The paper's figure beside an ImageNet AlexNet's, and a progress line with the ETA.
    assert [figure["top1_error"] for figure in result["published"]] == [0.407]
    assert "published, 10 crops" in err and "40.70%" in err and "ETA" in err

    # A class the network does not know is one line and exit code 2.
    (tmp_path / "data" / "val" / "n99999999").mkdir()
    assert evaluate.run_command_line(args) == 2
    assert "classes the network does not know: n99999999" in capsys.readouterr().err


def test_a_workdir_is_evaluated_as_main_evaluates_it(tmp_path, capsys):
    config = smoke.get_config()
    config.parallel.data = 1
    workdir_with(tmp_path / "run", config)
    assert evaluate.run_command_line([f"--workdir={tmp_path / 'run'}"]) == 0
    result = json.loads(capsys.readouterr().out)
    reference = train.evaluate_checkpoint(config, str(tmp_path / "run"))["best_checkpoint"]
    assert result["count"] == reference["count"] == config.data.fake_eval_size
    for key in ("top1_error", "top5_error", "loss"):
        assert result["centre"][key] == pytest.approx(reference[key], rel=1e-5)
        assert result["ten_crop"][key] == pytest.approx(reference[f"ten_crop_{key}"], rel=1e-5)
    assert result["published"] == []  # made-up classes: no published figure applies
