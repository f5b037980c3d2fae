"""predict: sorted, normalised top-k from a tiny trained run or a weights file; bad files reported."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import predict, train
from alexnet_jax import weights as weights_lib
from configs import smoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = smoke.get_config()
    config.parallel.data, config.train.num_epochs, config.eval.ten_crop = 1, 2, False
    train.train_and_evaluate(config, str(workdir))
    images = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    (images / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(images / "sub" / "gray.jpg")
    (images / "broken.jpg").write_bytes(b"not an image")
    return workdir, images


def check(results, expected_paths, classes=4):
    assert sorted(results) == sorted(expected_paths)
    for top in results.values():
        probs = [p for _, p in top]
        assert len(top) == min(5, classes)
        assert probs == sorted(probs, reverse=True)
        assert all(0 <= p <= 1 for p in probs)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)  # all 4 classes shown
        assert {name for name, _ in top} == {f"class_{i}" for i in range(classes)}


def test_predict_from_workdir_folder_and_ten_crop(trained, capsys):
    workdir, images = trained
    good = [str(images / f"img{i}.png") for i in range(3)] + [str(images / "sub" / "gray.jpg")]
    check(predict.run([str(images)], workdir=str(workdir)), good)
    assert "broken.jpg: cannot read" in capsys.readouterr().err
    check(predict.run(good[:1], workdir=str(workdir), ten_crop=True), good[:1])


def test_predict_from_a_weights_file(trained, tmp_path):
    workdir, images = trained
    _, params = predict._best_params(predict._load_config(str(workdir / "config.json")), str(workdir))
    weights_lib.save(jax.tree.map(np.asarray, params), str(tmp_path / "w.npz"))
    results = predict.run([str(images / "img0.png")], weights=str(tmp_path / "w.npz"), config_path="configs/smoke.py")
    assert len(results) == 1 and len(next(iter(results.values()))) == 4


def test_cli(trained):
    workdir, images = trained
    out = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.predict", f"--workdir={workdir}", "--config=configs/smoke.py", "--top=2",
         str(images / "img1.png"), str(images / "broken.jpg")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].endswith("img1.png") and len(lines) == 3
    assert "broken.jpg: cannot read" in out.stderr
    none = subprocess.run([sys.executable, "-m", "alexnet_jax.predict", "--config=configs/smoke.py", "x.png"],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert none.returncode == 2 and "give --workdir, or --weights with --config" in none.stderr


def test_export_a_workdir_best_checkpoint(trained, tmp_path):
    workdir, _ = trained
    _, params = predict._best_params(predict._load_config(str(workdir / "config.json")), str(workdir))
    exported = weights_lib.convert(str(workdir), str(tmp_path / "best.npz"))
    for layer, leaves in weights_lib.load(str(tmp_path / "best.npz")).items():
        for leaf, value in leaves.items():
            np.testing.assert_array_equal(value, np.asarray(params[layer][leaf]))
            np.testing.assert_array_equal(value, exported[layer][leaf])
