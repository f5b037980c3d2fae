"""The pure, jitted training and evaluation steps, written once for every mesh shape.

Both run the model inside `shard_map` over the ('data', 'model') mesh: parameters and optimiser
state split on `model` (one tower per device when it is 2), the batch split on `data`. A (1, 1)
mesh is the single-device case of the same code.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax.parallel import DATA, MODEL


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes; the whole of it is checkpointed."""

    step: jax.Array  # int32 scalar: optimiser steps taken.
    params: Any  # canonical tree, split on `model`.
    opt_state: Any  # paper_sgd velocity, same layout as params.
    learning_rate: jax.Array  # float32 scalar, set by the schedule between steps.


def state_specs(state: TrainState) -> TrainState:
    """PartitionSpecs for every field of a TrainState."""
    return TrainState(
        step=P(),
        params=parallel.param_specs(state.params),
        opt_state=parallel.param_specs(state.opt_state),
        learning_rate=P(),
    )


def create_train_state(
    model: model_lib.AlexNet,
    optimizer: optax.GradientTransformationExtraArgs,
    mesh: Mesh,
    rng: jax.Array,
    image_size: int,
    learning_rate: float,
) -> TrainState:
    """A fresh state, created directly in its sharded layout (no full copy on one device first)."""

    def create():
        params = model_lib.init_params(model, rng, image_size)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            learning_rate=jnp.asarray(learning_rate, jnp.float32),
        )

    specs = state_specs(jax.eval_shape(create))
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    return jax.jit(create, out_shardings=shardings)()


