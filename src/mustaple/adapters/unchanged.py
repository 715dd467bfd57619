"""Files found as they should be, known unchanged until a file event says otherwise.

A running keeper looks at every staple file its sinks wrote (every 30 s: a stat of 100k files
at 100k certificates) to find one removed or replaced by something else. `Unchanged` lets such
a look skip the files nothing touched: a file found as it should be (`found`) is trusted to
stay so while its directory is watched (Linux inotify, `mustaple.adapters.inotify`), until an
event names it or its directory (removed, moved, unmounted), the kernel's queue overflows, or
`rescan` seconds have passed since the trust began to be given (then every file is looked at
once more). A file is trusted only from a look whose stat came after its directory was
watched: the look that adds a watch trusts nothing in that directory yet. Directories on a
file system whose changes this kernel does not all see (NFS, FUSE), or past the watch limit,
are never trusted (every look stats their files, as without events). Its own writes are
events too: a staple just written is looked at once more, then trusted.

Used from the threads that look at the files (one at a time, but one that hung may come back
later): its state is kept under a lock, and no system call that may hang is made under it.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable

from mustaple.adapters.inotify import Inotify, local_file_system

__all__ = ["Unchanged"]

_NOTHING = object()


class Unchanged:
    """Which files found as they should be are still so (see the module)."""

    def __init__(
        self,
        rescan: float,
        clock: Callable[[], float] = time.monotonic,
        open_inotify: Callable[[], Inotify] = Inotify,
    ) -> None:
        self.rescan, self._clock, self._open_inotify = rescan, clock, open_inotify
        self._lock = threading.Lock()
        self._inotify: Inotify | None = None
        self._off = False  # no inotify instance: nothing is ever trusted
        self._trusted: dict[str, object] = {}  # file -> what it was found holding
        self._in: dict[str, set[str]] = {}  # directory -> its trusted files
        self._refused: set[str] = set()  # directories not watched (not local, the limit)
        self._period = clock()  # when the trust given since began

    def begin(self) -> None:
        """At the start of a look: the files events named since the last one (or all of
        them, once `rescan` has passed or the queue overflowed) are trusted no more."""
        with self._lock:
            if self._clock() - self._period >= self.rescan:
                self._period = self._clock()
                self._forget_all()
            if self._inotify is None:
                return
            try:
                events, overflowed = self._inotify.read()
            except OSError:
                self._give_up()
                return
            if overflowed:
                self._forget_all()
                return
            for directory, name in events:
                if not name:  # the directory itself: its watch may be gone too
                    for path in self._in.pop(directory, set()):
                        self._trusted.pop(path, None)
                    continue
                path = os.path.join(directory, name)
                if self._trusted.pop(path, _NOTHING) is not _NOTHING:
                    self._in[directory].discard(path)

    def unchanged(self, path: str, holds: object) -> bool:
        """Whether `path` is known to hold `holds` still (no need to look at it)."""
        held = self._trusted.get(path, _NOTHING)
        return held is not _NOTHING and held == holds

    def found(self, path: str, holds: object) -> None:
        """`path` was found holding `holds`, by a look after the last `begin`: trusted from
        now on if its directory was watched before; else its directory is watched from now
        on (when it can be), and `path` trusted at a later look."""
        directory = os.path.dirname(path)
        with self._lock:
            inotify = self._instance()
            if inotify is None or directory in self._refused:
                return
            if directory in inotify:
                self._trusted[path] = holds
                self._in.setdefault(directory, set()).add(path)
                return
        try:  # outside the lock: a directory on a file system that hangs
            if local_file_system(directory):
                inotify.add(directory)
            else:
                self._refuse(directory)
        except OSError:  # not there, or the watch limit: looked at as without events
            self._refuse(directory)

    def forget(self, path: str) -> None:
        """`path` is not as it should be (or is not there): not trusted."""
        with self._lock:
            if self._trusted.pop(path, _NOTHING) is not _NOTHING:
                self._in[os.path.dirname(path)].discard(path)

    def _refuse(self, directory: str) -> None:
        with self._lock:
            self._refused.add(directory)

    def _instance(self) -> Inotify | None:
        """Called with the lock held."""
        if self._inotify is None and not self._off:
            try:
                self._inotify = self._open_inotify()
            except OSError:
                self._off = True
            else:
                weakref.finalize(self, self._inotify.close)
        return self._inotify

    def _forget_all(self) -> None:
        """Called with the lock held: a new period, directories refused tried again."""
        self._trusted.clear()
        self._in.clear()
        self._refused.clear()

    def _give_up(self) -> None:
        """Called with the lock held."""
        self._off = True
        self._forget_all()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
