"""Reading inputs and writing outputs on disk, with one-line errors and atomic writes.

Every read is bounded: only regular files are read (a device, a FIFO, a socket or a directory
is one clear error, found without blocking: a FIFO with no writer is never waited for), and
the size cap is enforced while reading, not trusted from `st_size` (which is 0 for
`/dev/zero`).

Files that servers read (staples) are written atomically: a temporary file in the same
directory, fsync (for a large batch on Linux 5.15 or later, one syncfs of the file system
instead), rename over the target, then fsync of the directory, so a reader sees the old bytes
or the new bytes and never a mixture, even across a crash. Nothing that is not a regular file
is ever written over. A temporary file left by an interrupted write
(`.NAME.XXXXXXXX` beside NAME) is removed by `clean_temporaries` at the next start.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import functools
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar, cast

from mustaple.core.errors import InputError

__all__ = [
    "MAX_INPUT",
    "MissingInputError",
    "NotRegularFileError",
    "clean_temporaries",
    "make_directories",
    "os_words",
    "read_input",
    "read_prefix",
    "syncfs_trusted",
    "write_atomic",
    "write_atomic_many",
]

_T = TypeVar("_T")

MAX_INPUT = 10 * 1024 * 1024
_CHUNK = 65536
# When this process started (near enough: when mustaple was imported). A temporary file older
# than this cannot belong to a write of ours still under way.
PROCESS_START = time.time()
# A temporary file's name ends as tempfile.mkstemp's do (earlier versions made them): a dot,
# then 8 of these letters (ours: base32 of 40 random bits, lower case).
_TEMP_TAIL = re.compile(r"\.[a-z0-9_]{8}")
_NAME_TRIES = 100  # names taken in a row before giving up (mkstemp's TMP_MAX is 10,000)
# Threads writing temporary files at once in `write_atomic_many`.
_SYNC_THREADS = 8
SYNC_ONCE_FROM = 64  # files in one batch from which one syncfs beats an fsync each
SYNCFS_FROM = (5, 15)  # the first Linux whose syncfs can be trusted (`syncfs_trusted`)


def os_words(exc: OSError, directory: Path) -> str:
    """What `exc` says, in the system's words. A read-only file system also says what to do:
    a systemd unit with ProtectSystem= (examples/mustaple.service) lets mustaple write only
    below its StateDirectory= and the paths its ReadWritePaths= lines list; and a file where
    a directory should be ("File exists", "Not a directory") which one it is."""
    words = exc.strerror or str(exc)
    where = exc.filename if exc.filename is not None else directory
    if exc.errno == errno.EEXIST:
        return f"{words}: {where} is a file, not a directory"
    if exc.errno == errno.ENOTDIR:
        return f"{words}: a part of {where} is a file, not a directory"
    if exc.errno != errno.EROFS:
        return words
    return (
        f"{words}; if systemd runs mustaple with ProtectSystem=, add {directory} to its "
        "unit's ReadWritePaths= (docs/systemd.md)"
    )


class MissingInputError(InputError):
    """The file `path` read_input was given does not exist (one that was there a moment ago
    has disappeared: its reader may say so)."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(f"{path}: {what} not found")
        self.path = path


class NotRegularFileError(OSError):
    """A path that must be a regular file is a device, a FIFO, a socket or a directory."""


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _not_regular(path: str | Path, mode: int) -> NotRegularFileError | None:
    kind = _kind(mode)
    if kind is None:
        return None
    return NotRegularFileError(errno.EINVAL, f"is {kind}, not a regular file", str(path))


def _open_regular(path: Path) -> int:
    """A read-only descriptor of regular file `path`; never blocks on a FIFO or device.

    Raises NotRegularFileError (checked before opening, and again on the open file).
    """
    problem = _not_regular(path, os.stat(path).st_mode)
    if problem:
        raise problem
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    problem = _not_regular(path, os.fstat(fd).st_mode)
    if problem:
        os.close(fd)
        raise problem
    return fd


