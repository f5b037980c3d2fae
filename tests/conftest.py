"""Test set-up: 8 simulated CPU devices, so the two-tower and data-parallel code runs in every test run.

XLA reads XLA_FLAGS once, when JAX first initialises its backends, so this must run before any test
module imports jax. Command-line runs started by the tests inherit this environment but pin their
own device count (`helpers.cli_env`).
"""

import gc
import os
import shutil
import tempfile

# The garbage collector held off while this file and the test files import JAX, TensorFlow and PyTorch
# (as in the tools' own processes: alexnet_jax/cli.py), back on once they have (`cli.end_import_pause`).
gc.disable()

# XLA's compiler at less cost on the CPU: LLVM's optimisation level 1 instead of 2, and XLA's older
# elemental code generator for the fused element-wise loops instead of its newer fusion emitters. The
# paper's training step compiles with 4.9 s of CPU time instead of 8.9 s, runs as fast, and gives the
# same bits (bench/compile_settings.py; tests/test_steps.py checks the bits in every run). Command-line
# runs started by the tests keep these flags (`helpers.cli_env`): the same programs, one cache.
COMPILE_FLAGS = "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), COMPILE_FLAGS, "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# TensorFlow's import skips Keras (1.5 s per test process; the tests use tf.data alone), as the tools
# do in their own processes (`alexnet_jax.cli`). Command-line runs started by the tests go without it
# (`helpers.cli_env`): they must set it themselves.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# glibc hands every freed block over 32 MB back to the operating system, and the next allocation of
# that size faults in and zeroes each page again: paper-size parameter trees are 233 MB, with copies
# per device layout. The test processes keep freed memory for reuse (as `malloc` does below the
# threshold); with this and `gc.freeze` below the suite took 386 s instead of 441 s (docs/testing.md).
# Read when a process starts: the test workers and the command-line runs inherit it.
os.environ.setdefault(
    "GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
)
# One compilation cache for the whole run, made by the process that loads this file first (pytest
# itself, whose environment the test workers and the command-line runs they start inherit): the same
# programs are compiled once, not in every process or every training run. Removed at the end.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="alexnet_jax_tests_xla_")

# PyPI's PyTorch (requirements-test.txt) is its CUDA build, which brings Triton; importing Triton in a
# process that has imported TensorFlow first crashes it (a segmentation fault, whatever the order of
# the tests), and torch.optim and torchvision import it. Every test process imports TensorFlow with
# the test files, so Triton comes first (0.3 s), here, before any test file is collected.
try:
    import triton  # noqa: E402, F401
except ImportError:  # a CPU build of PyTorch, or none
    pass

import jax  # noqa: E402
import pytest  # noqa: E402

from alexnet_jax import cli, networks  # noqa: E402
from alexnet_jax.networks import alexnet  # noqa: E402

# Test files longest first (as measured on a 2-core machine, `pytest --durations=0` summed per file),
# so that pytest-xdist (run with --no-loadscope-reorder) hands the long ones out first and the short
# ones fill in at the end. Files not listed (each under a few seconds) come last.
LONGEST_FIRST = (
    "test_faults.py",
    "test_train.py",
    "test_portability.py",
    "test_parallel.py",
    "test_bench.py",
    "test_weights.py",
    "test_sweep.py",
    "test_layers.py",
    "test_figure1.py",
    "test_vgg.py",
    "test_evaluate.py",
    "test_predict.py",
    "test_alexnet.py",
    "test_configs.py",
    "test_records.py",
    "test_prepare.py",
    "test_finetune.py",
    "test_steps.py",
    "test_networks.py",
    "test_visualize.py",
    "test_main.py",
    "test_datasets.py",
    "test_input_pipeline.py",
)


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_collection_finish(session):
    cli.end_import_pause()  # a test process, once it has imported the test files


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    cli.end_import_pause()  # pytest-xdist's controller, which collects nothing


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # a stable sort: the order within each file is kept


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that skips for want of a module fails instead: the README's set-up installs every test
    dependency (requirements-test.txt: PyTorch for the comparisons with it), so such a skip means a
    set-up that no longer does, and a comparison that silently stopped running."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and call.excinfo is not None and "could not import" in str(call.excinfo.value):
        report.outcome = "failed"
        report.longrepr = f"{call.excinfo.value} (pip install -r requirements-test.txt)"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole test file skipped at collection (`pytest.importorskip` at its top)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and "could not import" in str(report.longrepr):
        report.outcome = "failed"


@pytest.fixture(scope="session")
def paper_params():
    """The paper's network at its operating point (224 x 224, 1,000 classes), initialised once per run."""
    return jax.device_get(networks.init_params(alexnet.AlexNet(), jax.random.key(0), 224))
