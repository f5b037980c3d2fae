"""Sweeps: grid expansion, one workdir per run, resumable runs; and the ablation study, its presets,
its table and its plot, on a tiny configuration."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import datasets, networks, resume, sweep, train
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.networks import layers
from configs import ablations, default, paper, smoke
from tests.helpers import assert_same_structure, snapshot

TINY = [
    "--config.train.num_epochs=1",
    "--config.data.fake_train_size=32",
    "--config.data.fake_eval_size=16",
    "--config.parallel.data=1",
]


def test_grid_expands_to_every_combination():
    runs = sweep.expand(["optim.learning_rate=0.01,0.02", "optim.batch_size=32,64,128"])
    assert len(runs) == 6
    assert runs[0] == [("optim.learning_rate", "0.01"), ("optim.batch_size", "32")]
    assert sweep.run_name(runs[-1]) == "optim.learning_rate=0.02,optim.batch_size=128"


def test_each_ablation_changes_exactly_one_thing_from_the_paper():
    """One thing each: pooling is its window and stride together; tanh is the activation with the
    biases and learning rate that section 3.1 and section 5 chose for ReLUs re-chosen for it."""
    base = paper.get_config().to_dict()
    together = (
        {"model.pool_window", "model.pool_stride"},
        {"model.activation", "model.init_bias", "optim.learning_rate"},
    )
    for name in ablations.ABLATIONS:
        changed = {k for k, v in flatten(ablations.get_config(name).to_dict()).items() if flatten(base)[k] != v}
        # (tanh's chosen rate may equal ReLU's: then the learning rate is not among the changes)
        assert (
            len(changed) == 1
            or any({"model.activation"} < changed <= group for group in together)
            or (changed in together)
        ), (name, changed)
        networks.from_config(ablations.get_config(name).model)  # a network the registry builds
    assert ablations.get_config("baseline").to_dict() == base
    tanh = ablations.get_config("tanh,default")
    assert (tanh.model.activation, tanh.model.init_bias, tanh.optim.learning_rate) == ("tanh", 0.0, ablations.TANH_RATE)
    biases = {
        name: float(layer["bias"].max())
        for name, layer in networks.init_params(networks.from_config(tanh.model), jax.random.key(0), 64).items()
    }
    assert biases == dict.fromkeys(biases, 0.0)  # no tanh unit starts off-centre (the ReLUs' start at 0.1 or 1)
    assert ablations.get_config("no_lrn,default").data.source == "digits"
    with pytest.raises(ValueError, match="unknown ablation 'no_relu'"):
        ablations.get_config("no_relu")


def flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_the_study_runs_resumes_and_reports(tmp_path, capsys):
    """The baseline and one ablation on made-up data, in one step per run, end to end."""
    arguments = ["ablations", f"--root={tmp_path}", "--seeds=1", "--base=smoke", "--only=no_lrn", "--inline", "--"]
    arguments += TINY
    assert sweep.main(arguments) == 0
    assert sorted(os.listdir(tmp_path)) == ["ablations.md", "ablations.png", "baseline", "no_lrn"]
    assert os.listdir(tmp_path / "no_lrn") == ["seed=0"]
    assert capsys.readouterr().out.count("running:") == 2
    assert sweep.main(arguments) == 0  # again: everything is done already
    assert capsys.readouterr().out.count("done already") == 2
    text = (tmp_path / "ablations.md").read_text()
    assert "| no_lrn | 0 |" in text and "| baseline | 0 |" in text
    assert "| 3.3 | no local response normalisation | 1 |" in text and "LRN: top-1 / top-5 error 1.4 / 1.2" in text
    assert "| 4.1 | the centre crop instead of 10 crops | 1 |" in text
    results = sweep.collect(str(tmp_path))
    rows = {row["name"]: row for row in sweep.effects(results)}
    expected = 100 * (results["no_lrn"][0]["top1_error"] - results["baseline"][0]["top1_error"])
    assert rows["no_lrn"]["top1_error"][3] == pytest.approx([expected])
    assert Image.open(tmp_path / "ablations.png").size[0] > 500
    sweep.main(["ablations", f"--root={tmp_path}", "--only=tanh", "--seeds=1", "--dry_run"])
    printed = capsys.readouterr().out
    assert "configs/ablations.py:tanh,paper" in printed and "--config.seed=0" in printed


def summary(top1, ten_crop_top1, epochs_to_25):
    return {
        "top1_error": top1,
        "top5_error": top1 / 2,
        "ten_crop_top1_error": ten_crop_top1,
        "ten_crop_top5_error": ten_crop_top1 / 2,
        "train_error": 0.1,
        "epochs_to_25": epochs_to_25,
    }


def test_effects_are_same_seed_differences_with_their_spread():
    """Three seeds of the baseline and of one ablation, with known errors: each effect is the mean
    and sample standard deviation of the same-seed differences, in percentage points."""
    results = {
        "baseline": {0: summary(0.40, 0.38, 10), 1: summary(0.42, 0.39, 12), 2: summary(0.41, 0.40, None)},
        "no_lrn": {
            0: summary(0.41, 0.40, 20),
            1: summary(0.45, 0.41, 18),
            2: summary(0.43, 0.41, 30),
            3: summary(0, 0, 1),
        },
    }
    rows = {row["name"]: row for row in sweep.effects(results)}
    mean, std, count, diffs = rows["no_lrn"]["top1_error"]
    assert diffs == pytest.approx([1.0, 3.0, 2.0]) and count == 3  # seed 3 has no baseline: left out
    assert (mean, std) == pytest.approx((2.0, 1.0))
    assert rows["no_lrn"]["top5_error"][:2] == pytest.approx((1.0, 0.5))
    assert rows["no_lrn"]["epochs_ratio"][3] == pytest.approx([2.0, 1.5])  # seed 2's baseline never reached 25 %
    assert rows["no_lrn"]["never_reached_25"] == 0
    assert rows["centre_crop"]["top1_error"][3] == pytest.approx([2.0, 3.0, 1.0])
    text = sweep.report_markdown(results, list(rows.values()), "study")
    assert "| 3.3 | no local response normalisation | 3 | +2.00 ± 1.00 | +1.00 ± 0.50 |" in text
    assert "| 1.75 ± 0.35x |" in text


def test_grid_runs_skip_finished_ones_and_tabulate(tmp_path, capsys, monkeypatch):
    """Two learning rates, neither the config's own: the second run is interrupted after its first
    checkpoint (as by Ctrl-C); the same command then skips the finished run, touching nothing, and
    resumes the interrupted one; each run trained at the rate its name says."""
    rates, default_rate = ("0.02", "0.005"), smoke.get_config().optim.learning_rate
    arguments = ["run", "--config=configs/smoke.py", f"--root={tmp_path}", "--grid"]
    arguments += [f"optim.learning_rate={','.join(rates)}", "--inline", "--", *TINY]
    arguments += ["--config.eval.ten_crop=False", "--config.train.checkpoint_every_steps=1"]  # 2 steps, 2 saves
    first, second = (tmp_path / f"optim.learning_rate={rate}" for rate in rates)
    write = train.MetricWriter.write

    def interrupted(self, step, kind, metrics):
        if (first / "final_metrics.json").exists() and (kind, step) == ("train", 2):
            raise KeyboardInterrupt  # in the second run, after step 1's checkpoint
        return write(self, step, kind, metrics)

    monkeypatch.setattr(train.MetricWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.main(arguments)
    monkeypatch.undo()
    assert not (second / "final_metrics.json").exists()
    checkpoints = checkpoint_lib.Checkpoints(str(second), read_only=True)
    assert checkpoints.steps()["checkpoints"] == [1]
    checkpoints.close()
    finished, _ = snapshot(first), capsys.readouterr()
    assert sweep.main(arguments) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"done already: {first}", f"running: {second}"] + out.splitlines()[2:]
    assert err.count("resumed from step 1") == 1 and snapshot(first) == finished
    for rate, workdir in zip(rates, (first, second)):
        assert (
            json.loads((workdir / "config.json").read_text())["optim"]["learning_rate"] == float(rate) != default_rate
        )
        trained_at = [r["learning_rate"] for r in workdir_lib.read_metrics(str(workdir)) if r["kind"] == "train"]
        assert trained_at == pytest.approx([float(rate)] * 2)
    assert sweep.main(arguments) == 0 and capsys.readouterr().out.count("done already") == 2
    assert sweep.table(str(tmp_path)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("run") and len(lines) == 3
    assert sorted(line.split()[0] for line in lines[1:]) == sorted([first.name, second.name])
    assert all(line.endswith("done") for line in lines[1:])
    # Section 3.1's measure beside each run: the first epoch at <= 25 % training error, the last epoch's.
    assert "epochs to 25 %  last train error  status" in lines[0]
    for line in lines[1:]:
        summary = sweep.summarise(str(tmp_path / line.split()[0]))
        reached = summary["epochs_to_25"] or "never"
        assert line.split()[-3:] == [str(reached), f"{summary['train_error']:.4f}", "done"]


def test_training_error_by_epoch_and_the_first_epoch_at_25_percent():
    """Logged batches' errors (1 - accuracy) averaged per epoch (epoch 1 is (0, 1]), on known numbers."""
    records = [
        {"kind": "train", "epoch": 0.5, "accuracy": 0.5},
        {"kind": "eval", "epoch": 1.0, "accuracy": 1.0},  # not a training batch
        {"kind": "train", "epoch": 1.0, "accuracy": 0.7},
        {"kind": "train", "epoch": 1.5, "accuracy": 0.8},
        {"kind": "train", "epoch": 2.0, "accuracy": 0.7},
        {"kind": "train", "epoch": 2.5, "accuracy": 0.9},
    ]
    means = sweep.training_error_by_epoch(records)
    assert means == pytest.approx({1: 0.4, 2: 0.25, 3: 0.1})
    assert sweep.first_epoch_at_most(means, 0.25) == 2 and sweep.first_epoch_at_most(means, 0.05) is None


