"""`prepare`: streamed training-set statistics, and the 256 x 256 copy in either format, written in one
pass that an interruption does not spoil."""

import dataclasses
import os
import shutil

import numpy as np
import pytest

from alexnet_jax import datasets, input_pipeline, prepare, records, statistics, stopping
from alexnet_jax.progress import Progress
from configs import smoke
from tests.helpers import run_module
from tests.test_datasets import folder_config, write_image_folder


def folder_run_config(root, resize=32):
    config = smoke.get_config()
    config.data = folder_config(root, resize=resize)
    config.model.num_classes = 2
    return config


def test_prepare_statistics_and_copy(tmp_path, capsys):
    write_image_folder(tmp_path / "raw")
    config = folder_run_config(tmp_path / "raw")
    report = prepare.prepare(config, None)
    assert report["statistics_images"] == 10 and report["unreadable_files"] == 4  # the training split only
    assert "statistics: " in capsys.readouterr().err  # a progress line with the ETA
    # The streamed statistics equal the in-memory computation over the same decoded images.
    data = datasets.create_data(config.data, 2)
    images = np.stack([image for image, _, ok in data.train.examples(range(data.train.size)).as_numpy_iterator() if ok])
    mean, scale, axes = statistics.rgb_statistics(images)
    with np.load(tmp_path / "raw" / "stats.npz") as stats:
        np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(stats["pca_scale"], scale, rtol=1e-3)
        np.testing.assert_allclose(np.abs(stats["pca_axes"]), np.abs(axes), atol=1e-3)
        beside = {key: stats[key] for key in stats.files}
    # The copy computes the same statistics in its own single pass and takes them along.
    report = prepare.prepare(config, str(tmp_path / "copy"), "jpeg", quality=95)
    assert report["written"] == {"train": {"images": 10, "unreadable": 4}, "val": {"images": 10, "unreadable": 4}}
    progress = capsys.readouterr().err
    assert all(f"{what}: " in progress for what in ("copy train", "copy val")) and "ETA" in progress
    assert "statistics: " not in progress  # one pass, not two
    with np.load(tmp_path / "copy" / "stats.npz") as stats:
        for key in ("mean", "pca_scale", "pca_axes"):
            np.testing.assert_array_equal(stats[key], beside[key])
    # The copy is a prepared folder: fast path, nothing unreadable.
    copy_config = folder_config(tmp_path / "copy", resize=32)
    copy = datasets.create_data(copy_config, 2)
    assert copy.train.attach_window is not None and copy.train.size == 10 and copy.class_names == ("cat", "dog")
    np.testing.assert_allclose(copy.mean, mean, rtol=1e-5, atol=1e-3)
    copy_config.random_crop = copy_config.random_flip = copy_config.subtract_mean = True
    copy_config.pca_lighting_std = 0.1
    batch = next(input_pipeline.train_batches(copy, copy_config, crop=24, global_batch=8, start_step=0, seed=0))
    assert batch["images"].shape == (8, 24, 24, 3)
    # Decoding only the crop window gives the batch that decoding everything and cropping gives.
    whole = dataclasses.replace(copy, train=dataclasses.replace(copy.train, attach_window=None))
    reference = next(input_pipeline.train_batches(whole, copy_config, crop=24, global_batch=8, start_step=0, seed=0))
    np.testing.assert_array_equal(batch["labels"], reference["labels"])
    np.testing.assert_array_equal(batch["images"], reference["images"])
    copy_config.resize_size = 64
    with pytest.raises(ValueError, match="prepared at 32 x 32"):
        datasets.create_data(copy_config, 2)


class _StopAt:
    """A Progress whose `n`-th update in pass `what` raises what a SIGTERM raises; `killed`: and the
    copy saves nothing more from then on, as if the process had been killed there."""

    def __init__(self, what: str, n: int, killed: bool = False):
        self.what, self.n, self.killed, self.dead = what, n, killed, False

    def save(self, position, pixels):
        if not self.dead:
            _real_save(position, pixels)

    def __call__(self, what, total):
        stop = self

        class Stopping(Progress):
            def update(self, done, force=False):
                if what == stop.what:
                    stop.n -= 1
                    if stop.n == 0:
                        stop.dead = stop.killed
                        raise stopping.Interrupted("SIGTERM")
                super().update(done, force)

        return Stopping(what, total)


_real_save = prepare._save


