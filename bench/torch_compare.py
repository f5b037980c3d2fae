"""Our JAX AlexNet against the same network in PyTorch, on the same machine, in the same run.

    pip install -r requirements-bench.txt     # PyTorch: for this benchmark only
    python bench/torch_compare.py [--batches=128,32] [--repeats=5] [--warmup=2] [--dtype=float32]
        [--torch_modes=eager,compile,channels_last] [--out=bench/results/torch_compare.json]
        [--markdown=BENCHMARKS.md]

What is timed, per batch size, on random data after warm-up:
  train   one training step: forward, backward and the SGD-momentum update with weight decay
          (ours: `steps.make_train_step`, the step the training loop runs, with the loop's default
          `parallel.micro_batch`: chunks of 16 on a CPU; PyTorch: the same network
          written below, `torch.optim.SGD(momentum=0.9, weight_decay=5e-4)`, dropout on);
  eval    inference of the centre crop: logits, softmax (ours: `steps.make_eval_step`, which takes
          the uint8 256 x 256 images and cuts the crop on the device, as evaluation does; PyTorch:
          the crops, made beforehand on the host as a torchvision transform would);
  eval10  inference of the paper's 10 crops per image, softmax averaged over them.
The PyTorch network is the paper's: grouped convolutions (`groups=2`), LRN confined to each tower
(n = 5, k = 2, alpha = 1e-4 as the paper prints it: PyTorch's `alpha` is divided by n, so 5e-4 is
passed), overlapping 3/2 max-pooling, 224 x 224 input padded as cuda-convnet did. Before timing,
both are given the same weights and must give the same logits (to float32 rounding), so that the
two sides compute the same thing.

The frameworks alternate: each repeat times one call of every contender in turn, so that drifts of
the machine (clock, other load) hit all alike; each figure is the median over `--repeats`. A pause
(`--pause`) before each timed call lets the previous contender's worker threads stop spinning
(OpenMP's and XLA's pools busy-wait for a while after their work), which would otherwise steal
cores from the next one. "ours vs fastest PyTorch" divides by the faster of the PyTorch modes
measured (eager and `torch.compile` by default). Compile time: ours is `jit(...).lower().compile()`;
PyTorch eager has none (its first call is reported); `torch.compile`'s is its first call. Peak
memory: on a GPU, each framework's own allocator peak; on a CPU, the peak resident memory of a
separate process that runs only that framework's training step (`--_peak`), so that the two do not
share one figure.

Writes the rows as JSON (`--out`) and appends a Markdown section with the machine's details to
`--markdown` (omit it to leave BENCHMARKS.md alone).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import networks, optim, parallel, steps, summary
from alexnet_jax import weights as weights_lib
from alexnet_jax.networks import alexnet
from configs import paper

NUM_CLASSES, IMAGE = 1000, 224
LEARNING_RATE = 0.01


# ------------------------------------------------------------------------------ PyTorch side


def torch_alexnet(torch):
    """The paper's two-tower AlexNet as a torch.nn.Module whose state dict has our `layer` names."""
    nn, F = torch.nn, torch.nn.functional

    class PaperAlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
            self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
            self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
            self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
            self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
            self.fc6 = nn.Linear(256 * 6 * 6, 4096)
            self.fc7 = nn.Linear(4096, 4096)
            self.fc8 = nn.Linear(4096, NUM_CLASSES)

        @staticmethod
        def lrn(x):
            # One window per tower, as on the two GPUs; PyTorch divides alpha by the size.
            return torch.cat([F.local_response_norm(t, 5, alpha=5e-4, beta=0.75, k=2.0) for t in x.chunk(2, 1)], 1)

        def forward(self, x):
            x = F.pad(x, (0, 3, 0, 3))  # cuda-convnet's 224 -> 55 (model.convnet_padding)
            x = F.max_pool2d(self.lrn(F.relu(self.conv1(x))), 3, 2)
            x = F.max_pool2d(self.lrn(F.relu(self.conv2(x))), 3, 2)
            x = F.relu(self.conv3(x))
            x = F.relu(self.conv4(x))
            x = F.max_pool2d(F.relu(self.conv5(x)), 3, 2)
            x = torch.flatten(x, 1)
            x = F.dropout(F.relu(self.fc6(x)), 0.5, self.training)
            x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
            return self.fc8(x)

    return PaperAlexNet()


