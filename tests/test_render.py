"""One way to write a time, a duration and a held staple's life (mustaple.core.render)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mustaple.core.render import (
    counted,
    human_duration,
    human_time,
    iso,
    seconds_until,
    short_time,
    validity_json,
)

T = datetime(2026, 11, 28, 4, 5, 6, 789, tzinfo=UTC)


@dataclass
class Held:
    this_update: datetime
    effective_expiry: datetime


def test_each_time_format_is_one_shape_to_the_second() -> None:
    assert iso(T) == "2026-11-28T04:05:06Z"
    assert human_time(T) == "2026-11-28 04:05:06Z"
    assert short_time(iso(T)) == "28 Nov 04:05Z"
    assert short_time(iso(T), year=True) == "2026-11-28 04:05Z"


def test_no_time_is_null_in_json_never_in_sentences_and_a_dash_in_tables() -> None:
    assert (iso(None), human_time(None), short_time(None)) == (None, "never", "-")


def test_durations_and_seconds_left() -> None:
    assert human_duration(3 * 86400 + 4 * 3600 + 59) == "3d 4h"
    assert human_duration(-42) == "-42s"
    assert seconds_until(T + timedelta(seconds=90.6), T) == 91


def test_a_held_staples_life_is_three_keys_null_without_one() -> None:
    held = Held(T - timedelta(days=1), T + timedelta(days=3))
    assert validity_json(held, T) == {
        "this_update": "2026-11-27T04:05:06Z",
        "effective_expiry": "2026-12-01T04:05:06Z",
        "seconds_left": 3 * 86400,
    }
    assert validity_json(None, T) == dict.fromkeys(
        ("this_update", "effective_expiry", "seconds_left")
    )


def test_counts_are_singular_for_one() -> None:
    assert [counted(n, "sink") for n in (0, 1, 2)] == ["0 sinks", "1 sink", "2 sinks"]
    entries = [counted(n, "certificate entry", "certificate entries") for n in (1, 3)]
    assert entries == ["1 certificate entry", "3 certificate entries"]
