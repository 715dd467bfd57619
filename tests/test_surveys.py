"""`Surveys`: a look that does not answer within its patience has its entry set aside (the
next look skips it), is looked at again once its thread returns, and a look's own error is
raised where the keeper waits. Real threads; the file system that hangs is in
tests/test_hung_files.py."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

import pytest

from mustaple.keeper.surveys import Surveys

PATIENCE = timedelta(milliseconds=600)  # wide: a loaded CI machine runs threads late
NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


def surveys() -> Surveys:
    return Surveys(PATIENCE, [(f"/entry{number}/*.pem",) for number in range(2)], lambda: NOW)


def test_a_look_that_hangs_sets_its_entry_aside_until_it_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    skipped: list[frozenset[int]] = []

    def look(skip: Collection[int], at: list[object]) -> str:
        skipped.append(frozenset(skip))
        at[:] = (0, "/entry0/a.pem")
        if 1 not in skip and not release.is_set():
            at[:] = (1, "/entry1/hang.pem")
            release.wait(10)  # hangs at entry 1 until released
        return "found"

    async def scenario() -> None:
        kept = surveys()
        assert await kept.look(look, asyncio.Event()) == "found"
        assert kept.stuck == {1}
        assert skipped == [frozenset(), frozenset({1})]
        (unanswered,) = kept.unanswered
        assert (unanswered.at, unanswered.paths) == ("/entry1/hang.pem", ("/entry1/*.pem",))
        assert unanswered.since == NOW - PATIENCE
        assert await kept.look(look, asyncio.Event()) == "found"  # still stuck: skipped
        assert skipped[-1] == {1}
        release.set()
        while kept.unanswered:
            await asyncio.sleep(0.01)
        assert await kept.look(look, asyncio.Event()) == "found"
        assert kept.stuck == set()
        assert skipped[-1] == set()

    with caplog.at_level(logging.INFO, logger="mustaple.keeper.surveys"):
        asyncio.run(scenario())
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 2, said
    assert said[0].startswith("certificate files: the look at /entry1/hang.pem has not answered")
    assert "the files of /entry1/*.pem are kept as last seen" in said[0]
    assert said[1].startswith("certificate files: the look at /entry1/hang.pem has answered")


def test_a_stop_ends_the_wait_and_a_looks_error_is_raised() -> None:
    def failing(skip: Collection[int], at: list[object]) -> str:
        raise ValueError("a bug in the look")

    release = threading.Event()

    def hanging(skip: Collection[int], at: list[object]) -> str:
        at[:] = (0, "/entry0/a.pem")
        release.wait(10)
        return "found, too late"

    async def scenario() -> None:
        with pytest.raises(ValueError, match="a bug in the look"):
            await surveys().look(failing, asyncio.Event())
        stop = asyncio.Event()
        stop.set()
        kept = Surveys(timedelta(seconds=30), [("/entry0/*.pem",)], lambda: NOW)
        assert await kept.look(hanging, stop) is None  # at once, not after 30 s
        assert kept.stuck == set()
        release.set()

    asyncio.run(scenario())


def test_a_slow_look_that_moves_on_is_waited_for() -> None:
    """Files that each answer within the patience, but all of them together in several
    times it (a slow network file system): the look is waited for, nothing set aside."""
    pace = threading.Event()

    def slow(skip: Collection[int], at: list[object]) -> str:
        for index in range(8):
            at[:] = (0, f"/entry0/{index}.pem")
            pace.wait(PATIENCE.total_seconds() / 4)  # a quarter of the patience for each file
        return "found"

    async def scenario() -> None:
        kept = surveys()
        assert await kept.look(slow, asyncio.Event()) == "found"
        assert kept.stuck == set()

    asyncio.run(scenario())


def test_a_reloads_surveys_keep_what_hangs_set_aside_by_its_patterns() -> None:
    """The keeper a reload builds is handed the last one's surveys: an entry still stuck
    stays set aside by its patterns, wherever it is now in the configuration, without a
    new look at it; an entry no longer configured is forgotten with its look."""
    release = threading.Event()

    def hangs_at_entry1(skip: Collection[int], at: list[object]) -> str:
        if 1 not in skip:
            at[:] = (1, "/entry1/hang.pem")
            release.wait(10)
        return "found"

    async def scenario() -> None:
        before = surveys()
        assert await before.look(hangs_at_entry1, asyncio.Event()) == "found"
        assert before.stuck == {1}
        entries = [("/entry1/*.pem",), ("/new/*.pem",)]  # reordered, and one new
        after = Surveys(PATIENCE, entries, lambda: NOW, carried=before)
        assert after.stuck == {0}
        (unanswered,) = after.unanswered
        assert unanswered.at == "/entry1/hang.pem"
        looked: list[frozenset[int]] = []

        def look(skip: Collection[int], at: list[object]) -> str:
            looked.append(frozenset(skip))
            return "found"

        assert await after.look(look, asyncio.Event()) == "found"
        assert looked == [{0}]
        gone = Surveys(PATIENCE, [("/new/*.pem",)], lambda: NOW, carried=before)
        assert gone.stuck == set()
        assert gone.unanswered == ()
        release.set()

    asyncio.run(scenario())
