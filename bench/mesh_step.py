"""Times one training step of the paper's network for each (data, model) mesh the devices allow.

    python bench/mesh_step.py [--batch=128] [--image_size=224] [--steps=10] [--warmup=2]
        [--meshes=1x1,1x2,2x2,4x2] [--dtype=float32] [--out=bench/results/mesh_step.json]

Per mesh: compile time, the median (and min/max) of `--steps` timed steps after `--warmup`
untimed ones, images/s, and the bytes that cross devices per step: the towers' activations at
the cross layers (forward and backward) plus the ring all-reduce of the gradients over `data`.
On a CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=8` simulates 8 devices (they share
the cores, so the figures show overheads, not scaling).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import numpy as np

from alexnet_jax import optim, parallel, steps, summary
from alexnet_jax.networks import alexnet


def communication_bytes(table: dict, params_bytes: int, batch: int, data: int, model: int) -> int:
    """Bytes sent between devices in one step, all devices together."""
    # Each of the two towers sends `total_sent_bytes` per image forward, and as much back.
    towers = table["total_sent_bytes"] * batch * 2 * 2 if model == 2 else 0
    # Ring all-reduce: each replica sends 2 (d - 1) / d of its gradient shard, per tower.
    gradients = int(2 * (data - 1) / data * params_bytes) * data if data > 1 else 0
    return towers + gradients


def time_mesh(shape, args, table, params_bytes):
    data, model = shape
    mesh = parallel.make_mesh(data, model)
    net = alexnet.AlexNet(
        num_classes=1000, dtype=np.dtype(args.dtype) if args.dtype != "bfloat16" else jax.numpy.bfloat16
    )
    optimizer = optim.paper_sgd()
    state = steps.create_train_state(net, optimizer, mesh, jax.random.key(0), args.image_size, 0.01)
    rng = np.random.default_rng(0)
    batch = parallel.host_batch_to_global(
        {
            "images": rng.normal(0, 60, (args.batch, args.image_size, args.image_size, 3)).astype(np.float32),
            "labels": rng.integers(0, 1000, args.batch).astype(np.int32),
        },
        mesh,
    )
    train_step = steps.make_train_step(net, optimizer, mesh)
    key = jax.random.key(1)
    start = time.perf_counter()
    compiled = train_step.lower(state, batch, key).compile()
    compile_seconds = time.perf_counter() - start
    for _ in range(args.warmup):
        state, metrics = compiled(state, batch, key)
    jax.block_until_ready(state)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "mesh": f"{data}x{model}",
        "devices": data * model,
        "compile_s": round(compile_seconds, 2),
        "step_median_s": round(median, 4),
        "step_min_s": round(min(times), 4),
        "step_max_s": round(max(times), 4),
        "images_per_s": round(args.batch / median, 1),
        "comm_bytes_per_step": communication_bytes(table, params_bytes, args.batch, data, model),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128, help="global batch (the paper's 128)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mesh")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--meshes", default="1x1,1x2,2x2,4x2", help="data x model shapes, comma-separated")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--out", default="bench/results/mesh_step.json", help="where to write the rows (JSON)")
    args = parser.parse_args()

    table = summary.layer_table(alexnet.AlexNet(), args.image_size)
    params_bytes = table["total_params"] * 4
    rows = []
    print(f"{'mesh':>5} {'compile s':>9} {'step s (median)':>15} {'img/s':>8} {'comm MB/step':>12}")
    for text in args.meshes.split(","):
        shape = tuple(int(x) for x in text.lower().split("x"))
        if shape[0] * shape[1] > jax.device_count() or args.batch % shape[0]:
            print(f"{text:>5} skipped: needs {shape[0] * shape[1]} devices and a batch divisible by {shape[0]}")
            continue
        row = time_mesh(shape, args, table, params_bytes)
        rows.append(row)
        print(
            f"{row['mesh']:>5} {row['compile_s']:>9.1f} {row['step_median_s']:>15.4f} "
            f"{row['images_per_s']:>8.1f} {row['comm_bytes_per_step'] / 1e6:>12.1f}"
        )
    result = {
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "args": vars(args),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
