"""The layer table: shapes, neurons, parameters, multiply-adds and cross-tower traffic per layer.

    python -m alexnet_jax.summary --config=configs/paper.py [--json]
    python -m alexnet_jax.summary --config=configs/vgg16.py [--json]   # with activation memory

Shapes and parameter counts come from the Flax module itself (`jax.eval_shape`, nothing is
allocated); the paper's own figures are printed beside them, with its conv1 slip flagged.
"""

from __future__ import annotations

from alexnet_jax import cli  # first: quiets TensorFlow's start-up before anything imports it

# isort: split
import json
import math
import sys

import jax
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags

from alexnet_jax import networks
from alexnet_jax.networks import alexnet, vgg

# Figure 2's neuron counts, and the parameters its layer shapes imply, for the 224-input paper network.
PAPER_NEURONS = {
    "conv1": 253_440,
    "conv2": 186_624,
    "conv3": 64_896,
    "conv4": 64_896,
    "conv5": 43_264,
    "fc6": 4096,
    "fc7": 4096,
    "fc8": 1000,
}
PAPER_PARAMS = {
    "conv1": 34_944,
    "conv2": 307_456,
    "conv3": 885_120,
    "conv4": 663_936,
    "conv5": 442_624,
    "fc6": 37_752_832,
    "fc7": 16_781_312,
    "fc8": 4_097_000,
}
PAPER_TOTAL_PARAMS = 60_965_224


def _shapes(model, image_size: int) -> tuple[dict, dict]:
    """Parameter shapes and every sown activation's shape (per image), allocating nothing."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)

    def forward(x):
        params = networks.init_params(model, jax.random.key(0), image_size)
        return params, model.apply({"params": params}, x, mutable=["intermediates"])[1]

    params, state = jax.eval_shape(forward, images)
    return params, {name: value[0].shape[1:] for name, value in state["intermediates"].items()}


def layer_table(model: alexnet.AlexNet, image_size: int) -> dict:
    """Per-layer figures of `model` for one `image_size` x `image_size` image.

    `sent_bytes` is what each tower sends the other per image in the forward pass when the towers
    are on two devices (the backward pass returns the same amount as gradients); layers that use
    only their own tower's maps send nothing.
    """
    params, acts = _shapes(model, image_size)
    itemsize = jnp.dtype(model.dtype).itemsize
    arch = alexnet.ARCHITECTURES[model.variant]
    tower_input = {conv.name: conv.tower_input for conv in arch.convs}
    # What each layer reads: the previous layer's pooled (or raw) output.
    inputs = {"conv1": (image_size, image_size, 3)}
    previous = "conv1"
    for name in alexnet.LAYER_NAMES[1:]:
        inputs[name] = acts.get("pool" + previous[-1], acts[f"{previous}_out"])
        previous = name

    rows = []
    for name in alexnet.LAYER_NAMES:
        kernel = params[name]["kernel"].shape
        out_shape = acts[f"{name}_out"]
        n_params = networks.count_params(params[name])
        if len(kernel) == 4:
            macs = math.prod(out_shape) * kernel[0] * kernel[1] * kernel[2]
        else:
            macs = kernel[0] * kernel[1]
        cross = tower_input.get(name, alexnet.BOTH_TOWERS) == alexnet.BOTH_TOWERS
        sent = math.prod(inputs[name]) * itemsize // 2 if cross and arch.towers == 2 else 0
        rows.append(
            dict(
                name=name,
                output_shape=list(out_shape),
                neurons=math.prod(out_shape),
                params=n_params,
                macs=macs,
                sent_bytes=sent,
                paper_neurons=PAPER_NEURONS[name],
                paper_params=PAPER_PARAMS[name],
            )
        )
    if arch.towers == 2:
        # The towers' halves of fc8 are gathered into the full logits.
        rows[-1]["sent_bytes"] += model.num_classes // 2 * 4
    return dict(
        variant=model.variant,
        image_size=image_size,
        layers=rows,
        total_params=sum(r["params"] for r in rows),
        total_macs=sum(r["macs"] for r in rows),
        total_neurons=sum(r["neurons"] for r in rows),
        total_sent_bytes=sum(r["sent_bytes"] for r in rows),
    )


def format_table(table: dict) -> str:
    """Human-readable layer table with the paper's figures and notes on where they differ."""
    compare = table["variant"] == "paper" and table["image_size"] in (224, 227)
    header = f"{'layer':6} {'output':>13} {'neurons':>10} {'params':>11} {'MACs/img':>13} {'sent B/img':>11}"
    if compare:
        header += f" {'paper neurons':>14} {'paper params':>13}"
    lines = [f"AlexNet ({table['variant']}), {table['image_size']}x{table['image_size']} input", header]
    notes = []
    for row in table["layers"]:
        shape = "x".join(map(str, row["output_shape"]))
        line = (
            f"{row['name']:6} {shape:>13} {row['neurons']:>10,} {row['params']:>11,} "
            f"{row['macs']:>13,} {row['sent_bytes']:>11,}"
        )
        if compare:
            flag = " " if row["neurons"] == row["paper_neurons"] else "*"
            line += f" {row['paper_neurons']:>13,}{flag} {row['paper_params']:>13,}"
            if flag == "*":
                notes.append(
                    f"* {row['name']}: the paper prints {row['paper_neurons']:,} neurons; "
                    f"{shape} = {row['neurons']:,}. "
                    + (
                        "253,440 = 55 x 48 x 96, a slip in Figure 2."
                        if row["name"] == "conv1"
                        else "the shapes above are the module's."
                    )
                )
            if row["params"] != row["paper_params"]:
                notes.append(
                    f"! {row['name']}: {row['params']:,} parameters, the paper's table has {row['paper_params']:,}"
                )
        lines.append(line)
    total = (
        f"{'total':6} {'':>13} {table['total_neurons']:>10,} {table['total_params']:>11,} "
        f"{table['total_macs']:>13,} {table['total_sent_bytes']:>11,}"
    )
    if compare:
        total += f" {'':>14} {PAPER_TOTAL_PARAMS:>13,}"
    lines.append(total)
    lines.append(
        "sent B/img: bytes each tower sends the other per image, forward pass, with the towers on "
        "two devices (--config.parallel.model=2); the backward pass sends as much back."
    )
    return "\n".join(lines + notes)