def _read_upto(fd: int, limit: int) -> bytes:
    """At most `limit` bytes from `fd`, read in chunks (the file may grow while read)."""
    data = bytearray()
    while len(data) < limit:
        chunk = os.read(fd, min(_CHUNK, limit - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def read_input(path: str | Path, what: str = "file", limit: int = MAX_INPUT) -> bytes:
    """The bytes of regular file `path` (at most `limit`), or InputError saying why not."""
    p = Path(path)
    try:
        fd = _open_regular(p)
        try:
            data = _read_upto(fd, limit + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise MissingInputError(p, what) from None
    except NotRegularFileError as exc:
        raise InputError(f"{p}: {exc.strerror}; give the path of the {what}") from None
    except PermissionError:
        raise InputError(f"{p}: permission denied reading the {what}") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read the {what} ({exc.strerror})") from None
    if len(data) > limit:
        raise InputError(f"{p}: {what} is larger than {_size(limit)}")
    return data


def _size(limit: int) -> str:
    if limit >= 1024 * 1024 and limit % (1024 * 1024) == 0:
        return f"{limit // 1024 // 1024} MiB"
    return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"


def read_prefix(path: str | Path, size: int) -> bytes | None:
    """At most the first `size` bytes of regular file `path`; None when it does not exist.

    Raises NotRegularFileError for anything else than a regular file, OSError otherwise.
    """
    try:
        fd = _open_regular(Path(path))
    except FileNotFoundError:
        return None
    try:
        return _read_upto(fd, size)
    finally:
        os.close(fd)


def make_directories(directory: Path, mode: int = 0o755) -> None:
    """`directory` and its missing parents, each made `mode` whatever the umask (files
    written for a server running as another user, such as staples, must be reachable: a
    umask of 077 would hide them behind a directory only root may enter)."""
    if directory.is_dir():
        return
    make_directories(directory.parent, mode)
    try:
        directory.mkdir(mode)
    except FileExistsError:
        if not directory.is_dir():
            raise
        return  # made meanwhile, by someone else: left as they made it
    os.chmod(directory, mode)


def write_atomic(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably.

    Raises NotRegularFileError, writing nothing, when `path` exists and is not a regular file
    (a device node, a FIFO, a directory): replacing it would destroy it.
    """
    target = Path(path)
    _rename(_write_temporary(target, data, mode), target)
    _sync_directory(target.parent)


def _each_at_once(work: Callable[[int], _T], count: int, threads: int) -> list[_T]:
    """`work(index)` for each index below `count`, by this thread and up to `threads` - 1
    more; by fewer, or this one alone, when no more can be started (a limit of tasks)."""
    results: list[_T | None] = [None] * count
    indices = iter(range(count))
    lock = threading.Lock()
    failed: list[Exception] = []  # raised here, as a map raises the first error

    def drain() -> None:
        while not failed:
            with lock:
                index = next(indices, None)
            if index is None:
                return
            try:
                results[index] = work(index)
            except Exception as exc:
                failed.append(exc)

    helpers = []
    for _ in range(min(threads, count) - 1):
        helper = threading.Thread(target=drain, name="mustaple-sync", daemon=True)
        try:
            helper.start()
        except RuntimeError:  # no more threads: the others (and this one) do the rest
            break
        helpers.append(helper)
    drain()
    for helper in helpers:
        helper.join()
    if failed:
        raise failed[0]
    return cast(list[_T], results)


def write_atomic_many(
    files: Sequence[tuple[Path, bytes]], mode: int = 0o644, at: list[object] | None = None
) -> list[OSError | None]:
    """`write_atomic` for each (path, data), with what went wrong for each (None: written).

    The same guarantees, for less waiting: the temporary files are written and fsync-ed by a
    few threads at once (the file system commits their fsyncs together; by this thread alone
    when no other can be started, a limit of tasks reached); from SYNC_ONCE_FROM
    files, where Linux's syncfs(2) is there and can be trusted (`syncfs_trusted`), written
    without an fsync each and then made durable by one syncfs per file system (a prime's 100k
    fsyncs cost about 15 s more on the reference machine), through descriptors of the
    directories opened before the first write. A syncfs that fails fails every file of its
    file system in the batch: the error is the file system's, not one file's. Then they are
    renamed in order, then each directory is fsync-ed once. Every file is in place and durable
    on return. `at[0]`, when given, is kept at the file or directory being worked on (see
    `mustaple.adapters.patience`).
    """
    once = len(files) >= SYNC_ONCE_FROM and _syncfs() is not None
    targets = [os.fspath(target) for target, _ in files]
    directories = [os.path.dirname(target) or "." for target in targets]
    mark = at.__setitem__ if at is not None else _nowhere

    def temporary(index: int) -> str | OSError:
        mark(0, targets[index])
        try:
            return _write_temporary(targets[index], files[index][1], mode, sync=not once)
        except OSError as exc:
            return exc

    if once:
        # opened before the first write: syncfs reports the writeback errors that came after
        # its descriptor was opened, not those before
        watched = _open_directories(set(directories))
        try:
            written = [temporary(index) for index in range(len(files))]
            written = _synced(written, targets, directories, watched)
        finally:
            for fd in watched.values():
                if isinstance(fd, int):
                    os.close(fd)
    else:
        written = _each_at_once(temporary, len(files), _SYNC_THREADS)
    problems: list[OSError | None] = []
    for target, tmp in zip(targets, written, strict=True):
        mark(0, target)
        try:
            if isinstance(tmp, OSError):
                raise tmp
            _rename(tmp, target)
            problems.append(None)
        except OSError as exc:
            problems.append(exc)
    written_to = {d for d, problem in zip(directories, problems, strict=True) if not problem}
    for directory in written_to:
        mark(0, directory)
        try:
            _sync_directory(directory)
        except OSError as exc:
            for index, problem in enumerate(problems):
                if problem is None and directories[index] == directory:
                    problems[index] = exc
    return problems


def _nowhere(index: int, where: object) -> None:
    """Where work is, told to nobody."""


def _open_directories(directories: set[str]) -> dict[str, int | OSError]:
    """A descriptor of each directory, or why it cannot be opened."""
    opened: dict[str, int | OSError] = {}
    for directory in directories:
        try:
            opened[directory] = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            opened[directory] = exc
    return opened


def _synced(
    written: list[str | OSError],
    targets: list[str],
    directories: list[str],
    watched: dict[str, int | OSError],
) -> list[str | OSError]:
    """`written` (temporary files beside `targets`, in `directories`, or why one could not be
    written), made durable by one syncfs per file system, through the directories'
    descriptors in `watched` (opened before the writes); a temporary whose file system failed
    it becomes that error."""
    used = {d for d, tmp in zip(directories, written, strict=True) if isinstance(tmp, str)}
    by_device: dict[int, OSError | None] = {}
    failed: dict[str, OSError] = {}
    for directory in used:
        fd = watched[directory]
        try:
            if isinstance(fd, OSError):
                raise fd
            device = os.fstat(fd).st_dev
            if device not in by_device:
                by_device[device] = _sync_file_system(fd)
            problem = by_device[device]
        except OSError as exc:
            problem = exc
        if problem is not None:
            failed[directory] = problem
    if not failed:
        return written
    out: list[str | OSError] = []
    for tmp, target, directory in zip(written, targets, directories, strict=True):
        problem = failed.get(directory) if isinstance(tmp, str) else None
        if isinstance(tmp, str) and problem is not None:
            _unlink_quietly(tmp)
            out.append(OSError(problem.errno, problem.strerror, target))
        else:
            out.append(tmp)
    return out


def _sync_file_system(fd: int) -> OSError | None:
    """syncfs(2) of the file system holding the open directory `fd`: None, or why it
    failed."""
    syncfs = _syncfs()
    assert syncfs is not None
    if syncfs(fd) != 0:
        code = ctypes.get_errno()
        return OSError(code, os.strerror(code))
    return None


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2) from the C library, or None where there is none or where it cannot
    be trusted (`syncfs_trusted`)."""
    if not sys.platform.startswith("linux") or not syncfs_trusted(os.uname().release):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function


def syncfs_trusted(release: str) -> bool:
    """Whether syncfs(2) makes files durable and says when it could not, on a Linux kernel of
    this release ("6.1.0-18-amd64"): it reports writeback errors from 5.8 on, and reaches
    FUSE file systems from 5.15; an older kernel, or another system, gets an fsync per file."""
    version = re.match(r"(\d+)\.(\d+)", release)
    return version is not None and (int(version[1]), int(version[2])) >= SYNCFS_FROM


def _write_temporary(target: str | Path, data: bytes, mode: int, *, sync: bool = True) -> str:
    """`data` in a new temporary file beside `target` (a regular file, or none), fsync-ed
    unless not `sync` (the caller makes it durable). Plain system calls: a prime writes
    100k of them."""
    try:
        problem = _not_regular(target, os.stat(target).st_mode)
    except FileNotFoundError:
        problem = None
    if problem:
        raise problem
    tmp, fd = _create_temporary(os.fspath(target))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    try:
        os.close(fd)  # where a network file system reports a failed write
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _create_temporary(target: str) -> tuple[str, int]:
    """A new file `.NAME.XXXXXXXX` beside `target` (a name `clean_temporaries` knows),
    opened for writing, readable by its owner only (until `mode` is set)."""
    directory, name = os.path.split(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_NAME_TRIES):
        tail = base64.b32encode(os.urandom(5)).decode().lower()
        tmp = os.path.join(directory, f".{name}.{tail}")
        try:
            return tmp, os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free name for a temporary file", target)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _rename(tmp: str, target: str | Path) -> None:
    try:
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _sync_directory(directory: str | Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def clean_temporaries(
    directory: str | Path, names: re.Pattern[str], before: float = PROCESS_START
) -> list[Path]:
    """Remove the temporary files an interrupted `write_atomic` left in `directory`.

    Only regular files named `.NAME.XXXXXXXX` (our pattern) whose NAME fully matches `names`
    and that were last modified before `before` (by default, this process's start) are
    removed: never a file another write of ours is still filling. Returns what was removed;
    a directory that cannot be listed is left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not _is_our_temporary(entry.name, names):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_mtime < before:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _is_our_temporary(filename: str, names: re.Pattern[str]) -> bool:
    if not filename.startswith(".") or len(filename) < 11:
        return False
    tail = filename[-9:]
    return _TEMP_TAIL.fullmatch(tail) is not None and names.fullmatch(filename[1:-9]) is not None
