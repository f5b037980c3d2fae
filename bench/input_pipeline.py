"""Training-pipeline throughput against a PIL baseline, on made-up JPEGs of ImageNet-like sizes.

    python bench/input_pipeline.py [--images=1024] [--batch=128] [--repeats=3]
        [--out=bench/results/input_pipeline.json]

Makes `--images` JPEGs (smooth random content, 333-500 x 375-500 pixels, quality 90) in an image
folder, and the 256 x 256 copy of it with `prepare`. Then, on each, times:
  ours  the training pipeline (`input_pipeline.train_batches`: decode, shorter side to 256, centre
        256 crop, mean subtraction, random 224 crop, flip, PCA lighting), tf.data on all cores;
  PIL   the same decode/resize/crop/flip with PIL and NumPy, one worker process per core
        (multiprocessing.Pool), uint8 batches returned to the parent, which converts them to float32
        and subtracts the mean, as a DataLoader with a collate step would.
Each is the median of `--repeats` passes over all images after one warm-up pass; the figures are
images per second and per core.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
            coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
            noisy = np.asarray(coarse, np.int16) + rng.integers(-12, 13, (height, width, 3))
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
                os.path.join(root, split, f"c{i % CLASSES}", f"{i:06d}.jpg"), quality=90
            )


def _pil_example(args) -> np.ndarray:
    path, seed = args
    rng = np.random.default_rng(seed)
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        scale = RESIZE / min(width, height)
        if (width, height) != (RESIZE, RESIZE):
            image = image.resize((max(RESIZE, round(width * scale)), max(RESIZE, round(height * scale))), Image.BILINEAR)
            left, top = (image.size[0] - RESIZE) // 2, (image.size[1] - RESIZE) // 2
            image = image.crop((left, top, left + RESIZE, top + RESIZE))
        array = np.asarray(image)
    top, left = rng.integers(0, RESIZE - CROP + 1, 2)
    patch = array[top : top + CROP, left : left + CROP]
    return patch[:, ::-1] if rng.random() < 0.5 else patch


def _pil_batch(jobs) -> np.ndarray:
    # uint8 across the process boundary (4x less to copy than float32), as a DataLoader would.
    return np.stack([_pil_example(job) for job in jobs])


def time_pil(paths: list[str], batch: int, pool) -> float:
    jobs = [(p, i) for i, p in enumerate(paths)]
    chunks = [jobs[i : i + batch] for i in range(0, len(jobs) - batch + 1, batch)]
    start = time.perf_counter()
    count = 0
    for images in pool.imap(_pil_batch, chunks):
        count += len(np.asarray(images, np.float32) - np.float32(118.0))  # centring, in the parent
    return count / (time.perf_counter() - start)


def time_ours(data, data_config, batch: int) -> float:
    steps = data.train.size // batch
    batches = input_pipeline.train_batches(data, data_config, crop=CROP, global_batch=batch, start_step=0, seed=0)
    start = time.perf_counter()
    count = sum(len(next(batches)["labels"]) for _ in range(steps))
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024, help="training JPEGs to make")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median reported)")
    parser.add_argument("--out", default="bench/results/input_pipeline.json")
    args = parser.parse_args()
    cores = os.cpu_count()
    config = paper.get_config()
    config.model.num_classes = CLASSES
    rows = []
    with tempfile.TemporaryDirectory() as tmp, multiprocessing.get_context("spawn").Pool(cores) as pool:
        raw, copy = os.path.join(tmp, "raw"), os.path.join(tmp, "prepared")
        make_jpegs(raw, args.images)
        config.data.source, config.data.data_dir, config.data.eval_split = "folder", raw, "val"
        prepare.write_copy(datasets.load(config.data), copy, quality=90)
        with open(os.path.join(copy, datasets.PREPARED_FILE), "w") as f:
            json.dump({"resize_size": RESIZE}, f)
        for name, root in (("raw JPEGs", raw), ("prepared 256x256", copy)):
            config.data.data_dir = root
            data = datasets.load(config.data)
            paths = sorted(
                os.path.join(d, f) for d, _, files in os.walk(os.path.join(root, "train")) for f in files
            )
            results = {}
            for label, measure in (
                ("ours", lambda: time_ours(data, config.data, args.batch)),
                ("PIL", lambda: time_pil(paths, args.batch, pool)),
            ):
                measure()  # warm-up: tf.data threads, worker start-up, file cache
                results[label] = statistics.median(measure() for _ in range(args.repeats))
            for label, rate in results.items():
                rows.append(
                    {"source": name, "pipeline": label, "images_per_s": round(rate, 1),
                     "per_core": round(rate / cores, 1), "vs_pil": round(rate / results["PIL"], 2)}
                )  # fmt: skip
    print(f"{'source':<18} {'pipeline':<8} {'img/s':>8} {'per core':>9} {'vs PIL':>7}")
    for r in rows:
        print(f"{r['source']:<18} {r['pipeline']:<8} {r['images_per_s']:>8.1f} {r['per_core']:>9.1f} {r['vs_pil']:>7.2f}")
    result = {"cores": cores, "machine": platform.machine(), "processor": platform.processor(), "args": vars(args), "rows": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
