"""One process of a multi-host run on this machine: a training step over jax.distributed.

    python tests/distributed_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz

Each process has 2 CPU devices; together they form a (data=NUM_PROCESSES, model=2) mesh, each
process feeding its own slice of the global batch. Process 0 writes the new parameters.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alexnet_jax import model as model_lib  # noqa: E402
from alexnet_jax import optim, parallel, steps  # noqa: E402
from tests.multihost_case import SIZE, make_batch  # noqa: E402


def main(process_id: int, num_processes: int, port: int, out: str) -> None:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id, initialization_timeout=120)
    net = model_lib.AlexNet(num_classes=10)
    optimizer = optim.paper_sgd()
    mesh = parallel.make_mesh(num_processes, 2)
    state = steps.create_train_state(net, optimizer, mesh, jax.random.key(0), SIZE, 0.01)
    batch = make_batch()
    local = len(batch["labels"]) // num_processes
    mine = {k: v[process_id * local : (process_id + 1) * local] for k, v in batch.items()}
    state, metrics = steps.make_train_step(net, optimizer, mesh)(
        state, parallel.host_batch_to_global(mine, mesh), jax.random.key(3)
    )
    params = multihost_utils.process_allgather(state.params, tiled=True)
    if process_id == 0:
        flat = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
        np.savez(out, loss=float(metrics["loss"]), **flat)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
