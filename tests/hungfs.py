"""A real file system that hangs: a FUSE mount whose daemon never answers a look-up of the
names it is given, as a dead NFS mount does (a stat of such a file blocks until the daemon
goes away). With `reads`, names whose look-up answers (a regular file of 1,000 bytes: a stat
answers, as from an NFS attribute cache) but whose open never does. Everything else is an
empty directory.

`HungFS(names, reads)` mounts it on a new directory (root only: CI runs as root) with its daemon in
a child process (this file run as a script, speaking the kernel's FUSE protocol on
/dev/fuse). `release()` kills the daemon: every call waiting on it then fails with
ENOTCONN, as when an NFS server comes back and says the file is not there. Leaving the
`with` block releases it and detaches the mount.
"""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["HungFS"]

_IN = struct.Struct("<IIQQIIIHH")  # fuse_in_header
_OUT = struct.Struct("<IiQ")  # fuse_out_header
_LOOKUP, _FORGET, _GETATTR, _OPEN, _INIT, _INTERRUPT, _DESTROY = 1, 2, 3, 14, 26, 36, 38
_BATCH_FORGET = 42
_SIZE = 1000  # of each file whose open hangs
_ENOENT, _ENOSYS = 2, 38
_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2


class HungFS:
    """A FUSE file system mounted at `self.root` whose look-ups of `names` never answer, and
    whose files `reads` can be stat-ed but never opened."""

    def __init__(self, names: list[str], reads: list[str] | None = None) -> None:
        self.names = names + [f"read:{name}" for name in reads or ()]
        self.root = Path(tempfile.mkdtemp(prefix="mustaple-hungfs-"))
        self._daemon: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self._daemon = subprocess.Popen(
            [sys.executable, __file__, str(self.root), *self.names],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self._daemon.stdout is not None
        said = self._daemon.stdout.readline().strip()
        if said != "mounted":
            self._daemon.kill()
            raise RuntimeError(f"the FUSE file system was not mounted (root only): {said}")
        return self

    def release(self) -> None:
        """The daemon gone: what waited on it fails (ENOTCONN), and so does what comes."""
        if self._daemon is not None and self._daemon.poll() is None:
            self._daemon.kill()
            self._daemon.wait(10)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.umount2(str(self.root).encode(), _MNT_DETACH)
        self.root.rmdir()


def _attributes(node: int, mode: int, size: int = 0) -> bytes:
    """fuse_attr: ino, size, blocks, three times, their nanoseconds, mode, nlink, uid, gid,
    rdev, blksize, flags."""
    fields = (node, size, 0, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0, 0, 4096, 0)
    return struct.pack("<QQQQQQIIIIIIIIII", *fields)


def _serve(root: str, hung: set[bytes], reads: list[bytes]) -> None:
    device = os.open("/dev/fuse", os.O_RDWR)
    options = f"fd={device},rootmode=40000,user_id=0,group_id=0".encode()
    libc = ctypes.CDLL(None, use_errno=True)
    flags = _MS_NOSUID | _MS_NODEV
    if libc.mount(b"mustaple-hungfs", root.encode(), b"fuse.hungfs", flags, options) != 0:
        print(f"mount: {os.strerror(ctypes.get_errno())}", flush=True)
        return
    print("mounted", flush=True)

    def reply(unique: int, payload: bytes = b"", error: int = 0) -> None:
        os.write(device, _OUT.pack(_OUT.size + len(payload), -error, unique) + payload)

    nodes = {name: 2 + index for index, name in enumerate(reads)}  # the root is node 1

    def attributes(node: int) -> bytes:
        return _attributes(node, 0o100644, _SIZE) if node > 1 else _attributes(1, 0o40755)

    while True:
        request = os.read(device, 1 << 20)
        length, opcode, unique, node = _IN.unpack_from(request)[:4]
        body = request[_IN.size : length]
        name = body.rstrip(b"\0")
        if opcode == _INIT:  # protocol 7.31: the kernel speaks it too
            init = struct.pack("<IIIIHHIIHHII", 7, 31, 0, 0, 0, 0, 4096, 1, 0, 0, 0, 0)
            reply(unique, init + bytes(24))
        elif opcode == _LOOKUP and name in hung:
            continue  # never answered: the caller waits until the daemon goes away
        elif opcode == _LOOKUP and name in nodes:  # fuse_entry_out: nothing cached
            entry = struct.pack("<QQQQII", nodes[name], 0, 0, 0, 0, 0)
            reply(unique, entry + attributes(nodes[name]))
        elif opcode == _LOOKUP:
            reply(unique, error=_ENOENT)
        elif opcode == _GETATTR:
            reply(unique, struct.pack("<QII", 0, 0, 0) + attributes(node))
        elif opcode == _OPEN and node > 1:
            continue  # never answered, as the look-up above
        elif opcode in (_FORGET, _BATCH_FORGET, _INTERRUPT):
            continue  # no answer is expected
        elif opcode == _DESTROY:
            reply(unique)
            return
        else:
            reply(unique, error=_ENOSYS)


if __name__ == "__main__":
    given = [name.encode() for name in sys.argv[2:]]
    opened = [name.removeprefix(b"read:") for name in given if name.startswith(b"read:")]
    _serve(sys.argv[1], {name for name in given if not name.startswith(b"read:")}, opened)
