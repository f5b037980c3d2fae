"""Everything a GPU measurement needs, in one run: the paper's training step in float32 and bfloat16,
the same network under PyTorch (eager and torch.compile), and each per-backend implementation choice.

    bench/gpu.sh [--batches=128,512] [--dtypes=float32,bfloat16] [--steps=20] [--markdown=BENCHMARKS.md]
    bench/gpu.sh --reduced          # seconds on a CPU: what the tests run, so that the script cannot rot

Rows (each JAX row in a fresh process, so that its compile time and peak memory are its own):
  train        the training step of configs/paper.py (one device, both towers on it, every choice
               "auto") on synthetic batches already on the device: compile seconds, images/s (the
               median of `--steps` steps dispatched back to back), peak device memory, TFLOP/s
               (3 x 2 x 724.4 M multiply-adds per image) and its fraction of the card's dense peak
               (bfloat16: 989 TFLOP/s; float32, which XLA runs as TF32 on tensor cores: 494) and of
               a large matrix product measured in the same run;
  prepared     the same step fed by the input pipeline from 256 x 256 records (docs/data.md) of
               made-up images written by `prepare` on the spot, when TensorFlow is installed (the
               pipeline's rate, on this machine's cores, bounds the step's);
  choice       first: "auto", then one implementation choice changed from it (pool_gradient,
               lrn_gradient, grouped_conv, parallel.micro_batch), at the largest batch, first dtype;
               a change 3 % faster or more is then used in every other row (their `change` column);
  torch        the same network in PyTorch, eager and torch.compile, same dtypes and batches
               (bench/torch_compare.py's network, checked against ours before timing).
Writes bench/results/gpu.json and, with --markdown, appends a section to that file. This process
only plans and collects: every measurement runs in a child (the libraries are imported there), so
that no two processes hold the device at once.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MACS_PER_IMAGE = 724_406_816  # the paper's network at 224 x 224 (python -m alexnet_jax.summary)
DATASHEET_TFLOPS = {"bfloat16": 989.0, "float32": 494.0}  # H100/H200 SXM, dense; float32 as TF32
CHOICES = {"pool_gradient": "xla", "lrn_gradient": "autodiff", "grouped_conv": "feature_group", "micro_batch": 64}


def _jax_row(spec: dict) -> dict:
    """One training-step measurement, in this (fresh) process."""
    import jax
    import numpy as np

    from alexnet_jax import networks, optim, parallel, steps
    from configs import paper

    config = paper.get_config()
    config.model.dtype, config.model.image_size = spec["dtype"], spec["image_size"]
    config.model.num_classes = spec["classes"]
    for key, value in spec.get("choice", {}).items():
        if key == "micro_batch":
            config.parallel.micro_batch = value
        else:
            config.model[key] = value
    net, optimizer, mesh = networks.from_config(config.model), optim.paper_sgd(), parallel.make_mesh(1, 1)
    batch, size = spec["batch"], spec["image_size"]
    micro_batch = steps.resolve_micro_batch(config.parallel.micro_batch, batch, size)
    mean = np.full((size + 32, size + 32, 3), 118.0, np.float32)
    train_step = steps.make_train_step(net, optimizer, mesh, mean, micro_batch)
    state = steps.create_train_state(net, optimizer, mesh, jax.random.key(0), size, 0.01)
    rng = np.random.default_rng(0)

    def host_batch():
        return {
            "images": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
            "labels": rng.integers(0, spec["classes"], batch).astype(np.int32),
            "weight": np.ones(batch, np.float32),  # every example readable, as the pipeline marks them
            "window": np.stack(
                [rng.integers(0, 33, batch), rng.integers(0, 33, batch), rng.integers(0, 2, batch)], 1
            ).astype(np.int32),
            "lighting": rng.normal(0, 5, (batch, 3)).astype(np.float32),
        }

    key = jax.random.key(1)
    synthetic = [parallel.host_batch_to_global(host_batch(), mesh) for _ in range(2)]
    start = time.perf_counter()
    compiled = train_step.lower(state, synthetic[0], key).compile()
    compile_s = time.perf_counter() - start
    if spec.get("prepared"):
        from alexnet_jax import input_pipeline  # needs TensorFlow: only for this row

        data = _prepared_data(spec["prepared"], spec["classes"])
        batches = parallel.prefetch_to_device(
            input_pipeline.train_batches(data, config.data, crop=size, global_batch=batch, start_step=0, seed=0), mesh
        )
    else:
        batches = (synthetic[i % 2] for i in range(10**9))
    for _ in range(3):
        state, metrics = compiled(state, next(batches), key)
    jax.block_until_ready(state)
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        for _ in range(spec["steps"]):
            state, metrics = compiled(state, next(batches), key)
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - start) / spec["steps"])
    step_s = statistics.median(times)
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "compile_s": compile_s,
        "step_s": step_s,
        "images_per_s": batch / step_s,
        "micro_batch": micro_batch,
        "peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20 or None,
        "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
    }


def _prepared_data(root: str, classes: int):
    from alexnet_jax import datasets
    from configs import paper

    config = paper.get_config()
    config.data.source, config.data.data_dir = "records", root
    return datasets.create_data(config.data, classes)


def _make_prepared_copy(root: str, images: int, classes: int) -> None:
    """256 x 256 records of made-up images, written by `prepare --copy_to --format=records` (in a
    child: this process imports no TensorFlow)."""
    flags = [
        "--config=configs/smoke.py",
        f"--config.data.fake_train_size={max(images, classes)}",
        f"--config.data.fake_eval_size={classes}",
        f"--config.data.fake_num_classes={classes}",
        f"--config.model.num_classes={classes}",
        "--config.data.resize_size=256",
        f"--copy_to={root}",
        "--format=records",
    ]
    root_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "alexnet_jax.prepare", *flags], cwd=root_dir, check=True, capture_output=True)


def _matmul_tflops(dtype: str, side: int) -> float:
    """A large square matrix product's rate on this device: the practical ceiling to compare with."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (side, side), dtype=jnp.dtype(dtype))
    product = jax.jit(lambda a: a @ a)
    jax.block_until_ready(product(x))
    start = time.perf_counter()
    for _ in range(10):
        y = product(x)
    jax.block_until_ready(y)
    return 10 * 2 * side**3 / (time.perf_counter() - start) / 1e12


