"""A checkpoint is one network whatever mesh wrote it, at the paper's operating point: 224 x 224 crops
of 256 x 256 images, 1,000 classes, two towers.

A run trained on the paper's (1, 2) mesh evaluates on (1, 1), (2, 1) and (2, 2) as plain single-device
code does, on validation labels it gets partly right; `predict`
computes what the run's own evaluation computes, and `weights` exports it bit for bit; and the same
run, resumed from an earlier checkpoint by two processes over `jax.distributed` on a (2, 2) mesh
with the launch script, ends where the uninterrupted run ended.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import cli, datasets, loading, networks, parallel, predict, steps, train
from alexnet_jax import weights as weights_lib
from tests.helpers import ROOT, assert_trees_close, cli_env, labels_with_hits

CONFIG_FILE = '''"""The paper's network and recipe on a few fake 256 x 256 images of 1,000 classes."""

from configs import paper


def get_config():
    config = paper.get_config()
    config.data.source, config.data.name = "fake", "fake"
    config.data.fake_train_size, config.data.fake_eval_size, config.data.fake_num_classes = 24, 8, 1000
    config.optim.batch_size, config.eval.batch_size = 8, 8
    config.train.num_epochs, config.train.eval_every_epochs = 2, 1.0  # 6 steps, evaluations at 3 and 6
    config.train.checkpoint_every_steps, config.train.log_every_steps = 4, 1
    config.parallel.data, config.parallel.model = 1, 2  # the paper's two towers
    # The centre crop says as much here as the paper's 10 (at a fraction of the compilation, in every
    # process); the 10-crop evaluation on every layout is tests/test_parallel.py's.
    config.eval.ten_crop = False
    return config
