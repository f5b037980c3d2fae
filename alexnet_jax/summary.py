"""The layer table of any registered network: shapes, values, parameters, multiply-adds, tower traffic.

    python -m alexnet_jax.summary [--config=configs/paper.py] [--config.model.variant=one_tower ...] [--json]
    python -m alexnet_jax.summary --weights=alexnet.pth --allow_pickle     # the network a weights file holds
    python -m alexnet_jax.summary --workdir=runs/default

Shapes and parameter counts come from the Flax module itself (`jax.eval_shape`, nothing is
allocated), for whatever network the config names; where the network's registry entry knows
published figures (the paper's Figure 2 for AlexNet, the CS231n notes' table for VGG-16), they are
printed beside the module's own and every difference is flagged.
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

from alexnet_jax import loading, networks


def _shapes(model, image_size: int) -> tuple[dict, list[tuple[str, tuple]]]:
    """Parameter shapes, and every sown activation's shape (per image) in the order the network
    computes them, allocating nothing."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    order = []

    def forward(x):
        params = networks.initialiser(model, image_size)(jax.random.key(0))
        state = model.apply({"params": params}, x, mutable=["intermediates"])[1]
        order.extend(state["intermediates"])  # sown in the order the layers ran
        return params, state

    params, state = jax.eval_shape(forward, images)
    return params, [(name, tuple(state["intermediates"][name][0].shape[1:])) for name in order]


def layer_table(model, image_size: int, reference: dict | None = None) -> dict:
    """Per-row figures of `model` for one `image_size` x `image_size` image.

    Rows: the input, then every activation the network sows (`<layer>_out` of each parameter layer,
    named by the layer, and the pooled maps), in order. Each row has `output_shape`, `values` (its
    activations; `neurons` for layers), `params`, `weights` (params without biases) and `macs`.
    With two towers, `sent_bytes` is what each tower sends the other per image in the forward pass
    when the towers are on two devices: the half of a layer's input it holds, for layers that read
    both towers' maps (the backward pass returns as much); the last layer's halves are gathered too.

    `reference` (an `Entry.reference` result): `{"source", "columns": {column: {row: value}},
    "totals": {column: value}, "notes": {(row or "total", column): text}}`; its values are added to
    the rows as `<source>_<column>`.
    """
    params, acts = _shapes(model, image_size)
    itemsize = jnp.dtype(model.dtype).itemsize
    towers = model.towers
    rows = [dict(name="input", output_shape=[image_size, image_size, 3], values=image_size * image_size * 3)]
    rows[0].update(params=0, weights=0, macs=0)
    previous = rows[0]
    for sown, shape in acts:
        layer = sown[: -len("_out")] if sown.endswith("_out") and sown[: -len("_out")] in params else None
        row = dict(name=layer or sown, output_shape=list(shape), values=math.prod(shape), params=0, weights=0, macs=0)
        if layer:
            kernel = params[layer]["kernel"].shape
            fan_in = math.prod(kernel[:-1])
            row.update(
                params=networks.count_params(params[layer]), weights=math.prod(kernel), macs=row["values"] * fan_in
            )
            if len(kernel) == 2:  # a dense layer: one multiply-add per weight
                row["macs"] = math.prod(kernel)
            reads_both = previous is not rows[0] and kernel[-2] == (
                previous["output_shape"][-1] if len(kernel) == 4 else previous["values"]
            )
            if towers > 1:
                row["sent_bytes"] = previous["values"] * itemsize // towers if reads_both else 0
        rows.append(row)
        previous = row
    layers = [row for row in rows if row["name"] in params]
    if towers > 1:
        layers[-1]["sent_bytes"] += model.num_classes // towers * 4  # the float32 logits' halves are gathered
    table = dict(
        network=type(model).__name__,
        variant=getattr(model, "variant", None),
        towers=towers,
        image_size=image_size,
        layers=rows,
        total_params=sum(r["params"] for r in rows),
        total_macs=sum(r["macs"] for r in rows),
        total_neurons=sum(r["values"] for r in layers),
        total_values=sum(r["values"] for r in rows),
        forward_bytes=sum(r["values"] for r in rows) * itemsize,
        total_sent_bytes=sum(r.get("sent_bytes", 0) for r in rows),
    )
    if reference:
        _compare(table, reference)
    return table


