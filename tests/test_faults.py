"""Ordinary events, as a user meets them on the command line, at the paper's cadence (evaluations every
8 steps, checkpoints every 5): each has one defined outcome. The run works as asked, or it stops with one
line and exit code 2 with every file as it was; and where the fault goes away, the rerun ends bit for bit
where an uninterrupted run ends.

Faults the operating system must produce (no permission while running as root, I/O errors, no space,
a file system without locks) are injected where the project calls Orbax or the operating system.
"""

import errno
import fcntl
import json
import os
import shutil
import signal

import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import datasets, loading, stopping, train
from alexnet_jax import main as main_lib
from alexnet_jax import workdir as workdir_lib
from configs import smoke
from tests import helpers
from tests.helpers import assert_trees_equal, run_main_in_process

# 16 steps of 16 images: evaluations after steps 8 and 16, checkpoints after 5, 10, 15 and 16.
ARGS = ("--config=configs/smoke.py", "--config.parallel.data=1", "--config.eval.ten_crop=False")
TWO_EPOCHS, ONE_EPOCH = "--config.train.num_epochs=2", "--config.train.num_epochs=1"


def main(capsys, workdir, *overrides):
    """`python -m alexnet_jax.main` in this process: (exit code, stdout, stderr)."""
    return run_main_in_process(capsys, *ARGS, f"--workdir={workdir}", *overrides)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run twice from the command line: uninterrupted to step 16, and stopped after step 8 (its
    first epoch, `train.num_epochs=1`), which every test resumes in a copy of its own."""
    root = tmp_path_factory.mktemp("faults")
    for name, epochs in (("whole", TWO_EPOCHS), ("half", ONE_EPOCH)):
        assert main_lib.run_command_line([*ARGS, f"--workdir={root / name}", epochs]) == 0
    return root / "whole", root / "half"


def copy_of(source, tmp_path, name="run"):
    shutil.copytree(source, tmp_path / name)
    return tmp_path / name


def snapshot(root) -> dict:
    """Every file under `root` (the lock file aside) and a digest of its bytes."""
    return helpers.snapshot(root, contents=True, with_lock=False)


def one_error_line(code, out, err) -> str:
    """The one `error:` line of a run that stopped with exit code 2 and no traceback."""
    assert code == 2 and out == "", (code, err[-3000:])
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def newest(workdir):
    """(state, record, kind, step) of the newest checkpoint, read only."""
    config = smoke.get_config()
    config.parallel.data = 1
    checkpoints = checkpoint_lib.Checkpoints(str(workdir), read_only=True)
    try:
        return checkpoints.restore_newest(train.build(config).abstract_state())
    finally:
        checkpoints.close()


def comparable(records):
    """Metrics records without the wall-clock rate and the count of unreadable files read so far (which
    depends on how far ahead the input pipeline has read)."""
    return [
        {k: v for k, v in r.items() if k not in ("images_per_second", "data_wait_fraction", "unreadable_files")}
        for r in records
    ]


def assert_ends_as(workdir, reference):
    """The same last checkpoint (parameters, momentum, step: bit for bit), the same metrics and the same
    final errors as the reference run."""
    (ours, _, _, our_step), (theirs, _, _, their_step) = newest(workdir), newest(reference)
    assert our_step == their_step == 16
    assert_trees_equal(ours, theirs)
    assert comparable(workdir_lib.read_metrics(str(workdir))) == comparable(workdir_lib.read_metrics(str(reference)))
    final = workdir_lib.FINAL_FILE
    assert json.load(open(workdir / final)) == json.load(open(reference / final))


# ---------------------------------------------------------------------------- config changes on resume


def learning_rates(workdir) -> dict[int, float]:
    return {r["step"]: r["learning_rate"] for r in workdir_lib.read_metrics(str(workdir)) if r["kind"] == "train"}


def test_a_new_learning_rate_on_resume_is_the_rate_from_that_step_on(runs, tmp_path, capsys):
    """The paper lowered the rate by hand (section 5): a resumed run takes the new rate from its first
    step on, the plateau rule continues from it, the metrics record it and the checkpoints keep it."""
    workdir = copy_of(runs[1], tmp_path)
    code, out, err = main(capsys, workdir, TWO_EPOCHS, "--config.optim.learning_rate=0.001")
    assert code == 0, err[-3000:]
    assert "changes that take effect from this step on: optim.learning_rate: 0.01 -> 0.001; train.num_epochs" in err
    rates = learning_rates(workdir)
    assert {rates[s] for s in range(1, 9)} == {np.float32(0.01)} and rates[9] == pytest.approx(0.001)
    _, record, _, _ = newest(workdir)
    assert record["plateau"]["learning_rate"] in (pytest.approx(0.001), pytest.approx(0.0001))
    assert record["config"]["optim"]["learning_rate"] == 0.001


STEP_SCHEDULE = ("--config.schedule.kind=step", "--config.schedule.step_epochs=(0.5,1.5)")


@pytest.fixture(scope="module")
def step_schedule_half(tmp_path_factory):
    """A run under the step schedule (cuts by 10 at epochs 0.5 and 1.5: steps 5 and 13) stopped after
    its first epoch, which each test below resumes in a copy of its own."""
    workdir = tmp_path_factory.mktemp("step_schedule") / "half"
    assert main_lib.run_command_line([*ARGS, f"--workdir={workdir}", ONE_EPOCH, *STEP_SCHEDULE]) == 0
    assert learning_rates(workdir)[8] == pytest.approx(0.001)
    return workdir


def test_under_the_step_schedule_a_new_rate_is_the_rate_from_that_step_and_later_cuts_continue(
    step_schedule_half, tmp_path, capsys
):
    """Cuts by 10 at epochs 0.5 and 1.5 (steps 5 and 13); the rate given at step 9 holds until the next cut."""
    workdir = copy_of(step_schedule_half, tmp_path)
    code, _, err = main(capsys, workdir, TWO_EPOCHS, *STEP_SCHEDULE, "--config.optim.learning_rate=0.05")
    assert code == 0, err[-3000:]
    rates = learning_rates(workdir)
    assert rates[4] == pytest.approx(0.01) and rates[8] == pytest.approx(0.001)
    assert rates[9] == pytest.approx(0.05) and rates[12] == pytest.approx(0.05)
    assert rates[13] == pytest.approx(0.005)  # the cut at epoch 1.5, from the new rate


@pytest.mark.parametrize(
    "change",
    [
        "--config.schedule.factor=0.5",
        "--config.schedule.step_epochs=(1.5,)",
    ],
)
def test_a_changed_step_schedule_applies_to_the_cuts_still_to_come(step_schedule_half, tmp_path, capsys, change):
    """Cuts by 10 at epochs 0.5 and 1.5; resumed at step 8 (the rate then 0.001) with another factor or
    other cut epochs: the rate stays 0.001 from step 9, and only the cuts after it change."""
    workdir = copy_of(step_schedule_half, tmp_path)
    schedule = STEP_SCHEDULE
    rerun = (schedule[0], change) if "step_epochs" in change else (*schedule, change)  # each field given once
    code, _, err = main(capsys, workdir, TWO_EPOCHS, *rerun)
    assert code == 0 and "take effect from this step on" in err, err[-3000:]
    rates = learning_rates(workdir)
    assert rates[8] == pytest.approx(0.001) and rates[9] == pytest.approx(0.001) and rates[12] == pytest.approx(0.001)
    assert rates[13] == pytest.approx(0.0005 if "factor" in change else 0.0001)  # the cut at epoch 1.5


def test_a_finished_run_with_a_changed_config_stops(runs, capsys):
    before = snapshot(runs[0])
    result = main(capsys, runs[0], TWO_EPOCHS, "--config.optim.learning_rate=0.02")
    line = one_error_line(*result)
    assert "take effect" not in result[2]  # no word of resuming with the change before the refusal
    assert "finished at step 16; these changes would have no effect on it: optim.learning_rate: 0.01 -> 0.02" in line
    assert "Raise train.num_epochs" in line and snapshot(runs[0]) == before


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.model.dropout_rate=0.3", "model.dropout_rate: 0.5 -> 0.3 (the network computes another function"),
        ("--config.seed=1", "seed: 0 -> 1 (the data order, every augmentation and every dropout mask derive from it"),
        ("--config.optim.batch_size=8", "optim.batch_size: 16 -> 8 (a step's images and the epoch's length"),
    ],
)
def test_a_change_that_makes_another_run_is_refused_and_writes_nothing(runs, capsys, override, message):
    before = snapshot(runs[1])
    line = one_error_line(*main(capsys, runs[1], TWO_EPOCHS, override))
    assert message in line and "Nothing in" in line and snapshot(runs[1]) == before


def test_allow_changes_accepts_a_refused_change_from_the_resumed_step_on(runs, tmp_path, capsys):
    workdir = copy_of(runs[1], tmp_path)
    # A network that computes another function from step 8 on (LRN's k), and next to no update (rate 1e-9), so that
    # the evaluation at step 16 does not improve on step 8's: the best checkpoint stays step 8's.
    changed = (
        "--config.model.lrn_k=5.0",
        "--config.train.allow_changes=model.lrn_k",
        "--config.optim.learning_rate=1e-9",
    )
    code, _, err = main(capsys, workdir, TWO_EPOCHS, *changed)
    assert code == 0 and "model.lrn_k: 2.0 -> 5.0" in err
    assert newest(workdir)[1]["config"]["model"]["lrn_k"] == 5.0
    # --mode=eval with the same command: the best checkpoint, from before the change, is evaluated with
    # its own network, as the run evaluated it then; the final one with the new.
    code, out, err = main(capsys, workdir, TWO_EPOCHS, *changed, "--mode=eval")
    assert code == 0, err[-3000:]
    evaluated = json.loads(out)
    logged = {r["step"]: r for r in workdir_lib.read_metrics(str(workdir)) if r["kind"] in ("eval", "final")}
    assert evaluated["best_checkpoint"]["step"] == 8 and evaluated["final_checkpoint"]["step"] == 16
    assert evaluated["best_checkpoint"]["loss"] == pytest.approx(logged[8]["loss"], rel=1e-5)
    assert evaluated["final_checkpoint"]["loss"] == pytest.approx(logged[16]["loss"], rel=1e-5)


# --------------------------------------------------------------------- a run's identity and its files


def test_with_only_best_left_another_network_is_refused_and_the_same_one_resumes_from_it(runs, tmp_path, capsys):
    """Killed after its first improving evaluation and before its first periodic checkpoint (here: the
    periodic ones removed), the run's identity is its best checkpoint's."""
    workdir = copy_of(runs[1], tmp_path)
    shutil.rmtree(workdir / "checkpoints")
    before = snapshot(workdir)
    line = one_error_line(*main(capsys, workdir, TWO_EPOCHS, "--config.model.fc_width=256"))
    assert f"({workdir}/best/8)" in line and "model.fc_width: 512 -> 256" in line and snapshot(workdir) == before
    code, _, err = main(capsys, workdir, TWO_EPOCHS)
    assert code == 0 and f"resumed from step 8 ({workdir}/best/8)" in err
    assert_ends_as(workdir, runs[0])


def test_tools_read_the_config_of_the_checkpoint_they_load(runs, tmp_path):
    """config.json is the config of a run's last start (here rewritten as a rerun with an allowed change
    of LRN's k would leave it); predict, evaluate and the converter read the best checkpoint's own."""
    workdir = copy_of(runs[0], tmp_path)
    saved = json.load(open(workdir / workdir_lib.CONFIG_FILE))
    saved["model"]["lrn_k"] = 1.0
    (workdir / workdir_lib.CONFIG_FILE).write_text(json.dumps(saved))
    network = loading.load_network(workdir=str(workdir))
    assert network.config.model.lrn_k == 2.0 == newest(workdir)[1]["config"]["model"]["lrn_k"]


def write_folder(root, classes=("a", "b", "c", "d"), per_class=8, held_out=2):
    """A tiny image folder, each class its own colour, with hidden files and folders that are not data."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", held_out)):
        for number, name in enumerate(classes):
            os.makedirs(root / split / name)
            for i in range(count):
                pixels = np.clip(rng.normal(40 + 50 * number, 30, (72, 72, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
            (root / split / name / "._0.png").write_bytes(b"macOS metadata")  # hidden: not data
    os.makedirs(root / "train" / ".ipynb_checkpoints")  # hidden: not a class


def break_files(root):
    """Five of the 32 training files fail as a file system fails them."""
    os.symlink(root / "moved-away.png", root / "train" / "a" / "8.png")  # a dangling link
    os.makedirs(root / "train" / "b" / "8.png")  # a directory named like an image
    (root / "train" / "c" / "8.png").write_bytes(b"")  # zero bytes
    (root / "train" / "d" / "8.png").write_bytes(b"\x89PNG not really")  # bytes no decoder reads


FOLDER = ("--config.data.source=folder", "--config.data.resize_size=72", "--config.optim.batch_size=8")


def test_unreadable_files_are_skipped_counted_and_keep_every_other_examples_place(tmp_path, capsys, monkeypatch):
    """A dangling link, a directory named like an image, an empty file, undecodable bytes and a file that
    vanished after the listing: the run trains on, counts them, keeps its epoch length, and an interrupted
    run ends bit for bit where an uninterrupted one ends."""
    data = tmp_path / "images"
    write_folder(data)
    break_files(data)
    original = datasets.list_images

    def listing(directory):  # a file listed, then deleted before it is read
        found = original(directory)
        return found + [os.path.join(directory, "9.png")] if directory.endswith("train/a") else found

    monkeypatch.setattr(datasets, "list_images", listing)
    folder = (*FOLDER, f"--config.data.data_dir={data}")
    whole, part = tmp_path / "whole", tmp_path / "part"
    code, out, err = main(capsys, whole, *folder, TWO_EPOCHS)
    assert code == 0, err[-3000:]
    assert "skipped 5 unreadable image files so far" in err
    records = workdir_lib.read_metrics(str(whole))
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 9))  # 37 listed // 8 = 4 a epoch
    assert [r for r in records if r["kind"] == "train"][-1]["unreadable_files"] == 5
    assert main(capsys, part, *folder, ONE_EPOCH)[0] == 0
    assert main(capsys, part, *folder, TWO_EPOCHS)[0] == 0
    assert_trees_equal(newest(part)[0], newest(whole)[0])
    assert comparable(workdir_lib.read_metrics(str(part))) == comparable(records)
    # A renamed class folder would permute the labels: the run refuses it.
    os.rename(data / "train" / "b", data / "train" / "bb")
    os.rename(data / "val" / "b", data / "val" / "bb")
    line = one_error_line(*main(capsys, part, *folder, "--config.train.num_epochs=3"))
    assert "class 1 was 'b' and is 'bb' now" in line


def test_a_cut_short_last_metrics_line_is_repaired_with_one_warning(runs, tmp_path, capsys):
    workdir = copy_of(runs[1], tmp_path)
    with open(workdir / workdir_lib.METRICS_FILE, "a") as f:
        f.write('{"step": 9, "kind": "tr')  # the process died mid-write
    code, _, err = main(capsys, workdir, TWO_EPOCHS)
    assert code == 0 and err.count("dropped its last line, cut short by an earlier crash") == 1
    assert_ends_as(workdir, runs[0])


def test_cut_short_json_files_are_named_or_rewritten(runs, tmp_path, capsys):
    """final_metrics.json cut short: the final evaluation runs again; config.json cut short: kept aside
    (checkpoints hold their own config); a metrics line cut short in the middle: named, with its line."""
    workdir = copy_of(runs[0], tmp_path)
    final = (workdir / workdir_lib.FINAL_FILE).read_text()
    (workdir / workdir_lib.FINAL_FILE).write_text(final[:20])
    config = (workdir / workdir_lib.CONFIG_FILE).read_text()
    (workdir / workdir_lib.CONFIG_FILE).write_text(config[:30])
    code, out, err = main(capsys, workdir, TWO_EPOCHS)
    assert code == 0 and json.loads(out) == json.loads(final)
    assert f"{workdir}/final_metrics.json is not valid JSON" in err and "is not valid JSON" in err
    assert json.loads((workdir / workdir_lib.CONFIG_FILE).read_text()) == json.loads(config)
    lines = (workdir / workdir_lib.METRICS_FILE).read_text().splitlines()
    (workdir / workdir_lib.METRICS_FILE).write_text("\n".join([lines[0][:10], *lines[1:]]) + "\n")
    line = one_error_line(*main(capsys, workdir, "--config.train.num_epochs=3"))
    assert f"{workdir}/metrics.jsonl line 1 is not valid JSON" in line


# ------------------------------------------------------------------------------------ checkpoints


FAULTS = {
    "no permission": ValueError("PERMISSION_DENIED: Error reading ...: Permission denied [os_error_code='13']"),
    "I/O error": OSError(errno.EIO, "Input/output error"),
    "stale handle": OSError(errno.ESTALE, "Stale file handle"),
    "too many open files": OSError(errno.EMFILE, "Too many open files"),
    "storage unavailable": ValueError("UNAVAILABLE: connection reset"),
    "deadline exceeded": ValueError("DEADLINE_EXCEEDED: read timed out"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_checkpoint_that_cannot_be_read_is_not_damage(runs, tmp_path, capsys, monkeypatch, fault):
    """One line that names the checkpoint and the system's error, exit code 2, nothing moved; once the
    storage is back, the run resumes and ends where an uninterrupted run ends."""
    workdir = copy_of(runs[1], tmp_path)
    before = snapshot(workdir)
    real = ocp.CheckpointManager.restore

    def failing(self, step, *args, **kwargs):
        raise FAULTS[fault]

    monkeypatch.setattr(ocp.CheckpointManager, "restore", failing)
    line = one_error_line(*main(capsys, workdir, TWO_EPOCHS))
    assert f"cannot read checkpoint {workdir}/checkpoints/8" in line and "nothing was moved" in line
    assert snapshot(workdir) == before
    if fault != "no permission":
        return
    monkeypatch.setattr(ocp.CheckpointManager, "restore", real)
    assert main(capsys, workdir, TWO_EPOCHS)[0] == 0
    assert_ends_as(workdir, runs[0])


def overwrite_data_files(state):
    for path in state.rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(b"overwritten")


def cut_the_largest_data_file_short(state):
    largest = max((p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"), key=lambda p: p.stat().st_size)
    os.truncate(largest, largest.stat().st_size // 2)  # a copy or a write that stopped half-way


def garble_the_largest_data_file(state):
    largest = max((p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"), key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 4 : len(data) // 2] = os.urandom(len(data) // 2 - len(data) // 4)  # same size, other bytes
    largest.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage", [overwrite_data_files, cut_the_largest_data_file_short, garble_the_largest_data_file]
)
def test_a_damaged_checkpoint_is_moved_aside_and_the_one_before_resumes(runs, tmp_path, capsys, damage):
    workdir = copy_of(runs[1], tmp_path)
    damage(workdir / "checkpoints" / "8" / "state")
    code, _, err = main(capsys, workdir, TWO_EPOCHS)
    assert (
        code == 0 and "is damaged" in err and "moved it to" in err and (workdir / "damaged" / "checkpoints-8").is_dir()
    )
    assert f"resumed from step 8 ({workdir}/best/8)" in err  # the best checkpoint of the same step
    assert_ends_as(workdir, runs[0])


def test_a_checkpoint_that_cannot_be_written_stops_and_keeps_the_ones_before(runs, tmp_path, capsys, monkeypatch):
    workdir = copy_of(runs[1], tmp_path)
    real = ocp.CheckpointManager.save

    def full(self, step, *args, **kwargs):
        if step == 10:
            raise ValueError("RESOURCE_EXHAUSTED: Error writing: No space left on device [os_error_code='28']")
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    line = one_error_line(*main(capsys, workdir, TWO_EPOCHS))
    assert "cannot write checkpoint 10" in line and "No space left on device (ENOSPC)" in line
    assert checkpoint_lib.Checkpoints(str(workdir), read_only=True).steps()["checkpoints"] == [5, 8]
    monkeypatch.setattr(ocp.CheckpointManager, "save", real)
    assert main(capsys, workdir, TWO_EPOCHS)[0] == 0
    assert_ends_as(workdir, runs[0])


# ----------------------------------------------------------------------------- lock, numbers, signals


def test_a_file_system_without_locks_is_told_from_a_lock_held(runs, capsys, monkeypatch):
    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    line = one_error_line(*main(capsys, runs[0], TWO_EPOCHS))
    assert (
        "does not support file locks" in line and "--config.train.lock_workdir=False" in line and "in use" not in line
    )
    code, _, err = main(capsys, runs[0], TWO_EPOCHS, "--config.train.lock_workdir=False")
    assert code == 0 and "finished at step 16 already" in err


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.optim.learning_rate=1e39", "optim.learning_rate=1e+39 is not a finite number (in float32"),
        ("--config.optim.learning_rate=nan", "optim.learning_rate=nan is not a finite number"),
        ("--config.optim.learning_rate=-0.01", "optim.learning_rate=-0.01 must be positive"),
        ("--config.optim.learning_rate=20.0", "optim.learning_rate=20.0 must be in [0, 10)"),
        ("--config.optim.momentum=1.0", "optim.momentum=1.0 must be in [0, 1)"),
        ("--config.model.lrn_k=-2.0", "model.lrn_k=-2.0 must be positive"),
        ("--config.optim.bias_lr_multiplier=-1.0", "optim.bias_lr_multiplier=-1.0 must not be negative"),
    ],
)
def test_numbers_that_cannot_train_are_refused_before_anything_is_written(tmp_path, capsys, override, message):
    line = one_error_line(*main(capsys, tmp_path / "run", override))
    assert message in line and not (tmp_path / "run").exists()


# `python -m alexnet_jax.main ARGS`, which signals itself as it starts importing a library: the signal
# lands at that moment of the start-up whatever the machine's load (a timer would sometimes land after
# the imports, when the training loop takes the signal instead).
SIGNAL_ON_IMPORT = """
import os, runpy, signal, sys
library, signal_number = sys.argv[1], int(sys.argv[2])
class SignalOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == library:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal_number)
sys.meta_path.insert(0, SignalOnImport())
sys.argv = ["alexnet_jax.main", *sys.argv[3:]]
runpy.run_module("alexnet_jax.main", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("library,signal_number", [("jax", signal.SIGTERM), ("tensorflow", signal.SIGINT)])
def test_a_signal_while_the_command_imports_its_libraries_is_one_line(tmp_path, library, signal_number):
    """The first seconds of `python -m alexnet_jax.main`: JAX or TensorFlow still loading."""
    code, out, err = helpers.run_python(
        "-c", SIGNAL_ON_IMPORT, library, str(int(signal_number)), *ARGS, f"--workdir={tmp_path / 'run'}", timeout=60
    )
    assert code == 0 and out == "", err[-3000:]
    assert err.strip().splitlines() == [stopping.stopped_line(signal.Signals(signal_number).name)]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("when", ["start-up", "training", "final evaluation"])
def test_sigterm_or_sigint_at_any_moment_leaves_a_resumable_workdir(runs, tmp_path, capsys, monkeypatch, when):
    workdir = copy_of(runs[1], tmp_path)
    signal_number = signal.SIGINT if when == "training" else signal.SIGTERM
    if when == "start-up":
        real_build = train.build
        monkeypatch.setattr(train, "build", lambda *a, **k: os.kill(os.getpid(), signal_number) or real_build(*a, **k))
    elif when == "training":
        real_build = train.build

        def build(*args, **kwargs):
            setup = real_build(*args, **kwargs)
            step = setup.train_step
            calls = []

            def stepping(*step_args):
                calls.append(1)
                if len(calls) == 3:  # step 11
                    os.kill(os.getpid(), signal_number)
                return step(*step_args)

            setup.train_step = stepping
            return setup

        monkeypatch.setattr(train, "build", build)
    else:
        real = train._evaluate_all
        monkeypatch.setattr(
            train, "_evaluate_all", lambda *a, **k: os.kill(os.getpid(), signal_number) or real(*a, **k)
        )
    code, out, err = main(capsys, workdir, TWO_EPOCHS)
    name = signal.Signals(signal_number).name
    assert code == 0 and "Traceback" not in err, err[-3000:]
    if when == "training":
        assert json.loads(out) == {"stopped_at_step": 11} and f"stopped at step 11 on {name}" in err
    else:
        assert err.strip().splitlines()[-1] == f"stopped by {name}; nothing was lost: rerun the same command to resume"
    monkeypatch.undo()
    assert main(capsys, workdir, TWO_EPOCHS)[0] == 0
    assert_ends_as(workdir, runs[0])


def test_no_checkpoint_holds_a_non_finite_parameter(runs):
    """A finite loss and gradient times an absurd rate (not one the config check lets through: set here
    on the state directly) overflows the parameters: the loop stops before it saves them."""
    state = newest(runs[1])[0]
    state = state.replace(
        params={**state.params, "fc8": {**state.params["fc8"], "bias": state.params["fc8"]["bias"] * np.inf}}
    )
    checkpoints = checkpoint_lib.Checkpoints(str(runs[1]), read_only=True)
    try:
        with pytest.raises(train.NonFiniteError, match="an update that overflowed the parameters"):
            train._check_finite(state, str(runs[1]), checkpoints, saving=True)
        train._check_finite(state, str(runs[1]), checkpoints, saving=False)  # between saves, the loop does not look
    finally:
        checkpoints.close()
