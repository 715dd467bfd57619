"""How Python's garbage collector is set: for a large batch, and for a keeper that runs.

The collector scans every object that may hold a reference cycle, young ones often and all of
them now and then. A keeper of 100k certificates holds millions of such objects (the
certificates, their lives, their staples), nearly all for as long as it runs, and makes few
cycles. Left as it is, the collector scanned them all about once a pass: 0.6 s each time, on
the event loop's thread, while the local responder answered nothing (bench/serving.py).

* `batch_collector`: while a batch runs (a `prime`, a start, a worker process), what existed
  before it is frozen and young collections are rarer.
* `paused`: no automatic collection during a sweep over every certificate (each pass makes
  several): a sweep makes many short-lived objects and no cycles, and at 100k they set off a
  collection of all that the pass had made, 40 ms at a time, while the responder waited.
* `Settled`: after each pass of `mustaple run`, what the keeper holds is frozen (Python's
  permanent generation: never scanned again), once the young objects' cycles are collected.
  A cycle that is garbage but was not young, or an object frozen while alive that later ends
  in a cycle (a closed connection, the keeper a reload replaced), would stay in memory: so
  every ANEW_EVERY, and at the next pass after a reload (`anew`), everything is unfrozen and
  scanned once.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator

__all__ = ["ANEW_EVERY", "BATCH_GC", "Settled", "batch_collector", "paused"]

BATCH_GC = 100_000  # allocations between young collections during a batch (see batch_collector)
ANEW_EVERY = 3600.0  # seconds between two scans of everything in a `Settled` process
_ENDED = [0]  # batches ended in this process: each unfroze everything (see `Settled`)
_PAUSES = [0, True]  # `paused` blocks inside now, and whether collecting was on before them


@contextlib.contextmanager
def batch_collector() -> Iterator[None]:
    """The garbage collector set for a large batch, while inside: what exists is frozen
    (never scanned again), and a young collection runs every BATCH_GC allocations, not every
    700. A batch makes many objects that live until its end and few reference cycles, so the
    default spends about a tenth of a 100k prime scanning them; cycles are still collected.
    At the end everything is unfrozen (a `Settled` process scans it all at its next settle)."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(BATCH_GC, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
        _ENDED[0] += 1


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No automatic collection while inside, for a sweep that makes many objects and no
    cycles (the objects it leaves are scanned at the next collection, as ever). Blocks may
    nest or overlap (coroutines of one loop): collecting resumes, if it was on before the
    first, when the last one ends."""
    if _PAUSES[0] == 0:
        _PAUSES[1] = gc.isenabled()
        gc.disable()
    _PAUSES[0] += 1
    try:
        yield
    finally:
        _PAUSES[0] -= 1
        if _PAUSES[0] == 0 and _PAUSES[1]:
            gc.enable()


class Settled:
    """The collector of a long-running process: `settle` after each unit of work (a pass)."""

    def __init__(
        self, anew_every: float = ANEW_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.anew_every, self.clock = anew_every, clock
        self._anew_at: float | None = None  # None: everything is scanned at the next settle
        self._batches = _ENDED[0]

    def settle(self) -> None:
        """Collect the cycles among the young objects, then freeze everything not frozen yet;
        when a scan of everything is due (the first time, every `anew_every` seconds, after
        `anew`), unfreeze and collect everything first."""
        now = self.clock()
        if self._anew_at is None or now >= self._anew_at or self._batches != _ENDED[0]:
            gc.unfreeze()
            gc.collect()
            self._anew_at, self._batches = now + self.anew_every, _ENDED[0]
        else:
            gc.collect(1)  # the young generations only: a full one scans what a pass left
        gc.freeze()

    def anew(self) -> None:
        """Scan everything at the next settle (what was frozen may have become garbage, such
        as the keeper a reload replaced)."""
        self._anew_at = None