class TorchContender:
    """PyTorch in one mode: eager (NCHW), channels_last (NHWC memory format) or compile."""

    def __init__(self, torch, mode, device, dtype, params):
        self.torch, self.mode, self.device = torch, mode, device
        self.net = torch_alexnet(torch).to(device)
        state = weights_lib.to_torch_layout(jax.tree.map(np.asarray, params), names="layer")
        self.net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        memory_format = torch.channels_last if mode == "channels_last" else torch.contiguous_format
        self.net = self.net.to(memory_format=memory_format)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LEARNING_RATE, momentum=0.9, weight_decay=5e-4)
        self.autocast = dict(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bfloat16")
        self.memory_format = memory_format
        self.forward = torch.compile(self.net) if mode == "compile" else self.net

    def _sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def set_batch(self, images: np.ndarray, labels: np.ndarray, crops: np.ndarray):
        """Training `images` and `labels`; test `crops` (N, 10, ...), the centre crop first."""
        t = self.torch
        self.images = t.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(
            self.device, memory_format=self.memory_format
        )
        self.labels = t.from_numpy(labels.astype(np.int64)).to(self.device)
        n, k = crops.shape[:2]
        flat = crops.reshape(n * k, *crops.shape[2:]).transpose(0, 3, 1, 2).copy()
        self.crops = t.from_numpy(flat).to(self.device, memory_format=self.memory_format)

    def logits(self, images: np.ndarray) -> np.ndarray:
        t = self.torch
        self.net.eval()
        with t.no_grad():
            x = t.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(self.device)
            return self.net(x).float().cpu().numpy()

    def train(self):
        t = self.torch
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        with t.autocast(**self.autocast):
            loss = t.nn.functional.cross_entropy(self.forward(self.images), self.labels)
        loss.backward()
        self.optimizer.step()
        self._sync()

    def _eval(self, images, crops_per_image):
        t = self.torch
        self.net.eval()
        with t.no_grad(), t.autocast(**self.autocast):
            probs = t.softmax(self.forward(images).float(), -1)
            probs = probs.view(-1, crops_per_image, probs.shape[-1]).mean(1)
            top5 = probs.topk(5, -1).indices
        self._sync()
        return top5

    def eval(self):
        return self._eval(self.crops[::10], 1)

    def eval10(self):
        return self._eval(self.crops, 10)


# ---------------------------------------------------------------------------------- JAX side


class JaxContender:
    """Our code: the jitted train and eval steps that the training loop and evaluation run."""

    mode = "jit"

    def __init__(self, dtype, batch, micro_batch=-1):
        self.micro_batch = steps.resolve_micro_batch(micro_batch, batch, IMAGE)
        self.mesh = parallel.make_mesh(1, 1)
        dtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
        choices = networks.implementation_choices(paper.get_config().model)
        self.net = alexnet.AlexNet(num_classes=NUM_CLASSES, dtype=dtype, **choices)
        self.optimizer = optim.paper_sgd()
        self.state = steps.create_train_state(
            self.net, self.optimizer, self.mesh, jax.random.key(0), IMAGE, LEARNING_RATE
        )
        self.key = jax.random.key(1)
        self.compile_s = {}

    def set_batch(self, images, labels, resized, what=("train", "eval", "eval10")):
        """`images`: float training crops; `resized`: the uint8 256 x 256 images evaluation sends, cut
        into the centre crop or 10 crops on the device. Compiles the steps `what` names."""
        put = lambda b: parallel.host_batch_to_global(b, self.mesh)  # noqa: E731
        labels = labels.astype(np.int32)
        self.train_batch = put({"images": images, "labels": labels})
        self.eval_batch = put({"images": resized, "labels": labels, "mask": np.ones(len(labels), np.float32)})
        if "train" in what:
            start = time.perf_counter()
            train_step = steps.make_train_step(self.net, self.optimizer, self.mesh, None, self.micro_batch)
            self.train_step = train_step.lower(self.state, self.train_batch, self.key).compile()
            self.compile_s["train"] = time.perf_counter() - start
        for name, ten_crop in (("eval", False), ("eval10", True)):
            if name in what:
                start = time.perf_counter()
                eval_step = steps.make_eval_step(self.net, self.mesh, None, IMAGE, ten_crop)
                setattr(self, f"{name}_step", eval_step.lower(self.state.params, self.eval_batch).compile())
                self.compile_s[name] = time.perf_counter() - start

    def train(self):
        self.state, metrics = self.train_step(self.state, self.train_batch, self.key)
        jax.block_until_ready((self.state, metrics))

    def eval(self):
        return jax.block_until_ready(self.eval_step(self.state.params, self.eval_batch))

    def eval10(self):
        return jax.block_until_ready(self.eval10_step(self.state.params, self.eval_batch))


# ------------------------------------------------------------------------------ measurement


def random_batch(batch: int, seed: int = 0):
    """Float training crops, labels, the uint8 256 x 256 images evaluation sends, and PyTorch's test
    crops of them (centre crop first, then the other nine), made on the host as torchvision would."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 60, (batch, IMAGE, IMAGE, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, batch)
    resized = rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
    crops = np.asarray(steps.test_crops(resized, None, IMAGE, ten_crop=True))[:, [4, 0, 1, 2, 3, 5, 6, 7, 8, 9]]
    return images, labels, resized, crops


def check_same_network(ours: JaxContender, theirs: TorchContender) -> float:
    """Largest logit difference of the two forwards on the same images, relative to the logits' scale:
    in float32 at full precision (no bfloat16, no TF32 on a GPU), whatever the timed runs use."""
    images = random_batch(4, seed=7)[0]
    tf32 = theirs.torch.backends.cudnn.allow_tf32, theirs.torch.backends.cuda.matmul.allow_tf32
    theirs.torch.backends.cudnn.allow_tf32 = theirs.torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with jax.default_matmul_precision("highest"):
            forward = jax.jit(ours.net.clone(dtype=jnp.float32).apply)  # one program, not one per operation
            a = np.asarray(forward({"params": ours.state.params}, jnp.asarray(images)))
        b = theirs.logits(images)
    finally:
        theirs.torch.backends.cudnn.allow_tf32, theirs.torch.backends.cuda.matmul.allow_tf32 = tf32
    error = float(np.abs(a - b).max() / np.abs(b).max())
    if error > 1e-3:
        raise SystemExit(f"the PyTorch network does not compute ours: relative logit difference {error:.2e}")
    return error


def peak_rss_mb(framework: str, batch: int, dtype: str, micro_batch: int) -> float | None:
    """Peak resident memory of a fresh process that runs only `framework`'s training step (CPU)."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        f"--_peak={framework}",
        f"--batches={batch}",
        f"--dtype={dtype}",
        f"--micro_batch={micro_batch}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  (peak memory of {framework} not measured: {out.stderr.strip().splitlines()[-1:]})")
        return None
    return float(out.stdout.strip().splitlines()[-1])


