"""How the project writes and reads its own small files, so that a crash mid-write leaves the old file
or the new one, never half of one, and a file that cannot be read is named in the error.

Whole files (JSON, NumPy archives) are written to a temporary file in the same directory, flushed to
the disk, and renamed over the target: a rename within one directory is atomic on POSIX file
systems. Append-only logs (`metrics.jsonl`) may lose the line being written when the process dies;
`read_jsonl(..., repair=True)` drops such a cut-short last line, with one warning.

`describe(error)` turns an operating-system error into the words a user acts on ("No space left on
device (ENOSPC)"), and `is_os_fault(error)` tells a failure of the machine or the storage (no
permission, I/O error, stale handle, no space, too many open files, storage unavailable) from one of
the file's bytes.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

log = logging.getLogger("alexnet_jax")


class CorruptFile(ValueError):
    """A file of ours that cannot be parsed: named, with what to do."""


def write_atomically(path: str, write: Callable[[io.IOBase], None], binary: bool = False) -> None:
    """Calls `write(f)` on a temporary file beside `path`, then puts it in `path`'s place in one rename."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def write_json(path: str, value: Any, indent: int | None = 1) -> None:
    """`value` as JSON in `path`, whole or not at all."""
    text = json.dumps(value, indent=indent)
    write_atomically(path, lambda f: f.write(text + "\n"))


def read_json(path: str, what: str = "") -> Any:
    """The JSON in `path`; a file that does not parse raises CorruptFile naming it."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CorruptFile(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}){what}"
        ) from None


def read_jsonl(path: str, repair: bool = False) -> list[dict]:
    """The records of a JSON-lines file (none if it does not exist).

    A last line cut short (the writer died mid-line, or the disk filled) is dropped; with `repair`
    the file is rewritten without it and one warning says so. A bad line anywhere else raises
    CorruptFile naming the file and the line.
    """
    if not os.path.exists(path):
        return []
    with open(path) as f:
        text = f.read()
    lines = text.split("\n")
    records, last = [], max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines[: last + 1], start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number - 1 != last:
                raise CorruptFile(
                    f"{path} line {number} is not valid JSON ({error.msg}); only a cut-short last line is repaired: "
                    "fix or remove that line"
                ) from None
            if repair:
                log.warning("%s: dropped its last line, cut short by an earlier crash (%r)", path, line[:80])
                write_atomically(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in records))
                return records
    if repair and text.strip() and not text.endswith("\n"):
        # A whole last record whose newline was never written: the next record appended would share its line.
        write_atomically(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in records))
    return records


# Failures of the machine or the storage, not of a file's bytes: errno values, and the status words
# that tensorstore (which Orbax reads and writes arrays with) puts in its error messages.
OS_FAULT_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.ESTALE,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOMEM,
    errno.EROFS,
    errno.ETIMEDOUT,
    errno.EAGAIN,
    errno.EBUSY,
    errno.ENOLCK,
    errno.ENODEV,
    errno.ENXIO,
    errno.ENOTCONN,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.EHOSTDOWN,
    errno.ENETDOWN,
    errno.ENETUNREACH,
    errno.EXDEV,
}
OS_FAULT_STATUSES = (
    "PERMISSION_DENIED",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "UNAUTHENTICATED",
    "ABORTED",
    "CANCELLED",
)
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def os_errno(error: BaseException) -> int | None:
    """The operating system's error number behind `error`: an OSError's, or the one tensorstore
    quotes in its message (`[os_error_code='13']`)."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno
    found = _OS_ERROR_CODE.search(str(error))
    return int(found.group(1)) if found else None


def causes(error: BaseException) -> list[BaseException]:
    """`error` and the errors it was raised from (`raise ... from`, or while handling), outermost first:
    Orbax reports tensorstore's status only in the error it wraps."""
    found = []
    while error is not None and all(error is not seen for seen in found):
        found.append(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return found


def is_os_fault(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is a failure of the machine or the storage
    rather than of the bytes read."""
    return any(_is_os_fault_alone(e) for e in causes(error))


def _is_os_fault_alone(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, TimeoutError, ConnectionError, PermissionError)):
        return True
    number = os_errno(error)
    if number is not None:
        return number in OS_FAULT_ERRNOS
    return any(status in str(error) for status in OS_FAULT_STATUSES) or "out of memory" in str(error).lower()


def describe(error: BaseException) -> str:
    """One line for a user: the operating system's words and the errno's name where there is one,
    else the first line of the error."""
    number = next((n for n in map(os_errno, causes(error)) if n is not None), None)
    if number is not None and number in errno.errorcode:
        return f"{os.strerror(number)} ({errno.errorcode[number]})"
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:300]
