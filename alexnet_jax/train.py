"""The training loop: state, schedule, evaluation, checkpoints, logs; resumable at any step.

`train_and_evaluate(config, workdir)` is the whole job. Interrupted by anything (SIGTERM saves a
checkpoint first; SIGKILL loses the steps since the last checkpoint), the same call resumes and
ends with exactly the parameters, metrics and best checkpoint an uninterrupted run would have.
The host never waits for a step to finish before dispatching the next: metrics are fetched at log
steps only, and a non-finite update is refused on the device (steps.TrainState.nonfinite) and
reported at the next log, evaluation or checkpoint, before anything is saved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import datasets, evaluate, input_pipeline, networks, optim, parallel, progress, steps
from alexnet_jax import workdir as workdir_lib

log = logging.getLogger("alexnet_jax")


class NonFiniteError(RuntimeError):
    """Loss or gradients became NaN or infinite."""


class IncompatibleWorkdir(ValueError):
    """The workdir's checkpoints hold another network than the config describes."""


def due(step: int, every: int, last_step: int) -> bool:
    """Whether periodic work (logging, evaluation, checkpointing) runs after `step` (1-based).

    Every `every` steps and always after the last one; `every <= 0` means only at the end.
    """
    return step == last_step or (every > 0 and step % every == 0)


def progress_line(step: int, total: int, metrics: dict, images_per_second: float, eta_seconds: float) -> str:
    """`step 120/2000 [##........] 6% loss 2.103 acc 0.305 lr 0.01 812 img/s ETA 4m10s`."""
    return (
        f"step {step}/{total} {progress.bar(step, total)} {100 * step / total:3.0f}% "
        f"loss {metrics['loss']:.4f} acc {metrics['accuracy']:.3f} lr {metrics['learning_rate']:.3g} "
        f"{images_per_second:,.0f} img/s ETA {progress.format_duration(eta_seconds)}"
    )


class MetricWriter:
    """JSON lines (`metrics.jsonl`) and TensorBoard events in the workdir, from process 0 only."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        import tensorflow as tf  # for its summary writer only

        self._tf = tf
        self._jsonl = open(os.path.join(workdir, workdir_lib.METRICS_FILE), "a")
        self._tensorboard = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, kind: str, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        with self._tensorboard.as_default(step=step):
            for key, value in metrics.items():
                self._tf.summary.scalar(f"{kind}/{key}", float(value))
        self._tensorboard.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()


class _StopRequest:
    """Turns SIGTERM (a scheduler's preemption notice) into a flag the loop checks every step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        log.warning("SIGTERM: saving a checkpoint and stopping after this step")
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)

    def agreed(self, at_log_step: bool) -> bool:
        """Whether to save and stop after this step. With several processes, all must stop at the
        same step (the save is collective), and each may see the signal at another step: they agree
        at log steps, stopping when any of them was signalled."""
        if jax.process_count() == 1:
            return self.requested
        if not at_log_step:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))


@dataclasses.dataclass
class Setup:
    """What a config builds before training or evaluating: the mesh, data, network and steps."""

    config: Any
    mesh: Any
    data: datasets.Data
    model: Any
    optimizer: Any
    micro_batch: int
    train_step: Any
    eval_steps: dict  # "centre" and, with eval.ten_crop, "ten_crop": jitted eval steps
    init_rng: jax.Array
    dropout_rng: jax.Array

    @property
    def steps_per_epoch(self) -> int:
        return self.data.train.size // self.config.optim.batch_size

    @property
    def total_steps(self) -> int:
        return max(1, int(round(self.config.train.num_epochs * self.steps_per_epoch)))

    @property
    def eval_every(self) -> int:
        return max(1, int(round(self.config.train.eval_every_epochs * self.steps_per_epoch)))

    def abstract_state(self) -> steps.TrainState:
        return steps.abstract_train_state(self.model, self.optimizer, self.mesh, self.config.model.image_size)

    def fresh_state(self) -> steps.TrainState:
        return steps.create_train_state(
            self.model,
            self.optimizer,
            self.mesh,
            self.init_rng,
            self.config.model.image_size,
            self.config.optim.learning_rate,
        )


