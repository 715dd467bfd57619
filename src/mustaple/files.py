"""Reading inputs and writing outputs on disk, with one-line errors and atomic writes.

Files that servers read (staples) are written atomically: a temporary file in the same
directory, fsync, rename over the target, then fsync of the directory, so a reader sees the
old bytes or the new bytes and never a mixture, even across a crash.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mustaple.errors import InputError

__all__ = ["read_input", "write_atomic"]

MAX_INPUT = 10 * 1024 * 1024


def read_input(path: str | Path, what: str = "file") -> bytes:
    """The bytes of `path`, or InputError saying why they cannot be read."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_INPUT:
            raise InputError(f"{p}: {what} is larger than {MAX_INPUT // 1024 // 1024} MiB")
        return p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, expected a {what}") from None
    except PermissionError:
        raise InputError(f"{p}: permission denied reading the {what}") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read the {what} ({exc.strerror})") from None


def write_atomic(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably."""
    target = Path(path)
    directory = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