def test_the_tanh_preset_starts_with_conv1_saturated_and_its_signal_fading(capsys):
    """docs/ablations.md's account of the tanh row on the digits (configs/default.py): at initialisation
    most of conv1's tanh units sit at +-1 (the 0-255 input times N(0, 0.01^2) weights gives
    pre-activations far beyond tanh's linear range), and each later layer's small weights shrink the
    signal, so fc8 reads inputs far smaller than the ReLU network's."""
    digits = datasets.create_data(default.get_config().data, 10)
    images = np.stack([digits.train.load(i)[0] for i in range(64)]).astype(np.float32)
    crops = (images - digits.mean)[:, 4:68, 4:68]  # the centre 64 x 64
    spread = {}
    for name in ("baseline", "tanh"):
        config = ablations.get_config(f"{name},default")
        net = networks.from_config(config.model)
        params = networks.init_params(net, jax.random.key(0), crops.shape[1])
        # Jitted: one compiled program per network instead of one per operation, run eagerly.
        _, sown = jax.jit(lambda p, x, net=net: net.apply({"params": p}, x, mutable=["intermediates"]))(params, crops)
        sown = sown["intermediates"]
        spread[name] = float(np.std(sown["fc7_out"][0]))
        if name == "tanh":
            saturated = float(np.mean(np.abs(sown["conv1_out"][0]) > 0.9))
    with capsys.disabled():  # shown with -s: the figures docs/ablations.md quotes
        ratio = spread["baseline"] / spread["tanh"]
        print(f"tanh: conv1 saturated {saturated:.0%}; fc8's input spread, ReLU / tanh {ratio:.0f}x")
    assert saturated > 0.5
    assert spread["baseline"] / spread["tanh"] > 30


