"""The keeper's look at its certificate files, in a thread that may hang.

A stat or a listing on a file system that does not answer (an NFS server gone away, a FUSE
daemon that hangs) blocks the thread that made it for as long as that lasts, and nothing can
cut it short. So each look runs in a daemon thread of its own (Python does not wait for it
at exit), and `Surveys.look` waits for it as long as it moves on. A look that stays at one
file (or one pattern's listing) for all of `patience` (`policy.watch_timeout`) has its
entry set aside as stuck: one error line names the file or pattern it was at, the entry's
files are kept as last seen (neither changed nor gone), and another look goes over the
other entries. The stuck entry is looked at again once its thread returns, and one line
says so (a reload's new keeper is handed the stuck entries, by their patterns). Meanwhile
the passes go on: the certificates held are refreshed and delivered, and a stop or a
reload is not held up by the look. A look whose thread cannot be started (the process's
limit of tasks reached) is not made: one error line, the files kept as last seen, and the
next pass tries again; a keeper's first look raises `NoThread` (a start, or a reload, fails
rather than begin with no files).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from mustaple.adapters.collector import paused
from mustaple.adapters.patience import NoThread, in_daemon_thread, until_stuck
from mustaple.core.clock import Clock, utc_now
from mustaple.core.render import human_duration

__all__ = ["Surveys", "Unanswered"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def _nothing(number: int) -> None:
    pass


@dataclass(frozen=True)
class Unanswered:
    """An entry whose look at its files has not answered: what the look was at (a file or
    a pattern), the entry's patterns, and since when it waits; or (`kind` "read") a file
    of the entry whose read has not answered (the keeper's `_hung_read`)."""

    at: str
    paths: tuple[str, ...]
    since: datetime
    kind: str = "look"


@dataclass(frozen=True)
class _Stuck:
    future: asyncio.Future[Any]
    unanswered: Unanswered


class Surveys:
    """Looks at the configured files that hang set aside, entry by entry (see the module)."""

    def __init__(
        self,
        patience: timedelta,
        entries: Sequence[Sequence[str]],
        clock: Clock = utc_now,
        carried: Surveys | None = None,
        forget: Callable[[int], None] | None = None,
    ) -> None:
        """`entries`: each `[[certificates]]` entry's patterns, in order. `carried`: the
        surveys of the keeper a reload replaces, whose stuck entries stay set aside here
        (by their patterns) until their looks return: a reload does not wait on them
        again, nor say them again, nor leave one more thread waiting. `forget` is told the
        number of an entry set aside or back (its next look is a whole one)."""
        self.patience, self.clock = patience, clock
        self._forget = forget or _nothing
        self.entries = [tuple(paths) for paths in entries]
        self._stuck: dict[tuple[str, ...], _Stuck] = {}  # by the entry's patterns
        self._no_thread = False  # the last look could not start its thread
        self._begun = False  # a look has started
        if carried is not None:  # an entry no longer configured: forgotten
            self._stuck.update((p, s) for p, s in carried._stuck.items() if p in self.entries)

    @property
    def stuck(self) -> frozenset[int]:
        """The entries set aside: their look had not answered at the last `look`."""
        return frozenset(n for n, paths in enumerate(self.entries) if paths in self._stuck)

    @property
    def unanswered(self) -> tuple[Unanswered, ...]:
        """The entries whose look has not answered yet (for /status and /metrics)."""
        return tuple(s.unanswered for s in self._stuck.values() if not s.future.done())

    def all_set_aside(self, quiet: Collection[int]) -> bool:
        """Whether no entry is to be looked at: each is `quiet` (nothing changed in its
        directories) or stuck, and at least one is quiet. Stuck entries that returned are
        taken back first."""
        self._returned()
        return bool(quiet) and len(self.stuck | set(quiet)) == len(self.entries)

    async def look(
        self,
        look: Callable[[Collection[int], list[object]], _T],
        stop: asyncio.Event,
        quiet: Collection[int] = (),
    ) -> _T | None:
        """What `look` found over every entry not stuck nor `quiet` (their files kept as
        last seen), or None once `stop` is set first (the look left to end in its thread)
        or when no thread could be started for it (NoThread at the first look).
        `look` is given the entries not to look at, and a list it keeps at the entry's
        number and the file or pattern it is at."""
        self._returned()
        while True:
            at: list[object] = [None, ""]
            skip = self.stuck | set(quiet)
            try:
                future = in_daemon_thread(functools.partial(look, skip, at), "mustaple-survey")
            except NoThread as exc:
                if not self._begun:  # a keeper's start: it would begin with no files
                    raise
                self._threadless(exc)
                return None
            self._begun = True
            if self._no_thread:
                self._no_thread = False
                log.info("certificate files: looked at again (a thread could be started)")
            with paused():  # a look makes an entry for each of 100k files: none collected
                await until_stuck(future, at, self.patience, stop)
            if future.done():
                return future.result()
            if stop.is_set() or not isinstance(at[0], int) or at[0] in self.stuck:
                return None
            self._set_aside(self.entries[at[0]], str(at[1]), future)

    def _threadless(self, exc: NoThread) -> None:
        """No look this time: one line, at the first of a run of them."""
        if not self._no_thread:
            log.error(
                "certificate files: not looked at: %s; the files are kept as last seen, and "
                "looked at at each pass until a thread can be started",
                exc,
            )
        self._no_thread = True

    def _set_aside(self, paths: tuple[str, ...], at: str, future: asyncio.Future[Any]) -> None:
        since = self.clock() - self.patience
        self._stuck[paths] = _Stuck(future, Unanswered(at, paths, since))
        self._forget(self.entries.index(paths))
        log.error(
            "certificate files: the look at %s has not answered in %s (a file system that "
            "does not answer, such as an NFS server gone away?); the files of %s are kept "
            "as last seen, and every other certificate is looked after as usual, until it "
            "answers",
            at,
            human_duration(self.patience.total_seconds()),
            ", ".join(paths),
        )

    def _returned(self) -> None:
        """The stuck entries whose look has ended are looked at again from now on."""
        for paths, stuck in list(self._stuck.items()):
            if stuck.future.done():
                del self._stuck[paths]
                self._forget(self.entries.index(paths))
                if not stuck.future.cancelled():
                    stuck.future.exception()  # what it found is out of date: not used
                waited = (self.clock() - stuck.unanswered.since).total_seconds()
                log.info(
                    "certificate files: the look at %s has answered, within %s; the files "
                    "of %s are looked at again",
                    stuck.unanswered.at,
                    human_duration(waited),
                    ", ".join(stuck.unanswered.paths),
                )
