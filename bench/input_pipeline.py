"""Input-pipeline throughput per core for each data format, on JPEGs of real photos at ImageNet sizes.

    python bench/input_pipeline.py [--images=1024] [--batch=128] [--repeats=3] [--cores=1,2]
        [--sources=records,jpeg,raw] [--repeat_copies=8] [--no_pil] [--out=bench/results/input_pipeline.json]

Makes `--images` JPEGs of real photos (random windows of scikit-learn's two sample photos, rescaled
to 333-500 x 375-500 pixels, quality 90) in an image folder, and both 256 x 256 copies `prepare`
writes (records and JPEGs), each repeated `--repeat_copies` times so that an epoch is long enough for
the pipeline's start at each epoch not to count. Then, for each source and core count, each in a
fresh process pinned to that many cores (so that TensorFlow sizes its thread pools to them), times:
  train  the training pipeline (`input_pipeline.train_batches`, 224 x 224 patches, the paper's
         augmentations drawn per image) with the training step's own host work: every batch sent to
         the device as training sends it and waited for. Raw files: TensorFlow's decoder, shorter
         side to 256, centre 256 crop, patch; JPEG copy: each patch's window decoded; records: each
         patch's rows read and its columns copied;
  eval   the evaluation batches (whole 256 x 256 images; the device cuts the 10 crops), sent likewise;
  PIL    (raw and JPEG copy) the same decode/resize/crop/flip with PIL and NumPy, one worker process
         per core (multiprocessing.Pool), uint8 batches returned to the parent, which converts them
         to float32 and subtracts the mean, as a DataLoader with a collate step would.
Each figure is the median of `--repeats` passes over the training images after one warm-up pass.
"""

import os

if "BENCH_CORES" in os.environ:  # a measuring child: pinned before TensorFlow sizes its thread pools
    os.sched_setaffinity(0, range(int(os.environ["BENCH_CORES"])))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
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

from alexnet_jax import datasets, input_pipeline, prepare, records  # noqa: E402
from configs import paper  # noqa: E402

CLASSES = 4
RESIZE, CROP = 256, 224


def make_jpegs(root: str, count: int) -> None:
    """ImageNet-sized JPEGs of real photos: random windows of scikit-learn's two sample photos (a
    Chinese temple, a flower), rescaled to 333-500 x 375-500 pixels, quality 90, in root/{train,val}/cN/."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(photo) for photo in load_sample_images().images]  # 427 x 640 each
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", max(count // 8, CLASSES))):
        for c in range(CLASSES):
            os.makedirs(os.path.join(root, split, f"c{c}"), exist_ok=True)
        for i in range(n):
            width, height = int(rng.integers(375, 501)), int(rng.integers(333, 501))
            scale = rng.uniform(0.6, 1.0) * min(427 / height, 640 / width)
            w, h = int(width * scale), int(height * scale)
            left, top = int(rng.integers(0, 641 - w)), int(rng.integers(0, 428 - h))
            window = photos[i % 2].crop((left, top, left + w, top + h)).resize((width, height), Image.BICUBIC)
            window.save(os.path.join(root, split, f"c{i % CLASSES}", f"{i:06d}.jpg"), quality=90)


def folder_config(root: str):
    config = paper.get_config()
    config.model.num_classes = CLASSES
    config.data.source, config.data.data_dir, config.data.eval_split = "folder", root, "val"
    return config


def make_copy(raw: str, copy: str, file_format: str) -> None:
    """The 256 x 256 copy `prepare --copy_to --format` writes."""
    config = folder_config(raw)
    prepare.write_copy(datasets.create_data(config.data, CLASSES), copy, RESIZE, file_format=file_format)


def repeat_copy(root: str, times: int) -> None:
    """Makes a copy's training split `times` as long by repeating its images (hard links for JPEGs,
    the records file written `times` over), so that an epoch is long enough for the pipeline's start
    not to count: ImageNet's epochs are 10,009 batches of 128."""
    if times <= 1:
        return
    marker = os.path.join(root, datasets.PREPARED_FILE)
    with open(marker) as f:
        prepared = json.load(f)
    pixels = records.pixels_path(root, "train")
    if prepared.get("format") == "records":
        with open(pixels, "rb") as f:
            once = f.read()
        with open(pixels, "ab") as f:
            for _ in range(times - 1):
                f.write(once)
        labels = np.load(records.labels_path(root, "train"))
        np.save(records.labels_path(root, "train"), np.tile(labels, times))
    else:
        for directory, _, names in os.walk(os.path.join(root, "train")):
            for name in names:
                for k in range(1, times):
                    os.link(os.path.join(directory, name), os.path.join(directory, f"{k}_{name}"))
    prepared["train"] *= times
    prepared["written"]["train"]["images"] *= times
    with open(marker, "w") as f:
        json.dump(prepared, f)