def vgg_table(model, image_size: int) -> dict:
    """Per-layer output shape, activation values (memory), parameters and MACs of VGG-16.

    Memory counts every layer's output once, the input included, as the VGG-16 table of the CS231n
    course notes (cs231n.github.io/convolutional-networks) does; bytes are for
    the model's compute dtype, forward pass only (the backward pass roughly doubles it).
    """
    params, acts = _shapes(model, image_size)
    rows = [
        dict(
            name="input",
            output_shape=[image_size, image_size, 3],
            values=image_size * image_size * 3,
            params=0,
            weights=0,
            macs=0,
        )
    ]
    for name in vgg.LAYER_NAMES:
        kernel = params[name]["kernel"].shape
        out = acts[f"{name}_out"]
        macs = math.prod(out) * math.prod(kernel[:3]) if len(kernel) == 4 else kernel[0] * kernel[1]
        rows.append(
            dict(
                name=name,
                output_shape=list(out),
                values=math.prod(out),
                params=networks.count_params(params[name]),
                weights=math.prod(kernel),
                macs=macs,
            )
        )
        if name.endswith(("1_2", "2_2", "3_3", "4_3", "5_3")):
            pool = f"pool{name[4]}"
            rows.append(
                dict(
                    name=pool, output_shape=list(acts[pool]), values=math.prod(acts[pool]), params=0, weights=0, macs=0
                )
            )
    itemsize = jnp.dtype(model.dtype).itemsize
    total_values = sum(r["values"] for r in rows)
    return dict(
        model="vgg16",
        image_size=image_size,
        layers=rows,
        total_params=sum(r["params"] for r in rows),
        total_macs=sum(r["macs"] for r in rows),
        total_values=total_values,
        forward_bytes=total_values * itemsize,
    )


def format_vgg_table(table: dict) -> str:
    """The VGG-16 table in the CS231n notes' terms, with their total-memory slip pointed out."""
    lines = [
        f"VGG-16 (configuration D), {table['image_size']}x{table['image_size']} input",
        f"{'layer':8} {'output':>13} {'memory (values)':>16} {'weights':>12} {'params (w+b)':>13} {'MACs/img':>15}",
    ]
    for r in table["layers"]:
        shape = "x".join(map(str, r["output_shape"]))
        lines.append(
            f"{r['name']:8} {shape:>13} {r['values']:>16,} {r['weights']:>12,} {r['params']:>13,} {r['macs']:>15,}"
        )
    totals = f"{table['total_values']:>16,} {'':>12} {table['total_params']:>13,} {table['total_macs']:>15,}"
    lines.append(f"{'total':8} {'':>13} {totals}")
    lines.append(
        f"forward activations: {table['total_values']:,} values = {table['forward_bytes'] / 1e6:.1f} MB per image "
        "(about twice that with the backward pass)."
    )
    if table["image_size"] == 224:
        total, megabytes = table["total_values"] / 1e6, table["forward_bytes"] / 1e6
        lines.append(
            f"* the CS231n notes print a total of about 24M values (96 MB); their own per-layer figures, as above, "
            f"add up to {total:.1f}M ({megabytes:.0f} MB): an arithmetic slip in the notes."
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = cli.config_value(_CONFIG)
    model = networks.from_config(config.model)
    if config.model.name == "vgg16":
        table = vgg_table(model, config.model.image_size)
        text = format_vgg_table(table)
    else:
        table = layer_table(model, config.model.image_size)
        text = format_table(table)
    if flags.FLAGS.json:
        json.dump(table, sys.stdout, indent=1)
        print()
    else:
        print(text)


if __name__ == "__main__":
    # Defined here, not on import, so that importing this module defines no flags.
    _CONFIG = config_flags.DEFINE_config_file("config", "configs/paper.py", "Config file (configs/*.py).")
    flags.DEFINE_bool("json", False, "Print the table as JSON instead of text.")
    cli.run(main)
