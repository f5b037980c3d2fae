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


# (tool, its arguments with {dir} for the files' folder, whether absl reads --allow_pickle as true,
# what the one error line says: the file is not a network, the pickle is refused, or the line is)
READ, REFUSED = "holds a int, not Caffe's", "which is a Python pickle"
LINES = [
    (weights_lib, ["--allow_pickle=t", "{dir}/marker.npy", "{dir}/out.npz"], True, READ),
    (weights_lib, ["-allow_pickle=TRUE", "{dir}/marker.npy", "{dir}/out.npz"], True, READ),
    (weights_lib, ["--flagfile={dir}/on.flags", "{dir}/marker.npy", "{dir}/out.npz"], True, READ),
    (weights_lib, ["--allow_pickle", "--noallow_pickle", "{dir}/marker.npy", "{dir}/out.npz"], False, REFUSED),
    (
        weights_lib,
        ["--allow_pickle", "--flagfile={dir}/off.flags", "{dir}/marker.npy", "{dir}/out.npz"],
        False,
        REFUSED,
    ),
    (weights_lib, ["{dir}/marker.npy", "{dir}/out.npz", "--", "--allow_pickle"], False, REFUSED),  # no flag after --
    (weights_lib, ["--undefok", "--allow_pickle", "{dir}/marker.npy", "{dir}/out.npz"], False, REFUSED),  # its value
    (visualize, ["--weights={dir}/marker.npy", "--out", "--allow_pickle", "kernels"], False, REFUSED),  # --out's value
    (predict, ["--weights={dir}/marker.npy", "--top", "--allow_pickle", "x.png"], False, "flag --top=--allow_pickle"),
    (predict, ["--bogus", "--allow_pickle", "--weights={dir}/marker.npy", "x.png"], False, "Unknown command line flag"),
    (summary, ["--config.model.name", "--allow_pickle", "--weights={dir}/marker.npy"], False, "write --config.model"),
    (weights_lib, ["--allow_pickle=yes", "{dir}/marker.npy", "{dir}/out.npz"], False, "--allow_pickle=yes"),
    (weights_lib, ["--noallow_pickle=1", "{dir}/marker.npy", "{dir}/out.npz"], False, "does not take an argument"),
]


@pytest.mark.parametrize(
    "tool,argv,allowed,says", LINES, ids=[f"{t.__name__.split('.')[-1]}:{','.join(a)}" for t, a, _, _ in LINES]
)
def test_a_pickle_is_read_exactly_when_absl_allows_it(files, capsys, tool, argv, allowed, says):
    UNPICKLED.clear()
    code = tool.run_command_line([arg.format(dir=files) for arg in argv])
    err = capsys.readouterr().err
    assert UNPICKLED == (["read"] if allowed else [])
    assert code == 2 and err.count("error:") == 1 and says in err and "Traceback" not in err, err[-2000:]


def test_an_override_in_two_arguments_stops_where_its_value_may_be_a_flag_read_first(capsys):
    """`--config.FIELD VALUE` in two arguments: whether VALUE is FIELD's depends on FIELD's type, known
    only once the source is read; when VALUE is one of the flags read first, the tool asks for
    `--config.FIELD=VALUE` before it reads anything. Other values are the full parse's to read."""
    assert summary.run_command_line(["--config.model.name", "--allow_pickle"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "write --config.model.name=VALUE" in err
    assert summary.run_command_line(["--config.model.num_classes", "10", "--undefok", "--allow_pickle"]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("fc8")] == ["10"]


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
