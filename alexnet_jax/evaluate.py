"""Top-1 and top-5 error over a whole evaluation split, centre crop and the paper's 10 crops.

    python -m alexnet_jax.evaluate --weights=FILE [--allow_pickle] [--config.data.*=...]
    python -m alexnet_jax.evaluate --workdir=DIR [--config.data.eval_split=...]

`evaluate` is the library function the training loop calls. The command evaluates a weights file or
a workdir's best checkpoint (loading.py) on the split its config's `data.*` names, as for training:
a labelled image folder (`--config.data.source=folder --config.data.data_dir=DIR`, classes from
`DIR/<eval_split>/<class>/`, matched to the network's by name, e.g. ImageNet's WordNet ids), a
tensorflow-datasets split (`source=tfds`, e.g. imagenet2012's validation), or the embedded digits.
Both crops come from one reading of the data; a progress line with the ETA goes to stderr, then a
table with the figures published for the weights (and the paper's for an ImageNet AlexNet) beside
the measured ones, and the result as JSON on stdout. Unreadable files are counted, not evaluated.
"""

from __future__ import annotations

from alexnet_jax import cli  # first: quiets TensorFlow's start-up before anything imports it

# isort: split
import json
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from alexnet_jax import datasets, input_pipeline, loading, parallel, progress, steps


def _errors(totals: dict, size: int) -> dict:
    count = int(totals["count"])
    if count == 0:  # every file unreadable: no error rate exists (one line and exit code 2 on the command line)
        raise ValueError(f"none of the {size} examples of the evaluation split could be read: check the data")
    if count > size:
        raise RuntimeError(f"evaluation counted {count} examples in a split of {size}")
    return {
        "top1_error": 1.0 - totals["top1_correct"] / count,
        "top5_error": 1.0 - totals["top5_correct"] / count,
        "loss": totals["loss_sum"] / count,
        "count": count,
        "unreadable": size - count,
    }


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
    return _errors({key: float(np.asarray(value)) for key, value in totals.items()}, data.eval.size)


def evaluation_data(network: loading.Network, data_config) -> datasets.Data:
    """The split `data_config` names, labelled as the network numbers its classes."""
    if data_config.source in ("folder", "tfds"):
        source, unreadable = datasets.labelled_split(data_config, network.stored_class_names)
        return datasets.Data(
            source, source, len(network.class_names), tuple(network.stored_class_names), None, None, None, unreadable
        )
    data = datasets.create_data(data_config, network.config.model.num_classes)
    if list(data.class_names) != list(network.stored_class_names):
        raise ValueError(
            f"the data's classes ({', '.join(data.class_names[:6])}...) are not the network's "
            f"({', '.join(network.stored_class_names[:6])}...) in label order; set --config.data.classes"
        )
    return data


def evaluate_network(network: loading.Network, *, batch_size: int | None = None, report: bool = True) -> dict:
    """The network's errors on its config's evaluation split, centre crop and 10 crops from one
    reading of the data, on every local device (data-parallel); `report`: a progress line on stderr."""
    config = network.config
    data = evaluation_data(network, config.data)
    mesh = parallel.make_mesh(-1, 1)
    replicas = mesh.shape[parallel.DATA]
    batch = -(-(batch_size or config.eval.batch_size) // replicas) * replicas
    crop = config.model.image_size
    evaluators = {
        crops: steps.make_eval_step(network.model, mesh, network.normalisation, crop, crops == "ten_crop")
        for crops in ("centre", "ten_crop")
    }
    # The parameters on this mesh (a workdir's come restored onto one device).
    params = parallel.shard(jax.device_get(network.params), mesh, parallel.param_specs(network.params))
    line = progress.Progress(f"evaluating {data.eval.size:,} images (centre and 10 crops)", data.eval.size)
    totals, done = {crops: None for crops in evaluators}, 0
    for host_batch in input_pipeline.eval_batches(data, global_batch=batch):
        images = parallel.host_batch_to_global(host_batch, mesh)
        for crops, step in evaluators.items():
            sums = step(params, images)
            totals[crops] = sums if totals[crops] is None else jax.tree.map(jnp.add, totals[crops], sums)
        done += len(host_batch["labels"]) * jax.process_count()
        if report:
            jax.block_until_ready(totals["ten_crop"])  # the rate is the device's, not the dispatch's
            line.update(min(done, data.eval.size))
    if report:
        line.update(data.eval.size, force=True)
    result = {
        crops: _errors({k: float(np.asarray(v)) for k, v in t.items()}, data.eval.size) for crops, t in totals.items()
    }
    count, unreadable = result["centre"]["count"], result["centre"]["unreadable"]
    for errors in result.values():
        del errors["count"], errors["unreadable"]
    return {
        "network": network.describe(),
        "data": _describe_data(config.data),
        "count": count,
        "unreadable": unreadable,
        **result,
        "published": network.published,
    }


def _describe_data(data_config) -> str:
    if data_config.source == "folder":
        return f"folder {data_config.data_dir} ({data_config.eval_split})"
    if data_config.source == "records":
        return f"records {data_config.data_dir} (val)"
    if data_config.source == "tfds":
        return f"tfds {data_config.name} ({data_config.eval_split})"
    return f"{data_config.source}" + (f" classes {data_config.classes}" if data_config.get("classes") else "")


def format_result(result: dict) -> str:
    """The measured errors with the published figures beside them."""
    lines = [
        f"{result['network']}",
        f"{result['data']}: {result['count']:,} images evaluated, {result['unreadable']:,} unreadable",
        f"{'':34} {'top-1 error':>12} {'top-5 error':>12}",
    ]
    for crops, label in (("centre", "measured, centre crop"), ("ten_crop", "measured, 10 crops")):
        lines.append(
            f"{label:34} {100 * result[crops]['top1_error']:11.2f}% {100 * result[crops]['top5_error']:11.2f}%"
        )
    for figure in result["published"]:
        label = f"published, {'centre crop' if figure['crops'] == 'centre' else '10 crops'}"
        lines.append(
            f"{label:34} {100 * figure['top1_error']:11.2f}% {100 * figure['top5_error']:11.2f}%  ({figure['source']})"
        )
    return "\n".join(lines)


def main(argv, source: loading.NetworkSource):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    network = source.network()
    result = evaluate_network(network, batch_size=source.flag_values.batch or None)
    print(format_result(result), file=sys.stderr)
    print(json.dumps(result, indent=1))


def define_flags(source: loading.NetworkSource) -> None:
    flags.DEFINE_integer(
        "batch", 0, "Images per batch (0: the config's eval.batch_size).", flag_values=source.flag_values
    )


def run_command_line(argv: list[str]) -> int:
    """`python -m alexnet_jax.evaluate ARGV` in this process; returns the exit code."""
    return loading.run_tool(define_flags, main, ["alexnet_jax.evaluate", *argv])


if __name__ == "__main__":
    _SOURCE = loading.NetworkSource()
    define_flags(_SOURCE)
    _SOURCE.run(lambda argv: main(argv, _SOURCE))
