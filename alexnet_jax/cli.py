"""What every command-line tool shares: a quiet, quick start and exit, logging, one-line errors,
common flags.

Import this module before anything that imports TensorFlow: TensorFlow reads its settings from the
environment when it is first imported. It prints start-up notices (oneDNN, CPU features) that bury a
tool's own first line; they stay visible with `--verbosity=1` (or `-v 1`).
"""

from __future__ import annotations

import atexit
import gc
import json
import logging as std_logging
import os
import runpy
import sys
from collections.abc import Callable

import ml_collections
from absl import app, flags, logging

from alexnet_jax import files, stopping


def _verbose(argv: list[str]) -> bool:
    for i, arg in enumerate(argv):
        for name in ("--verbosity", "--v", "-v"):
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1].lstrip("-").isdigit() and int(arg.split("=", 1)[1]) >= 1
            if arg == name and i + 1 < len(argv):
                return argv[i + 1].isdigit() and int(argv[i + 1]) >= 1
    return False


if not _verbose(sys.argv):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ notices and warnings
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its oneDNN notice; tf.data does not use oneDNN
# TensorFlow's import loads Keras (and with it scikit-learn and SciPy, about 1.5 s) only to register
# Keras's optimisers; the tools use tf.data alone. With tf.keras pointed at the legacy package, which
# they do not install, TensorFlow skips that import. Only in a tool's own process (`python -m
# alexnet_jax.TOOL`): a notebook that imports a tool may want tf.keras. A value set is kept.
#
# Python's garbage collector walks every live object at each full collection, and the imports of
# TensorFlow and JAX make several hundred thousand objects, so that the walks repeat while they
# grow. In a tool's own process the collector waits until the imports are done, and then leaves the
# objects they made out of its walks (`end_import_pause`, called by `execute`): a command refused after
# its imports (`python -m alexnet_jax.main --config=configs/smoke.py --workdir=W
# --config.optim.learning_rate=-1` under /usr/bin/time) took 1.9 s of user CPU time, not 2.55 s.
_TOOL_PROCESS = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", "").startswith("alexnet_jax.")
if _TOOL_PROCESS:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    gc.disable()
# At exit, Python's last garbage collection walks every object TensorFlow and JAX created (over a
# second); the process is ending, so those objects need no walk. Objects made after the freeze (by
# the other exit handlers: Orbax's, JAX's) are still collected.
atexit.register(gc.freeze)


class UserError(Exception):
    """A mistake in the command line, config or data: reported in one line, exit code 2."""


class _StderrHandler(std_logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of each record, so that runs started in one
    process one after another (a notebook, the tests) each log where their stderr goes."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        del value


def setup_logging() -> None:
    """Our progress lines at INFO on stderr (DEBUG with --verbosity=1); the libraries' absl logs
    (Orbax's line per save, tensorflow-datasets' notices) only for errors unless --verbosity asks."""
    ours = std_logging.getLogger("alexnet_jax")
    if not ours.handlers:
        handler = _StderrHandler()
        handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        ours.addHandler(handler)
    ours.setLevel(std_logging.DEBUG if logging.get_verbosity() >= 1 else std_logging.INFO)
    ours.propagate = False
    if logging.get_verbosity() < 1:
        logging.set_verbosity(logging.ERROR)


def fail(message: str, code: int = 2) -> None:
    """Prints `error: message` and exits with `code` (2: a user mistake)."""
    hint = "" if logging.get_verbosity() >= 1 else "  (--verbosity=1 shows the traceback)"
    logging.debug("traceback of the error below", exc_info=True)
    print(f"error: {message}{hint}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl's flag parsing with one-line errors: an unknown or mistyped flag, a missing config file."""
    config_path = next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith("--config=")), None)
    if config_path is not None and not os.path.isfile(config_path.split(":", 1)[0]):
        print(f"error: config file {config_path.split(':', 1)[0]} not found", file=sys.stderr)
        sys.exit(2)
    try:
        return flag_values(argv)
    except flags.Error as error:  # a value of the wrong type, a missing required flag
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError) as error:  # config_flags: an override of a field that does not exist
        message = str(error)
        if config_path:
            message = unknown_override(load_config(config_path), argv) or message
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """A config from `configs/NAME.py` (its `get_config()`), `configs/NAME.py:ARG` (`get_config(ARG)`, as
    --config takes it) or a workdir's resolved `config.json`."""
    path, colon, argument = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} not found")
    if path.endswith(".json"):
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    module = runpy.run_path(path)
    if "get_config" not in module:
        raise ValueError(f"{path} defines no get_config()")
    return module["get_config"](argument) if colon else module["get_config"]()


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


