"""Test set-up: 8 simulated CPU devices, so the two-tower and data-parallel code runs in every test run.

XLA reads XLA_FLAGS once, when JAX first initialises its backends, so this must run before any test
module imports jax. Command-line runs started by the tests inherit this environment but pin their
own device count (`helpers.cli_env`).
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One compilation cache for the whole run, shared by the test workers (pytest-xdist gives them one run
# id) and the command-line runs the tests start: the same programs are compiled once, not in every
# process or every training run.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
_CACHE = os.path.join(tempfile.gettempdir(), f"alexnet_jax_tests_xla_{_RUN}") if _RUN else tempfile.mkdtemp()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)

import jax  # noqa: E402
import pytest  # noqa: E402

from alexnet_jax import model as model_lib  # noqa: E402

# The files that take longest on a 2-core machine, longest first; the others follow in their own order.
LONGEST_FIRST = ("test_parallel.py", "test_train.py", "test_portability.py", "test_bench.py", "test_sweep.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # a stable sort: the order within each file is kept


@pytest.fixture(scope="session")
def paper_params():
    """The paper's network at its operating point (224 x 224, 1,000 classes), initialised once per run."""
    return jax.device_get(model_lib.init_params(model_lib.AlexNet(), jax.random.key(0), 224))
