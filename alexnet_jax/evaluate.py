"""Top-1 and top-5 error over a whole evaluation split, centre crop or the paper's 10 crops."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from alexnet_jax import input_pipeline, parallel


def evaluate(
    eval_step: Callable,
    params: Any,
    data: input_pipeline.Data,
    config,
    mesh,
    *,
    ten_crop: bool,
) -> dict:
    """Error rates over every example of `data.eval` (no example dropped: the last batch is masked).

    Returns top1_error, top5_error, loss, count (examples evaluated) and unreadable (files of the
    split that could not be decoded; count + unreadable is the split's size).
    """
    totals = {"top1_correct": 0.0, "top5_correct": 0.0, "loss_sum": 0.0, "count": 0.0}
    batches = input_pipeline.eval_batches(
        data, config.data, crop=config.model.image_size, global_batch=config.eval.batch_size, ten_crop=ten_crop
    )
    for batch in batches:
        sums = eval_step(params, parallel.host_batch_to_global(batch, mesh))
        for key, value in sums.items():
            totals[key] += float(np.asarray(value))
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