def contents(root) -> dict:
    """Every file's bytes; .npz files as their arrays (a zip holds the time it was written)."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if name.endswith(".npz"):
                with np.load(path) as arrays:
                    found[os.path.relpath(path, root)] = {key: arrays[key].tolist() for key in arrays.files}
            else:
                with open(path, "rb") as f:
                    found[os.path.relpath(path, root)] = f.read()
    return found


@pytest.mark.parametrize("file_format", prepare.FORMATS)
def test_an_interrupted_copy_resumes_to_the_same_files(tmp_path, monkeypatch, file_format):
    write_image_folder(tmp_path / "raw")
    data = datasets.create_data(folder_config(tmp_path / "raw", resize=32), 2)
    monkeypatch.setattr(prepare, "_BATCH", 2)  # several batches per split
    whole = prepare.write_copy(data, str(tmp_path / "whole"), 32, file_format=file_format)
    target = str(tmp_path / "copy")
    monkeypatch.setattr(prepare, "_SAVE_EVERY_SECONDS", 0)  # saved after every batch but the last one
    # Stopped by a signal in the training split, killed in it (a batch written past the saved
    # position), then stopped in the other split.
    for what, n, killed in (("copy train", 2, False), ("copy train", 2, True), ("copy val", 2, False)):
        stop = _StopAt(what, n, killed)
        monkeypatch.setattr(prepare, "Progress", stop)
        monkeypatch.setattr(prepare, "_save", stop.save)
        with pytest.raises(stopping.Interrupted):
            prepare.write_copy(data, target, 32, file_format=file_format)
        assert os.path.exists(os.path.join(target, prepare.PROGRESS_FILE))
        assert not os.path.exists(os.path.join(target, datasets.PREPARED_FILE))
    monkeypatch.undo()
    monkeypatch.setattr(prepare, "_BATCH", 2)
    assert prepare.write_copy(data, target, 32, file_format=file_format) == whole
    assert contents(target) == contents(tmp_path / "whole")
    assert whole["written"]["train"] == {"images": 10, "unreadable": 4}
    # The copy, without the 4 unreadable files of each split, is what training reads.
    config = folder_config(target, resize=32)
    config.source = "records" if file_format == "records" else "folder"
    copy = datasets.create_data(config, 2)
    assert (copy.train.size, copy.eval.size, copy.class_names) == (10, 10, ("cat", "dog"))
    # Rerun once finished: nothing is written again; with other settings: refused, nothing touched.
    before = {path: os.stat(os.path.join(target, path)).st_mtime_ns for path in contents(target)}
    assert prepare.write_copy(data, target, 32, file_format=file_format) == whole
    other = "jpeg" if file_format == "records" else "records"
    with pytest.raises(ValueError, match="already holds a finished copy .* choose another --copy_to, or delete"):
        prepare.write_copy(data, target, 32, file_format=other)
    assert {path: os.stat(os.path.join(target, path)).st_mtime_ns for path in contents(target)} == before


def test_an_unfinished_copy_with_other_settings_or_too_little_space_is_refused(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "raw", bad=False)
    data = datasets.create_data(folder_config(tmp_path / "raw", resize=32), 2)
    target = str(tmp_path / "copy")
    monkeypatch.setattr(prepare, "Progress", _StopAt("copy train", 1))
    with pytest.raises(stopping.Interrupted):
        prepare.write_copy(data, target, 32, file_format="records")
    monkeypatch.undo()
    saved = contents(target)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("someone's")
    with pytest.raises(ValueError, match="other holds other files: give --copy_to a new or empty directory"):
        prepare.write_copy(data, str(tmp_path / "other"), 32, file_format="records")
    with pytest.raises(ValueError, match=r"unfinished copy written with other settings \(format 'records' -> 'jpeg'"):
        prepare.write_copy(data, target, 32, file_format="jpeg")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ValueError, match=r"the records need 0\.0 GB more and .* has 0\.0 GB free: .*--format=jpeg"):
        prepare.write_copy(data, target, 32, file_format="records")
    assert contents(target) == saved
    with open(os.path.join(target, prepare.PROGRESS_FILE), "wb") as f:
        f.write(b"PK\x03\x04 cut short")
    monkeypatch.undo()
    with pytest.raises(
        ValueError, match="prepare_progress.npz cannot be read .*: delete it to copy again from the start"
    ):
        prepare.write_copy(data, target, 32, file_format="records")


def test_a_source_that_goes_away_stops_the_copy_which_then_continues(tmp_path, monkeypatch):
    """A batch's worth of files in a row that cannot be read (a dropped mount) stops the copy instead of
    leaving holes in it; with the files back, the same command finishes it as if nothing happened."""
    write_image_folder(tmp_path / "raw", bad=False)
    data = datasets.create_data(folder_config(tmp_path / "raw", resize=32), 2)
    monkeypatch.setattr(prepare, "_BATCH", 2)
    prepare.write_copy(data, str(tmp_path / "whole"), 32, file_format="records")
    gone = sorted((tmp_path / "raw" / "train" / "dog").iterdir())[:2]
    kept = {path: path.read_bytes() for path in gone}
    for path in gone:
        path.write_bytes(b"")
    with pytest.raises(prepare.SourceGone, match="2 files in a row could not be read .*rerun the same command"):
        prepare.write_copy(data, str(tmp_path / "copy"), 32, file_format="records")
    assert not os.path.exists(tmp_path / "copy" / datasets.PREPARED_FILE)
    for path, encoded in kept.items():
        path.write_bytes(encoded)
    prepare.write_copy(data, str(tmp_path / "copy"), 32, file_format="records")
    assert contents(tmp_path / "copy") == contents(tmp_path / "whole")


def test_a_signal_during_a_batchs_bookkeeping_waits_for_its_end():
    """`stopping.held`: the signal is taken note of and acts when the block is done, whichever thread
    the kernel gave it to."""
    import signal
    import threading

    done = []
    with stopping.signals_interrupt(), pytest.raises(stopping.Interrupted, match="SIGTERM"):
        with stopping.held():
            thread = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
            thread.start()
            thread.join()
            for _ in range(1000):  # the handler would run between any two of these bytecodes
                done.append(1)
    assert len(done) == 1000


def test_the_command_line_copies_and_refuses_in_one_line(tmp_path):
    write_image_folder(tmp_path / "raw", bad=False)
    data = datasets.create_data(folder_config(tmp_path / "raw", resize=32), 2)
    prepare.write_copy(data, str(tmp_path / "copy"), 32, file_format="records")
    assert os.path.getsize(records.pixels_path(str(tmp_path / "copy"), "train")) == 10 * 32 * 32 * 3
    flags = ["--config=configs/smoke.py", "--config.data.source=folder", f"--config.data.data_dir={tmp_path / 'raw'}"]
    flags += ["--config.model.num_classes=2", "--config.data.resize_size=32", f"--copy_to={tmp_path / 'copy'}"]
    code, out, err = run_module("alexnet_jax.prepare", *flags, "--format=jpeg")
    assert code == 2 and out == "", err
    assert err.strip().splitlines()[-1].startswith("error: ") and "already holds a finished copy (records" in err
