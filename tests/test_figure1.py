"""Figure 1 as an experiment (alexnet_jax/figure1.py): the four-layer network, the digits it trains on,
the learning-rate rule on known numbers, and the whole command on a few digits, its table and plot."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import figure1, sweep


@pytest.fixture(scope="module")
def digits():
    return figure1.load_digits()


@pytest.fixture(scope="module")
def few(digits):
    """96 of the training digits: 6 steps of 16 per epoch."""
    images, labels = digits
    return images[:96], labels[:96]


def test_the_network_is_layers_18pct_without_normalisation():
    """Three 5 x 5 convolutions of 32, 32 and 64 kernels and fc10 on a 4 x 4 x 64 map (32 -> 16 -> 8 -> 4),
    cuda-convnet's initial standard deviations (1e-4 for conv1, 0.01 for the rest) and zero biases."""
    rule = (figure1.Settings.momentum, figure1.Settings.bias_lr_multiplier)  # the programs the other tests use
    params = jax.device_get(figure1._init(jax.random.key(0), activation="tanh", rule=rule)[0])
    shapes = {name: layer["kernel"].shape for name, layer in params.items()}
    assert shapes == {"conv1": (5, 5, 3, 32), "conv2": (5, 5, 32, 32), "conv3": (5, 5, 32, 64), "fc10": (1024, 10)}
    stds = {name: float(layer["kernel"].std()) for name, layer in params.items()}
    assert stds["conv1"] == pytest.approx(1e-4, rel=0.1)
    assert all(stds[name] == pytest.approx(0.01, rel=0.1) for name in ("conv2", "conv3", "fc10"))
    assert all(not layer["bias"].any() for layer in params.values())
    # The same seed gives both activations the same weights: only the activation differs.
    relu = figure1._init(jax.random.key(0), activation="relu", rule=rule)[0]
    assert all(np.array_equal(relu[name]["kernel"], params[name]["kernel"]) for name in params)


def test_the_digits_are_the_training_split_upscaled(digits):
    images, labels = digits
    assert images.shape == (1437, 32, 32, 3) and images.dtype == np.float32
    assert np.abs(images.mean(axis=0)).max() < 1e-3  # the mean image subtracted
    assert np.array_equal(images[..., 0], images[..., 2])  # grey, as 3 equal channels
    assert 200 < images.max() - images.min() < 2 * 255 and sorted(set(labels)) == list(range(10))


def run(rate, seed, reached, steps_per_epoch=10, diverged=None):
    return figure1.Run("relu", rate, seed, steps_per_epoch, curve=[], reached=reached, diverged=diverged)


def test_the_rate_rule_picks_the_fewest_epochs_every_seed_reached():
    runs = [
        run(0.01, 0, 20),
        run(0.01, 1, 40),  # mean 3 epochs
        run(0.02, 0, 10),
        run(0.02, 1, None, diverged=7),  # faster on seed 0, but seed 1 diverged: out
        run(0.005, 0, 30),
        run(0.005, 1, 30),  # mean 3 epochs too: the tie goes to the smaller rate
        run(0.001, 0, 90),
        run(0.001, 1, 70),
    ]
    chosen, means = figure1.choose_rate(runs)
    assert chosen == 0.005
    assert means == {0.001: 8.0, 0.005: 3.0, 0.01: 3.0, 0.02: None}
    assert figure1.choose_rate([run(0.01, 0, 25), run(0.02, 0, 24)])[0] == 0.02
    assert figure1.choose_rate([run(0.01, 0, None), run(0.02, 0, None)])[0] is None