def build(config, model=None) -> Setup:
    """Mesh, data, network (`model` replaces the config's, e.g. a tiny one to time the loop),
    optimiser and the compiled steps of a config."""
    mesh = parallel.make_mesh(config.parallel.data, config.parallel.model)
    parallel.check_batch(config.optim.batch_size, mesh)
    parallel.check_batch(config.eval.batch_size, mesh, what="eval.batch_size")
    data = datasets.create_data(config.data, config.model.num_classes)
    if data.train.size < config.optim.batch_size:
        raise ValueError(
            f"optim.batch_size={config.optim.batch_size} is larger than the training set "
            f"({data.train.size} images): not one step per epoch"
        )
    model = model or networks.from_config(config.model)
    optimizer = optim.paper_sgd(
        momentum=config.optim.momentum,
        weight_decay=config.optim.weight_decay,
        bias_lr_multiplier=config.optim.bias_lr_multiplier,
        bias_weight_decay=config.optim.bias_weight_decay,
    )
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    per_device_batch = config.optim.batch_size // mesh.shape[parallel.DATA]
    micro_batch = steps.resolve_micro_batch(config.parallel.micro_batch, per_device_batch, config.model.image_size)
    mean = data.mean if config.data.subtract_mean else None
    crops = {"centre": False, "ten_crop": True} if config.eval.ten_crop else {"centre": False}
    return Setup(
        config=config,
        mesh=mesh,
        data=data,
        model=model,
        optimizer=optimizer,
        micro_batch=micro_batch,
        train_step=steps.make_train_step(model, optimizer, mesh, mean, micro_batch),
        eval_steps={
            name: steps.make_eval_step(model, mesh, mean, config.model.image_size, ten) for name, ten in crops.items()
        },
        init_rng=init_rng,
        dropout_rng=dropout_rng,
    )


def _evaluate(setup: Setup, params, crops: str) -> dict:
    """The whole validation split's errors with `crops` ("centre" or "ten_crop")."""
    return evaluate.evaluate(
        setup.eval_steps[crops], params, setup.data, setup.mesh, batch_size=setup.config.eval.batch_size
    )


def _evaluate_all(setup: Setup, params, centre: dict | None = None) -> dict:
    """Centre-crop errors, and the 10-crop ones (`ten_crop_*`) when the config asks for them;
    `centre`, the centre-crop result of these same parameters when there is one already."""
    result = dict(centre if centre is not None else _evaluate(setup, params, "centre"))
    if "ten_crop" in setup.eval_steps:
        ten = _evaluate(setup, params, "ten_crop")
        result.update({f"ten_crop_{k}": v for k, v in ten.items() if k not in ("count", "unreadable")})
    return result


def evaluate_checkpoint(config, workdir: str) -> dict:
    """The final (newest) and best checkpoints' errors on the whole validation split.

    The best checkpoint was chosen by its error on this same split, so its figure is biased
    downwards; the final one is the model a run ends with, as the paper reports it.
    """
    setup = build(config)
    abstract = setup.abstract_state()
    checkpoints = checkpoint_lib.Checkpoints(workdir, read_only=True)
    try:
        final = checkpoints.restore_latest(abstract)
        best = checkpoints.restore_best(abstract, fall_back=False)
    except checkpoint_lib.IncompatibleCheckpoint as error:
        raise IncompatibleWorkdir(f"{error}; evaluate it with the config it was trained with") from None
    finally:
        checkpoints.close()
    if final is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}; train first: --mode=train --workdir={workdir}")
    result = {}
    for name, restored in (("final_checkpoint", final), ("best_checkpoint", best or final)):
        state = restored[0]
        result[name] = {"step": int(state.step), **_evaluate_all(setup, state.params)}
    log.info(
        "best_checkpoint was chosen by its error on this split, which biases that error downwards; "
        "final_checkpoint is the model the run ended with (the paper reports its final models)"
    )
    return result