def test_each_study_run_gets_the_network_its_preset_names(tmp_path, capsys, monkeypatch):
    """The study's commands, through the command line as `ablations` runs them (training left out):
    no_lrn's and tanh's configs change their field from the baseline's, and their networks, with the
    same parameters, compute what the change says: no LRN before pool1, tanh instead of ReLU."""
    trained = []
    monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir: trained.append((workdir, config)) or {})
    runs = sweep.study_runs(str(tmp_path), ["no_lrn", "tanh"], 1, "smoke", TINY)
    assert sweep.execute([(workdir, command) for _, _, workdir, command in runs], inline=True) == 0
    names = ("baseline", "no_lrn", "tanh")
    assert [workdir for workdir, _ in trained] == [str(tmp_path / name / "seed=0") for name in names]
    configs = {name: config for name, (_, config) in zip(names, trained)}
    resolved = {name: resume.resolved(config) for name, config in configs.items()}
    assert [str(c) for c in resume.changes(resolved["baseline"], resolved["no_lrn"])] == ["model.lrn: True -> False"]
    tanh_changes = [str(c) for c in resume.changes(resolved["baseline"], resolved["tanh"])]
    assert "model.activation: 'relu' -> 'tanh'" in tanh_changes
    nets = {name: networks.from_config(config.model) for name, config in configs.items()}
    size = configs["baseline"].model.image_size
    for net in nets.values():  # the same parameters: only what the network computes changes
        assert_same_structure(networks.param_shapes(net, size), networks.param_shapes(nets["baseline"], size))
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: rng.normal(0, 0.01, s.shape).astype(s.dtype), networks.param_shapes(nets["baseline"], size)
    )
    images = rng.normal(0, 60, (2, size, size, 3)).astype(np.float32)
    out = {}
    for name, net in nets.items():  # conv1 .. pool5, where the changes act
        features = jax.jit(
            lambda p, x, net=net: net.apply({"params": p}, x, method="features", mutable=["intermediates"])
        )
        out[name] = {key: np.asarray(value[0]) for key, value in features(params, images)[1]["intermediates"].items()}
    for name in ("baseline", "no_lrn"):
        conv1, pool1 = out[name]["conv1_out"], out[name]["pool1"]
        assert conv1.min() == 0.0  # ReLU
        plain = np.asarray(layers.max_pool(conv1, 3, 2))  # pooled without LRN in between
        assert np.array_equal(pool1, plain) == (name == "no_lrn"), name
    assert out["tanh"]["conv1_out"].min() < 0 and np.abs(out["tanh"]["conv1_out"]).max() <= 1.0
