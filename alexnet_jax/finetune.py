"""Fine-tuning: a run that starts from another network's weights instead of the config's initialisation.

    --config.train.init_from=PATH   a weights file (.npz; convert .npy/.pth once with alexnet_jax.weights),
                                    a training workdir (its best checkpoint), or a checkpoint directory
                                    (<workdir>/best, <workdir>/checkpoints, or one step's folder in them)
    --config.train.reinit=fc8       layers initialised as the config says although their shape matches
    --config.train.freeze=conv1,conv2   layers never updated: no update, no momentum, no weight decay

Every layer whose kernel and bias have this network's shapes is loaded, in this network's dropout
convention (`networks.convert_dropout`); the others (fc8 for another number of classes, any layer in
`train.reinit`) keep the config's initialisation, and one log line says which is which. Only a fresh
run starts this way: a resumed run continues from its own checkpoint (train.py calls `start_from`
only where there is none). The source must have been trained on the same kind of input
(`data.normalisation`); a source with another is refused, since its features would see other numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np

from alexnet_jax import loading, networks, parallel, workdir

log = logging.getLogger("alexnet_jax")


def layer_names(spec: str, model, field: str) -> list[str]:
    """The layers named in a comma-separated config field, each checked to be one of `model.LAYERS`."""
    names = [name.strip() for name in str(spec or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in model.LAYERS]
    if unknown:
        raise ValueError(
            f"{field}={spec!r}: no layer {', '.join(unknown)}; the network's are {', '.join(model.LAYERS)}"
        )
    return names


def _checkpoint_source(path: str) -> tuple[str, str, int | None] | None:
    """(workdir, "best" | "checkpoints", step or None) of a workdir or a checkpoint directory, else None."""
    path = os.path.abspath(path.rstrip("/"))
    is_run = lambda directory: os.path.isfile(os.path.join(directory, workdir.CONFIG_FILE))  # noqa: E731
    if is_run(path):
        return path, "best", None
    parent, name = os.path.dirname(path), os.path.basename(path)
    if name in ("best", "checkpoints") and is_run(parent):
        return parent, name, None
    if name.isdigit() and os.path.basename(parent) in ("best", "checkpoints") and is_run(os.path.dirname(parent)):
        return os.path.dirname(parent), os.path.basename(parent), int(name)
    return None


def source_network(path: str) -> loading.Network:
    """The network `train.init_from` names, with its own config and parameters."""
    if os.path.isdir(path):
        found = _checkpoint_source(path)
        if found is None:
            raise FileNotFoundError(
                f"train.init_from={path} is a directory but neither a workdir nor a checkpoint folder"
            )
        run, kind, step = found
        network = loading.load_network(workdir=run)
        if (kind, step) != ("best", None):
            params, _ = loading.restore_params(run, network.config, kind, step)
            network = dataclasses.replace(network, params=params, path=path, origin=f"checkpoint {path}")
        return network
    if os.path.splitext(path)[1].lower() in (".npy", ".pth", ".pt"):
        raise ValueError(
            f"train.init_from={path} is a pickle (.npy/.pth), which a training run does not load: convert it once "
            f"with `python -m alexnet_jax.weights --allow_pickle {path} {os.path.splitext(path)[0]}.npz` and start "
            "from that"
        )
    return loading.load_network(weights=path)


def initial_params(config, model, fresh: dict) -> tuple[dict, str]:
    """`fresh` (the config's initialisation) with every layer of `config.train.init_from` whose shapes
    fit loaded, except those in `config.train.reinit`; and the log line that says which."""
    source = source_network(config.train.init_from)
    if source.config.data.normalisation != config.data.normalisation:
        raise ValueError(
            f"train.init_from={config.train.init_from} was trained on data.normalisation="
            f"{source.config.data.normalisation!r} input; this run feeds {config.data.normalisation!r}: set "
            f"--config.data.normalisation={source.config.data.normalisation}"
        )
    own = source.config.model
    loaded_from = networks.convert_dropout(dict(source.params), model, own.dropout_scaling, own.dropout_rate)
    reinit = set(layer_names(config.train.get("reinit", ""), model, "train.reinit"))
    params, loaded, kept = dict(fresh), [], []
    for layer in model.LAYERS:
        theirs = loaded_from.get(layer)
        shapes = {leaf: np.shape(theirs[leaf]) for leaf in ("kernel", "bias")} if theirs is not None else None
        ours = {leaf: np.shape(fresh[layer][leaf]) for leaf in ("kernel", "bias")}
        if layer in reinit:
            kept.append(f"{layer} (train.reinit)")
        elif shapes != ours:
            there = f"{shapes['kernel']} in the source" if shapes else "not in the source"
            kept.append(f"{layer} (kernel {ours['kernel']} here, {there})")
        else:
            params[layer] = {leaf: np.asarray(theirs[leaf], np.float32) for leaf in ("kernel", "bias")}
            loaded.append(layer)
    count = sum(networks.count_params(params[layer]) for layer in loaded)
    line = (
        f"init_from {config.train.init_from}: loaded {', '.join(loaded) or 'no layer'} ({count:,} parameters); "
        f"initialised as the config says: {', '.join(kept) or 'none'}"
    )
    return params, line


def start_from(setup, state):
    """The fresh training state of `setup` with `config.train.init_from`'s layers loaded (one log line)."""
    config = setup.config
    fresh = jax.tree.map(np.asarray, jax.device_get(state.params))
    params, line = initial_params(config, setup.model, fresh)
    frozen = layer_names(config.train.get("freeze", ""), setup.model, "train.freeze")
    log.info("%s%s", line, f"; frozen: {', '.join(frozen)}" if frozen else "")
    return state.replace(params=parallel.shard(params, setup.mesh, parallel.param_specs(params)))