def _take_lock(workdir: str) -> workdir_lib.Lock | None:
    """The workdir's lock, taken by process 0 for the whole run; every process stops if it is held."""
    lock, error = None, ""
    if jax.process_index() == 0:
        try:
            lock = workdir_lib.Lock(workdir).acquire()
        except workdir_lib.WorkdirInUse as held:
            error = str(held)
    if jax.process_count() > 1 and multihost_utils.broadcast_one_to_all(np.int32(bool(error))) and not error:
        error = f"{workdir} is in use by another training run (process 0 could not lock it)"
    if error:
        raise workdir_lib.WorkdirInUse(error)
    return lock


def _check_finite(state: steps.TrainState, workdir: str) -> None:
    step, loss, grad_norm = (float(v) for v in np.asarray(jax.device_get(state.nonfinite)))
    if step > 0:
        raise NonFiniteError(
            f"step {int(step)}: loss {loss}, gradient norm {grad_norm}; stopping. No update from that step on was "
            f"applied, and the last good checkpoint in {workdir}/checkpoints is intact; lower "
            "optim.learning_rate or check the data, then rerun to resume from it."
        )


def train_and_evaluate(config, workdir: str, *, model=None, batches: Iterator[dict] | None = None) -> dict:
    """Trains as `config` says, evaluating, logging and checkpointing in `workdir`.

    Returns the final evaluation: centre-crop top-1/top-5 error, and the 10-crop figures when
    `config.eval.ten_crop`. `model` and `batches` (host batches, as `input_pipeline.train_batches`
    yields them) replace the config's network and input pipeline, to time the loop on its own.
    """
    lock = _take_lock(workdir)
    try:
        return _train(build(config, model), workdir, batches)
    finally:
        if lock is not None:
            lock.release()


def _resume(setup: Setup, checkpoints: checkpoint_lib.Checkpoints, workdir: str):
    """(state, record) of the newest checkpoint, or a fresh state; stops on another network's."""
    try:
        restored = checkpoints.restore_latest(setup.abstract_state())
    except checkpoint_lib.IncompatibleCheckpoint as error:
        saved = workdir_lib.saved_config(workdir)
        changes = workdir_lib.config_changes(saved, workdir_lib.resolved(setup.config)) if saved else []
        changed = f" Config changes since it was trained: {'; '.join(changes[:5])}." if changes else ""
        raise IncompatibleWorkdir(
            f"{error}.{changed} Nothing in {workdir} was changed: train this config with a new --workdir, or resume "
            f"with the config this run was trained with (its values are in {workdir}/{workdir_lib.CONFIG_FILE})"
        ) from None
    if restored is None:
        return setup.fresh_state(), {}
    state, record = restored
    log.info("resumed from step %d (%s)", int(state.step), workdir)
    return state, record


