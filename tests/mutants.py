"""Deliberate bugs, one at a time, and the tests that catch them: how strong the suite is.

    python tests/mutants.py                 # every mutant (about 13 minutes on 2 cores)
    python tests/mutants.py --only=NAME,... # some of them
    python tests/mutants.py --list          # the mutants, nothing run

Each mutant is a textual patch of one source file (an exact old string, found exactly once, and its
replacement: a mutant whose old string is gone stops the script, so the list follows the code). It
is applied in a copy of the repository (the working tree is shared and never touched), the tests
that guard that code run there (`pytest -x -q`, under the shared lock /tmp/alexnet_heavy.lock), the
file is restored, and the failing tests are reported. A mutant that no test catches is a gap in the
suite: the script exits 1. Run on demand, not in CI; docs/testing.md holds the table it printed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPY = os.path.join("/tmp", "mutants_tree")
LOCK = "/tmp/alexnet_heavy.lock"
LEFT_OUT = (".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", "runs", "*.egg-info")


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    area: str
    path: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: files or node ids
    bug: str  # in words


MUTANTS = (
    Mutant(
        "conv3-sees-one-tower",
        "model",
        "alexnet_jax/networks/alexnet.py",
        'ConvLayer("conv3", widths[2], 3, 1, 1, BOTH_TOWERS,',
        'ConvLayer("conv3", widths[2], 3, 1, 1, OWN_TOWER,',
        ("tests/test_alexnet.py",),
        "conv3 grouped like conv4 (section 3.5: it sees both towers)",
    ),
    Mutant(
        "biases-of-zero",
        "model",
        "alexnet_jax/networks/alexnet.py",
        '"paper": (0.01, {}, 1.0, _BIAS_ONE_LAYERS),',
        '"paper": (0.01, {}, 0.0, _BIAS_ONE_LAYERS),',
        ("tests/test_alexnet.py",),
        "section 5's biases of 1 in conv2, conv4, conv5, fc6, fc7 left at 0",
    ),
    Mutant(
        "config-drops-lrn",
        "model",
        "alexnet_jax/networks/alexnet.py",
        "lrn=model_config.lrn,",
        "lrn=True,",
        ("tests/test_sweep.py::test_each_study_run_gets_the_network_its_preset_names",),
        "the network built from a config ignores model.lrn (the no_lrn ablation trains the baseline)",
    ),
    Mutant(
        "lrn-alpha-over-n",
        "layers",
        "alexnet_jax/networks/layers.py",
        "base = k + alpha * _channel_window_sum(xf * xf, n)",
        "base = k + alpha / n * _channel_window_sum(xf * xf, n)",
        ("tests/test_layers.py",),
        "LRN's alpha divided by n (PyTorch's and Caffe's convention, not the paper's)",
    ),
    Mutant(
        "pool-gradient-to-last-maximum",
        "layers",
        "alexnet_jax/networks/layers.py",
        "better = view > best",
        "better = view >= best",
        ("tests/test_layers.py",),
        "the hand-written max-pool gradient goes to the last of tied maxima, not the first",
    ),
    Mutant(
        "conv1-padded-top-left",
        "layers",
        "alexnet_jax/networks/layers.py",
        "return 0, (out - 1) * stride + kernel - size",
        "return (out - 1) * stride + kernel - size, 0",
        ("tests/test_layers.py",),
        "cuda-convnet's overhang put on the top and left instead of the bottom and right",
    ),
    Mutant(
        "dropout-mask-per-device",
        "layers",
        "alexnet_jax/networks/layers.py",
        "(first_example + jnp.arange(local_batch))",
        "(jnp.arange(local_batch))",
        ("tests/test_layers.py",),
        "dropout masks drawn from the local example index: each layout drops other neurons",
    ),
    Mutant(
        "tower-gradients-doubled",
        "parallel layout",
        "alexnet_jax/steps.py",
        "lax.psum(g, DATA) / lax.axis_size(MODEL), grads)",
        "lax.psum(g, DATA), grads)",
        ("tests/test_parallel.py",),
        "the towers' copies of the logits' gradient not divided out: gradients x2 on two devices",
    ),
    Mutant(
        "eval-top5-is-top1",
        "parallel layout",
        "alexnet_jax/steps.py",
        "hit_5 = jnp.any(top_k == labels[:, None], axis=-1)",
        "hit_5 = top_k[:, 0] == labels",
        ("tests/test_parallel.py",),
        "the evaluation step counts top-1 hits as top-5 hits",
    ),
    Mutant(
        "eval-padding-counted",
        "parallel layout",
        "alexnet_jax/steps.py",
        '"top1_correct": jnp.sum(hit_1 * mask),',
        '"top1_correct": jnp.sum(hit_1),',
        ("tests/test_parallel.py",),
        "the padding of a last, partial evaluation batch counted as top-1 hits",
    ),
    Mutant(
        "decay-outside-the-rate",
        "optimiser",
        "alexnet_jax/optim.py",
        "return momentum * v - (wd * lr) * w - lr * g",
        "return momentum * v - wd * w - lr * g",
        ("tests/test_optim.py",),
        "weight decay not multiplied by the learning rate (section 5's rule has 0.0005 * lr * w)",
    ),
    Mutant(
        "plateau-waits-one-more",
        "schedule",
        "alexnet_jax/optim.py",
        "if waited >= patience and state.cuts < max_cuts:",
        "if waited > patience and state.cuts < max_cuts:",
        ("tests/test_optim.py",),
        "the rate is cut one evaluation after `patience` evaluations without improvement",
    ),
    Mutant(
        "flips-ignore-the-config",
        "input pipeline",
        "alexnet_jax/input_pipeline.py",
        "mirror = mirror & data_config.random_flip",
        "mirror = mirror",
        ("tests/test_input_pipeline.py",),
        "data.random_flip=False still mirrors half the patches",
    ),
    Mutant(
        "pca-eigenvalues",
        "input pipeline",
        "alexnet_jax/preprocess.py",
        "alpha * tf.constant(scale, tf.float32)",
        "alpha * tf.constant(scale, tf.float32) ** 2",
        ("tests/test_input_pipeline.py",),
        "PCA lighting scaled by the eigenvalues instead of their square roots",
    ),
    Mutant(
        "reflection-not-applied",
        "input pipeline",
        "alexnet_jax/steps.py",
        "images = jnp.where(mirrored, images[:, :, ::-1], images)",
        "images = images",
        ("tests/test_steps.py",),
        "a patch whose window says mirrored reaches the network unmirrored",
    ),
    Mutant(
        "records-window-from-the-top",
        "input pipeline",
        "alexnet_jax/records.py",
        "index * self.record_bytes + top * row_bytes",
        "index * self.record_bytes",
        ("tests/test_records.py",),
        "a patch read from records starts at the image's first row, whatever its window says",
    ),
    Mutant(
        "prepare-resumes-after-its-tail",
        "input pipeline",
        "alexnet_jax/prepare.py",
        "pixels.truncate(saved_bytes)",
        "pixels.flush()",
        ("tests/test_prepare.py",),
        "a resumed records copy appends after what the interrupted run wrote past its saved position",
    ),
    Mutant(
        "tmp-folders-kept",
        "checkpointing",
        "alexnet_jax/checkpoint.py",
        "cleanup_tmp_directories=not read_only,",
        "cleanup_tmp_directories=False,",
        ("tests/test_checkpoint.py",),
        "the leftovers of a save cut short are not cleared, and block saving that step again",
    ),
    Mutant(
        "resume-reads-from-step-0",
        "resume",
        "alexnet_jax/train.py",
        "start_step=start_step,\n                seed=config.seed,",
        "start_step=0,\n                seed=config.seed,",
        ("tests/test_train.py::test_interrupted_runs_end_bitwise_equal_to_an_uninterrupted_one",),
        "a resumed run reads the batches of the first steps again instead of those after its checkpoint",
    ),
    Mutant(
        "sweep-drops-its-grid",
        "sweep",
        "alexnet_jax/sweep.py",
        '[f"--config={args.config}"] + [f"--config.{field}={value}" for field, value in o] + extra',
        '[f"--config={args.config}"] + extra',
        ("tests/test_sweep.py::test_grid_runs_skip_finished_ones_and_tabulate",),
        "a grid sweep runs every combination with the config's own values",
    ),
    Mutant(
        "lock-shared",
        "workdir",
        "alexnet_jax/workdir.py",
        "fcntl.LOCK_EX | fcntl.LOCK_NB",
        "fcntl.LOCK_SH | fcntl.LOCK_NB",
        ("tests/test_workdir.py",),
        "the workdir's lock is a shared one: two runs train in one workdir",
    ),
    Mutant(
        "fc6-rows-in-chw-order",
        "weights",
        "alexnet_jax/weights.py",
        "kernel = w.reshape(out_features, maps_channels, side, side).transpose(2, 3, 1, 0)",
        "kernel = w.reshape(out_features, maps_channels, side, side).transpose(1, 2, 3, 0)",
        ("tests/test_weights.py",),
        "PyTorch's fc6 imported without reordering its rows from CHW to HWC",
    ),
    Mutant(
        "caffe-conv1-stays-bgr",
        "weights",
        "alexnet_jax/weights.py",
        "return kernel[:, :, ::-1].copy() if layer == model.LAYERS[0] else kernel",
        "return kernel",
        ("tests/test_weights.py",),
        "Caffe's conv1 imported for BGR images",
    ),
    Mutant(
        "pickle-flag-as-another-flags-value",
        "weights",
        "alexnet_jax/loading.py",
        'if name == flag.name and name not in (*_HELP_FLAGS, "config"):',
        'if name in ("workdir", "weights", "allow_pickle"):',
        ("tests/test_loading.py",),
        "the flags read first leave out the tool's other flags, whose values absl reads: `--out --allow_pickle` "
        "(--out's value for absl) stops as an unknown --out",
    ),
    Mutant(
        "unknown-flag-read-past",
        "weights",
        "alexnet_jax/loading.py",
        "    if unknown:\n",
        "    if unknown and False:\n",
        ("tests/test_loading.py",),
        "an unknown flag is left to the full parse: `--bogus --allow_pickle` reads the pickle before absl refuses "
        "the line",
    ),
    Mutant(
        "predict-least-probable-first",
        "predict",
        "alexnet_jax/predict.py",
        'order = np.argsort(-probs, kind="stable")[:k]',
        'order = np.argsort(probs, kind="stable")[:k]',
        ("tests/test_predict.py",),
        "predict prints the least probable classes",
    ),
    Mutant(
        "predict-ignores-ten-crop",
        "predict",
        "alexnet_jax/predict.py",
        "patches = steps.test_crops(images, network.normalisation, crop, ten_crop)",
        "patches = steps.test_crops(images, network.normalisation, crop, False)",
        ("tests/test_portability.py::test_predict_and_weights_compute_the_network_the_run_evaluated",),
        "predict --ten_crop gives the centre crop's probabilities",
    ),
    Mutant(
        "resume-ignores-a-new-rate",
        "resume",
        "alexnet_jax/train.py",
        "    if decision.learning_rate_changed:\n",
        "    if False:\n",
        ("tests/test_faults.py::test_a_new_learning_rate_on_resume_is_the_rate_from_that_step_on",),
        "a learning rate lowered by hand on resume is listed as a change and then ignored",
    ),
    Mutant(
        "permission-is-damage",
        "checkpointing",
        "alexnet_jax/checkpoint.py",
        "    if files.is_os_fault(error):\n        return False\n",
        "    if files.is_os_fault(error):\n        return True\n",
        ("tests/test_faults.py::test_a_checkpoint_that_cannot_be_read_is_not_damage", "tests/test_checkpoint.py"),
        "a checkpoint that cannot be read for lack of permission (or for an I/O error...) is moved aside as damaged",
    ),
    Mutant(
        "tools-read-config-json",
        "workdir",
        "alexnet_jax/loading.py",
        'saved = (found[0].get("config") if found else None) or workdir_lib.saved_config(workdir)',
        "saved = workdir_lib.saved_config(workdir)",
        ("tests/test_faults.py::test_tools_read_the_config_of_the_checkpoint_they_load",),
        "predict, evaluate and weights pair the best checkpoint with the config of the run's last start",
    ),
    Mutant(
        "hidden-files-are-data",
        "input pipeline",
        "alexnet_jax/image_files.py",
        '    return name.startswith(".")',
        "    return False",
        ("tests/test_image_files.py", "tests/test_datasets.py"),
        "`.ipynb_checkpoints` counted as a class and macOS's `._*` files as images",
    ),
    Mutant(
        "torchvision-input-on-0-255",
        "weights",
        "alexnet_jax/statistics.py",
        "return Normalisation(offset=255.0 * TORCHVISION_MEAN, scale=1.0 / (255.0 * TORCHVISION_STD))",
        "return Normalisation(offset=255.0 * TORCHVISION_MEAN, scale=1.0 / TORCHVISION_STD)",
        ("tests/test_predict.py::test_torchvision_weights_give_torchvision_probabilities",),
        "torchvision's weights fed 0-255 pixels instead of 0-1 ones (the wrong classes of the issue)",
    ),
    Mutant(
        "reuse-ignores-mean-image",
        "steps",
        "alexnet_jax/programs.py",
        'return (type(value), array.shape, array.dtype, bool(getattr(value, "weak_type", False)), digest)',
        'return (type(value), array.shape, array.dtype, bool(getattr(value, "weak_type", False)))',
        ("tests/test_programs.py",),
        "a step built for one mean image reused for another of the same shape (another dataset's run in a sweep)",
    ),
    Mutant(
        "reuse-by-equality-alone",
        "steps",
        "alexnet_jax/programs.py",
        "return (type(value), value, repr(value))",
        "return (type(value), value)",
        ("tests/test_programs.py",),
        "arguments equal by `==` but not the same number (0.0 and -0.0) share a program",
    ),
)


def copy_repository() -> None:
    """The working tree (tracked and untracked files, as they are now) in COPY, without the venv."""
    shutil.rmtree(COPY, ignore_errors=True)
    shutil.copytree(ROOT, COPY, ignore=shutil.ignore_patterns(*LEFT_OUT), symlinks=True)
    found = subprocess.run(
        [sys.executable, "-c", "import alexnet_jax; print(alexnet_jax.__file__)"],
        cwd=COPY,
        env={**os.environ, "PYTHONPATH": COPY},
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not found.startswith(COPY + os.sep):
        raise SystemExit(f"error: in {COPY}, alexnet_jax is imported from {found!r}, not from the copy")


def check_applies(mutant: Mutant, root: str = ROOT) -> str:
    """The file's text; stops when the old string is not in it exactly once (the code moved)."""
    with open(os.path.join(root, mutant.path)) as f:
        text = f.read()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(
            f"error: mutant {mutant.name}: {mutant.old!r} occurs {count} times in {mutant.path}, not once; "
            "the code moved: update the mutant in tests/mutants.py"
        )
    return text


