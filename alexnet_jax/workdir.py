"""A training run's directory: what it holds besides checkpoints, who may write to it, and reading it back.

    <workdir>/config.json          the resolved config of the run (older ones: config.<time>.json)
    <workdir>/stats.npz            the mean image and RGB principal axes it trained with
    <workdir>/class_names.json     its class names, in label order
    <workdir>/metrics.jsonl        one JSON line per log, evaluation and final result
    <workdir>/final_metrics.json   the final evaluation
    <workdir>/checkpoints/, best/  Orbax checkpoints (checkpoint.py), each with the config it was
                                   written under and the identity of its data
    <workdir>/superseded/, damaged/  checkpoints moved out of Orbax's sight, never deleted
    <workdir>/.lock                held by the run that trains in it

Every JSON file here is written whole or not at all (files.py); `metrics.jsonl` is appended to, and a
last line cut short by a crash is dropped, with a warning, when the run resumes.

Training takes the lock for its whole life (the operating system releases it on any exit, SIGKILL
included), so a second run started in the same directory stops at once instead of interleaving
checkpoints and metrics with the first. Evaluation, predictions and exports only read.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import glob
import json
import logging
import os
import socket

from alexnet_jax import files, statistics

log = logging.getLogger("alexnet_jax")

CONFIG_FILE = "config.json"
CLASS_NAMES_FILE = "class_names.json"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final_metrics.json"
LOCK_FILE = ".lock"


class WorkdirInUse(RuntimeError):
    """Another run holds the workdir's lock."""


class LockUnsupported(RuntimeError):
    """The workdir's file system cannot lock files (Lustre mounted without flock, some FUSE mounts)."""


# What flock says when another process holds the lock; any other error is the file system's.
_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class Lock:
    """An exclusive lock on a workdir, held from `acquire` until `release` or the process's end."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._file = None

    def acquire(self) -> Lock:
        """Takes the lock and writes who holds it; raises WorkdirInUse when another run holds it, and
        LockUnsupported when the file system cannot lock."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not yet written its name"
            handle.close()
            workdir = os.path.dirname(self.path)
            if error.errno in _HELD:
                raise WorkdirInUse(
                    f"{workdir} is in use by another training run ({holder}); wait for it to end, or give this run "
                    "another --workdir"
                ) from None
            raise LockUnsupported(
                f"cannot lock {self.path}: {files.describe(error)}: this file system does not support file locks "
                "(Lustre without the flock mount option, some FUSE mounts); use a workdir on one that does, or, if "
                "you are sure no other run uses this workdir, add --config.train.lock_workdir=False"
            ) from None
        # The holder's name replaces the last one's in place (the file itself stays: it is the lock).
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def saved_config(workdir: str) -> dict | None:
    """The workdir's `config.json` (the config of its latest run) as a dict, or None."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    return files.read_json(path, "; it is written whole by every run, so another program changed it")


def save_run_metadata(workdir: str, config, data) -> None:
    """Writes the resolved config, the training statistics and the class names, each file whole or not at
    all. A config that differs from the workdir's last one keeps that one as config.<time>.json (so does
    one that no longer parses: the run's checkpoints hold their own config, so nothing depends on it)."""
    path = os.path.join(workdir, CONFIG_FILE)
    current = json.loads(config.to_json_best_effort())
    previous = None
    if os.path.exists(path):
        try:
            previous = saved_config(workdir)
        except files.CorruptFile as error:
            log.warning("%s; keeping it aside and writing this run's", error)
            previous = "unreadable"
    if previous is not None and previous != current:
        keep_aside(workdir, CONFIG_FILE)
    if previous != current:
        files.write_json(path, current)
    statistics.write_statistics(workdir, data.mean, data.pca_scale, data.pca_axes)
    files.write_json(os.path.join(workdir, CLASS_NAMES_FILE), list(data.class_names), indent=None)


def keep_aside(workdir: str, name: str) -> str | None:
    """Renames `workdir/name.json` to `name.<its time>.json` (an earlier run's file, kept); returns the new path."""
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        return None
    stamp = datetime.datetime.fromtimestamp(os.path.getmtime(path)).strftime("%Y%m%d-%H%M%S")
    stem, extension = os.path.splitext(name)
    target = os.path.join(workdir, f"{stem}.{stamp}{extension}")
    os.replace(path, target)
    return target


def class_names(workdir: str) -> list[str] | None:
    path = os.path.join(workdir, CLASS_NAMES_FILE)
    if not os.path.exists(path):
        return None
    return files.read_json(path)


def read_metrics(workdir: str, repair: bool = False) -> list[dict]:
    """The records of `metrics.jsonl`; a last line cut short by a crash is dropped (and, with `repair`,
    removed from the file)."""
    return files.read_jsonl(os.path.join(workdir, METRICS_FILE), repair=repair)


def rewind_metrics(workdir: str, step: int) -> int:
    """Drops the records after `step` from metrics.jsonl: a run resumed at `step` writes them again.

    Returns how many were dropped. Without this, a resumed run would list the steps between its
    checkpoint and the interruption twice. A last line cut short by a crash is repaired first.
    """
    records = read_metrics(workdir, repair=True)
    kept = [r for r in records if r["step"] <= step and r["kind"] != "final"]
    if len(kept) != len(records):
        files.write_atomically(
            os.path.join(workdir, METRICS_FILE), lambda f: f.writelines(json.dumps(r) + "\n" for r in kept)
        )
    return len(records) - len(kept)


def newest_superseded_record(workdir: str) -> tuple[dict, str] | None:
    """The record of the newest best checkpoint in `superseded/` that still parses, and its path.

    Orbax keeps a checkpoint's JSON item as `<step>/record/metadata`; these directories are out of
    Orbax's sight, so the file is read directly.
    """
    found = []
    for path in glob.glob(os.path.join(workdir, "superseded", "*", "record", "metadata")):
        directory = os.path.dirname(os.path.dirname(path))  # <workdir>/superseded/best-<step>[-<n>]
        try:
            found.append((int(os.path.basename(directory).split("-")[1]), files.read_json(path), directory))
        except (ValueError, OSError, IndexError):
            continue  # not one of ours, or unreadable: nothing to compare with
    if not found:
        return None
    _, record, directory = max(found, key=lambda item: item[0])
    return record, directory
