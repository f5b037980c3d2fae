"""The command line: a quiet start, one line and exit code 2 for each kind of user mistake."""

import gc

import pytest

from alexnet_jax import cli, config_check
from configs import paper
from tests.helpers import run_main_in_process, run_module

SMOKE = ("--config=configs/smoke.py", "--config.parallel.data=1", "--config.train.num_epochs=1")


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--config.optim.batch_szie=4"], "unknown config field 'optim.batch_szie'; fields of optim: batch_size"),
        (["--config.optim.batch_size=abc"], "batch_size"),
        (["--config.model.variant=resnet"], "model.variant='resnet' is not one of"),
        (
            ["--config.parallel.data=-1", "--config.optim.batch_size=36"],
            "optim.batch_size=36 is not divisible by the 8 data-parallel replicas",
        ),
        (["--config.data.source=folder", "--config.data.data_dir=/nonexistent/images"], "/nonexistent/images"),
        (
            [
                "--config.data.source=tfds",
                "--config.data.name=imagenet2012",
                "--config.model.num_classes=1000",
                "--config.data.data_dir=/nonexistent/tfds",
            ],
            "ILSVRC2012_img_train.tar",
        ),
        (["--config=configs/nope.py"], "error: config file configs/nope.py not found"),
        (["--config.optim.batch_size=512"], "optim.batch_size=512 is larger than the training set (128 images)"),
        (["--config.model.lrn_n=4"], "model.lrn_n=4 must be odd and positive"),
    ],
)
def test_user_mistakes_give_one_clear_line(tmp_path, capsys, arguments, message):
    code, out, err = run_main_in_process(capsys, *SMOKE, f"--workdir={tmp_path}", *arguments)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_run_starts_with_our_own_first_line(tmp_path):
    """Nothing from TensorFlow or absl before the first progress line; --verbosity=1 shows them.
    TensorFlow's start-up in a tool leaves Keras out."""
    process = run_module(
        "alexnet_jax.main", *SMOKE, f"--workdir={tmp_path / 'quiet'}", "--config.eval.ten_crop=False", wait=False
    )
    try:
        first_line = process.stderr.readline()  # the start-up is what is tested: the run can stop here
    finally:
        process.kill()
        process.communicate()
    assert first_line.split(" ", 1)[1].startswith("training 8 steps"), first_line
    code, _, err = run_module(
        "alexnet_jax.main",
        *SMOKE,
        f"--workdir={tmp_path / 'verbose'}",
        "--verbosity=1",
        "--config.model.variant=resnet",
        env={"PYTHONPROFILEIMPORTTIME": "1"},  # a line per imported module on stderr
    )
    assert code == 2 and "oneDNN" in err and "Traceback" in err
    imported = [line.split("|")[-1].strip() for line in err.splitlines() if line.startswith("import time:")]
    assert "tensorflow" in imported and not [name for name in imported if name.split(".")[0] == "keras"]


def test_a_tool_collects_garbage_once_its_imports_are_done(monkeypatch):
    """A tool's own process holds the garbage collector off while it imports (cli.py); the work the
    tool then does runs with it on, as a long training run needs."""
    monkeypatch.setattr(cli, "_TOOL_PROCESS", True)
    frozen, seen = [], []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))  # not this test process's objects
    gc.disable()
    try:
        cli.execute(lambda argv: seen.append(gc.isenabled()), [])
    finally:
        gc.enable()
    assert seen == [True] and frozen == [True]


def test_config_check_names_the_field():
    config = paper.get_config()
    config_check.check(config)
    config.model.pool_gradient = "fast"
    with pytest.raises(config_check.ConfigError, match="model.pool_gradient='fast' is not one of 'auto', 'custom'"):
        config_check.check(config)
    config = paper.get_config()
    config.parallel.model, config.model.variant = 2, "one_tower"
    with pytest.raises(config_check.ConfigError, match="model.variant='one_tower' has one"):
        config_check.check(config)


def test_unknown_override_lists_the_fields_of_its_group():
    message = cli.unknown_override(paper.get_config(), ["--config.schedule.patiense=3"])
    assert message.startswith("unknown config field 'schedule.patiense'; fields of schedule: factor, kind,")
    assert cli.unknown_override(paper.get_config(), ["--config.schedule.patience=3"]) is None
