"""Command line: train or evaluate AlexNet as a config says.

    python -m alexnet_jax.main --config=configs/paper.py --workdir=DIR [--mode=train|eval]
        [--config.optim.learning_rate=0.02 ...]

`--workdir` holds checkpoints, metrics (JSON lines, TensorBoard) and the resolved config. Running
the same command again resumes from the newest checkpoint in it. Mistakes (an unknown field, a bad
value, a missing config file or dataset, a workdir in use or holding another network) get one line
and exit code 2; a non-finite loss exit code 3.
"""

from __future__ import annotations

import json

from alexnet_jax import stopping  # first of all: a signal during the imports below ends the run in one line

if __name__ == "__main__":
    stopping.stop_at_once()

# isort: split
from alexnet_jax import cli  # next: quiets TensorFlow's start-up before anything imports it

# isort: split
import jax
from absl import flags
from ml_collections import config_flags

from alexnet_jax import config_check, parallel, train, workdir


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, argv: list[str] | None = None) -> dict:
    """Defines --config (with its --config.* overrides, found in `argv`, default sys.argv), --workdir
    and --mode on `flag_values`; returns their holders."""
    holders = {
        "config": config_flags.DEFINE_config_file(
            "config",
            None,
            "Config file, e.g. configs/paper.py.",
            flag_values=flag_values,
            lock_config=True,
            sys_argv=argv,
        ),
        "workdir": flags.DEFINE_string(
            "workdir", None, "Directory for checkpoints, metrics and the resolved config.", flag_values=flag_values
        ),
        "mode": flags.DEFINE_enum(
            "mode",
            "train",
            ["train", "eval"],
            "train (resumes if possible) or eval (the final and the best checkpoint on the validation split).",
            flag_values=flag_values,
        ),
    }
    flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)
    return holders


def run(config, workdir_path: str, mode: str) -> dict:
    """Checks the config, joins a multi-host run if asked, then trains or evaluates."""
    try:
        config_check.check(config)
    except config_check.ConfigError as error:
        raise cli.UserError(f"config: {error}") from None
    parallel.initialize_distributed(config.parallel.distributed)
    if mode == "train":
        return train.train_and_evaluate(config, workdir_path)
    return train.evaluate_checkpoint(config, workdir_path)


def main(argv: list[str], holders: dict) -> None:
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        result = run(cli.config_value(holders["config"]), holders["workdir"].value, holders["mode"].value)
    except train.NonFiniteError as error:
        cli.fail(str(error), code=3)
    if jax.process_index() == 0:
        print(json.dumps(result, indent=1))


USER_ERRORS = (workdir.WorkdirInUse, workdir.LockUnsupported)


def run_command_line(argv: list[str]) -> int:
    """`python -m alexnet_jax.main ARGV` in this process, with flags of its own; returns the exit code."""
    argv, flag_values = ["alexnet_jax.main", *argv], flags.FlagValues()
    holders = define_flags(flag_values, argv)
    try:
        cli.execute(lambda rest: main(rest, holders), cli.parse_flags(argv, flag_values), USER_ERRORS)
    except SystemExit as exit:
        return exit.code or 0
    return 0


if __name__ == "__main__":
    _holders = define_flags()
    cli.run(lambda argv: main(argv, _holders), user_errors=USER_ERRORS)
