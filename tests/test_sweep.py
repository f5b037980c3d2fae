"""Sweeps: grid expansion, one workdir per run, resumable runs; and the ablation study, its presets,
its table and its plot, on a tiny configuration."""

import os

import pytest
from PIL import Image

from alexnet_jax import networks, sweep
from configs import ablations, paper

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
    base = paper.get_config().to_dict()
    for name in ablations.ABLATIONS:
        changed = {k for k, v in flatten(ablations.get_config(name).to_dict()).items() if flatten(base)[k] != v}
        assert len(changed) == 1 or changed == {"model.pool_window", "model.pool_stride"}, (name, changed)
        networks.from_config(ablations.get_config(name).model)  # a network the registry builds
    assert ablations.get_config("baseline").to_dict() == base
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


def test_grid_runs_skip_finished_ones_and_tabulate(tmp_path, capsys):
    arguments = [
        "run",
        "--config=configs/smoke.py",
        f"--root={tmp_path}",
        "--grid",
        "optim.learning_rate=0.01",
        "--inline",
        "--",
        *TINY,
        "--config.eval.ten_crop=False",
    ]
    assert sweep.main(arguments) == 0 and sweep.main(arguments) == 0
    assert capsys.readouterr().out.count("done already") == 1
    assert sweep.table(str(tmp_path)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("run") and lines[1].startswith("optim.learning_rate=0.01") and lines[1].endswith("done")
