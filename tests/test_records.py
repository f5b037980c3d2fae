"""The records format (records.py) at the paper's settings, on real photos: the batches an image
folder gives (same crops, reflections, colour shifts, labels, order) for the same seed, from any
step, split between processes without overlap, and every way reading it can fail."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import datasets, input_pipeline, prepare, records, resume, statistics
from configs import paper
from tests.helpers import ROOT, cli_env

CLASSES = ("china", "flower")
BATCH = 4  # 12 training photos: 3 steps an epoch


def paper_data_config(source: str, root) -> object:
    """configs/paper.py's data settings (256 x 256, 224 x 224 patches, reflections, PCA 0.1) on `root`."""
    config = paper.get_config().data
    config.source, config.data_dir, config.eval_split = source, str(root), "val"
    return config


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """An image folder of scikit-learn's two photos, cut at random sizes (280-427 x 280-640), as
    lossless PNGs; its records and JPEG copies written by prepare, with its statistics."""
    from sklearn.datasets import load_sample_images

    base, rng = tmp_path_factory.mktemp("photos"), np.random.default_rng(0)
    pictures = load_sample_images().images
    for split, count in (("train", 12), ("val", 5)):
        for i in range(count):
            height, width = int(rng.integers(280, 428)), int(rng.integers(280, 641))
            top, left = int(rng.integers(0, 428 - height)), int(rng.integers(0, 641 - width))
            directory = base / "raw" / split / CLASSES[i % 2]
            directory.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pictures[i % 2][top : top + height, left : left + width]).save(directory / f"{i:03d}.png")
    raw = datasets.create_data(paper_data_config("folder", base / "raw"), 2)
    for file_format in prepare.FORMATS:
        prepare.write_copy(raw, str(base / file_format), 256, file_format=file_format)
    shutil.copy(base / "records" / statistics.STATS_FILE, base / "raw")  # the raw folder's own statistics
    return base


def batches(source: str, root, start_step: int, steps: int, num_classes: int = 2) -> list[dict]:
    config = paper_data_config(source, root)
    data = datasets.create_data(config, num_classes)
    it = input_pipeline.train_batches(data, config, crop=224, global_batch=BATCH, start_step=start_step, seed=3)
    return [next(it) for _ in range(steps)], data


def test_records_give_the_image_folders_batches_from_any_step(photos):
    for start in (0, 4):  # from the start, and resumed in the middle of the second epoch
        from_records, data = batches("records", photos / "records", start, 3)
        from_folder, _ = batches("folder", photos / "raw", start, 3)
        for mine, theirs in zip(from_records, from_folder):
            assert mine.keys() == theirs.keys()
            for key in mine:
                np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)
            assert mine["images"].shape == (BATCH, 224, 224, 3) and mine["weight"].all()
            np.testing.assert_array_equal(
                input_pipeline.normalise(mine, data.mean), input_pipeline.normalise(theirs, data.mean)
            )
    windows = np.concatenate([b["window"] for b in from_records])
    assert 0 < windows[:, 2].sum() < len(windows) and len(set(map(tuple, windows[:, :2]))) > 1
    resumed, _ = batches("records", photos / "records", 4, 1)
    whole, _ = batches("records", photos / "records", 0, 5)
    for key in whole[4]:
        np.testing.assert_array_equal(resumed[0][key], whole[4][key])
    # The JPEG copy: the same draws; its pixels differ by the JPEG round trip only.
    from_jpeg, _ = batches("folder", photos / "jpeg", 4, 3)
    for mine, theirs in zip(from_jpeg, from_folder):
        for key in ("labels", "window", "lighting", "weight"):
            np.testing.assert_array_equal(mine[key], theirs[key])
        assert np.abs(mine["images"].astype(int) - theirs["images"]).mean() < 5  # quality 90: about 3.5


def test_records_evaluate_the_image_folders_images(photos):
    data = datasets.create_data(paper_data_config("records", photos / "records"), 2)
    raw = datasets.create_data(paper_data_config("folder", photos / "raw"), 2)
    assert data.class_names == CLASSES and (data.train.size, data.eval.size) == (12, 5)
    mine, theirs = (list(input_pipeline.eval_batches(d, global_batch=4)) for d in (data, raw))
    assert len(mine) == len(theirs) == 2
    for a, b in zip(mine, theirs):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert sum(b["mask"].sum() for b in mine) == 5  # the padding of the last batch masked out
    # Either copy of one dataset is the same data to a resumed run (classes, counts, statistics).
    jpeg = datasets.create_data(paper_data_config("folder", photos / "jpeg"), 2)
    assert resume.data_identity(data) == resume.data_identity(jpeg)
    image, label, ok = data.eval.load(3)  # one example, as the tools read it
    assert ok and label == raw.eval.load(3)[1] and (image == raw.eval.load(3)[0]).all()


