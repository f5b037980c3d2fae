"""The pure, jitted training and evaluation steps, written once for every mesh shape.

Both run the network inside `shard_map` over the ('data', 'model') mesh: parameters and optimiser
state split on `model` (one tower per device when it is 2), the batch split on `data`. A (1, 1)
mesh is the single-device case of the same code. Batches arrive as uint8 pixels; the float
conversion, the mean image, the crops and the colour shift happen here, on the device. The factories
are built once per process for equal arguments (`programs.reused`), their traces and programs with them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import networks, parallel, programs, statistics
from alexnet_jax.parallel import DATA, MODEL


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes; the whole of it is checkpointed."""

    step: jax.Array  # int32 scalar: optimiser steps taken.
    params: Any  # canonical tree, split on `model`.
    opt_state: Any  # paper_sgd velocity, same layout as params.
    learning_rate: jax.Array  # float32 scalar, set by the schedule between steps.
    # (step, loss, gradient norm) of the first step whose loss or gradient was not finite; step 0
    # while all were. From that step on every update is refused, so the parameters stay the last
    # finite ones, and the loop stops when it next looks (training loop, `train.NonFiniteError`).
    nonfinite: jax.Array


def state_specs(state: TrainState) -> TrainState:
    """PartitionSpecs for every field of a TrainState."""
    return TrainState(
        step=P(),
        params=parallel.param_specs(state.params),
        opt_state=parallel.param_specs(state.opt_state),
        learning_rate=P(),
        nonfinite=P(),
    )