def state_shardings(state: TrainState, mesh: Mesh) -> TrainState:
    """NamedShardings of `state` (arrays or shape structs) on `mesh`."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs(state))


def normalise_images(batch: dict, mean: np.ndarray | None) -> jax.Array:
    """Training images as the network takes them: float, mean-subtracted, colour-shifted.

    The input pipeline sends uint8 crops (already mirrored) with each one's `window` (top, left,
    mirrored) and PCA `lighting` offset (input_pipeline.py); the subtraction of the matching window
    of the mean image (mirrored likewise) and the offset happen here, on the device, where they cost
    nothing next to the convolutions and the host ships a quarter of the bytes. A batch of float
    `images` alone (no `window`) is taken as already normalised.
    """
    images = batch["images"]
    if "window" not in batch:
        return images.astype(jnp.float32)
    images = images.astype(jnp.float32)
    if mean is not None and mean.ndim == 3:
        side = images.shape[1]

        def mean_window(window):
            patch = lax.dynamic_slice(jnp.asarray(mean), (window[0], window[1], 0), (side, side, 3))
            return jnp.where(window[2] > 0, patch[:, ::-1], patch)

        images = images - jax.vmap(mean_window)(batch["window"])
    elif mean is not None:
        images = images - jnp.asarray(mean)
    return images + batch["lighting"][:, None, None, :]


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


# Examples per forward/backward chunk on XLA:CPU. Batch 128 in chunks of 16 or 32 trains about 1.3x
# faster than in one piece on a 2-core machine, and batch 32 in chunks of 16 about 1.1x (BENCHMARKS.md).
CPU_MICRO_BATCH = 16


def resolve_micro_batch(setting: int, per_device_batch: int, image_size: int, backend: str | None = None) -> int:
    """Examples per forward/backward chunk for `parallel.micro_batch` (0: the whole device batch).

    -1 (automatic) chooses CPU_MICRO_BATCH on a CPU for 224-pixel or larger inputs when it divides
    a larger per-device batch (a chunk's activations stay in cache and the step allocates less
    memory), and the whole batch otherwise: accelerators need large batches to be busy, and on
    small inputs (the 64-pixel default config) the chunks only add overhead (training ran 2x slower).
    """
    backend = backend or jax.default_backend()
    if setting == -1:
        fits = per_device_batch > CPU_MICRO_BATCH and per_device_batch % CPU_MICRO_BATCH == 0
        return CPU_MICRO_BATCH if backend == "cpu" and image_size >= 224 and fits else 0
    if setting < 0 or (setting and per_device_batch % setting):
        raise ValueError(f"parallel.micro_batch={setting} must be -1, 0 or divide the per-device batch {per_device_batch}")
    return 0 if setting >= per_device_batch else setting


def _local_gradients(tower_model, model_size, params, images, labels, rng, micro_batch=0):
    """Loss, logits and gradients of one device's shard, gradients already summed over `data`.

    With `micro_batch`, the shard goes through forward and backward in chunks of that many
    examples and the chunks' gradients are added: the same sum (to float rounding) with the same
    dropout masks, since each chunk tells the model the global index of its first example.
    """
    local = labels.shape[0]
    global_batch = local * lax.axis_size(DATA)
    chunk = micro_batch or local

    def loss_fn(p, x, y, first_example):
        logits = tower_model.apply({"params": p}, x, train=True, rngs={"dropout": rng}, first_example=first_example)
        return _cross_entropy(logits, y).sum() / global_batch, logits

    first = lax.axis_index(DATA) * local
    loss, logits, grads = 0.0, [], None
    # A Python loop, not lax.scan: XLA:CPU runs convolutions inside a while loop far slower.
    for start in range(0, local, chunk):
        part = slice(start, start + chunk)
        (chunk_loss, chunk_logits), chunk_grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, images[part], labels[part], first + start
        )
        loss, grads = loss + chunk_loss, chunk_grads if grads is None else jax.tree.map(jnp.add, grads, chunk_grads)
        logits.append(chunk_logits)
    # Every parameter reaches the loss through the final all-gather of the towers' logits; its
    # transpose sums the `model_size` identical copies of d(loss)/d(logits) that the towers
    # computed, hence the division. Replicas on `data` add up their slices of the batch.
    grads = jax.tree.map(lambda g: lax.psum(g, DATA) / model_size, grads)
    return lax.psum(loss, DATA), jnp.concatenate(logits), grads


def make_grad_fn(model: model_lib.AlexNet, mesh: Mesh, mean: np.ndarray | None = None, micro_batch: int = 0) -> Callable:
    """`grad_fn(params, batch, rng) -> (loss, logits, grads)` on `mesh`, training mode.

    The same computation as inside `train_step`, exposed to compare layouts with one another.
    """
    tower_model = model.clone(model_axis=MODEL, data_axis=DATA)

    def local(params, batch, rng):
        images = normalise_images(batch, mean)
        return _local_gradients(tower_model, mesh.shape[MODEL], params, images, batch["labels"], rng, micro_batch)

    def grad_fn(params, batch, rng):
        specs = parallel.param_specs(params)
        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(specs, parallel.batch_spec(), P()),
            out_specs=(P(), parallel.batch_spec(), specs),
            check_vma=False,
        )(params, batch, rng)

    return jax.jit(grad_fn)


def make_train_step(
    model: model_lib.AlexNet,
    optimizer: optax.GradientTransformationExtraArgs,
    mesh: Mesh,
    mean: np.ndarray | None = None,
    micro_batch: int = 0,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """`train_step(state, batch, rng) -> (state, metrics)`, jitted, state donated.

    `batch` holds global arrays split on `data`: `images` (N, H, W, 3) and `labels` (N,), and, from
    the input pipeline, `window` and `lighting` (see `normalise_images`, which subtracts `mean`);
    `rng` is the run's root key: the step's dropout key is `fold_in(rng, state.step)`, so a resumed
    run draws the same masks as an uninterrupted one. `micro_batch` (see `resolve_micro_batch`)
    splits each device's batch into chunks for the forward and backward passes.
    """
    tower_model = model.clone(model_axis=MODEL, data_axis=DATA)
    model_size = mesh.shape[MODEL]

    def local_step(params, opt_state, learning_rate, batch, rng):
        labels = batch["labels"]
        images = normalise_images(batch, mean)
        loss, logits, grads = _local_gradients(tower_model, model_size, params, images, labels, rng, micro_batch)
        updates, opt_state = optimizer.update(grads, opt_state, params, learning_rate=learning_rate)
        params = optax.apply_updates(params, updates)
        correct = lax.psum(jnp.sum(jnp.argmax(logits, -1) == labels), DATA)
        # Each device holds one tower's share of the gradient; the towers' squares add up.
        squares = sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(grads))
        metrics = {
            "loss": loss,
            "accuracy": correct / (labels.shape[0] * lax.axis_size(DATA)),
            "grad_norm": jnp.sqrt(lax.psum(squares, MODEL)),
        }
        return params, opt_state, metrics

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        specs = state_specs(state)
        sharded = jax.shard_map(
            local_step,
            mesh=mesh,
            in_specs=(specs.params, specs.opt_state, P(), parallel.batch_spec(), P()),
            out_specs=(specs.params, specs.opt_state, P()),
            check_vma=False,
        )
        params, opt_state, metrics = sharded(
            state.params,
            state.opt_state,
            state.learning_rate,
            batch,
            jax.random.fold_in(rng, state.step),
        )
        metrics["learning_rate"] = state.learning_rate
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(train_step, donate_argnums=(0,))


def make_eval_step(model: model_lib.AlexNet, mesh: Mesh) -> Callable[[Any, dict], dict]:
    """`eval_step(params, batch) -> sums` of top-1/top-5 correct, loss and counted examples.

    `batch["images"]` is (N, crops, H, W, 3): the softmax is averaged over the crops (1 for the
    centre crop, 10 for the paper's 4 corners + centre and their reflections). `batch["mask"]` is
    1 for real examples and 0 for the padding of a last, partial batch, which counts for nothing.
    """
    tower_model = model.clone(model_axis=MODEL, data_axis=DATA)

    def local_eval(params, images, labels, mask):
        n, crops = images.shape[:2]
        logits = tower_model.apply({"params": params}, images.reshape(n * crops, *images.shape[2:]))
        probs = jax.nn.softmax(logits).reshape(n, crops, -1).mean(axis=1)
        k = min(5, probs.shape[-1])
        top_k = lax.top_k(probs, k)[1]
        hit_1 = top_k[:, 0] == labels
        hit_5 = jnp.any(top_k == labels[:, None], axis=-1)
        nll = -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0] + 1e-12)
        sums = {
            "top1_correct": jnp.sum(hit_1 * mask),
            "top5_correct": jnp.sum(hit_5 * mask),
            "loss_sum": jnp.sum(nll * mask),
            "count": jnp.sum(mask),
        }
        return jax.tree.map(lambda v: lax.psum(v, DATA), sums)

    def eval_step(params, batch):
        return jax.shard_map(
            local_eval,
            mesh=mesh,
            in_specs=(parallel.param_specs(params), parallel.batch_spec(), parallel.batch_spec(), parallel.batch_spec()),
            out_specs=P(),
            check_vma=False,
        )(params, batch["images"], batch["labels"], batch["mask"])

    return jax.jit(eval_step)
