"""The flags a tool reads before absl parses its command line (where the network comes from, whether a
pickle may be read to find its config, whether help is asked for) are read as absl's own parser then
reads them: one or two dashes, `=VALUE` or the next argument, absl's boolean spellings, `--noFLAG`,
the last one counting, nothing after `--`."""

import pytest
from absl import flags

from alexnet_jax import loading

LINES = [
    ["--allow_pickle"],
    ["-allow_pickle"],
    ["--allow_pickle=t"],
    ["-allow_pickle=TRUE"],
    ["--allow_pickle=1"],
    ["--allow_pickle=F"],
    ["--allow_pickle", "--noallow_pickle"],
    ["--noallow_pickle", "-allow_pickle"],
    ["x.npy", "--", "--allow_pickle"],
    ["--weights", "--allow_pickle"],  # the next argument is --weights' value
    ["--weights", "w.pth", "x.png", "--allow_pickle=true", "--workdir=run"],
    ["-weights=a.npz", "--weights=b.npz", "--", "--weights=c.npz"],
    ["-workdir", "run", "--config.model.dtype", "bfloat16", "--allow_pickle=0"],
    ["---allow_pickle", "x.png"],
    [],
]
REFUSED = [["--allow_pickle=yes"], ["--allow_pickle="], ["--noallow_pickle=1"]]


def absl_reads(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_bool("allow_pickle", False, "", flag_values=values)
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    flags.DEFINE_string("weights", None, "", flag_values=values)
    flags.DEFINE_string("config.model.dtype", None, "", flag_values=values)
    flags.DEFINE_bool("help", False, "", flag_values=values, short_name="?")
    values(["prog", *argv], known_only=True)
    return values


@pytest.mark.parametrize("argv", LINES, ids=lambda argv: ",".join(argv) or "no-flags")
def test_the_flags_read_first_are_what_absl_then_reads(argv):
    absl = absl_reads(argv)
    line = ["prog", *argv]
    assert loading._bool_flag(line, "allow_pickle") == absl.allow_pickle
    assert loading._flag_value(line, "weights") == absl.weights
    assert loading._flag_value(line, "workdir") == absl.workdir


@pytest.mark.parametrize("argv", REFUSED, ids=",".join)
def test_a_value_absl_refuses_is_refused_before_anything_is_read(argv):
    with pytest.raises((flags.Error, ValueError)):
        absl_reads(argv)
    with pytest.raises(ValueError, match="allow_pickle"):
        loading._bool_flag(["prog", *argv], "allow_pickle")


@pytest.mark.parametrize(
    "argv,asks", [(["-?"], True), (["--help=false"], False), (["x", "--", "--help"], False), (["--helpfull"], True)]
)
def test_help_is_asked_for_as_absl_reads_the_help_flags(argv, asks):
    assert any(loading._bool_flag(["prog", *argv], name) for name in loading._HELP_FLAGS) == asks
