"""Training-pipeline throughput on 1 and 2 cores against a PIL loader, on made-up JPEGs of ImageNet sizes.

    python bench/input_pipeline.py [--images=1024] [--batch=128] [--repeats=3] [--cores=1,2]
        [--out=bench/results/input_pipeline.json]

Makes `--images` JPEGs (smooth random content, 333-500 x 375-500 pixels, quality 90) in an image
folder, and the 256 x 256 copy of it that `prepare` writes. Then, for each core count, each in a
fresh process pinned to that many cores (so that TensorFlow sizes its thread pools to them), times:
  ours  the training pipeline (`input_pipeline.train_batches`): on the raw files, TensorFlow's
        decoder inside the tf.data graph, shorter side to 256, centre 256 crop, random 224 crop, flip,
        PCA offset; on the prepared copy, the decoding of each crop's window only;
  PIL   the same decode/resize/crop/flip with PIL and NumPy, one worker process per core
        (multiprocessing.Pool), uint8 batches returned to the parent, which converts them to float32
        and subtracts the mean, as a DataLoader with a collate step would.
Each figure is the median of `--repeats` passes over all images after one warm-up pass.
"""

import os

if "BENCH_CORES" in os.environ:  # a measuring child: pinned before TensorFlow sizes its thread pools
    os.sched_setaffinity(0, range(int(os.environ["BENCH_CORES"])))

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from alexnet_jax import datasets, input_pipeline, prepare  # noqa: E402
from configs import paper  # noqa: E402

CLASSES = 4
RESIZE, CROP = 256, 224


def make_jpegs(root: str, count: int) -> None:
    """ImageNet-like JPEGs: low-frequency colour fields plus fine noise, in root/{train,val}/cN/."""
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", max(count // 8, CLASSES))):
        for c in range(CLASSES):
            os.makedirs(os.path.join(root, split, f"c{c}"), exist_ok=True)
        for i in range(n):
            width, height = int(rng.integers(375, 501)), int(rng.integers(333, 501))
            coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
                (width, height), Image.BICUBIC
            )
            noisy = np.asarray(coarse, np.int16) + rng.integers(-12, 13, (height, width, 3))
            path = os.path.join(root, split, f"c{i % CLASSES}", f"{i:06d}.jpg")
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)


def folder_config(root: str):
    config = paper.get_config()
    config.model.num_classes = CLASSES
    config.data.source, config.data.data_dir, config.data.eval_split = "folder", root, "val"
    return config


def make_copy(raw: str, copy: str) -> None:
    config = folder_config(raw)
    prepare.write_copy(datasets.create_data(config.data, CLASSES), copy, quality=90)
    with open(os.path.join(copy, datasets.PREPARED_FILE), "w") as f:
        json.dump({"resize_size": RESIZE}, f)


def _pil_example(args) -> np.ndarray:
    path, seed = args
    rng = np.random.default_rng(seed)
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        if (width, height) != (RESIZE, RESIZE):
            scale = RESIZE / min(width, height)
            size = (max(RESIZE, round(width * scale)), max(RESIZE, round(height * scale)))
            image = image.resize(size, Image.BILINEAR)
            left, top = (image.size[0] - RESIZE) // 2, (image.size[1] - RESIZE) // 2
            image = image.crop((left, top, left + RESIZE, top + RESIZE))
        array = np.asarray(image)
    top, left = rng.integers(0, RESIZE - CROP + 1, 2)
    patch = array[top : top + CROP, left : left + CROP]
    return patch[:, ::-1] if rng.random() < 0.5 else patch


def _pil_batch(jobs) -> np.ndarray:
    # uint8 across the process boundary (4x less to copy than float32), as a DataLoader would.
    return np.stack([_pil_example(job) for job in jobs])


def measure_pil(root: str, batch: int, repeats: int, cores: int) -> float:
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(root, "train")) for f in files)
    jobs = [(p, i) for i, p in enumerate(paths)]
    chunks = [jobs[i : i + batch] for i in range(0, len(jobs) - batch + 1, batch)]

    def one_pass(pool) -> float:
        start, count = time.perf_counter(), 0
        for images in pool.imap(_pil_batch, chunks):
            count += len(np.asarray(images, np.float32) - np.float32(118.0))  # centring, in the parent
        return count / (time.perf_counter() - start)

    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        one_pass(pool)  # warm-up: worker start-up, file cache
        return statistics.median(one_pass(pool) for _ in range(repeats))


def measure_ours(root: str, batch: int, repeats: int) -> float:
    config = folder_config(root)
    data = datasets.create_data(config.data, CLASSES)
    steps = data.train.size // batch

    def one_pass() -> float:
        batches = input_pipeline.train_batches(data, config.data, crop=CROP, global_batch=batch, start_step=0, seed=0)
        next(batches)  # the pipeline's start-up (graph tracing, thread pools) is not throughput
        start = time.perf_counter()
        count = sum(len(next(batches)["labels"]) for _ in range(steps - 1))
        return count / (time.perf_counter() - start)

    one_pass()
    return statistics.median(one_pass() for _ in range(repeats))


def child_rate(pipeline: str, root: str, cores: int, args) -> float:
    """The rate measured by a fresh process pinned to `cores` cores."""
    env = {**os.environ, "BENCH_CORES": str(cores), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [
        sys.executable,
        os.path.abspath(__file__),
        f"--_measure={pipeline}",
        f"--_root={root}",
        f"--batch={args.batch}",
        f"--repeats={args.repeats}",
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024, help="training JPEGs to make")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median reported)")
    parser.add_argument("--cores", default="1,2", help="core counts to measure on")
    parser.add_argument("--out", default="bench/results/input_pipeline.json")
    parser.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        cores = len(os.sched_getaffinity(0))
        rate = (
            measure_ours(args._root, args.batch, args.repeats)
            if args._measure == "ours"
            else measure_pil(args._root, args.batch, args.repeats, cores)
        )
        print(rate)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw, copy = os.path.join(tmp, "raw"), os.path.join(tmp, "prepared")
        make_jpegs(raw, args.images)
        make_copy(raw, copy)
        for source, root in (("raw JPEGs", raw), ("prepared 256x256", copy)):
            for cores in (int(c) for c in args.cores.split(",")):
                rates = {pipeline: child_rate(pipeline, root, cores, args) for pipeline in ("ours", "PIL")}
                for pipeline, rate in rates.items():
                    rows.append(
                        {
                            "source": source,
                            "cores": cores,
                            "pipeline": pipeline,
                            "images_per_s": round(rate, 1),
                            "per_core": round(rate / cores, 1),
                            "vs_pil": round(rate / rates["PIL"], 2),
                        }
                    )
                    print(
                        f"{source:<18} {cores} core(s) {pipeline:<5} {rate:8.1f} img/s {rate / cores:8.1f} per core "
                        f"{rate / rates['PIL']:5.2f}x PIL",
                        flush=True,
                    )
    result = {"cores_available": os.cpu_count(), "machine": platform.machine(), "args": vars(args), "rows": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
