"""Our own files: written whole or not at all, read back with the file named when they do not parse, a
cut-short last log line repaired; operating-system faults told from damaged bytes."""

import errno
import json

import pytest

from alexnet_jax import files


def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path):
    path = tmp_path / "config.json"
    files.write_json(str(path), {"a": 1})

    def half_then_crash(f):
        f.write('{"a": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        files.write_atomically(str(path), half_then_crash)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind


def test_a_cut_short_last_line_is_dropped_and_repaired_once(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert files.read_jsonl(str(path)) == [{"step": 1}, {"step": 2}]
    assert path.read_text().endswith('"lo')  # reading alone repairs nothing
    with caplog.at_level("WARNING", logger="alexnet_jax"):
        assert files.read_jsonl(str(path), repair=True) == [{"step": 1}, {"step": 2}]
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n' and caplog.text.count("dropped its last line") == 1


def test_a_whole_last_line_without_its_newline_gets_one_before_anything_is_appended(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}')  # the process died between the record and its newline
    assert files.read_jsonl(str(path), repair=True) == [{"step": 1}, {"step": 2}]
    with open(path, "a") as f:  # what the metrics writer does next
        f.write('{"step": 3}\n')
    assert files.read_jsonl(str(path)) == [{"step": 1}, {"step": 2}, {"step": 3}]


def test_a_bad_line_elsewhere_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(files.CorruptFile, match=f"{path} line 2 is not valid JSON"):
        files.read_jsonl(str(path), repair=True)
    (tmp_path / "final.json").write_text('{"top1_error": 0.')
    with pytest.raises(files.CorruptFile, match=f"{tmp_path}/final.json is not valid JSON"):
        files.read_json(str(tmp_path / "final.json"))


@pytest.mark.parametrize(
    "error,fault,words",
    [
        (OSError(errno.EIO, "x"), True, "Input/output error (EIO)"),
        (OSError(errno.ESTALE, "x"), True, "Stale file handle (ESTALE)"),
        (OSError(errno.ENOSPC, "x"), True, "No space left on device (ENOSPC)"),
        (OSError(errno.EMFILE, "x"), True, "Too many open files (EMFILE)"),
        (PermissionError(errno.EACCES, "x"), True, "Permission denied (EACCES)"),
        (ValueError("PERMISSION_DENIED: Failed to open [os_error_code='13']"), True, "Permission denied (EACCES)"),
        (ValueError("UNAVAILABLE: backend down"), True, "UNAVAILABLE: backend down"),
        (FileNotFoundError(errno.ENOENT, "x"), False, "No such file or directory (ENOENT)"),
        (ValueError("DATA_LOSS: Error decoding manifest"), False, "DATA_LOSS: Error decoding manifest"),
    ],
)
def test_faults_of_the_machine_are_told_from_bad_bytes(error, fault, words):
    assert files.is_os_fault(error) is fault and files.describe(error) == words