def state_shardings(state: TrainState, mesh: Mesh) -> TrainState:
    """NamedShardings of `state` (arrays or shape structs) on `mesh`."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs(state))


def _fresh_state(model, optimizer, image_size) -> Callable[[jax.Array, jax.Array], TrainState]:
    """`create(rng, learning_rate) -> TrainState`. The key and the rate are arguments, not constants
    of the program: one compiled program serves every seed and rate of a network."""

    def create(rng, learning_rate):
        dummy = jnp.zeros((1, image_size, image_size, 3), model.dtype)
        params = model.init({"params": rng}, dummy)["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            learning_rate=learning_rate,
            nonfinite=jnp.zeros((3,), jnp.float32),
        )

    return create


@programs.reused
def abstract_train_state(model, optimizer, mesh, image_size: int) -> TrainState:
    """Shapes, dtypes and shardings of the state `create_train_state` makes, allocating nothing:
    the target a checkpoint is restored into."""
    shapes = jax.eval_shape(_fresh_state(model, optimizer, image_size), jax.random.key(0), jnp.float32(0))
    return jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        shapes,
        state_shardings(shapes, mesh),
    )


@programs.reused
def _compiled_fresh_state(model, optimizer, mesh: Mesh, image_size: int) -> Callable:
    create = _fresh_state(model, optimizer, image_size)
    shardings = jax.tree.map(lambda s: s.sharding, abstract_train_state(model, optimizer, mesh, image_size))
    return jax.jit(create, out_shardings=shardings, compiler_options=networks.INIT_COMPILER_OPTIONS)


def create_train_state(model, optimizer, mesh: Mesh, rng: jax.Array, image_size: int, learning_rate: float):
    """A fresh state, created directly in its sharded layout (no full copy on one device first)."""
    return _compiled_fresh_state(model, optimizer, mesh, image_size)(rng, jnp.float32(learning_rate))


def as_normalisation(normalisation) -> statistics.Normalisation:
    """A `statistics.Normalisation` as it is; a mean image or pixel (an array) as the offset alone; None as nothing."""
    if isinstance(normalisation, statistics.Normalisation):
        return normalisation
    return statistics.Normalisation(offset=None if normalisation is None else np.asarray(normalisation, np.float32))


def normalise_images(batch: dict, normalisation) -> jax.Array:
    """Training images as the network takes them: float, normalised, colour-shifted, mirrored.

    The input pipeline sends each uint8 crop as it lies in the resized image (a strided copy on the
    host), with its `window` (top, left, mirrored) and its PCA `lighting` offset (0-255 scale). With
    `normalisation` (a `statistics.Normalisation`, or a mean image or pixel as `as_normalisation`
    reads it), the network gets `(x + lighting - offset) * scale`, reflected where the window says
    so: the reflection is a gather here, where a host would copy each pixel. A mean image's window
    is the crop's own (cuda-convnet2 subtracted the mean's centre window from every crop instead).
    A batch of float `images` alone (no `window`) is taken as already normalised.
    """
    images = batch["images"].astype(jnp.float32)
    if "window" not in batch:
        return images
    norm = as_normalisation(normalisation)
    if norm.offset is not None and norm.offset.ndim == 3:
        side = images.shape[1]

        def mean_window(window):
            return lax.dynamic_slice(jnp.asarray(norm.offset), (window[0], window[1], 0), (side, side, 3))

        images = images - jax.vmap(mean_window)(batch["window"])
    elif norm.offset is not None:
        images = images - jnp.asarray(norm.offset)
    images = images + batch["lighting"][:, None, None, :]  # (x + shift - offset): the shift is in pixel units
    mirrored = batch["window"][:, 2, None, None, None] > 0
    images = jnp.where(mirrored, images[:, :, ::-1], images)
    return images if norm.scale is None else images * jnp.asarray(norm.scale)


def test_crops(images: jax.Array, normalisation, crop: int, ten_crop: bool) -> jax.Array:
    """Section 4.1's test-time patches of uint8 resized images (N, S, S, 3), normalised.

    The centre patch, or the 4 corners and the centre and their reflections: (N, 1 or 10, crop,
    crop, 3) float32. `normalisation` (see `normalise_images`) applies to the whole image first, as
    the evaluation has always done, so the numbers do not depend on where the crops are cut.
    """
    norm = as_normalisation(normalisation)
    images = images.astype(jnp.float32)
    if norm.offset is not None:
        images = images - jnp.asarray(norm.offset, jnp.float32)
    if norm.scale is not None:
        images = images * jnp.asarray(norm.scale, jnp.float32)
    far = images.shape[1] - crop
    mid = far // 2
    corners = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)] if ten_crop else [(mid, mid)]
    patches = [images[:, top : top + crop, left : left + crop] for top, left in corners]
    if ten_crop:
        patches += [patch[:, :, ::-1] for patch in patches]
    return jnp.stack(patches, axis=1)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


# Examples per chunk of the convolutional layers on XLA:CPU at 224 pixels: on a 2-core machine,
# batch 128 trained 1.6x faster in chunks of 8 than in one piece, and faster than in chunks of 16
# or 32 (BENCHMARKS.md, "Implementation choices").
CPU_MICRO_BATCH = 8


def resolve_micro_batch(setting: int, per_device_batch: int, image_size: int, backend: str | None = None) -> int:
    """Examples per chunk of the convolutional layers for `parallel.micro_batch` (0: the whole batch).

    -1 (automatic) chooses CPU_MICRO_BATCH on a CPU for 224-pixel or larger inputs when it divides
    a larger per-device batch, and the whole batch otherwise: accelerators need large batches to be
    busy, and on small inputs (the 64-pixel default config) the chunks only add overhead.
    """
    backend = backend or jax.default_backend()
    if setting == -1:
        fits = per_device_batch > CPU_MICRO_BATCH and per_device_batch % CPU_MICRO_BATCH == 0
        return CPU_MICRO_BATCH if backend == "cpu" and image_size >= 224 and fits else 0
    if setting < 0 or (setting and per_device_batch % setting):
        raise ValueError(
            f"parallel.micro_batch={setting} must be -1, 0 or divide the per-device batch {per_device_batch}"
        )
    return 0 if setting >= per_device_batch else setting


def _split(params: dict, names) -> dict:
    return {name: params[name] for name in names}


def _example_weights(batch: dict) -> jax.Array:
    """1 for each example the loss counts, 0 for one whose file could not be read (input_pipeline)."""
    return batch["weight"] if "weight" in batch else jnp.ones(batch["labels"].shape, jnp.float32)


def _local_gradients(tower_model, params, images, labels, weights, rng, micro_batch=0):
    """Loss, logits and gradients of one device's shard, gradients already summed over `data`.

    With `micro_batch`, the convolutional layers run forward and backward in chunks of that many
    examples, and the fully connected layers once on the whole shard in between: the same sum (to
    float rounding), dropout included, with a chunk's activations far smaller than the batch's
    (faster on CPUs), and fc6's 151 MB weight gradient formed once rather than once per chunk.
    """
    # The mean over the examples that could be read (all of them, but for a file that failed).
    counted = jnp.maximum(lax.psum(jnp.sum(weights), DATA), 1.0)
    head_names = [name for name in params if name in tower_model.HEAD]
    trunk_names = [name for name in params if name not in head_names]

    def head_loss(head, maps):
        logits = tower_model.apply({"params": head}, maps, train=True, rngs={"dropout": rng}, method="classifier")
        return jnp.sum(_cross_entropy(logits, labels) * weights) / counted, logits

    def trunk(weights, x):
        return tower_model.apply({"params": weights}, x, method="features")

    trunk_params, head_params = _split(params, trunk_names), _split(params, head_names)
    chunk = micro_batch or labels.shape[0]
    # A Python loop, not lax.scan: XLA:CPU runs convolutions inside a while loop far slower.
    # (The images need no gradient: conv1's input gradient would cost as much as its forward pass.)
    chunks = [images[start : start + chunk] for start in range(0, labels.shape[0], chunk)]
    maps, backwards = zip(*(jax.vjp(lambda weights, x=x: trunk(weights, x), trunk_params) for x in chunks))
    (loss, logits), (head_grads, map_grads) = jax.value_and_grad(head_loss, argnums=(0, 1), has_aux=True)(
        head_params, jnp.concatenate(maps)
    )
    trunk_grads = None
    for i, backward in enumerate(backwards):
        part = backward(map_grads[i * chunk : (i + 1) * chunk])[0]
        trunk_grads = part if trunk_grads is None else jax.tree.map(jnp.add, trunk_grads, part)
    grads = {**trunk_grads, **head_grads}
    # Every parameter reaches the loss through the final all-gather of the towers' logits; its
    # transpose sums the `model` identical copies of d(loss)/d(logits) that the towers computed,
    # hence the division. Replicas on `data` add up their slices of the batch.
    grads = jax.tree.map(lambda g: lax.psum(g, DATA) / lax.axis_size(MODEL), grads)
    return lax.psum(loss, DATA), logits, grads


def _on_mesh(model) -> Any:
    return model.clone(model_axis=MODEL, data_axis=DATA)


@programs.reused
def make_grad_fn(model, mesh: Mesh, mean=None, micro_batch: int = 0) -> Callable:
    """`grad_fn(params, batch, rng) -> (loss, logits, grads)` on `mesh`, training mode.

    The same computation as inside `train_step`, exposed to compare layouts with one another.
    """
    tower_model = _on_mesh(model)

    def local(params, batch, rng):
        images = normalise_images(batch, mean)
        return _local_gradients(tower_model, params, images, batch["labels"], _example_weights(batch), rng, micro_batch)

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


@programs.reused
def make_train_step(model, optimizer, mesh: Mesh, mean=None, micro_batch: int = 0) -> Callable:
    """`train_step(state, batch, rng) -> (state, metrics)`, jitted, state donated.

    `batch` holds global arrays split on `data`: `images` (N, H, W, 3) and `labels` (N,), and, from
    the input pipeline, `window` and `lighting` (see `normalise_images`, which applies `mean`, a
    `statistics.Normalisation` or a mean image or pixel);
    `rng` is the run's root key: the step's dropout key is `fold_in(rng, state.step)`, so a resumed
    run draws the same masks as an uninterrupted one. `micro_batch` (see `resolve_micro_batch`)
    splits each device's batch into chunks for the convolutional layers. An update whose loss or
    gradient is not finite is refused and recorded in `state.nonfinite` (see TrainState), so that
    the loop need not wait for each step's metrics to keep the guarantee.
    """
    tower_model = _on_mesh(model)

    def local_step(params, opt_state, learning_rate, batch, rng):
        labels = batch["labels"]
        images = normalise_images(batch, mean)
        weights = _example_weights(batch)
        loss, logits, grads = _local_gradients(tower_model, params, images, labels, weights, rng, micro_batch)
        updates, new_opt_state = optimizer.update(grads, opt_state, params, learning_rate=learning_rate)
        correct = lax.psum(jnp.sum((jnp.argmax(logits, -1) == labels) * weights), DATA)
        counted = jnp.maximum(lax.psum(jnp.sum(weights), DATA), 1.0)
        # Each device holds one tower's share of the gradient; the towers' squares add up.
        squares = sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(grads))
        metrics = {
            "loss": loss,
            "accuracy": correct / counted,
            "grad_norm": jnp.sqrt(lax.psum(squares, MODEL)),
        }
        return optax.apply_updates(params, updates), new_opt_state, metrics

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
            state.params, state.opt_state, state.learning_rate, batch, jax.random.fold_in(rng, state.step)
        )
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        accept = finite & (state.nonfinite[0] == 0)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(accept, n, o), new, old)  # noqa: E731
        first_bad = jnp.stack([(state.step + 1).astype(jnp.float32), metrics["loss"], metrics["grad_norm"]])
        nonfinite = jnp.where((state.nonfinite[0] == 0) & ~finite, first_bad, state.nonfinite)
        metrics["learning_rate"] = state.learning_rate
        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            nonfinite=nonfinite,
        )
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=(0,))


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every value of a tree of arrays is finite (one pass; the loop calls it before a save:
    a finite loss and gradient times an absurd rate can still overflow the parameters)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))


@programs.reused
def make_eval_step(model, mesh: Mesh, mean, crop: int, ten_crop: bool) -> Callable[[Any, dict], dict]:
    """`eval_step(params, batch) -> sums` of top-1/top-5 correct, loss and counted examples.

    `batch["images"]` holds the uint8 resized images (N, S, S, 3); `test_crops` cuts the centre
    crop, or the paper's 10, on the device, and the softmax is averaged over them. `batch["mask"]`
    is 1 for real examples and 0 for the padding of a last, partial batch, which counts for nothing.
    """
    tower_model = _on_mesh(model)

    def local_eval(params, images, labels, mask):
        patches = test_crops(images, mean, crop, ten_crop)
        n, crops = patches.shape[:2]
        logits = tower_model.apply({"params": params}, patches.reshape(n * crops, *patches.shape[2:]))
        probs = jax.nn.softmax(logits).reshape(n, crops, -1).mean(axis=1)
        top_k = lax.top_k(probs, min(5, probs.shape[-1]))[1]
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
        data = parallel.batch_spec()
        return jax.shard_map(
            local_eval,
            mesh=mesh,
            in_specs=(parallel.param_specs(params), data, data, data),
            out_specs=P(),
            check_vma=False,
        )(params, batch["images"], batch["labels"], batch["mask"])

    return jax.jit(eval_step)