@contextlib.contextmanager
def shared_lock():
    """The lock every heavy job on this machine takes (flock(1) on the same file takes the same lock)."""
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_mutant(mutant: Mutant, lock: bool = True) -> dict:
    """Applies `mutant` in the copy, runs its tests there, restores the file: what failed, and how long."""
    path = os.path.join(COPY, mutant.path)
    original = check_applies(mutant, COPY) if mutant.old else open(path).read()
    try:
        with open(path, "w") as f:
            f.write(original.replace(mutant.old, mutant.new))
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider", "-rf"]
        with shared_lock() if lock else contextlib.nullcontext():
            start = time.time()
            done = subprocess.run(
                [*command, *mutant.tests],
                cwd=COPY,
                env={**os.environ, "PYTHONPATH": COPY},
                capture_output=True,
                text=True,
            )
            seconds = time.time() - start
    finally:
        with open(path, "w") as f:
            f.write(original)
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.MULTILINE)))
    return {"code": done.returncode, "caught_by": failed, "seconds": seconds, "tail": done.stdout[-1500:]}


def markdown(rows: list[tuple[Mutant, dict]]) -> str:
    lines = [
        "| mutant | area | the bug | tests run | caught by |",
        "|---|---|---|---|---|",
    ]
    for mutant, result in rows:
        tests = ", ".join(f"`{t}`" for t in mutant.tests)
        caught = ", ".join(f"`{t}`" for t in result["caught_by"]) or "**not caught**"
        lines.append(f"| `{mutant.name}` | {mutant.area} | {mutant.bug} (`{mutant.path}`) | {tests} | {caught} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated mutant names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument(
        "--clean_first", action="store_true", help="first run the chosen mutants' tests on the unchanged copy"
    )
    parser.add_argument(
        "--hold_lock", action="store_true", help="take the shared lock once for the whole run, not once per mutant"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutant(s) {', '.join(sorted(unknown))}")
    chosen = [m for m in MUTANTS if not names or m.name in names]
    for mutant in chosen:
        check_applies(mutant)
    if args.list:
        for mutant in chosen:
            print(f"{mutant.name:32} {mutant.area:16} {mutant.path}: {mutant.bug}")
        return 0
    copy_repository()
    rows = []
    try:
        with shared_lock() if args.hold_lock else contextlib.nullcontext():
            lock_each = not args.hold_lock
            if args.clean_first:  # a failure without any mutant would be counted as a catch
                tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
                result = run_mutant(Mutant("none", "", chosen[0].path, "", "", tests, ""), lock=lock_each)
                if result["code"] != 0:
                    raise SystemExit(f"error: the tests fail without any mutant:\n{result['tail']}")
            for mutant in chosen:
                result = run_mutant(mutant, lock=lock_each)
                caught = result["code"] != 0 and result["caught_by"]
                verdict = f"caught by {', '.join(result['caught_by'])}" if caught else "NOT CAUGHT"
                print(f"{mutant.name}: {verdict} ({result['seconds']:.0f} s)", flush=True)
                if not caught:
                    print(result["tail"])
                rows.append((mutant, result))
    finally:
        shutil.rmtree(COPY, ignore_errors=True)
    print()
    print(markdown(rows))
    survivors = [m.name for m, r in rows if r["code"] == 0 or not r["caught_by"]]
    print(
        f"\n{len(rows) - len(survivors)} of {len(rows)} mutants caught"
        + (f"; not caught: {survivors}" if survivors else "")
    )
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
