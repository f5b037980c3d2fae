"""Command line: train or evaluate AlexNet as a config says.

    python -m alexnet_jax.main --config=configs/paper.py --workdir=DIR [--mode=train|eval]
        [--config.optim.learning_rate=0.02 ...]

`--workdir` holds checkpoints, metrics (JSON lines, TensorBoard) and the resolved config. Running
the same command again resumes from the newest checkpoint in it.
"""

from __future__ import annotations

import json
import logging as std_logging
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax import config_check, parallel
from alexnet_jax import train as train_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/paper.py.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the resolved config.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes if possible) or eval (best checkpoint).")
flags.mark_flags_as_required(["config", "workdir"])


class UserError(Exception):
    """A mistake in the command line, config or data: reported in one line, exit code 2."""


def unknown_override(config, argv: list[str]) -> str | None:
    """The message for the first `--config.a.b=v` whose field `config` lacks, else None."""
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config.") :].split("=", 1)[0].split(".")
        node, walked = config, []
        for part in path:
            if not hasattr(node, "keys") or part not in node:
                where = ".".join(walked) or "the config"
                valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none (not a group)"
                return f"unknown config field {'.'.join(walked + [part])!r}; fields of {where}: {valid}"
            node, walked = node[part], walked + [part]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a one-line error for an override of a field that does not exist."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:  # a value of the wrong type, a missing --workdir
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError) as error:
        message = str(error)
        config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
        if config_path:
            import runpy

            config = runpy.run_path(config_path)["get_config"]()
            message = unknown_override(config, argv) or message
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _run(config, workdir: str, mode: str) -> dict:
    try:
        config_check.check(config)
    except config_check.ConfigError as error:
        raise UserError(f"config: {error}") from None
    parallel.initialize_distributed(config.parallel.distributed)
    if mode == "train":
        return train_lib.train_and_evaluate(config, workdir)
    return train_lib.evaluate_checkpoint(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Our progress lines at INFO; libraries (Orbax logs every save at INFO) at WARNING.
    ours = std_logging.getLogger("alexnet_jax")
    if not ours.handlers:
        handler = std_logging.StreamHandler(sys.stderr)
        handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        ours.addHandler(handler)
    ours.setLevel(std_logging.DEBUG if logging.get_verbosity() >= 1 else std_logging.INFO)
    ours.propagate = False
    if logging.get_verbosity() < 1:
        logging.set_verbosity(logging.WARNING)
    try:
        result = _run(_CONFIG.value, _WORKDIR.value, _MODE.value)
    except (UserError, ValueError, FileNotFoundError) as error:
        logging.debug("traceback of the error below", exc_info=True)
        print(f"error: {error}  (--verbosity=1 shows the traceback)", file=sys.stderr)
        sys.exit(2)
    except train_lib.NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)
    if jax.process_index() == 0:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
