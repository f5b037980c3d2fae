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
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import (
    config_files,
    datasets,
    evaluate,
    files,
    finetune,
    input_pipeline,
    networks,
    optim,
    parallel,
    progress,
    resume,
    statistics,
    steps,
    stopping,
)
from alexnet_jax import workdir as workdir_lib

log = logging.getLogger("alexnet_jax")


class NonFiniteError(RuntimeError):
    """Loss or gradients became NaN or infinite."""


class DataUnreadable(OSError):
    """Every image of a training batch failed to read: the data is gone, not a file."""


class IncompatibleWorkdir(ValueError):
    """The workdir's checkpoints hold another network than the config describes."""


def due(step: int, every: int, last_step: int) -> bool:
    """Whether periodic work (logging, evaluation, checkpointing) runs after `step` (1-based).

    Every `every` steps and always after the last one; `every <= 0` means only at the end.
    """
    return step == last_step or (every > 0 and step % every == 0)


def progress_line(
    step: int, total: int, metrics: dict, images_per_second: float, eta_seconds: float, data_wait: float
) -> str:
    """`step 120/2000 [##........] 6% loss 2.103 acc 0.305 lr 0.01 812 img/s data wait 0% ETA 4m10s`:
    `data_wait` is the share of the time the loop waited for the input pipeline's batches."""
    return (
        f"step {step}/{total} {progress.bar(step, total)} {100 * step / total:3.0f}% "
        f"loss {metrics['loss']:.4f} acc {metrics['accuracy']:.3f} lr {metrics['learning_rate']:.3g} "
        f"{images_per_second:,.0f} img/s data wait {100 * data_wait:.0f}% ETA {progress.format_duration(eta_seconds)}"
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
        """The state a run starts from: the config's initialisation, with `train.init_from`'s layers
        loaded when it names a source (finetune.py). A resumed run restores its checkpoint instead."""
        state = steps.create_train_state(
            self.model,
            self.optimizer,
            self.mesh,
            self.init_rng,
            self.config.model.image_size,
            self.config.optim.learning_rate,
        )
        return finetune.start_from(self, state) if self.config.train.get("init_from") else state


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
    optimizer = optim.frozen(optimizer, finetune.layer_names(config.train.get("freeze", ""), model, "train.freeze"))
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    per_device_batch = config.optim.batch_size // mesh.shape[parallel.DATA]
    micro_batch = steps.resolve_micro_batch(config.parallel.micro_batch, per_device_batch, config.model.image_size)
    mean = statistics.normalisation(config.data.normalisation, data.mean)  # steps take it as the input's
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
        final = checkpoints.restore_newest(abstract)
        best = checkpoints.restore_best(abstract, fall_back=False)
    except checkpoint_lib.IncompatibleCheckpoint as error:
        raise IncompatibleWorkdir(f"{error}; evaluate it with the config it was trained with") from None
    finally:
        checkpoints.close()
    if final is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}; train first: --mode=train --workdir={workdir}")
    best = best or final[:2]
    # The newest checkpoint is evaluated under this config, which must describe the same network, input
    # and data as the checkpoint's (the evaluation's own fields, such as eval.ten_crop, may differ). The
    # best one may be older than a change the run accepted (train.allow_changes): it is evaluated with
    # the network and input of its own config.
    _decide(setup, final[1], os.path.join(workdir, final[2], str(final[3])), workdir, doing="evaluate")
    result = {}
    for name, state, own in (
        ("final_checkpoint", final[0], setup),
        ("best_checkpoint", best[0], _setup_of(setup, best[1], final[1])),
    ):
        result[name] = {"step": int(state.step), **_evaluate_all(own, state.params)}
    log.info(
        "best_checkpoint was chosen by its error on this split, which biases that error downwards; "
        "final_checkpoint is the model the run ended with (the paper reports its final models)"
    )
    return result


def _setup_of(setup: Setup, record: dict, newest: dict) -> Setup:
    """`setup`, or, where a checkpoint's config differs from the newest checkpoint's in what an
    evaluation computes, a setup of its own config with `setup`'s evaluation and mesh settings."""
    own, reference = record.get("config"), newest.get("config")
    if not own or not reference:
        return setup
    if not any(change.field in resume.EVALUATED for change in resume.changes(own, reference)):
        return setup
    config = config_files.upgrade(own)
    with config.unlocked():
        config.eval, config.parallel = setup.config.eval, setup.config.parallel
    return build(config)