def _peak_only(framework: str, batch: int, dtype: str, micro_batch: int) -> None:
    images, labels, resized, crops = random_batch(batch)
    if framework == "jax":
        contender = JaxContender(dtype, batch, micro_batch)
        contender.set_batch(images, labels, resized)
    else:
        import torch

        params = networks.init_params(alexnet.AlexNet(num_classes=NUM_CLASSES), jax.random.key(0), IMAGE)
        contender = TorchContender(torch, "eager", "cpu", dtype, params)
        contender.set_batch(images, labels, crops)
    for _ in range(2):
        contender.train()
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent through exec.
    with open("/proc/self/status") as f:
        print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024)


def _gpu_peak_mb(framework, torch) -> float | None:
    if framework == "jax":
        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use", 0) / 2**20 or None
    return torch.cuda.max_memory_allocated() / 2**20


def machine_details(torch) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--batches", default="128,32", help="batch sizes, comma-separated (the paper's 128; 32 is quicker on a CPU)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per contender (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--torch_modes", default="eager,compile", help="eager, compile, channels_last")
    parser.add_argument("--what", default="train,eval,eval10", help="train, eval (centre crop), eval10 (10 crops)")
    parser.add_argument(
        "--micro_batch",
        type=int,
        default=-1,
        help="ours: parallel.micro_batch (-1: as training does, 16 on a CPU; 0: whole batch)",
    )
    parser.add_argument("--pause", type=float, default=1.0, help="seconds of idle before each timed call")
    parser.add_argument(
        "--torch_only",
        action="store_true",
        help="time PyTorch alone (ours only supplies the weights and the logits checked against)",
    )
    parser.add_argument(
        "--peak_tflops", type=float, default=None, help="device peak for the dtype, for the fraction of peak"
    )
    parser.add_argument("--out", default="bench/results/torch_compare.json")
    parser.add_argument("--markdown", default=None, help="append the table to this Markdown file (e.g. BENCHMARKS.md)")
    parser.add_argument("--_peak", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args._peak:
        return _peak_only(args._peak, batches[0], args.dtype, args.micro_batch)

    import torch

    gpu = jax.default_backend() == "gpu"
    device = "cuda" if gpu else "cpu"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("JAX sees a GPU but this PyTorch build has no CUDA: install a CUDA build of torch")
    details = machine_details(torch)
    table = summary.layer_table(alexnet.AlexNet(), IMAGE)
    forward_flops = 2 * table["total_macs"]  # per image; training counts 3x (forward + two backward)
    work = {"train": 3 * forward_flops, "eval": forward_flops, "eval10": 10 * forward_flops}
    print(
        f"{details['cpu']}, {details['cores']} cores, {details['device']}; jax {details['jax']}, torch "
        f"{details['torch']} ({details['torch_threads']} threads); {args.dtype}"
    )
    rows = []
    for batch in batches:
        images, labels, resized, crops = random_batch(batch)
        ours = JaxContender(args.dtype, batch, args.micro_batch)
        ours.set_batch(images, labels, resized, () if args.torch_only else args.what.split(","))
        contenders = [] if args.torch_only else [("jax", ours)]
        for mode in args.torch_modes.split(","):
            try:
                theirs = TorchContender(torch, mode, device, args.dtype, ours.state.params)
                theirs.set_batch(images, labels, crops)
                difference = check_same_network(ours, theirs)
            except Exception as error:  # e.g. torch.compile without a working compiler
                print(f"  torch {mode}: unavailable ({type(error).__name__}: {str(error)[:200]})")
                continue
            contenders.append((f"torch {mode}", theirs))
            print(f"  batch {batch}: torch {mode} logits match ours to {difference:.1e} (relative)")
        for what in args.what.split(","):
            first_call, times = {}, {name: [] for name, _ in contenders}
            for name, c in contenders:
                start = time.perf_counter()
                getattr(c, what)()
                first_call[name] = time.perf_counter() - start
                for _ in range(args.warmup - 1):
                    getattr(c, what)()
            for _ in range(args.repeats):
                for name, c in contenders:  # interleaved
                    time.sleep(args.pause)  # lets the other framework's spinning worker threads go idle
                    start = time.perf_counter()
                    getattr(c, what)()
                    times[name].append(time.perf_counter() - start)
            best_torch = min((statistics.median(t) for n, t in times.items() if n != "jax"), default=None)
            for name, _ in contenders:
                median = statistics.median(times[name])
                row = {
                    "what": what,
                    "batch": batch,
                    "framework": name,
                    "dtype": args.dtype,
                    "micro_batch": ours.micro_batch if name == "jax" and what == "train" else None,
                    "step_median_s": median,
                    "step_min_s": min(times[name]),
                    "step_max_s": max(times[name]),
                    "images_per_s": batch / median,
                    "compile_s": ours.compile_s[what] if name == "jax" else first_call[name],
                    "tflops": work[what] * batch / median / 1e12,
                }
                if args.peak_tflops:
                    row["fraction_of_peak"] = row["tflops"] / args.peak_tflops
                if name == "jax" and best_torch:
                    row["vs_fastest_torch"] = best_torch / median
                if gpu:
                    row["peak_memory_mb"] = _gpu_peak_mb("jax" if name == "jax" else "torch", torch)
                rows.append(row)
                ratio = f"  x{row['vs_fastest_torch']:.2f} vs fastest torch" if "vs_fastest_torch" in row else ""
                print(
                    f"  {what:6} batch {batch:4} {name:20} {row['images_per_s']:9.1f} img/s  "
                    f"(median {median:.4f} s, first/compile {row['compile_s']:.1f} s){ratio}"
                )
        if not gpu and "train" in args.what:
            for name in ("jax", "torch"):
                peak = peak_rss_mb(name, batch, args.dtype, args.micro_batch)
                for row in rows:
                    if row["what"] == "train" and row["batch"] == batch and row["framework"].split()[0] == name:
                        row["peak_memory_mb"] = peak
    result = {
        "machine": details,
        "args": {k: v for k, v in vars(args).items() if k != "_peak"},
        "forward_flops_per_image": forward_flops,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(markdown_section(result))
        print(f"appended the table to {args.markdown}")


def markdown_section(result: dict) -> str:
    """The run as a Markdown section: machine, command, one row per (what, batch, framework)."""
    m, a = result["machine"], result["args"]
    command = (
        f"python bench/torch_compare.py --batches={a['batches']} --repeats={a['repeats']} --warmup={a['warmup']} "
        f"--dtype={a['dtype']} --torch_modes={a['torch_modes']} --what={a['what']} --pause={a['pause']} "
        f"--micro_batch={a['micro_batch']}"
    )
    lines = [
        f"\n### {m['device']} ({m['backend']}), {a['dtype']}, {m['date']}\n",
        f"Machine: {m['cpu']}, {m['cores']} cores; jax {m['jax']}, torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}.\n",
        f"```bash\n{command}\n```\n",
        "| what | batch | framework | images/s | median s | compile / first call s | peak MB | TFLOP/s "
        "| ours vs fastest PyTorch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        peak = f"{r['peak_memory_mb']:.0f}" if r.get("peak_memory_mb") else "-"
        ratio = f"**{r['vs_fastest_torch']:.2f}**" if "vs_fastest_torch" in r else ""
        framework = r["framework"] + (f" (micro-batch {r['micro_batch']})" if r.get("micro_batch") else "")
        lines.append(
            f"| {r['what']} | {r['batch']} | {framework} | {r['images_per_s']:.1f} | {r['step_median_s']:.4f} | "
            f"{r['compile_s']:.1f} | {peak} | {r['tflops']:.3f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