def test_training_is_deterministic_per_seed_and_stops_at_the_target(few):
    settings = figure1.Settings(batch_size=16, evals_per_epoch=6, target=0.8)
    first = figure1.train("relu", 0.01, 0, settings, few, epochs=2, stop_at_target=False)
    assert [step for step, _ in first.curve] == list(range(13)) and first.curve[0][1] > 0.8  # step 0, then each
    stopped = figure1.train("relu", 0.01, 0, settings, few, epochs=2, stop_at_target=True)
    # The same seed, the same run (stopped at the target).
    assert stopped.reached == first.reached and stopped.curve == first.curve[: len(stopped.curve)]
    assert stopped.curve[-1] == [first.reached, first.curve[first.reached][1]] and first.curve[first.reached][1] <= 0.8
    # Measured every 3 steps, the first measurement at the target replays the steps before it one by one.
    sparse = dataclasses.replace(settings, evals_per_epoch=2)
    coarse = figure1.train("relu", 0.01, 0, sparse, few, epochs=2, stop_at_target=False)
    before = 3 * ((first.reached - 1) // 3)  # the last measurement above the target
    assert coarse.reached == first.reached and before < first.reached <= before + 3
    assert [step for step, _ in coarse.curve if step % 3] == [t for t in range(before + 1, first.reached + 1) if t % 3]
    assert all(dict(first.curve)[step] == error for step, error in coarse.curve)  # the same run, measured less
    other = figure1.train("relu", 0.01, 1, settings, few, epochs=1, stop_at_target=False)
    assert other.curve != first.curve[:7]  # another seed, another run
    diverged = figure1.train("relu", 1e4, 0, settings, few, epochs=1, stop_at_target=False)
    assert diverged.diverged is not None and diverged.reached is None


ARGUMENTS = ["--seeds=2", "--rates=0.003,0.01", "--max_epochs=2", "--epochs=2", "--target=0.75"]
ARGUMENTS += ["--batch_size=16", "--evals_per_epoch=6"]


def test_the_command_sweeps_chooses_tables_and_plots(tmp_path, few, monkeypatch, capsys):
    """`sweep.py figure1` on 96 digits: every (activation, rate, seed) until 75 % training error, the
    chosen rates' runs to 2 epochs, the tables and the figure; rerun, it trains nothing."""
    monkeypatch.setattr(figure1, "load_digits", lambda: few)
    assert sweep.main(["figure1", f"--root={tmp_path}", *ARGUMENTS]) == 0
    summary = json.loads((tmp_path / "figure1.json").read_text())
    for activation in ("relu", "tanh"):
        runs = [
            figure1.Run(**{k: v for k, v in json.load(open(path)).items() if k != "key"})
            for path in sorted((tmp_path / "sweep" / activation).glob("rate=*/seed=*.json"))
        ]
        assert len(runs) == 4
        chosen, _ = figure1.choose_rate(runs)
        result = summary["results"][activation]
        assert result["rate"] == chosen
        at_chosen = sorted((r for r in runs if r.rate == chosen), key=lambda r: r.seed)
        assert result["steps"] == [r.reached for r in at_chosen]
        # The figure's runs are the same runs, continued: the same step at the target.
        for seed, curve in enumerate(summary["curves"][activation]):
            assert [step for step, error in curve if error <= 0.75][0] == result["steps"][seed]
            assert curve[-1][0] == 2 * 6 and result["diverged_later"][seed] is None
    ratios = [t / r for t, r in zip(summary["results"]["tanh"]["steps"], summary["results"]["relu"]["steps"])]
    assert summary["ratios"] == pytest.approx(ratios)
    text = (tmp_path / "figure1.md").read_text()
    relu, tanh = (summary["results"][a] for a in ("relu", "tanh"))
    assert f"| relu (rate {relu['rate']:g}) | tanh (rate {tanh['rate']:g}) | tanh / ReLU |" in text
    assert (
        f"| 0 | {relu['steps'][0]} ({relu['epochs'][0]:.2f}) | {tanh['steps'][0]} ({tanh['epochs'][0]:.2f}) |" in text
    )
    assert "| 0.003 |" in text and "| 0.01 |" in text
    assert Image.open(tmp_path / "figure1.png").size[0] > 500
    printed = capsys.readouterr().out
    assert printed.count("seed") >= 8 and "wrote" in printed
    assert sweep.main(["figure1", f"--root={tmp_path}", *ARGUMENTS]) == 0
    assert capsys.readouterr().out.count("done already") == 8 + 4


def test_the_plot_draws_relu_solid_and_tanh_dashed(tmp_path):
    curve = [[0, 0.9], [5, 0.5], [10, 0.2]]
    summary = {
        "settings": {"target": 0.25, "epochs": 2.0},
        "steps_per_epoch": 5,
        "results": {"relu": {"rate": 0.01}, "tanh": {"rate": 0.02}},
        "curves": {"relu": [curve, curve], "tanh": [curve]},
    }
    figure = figure1.plot(summary, str(tmp_path / "plot.png"))
    lines = figure.axes[0].lines
    styles = [line.get_linestyle() for line in lines if line.get_xdata()[-1] == 2.0]
    assert styles == ["-", "-", "--"]
    assert [line.get_label() for line in lines[:3:2]] == ["ReLU (learning rate 0.01)", "tanh (learning rate 0.02)"]


def test_an_unusable_grid_or_setting_is_one_line(tmp_path, few, monkeypatch, capsys):
    monkeypatch.setattr(figure1, "load_digits", lambda: few)
    arguments = ["figure1", f"--root={tmp_path}", "--seeds=1", "--rates=1e4", "--max_epochs=1", "--batch_size=16"]
    assert sweep.main(arguments) == 2  # every run diverges
    assert capsys.readouterr().err.startswith("error: no rate of 10000 brought every seed of relu and tanh")
    assert len(list((tmp_path / "sweep").glob("*/*/seed=0.json"))) == 2  # kept
    for wrong in ("--rates=0.01,x", "--rates=0.01,-1", "--seeds=0", "--batch_size=5000", "--target=1"):
        with pytest.raises(SystemExit) as exit:
            sweep.main(["figure1", f"--root={tmp_path}", wrong])
        assert exit.value.code == 2
    assert not os.path.exists(tmp_path / "figure1.md")