def _take_lock(workdir: str) -> workdir_lib.Lock | None:
    """The workdir's lock, taken by process 0 for the whole run; every process stops if it is held."""
    lock, error = None, ""
    if jax.process_index() == 0:
        try:
            lock = workdir_lib.Lock(workdir).acquire()
        except (workdir_lib.WorkdirInUse, workdir_lib.LockUnsupported) as held:
            error = str(held)
    if jax.process_count() > 1 and multihost_utils.broadcast_one_to_all(np.int32(bool(error))) and not error:
        error = f"{workdir} is in use by another training run (process 0 could not lock it)"
    if error:
        raise workdir_lib.WorkdirInUse(error)
    return lock


def _check_finite(
    state: steps.TrainState, workdir: str, checkpoints: checkpoint_lib.Checkpoints, saving: bool = False
) -> None:
    """Stops when the step refused a non-finite update (steps.TrainState.nonfinite), and, before a
    save, when any parameter is not finite: no checkpoint ever holds one."""
    step, loss, grad_norm = (float(v) for v in np.asarray(jax.device_get(state.nonfinite)))
    what = f"loss {loss}, gradient norm {grad_norm}"
    if step == 0 and saving and not bool(steps.all_finite(state.params)):
        step, what = int(state.step), "finite loss and gradients, but an update that overflowed the parameters"
    if step > 0:
        saved = any(checkpoints.steps().values())
        kept = (
            f"the last good checkpoint in {workdir}/checkpoints is intact; lower optim.learning_rate or check the "
            "data, then rerun to resume from it (the new rate applies from that step on)."
            if saved
            else "no checkpoint had been written yet; lower optim.learning_rate or check the data, then rerun "
            "(it starts from step 0)."
        )
        raise NonFiniteError(f"step {int(step)}: {what}; stopping. No update from that step on was applied, and {kept}")


def _check_data(data: datasets.Data, workdir: str) -> None:
    """Stops, before anything is saved, when a whole batch could not be read on some process: the
    data is gone (an unmounted disk, a moved folder), not a file."""
    lost = data.unreadable.lost_batch or 0
    if jax.process_count() > 1:
        lost = int(np.max(multihost_utils.process_allgather(np.int32(lost))))
    if lost:
        raise DataUnreadable(
            f"not one image of the batch of step {lost} could be read (latest: {data.unreadable.latest()}); is the "
            f"data still there? Nothing after the last checkpoint in {workdir} was saved: fix it and rerun to resume"
        )


def train_and_evaluate(config, workdir: str, *, model=None, batches: Iterator[dict] | None = None) -> dict:
    """Trains as `config` says, evaluating, logging and checkpointing in `workdir`.

    Returns the final evaluation: centre-crop top-1/top-5 error, and the 10-crop figures when
    `config.eval.ten_crop`. `model` and `batches` (host batches, as `input_pipeline.train_batches`
    yields them) replace the config's network and input pipeline, to time the loop on its own.
    """
    with stopping.StopRequest() as stop:
        lock = _take_lock(workdir) if config.train.get("lock_workdir", True) else None
        try:
            return _train(build(config, model), workdir, batches, stop)
        finally:
            if lock is not None:
                lock.release()


@dataclasses.dataclass
class _Start:
    """Where a run (re)starts: the state, the host-side schedule, and what the rerun changed."""

    state: steps.TrainState
    plateau: optim.PlateauState
    rate_scale: float  # the step, cosine and constant schedules' rates are multiplied by it
    lowest_error: float
    decision: resume.Decision  # the config changes that take effect from this step on


def _reference_record(checkpoints: checkpoint_lib.Checkpoints, workdir: str) -> tuple[dict, str] | None:
    """The record of the newest checkpoint (or, with none left, of the newest superseded best),
    and where it is: what this rerun is compared with."""
    found = checkpoints.newest_record()
    if found is not None:
        record, kind, step = found
        return record, os.path.join(workdir, kind, str(step))
    return workdir_lib.newest_superseded_record(workdir)


def _decide(setup: Setup, record: dict, where: str, workdir: str, doing: str = "resume") -> resume.Decision:
    """The rules of every changed field (resume.py) against the checkpoint's config and data;
    stops with one line, changing nothing, when the rerun would be another run."""
    old_config = record.get("config") or workdir_lib.saved_config(workdir)  # older checkpoints hold none
    if old_config is None:
        return resume.Decision([], [])
    decision = resume.decide(
        old_config, setup.config, record.get("data"), resume.data_identity(setup.data), evaluating=doing != "resume"
    )
    if decision.refused:
        raise resume.ResumeRefused(
            f"{workdir} holds a run this config would change ({where}): {'; '.join(decision.refused)}. Nothing in "
            f"{workdir} was changed: {doing} it with the run's own config (in {workdir}/{workdir_lib.CONFIG_FILE})"
            + (", or train this config with a new --workdir" if doing == "resume" else "")
        )
    return decision


