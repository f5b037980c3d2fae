"""Where the training step's time goes: a profile of the paper's step, per kernel and per layer and direction.

    python bench/gpu_profile.py [--batches=512,128] [--dtype=bfloat16] [--steps=20] [--markdown]
    python bench/gpu_profile.py --reduced     # seconds on a CPU: what the tests run, so that it cannot rot

For each batch size: the training step of configs/paper.py (224 x 224, 1,000 classes, one device with
both towers, every implementation choice on "auto"), compiled ahead of time, warmed up, then `--steps`
steps recorded with jax.profiler and read back with jax.profiler.ProfileData (no TensorFlow needed):

  kernels      every device kernel (XLA fusion, convolution, GEMM, copy) by total time: calls per step,
               microseconds per step, share of the step;
  layers       the same time attributed to the network's layers and directions (forward, backward,
               update) through each HLO instruction's `op_name` metadata (`.../conv3/...`, a
               `transpose(jvp(...))` in the name marks the backward pass, the optimiser's ops the update);
  busy         the union of the kernels' intervals on the device over the wall time of the steps: the
               share of time the device computes (the rest is launch gaps and host waits);
  memory       the compiled program's arguments, outputs and temporaries (`memory_analysis`), and the
               device's peak;
  ceilings     FLOPs and bytes accessed per image (`cost_analysis`), the matrix rate measured in the same
               run (a bfloat16 8192^3 product) and the copy bandwidth (a 2 GiB array read and written):
               the step time each would allow, beside the measured one.

Writes bench/results/gpu_profile.json, and with --markdown prints the tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet_jax import networks, optim, parallel, steps  # noqa: E402
from configs import paper  # noqa: E402

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
_METADATA = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{([^}]*)\}")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def step_program(batch: int, dtype: str, image_size: int, classes: int):
    """(compiled train step, state, two device batches, key) of configs/paper.py at this size."""
    config = paper.get_config()
    config.model.dtype, config.model.image_size, config.model.num_classes = dtype, image_size, classes
    net, optimizer, mesh = networks.from_config(config.model), optim.paper_sgd(), parallel.make_mesh(1, 1)
    micro_batch = steps.resolve_micro_batch(config.parallel.micro_batch, batch, image_size)
    resize = image_size + image_size // 7
    mean = np.full((resize, resize, 3), 118.0, np.float32)
    train_step = steps.make_train_step(net, optimizer, mesh, mean, micro_batch)
    state = steps.create_train_state(net, optimizer, mesh, jax.random.key(0), image_size, 0.01)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(2):  # two buffers, used in turn: no step reads what the previous one just wrote
        host = {
            "images": rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8),
            "labels": rng.integers(0, classes, batch).astype(np.int32),
            "weight": np.ones(batch, np.float32),  # every example readable, as the pipeline marks them
            "window": np.stack(  # (top, left, mirrored) of each crop in the resized image
                [*rng.integers(0, resize - image_size + 1, (2, batch)), rng.integers(0, 2, batch)], 1
            ).astype(np.int32),
            "lighting": rng.normal(0, 5, (batch, 3)).astype(np.float32),
        }
        batches.append(parallel.host_batch_to_global(host, mesh))
    key = jax.random.key(1)
    compiled = train_step.lower(state, batches[0], key).compile()
    return compiled, state, batches, key


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction (and fused computation) name -> its `op_name` metadata, from the program's text."""
    names, fused = {}, {}
    for line in hlo_text.splitlines():
        found = _METADATA.match(line)
        if not found:
            continue
        op_name = _OP_NAME.search(found.group(2))
        if op_name:
            names[found.group(1)] = op_name.group(1)
            calls = _CALLS.search(line)
            if calls:
                fused[calls.group(1)] = op_name.group(1)
    return {**fused, **names}


