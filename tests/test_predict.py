"""predict: sorted, normalised top-k from a workdir or a weights file, folders, 10 crops, unreadable
files, and a workdir's best checkpoint exported bit for bit."""

import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import predict, steps
from alexnet_jax import weights as weights_lib
from alexnet_jax import workdir as workdir_lib
from configs import smoke
from tests.helpers import run_module, workdir_with


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workdir holding the smoke network (no training needed) and some image files."""
    workdir = tmp_path_factory.mktemp("run")
    config = smoke.get_config()
    config.parallel.data = 1
    state = workdir_with(workdir, config)
    images = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    (images / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(images / "sub" / "gray.jpg")
    (images / "broken.jpg").write_bytes(b"not an image")
    return workdir, images, jax.device_get(state.params)


def check(results, expected_paths, classes=4):
    assert sorted(results) == sorted(expected_paths)
    for top in results.values():
        probs = [p for _, p in top]
        assert len(top) == min(5, classes)
        assert probs == sorted(probs, reverse=True)
        assert all(0 <= p <= 1 for p in probs)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)  # all 4 classes shown
        assert {name for name, _ in top} == {f"class_{i}" for i in range(classes)}


def test_predict_from_workdir_folder_and_ten_crop(run, capsys):
    workdir, images, params = run
    good = [str(images / f"img{i}.png") for i in range(3)] + [str(images / "sub" / "gray.jpg")]
    results = predict.run([str(images)], workdir=str(workdir))
    check(results, good)
    assert "broken.jpg: cannot read" in capsys.readouterr().err
    check(predict.run(good[:1], workdir=str(workdir), ten_crop=True), good[:1])
    # The probabilities are the evaluation's: the mean image, the centre crop, the network.
    network = predict.load_network(str(workdir), None, None)
    image = network.resized(np.asarray(Image.open(good[0]).convert("RGB")))
    crop = steps.test_crops(image[None], network.mean, 64, ten_crop=False)[:, 0]
    expected = jax.nn.softmax(network.model.apply({"params": params}, crop))[0]
    assert results[good[0]][0][1] == pytest.approx(float(expected.max()), rel=1e-5)


def test_predict_from_a_weights_file(run, tmp_path):
    workdir, images, params = run
    weights_lib.save(params, str(tmp_path / "w.npz"))
    results = predict.run([str(images / "img0.png")], weights=str(tmp_path / "w.npz"), config_path="configs/smoke.py")
    assert len(results) == 1 and len(next(iter(results.values()))) == 4


def test_cli(run):
    workdir, images, _ = run
    code, out, err = run_module(
        "alexnet_jax.predict", f"--workdir={workdir}", "--top=2", str(images / "img1.png"), str(images / "broken.jpg")
    )
    assert code == 0, err[-2000:]
    lines = out.strip().splitlines()
    assert lines[0].endswith("img1.png") and len(lines) == 3
    assert "broken.jpg: cannot read" in err
    with pytest.raises(ValueError, match="give --workdir, or --weights with --config"):
        predict.run(["x.png"], config_path="configs/smoke.py")


def test_export_a_workdir_best_checkpoint(run, tmp_path):
    workdir, _, params = run
    exported = weights_lib.convert(str(workdir), str(tmp_path / "best.npz"))
    for layer, leaves in weights_lib.load(str(tmp_path / "best.npz")).items():
        for leaf, value in leaves.items():
            np.testing.assert_array_equal(value, params[layer][leaf])
            np.testing.assert_array_equal(value, exported[layer][leaf])
    assert workdir_lib.class_names(str(workdir)) == [f"class_{i}" for i in range(4)]
