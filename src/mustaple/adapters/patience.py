"""Work on files that may hang, in daemon threads waited for while it moves on.

A stat, a read, a write or a listing on a file system that does not answer (an NFS server
gone away, a FUSE daemon that hangs) blocks the thread that made it for as long as that
lasts, and nothing can cut it short. So such work runs in a daemon thread of its own
(`in_daemon_thread`: Python does not wait for it at exit), and is waited for as long as it
moves on (`until_stuck`): the work keeps a list, `at`, saying where it is (a file, a
listing), and once that stays the same for a whole `patience`, the waiter goes on without
it. `Patient` does this for a sink's staple files: work that stays at one file for its
patience fails with `FilesHang` naming that file, and so does any work asked for while it
still waits (one thread at a time waits on a file system that hangs, not one more at each
delivery). The keeper's look at the certificate files (`mustaple.keeper.surveys`) does it
entry by entry. A thread that cannot be started (the process's limit of tasks reached) is
`NoThread`, a `FilesHang`: the work was not done, and is tried again later like a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from mustaple.core.render import human_duration

__all__ = [
    "FilesHang",
    "NoThread",
    "Patient",
    "in_daemon_thread",
    "thread_problem",
    "until_stuck",
]

_T = TypeVar("_T")


class FilesHang(OSError):
    """Work on files that stayed at one file for a whole patience (or was not started
    because earlier work still waits there): its message names the file."""


class NoThread(FilesHang):
    """Work on files not started because no thread could be started for it: the process has
    reached its limit of tasks. Like a hang, it is done at a later try."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(
            f"no thread could be started ({exc}): mustaple has reached its limit of tasks "
            "(systemd's TasksMax, the pids.max of its cgroup, or ulimit -u): raise it"
        )


def thread_problem(exc: BaseException) -> str | None:
    """The line of `exc` when it says that a thread could not be started (`NoThread`, or
    the RuntimeError of `threading.Thread.start` and of the executors); else None."""
    if isinstance(exc, NoThread):
        return str(exc)
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return str(NoThread(exc))
    return None


def in_daemon_thread(work: Callable[[], _T], name: str) -> asyncio.Future[_T]:
    """`work()` run in a new daemon thread called `name`; its outcome in the future.
    NoThread when no thread can be started."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def run() -> None:
        try:
            result = work()
        except Exception as exc:  # the work's own: raised where it is waited for
            outcome = functools.partial(_failed, future, exc)
        else:
            outcome = functools.partial(_found, future, result)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process ends
            loop.call_soon_threadsafe(outcome)

    try:
        threading.Thread(target=run, name=name, daemon=True).start()
    except RuntimeError as exc:
        raise NoThread(exc) from None
    return future


def _found(future: asyncio.Future[_T], result: _T) -> None:
    if not future.done():
        future.set_result(result)


def _failed(future: asyncio.Future[Any], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


async def until_stuck(
    future: asyncio.Future[Any],
    at: list[object],
    patience: timedelta,
    stop: asyncio.Event | None = None,
) -> None:
    """Until `future` is done, `stop` is set, or `at` stays the same for all of `patience`
    (work over many files on a slow file system takes as long as it takes, while it moves
    on)."""
    stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
    waited = {future} if stopped is None else {future, stopped}
    try:
        while True:
            place = list(at)
            await asyncio.wait(
                waited, timeout=patience.total_seconds(), return_when=asyncio.FIRST_COMPLETED
            )
            if future.done() or (stop is not None and stop.is_set()) or at == place:
                return
    finally:
        if stopped is not None:
            stopped.cancel()


class Patient:
    """A sink's work on its staple files, in daemon threads (see the module)."""

    def __init__(
        self,
        patience: timedelta,
        describe: Callable[[object], str] = str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.patience, self.describe, self.clock = patience, describe, clock
        self._waiting: tuple[asyncio.Future[Any], list[object], float] | None = None

    async def run(self, work: Callable[[list[object]], _T], where: object) -> _T:
        """`work(at)`'s result, or FilesHang. `at[0]` starts at `where`, and `work` keeps
        it at what it works on (`describe` names that: a file)."""
        self._still_waiting()
        at: list[object] = [where]
        future = in_daemon_thread(functools.partial(work, at), "mustaple-files")
        await until_stuck(future, at, self.patience)
        if future.done():
            return future.result()
        self._waiting = (future, at, self.clock())
        raise FilesHang(
            f"{self.describe(at[0])} has not answered in "
            f"{human_duration(self.patience.total_seconds())} (a file system that hangs, "
            "such as an NFS server gone away?)"
        )

    @property
    def waiting_at(self) -> object | None:
        """What earlier work still waits at (a file), or None."""
        if self._waiting is None or self._waiting[0].done():
            return None
        return self._waiting[1][0]

    def _still_waiting(self) -> None:
        """FilesHang while earlier work still waits; else forget it (its outcome is not
        used: the work it did is found by the next, as it is on disk)."""
        if self._waiting is None:
            return
        future, at, since = self._waiting
        if not future.done():
            waited = human_duration(self.clock() - since + self.patience.total_seconds())
            raise FilesHang(
                f"{self.describe(at[0])} has not answered for {waited} (a file system that "
                "hangs, such as an NFS server gone away?): nothing more is done there until "
                "it answers"
            )
        self._waiting = None
        if not future.cancelled():
            future.exception()