def attribute(op_name: str) -> tuple[str, str]:
    """(layer, direction) of an HLO op from its `op_name`: the last layer name in it (else what the op
    belongs to: ReLU, LRN, max-pooling, dropout, the input's normalisation, the optimiser and the step's
    non-finite guard), and `backward` for a transpose (a gradient), `update` for the optimiser."""
    parts = re.split(r"[/()\[\], .]", op_name)
    layer = next((name for name in reversed(parts) if name in LAYERS), None)
    if layer is None:
        for token, name in (
            ("dropout", "dropout"),
            ("lrn", "LRN"),
            ("local_response", "LRN"),
            ("pool", "max-pool"),
            ("relu", "ReLU"),
            ("normalise_images", "input"),
        ):
            if token in op_name:
                layer = name
                break
    if layer is None:
        outside = "jvp(" not in op_name and "transpose(" not in op_name
        layer = "optimiser and guard" if outside else "other"
    if "transpose(" in op_name:
        return layer, "backward"
    return layer, "update" if layer == "optimiser and guard" else "forward"


def device_events(trace_dir: str) -> list[tuple[str, int, int]]:
    """(HLO op, start ns, duration ns) of every kernel the devices ran, from the trace on disk. On a GPU
    they are the CUPTI kernel events of the device planes; on a CPU (the --reduced run) the XLA thunks."""
    path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
    devices = [plane for plane in data.planes if plane.name.startswith("/device:")]
    planes = devices or [plane for plane in data.planes if plane.name == "/host:CPU"]
    found = []
    for plane in planes:
        for line in plane.lines:
            if devices and ("XLA Ops" in line.name or "XLA Modules" in line.name or "Steps" in line.name):
                continue  # summaries of the same kernels: the stream lines hold each one once
            for event in line.events:
                stats = dict(event.stats)
                op = stats.get("hlo_op")
                if op and event.duration_ns > 0:
                    found.append((str(op), int(event.start_ns), int(event.duration_ns)))
    return found


def busy_ns(events) -> int:
    """The length of the union of the events' intervals."""
    total, end = 0, -1
    for _, start, duration in sorted(events, key=lambda e: e[1]):
        if start + duration > end:
            total += start + duration - max(start, end)
            end = start + duration
    return total


def ceilings(dtype: str) -> dict:
    """The device's measured matrix rate (TFLOP/s) and copy bandwidth (GB/s)."""
    size = 8192 if jax.default_backend() != "cpu" else 512
    a = jnp.ones((size, size), jnp.dtype(dtype))
    matmul = jax.jit(lambda x: x @ x)
    copy_elements = (2 << 30) // 4 if jax.default_backend() != "cpu" else 1 << 22
    x = jnp.ones((copy_elements,), jnp.float32)
    copy = jax.jit(lambda v: v * 1.0001)
    out = {}
    for name, fn, arg, work in (
        ("matrix_tflops", matmul, a, 2 * size**3 / 1e12),
        ("copy_gb_per_s", copy, x, 2 * copy_elements * 4 / 1e9),
    ):
        fn(arg).block_until_ready()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn(arg).block_until_ready()
            times.append(time.perf_counter() - start)
        out[name] = work / statistics.median(times)
    return out


