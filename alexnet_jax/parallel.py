"""Device mesh, shardings and the cross-tower collectives (section 3.2 of the paper).

The mesh has two axes, `data` and `model`. On `model` (size 1 or 2) the paper's two towers are
split: every layer's kernel and bias are sharded on their output axis, so each device of a model
pair holds one tower (conv1 48 kernels, conv2 128, conv3 192, conv4 192, conv5 128, fc6 2048,
fc7 2048, fc8 half the classes). The stored canonical tree is not reshaped; `P(..., "model")` on the
last axis is the whole layout. On `data` the batch is split and gradients are summed.

Communication between the towers happens where the paper's GPUs talked, as `all_gather`s over
`model` inside `AlexNet` (networks/alexnet.py), and nowhere else. Per image, in the forward pass, each tower
sends the other (float32; half that in bfloat16):

| layer | what a tower sends                          | bytes/image |
|-------|---------------------------------------------|-------------|
| conv2 | nothing (own tower's pool1 maps only)        | 0           |
| conv3 | its pool2 maps, 13 x 13 x 128                | 86,528      |
| conv4 | nothing                                      | 0           |
| conv5 | nothing                                      | 0           |
| fc6   | its pool5 maps, 6 x 6 x 128                  | 18,432      |
| fc7   | its 2048 fc6 outputs                         | 8,192       |
| fc8   | its 2048 fc7 outputs, then its 500 logits    | 10,192      |

The backward pass sends the same amounts back (the transpose of an all-gather is a
reduce-scatter). `python -m alexnet_jax.summary` prints this table from the module's shapes.
The fc8 kernel is split rather than replicated: it is the paper's layout (each GPU computed half
the logits), it halves fc8's weights and optimiser state per device, and gathering 500 logits
costs less than gathering nothing but recomputing all of fc8 on both devices.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
MODEL = "model"

log = logging.getLogger("alexnet_jax")


def mesh_shape(data: int, model: int, num_devices: int) -> tuple[int, int]:
    """The (data, model) shape for `num_devices` devices; `data=-1` takes all that `model` leaves."""
    if model not in (1, 2):
        raise ValueError(f"parallel.model must be 1 or 2 (the paper has two towers), got {model}")
    if num_devices % model:
        raise ValueError(f"parallel.model={model} does not divide the {num_devices} devices")
    if data == -1:
        data = num_devices // model
    if data < 1 or data * model > num_devices:
        raise ValueError(
            f"a mesh of parallel.data={data} x parallel.model={model} = {data * model} devices does not fit "
            f"the {num_devices} devices available"
        )
    return data, model


def make_mesh(data: int, model: int, devices: list | None = None) -> Mesh:
    """A ('data', 'model') mesh; the two towers of a replica are neighbouring devices (same host)."""
    devices = jax.devices() if devices is None else devices
    data, model = mesh_shape(data, model, len(devices))
    return Mesh(np.asarray(devices[: data * model]).reshape(data, model), (DATA, MODEL))


def param_specs(params: Any) -> Any:
    """PartitionSpecs of the canonical tree: every leaf split on its last (output) axis."""
    return jax.tree.map(lambda leaf: P(*([None] * (len(leaf.shape) - 1)), MODEL), params)


def batch_spec() -> P:
    """Batches are split over `data` and replicated across the towers of a replica."""
    return P(DATA)


def shard(tree: Any, mesh: Mesh, specs: Any) -> Any:
    """`tree` placed on `mesh` according to `specs` (a matching tree of PartitionSpecs)."""
    return jax.tree.map(lambda leaf, spec: jax.device_put(leaf, NamedSharding(mesh, spec)), tree, specs)


def check_batch(global_batch: int, mesh: Mesh, what: str = "optim.batch_size") -> None:
    """A clear error when the batch cannot be split evenly over the data axis and the hosts."""
    data = mesh.shape[DATA]
    if global_batch % data:
        raise ValueError(
            f"{what}={global_batch} is not divisible by the {data} data-parallel replicas "
            f"(mesh {dict(mesh.shape)}); use a multiple of {data}"
        )
    if global_batch % jax.process_count():
        raise ValueError(f"{what}={global_batch} is not divisible by the {jax.process_count()} hosts")


def host_batch_to_global(batch: dict, mesh: Mesh) -> dict:
    """This host's slice of a batch (NumPy) -> global arrays split over `data`."""
    sharding = NamedSharding(mesh, batch_spec())
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def prefetch_to_device(batches: Iterator[dict], mesh: Mesh, size: int = 2) -> Iterator[dict]:
    """Global batches from host batches, `size` of them already on their way to the devices.

    Transfers are asynchronous: while the step on batch k runs, batches k+1.. are copied, so the
    accelerator does not wait for the host-to-device copy.
    """
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(host_batch_to_global(batch, mesh))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def bytes_per_device(tree: Any) -> dict:
    """Bytes of `tree` held by each device, summed over its leaves' shards."""
    totals: dict = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        for shard_ in leaf.addressable_shards:
            totals[shard_.device] = totals.get(shard_.device, 0) + shard_.data.nbytes
    return totals


def initialize_distributed(enabled: bool) -> None:
    """Joins a multi-host run when asked to (config `parallel.distributed`).

    `jax.distributed.initialize()` finds the coordinator itself under SLURM and on TPU pods; set
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID elsewhere (launch/ does).
    """
    if not enabled:
        return
    kwargs = {}
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        kwargs = dict(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count())
