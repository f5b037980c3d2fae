"""What the tests' XLA settings save and change: the paper's training step on two towers (224 x 224,
1,000 classes, batch 16, the CPU's micro-batches of 8) compiled in fresh processes under XLA's
defaults and under the settings of tests/conftest.py, alternated; for each, the CPU seconds of the
compilation, of one step, and a digest of the step's loss, parameters and momentum.

    python bench/compile_settings.py [--repeats=3]

Prints one line per process and the means; docs/testing.md quotes them.
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

# The second: tests/conftest.py's COMPILE_FLAGS (tests/test_steps.py checks that they stay the same).
SETTINGS = {
    "XLA's defaults": "",
    "the tests'": "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false",
}


def measure() -> dict:
    """In this process: compile the step, run it once, and digest what it returned."""
    import jax
    import numpy as np

    from alexnet_jax import optim, parallel, steps
    from alexnet_jax.networks import alexnet

    net, mesh = alexnet.AlexNet(), parallel.make_mesh(1, 2)
    optimizer = optim.paper_sgd(momentum=0.9, weight_decay=5e-4)
    rng, batch_size = np.random.default_rng(0), 16
    batch = {
        "images": rng.integers(0, 256, (batch_size, 224, 224, 3), dtype=np.uint8),
        "labels": rng.integers(0, 1000, batch_size).astype(np.int32),
        "window": np.stack(
            [rng.integers(0, 33, batch_size), rng.integers(0, 33, batch_size), rng.integers(0, 2, batch_size)], 1
        ).astype(np.int32),
        "lighting": rng.normal(0, 10, (batch_size, 3)).astype(np.float32),
    }
    batch = parallel.host_batch_to_global(batch, mesh)
    state = steps.create_train_state(net, optimizer, mesh, jax.random.key(1), 224, 0.01)
    mean = rng.uniform(90, 140, (256, 256, 3)).astype(np.float32)
    lowered = steps.make_train_step(net, optimizer, mesh, mean, 8).lower(state, batch, jax.random.key(2))
    start = time.process_time()
    compiled = lowered.compile()
    compile_cpu = time.process_time() - start
    start = time.process_time()
    state, metrics = jax.block_until_ready(compiled(state, batch, jax.random.key(2)))
    step_cpu = time.process_time() - start
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get((metrics, state.params, state.opt_state))):
        digest.update(np.asarray(leaf).tobytes())
    return {"compile_cpu_s": compile_cpu, "step_cpu_s": step_cpu, "digest": digest.hexdigest()[:16]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure()))
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = {name: [] for name in SETTINGS}
    for _ in range(args.repeats):
        for name, flags in SETTINGS.items():
            env = {
                **os.environ,
                "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=2".strip(),
                "JAX_PLATFORMS": "cpu",
                "JAX_ENABLE_COMPILATION_CACHE": "false",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONPATH": root,
            }
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child"], env=env, capture_output=True, text=True
            )
            if done.returncode:
                sys.exit(f"the measuring process failed: {done.stderr.strip().splitlines()[-1]}")
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{name:>15}: {results[name][-1]}", flush=True)
    for name, rows in results.items():
        compile_cpu = statistics.mean(r["compile_cpu_s"] for r in rows)
        step_cpu = statistics.mean(r["step_cpu_s"] for r in rows)
        print(f"{name:>15}: compile {compile_cpu:.1f} s CPU, step {step_cpu:.1f} s CPU (means of {len(rows)})")
    digests = {r["digest"] for rows in results.values() for r in rows}
    print("the same bits under both" if len(digests) == 1 else f"different bits: {sorted(digests)}")


if __name__ == "__main__":
    main()