def profile(batch: int, dtype: str, step_count: int, image_size: int, classes: int) -> dict:
    compiled, state, batches, key = step_program(batch, dtype, image_size, classes)
    names = op_names(compiled.as_text())
    for i in range(3):
        state, metrics = compiled(state, batches[i % 2], key)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(step_count):
        state, metrics = compiled(state, batches[i % 2], key)
    jax.block_until_ready((state, metrics))
    untraced_s = (time.perf_counter() - start) / step_count
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        for i in range(step_count):
            state, metrics = compiled(state, batches[i % 2], key)
        jax.block_until_ready((state, metrics))
        wall_ns = (time.perf_counter() - start) * 1e9
        jax.profiler.stop_trace()
        events = device_events(trace_dir)
    by_kernel, by_layer = collections.Counter(), collections.Counter()
    calls = collections.Counter()
    for op, _, duration in events:
        by_kernel[op] += duration
        calls[op] += 1
        by_layer[attribute(names.get(op, op))] += duration
    kernel_ns = sum(by_kernel.values())
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost or {}
    memory = compiled.memory_analysis()
    stats = jax.devices()[0].memory_stats() or {}
    per_step = lambda ns: ns / step_count / 1e3  # noqa: E731 (microseconds per step)
    return {
        "batch": batch,
        "dtype": dtype,
        "image_size": image_size,
        "step_ms": untraced_s * 1e3,
        "images_per_s": batch / untraced_s,
        "traced_step_ms": wall_ns / step_count / 1e6,
        "busy_share": busy_ns(events) / wall_ns if wall_ns else None,
        "kernel_us_per_step": per_step(kernel_ns),
        "kernels": [
            {"kernel": op, "calls": calls[op] // step_count, "us": per_step(ns), "share": ns / kernel_ns}
            for op, ns in by_kernel.most_common(40)
        ],
        "layers": [
            {"layer": layer, "direction": direction, "us": per_step(ns), "share": ns / kernel_ns}
            for (layer, direction), ns in sorted(by_layer.items(), key=lambda item: -item[1])
        ],
        "flops_per_image": float(cost.get("flops", 0.0)) / batch,
        "bytes_per_image": float(cost.get("bytes accessed", 0.0)) / batch,
        "memory_mb": {
            "arguments": getattr(memory, "argument_size_in_bytes", 0) / 2**20,
            "outputs": getattr(memory, "output_size_in_bytes", 0) / 2**20,
            "temporaries": getattr(memory, "temp_size_in_bytes", 0) / 2**20,
            "device_peak": stats.get("peak_bytes_in_use", 0) / 2**20 or None,
        },
    }


def markdown(result: dict) -> str:
    """The tables of one run, as BENCHMARKS.md shows them."""
    ceiling = result["ceilings"]
    lines = [f"{result['device']}, jax {result['jax']}, {result['dtype']}; command: `{result['command']}`", ""]
    for row in result["profiles"]:
        flops_ms = row["flops_per_image"] * row["batch"] / (ceiling["matrix_tflops"] * 1e12) * 1e3
        bytes_ms = row["bytes_per_image"] * row["batch"] / (ceiling["copy_gb_per_s"] * 1e9) * 1e3
        lines += [
            f"**Batch {row['batch']}**: {row['images_per_s']:,.0f} images/s ({row['step_ms']:.2f} ms a step); "
            f"the device busy {100 * (row['busy_share'] or 0):.0f} % of the traced step; "
            f"{row['flops_per_image'] / 1e9:.2f} GFLOP and {row['bytes_per_image'] / 1e6:.1f} MB accessed per image: "
            f"{flops_ms:.2f} ms at the measured matrix rate ({ceiling['matrix_tflops']:.0f} TFLOP/s), "
            f"{bytes_ms:.2f} ms at the measured copy bandwidth ({ceiling['copy_gb_per_s']:.0f} GB/s); memory: "
            + ", ".join(f"{k} {v:,.0f} MB" for k, v in row["memory_mb"].items() if v),
            "",
            "| layer | direction | µs per step | share |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['layer']} | {r['direction']} | {r['us']:,.0f} | {100 * r['share']:.1f} % |" for r in row["layers"]
        ]
        lines += ["", "| kernel | calls per step | µs per step | share |", "|---|---|---|---|"]
        lines += [
            f"| `{r['kernel'][:60]}` | {r['calls']} | {r['us']:,.0f} | {100 * r['share']:.1f} % |"
            for r in row["kernels"][:20]
        ]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="512,128")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="bench/results/gpu_profile.json")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--reduced", action="store_true", help="64 px, 10 classes, batch 8, 2 steps (CPU, tests)")
    args = parser.parse_args(argv)
    image_size, classes = (64, 10) if args.reduced else (224, 1000)
    batches = [8] if args.reduced else [int(b) for b in args.batches.split(",")]
    step_count = 2 if args.reduced else args.steps
    result = {
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "dtype": args.dtype,
        "command": "python bench/gpu_profile.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "ceilings": ceilings(args.dtype),
        "profiles": [profile(b, args.dtype, step_count, image_size, classes) for b in batches],
    }
    if not args.reduced:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        print(markdown(result))
    return result


if __name__ == "__main__":
    main()
