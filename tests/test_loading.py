"""The flags a tool needs before its network's config exists (where the network comes from, whether a
pickle may be read to find its config, whether help is asked for) are those absl's parser then reads:
a pickle is read exactly when absl gives `--allow_pickle` true, and a line absl refuses stops in one
line before any file is read."""

import numpy as np
import pytest
from absl import flags

from alexnet_jax import loading, predict, summary, visualize
from alexnet_jax import weights as weights_lib

UNPICKLED = []


def _unpickled(tag):
    UNPICKLED.append(tag)
    return 0  # not a network: the tool then stops with its one line


class _Marker:
    """Records its own unpickling: the test sees whether a tool read the pickle."""

    def __reduce__(self):
        return (_unpickled, ("read",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pickles")
    np.save(root / "marker.npy", np.array(_Marker(), dtype=object), allow_pickle=True)
    (root / "on.flags").write_text("--allow_pickle\n")
    (root / "off.flags").write_text("--noallow_pickle\n")
    return root


# (tool, its arguments with {dir} for the files' folder, whether absl reads --allow_pickle as true)
LINES = [
    (weights_lib, ["--allow_pickle=t", "{dir}/marker.npy", "{dir}/out.npz"], True),
    (weights_lib, ["-allow_pickle=TRUE", "{dir}/marker.npy", "{dir}/out.npz"], True),
    (weights_lib, ["--flagfile={dir}/on.flags", "{dir}/marker.npy", "{dir}/out.npz"], True),
    (weights_lib, ["--allow_pickle", "--noallow_pickle", "{dir}/marker.npy", "{dir}/out.npz"], False),
    (weights_lib, ["--allow_pickle", "--flagfile={dir}/off.flags", "{dir}/marker.npy", "{dir}/out.npz"], False),
    (weights_lib, ["{dir}/marker.npy", "{dir}/out.npz", "--", "--allow_pickle"], False),  # no flag after --
    (weights_lib, ["--undefok", "--allow_pickle", "{dir}/marker.npy", "{dir}/out.npz"], False),  # undefok's value
    (visualize, ["--weights={dir}/marker.npy", "--out", "--allow_pickle", "kernels"], False),  # --out's value
    (predict, ["--weights={dir}/marker.npy", "--top", "--allow_pickle", "x.png"], False),  # refused: --top's value
    (weights_lib, ["--allow_pickle=yes", "{dir}/marker.npy", "{dir}/out.npz"], False),  # refused: not a boolean
    (weights_lib, ["--noallow_pickle=1", "{dir}/marker.npy", "{dir}/out.npz"], False),  # refused: takes no value
]


@pytest.mark.parametrize(
    "tool,argv,allowed", LINES, ids=[f"{t.__name__.split('.')[-1]}:{','.join(a)}" for t, a, _ in LINES]
)
def test_a_pickle_is_read_exactly_when_absl_allows_it(files, capsys, tool, argv, allowed):
    UNPICKLED.clear()
    code = tool.run_command_line([arg.format(dir=files) for arg in argv])
    err = capsys.readouterr().err
    assert UNPICKLED == (["read"] if allowed else [])
    # Each line ends in one line and exit code 2: the pickle refused, absl's refusal, or (read) not a network.
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err, err[-2000:]
    assert ("holds a int" in err) == allowed


def test_an_override_that_takes_a_source_flag_as_its_value_stops(capsys):
    """`--config.FIELD VALUE` in two arguments is read once the config's fields are known: when its
    value is one of the flags read first, the two readings differ, and the tool says so."""
    assert summary.run_command_line(["--config.model.name", "--allow_pickle"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--config.FIELD=VALUE" in err
    assert summary.run_command_line(["--undefok", "--allow_pickle", "--config.model.num_classes=10"]) == 0
    assert "fc8" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,asks",
    [
        (["-?"], True),
        (["--help", "--nohelp"], True),  # absl prints the usage at the first help flag that is on
        (["--help", "--allow_pickle=yes"], True),
        (["--help=false", "--helpfull"], True),
        (["--help=false"], False),
        (["x", "--", "--help"], False),
        (["--undefok", "--help"], False),  # undefok's value
    ],
)
def test_help_is_asked_for_where_absl_prints_the_usage(argv, asks):
    tool_flags = flags.FlagValues()
    loading.NetworkSource(flag_values=tool_flags)  # --workdir, --weights, --allow_pickle
    assert loading._read_early(tool_flags, ["prog", *argv]).asks_for_help == asks