def config_value(holder) -> object:
    """A config flag's value, with a one-line error when the file cannot be loaded (a syntax error)."""
    try:
        return holder.value
    except (OSError, SyntaxError, ImportError, AttributeError, NameError, TypeError) as error:
        fail(f"cannot load the config: {str(error).strip().splitlines()[-1]}")


def define_network_flags() -> None:
    """--workdir, --weights, --config and --allow_pickle: where a tool finds its network."""
    flags.DEFINE_string("workdir", None, "A training workdir (best checkpoint, its config and statistics).")
    flags.DEFINE_string("weights", None, "A weights file (.npz; .npy/.pth with --allow_pickle) instead of a workdir.")
    flags.DEFINE_string("config", None, "Config file (.py) or resolved config (.json); default: the workdir's.")
    flags.DEFINE_bool("allow_pickle", False, "Allow pickle-based weight files (.npy, .pth): only ones you trust.")


def os_error_message(error: OSError) -> str:
    """One line for an operating-system error: the file, the system's words, and what to do."""
    if type(error).__module__.startswith("alexnet_jax"):  # ours: the message says it all
        return str(error)
    where = f"{error.filename}: " if error.filename else ""
    return (
        f"{where}{files.describe(error)}; fix the storage (space, permissions, mounts) and rerun the same "
        "command: a training run resumes from its last checkpoint"
    )


def end_import_pause() -> None:
    """The garbage collector, held off while the libraries were imported, back on, and the objects
    made so far (the imports', which live to the end) left out of its walks. For a tool's own process
    (`execute`) and the tests' (tests/conftest.py)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def execute(main: Callable[[list[str]], None], argv: list[str], user_errors: tuple = ()) -> None:
    """Runs `main(argv)` (flags already parsed) with our logging; `user_errors` (and UserError,
    ValueError, FileNotFoundError, and every other operating-system error) end in one line and exit
    code 2. SIGTERM and SIGINT end it with one line and exit code 0, the work kept (stopping.py)."""
    if _TOOL_PROCESS:
        end_import_pause()
    setup_logging()
    try:
        with stopping.signals_interrupt():
            main(argv)
    except stopping.Interrupted as signal_name:
        print(stopping.stopped_line(str(signal_name)), file=sys.stderr, flush=True)
        sys.exit(0)
    except (UserError, ValueError, FileNotFoundError, *user_errors) as error:
        fail(str(error))
    except OSError as error:
        fail(os_error_message(error))
    except Exception as error:
        # TensorFlow reports a failed read or write in the input pipeline or `prepare` as its own errors
        # (PermissionDeniedError, ResourceExhaustedError...); cli does not import TensorFlow to name them.
        if not type(error).__module__.startswith("tensorflow") or not hasattr(error, "error_code"):
            raise
        message = str(getattr(error, "message", error)).strip().splitlines()[0]
        fail(f"{message}; fix the storage (space, permissions, mounts) and rerun the same command")


def run(main: Callable[[list[str]], None], user_errors: tuple = ()) -> None:
    """`app.run(main)` with our flag parsing, logging and one-line errors (`execute`)."""
    app.run(lambda argv: execute(main, argv, user_errors), flags_parser=parse_flags)
