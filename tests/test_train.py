"""The training loop: learning, exact resumption after SIGKILL, SIGTERM saves, checkpoint fall-back."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import train
from configs import smoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_due_runs_periodic_work_on_schedule_and_at_the_end():
    assert [s for s in range(1, 11) if train.due(s, 4, 10)] == [4, 8, 10]
    assert [s for s in range(1, 11) if train.due(s, 0, 10)] == [10]
    assert train.format_duration(3725) == "1h02m" and train.format_duration(65) == "1m05s"


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_short_run_lowers_the_loss_and_reports_errors(tmp_path):
    config = smoke.get_config()
    config.parallel.data = 1  # one device: the plain path
    result = train.train_and_evaluate(config, str(tmp_path))
    losses = [r["loss"] for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert len(losses) == config.train.num_epochs * 8
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.1
    assert {"top1_error", "top5_error", "ten_crop_top1_error", "ten_crop_top5_error"} <= result.keys()
    assert result["count"] == config.data.fake_eval_size
    assert result["top1_error"] < 0.75  # 4 classes: chance is 0.75
    assert result["top5_error"] == 0.0  # top-5 of 4 classes always holds the label
    # --mode=eval: the best checkpoint is the evaluation with the lowest error.
    evals = [r for r in read_metrics(tmp_path) if r["kind"] == "eval"]
    best = min(evals, key=lambda r: r["top1_error"])
    evaluated = train.evaluate_checkpoint(config, str(tmp_path))
    assert evaluated["step"] == best["step"]
    assert evaluated["top1_error"] == pytest.approx(best["top1_error"])


def test_two_tower_data_parallel_training_path(tmp_path):
    config = smoke.get_config()
    config.parallel.model, config.parallel.data = 2, 2
    config.train.num_epochs = 1
    result = train.train_and_evaluate(config, str(tmp_path))
    assert result["count"] == config.data.fake_eval_size
    assert np.isfinite(result["loss"])


def test_non_finite_loss_stops_with_the_last_checkpoint_intact(tmp_path):
    config = smoke.get_config()
    config.parallel.data = 1
    config.optim.learning_rate = 1e12
    config.train.checkpoint_every_steps = 1
    with pytest.raises(train.NonFiniteError, match="last good checkpoint"):
        train.train_and_evaluate(config, str(tmp_path))
    step, state = restore_params(str(tmp_path))
    assert step >= 1
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(state))


def run_cli(workdir, *overrides, wait=True):
    command = [
        sys.executable, "-m", "alexnet_jax.main", "--config=configs/smoke.py", f"--workdir={workdir}",
        "--config.train.num_epochs=3", "--config.eval.ten_crop=False", *overrides,
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = process.communicate(timeout=600)
        return process.returncode, out, err
    return process


def wait_for_step(process, workdir, step):
    path = os.path.join(workdir, "metrics.jsonl")
    while process.poll() is None:
        if os.path.exists(path) and any(r["kind"] == "train" and r["step"] >= step for r in read_metrics(workdir)):
            return
        time.sleep(0.02)
    raise AssertionError(f"run ended before step {step}: {process.communicate()}")


def restore_params(workdir):
    """The newest checkpoint's parameters, as NumPy, read without the training code."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        step = manager.latest_step()
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored["state"]


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    whole, interrupted = str(tmp_path / "whole"), str(tmp_path / "interrupted")
    code, _, err = run_cli(whole)
    assert code == 0, err[-3000:]
    process = run_cli(interrupted, wait=False)
    wait_for_step(process, interrupted, 10)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    code, _, err = run_cli(interrupted)
    assert code == 0, err[-3000:]
    assert "resumed from step" in err
    step_a, state_a = restore_params(whole)
    step_b, state_b = restore_params(interrupted)
    assert step_a == step_b == 24
    for a, b in zip(jax.tree_util.tree_leaves(state_a), jax.tree_util.tree_leaves(state_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_saves_a_checkpoint_at_the_step_it_stopped(tmp_path):
    workdir = str(tmp_path)
    process = run_cli(workdir, "--config.train.checkpoint_every_steps=1000", wait=False)
    wait_for_step(process, workdir, 5)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    stopped = json.loads(out)["stopped_at_step"]
    assert 5 <= stopped < 24
    step, _ = restore_params(workdir)
    assert step == stopped


def test_corrupted_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    state = {"w": np.arange(6, dtype=np.float32), "step": np.int32(0)}
    checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, asynchronous=False)
    for step in (1, 2):
        checkpoints.save(step, {**state, "w": state["w"] * step}, {"plateau": {}}, force=True)
    checkpoints.close()
    latest = tmp_path / "checkpoints" / "2" / "state"
    for path in latest.rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), keep=3, asynchronous=False)
    with caplog.at_level("WARNING", logger="alexnet_jax"):
        restored, _ = checkpoints.restore_latest(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
    checkpoints.close()
    np.testing.assert_array_equal(np.asarray(restored["w"]), state["w"] * 1)
    assert "step 2 is unreadable" in caplog.text


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["--config.optim.batch_szie=4"], "batch_szie"),
        (["--config.optim.batch_size=abc"], "batch_size"),
        (["--config.model.variant=resnet"], "model.variant='resnet' is not one of"),
        (["--config.optim.batch_size=36"], "optim.batch_size=36 is not divisible by the 8 data-parallel replicas"),
        (["--config.data.source=folder", "--config.data.data_dir=/nonexistent/images"], "/nonexistent/images"),
        (["--config.data.source=tfds", "--config.data.name=imagenet2012", "--config.model.num_classes=1000",
          "--config.data.data_dir=/nonexistent/tfds"], "ILSVRC2012_img_train.tar"),
    ],
)
def test_user_mistakes_give_one_clear_line(tmp_path, overrides, message):
    code, _, err = run_cli(str(tmp_path), *overrides)
    assert code != 0
    assert message in err
    assert "Traceback" not in err
