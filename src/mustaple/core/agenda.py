"""A queue of the moments things fall due, so that a pass looks only at what is due.

Each thing is asked its moment (`moment`: when it falls due now, or None for never) when it
is added and again when its entry comes up: an entry is a reminder to look, never the truth.
A thing whose moment moves later keeps its early entry until that entry comes up and finds
it not due yet (it then goes back at its new moment); one whose moment moves earlier must be
added again (a keeper adds a certificate at each change of its state). At most one entry per
thing is kept ahead of its moment, so the queue stays about as long as the things it holds.

No I/O and no clock of its own: the time is passed in. A keeper of 100k certificates looked at
each of them three times a pass to find the few due (and their earliest moment, to sleep
until then); with an agenda a pass costs what is due.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Generic, TypeVar

__all__ = ["Agenda"]

T = TypeVar("T")


class Agenda(Generic[T]):
    """Things by the moment each falls due (`moment(thing)`), each known by `key(thing)`."""

    def __init__(
        self, moment: Callable[[T], datetime | None], key: Callable[[T], Hashable]
    ) -> None:
        self._moment = moment
        self._key = key
        self._heap: list[tuple[datetime, int, T]] = []
        self._ahead: dict[Hashable, datetime] = {}  # each thing's earliest entry
        self._count = itertools.count()  # entries of one moment keep their order

    def __len__(self) -> int:
        """How many entries are queued (some may be out of date)."""
        return len(self._heap)

    def add(self, thing: T) -> None:
        """Queue `thing` at its moment, unless an entry no later is already queued."""
        when = self._moment(thing)
        if when is None:
            return
        key = self._key(thing)
        ahead = self._ahead.get(key)
        if ahead is not None and ahead <= when:
            return
        self._ahead[key] = when
        heapq.heappush(self._heap, (when, next(self._count), thing))

    def due(self, now: datetime) -> list[T]:
        """The things due at `now` (moment at or before it), once each, in the order of their
        moments; they stay queued, due until their moment moves (or they go)."""
        found: dict[Hashable, T] = {}
        while self._heap and self._heap[0][0] <= now:
            thing = self._pop()
            when = self._moment(thing)
            if when is not None and when <= now:
                found.setdefault(self._key(thing), thing)
            else:
                self.add(thing)
        for thing in found.values():
            self.add(thing)
        return list(found.values())

    def earliest(self) -> datetime | None:
        """The earliest moment of the things queued (None: none is ever due)."""
        while self._heap:
            when, _, thing = self._heap[0]
            if self._moment(thing) == when:
                return when
            self.add(self._pop())  # gone, or due later: its entry goes to its moment
        return None

    def _pop(self) -> T:
        when, _, thing = heapq.heappop(self._heap)
        key = self._key(thing)
        if self._ahead.get(key) == when:
            del self._ahead[key]
        return thing
