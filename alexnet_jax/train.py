"""The training loop: state, schedule, evaluation, checkpoints, logs; resumable at any step.

`train_and_evaluate(config, workdir)` is the whole job. Interrupted by anything (SIGTERM saves a
checkpoint first; SIGKILL loses at most `train.checkpoint_every_steps`), the same call resumes
and ends with exactly the parameters an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import json
import logging

log = logging.getLogger("alexnet_jax")
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import evaluate as evaluate_lib
from alexnet_jax import input_pipeline, optim, parallel, steps
from alexnet_jax import model as model_lib
from alexnet_jax import predict as predict_lib


class NonFiniteError(RuntimeError):
    """Loss or gradients became NaN or infinite."""


def due(step: int, every: int, last_step: int) -> bool:
    """Whether periodic work (logging, evaluation, checkpointing) runs after `step` (1-based).

    Every `every` steps and always after the last one; `every <= 0` means only at the end.
    """
    return step == last_step or (every > 0 and step % every == 0)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def progress_line(step: int, total: int, metrics: dict, images_per_second: float, eta_seconds: float) -> str:
    """`step 120/2000 [##........] 6% loss 2.103 acc 0.305 lr 0.01 812 img/s ETA 4m10s`."""
    filled = int(20 * step / total)
    return (
        f"step {step}/{total} [{'#' * filled}{'.' * (20 - filled)}] {100 * step / total:3.0f}% "
        f"loss {metrics['loss']:.4f} acc {metrics['accuracy']:.3f} lr {metrics['learning_rate']:.3g} "
        f"{images_per_second:,.0f} img/s ETA {format_duration(eta_seconds)}"
    )


class MetricWriter:
    """JSON lines (`metrics.jsonl`) and TensorBoard events in the workdir, from process 0 only."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        import tensorflow as tf

        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._tensorboard = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, kind: str, metrics: dict) -> None:
        if not self.enabled:
            return
        import tensorflow as tf

        record = {"step": step, "kind": kind, **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        with self._tensorboard.as_default(step=step):
            for key, value in metrics.items():
                tf.summary.scalar(f"{kind}/{key}", float(value))
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


def _replicated_scalar(value: float, mesh) -> jax.Array:
    return jax.device_put(jnp.asarray(value, jnp.float32), NamedSharding(mesh, P()))


def _setup(config):
    """Mesh, data, model, optimiser, a fresh state and the compiled steps of a config."""
    mesh = parallel.make_mesh(config.parallel.data, config.parallel.model)
    parallel.check_batch(config.optim.batch_size, mesh)
    parallel.check_batch(config.eval.batch_size, mesh, what="eval.batch_size")
    data = input_pipeline.create_data(config.data, config.model.num_classes)
    model = model_lib.from_config(config.model)
    optimizer = optim.paper_sgd(
        momentum=config.optim.momentum,
        weight_decay=config.optim.weight_decay,
        bias_lr_multiplier=config.optim.bias_lr_multiplier,
        bias_weight_decay=config.optim.bias_weight_decay,
    )
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    state = steps.create_train_state(
        model, optimizer, mesh, init_rng, config.model.image_size, config.optim.learning_rate
    )
    per_device_batch = config.optim.batch_size // mesh.shape[parallel.DATA]
    micro_batch = steps.resolve_micro_batch(config.parallel.micro_batch, per_device_batch, config.model.image_size)
    mean = data.mean if config.data.subtract_mean else None
    train_step = steps.make_train_step(model, optimizer, mesh, mean, micro_batch)
    eval_step = steps.make_eval_step(model, mesh)
    return mesh, data, state, train_step, eval_step, dropout_rng


def _final_evaluation(eval_step, params, data, config, mesh) -> dict:
    result = evaluate_lib.evaluate(eval_step, params, data, config, mesh, ten_crop=False)
    if config.eval.ten_crop:
        ten = evaluate_lib.evaluate(eval_step, params, data, config, mesh, ten_crop=True)
        result.update({f"ten_crop_{k}": v for k, v in ten.items() if k != "count"})
    return result


def evaluate_checkpoint(config, workdir: str) -> dict:
    """Centre-crop (and 10-crop) error of the best checkpoint in `workdir`, else the newest."""
    mesh, data, state, _, eval_step, _ = _setup(config)
    checkpoints = checkpoint_lib.Checkpoints(workdir, keep=config.train.keep_checkpoints)
    try:
        restored = checkpoints.restore_best(checkpoint_lib.abstract_like(state))
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}; train first: --mode=train --workdir={workdir}")
    state, _ = restored
    result = _final_evaluation(eval_step, state.params, data, config, mesh)
    result["step"] = int(state.step)
    return result


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains as `config` says, evaluating, logging and checkpointing in `workdir`.

    Returns the final evaluation: centre-crop top-1/top-5 error, and the 10-crop figures when
    `config.eval.ten_crop`.
    """
    mesh, data, state, train_step, eval_step, dropout_rng = _setup(config)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        predict_lib.save_run_metadata(workdir, config, data)
    checkpoints = checkpoint_lib.Checkpoints(workdir, keep=config.train.keep_checkpoints)
    plateau = optim.PlateauState(learning_rate=config.optim.learning_rate)
    restored = checkpoints.restore_latest(checkpoint_lib.abstract_like(state))
    if restored is not None:
        state, record = restored
        plateau = optim.PlateauState(**record["plateau"])
        log.info("resumed from step %d (%s)", int(state.step), workdir)

    steps_per_epoch = data.train.size // config.optim.batch_size
    total_steps = max(1, int(round(config.train.num_epochs * steps_per_epoch)))
    eval_every = max(1, int(round(config.train.eval_every_epochs * steps_per_epoch)))
    writer = MetricWriter(workdir)
    stop = _StopRequest()
    start_step = int(state.step)
    batches = parallel.prefetch_to_device(
        input_pipeline.train_batches(
            data,
            config.data,
            crop=config.model.image_size,
            global_batch=config.optim.batch_size,
            start_step=start_step,
            seed=config.seed,
        ),
        mesh,
    )
    if jax.process_index() == 0:
        log.info(
            "training %d steps (%d per epoch, batch %d) on mesh %s; %d train / %d eval examples",
            total_steps, steps_per_epoch, config.optim.batch_size, dict(mesh.shape), data.train.size, data.eval.size,
        )

    def record() -> dict:
        return {"plateau": dataclasses.asdict(plateau)}

    timer_start, timer_step = time.time(), start_step
    reported_unreadable = 0
    try:
        for step in range(start_step + 1, total_steps + 1):
            rate = optim.scheduled_learning_rate(
                config.schedule, config.optim.learning_rate, (step - 1) / steps_per_epoch, config.train.num_epochs
            )
            rate = plateau.learning_rate if rate is None else rate
            state = state.replace(learning_rate=_replicated_scalar(rate, mesh))
            state, metrics = train_step(state, next(batches), dropout_rng)
            metrics = jax.device_get(metrics)
            if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                raise NonFiniteError(
                    f"step {step}: loss {metrics['loss']}, gradient norm {metrics['grad_norm']}; stopping. "
                    f"The last good checkpoint in {workdir}/checkpoints is intact; lower "
                    f"optim.learning_rate or check the data, then rerun to resume from it."
                )
            if due(step, config.train.log_every_steps, total_steps):
                elapsed = time.time() - timer_start
                speed = (step - timer_step) * config.optim.batch_size / max(elapsed, 1e-9)
                eta = (total_steps - step) * elapsed / max(step - timer_step, 1)
                if jax.process_index() == 0:
                    log.info(progress_line(step, total_steps, metrics, speed, eta))
                    if data.unreadable.count > reported_unreadable:
                        reported_unreadable = data.unreadable.count
                        log.warning(
                            "skipped %d unreadable image files so far (latest: %s)",
                            reported_unreadable, data.unreadable.latest(),
                        )
                writer.write(
                    step, "train", {**metrics, "images_per_second": speed, "unreadable_files": data.unreadable.count}
                )
                timer_start, timer_step = time.time(), step
            if due(step, eval_every, total_steps):
                result = evaluate_lib.evaluate(eval_step, state.params, data, config, mesh, ten_crop=False)
                improved = result["top1_error"] < plateau.best_error
                if config.schedule.kind == "plateau":
                    plateau = optim.plateau_update(
                        plateau,
                        result["top1_error"],
                        factor=config.schedule.factor,
                        patience=config.schedule.patience,
                        min_delta=config.schedule.min_delta,
                        max_cuts=config.schedule.max_cuts,
                    )
                else:
                    plateau = plateau.replace(best_error=min(plateau.best_error, result["top1_error"]))
                writer.write(step, "eval", result)
                if jax.process_index() == 0:
                    log.info(
                        "eval at step %d: top-1 error %.4f, top-5 error %.4f (%d images)",
                        step, result["top1_error"], result["top5_error"], result["count"],
                    )
                if improved:
                    checkpoints.save_best(step, state, record())
            if due(step, config.train.checkpoint_every_steps, total_steps) or stop.requested:
                checkpoints.save(step, state, record(), force=True)
            if stop.requested:
                checkpoints.wait()
                log.warning("stopped at step %d on SIGTERM; rerun the same command to resume", step)
                return {"stopped_at_step": step}
        checkpoints.wait()
        final = _final_evaluation(eval_step, state.params, data, config, mesh)
        writer.write(total_steps, "final", final)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
                json.dump(final, f, indent=1)
        return final
    finally:
        stop.restore()
        checkpoints.close()
        writer.close()