def _train(setup: Setup, workdir: str, batches: Iterator[dict] | None) -> dict:
    config, mesh, data = setup.config, setup.mesh, setup.data
    checkpoints = checkpoint_lib.Checkpoints(workdir, keep=config.train.keep_checkpoints)
    writer = stop = None
    try:
        state, record = _resume(setup, checkpoints, workdir)
        start_step, total_steps = int(state.step), setup.total_steps
        final_path = os.path.join(workdir, workdir_lib.FINAL_FILE)
        if start_step >= total_steps and os.path.exists(final_path):
            log.info("%s finished at step %d already; its final evaluation is in %s", workdir, start_step, final_path)
            with open(final_path) as f:
                return json.load(f)
        if jax.process_index() == 0:
            changes = workdir_lib.save_run_metadata(workdir, config, data)
            if changes and start_step:
                log.warning("resuming with a changed config: %s", "; ".join(changes))
            workdir_lib.rewind_metrics(workdir, start_step)
        plateau = optim.PlateauState(**record.get("plateau", {"learning_rate": config.optim.learning_rate}))
        lowest_error = record.get("lowest_error", plateau.best_error)
        writer, stop = MetricWriter(workdir), _StopRequest()
        if batches is None:
            batches = input_pipeline.train_batches(
                data,
                config.data,
                crop=config.model.image_size,
                global_batch=config.optim.batch_size,
                start_step=start_step,
                seed=config.seed,
            )
        batches = parallel.prefetch_to_device(batches, mesh)
        if jax.process_index() == 0:
            log.info(
                "training %d steps (%d per epoch, batch %d%s) on mesh %s; %d train / %d eval examples",
                total_steps,
                setup.steps_per_epoch,
                config.optim.batch_size,
                f", chunks of {setup.micro_batch}" if setup.micro_batch else "",
                dict(mesh.shape),
                data.train.size,
                data.eval.size,
            )

        def save_record() -> dict:
            return {"plateau": dataclasses.asdict(plateau), "lowest_error": lowest_error}

        timer_start, timer_step, reported_unreadable, rate_on_device = time.time(), start_step, 0, None
        last_evaluation = None  # (step, centre-crop result): the last step's is the final one's too
        for step in range(start_step + 1, total_steps + 1):
            epoch = (step - 1) / setup.steps_per_epoch
            rate = optim.scheduled_learning_rate(
                config.schedule, config.optim.learning_rate, epoch, config.train.num_epochs
            )
            rate = plateau.learning_rate if rate is None else rate
            if rate != rate_on_device:  # a transfer only when the rate changes
                state = state.replace(learning_rate=jax.device_put(np.float32(rate), NamedSharding(mesh, P())))
                rate_on_device = rate
            state, metrics = setup.train_step(state, next(batches), setup.dropout_rng)
            log_step = due(step, config.train.log_every_steps, total_steps)
            stopping = stop.agreed(log_step)
            eval_step = due(step, setup.eval_every, total_steps)
            save_step = due(step, config.train.checkpoint_every_steps, total_steps) or stopping
            if log_step or eval_step or save_step:  # the one wait for the device, before anything is kept
                _check_finite(state, workdir)
            if log_step:
                metrics = jax.device_get(metrics)
                elapsed = time.time() - timer_start
                speed = (step - timer_step) * config.optim.batch_size / max(elapsed, 1e-9)
                eta = (total_steps - step) * elapsed / max(step - timer_step, 1)
                if jax.process_index() == 0:
                    log.info(progress_line(step, total_steps, metrics, speed, eta))
                    if data.unreadable.count > reported_unreadable:
                        reported_unreadable = data.unreadable.count
                        log.warning(
                            "skipped %d unreadable image files so far (latest: %s)",
                            reported_unreadable,
                            data.unreadable.latest(),
                        )
                progress_record = {
                    "epoch": step / setup.steps_per_epoch,
                    "images_per_second": speed,
                    "unreadable_files": data.unreadable.count,
                }
                writer.write(step, "train", {**metrics, **progress_record})
                timer_start, timer_step = time.time(), step
            if eval_step:
                result = _evaluate(setup, state.params, "centre")
                error = result["top1_error"]
                if config.schedule.kind == "plateau":
                    plateau = optim.plateau_update(
                        plateau,
                        error,
                        factor=config.schedule.factor,
                        patience=config.schedule.patience,
                        min_delta=config.schedule.min_delta,
                        max_cuts=config.schedule.max_cuts,
                    )
                writer.write(step, "eval", result)
                last_evaluation = (step, result)
                if jax.process_index() == 0:
                    log.info(
                        "eval at step %d: top-1 error %.4f, top-5 error %.4f (%d images)",
                        step,
                        error,
                        result["top5_error"],
                        result["count"],
                    )
                if error < lowest_error:
                    lowest_error = error
                    checkpoints.save_best(step, state, save_record())
            if save_step:
                checkpoints.save(step, state, save_record())
            if stopping:
                checkpoints.wait()
                log.warning("stopped at step %d on SIGTERM; rerun the same command to resume", step)
                return {"stopped_at_step": step}
        checkpoints.wait()
        centre = last_evaluation[1] if last_evaluation and last_evaluation[0] == total_steps else None
        final = _evaluate_all(setup, state.params, centre)
        writer.write(total_steps, "final", final)
        if jax.process_index() == 0:
            with open(final_path, "w") as f:
                json.dump(final, f, indent=1)
        return final
    finally:
        if stop is not None:
            stop.restore()
        checkpoints.close()
        if writer is not None:
            writer.close()
