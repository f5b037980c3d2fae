"""Where a tool's network comes from, and the flags that say so: one module for predict, evaluate,
visualize, weights and summary.

    --workdir=DIR        a training run: its best checkpoint, its config, statistics and class names
    --weights=FILE       a weights file (weights.py): the network, input and class names it carries,
                         or that it is recognised by (pretrained.py: torchvision's, Caffe's, ours)
    --config=FILE        a config file (configs/*.py[:ARG]) or a resolved config (config.json)
    --config.FIELD=VALUE changes one field, exactly as on `python -m alexnet_jax.main`
    --allow_pickle       lets .npy and .pth files be read (pickles: only files you trust)

The source gives the defaults: a workdir's own config, or the config a weights file carries or is
recognised by. `--config` replaces them, and `--config.FIELD=VALUE` overrides change either
(ml_collections' config_flags: typed, an unknown field is one line and exit code 2). Weights meet
the configured network with every shape checked, and in its dropout convention
(`networks.convert_dropout`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import (
    cli,
    config_files,
    datasets,
    networks,
    optim,
    parallel,
    preprocess,
    pretrained,
    statistics,
    steps,
)
from alexnet_jax import weights as weights_lib
from alexnet_jax import workdir as workdir_lib

# The flags NetworkSource defines (--workdir, --weights, --allow_pickle) belong to the tool that makes
# it: `--help` lists them with the tool's own.
flags.disclaim_key_flags()


@dataclasses.dataclass(frozen=True)
class Network:
    """A network ready to use: module, parameters (in the config's dropout convention), config, input
    normalisation, class names, and what it is (`origin`, the publishers' figures in `published`)."""

    model: Any
    params: Any
    config: ml_collections.ConfigDict
    normalisation: statistics.Normalisation
    class_names: list[str]  # readable: ImageNet WordNet ids replaced by their lemmas
    stored_class_names: list[str]  # as the source holds them (WordNet ids stay ids)
    statistics: dict  # mean, pca_scale, pca_axes where known (saved with an .npz)
    path: str  # the workdir or weights file
    origin: str  # what it is, in words
    published: list[dict] = dataclasses.field(default_factory=list)

    def resized(self, image: np.ndarray) -> np.ndarray:
        """An RGB image as evaluation takes it: uint8, shorter side to the resize size, centre square."""
        import tensorflow as tf  # the same resize as the data pipeline (preprocess.py)

        return preprocess.resize_shorter_and_center_crop(tf.constant(image), self.config.data.resize_size).numpy()

    def describe(self) -> str:
        model = self.config.model
        variant = f" {model.variant}" if model.get("variant") else ""
        return (
            f"{self.origin}: {model.name}{variant}, {model.num_classes} classes, {model.image_size} x "
            f"{model.image_size} crops of {self.config.data.resize_size}, input {self.config.data.normalisation}, "
            f"dropout {model.dropout_scaling}"
        )

    def save(self, path: str, names: str = "torch") -> None:
        """Writes the weights to `path` (.npz with config, class names and statistics; .npy; .pth)."""
        weights_lib.save(
            jax.tree.map(np.asarray, self.params),
            path,
            model=self.model,
            config=self.config,
            class_names=self.stored_class_names,
            statistics=self.statistics,
            names=names,
        )


def _as_config(config) -> ml_collections.ConfigDict | None:
    """A ConfigDict as it is; a path (configs/NAME.py[:ARG] or config.json) loaded; None as None."""
    if config is None or isinstance(config, ml_collections.ConfigDict):
        return config
    if str(config).endswith(".json"):
        if not os.path.isfile(config):
            raise FileNotFoundError(f"config file {config} not found")
        return config_files.upgrade(_read_json(config))
    return cli.load_config(config)


def _read_json(path: str) -> dict:
    import json

    with open(path) as f:
        return json.load(f)


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config of the checkpoint a tool loads from a training workdir (its best, else its
    newest periodic one), in today's terms (config_files.upgrade). Each checkpoint holds the config of
    the run that wrote it; `config.json`, the config of the run's last start, is read only for
    checkpoints written before they held one."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"no workdir at {workdir}")
    checkpoints = checkpoint_lib.Checkpoints(workdir, read_only=True)
    try:
        found = checkpoints.newest_record("best") or checkpoints.newest_record("checkpoints")
    finally:
        checkpoints.close()
    saved = (found[0].get("config") if found else None) or workdir_lib.saved_config(workdir)
    if saved is None:
        raise FileNotFoundError(
            f"{os.path.join(workdir, workdir_lib.CONFIG_FILE)} not found: is {workdir} a training workdir?"
        )
    return config_files.upgrade(saved)


def source_config(workdir=None, weights=None, allow_pickle=False) -> tuple[ml_collections.ConfigDict, Any]:
    """(config, the weights file as read or None) of a workdir or a weights file."""
    if workdir:
        return workdir_config(workdir), None
    if weights:
        raw = weights_lib.read(weights, allow_pickle=allow_pickle)
        return pretrained.recognise(raw).config, raw
    raise ValueError("give --workdir=DIR (a training run) or --weights=FILE (a weights file)")


def restore_params(workdir: str, config, which: str = "best", step: int | None = None) -> tuple[Any, int]:
    """(parameters, step) of a workdir's checkpoint, on one device: `which` "best" (else the newest),
    "final" or "checkpoints" (the newest periodic one), or with `step` that step of "best" or "checkpoints".

    The stored tree is the canonical one whatever mesh trained it, so it restores onto any layout.
    """
    net = networks.from_config(config.model)
    mesh = parallel.make_mesh(1, 1)
    abstract = steps.abstract_train_state(net, optim.paper_sgd(), mesh, config.model.image_size)
    checkpoints = checkpoint_lib.Checkpoints(workdir, read_only=True)
    try:
        if step is not None:
            found = checkpoints._restore_first([(which, step)], abstract)  # one given checkpoint
            restored = found and found[:2]
        elif which == "best":
            restored = checkpoints.restore_best(abstract)
        else:
            restored = checkpoints.restore_latest(abstract)
    finally:
        checkpoints.close()
    if restored is None:
        where = os.path.join(workdir, which, str(step)) if step is not None else workdir
        raise FileNotFoundError(f"no readable checkpoint in {where}; train first: --mode=train --workdir={workdir}")
    state, _ = restored
    return state.params, int(state.step)


def input_normalisation(config, dataset_mean: np.ndarray | None) -> statistics.Normalisation:
    """`config.data.normalisation` with the data's mean image or pixel (for "mean_image")."""
    kind = config.data.normalisation
    if kind == "mean_image" and dataset_mean is None:
        dataset_mean = statistics.IMAGENET_MEAN_RGB
    if kind == "mean_image" and dataset_mean.shape not in ((3,), (config.data.resize_size, config.data.resize_size, 3)):
        raise ValueError(
            f"the mean image is {dataset_mean.shape[0]} x {dataset_mean.shape[1]}, but data.resize_size="
            f"{config.data.resize_size}: keep the resize size the network was trained with"
        )
    return statistics.normalisation(kind, dataset_mean)


def load_network(workdir=None, weights=None, config=None, allow_pickle=False, raw=None) -> Network:
    """A workdir's best checkpoint, or a weights file, with `config` (a ConfigDict or a path; default:
    the source's own) and everything the tools need (Network). `raw`: the weights file already read."""
    if workdir:
        config = _as_config(config) or workdir_config(workdir)
        model = networks.from_config(config.model)
        params, _ = restore_params(workdir, config, "best")
        mean, scale, axes = statistics.read_statistics(workdir, config.data.resize_size)
        stats = {"mean": mean, "pca_scale": scale, "pca_axes": axes}
        names = workdir_lib.class_names(workdir) or pretrained._default_names(config.model.num_classes)
        path, origin, published = workdir, f"workdir {workdir}", []
    else:
        if not weights:
            raise ValueError("give --workdir=DIR (a training run) or --weights=FILE (a weights file)")
        raw = raw or weights_lib.read(weights, allow_pickle=allow_pickle)
        recognised = pretrained.recognise(raw)
        config = _as_config(config) or recognised.config
        model = networks.from_config(config.model)
        params = weights_lib.canonical(raw, model, config.model.image_size)
        own = recognised.config.model
        params = networks.convert_dropout(params, model, own.dropout_scaling, own.dropout_rate)
        names, mean = recognised.class_names, recognised.mean
        stats = {k: np.asarray(v) for k, v in (raw.statistics or {}).items()} or (
            {"mean": mean} if mean is not None else {}
        )
        path, origin, published = weights, f"{weights} ({recognised.description})", recognised.published
    if len(names) != config.model.num_classes:
        raise ValueError(f"{len(names)} class names for model.num_classes={config.model.num_classes}")
    normalisation = input_normalisation(config, stats.get("mean"))
    readable = datasets.readable_class_names(list(names))
    return Network(model, params, config, normalisation, readable, list(names), stats, path, origin, published)


# --------------------------------------------------------------------------------- the flags


_HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml")  # absl.app's, `-?` short for --help


class _HelpAsked(Exception):
    """A help flag turned on: absl prints the usage there and exits, reading no further."""


class _HelpSwitch(flags.BooleanFlag):
    def parse(self, argument):
        super().parse(argument)
        if self.value:
            raise _HelpAsked


@dataclasses.dataclass(frozen=True)
class _EarlyFlags:
    workdir: str | None
    weights: str | None
    allow_pickle: bool
    config: str | None
    positional: list[str]
    asks_for_help: bool


def _read_early(flag_values: flags.FlagValues, argv: list[str]) -> _EarlyFlags:
    """What absl will read from `argv` (program name first) for the flags needed before the network's
    config exists, hence before its `--config.FIELD` flags do: absl's own parse of `argv`, on copies
    of the tool's flags and a plain `--config`, the help flags stopping it where absl's print the
    usage. flags.Error (or ValueError) for a line absl refuses but for its `--config.FIELD`s, which
    only the full parse can check, and for a `--config.FIELD` in two arguments whose second is one
    of these flags: whether it is FIELD's value depends on FIELD's type, known only from the source."""
    early = flags.FlagValues()
    for name in list(flag_values):
        flag = flag_values[name]
        if name == flag.name and name not in (*_HELP_FLAGS, "config"):
            early[name] = copy.deepcopy(flag)
    for name in _HELP_FLAGS:
        flags.DEFINE_flag(_HelpSwitch(name, False, "", short_name="?" if name == "help" else None), early)
    flags.DEFINE_string("config", None, "", flag_values=early)
    end = _end_of_flags(argv)
    read_first = {"workdir", "weights", "allow_pickle", "config", "flagfile", "undefok", "?", *_HELP_FLAGS}
    for override, following in zip(argv[1:end], argv[2:end]):
        name = following.lstrip("-").partition("=")[0]
        if _is_override(override) and "=" not in override and following.startswith("-"):
            if name in read_first or name.startswith("no") and name[2:] in read_first:
                raise flags.Error(f"{override} {following}: write {override}=VALUE ({following} may be its value)")
    try:
        rest = early(argv, known_only=True)
    except _HelpAsked:
        return _EarlyFlags(None, None, False, None, [], True)
    end = _end_of_flags(rest)
    unknown = [arg for arg in rest[1:end] if arg.startswith("-") and arg != "-" and not _is_override(arg)]
    if unknown:
        raise flags.UnrecognizedFlagError(unknown[0].lstrip("-").partition("=")[0], unknown[0])
    positional = [a for a in rest[1:end] if not a.startswith("-")] + rest[end + 1 :]
    return _EarlyFlags(early.workdir, early.weights, early.allow_pickle, early.config, positional, False)


def _is_override(arg: str) -> bool:
    return arg.startswith(("--config.", "-config."))


def _end_of_flags(args: list[str]) -> int:
    """Where absl stops reading flags: at the first `--`, else the end."""
    return args.index("--") if "--" in args else len(args)


class NetworkSource:
    """The flags that say where a tool's network comes from (module docstring), and what they give.

    `positional_source`: the first argument names the source instead (a weights file, or a workdir
    when it is a directory), as `python -m alexnet_jax.weights SOURCE OUT`. `default_config`: the
    shipped config used when no source is given (summary: "paper"); without one, a source is needed.
    """

    def __init__(self, *, default_config: str | None = None, positional_source: bool = False, flag_values=None):
        self.flag_values = flag_values if flag_values is not None else flags.FLAGS
        self.default_config, self.positional_source = default_config, positional_source
        self._holder, self._raw, self._network = None, None, None
        self.workdir = self.weights = self.config_spec = None
        self.allow_pickle = False
        fv = self.flag_values
        flags.DEFINE_string(
            "workdir", None, "A training workdir (best checkpoint, config, statistics).", flag_values=fv
        )
        flags.DEFINE_string("weights", None, "A weights file (.npz; .npy, .pth with --allow_pickle).", flag_values=fv)
        flags.DEFINE_bool(
            "allow_pickle", False, "Allow pickle-based weight files (.npy, .pth): only ones you trust.", flag_values=fv
        )

    def parse(self, argv: list[str]) -> list[str]:
        """absl's flag parser for app.run: finds the source, loads its config, defines `--config` with
        its overrides on it, and parses every flag; mistakes end in one line, exit code 2."""
        try:
            early = _read_early(self.flag_values, argv)
        except (flags.Error, ValueError) as error:  # ValueError: absl's for --noFLAG=VALUE
            cli.fail(str(error))
        self.workdir, self.weights, self.allow_pickle = early.workdir, early.weights, early.allow_pickle
        self.config_spec = early.config
        if early.config is not None or early.asks_for_help:
            argv = self._without_config_spec(argv)
        if self.positional_source and not (self.workdir or self.weights) and early.positional:
            source = early.positional[0]
            self.workdir, self.weights = (source, None) if os.path.isdir(source) else (None, source)
        if early.asks_for_help:  # absl lists the flags and exits: no file is read, no override applied
            argv = [arg for arg in argv if not _is_override(arg)]
        try:
            base = self._base_config()
        except (ValueError, FileNotFoundError, KeyError, ImportError, SyntaxError) as error:
            if not early.asks_for_help:
                cli.fail(str(error).strip().splitlines()[-1] if isinstance(error, SyntaxError) else str(error))
            base = ml_collections.ConfigDict()  # no source to give --config its fields: the other flags
        try:  # config_flags applies the overrides as it defines the flag, and again as it parses
            self._holder = config_flags.DEFINE_config_dict(
                "config",
                base,
                "The network's config; --config.FIELD=VALUE overrides.",
                flag_values=self.flag_values,
                lock_config=True,
                sys_argv=argv,
            )
            rest = self.flag_values(argv)
        except flags.Error as error:
            cli.fail(str(error))
        except (AttributeError, KeyError) as error:  # an override of a field that does not exist
            cli.fail(cli.unknown_override(base, argv) or str(error))
        read = self.flag_values
        if (read.workdir, read.weights, read.allow_pickle) != (early.workdir, early.weights, early.allow_pickle):
            cli.fail(
                "--workdir, --weights or --allow_pickle read differently once the config's fields are known: "
                "write each --config.FIELD override as --config.FIELD=VALUE"
            )
        return rest

    @staticmethod
    def _without_config_spec(argv: list[str]) -> list[str]:
        """`argv` without its `--config=FILE` (or `--config FILE`) before any `--`: the full parse
        defines `--config` as the config itself, FILE's fields with the overrides on them."""
        end = _end_of_flags(argv)
        kept, skip = [], False
        for i, arg in enumerate(argv[:end]):
            if skip:
                skip = False
            elif arg in ("--config", "-config") and i + 1 < end:
                skip = True
            elif not arg.startswith(("--config=", "-config=")):
                kept.append(arg)
        return kept + argv[end:]

    def _base_config(self) -> ml_collections.ConfigDict:
        if self.workdir and self.weights:
            raise ValueError("give --workdir or --weights, not both")
        if self.config_spec and not os.path.isfile(self.config_spec.split(":", 1)[0]):
            raise FileNotFoundError(f"config file {self.config_spec.split(':', 1)[0]} not found")
        if self.workdir or self.weights:
            config, self._raw = source_config(self.workdir, self.weights, self.allow_pickle)
        elif self.default_config:
            config = config_files.shipped(self.default_config)
        else:
            raise ValueError("give --workdir=DIR (a training run) or --weights=FILE (a weights file)")
        return _as_config(self.config_spec) if self.config_spec else config

    def config(self) -> ml_collections.ConfigDict:
        """The resolved config: the source's, or --config's, with the overrides."""
        return self._holder.value

    def network(self) -> Network:
        """The network the flags name (loaded once)."""
        if self._network is None:
            self._network = load_network(self.workdir, self.weights, self.config(), self.allow_pickle, self._raw)
        return self._network

    def run(self, main: Callable[[list[str]], None], user_errors: tuple = ()) -> None:
        """`app.run(main)` with this parser and cli's logging and one-line errors."""
        app.run(lambda argv: cli.execute(main, argv, (KeyError, *user_errors)), flags_parser=self.parse)

    def run_in_process(self, main: Callable[[list[str]], None], argv: list[str], user_errors: tuple = ()) -> int:
        """`main` after parsing `argv` (program name first) in this process: its exit code (for tests)."""
        try:
            rest = self.parse(argv)
            cli.execute(main, rest, (KeyError, *user_errors))
        except SystemExit as exit:
            return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        return 0


def run_tool(define: Callable[[NetworkSource], None], main: Callable, argv: list[str], **source_options) -> int:
    """A tool's command line in this process, with flags of its own: `define(source)` adds the tool's
    flags, `main(argv, source)` runs it. Returns the exit code."""
    source = NetworkSource(flag_values=flags.FlagValues(), **source_options)
    define(source)
    sys.stdout.flush()
    return source.run_in_process(lambda rest: main(rest, source), argv)
