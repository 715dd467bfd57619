"""Linux inotify for directories: which of them saw a change since the last read.

The standard library has no inotify, so the three system calls are made through ctypes.
`Inotify` watches directories by path (two paths of one directory share the kernel's watch)
and hands back, at each `read`, the (directory, name) of each event since the last one
(name "" for an event on the directory itself: removed, moved, unmounted), and whether the
kernel's queue overflowed (then any change may have been missed). Reading never blocks.

Events are only seen for changes made through this machine's kernel: a file system shared
over the network (NFS, SMB, CephFS) or served by a user-space daemon (FUSE) changes under
us unseen. `local_file_system` says whether a directory's file system is one whose changes
all go through this kernel (a list of known local types; an unknown one is not trusted).

`add` may be called from another thread than `read` (a look at files that may hang adds its
watches from its own thread): the path look-up of `add` is made outside the lock.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading

__all__ = ["Inotify", "local_file_system"]

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000

# what changes a file's stamp (its mtime and size) or which file a name is
WATCHED = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)

_HEAD = struct.Struct("iIII")  # wd, mask, cookie, len: struct inotify_event
_READ = 64 * 1024

# statfs(2) f_type of file systems whose every change goes through this kernel
_LOCAL = frozenset(
    {
        0xEF53,  # ext2, ext3, ext4
        0x58465342,  # xfs
        0x9123683E,  # btrfs
        0x01021994,  # tmpfs
        0x858458F6,  # ramfs
        0x794C7630,  # overlayfs
        0x2FC12FC1,  # zfs
        0xF2F52010,  # f2fs
        0x52654973,  # reiserfs
        0x3153464A,  # jfs
        0x73717368,  # squashfs
        0x4D44,  # vfat
        0x2011BAB0,  # exfat
        0x3434,  # nilfs2
        0xCA451A4E,  # bcachefs
    }
)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _failed(what: str, path: str | None = None) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}", path)


def local_file_system(directory: str) -> bool:
    """Whether `directory` is on a file system of a known local type (see the module);
    OSError when it cannot be looked at."""
    buffer = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86-64
    if _libc().statfs(os.fsencode(directory), buffer) != 0:
        raise _failed("statfs", directory)
    kind = struct.unpack_from("l", buffer)[0] & 0xFFFFFFFF
    return kind in _LOCAL


class Inotify:
    """One inotify instance, watching directories by path (see the module)."""

    def __init__(self) -> None:
        """OSError when the kernel gives no instance (`fs.inotify.max_user_instances`)."""
        self._calls = _libc()
        fd = self._calls.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise _failed("inotify_init1")
        self.fd: int | None = fd
        self._paths: dict[int, set[str]] = {}  # by watch descriptor
        self._watch: dict[str, int] = {}  # by path
        self._lock = threading.Lock()

    def __contains__(self, directory: object) -> bool:
        return directory in self._watch

    def __len__(self) -> int:
        return len(self._watch)

    def add(self, directory: str) -> None:
        """Watch `directory` (already watched: nothing). OSError when it cannot be: not
        there or not a directory (ENOENT, ENOTDIR), or the watch limit (ENOSPC)."""
        if directory in self._watch or self.fd is None:
            return
        wd = self._calls.inotify_add_watch(self.fd, os.fsencode(directory), WATCHED)
        if wd < 0:
            raise _failed("inotify_add_watch", directory)
        with self._lock:
            self._watch[directory] = wd
            self._paths.setdefault(wd, set()).add(directory)

    def remove(self, directory: str) -> None:
        """Stop watching `directory` (the kernel's watch goes with its last path)."""
        with self._lock:
            wd = self._watch.pop(directory, None)
            if wd is None:
                return
            paths = self._paths.get(wd, set())
            paths.discard(directory)
            if not paths:
                self._paths.pop(wd, None)
                if self.fd is not None:
                    self._calls.inotify_rm_watch(self.fd, wd)  # EINVAL if gone already

    def read(self) -> tuple[list[tuple[str, str]], bool]:
        """The (directory, name) of each event since the last read, and whether the queue
        overflowed. A directory whose watch the kernel ended (it was removed, or its file
        system unmounted) is no longer watched: `add` it again to watch what is there now."""
        events: list[tuple[str, str]] = []
        overflowed = False
        while self.fd is not None:
            try:
                chunk = os.read(self.fd, _READ)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            with self._lock:
                overflowed |= self._parse(chunk, events)
        return events, overflowed

    def _parse(self, chunk: bytes, events: list[tuple[str, str]]) -> bool:
        overflowed, offset = False, 0
        while offset + _HEAD.size <= len(chunk):
            wd, mask, _cookie, size = _HEAD.unpack_from(chunk, offset)
            raw = chunk[offset + _HEAD.size : offset + _HEAD.size + size]
            offset += _HEAD.size + size
            if mask & IN_Q_OVERFLOW:
                overflowed = True
                continue
            name = os.fsdecode(raw.rstrip(b"\0"))
            paths = self._paths.get(wd, set())
            events.extend((path, name) for path in paths)
            if mask & IN_IGNORED:  # the kernel ended the watch
                for path in self._paths.pop(wd, set()):
                    self._watch.pop(path, None)
        return overflowed

    def close(self) -> None:
        with self._lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
                self._paths.clear()
                self._watch.clear()