'''


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "paper_point.py"
    path.write_text(CONFIG_FILE)
    return str(path)


def config_on(config_file, data, model):
    config = cli.load_config(config_file)
    config.parallel.data, config.parallel.model = data, model
    return config


@pytest.fixture(scope="module")
def two_tower_run(config_file, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("two_towers"))
    return workdir, train.train_and_evaluate(config_on(config_file, 1, 2), workdir)


@pytest.fixture(scope="module")
def hit_labels(config_file, two_tower_run):
    """The run's validation images relabelled so that its final network gets some, not all, top-1
    and top-5 right (with the fake labels of 1,000 classes it gets none on any layout), and the
    errors and loss that plain single-device code computes for them."""
    workdir, result = two_tower_run
    config = config_on(config_file, 1, 1)
    data = datasets.create_data(config.data, 1000)
    images = np.stack([image for image, _, _ in data.eval.examples(range(data.eval.size)).as_numpy_iterator()])
    params, step = loading.restore_params(workdir, config, "final")
    assert step == 6
    crops = steps.test_crops(images, data.mean, 224, ten_crop=False)[:, 0]
    net = networks.from_config(config.model)
    probs = np.asarray(jax.nn.softmax(jax.jit(lambda p, x: net.apply({"params": p}, x))(params, crops)))
    labels, top1, top5 = labels_with_hits(probs)
    relabelled = dataclasses.replace(data, eval=datasets._in_memory(images, labels))
    count = len(labels)
    expected = {"top1_error": 1 - top1 / count, "top5_error": 1 - top5 / count, "count": result["count"]}
    return relabelled, expected, float(np.mean(-np.log(probs[np.arange(count), labels])))


@pytest.mark.parametrize("mesh", [(1, 1), (2, 1), (2, 2)], ids=lambda m: f"mesh{m[0]}x{m[1]}")
def test_a_two_tower_checkpoint_evaluates_the_same_on_every_layout(
    config_file, two_tower_run, hit_labels, mesh, monkeypatch
):
    workdir, _ = two_tower_run
    relabelled, expected, loss = hit_labels
    assert 0 < expected["top5_error"] < expected["top1_error"] < 1  # hits to compare, not zeros
    monkeypatch.setattr(datasets, "create_data", lambda data_config, num_classes: relabelled)
    config = config_on(config_file, *mesh)
    evaluated = train.evaluate_checkpoint(config, workdir)["final_checkpoint"]
    assert evaluated["step"] == 6
    assert {key: evaluated[key] for key in expected} == expected
    assert evaluated["loss"] == pytest.approx(loss, rel=1e-5)


def test_predict_and_weights_compute_the_network_the_run_evaluated(config_file, two_tower_run, tmp_path):
    workdir, _ = two_tower_run
    config = config_on(config_file, 1, 2)
    data = datasets.create_data(config.data, 1000)
    images = np.stack([image for image, _, _ in data.eval.examples(range(4)).as_numpy_iterator()])
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"image{i}.png"))
        Image.fromarray(image).save(paths[-1])  # lossless, already 256 x 256: predict sees these pixels
    results = predict.run(paths, workdir=workdir, ten_crop=True, top=5)
    # What the run's own layout computes: the two towers on two devices, the same 10 crops.
    setup = train.build(config)
    checkpoints = checkpoint_lib.Checkpoints(workdir, read_only=True)
    state, _ = checkpoints.restore_best(setup.abstract_state())
    checkpoints.close()
    tower_net = setup.model.clone(model_axis=parallel.MODEL, data_axis=parallel.DATA)
    crops = steps.test_crops(images, data.mean, 224, ten_crop=True).reshape(40, 224, 224, 3)
    forward = jax.jit(
        jax.shard_map(
            lambda p, x: tower_net.apply({"params": p}, x),
            mesh=setup.mesh,
            in_specs=(parallel.param_specs(state.params), parallel.batch_spec()),
            out_specs=parallel.batch_spec(),
            check_vma=False,
        )
    )
    probs = np.asarray(jax.nn.softmax(forward(state.params, crops))).reshape(4, 10, -1).mean(axis=1)
    names = predict.load_network(workdir, None, None).class_names
    for path, row in zip(paths, probs):
        top = np.argsort(-row, kind="stable")[:5]
        assert [name for name, _ in results[path]] == [names[c] for c in top]
        np.testing.assert_allclose([p for _, p in results[path]], row[top], rtol=1e-5)
    exported = weights_lib.convert(workdir, str(tmp_path / "best.npz"))
    for layer in exported:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(exported[layer][leaf], np.asarray(state.params[layer][leaf]))


def test_two_processes_resume_the_run_on_another_mesh(config_file, two_tower_run, tmp_path):
    """The run's step-4 checkpoint, resumed by launch/local_cpu.sh: 2 processes x 2 devices over
    jax.distributed, a (2, 2) mesh instead of (1, 2); steps 5 and 6 then end where the uninterrupted
    run ended (to float rounding: the layouts add up in other orders)."""
    workdir, result = two_tower_run
    resumed, kept = str(tmp_path / "resumed"), {"checkpoints": "4", "best": "3"}

    def leave_out(directory, names):  # the later checkpoints, the lock, the final result
        step = kept.get(os.path.basename(directory))
        return [n for n in names if (step and n.isdigit() and n != step) or n in (".lock", "final_metrics.json")]

    def link_or_copy(source, target):  # the resumed run only reads the checkpoints' files: hard links, not copies
        inside = os.path.relpath(source, workdir).split(os.sep)[0] in kept
        (os.link if inside else shutil.copy2)(source, target)

    shutil.copytree(workdir, resumed, ignore=leave_out, copy_function=link_or_copy)
    env = {**cli_env(devices=2), "PYTHON": sys.executable, "CONFIG": config_file}
    command = [os.path.join(ROOT, "launch", "local_cpu.sh"), "2", "2", resumed, "--config.parallel.data=2"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("resumed from step 4") == 2  # both processes
    assert done.stdout.count('"top1_error"') == 1  # one result, from process 0
    final = json.loads(done.stdout[done.stdout.index("{\n") :])
    for key in ("top1_error", "top5_error"):
        assert final[key] == result[key], key
    assert final["loss"] == pytest.approx(result["loss"], rel=1e-4)
    config = config_on(config_file, 1, 2)
    abstract = train.build(config).abstract_state()
    states = []
    for directory in (workdir, resumed):
        checkpoints = checkpoint_lib.Checkpoints(directory, read_only=True)
        states.append(checkpoints.restore_latest(abstract)[0])
        checkpoints.close()
    assert int(states[0].step) == int(states[1].step) == 6
    assert_trees_close(states[1].params, states[0].params, rtol=1e-4)
