"""The garbage collector's settings: for a batch, and settled after each pass of a keeper."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from mustaple.adapters.collector import BATCH_GC, Settled, batch_collector, paused


class Node:
    """An object that can be in a reference cycle and be watched by a weak reference."""

    def __init__(self) -> None:
        self.other: object = None


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def cycle() -> weakref.ref[Node]:
    """A reference cycle nobody else holds (garbage only the collector frees), watched."""
    node = Node()
    node.other = node
    return weakref.ref(node)


def held_cycle() -> tuple[list[Node], weakref.ref[Node]]:
    """A cycle held by the returned list, watched: garbage once the list lets it go."""
    node = Node()
    node.other = node
    return [node], weakref.ref(node)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_runs_with_the_collector_set_for_it_and_puts_it_back() -> None:
    before = gc.get_threshold()
    with batch_collector():
        assert gc.get_threshold() == (BATCH_GC, *before[1:])
        assert gc.get_freeze_count() > 0
        watched = cycle()
        assert gc.collect() >= 1  # cycles are still collected
        assert watched() is None
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_settle_collects_the_cycles_made_since_the_last_then_freezes_the_rest() -> None:
    settled = Settled(clock=Clock())
    settled.settle()
    frozen = gc.get_freeze_count()
    watched = cycle()
    kept = [Node() for _ in range(100)]
    settled.settle()
    assert watched() is None  # collected before the freeze, not frozen with the rest
    assert gc.get_freeze_count() >= frozen + len(kept)


def test_what_was_frozen_alive_and_became_garbage_waits_for_a_scan_of_everything() -> None:
    clock = Clock()
    settled = Settled(anew_every=3600.0, clock=clock)
    holder, watched = held_cycle()
    settled.settle()  # the cycle is alive: frozen with the rest
    holder.clear()  # now garbage, but frozen: a pass's settle does not scan it
    clock.now = 3599.0
    settled.settle()
    gc.collect()
    assert watched() is not None
    clock.now = 3600.0  # the hour is over: everything is scanned once
    settled.settle()
    assert watched() is None


def test_anew_scans_everything_at_the_next_settle() -> None:
    settled = Settled(clock=Clock())
    holder, watched = held_cycle()
    settled.settle()
    holder.clear()  # as the keeper a reload replaced
    settled.settle()
    assert watched() is not None
    settled.anew()
    settled.settle()
    assert watched() is None


def test_after_a_batch_unfroze_everything_the_next_settle_scans_it_all() -> None:
    settled = Settled(clock=Clock())
    holder, watched = held_cycle()
    settled.settle()
    with batch_collector():
        holder.clear()
    settled.settle()
    assert watched() is None


def test_no_collection_runs_inside_overlapping_pauses_and_collecting_resumes_after() -> None:
    """A sweep over 100k certificates set off a collection of all the pass had made (40 ms
    while the responder waited): none runs inside `paused`, whose blocks overlap when two
    coroutines sweep at once; collecting resumes when the last one ends."""
    first, second = paused(), paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # ends before the block that began after it
    watched = cycle()
    for _ in range(10 * gc.get_threshold()[0]):
        Node()  # allocations that would set off young collections
    assert not gc.isenabled()
    assert watched() is not None
    second.__exit__(None, None, None)
    assert gc.isenabled()
    gc.collect(0)
    assert watched() is None


def test_a_pause_leaves_a_collector_that_was_off_off() -> None:
    gc.disable()
    try:
        with paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