def _compare(table: dict, reference: dict) -> None:
    """Adds the reference's figures to the rows (`<source>_<column>`) and the table (`<source>_total_<column>`),
    and lists every difference, with the reference's note on it, as `differences`."""
    source, notes, differences = reference["source"], reference.get("notes", {}), []
    for column, values in reference["columns"].items():
        for row in table["layers"]:
            if row["name"] in values:
                row[f"{source}_{column}"] = values[row["name"]]
                if row[_column_key(column)] != values[row["name"]]:
                    differences.append((row["name"], column, row[_column_key(column)], values[row["name"]]))
    for column, value in reference.get("totals", {}).items():
        table[f"{source}_total_{column}"] = value
        if table[f"total_{column}"] != value:
            differences.append(("total", column, table[f"total_{column}"], value))
    table["reference"] = source
    table["differences"] = [
        dict(row=row, column=column, ours=ours, reference=theirs, note=notes.get((row, column)))
        for row, column, ours, theirs in differences
    ]


def _column_key(column: str) -> str:
    return "values" if column == "neurons" else column


def table_for(config) -> dict:
    """The table of the network `config.model` describes, with its registry entry's published figures."""
    model = networks.from_config(config.model)
    entry = networks.entry(config.model.name)
    reference = entry.reference(model, config.model.image_size) if entry.reference else None
    return layer_table(model, config.model.image_size, reference)


def _text(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, list) else f"{value:,}"


def format_table(table: dict) -> str:
    """The table as text, the reference's columns beside the module's, each difference flagged (*)
    and listed below with the reference's explanation where it has one."""
    source = table.get("reference")
    ref_columns = [
        key for key in dict.fromkeys(k for r in table["layers"] for k in r) if source and key.startswith(source + "_")
    ]
    two_towers = table["towers"] > 1
    header = f"{'layer':8} {'output':>13} {'values':>11} {'params':>12} {'MACs/img':>15}"
    header += f" {'sent B/img':>11}" if two_towers else ""
    header += "".join(f" {key.replace('_', ' '):>18}" for key in ref_columns)
    title = table["network"] + (f" ({table['variant']})" if table["variant"] else "")
    lines = [f"{title}, {table['image_size']}x{table['image_size']} input", header]
    for row in table["layers"]:
        line = f"{row['name']:8} {_text(row['output_shape']):>13} {row['values']:>11,} {row['params']:>12,}"
        line += f" {row['macs']:>15,}" + (f" {row.get('sent_bytes', 0):>11,}" if two_towers else "")
        for key in ref_columns:
            theirs = row.get(key)
            differs = theirs is not None and theirs != row[_column_key(key[len(source) + 1 :])]
            line += f" {'' if theirs is None else _text(theirs):>17}{'*' if differs else ' '}"
        lines.append(line)
    total = f"{'total':8} {'':>13} {table['total_values']:>11,} {table['total_params']:>12,} {table['total_macs']:>15,}"
    lines.append(total + (f" {table['total_sent_bytes']:>11,}" if two_towers else ""))
    lines.append(
        f"values: activations per image, input and pooled maps included ({table['forward_bytes'] / 1e6:.1f} MB "
        f"forward at {table['forward_bytes'] // table['total_values']} bytes each; about twice that with the "
        f"backward pass); the layers' own outputs: {table['total_neurons']:,} neurons."
    )
    if two_towers:
        lines.append(
            "sent B/img: bytes each tower sends the other per image, forward pass, with the towers on "
            "two devices (--config.parallel.model=2); the backward pass sends as much back."
        )
    for d in table.get("differences", []):
        why = f" {d['note']}" if d["note"] else " The shapes above are the module's."
        lines.append(f"* {d['row']} {d['column']}: {_text(d['ours'])} here, {source} has {_text(d['reference'])}.{why}")
    return "\n".join(line.rstrip() for line in lines)


def main(argv, source: loading.NetworkSource):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    table = table_for(source.config())
    if source.flag_values.json:
        json.dump(table, sys.stdout, indent=1)
        print()
    else:
        print(format_table(table))


def define_flags(source: loading.NetworkSource) -> None:
    flags.DEFINE_bool("json", False, "Print the table as JSON instead of text.", flag_values=source.flag_values)


def run_command_line(argv: list[str]) -> int:
    """`python -m alexnet_jax.summary ARGV` in this process; returns the exit code."""
    return loading.run_tool(define_flags, main, ["alexnet_jax.summary", *argv], default_config="paper")


if __name__ == "__main__":
    # Defined here, not on import, so that importing this module defines no flags.
    _SOURCE = loading.NetworkSource(default_config="paper")
    define_flags(_SOURCE)
    _SOURCE.run(lambda argv: main(argv, _SOURCE))