# Fields that reshape the step, cosine and constant schedules: changed on resume, they apply from the
# resumed step on, the rate there staying what the run had reached (the cuts and the decay still to come).
SCHEDULE_SHAPE = {"schedule.factor", "schedule.step_epochs", "train.num_epochs"}


def _shape_ratio(setup: Setup, old_config: dict, step: int) -> float:
    """The old schedule's factor at `step` over the new one's: what keeps the rate at `step` unchanged."""
    old = ml_collections.ConfigDict(old_config)
    epoch, new = _epoch(setup, step), setup.config
    before = optim.scheduled_learning_rate(old.schedule, 1.0, epoch, old.train.num_epochs)
    after = optim.scheduled_learning_rate(new.schedule, 1.0, epoch, new.train.num_epochs)
    return before / after if before is not None and after else 1.0


def _resume(setup: Setup, checkpoints: checkpoint_lib.Checkpoints, workdir: str) -> _Start:
    """The newest checkpoint's state (periodic or best), checked against this config, with the rerun's
    accepted changes applied; or a fresh state. Nothing is written before every check has passed."""
    config = setup.config
    reference = _reference_record(checkpoints, workdir)
    decision = _decide(setup, *reference, workdir) if reference else resume.Decision([], [])
    try:
        restored = checkpoints.restore_newest(setup.abstract_state())
    except checkpoint_lib.IncompatibleCheckpoint as error:
        raise IncompatibleWorkdir(
            f"{error}. Nothing in {workdir} was changed: train this config with a new --workdir, or resume "
            f"with the config this run was trained with (its values are in {workdir}/{workdir_lib.CONFIG_FILE})"
        ) from None
    if restored is None:
        plateau = optim.PlateauState(learning_rate=config.optim.learning_rate)
        return _Start(setup.fresh_state(), plateau, 1.0, plateau.best_error, resume.Decision([], []))
    state, record, kind, step = restored
    if reference is None or os.path.join(workdir, kind, str(step)) != reference[1]:
        decision = _decide(setup, record, os.path.join(workdir, kind, str(step)), workdir)
    plateau = optim.PlateauState(**record.get("plateau", {"learning_rate": config.optim.learning_rate}))
    rate_scale = float(record.get("rate_scale", 1.0))
    if decision.learning_rate_changed:
        # The new rate is the rate from this step on, whatever the schedule (section 5: the rate was
        # lowered by hand); the plateau rule counts its patience afresh from it.
        plateau = plateau.replace(learning_rate=float(config.optim.learning_rate), evals_without_improvement=0)
        shape = optim.scheduled_learning_rate(config.schedule, 1.0, _epoch(setup, step + 1), config.train.num_epochs)
        rate_scale = 1.0 / shape if shape else 1.0
    elif {change.field for change in decision.take_effect} & SCHEDULE_SHAPE and record.get("config"):
        rate_scale *= _shape_ratio(setup, record["config"], step + 1)
    log.info("resumed from step %d (%s)", int(state.step), os.path.join(workdir, kind, str(step)))
    lowest_error = record.get("lowest_error", plateau.best_error)
    return _Start(state, plateau, rate_scale, lowest_error, decision)


def _epoch(setup: Setup, step: int) -> float:
    """The epoch (fractional) that 1-based `step` trains in."""
    return (step - 1) / setup.steps_per_epoch


def _finished(setup: Setup, start: _Start, workdir: str) -> dict | None:
    """The final evaluation of a run that has reached its last step already, or None when it has to
    train or evaluate. A finished run rerun with changes that would have no effect stops."""
    if int(start.state.step) < setup.total_steps:
        return None
    if start.decision.effective:
        raise resume.ResumeRefused(
            f"{workdir} finished at step {int(start.state.step)}; these changes would have no effect on it: "
            f"{'; '.join(map(str, start.decision.effective))}. Raise train.num_epochs to train further, evaluate "
            "it with --mode=eval, or train this config with a new --workdir"
        )
    path = os.path.join(workdir, workdir_lib.FINAL_FILE)
    if not os.path.exists(path):
        return None  # stopped before its final evaluation: it runs now
    try:
        final = files.read_json(path)
    except files.CorruptFile as error:
        log.warning("%s; evaluating the final checkpoint again to rewrite it", error)
        return None
    log.info("%s finished at step %d already; its final evaluation is in %s", workdir, int(start.state.step), path)
    return final


