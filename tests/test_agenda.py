"""The agenda: things by the moment each falls due, asked again whenever their entry comes
up (the keeper's due certificates, and those whose time a tick may change)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mustaple.core.agenda import Agenda

T0 = datetime(2026, 12, 7, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


@dataclass
class Thing:
    name: str
    at: datetime | None


def agenda() -> Agenda[Thing]:
    return Agenda(lambda thing: thing.at, lambda thing: thing.name)


def names(things: list[Thing]) -> list[str]:
    return [thing.name for thing in things]


def test_the_things_due_come_once_each_in_the_order_of_their_moments_and_stay_due() -> None:
    queue = agenda()
    things = [Thing("c", T0 + 3 * MINUTE), Thing("a", T0 + MINUTE), Thing("b", T0 + 2 * MINUTE)]
    for thing in things:
        queue.add(thing)
        queue.add(thing)  # twice: still once
    assert queue.earliest() == T0 + MINUTE
    assert queue.due(T0) == []
    assert names(queue.due(T0 + 2 * MINUTE)) == ["a", "b"]
    assert names(queue.due(T0 + 2 * MINUTE)) == ["a", "b"]  # not dealt with: still due
    things[1].at = T0 + 10 * MINUTE  # dealt with: due later (no add needed)
    assert names(queue.due(T0 + 2 * MINUTE)) == ["b"]
    assert queue.earliest() == T0 + 2 * MINUTE
    things[2].at = None  # gone
    things[0].at = None
    assert queue.earliest() == T0 + 10 * MINUTE
    assert names(queue.due(T0 + 10 * MINUTE)) == ["a"]
    things[1].at = None
    assert queue.earliest() is None
    assert len(queue) == 0


def test_a_moment_moved_later_is_found_when_its_early_entry_comes_up() -> None:
    queue = agenda()
    thing = Thing("a", T0 + MINUTE)
    queue.add(thing)
    thing.at = T0 + 5 * MINUTE
    queue.add(thing)  # an earlier entry is queued: nothing more
    assert len(queue) == 1
    assert queue.due(T0 + 2 * MINUTE) == []
    assert queue.earliest() == T0 + 5 * MINUTE
    assert names(queue.due(T0 + 5 * MINUTE)) == ["a"]


def test_a_moment_moved_earlier_is_due_then_once_added_again() -> None:
    queue = agenda()
    thing = Thing("a", T0 + 10 * MINUTE)
    queue.add(thing)
    thing.at = T0 + MINUTE
    queue.add(thing)
    assert queue.earliest() == T0 + MINUTE
    assert names(queue.due(T0 + MINUTE)) == ["a"]
    thing.at = T0 + 10 * MINUTE  # back where it was: the old entry is still right
    assert queue.due(T0 + 5 * MINUTE) == []
    assert names(queue.due(T0 + 10 * MINUTE)) == ["a"]


def test_what_is_due_is_what_a_look_at_every_thing_finds_and_the_queue_stays_short() -> None:
    """1,000 things whose moments move (mostly later, as refreshes do; some earlier, as
    failures do), each added again when it moves: at every step the agenda agrees with
    a look at every thing, and it never holds more than about two entries a thing."""
    rng = random.Random(7)
    things = [Thing(f"t{n}", T0 + rng.randrange(1, 600) * MINUTE) for n in range(1000)]
    queue = agenda()
    for thing in things:
        queue.add(thing)
    now, longest = T0, 0
    for _ in range(200):
        now += 5 * MINUTE
        due = queue.due(now)
        expected = {t.name for t in things if t.at is not None and t.at <= now}
        assert {t.name for t in due} == expected
        assert len(due) == len(expected)
        for thing in due:  # dealt with: due again later, or gone
            thing.at = None if rng.random() < 0.05 else now + rng.randrange(1, 600) * MINUTE
        for thing in rng.sample(things, 20):  # and a few move earlier or later meanwhile
            if thing.at is not None:
                thing.at = now + rng.randrange(1, 600) * MINUTE
                queue.add(thing)
        moments = [t.at for t in things if t.at is not None]
        assert queue.earliest() == min(moments, default=None)
        longest = max(longest, len(queue))
    assert longest <= 2 * len(things)