def bytes_per_image(root: str) -> float:
    """The training split's size on disk per image."""
    pixels = records.pixels_path(root, "train")
    if os.path.exists(pixels):
        return float(RESIZE * RESIZE * 3)  # fixed by the format (records.py), whatever the content
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(os.path.join(root, "train")) for f in names]
    return sum(sizes) / len(sizes)


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


def measure_ours(root: str, batch: int, repeats: int, evaluation: bool = False) -> float:
    """Images/s of our pipeline with the training step's own host work: each batch sent to the device
    as training sends it (`parallel.host_batch_to_global`) and waited for; `evaluation`: the
    evaluation batches (whole 256 x 256 images, from which the device cuts the 10 crops)."""
    import jax

    from alexnet_jax import parallel

    config = folder_config(root)
    if os.path.exists(records.pixels_path(root, "train")):
        config.data.source = "records"
    data = datasets.create_data(config.data, CLASSES)
    if evaluation:  # the training images, as many as there are, read as the evaluation reads them
        data = dataclasses.replace(data, eval=data.train)
    mesh = parallel.make_mesh(-1, 1)
    steps = (data.eval.size if evaluation else data.train.size) // batch

    def one_pass() -> float:
        if evaluation:
            batches = input_pipeline.eval_batches(data, global_batch=batch)
        else:
            batches = input_pipeline.train_batches(
                data, config.data, crop=CROP, global_batch=batch, start_step=0, seed=0
            )
        # The pipeline's start-up, and the batches it made meanwhile, are not throughput.
        skipped = max(2, steps // 8)
        for _ in range(skipped):
            jax.block_until_ready(parallel.host_batch_to_global(next(batches), mesh))
        start, count = time.perf_counter(), 0
        for _ in range(steps - skipped):
            host = next(batches)
            jax.block_until_ready(parallel.host_batch_to_global(host, mesh))
            count += len(host["labels"])
        return count / (time.perf_counter() - start)

    one_pass()
    return statistics.median(one_pass() for _ in range(repeats))


def child_rate(pipeline: str, root: str, cores: int, args) -> float:
    """The rate measured by a fresh process pinned to `cores` cores."""
    env = {**os.environ, "BENCH_CORES": str(cores), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
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


IMAGENET_TRAIN, PAPER_EPOCHS = 1_281_167, 90  # ILSVRC-2012's training images; section 5's "roughly 90 cycles"


def epoch_estimates(rows: list[dict], sizes: dict, step_rates: list[float], host_cores: int) -> dict:
    """Scaled on paper from the measured training rows: each source's per-core rate on the most cores
    measured, times `host_cores` (an assumption: linear beyond what was measured); the cores needed
    for 30 k and 60 k images/s; one ImageNet epoch and 90 at the slower of that and each step rate;
    and the bytes per second the storage must then deliver."""
    out, lines = [], []
    for source in dict.fromkeys(r["source"] for r in rows):
        train = [r for r in rows if r["source"] == source and r["pipeline"] == "train"]
        if not train:
            continue
        best = max(train, key=lambda r: r["cores"])
        per_core = best["per_core"]
        key = next(k for k, v in SOURCES.items() if v == source)
        read = CROP * RESIZE * 3 if key == "records" else sizes.get(key, 0)  # bytes read per training image
        for step in step_rates:
            rate = min(per_core * host_cores, step)
            out.append(
                {
                    "source": source,
                    "per_core": per_core,
                    "measured_on_cores": best["cores"],
                    "cores_for_30k": int(np.ceil(30_000 / per_core)),
                    "cores_for_60k": int(np.ceil(60_000 / per_core)),
                    "step_rate": step,
                    "rate": rate,
                    "epoch_minutes": IMAGENET_TRAIN / rate / 60,
                    "paper_hours": PAPER_EPOCHS * IMAGENET_TRAIN / rate / 3600,
                    "storage_gb_per_s": rate * read / 1e9,
                }
            )
    lines.append(
        f"| source | per core (measured on) | cores for 30 k / 60 k | {host_cores} cores | step | fed at | "
        "ImageNet epoch | 90 epochs | storage read |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for e in out:
        lines.append(
            f"| {e['source']} | {e['per_core']:,.0f} ({e['measured_on_cores']} cores) | "
            f"{e['cores_for_30k']} / {e['cores_for_60k']} | {e['per_core'] * host_cores:,.0f} | "
            f"{e['step_rate']:,.0f} | "
            f"{e['rate']:,.0f} | {e['epoch_minutes']:.1f} min | {e['paper_hours']:.1f} h | "
            f"{e['storage_gb_per_s']:.2f} GB/s |"
        )
    return {"rows": out, "markdown": "\n".join(lines)}


SOURCES = {"raw": "raw JPEGs", "jpeg": "JPEG copy 256x256", "records": "records 256x256"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024, help="training JPEGs to make")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median reported)")
    parser.add_argument("--cores", default="1,2", help="core counts to measure on")
    parser.add_argument("--sources", default="records,jpeg,raw", help="of " + ",".join(SOURCES))
    parser.add_argument("--no_pil", action="store_true", help="leave out the PIL loader")
    parser.add_argument("--repeat_copies", type=int, default=8, help="repeat each copy's images this often")
    parser.add_argument(
        "--step_rates",
        default="25582,31558",
        help="training step rates (images/s) to scale to: BENCHMARKS.md's H200 bfloat16 rows, batch 128 and 512",
    )
    parser.add_argument("--host_cores", type=int, default=16, help="the GPU machine's cores (one H200: 16)")
    parser.add_argument("--out", default="bench/results/input_pipeline.json")
    parser.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        cores = len(os.sched_getaffinity(0))
        if args._measure == "PIL":
            rate = measure_pil(args._root, args.batch, args.repeats, cores)
        else:
            rate = measure_ours(args._root, args.batch, args.repeats, evaluation=args._measure == "eval")
        print(rate)
        return
    rows, sizes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        roots = {source: os.path.join(tmp, source) for source in SOURCES}
        make_jpegs(roots["raw"], args.images)
        for file_format in ("jpeg", "records"):
            make_copy(roots["raw"], roots[file_format], file_format)
            sizes[file_format] = round(bytes_per_image(roots[file_format]))
            repeat_copy(roots[file_format], args.repeat_copies)
        for source in args.sources.split(","):
            sizes.setdefault(source, round(bytes_per_image(roots[source])))
            for cores in (int(c) for c in args.cores.split(",")):
                pipelines = ["train", "eval"] + ([] if args.no_pil or source == "records" else ["PIL"])
                rates = {pipeline: child_rate(pipeline, roots[source], cores, args) for pipeline in pipelines}
                for pipeline, rate in rates.items():
                    rows.append(
                        {
                            "source": SOURCES[source],
                            "cores": cores,
                            "pipeline": pipeline,
                            "images_per_s": round(rate, 1),
                            "per_core": round(rate / cores, 1),
                            "vs_pil": round(rate / rates["PIL"], 2) if "PIL" in rates else None,
                        }
                    )
                    print(
                        f"{SOURCES[source]:<18} {cores} core(s) {pipeline:<5} {rate:8.1f} img/s "
                        f"{rate / cores:8.1f} per core",
                        flush=True,
                    )
    estimates = epoch_estimates(rows, sizes, [float(r) for r in args.step_rates.split(",")], args.host_cores)
    print(estimates["markdown"])
    result = {
        "estimates": estimates["rows"],
        "cores_available": os.cpu_count(),
        "machine": platform.machine(),
        "args": vars(args),
        "bytes_per_image": sizes,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