def _child(spec: dict, timeout: float) -> dict:
    """`spec` measured by a fresh process; an error or a timeout becomes the row's `error`."""
    command = [sys.executable, os.path.abspath(__file__), f"--_one={json.dumps(spec)}"]
    return _run_child(command, timeout)


def _run(command: list[str], timeout: float) -> tuple[str | None, str]:
    """(error, stdout) of a measuring process: the error is its last stderr line, or the timeout."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s", ""
    if out.returncode != 0:
        return (out.stderr.strip().splitlines() or ["failed"])[-1][:300], ""
    return None, out.stdout


def _run_child(command: list[str], timeout: float) -> dict:
    """The JSON object a measuring process prints last, or {"error": ...}."""
    error, stdout = _run(command, timeout)
    return {"error": error} if error else json.loads(stdout.strip().splitlines()[-1])


def _torch_rows(dtype: str, batches: str, image_size: int, classes: int, repeats: int, timeout: float) -> list[dict]:
    """PyTorch eager and torch.compile training steps, via bench/torch_compare.py, in a fresh process."""
    if image_size != 224 or classes != 1000:
        return [{"framework": "torch", "error": "the PyTorch network is the paper's 224 x 224, 1,000 classes"}]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "torch.json")
        command = [
            sys.executable,
            os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_compare.py"),
            f"--batches={batches}",
            f"--dtype={dtype}",
            "--what=train",
            "--torch_modes=eager,compile",
            "--torch_only",
            f"--repeats={repeats}",
            "--warmup=2",
            "--pause=0",
            f"--out={out}",
        ]
        error, _ = _run(command, timeout)
        if error or not os.path.exists(out):
            return [{"framework": "torch", "error": error or "bench/torch_compare.py wrote no results"}]
        with open(out) as f:
            rows = json.load(f)["rows"]
    return [
        {
            "framework": r["framework"],
            "batch": r["batch"],
            "compile_s": r["compile_s"],
            "step_s": r["step_median_s"],
            "images_per_s": r["images_per_s"],
            "peak_mb": r.get("peak_memory_mb"),
        }
        for r in rows
    ]


def _device(dtypes: str, reduced: bool) -> dict:
    """The device, and a large matrix product's TFLOP/s in each of `dtypes` on it (one process: a
    second would only import JAX again)."""
    import jax

    backend = jax.default_backend()
    side = 1024 if reduced else (8192 if backend != "cpu" else 2048)
    return {
        "device": jax.devices()[0].device_kind,
        "backend": backend,
        "jax": jax.__version__,
        "matmul_side": side,
        "matmul_tflops": {d: _matmul_tflops(d, side) for d in dtypes.split(",")},
    }


def measure(args) -> dict:
    rows, started = [], time.time()
    me = [sys.executable, os.path.abspath(__file__)]
    device = _run_child([*me, f"--_device={args.dtypes}", *(["--reduced"] if args.reduced else [])], args.timeout)
    side, matmul_tflops = device.pop("matmul_side"), device.pop("matmul_tflops")
    result = {
        "date": datetime.date.today().isoformat(),
        **device,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "rows": rows,
    }

    def save():
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    result["matmul_tflops"] = matmul_tflops
    print(
        f"{result['device']}: {side}^3 matrix product "
        + ", ".join(f"{d} {t:.1f} TFLOP/s" for d, t in result["matmul_tflops"].items()),
        flush=True,
    )
    base = {"image_size": args.image_size, "classes": args.classes, "steps": args.steps, "repeats": args.repeats}
    batches = [int(b) for b in args.batches.split(",")]
    prepared = None
    if args.prepared_images:
        # The prepared-copy rows need the input pipeline, hence TensorFlow (looked up, not imported:
        # only the measuring child uses it).
        if importlib.util.find_spec("tensorflow") is not None:
            prepared = tempfile.mkdtemp(prefix="gpu_bench_prepared_")
            atexit.register(shutil.rmtree, prepared, True)  # made-up images: gone when the run ends
            _make_prepared_copy(prepared, args.prepared_images, args.classes)
        else:
            rows.append(
                {
                    "what": "prepared",
                    "error": "TensorFlow is not installed here: the input pipeline "
                    "cannot run, so the prepared-copy rows are not measured",
                }
            )

    def run_plan(plan):
        for what, spec in plan:
            change = ", ".join(f"{k}={v}" for k, v in spec.get("choice", {}).items())
            row = {"what": what, "framework": "jax", "dtype": spec["dtype"], "batch": spec["batch"], "change": change}
            row.update(_child(spec, args.timeout))
            rows.append(row)
            print(json.dumps(row), flush=True)
            save()

    dtypes, largest = args.dtypes.split(","), max(batches)
    alternatives = dict(CHOICES)
    if args.reduced:
        alternatives["micro_batch"] = 2  # the reduced batch of 4 in chunks of 2
    elif result["backend"] == "cpu":
        alternatives["micro_batch"] = 0  # on a CPU "auto" cuts the batch in chunks: try the whole batch instead
    # Each implementation choice changed alone, against "auto", at the largest batch: the faster
    # ones (by 3 % or more) are then used for every other row, and reported as such.
    reference = {**base, "dtype": dtypes[0], "batch": largest}
    run_plan([("choice", reference)])
    chosen = [c for c in args.choices.split(",") if c and (c != "micro_batch" or alternatives[c] < largest)]
    chosen = [c for c in chosen if c != "micro_batch" or result["backend"] != "cpu" or args.image_size >= 224]
    run_plan([("choice", {**reference, "choice": {k: alternatives[k]}}) for k in chosen])
    auto_rate = rows[-len(chosen) - 1].get("images_per_s", 0)
    winners = {
        k: alternatives[k]
        for k, row in zip(chosen, rows[-len(chosen) :])
        if row.get("images_per_s", 0) > 1.03 * auto_rate
    }
    result["faster_choices"] = winners
    print(f"faster than auto: {winners or 'none'}", flush=True)
    plan = [("train", {**base, "dtype": d, "batch": b, "choice": winners}) for d in dtypes for b in batches]
    if not winners:  # "auto" at the first dtype and largest batch is measured already
        rows.append({**rows[-len(chosen) - 1], "what": "train"})
        plan = [(what, spec) for what, spec in plan if (spec["dtype"], spec["batch"]) != (dtypes[0], largest)]
    run_plan(plan)
    if not args.no_torch:
        for dtype in dtypes:
            for row in _torch_rows(dtype, args.batches, args.image_size, args.classes, args.repeats, args.timeout * 2):
                rows.append({"what": "train", "dtype": dtype, **row})
                print(json.dumps(rows[-1]), flush=True)
                save()
    if prepared:
        run_plan(
            [
                ("prepared", {**base, "dtype": d, "batch": b, "prepared": prepared, "choice": winners})
                for d in dtypes
                for b in batches
            ]
        )
    flops = 3 * 2 * MACS_PER_IMAGE * (args.image_size / 224) ** 2
    for row in rows:
        if "images_per_s" in row:
            row["tflops"] = row["images_per_s"] * flops / 1e12
            row["of_datasheet_peak"] = row["tflops"] / DATASHEET_TFLOPS.get(row["dtype"], float("nan"))
            row["of_matmul"] = row["tflops"] / result["matmul_tflops"].get(row["dtype"], float("nan"))
    result["seconds"] = round(time.time() - started)
    save()
    return result


def markdown(result: dict) -> str:
    a = result["args"]
    flags = (
        "--reduced"
        if a["reduced"]
        else (
            f"--batches={a['batches']} --dtypes={a['dtypes']} --steps={a['steps']} --repeats={a['repeats']} "
            f"--prepared_images={a['prepared_images']}" + (" --no_torch" if a["no_torch"] else "")
        )
    )
    lines = [
        f"\n### {result['device']} ({result['backend']}), {result['date']}\n",
        f"jax {result['jax']}, Python {result['python']}, {result['cores']} host cores; matrix product "
        + ", ".join(f"{d} {t:.0f} TFLOP/s" for d, t in result["matmul_tflops"].items())
        + "; the whole run took "
        f"{result['seconds']} s.\n",
        f"```bash\nbench/gpu.sh {flags}\n```\n",
        "| what | framework | dtype | batch | change | images/s | step ms | compile s | peak MB | TFLOP/s | "
        "of datasheet peak | of matrix product |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        change = r.get("change", "")
        if "error" in r:
            lines.append(
                f"| {r.get('what', '')} | {r.get('framework', '')} | {r.get('dtype', '')} | {r.get('batch', '')}"
                f" | {change} | not measured: {r['error']} | | | | | | |"
            )
            continue
        peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") else "-"
        lines.append(
            f"| {r['what']} | {r['framework']} | {r['dtype']} | {r['batch']} | {change} | {r['images_per_s']:,.0f} "
            f"| {1000 * r['step_s']:.2f} | {r['compile_s']:.1f} | {peak} | {r['tflops']:.1f} | "
            f"{r['of_datasheet_peak']:.1%} | {r['of_matmul']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="128,512")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument(
        "--prepared_images", type=int, default=2048, help="images in the prepared copy (0: no such rows)"
    )
    parser.add_argument("--timeout", type=float, default=240, help="seconds per row")
    parser.add_argument("--no_torch", action="store_true", help="leave PyTorch out")
    parser.add_argument(
        "--choices", default=",".join(CHOICES), help="implementation choices to measure, each changed alone"
    )
    parser.add_argument(
        "--reduced",
        action="store_true",
        help="tiny sizes for a CPU: 64 x 64 images, 10 classes, batch 4, float32, 2 steps, no PyTorch",
    )
    parser.add_argument("--out", default="bench/results/gpu.json")
    parser.add_argument("--markdown", default=None, help="append the table to this file (e.g. BENCHMARKS.md)")
    parser.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_device", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._one or args._device:  # a child: measure one thing, print it as JSON
        print(json.dumps(_jax_row(json.loads(args._one)) if args._one else _device(args._device, args.reduced)))
        return None
    if args.reduced:
        args.batches, args.steps, args.repeats, args.image_size, args.classes = "4", 2, 1, 64, 10
        args.dtypes = "float32" if args.dtypes == parser.get_default("dtypes") else args.dtypes
        args.prepared_images, args.no_torch = 8, True
    result = measure(args)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(markdown(result))
        print(f"appended the table to {args.markdown}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