def _one_process(records_dir: str, process: int, port: int, out: str) -> None:
    """A process of a two-process job: its slices of steps 2-4."""
    import jax

    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process)
    found, _ = batches("records", records_dir, 2, 3)
    np.savez(out, **{key: np.stack([b[key] for b in found]) for key in found[0]})


def test_two_processes_split_every_batch_without_overlap(photos, tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    outs = [str(tmp_path / f"process{i}.npz") for i in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.test_records", str(photos / "records"), str(i), str(port), outs[i]],
            cwd=ROOT,
            env={**cli_env(devices=1), "TF_USE_LEGACY_KERAS": "1"},  # tf.data alone: no Keras, as in the tools
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()[-3000:]
    halves = [dict(np.load(out)) for out in outs]
    whole, _ = batches("records", photos / "records", 2, 3)
    for step, batch in enumerate(whole):
        for key in batch:  # process 0 holds the first half of each batch, process 1 the second
            joined = np.concatenate([halves[0][key][step], halves[1][key][step]])
            np.testing.assert_array_equal(joined, batch[key], err_msg=key)
        assert len(halves[0]["labels"][step]) == len(halves[1]["labels"][step]) == BATCH // 2


def test_every_way_reading_records_fails_has_an_outcome(photos, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(photos / "records", copy)
    # A record the system cannot read keeps its place with weight 0 and is counted with the reason.
    data = datasets.create_data(paper_data_config("records", copy), 2)
    real_preadv, failing = os.preadv, {}

    def preadv(fd, buffers, offset):
        if offset // (256 * 256 * 3) in failing:
            raise OSError(5, "Input/output error")
        return real_preadv(fd, buffers, offset)

    config = paper_data_config("records", copy)
    first = next(input_pipeline.train_batches(data, config, crop=224, global_batch=BATCH, start_step=0, seed=3))
    failing[int(np.random.default_rng([3, 0]).permutation(12)[1])] = True  # the batch's second example
    monkeypatch.setattr(os, "preadv", preadv)
    batch = next(input_pipeline.train_batches(data, config, crop=224, global_batch=BATCH, start_step=0, seed=3))
    assert batch["weight"].tolist() == [1, 0, 1, 1] and not batch["images"][1].any()
    for key in ("images", "labels", "window", "lighting"):
        np.testing.assert_array_equal(batch[key][[0, 2, 3]], first[key][[0, 2, 3]])
    assert data.unreadable.count == 1 and "Input/output error (EIO)" in data.unreadable.latest()
    monkeypatch.undo()
    # A records file cut short, an unfinished copy, the wrong source: one line each, before training.
    pixels = records.pixels_path(str(copy), "train")
    with open(pixels, "r+b") as f:
        f.truncate(os.path.getsize(pixels) - 100)
    with pytest.raises(ValueError, match=r"train\.u8 holds .* bytes where 12 records .* cut short .* prepare again"):
        datasets.create_data(paper_data_config("records", copy), 2)
    shutil.copy(photos / "records" / "train.u8", copy / "train.u8")
    (copy / "val_labels.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"val_labels\.npy cannot be read .*: delete .* and run prepare again"):
        datasets.create_data(paper_data_config("records", copy), 2)
    shutil.copy(photos / "records" / "val_labels.npy", copy / "val_labels.npy")
    os.unlink(copy / statistics.STATS_FILE)
    with pytest.raises(FileNotFoundError, match=r"stats\.npz, the statistics of the records, is missing"):
        datasets.create_data(paper_data_config("records", copy), 2)
    os.unlink(copy / datasets.PREPARED_FILE)
    with pytest.raises(FileNotFoundError, match="prepare was interrupted; rerun the same prepare command"):
        datasets.create_data(paper_data_config("records", copy), 2)
    with pytest.raises(FileNotFoundError, match=r"no finished records: write them with .*--format=records"):
        datasets.create_data(paper_data_config("records", tmp_path / "nothing"), 2)
    with pytest.raises(ValueError, match="holds records .* set --config.data.source=records"):
        datasets.create_data(paper_data_config("folder", photos / "records"), 2)
    with pytest.raises(ValueError, match="holds a JPEG copy, not records: set --config.data.source=folder"):
        datasets.create_data(paper_data_config("records", photos / "jpeg"), 2)
    with pytest.raises(ValueError, match=r"prepared at 256 x 256; set --config.data.resize_size=256"):
        config = paper_data_config("records", photos / "records")
        config.resize_size = 128
        datasets.load_records(config)


if __name__ == "__main__":
    _one_process(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