def _train(setup: Setup, workdir: str, batches: Iterator[dict] | None, stop: stopping.StopRequest) -> dict:
    config, mesh, data = setup.config, setup.mesh, setup.data
    checkpoints = checkpoint_lib.Checkpoints(workdir, keep=config.train.keep_checkpoints)
    writer = None
    try:
        start = _resume(setup, checkpoints, workdir)
        final = _finished(setup, start, workdir)
        if final is not None:
            return final
        if start.decision.take_effect:  # said only now: a finished run with changes stops in `_finished`
            log.warning(
                "resuming at step %d with changes that take effect from this step on: %s",
                int(start.state.step),
                "; ".join(map(str, start.decision.take_effect)),
            )
        state, plateau, lowest_error = start.state, start.plateau, start.lowest_error
        start_step, total_steps = int(state.step), setup.total_steps
        identity = resume.data_identity(data)
        if jax.process_index() == 0:
            workdir_lib.rewind_metrics(workdir, start_step)  # first: it stops on a damaged metrics file
            workdir_lib.save_run_metadata(workdir, config, data)
            if start_step < total_steps:  # a longer run now: the final evaluation of the shorter one is kept aside
                workdir_lib.keep_aside(workdir, workdir_lib.FINAL_FILE)
        writer = MetricWriter(workdir)
        if batches is None:
            batches = input_pipeline.train_batches(
                data,
                config.data,
                crop=config.model.image_size,
                global_batch=config.optim.batch_size,
                start_step=start_step,
                seed=config.seed,
            )
        waited = input_pipeline.Waited(batches)
        batches = parallel.prefetch_to_device(waited, mesh)
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
            # Everything a resumed run needs besides the arrays, and what the run is: the config this
            # checkpoint was written under (the tools read it) and the data it trained on.
            return {
                "plateau": dataclasses.asdict(plateau),
                "lowest_error": lowest_error,
                "rate_scale": start.rate_scale,
                "config": resume.resolved(config),
                "data": identity,
            }

        timer_start, timer_step, reported_unreadable, rate_on_device = time.time(), start_step, 0, None
        timer_waited = 0.0
        last_evaluation = None  # (step, centre-crop result): the last step's is the final one's too
        stop.training(True)
        for step in range(start_step + 1, total_steps + 1):
            rate = optim.scheduled_learning_rate(
                config.schedule, config.optim.learning_rate, _epoch(setup, step), config.train.num_epochs
            )
            rate = plateau.learning_rate if rate is None else rate * start.rate_scale
            if rate != rate_on_device:  # a transfer only when the rate changes
                state = state.replace(learning_rate=jax.device_put(np.float32(rate), NamedSharding(mesh, P())))
                rate_on_device = rate
            state, metrics = setup.train_step(state, next(batches), setup.dropout_rng)
            log_step = due(step, config.train.log_every_steps, total_steps)
            stopping_now = stop.agreed(log_step)
            eval_step = due(step, setup.eval_every, total_steps)
            save_step = due(step, config.train.checkpoint_every_steps, total_steps) or stopping_now
            if log_step or eval_step or save_step:  # the one wait for the device, before anything is kept
                _check_finite(state, workdir, checkpoints, saving=save_step or eval_step)
                _check_data(data, workdir)
            if log_step:
                metrics = jax.device_get(metrics)
                elapsed = time.time() - timer_start
                speed = (step - timer_step) * config.optim.batch_size / max(elapsed, 1e-9)
                eta = (total_steps - step) * elapsed / max(step - timer_step, 1)
                waiting = min((waited.seconds - timer_waited) / max(elapsed, 1e-9), 1.0)
                if jax.process_index() == 0:
                    log.info(progress_line(step, total_steps, metrics, speed, eta, waiting))
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
                    "data_wait_fraction": waiting,
                    "unreadable_files": data.unreadable.count,
                }
                writer.write(step, "train", {**metrics, **progress_record})
                timer_start, timer_step, timer_waited = time.time(), step, waited.seconds
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
            if stopping_now:
                checkpoints.wait()
                log.warning("stopped at step %d on %s; rerun the same command to resume", step, stop.requested)
                return {"stopped_at_step": step}
        checkpoints.wait()
        stop.training(False)
        centre = last_evaluation[1] if last_evaluation and last_evaluation[0] == total_steps else None
        final = _evaluate_all(setup, state.params, centre)
        writer.write(total_steps, "final", final)
        if jax.process_index() == 0:
            files.write_json(os.path.join(workdir, workdir_lib.FINAL_FILE), final)
        return final
    finally:
        checkpoints.close()
        if writer is not None:
            writer.close()
