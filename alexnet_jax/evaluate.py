"""Top-1 and top-5 error over a whole evaluation split, centre crop or the paper's 10 crops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import datasets, input_pipeline, parallel


def evaluate(eval_step: Callable, params: Any, data: datasets.Data, mesh, *, batch_size: int) -> dict:
    """Error rates over every example of `data.eval` (no example dropped: the last batch is masked).

    `eval_step` (steps.make_eval_step) decides the crops. Returns top1_error, top5_error, loss,
    count (examples evaluated) and unreadable (files of the split that could not be decoded;
    count + unreadable is the split's size).
    """
    totals = None
    for batch in input_pipeline.eval_batches(data, global_batch=batch_size):
        sums = eval_step(params, parallel.host_batch_to_global(batch, mesh))
        # Added up on the device: the host does not wait for one batch before sending the next.
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = {key: float(np.asarray(value)) for key, value in totals.items()}
    count = int(totals["count"])
    if count == 0 or count > data.eval.size:
        raise RuntimeError(f"evaluation counted {count} examples in a split of {data.eval.size}")
    return {
        "top1_error": 1.0 - totals["top1_correct"] / count,
        "top5_error": 1.0 - totals["top5_correct"] / count,
        "loss": totals["loss_sum"] / count,
        "count": count,
        "unreadable": data.eval.size - count,
    }
