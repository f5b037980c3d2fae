"""Test set-up: 8 simulated CPU devices, so the two-tower and data-parallel code runs in every test run.

XLA reads XLA_FLAGS once, when JAX first initialises its backends, so this must run before any test
module imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
