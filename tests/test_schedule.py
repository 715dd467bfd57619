"""Refresh and retry decisions, driven by a fake clock: a week of refreshes in microseconds."""

from __future__ import annotations

import functools
import random
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.x509 import ocsp

from mustaple.core.render import human_duration
from mustaple.core.schedule import (
    SchedulePolicy,
    alert_level,
    hurried,
    hurried_note,
    issuer_retry,
    next_refresh,
    next_retry,
    refresh_floor,
    refresh_point,
)
from mustaple.core.severity import Severity
from mustaple.core.verify import Signer, Staple

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def staple(this_update: datetime, lifetime: timedelta = 4 * DAY) -> Staple:
    return Staple(
        der=b"",
        serial=1,
        status=ocsp.OCSPCertStatus.GOOD,
        produced_at=this_update,
        this_update=this_update,
        next_update=this_update + lifetime,
        effective_expiry=this_update + lifetime,
        signer=Signer.ISSUER,
        signer_name="CN=test",
        hash_name="sha1",
    )


def test_refresh_half_way_minus_jitter() -> None:
    held = staple(T0)
    assert refresh_point(held) == T0 + 2 * DAY
    assert next_refresh(held, T0, dice=lambda: 0.0) == T0 + 2 * DAY
    assert next_refresh(held, T0, dice=lambda: 0.999) == T0 + 2 * DAY - 0.4 * DAY * 0.999


def test_refresh_never_sooner_than_the_floor_while_it_costs_no_expiry() -> None:
    """A responder serving an answer already past its refresh point is not asked again at
    once, and again: `min_interval` after the fetch, while the answer has time for it."""
    held = staple(T0 - 3 * DAY)  # fetched at T0 with a day left
    assert next_refresh(held, T0, dice=lambda: 0.5) == T0 + timedelta(minutes=5)
    assert not hurried(held, T0)
    assert hurried_note(held, T0) is None


MINUTE = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("lifetime", "age", "min_interval"),
    [
        (4 * MINUTE, timedelta(0), 5 * MINUTE),  # answers shorter than the floor
        (30 * MINUTE, timedelta(0), HOUR),  # a CA's 30-minute answers, min_interval = "1h"
        (4 * DAY, 4 * DAY - 8 * MINUTE, 5 * MINUTE),  # thisUpdate well in the past
        (4 * DAY, 4 * DAY - HOUR, DAY),
    ],
)
def test_the_floor_never_lets_the_staple_expire_before_the_refresh(
    lifetime: timedelta, age: timedelta, min_interval: timedelta
) -> None:
    """`min_interval` past the staple's expiry (or past the share of its time left that a
    refresh is planned at) gives way: the refresh comes at that share of the time left, and
    the staple is `hurried`, with a note naming both durations."""
    policy = SchedulePolicy(min_interval=min_interval)
    held = staple(T0 - age, lifetime)
    left = held.effective_expiry - T0
    for roll in (0.0, 0.5, 0.999):
        when = next_refresh(held, T0, dice=functools.partial(float, roll), policy=policy)
        assert T0 < when < held.effective_expiry
        assert when - T0 <= left * policy.refresh_at
        assert when - T0 >= left * (policy.refresh_at - policy.jitter)
    assert hurried(held, T0, policy)
    note = hurried_note(held, T0, policy)
    assert note is not None
    assert f"had {human_duration(left.total_seconds())} left when fetched" in note
    assert f"policy.min_interval ({human_duration(min_interval.total_seconds())})" in note


def test_the_same_late_answer_again_and_again_is_asked_for_a_few_times_only() -> None:
    """A responder that serves one answer until it expires (`min_interval = "1h"`, two hours
    left): `min_interval` after the fetch while the answer has time for it, then at shares of
    what is left, several times before it expires (not once, at its expiry), never sooner than
    `retry_min` apart: its last hour costs a few requests, not hundreds."""
    policy = SchedulePolicy(min_interval=HOUR)
    held = staple(T0 - 4 * DAY + 2 * HOUR)
    now, lefts = T0, []
    while now < held.effective_expiry:
        now = next_refresh(held, now, dice=lambda: 0.5, policy=policy)
        lefts.append(held.effective_expiry - now)
    assert lefts[0] == HOUR
    assert lefts[-1] == timedelta(0)  # the last one at the expiry, not past it
    assert 5 <= len(lefts) <= 20, lefts


def test_min_interval_is_kept_whenever_the_staple_has_time_for_it() -> None:
    """Random windows, ages at the fetch, floors and dice: the refresh is never past the
    expiry; never sooner than `min_interval` unless the staple is hurried."""
    rng = random.Random(11)
    for _ in range(2000):
        lifetime = timedelta(seconds=rng.uniform(60, 10 * 86400))
        age = lifetime * rng.uniform(0, 0.999)
        policy = SchedulePolicy(min_interval=timedelta(seconds=rng.uniform(1, 86400)))
        held = staple(T0 - age, lifetime)
        when = next_refresh(held, T0, dice=rng.random, policy=policy)
        assert when <= held.effective_expiry
        assert hurried(held, T0, policy) or when >= T0 + policy.min_interval


def test_the_floor_alone_is_the_floor_of_next_refresh() -> None:
    """`refresh_floor` (what a fleet member keeps when another got the same answer again) is
    `next_refresh` without the refresh point: the same dice, the same time."""
    rng = random.Random(12)
    for _ in range(2000):
        lifetime = timedelta(seconds=rng.uniform(60, 10 * 86400))
        held = staple(T0 - lifetime * rng.uniform(0, 0.999), lifetime)
        policy = SchedulePolicy(min_interval=timedelta(seconds=rng.uniform(1, 86400)))
        roll = functools.partial(float, rng.random())
        floor = refresh_floor(held, T0, roll, policy)
        assert floor <= next_refresh(held, T0, roll, policy) <= max(floor, refresh_point(held))
        assert floor <= held.effective_expiry
        assert floor == T0 + policy.min_interval or hurried(held, T0, policy)


def test_a_week_of_refreshes_keeps_a_fresh_staple() -> None:
    """Responder issues 4-day responses; we refresh and never let a staple run past 60%."""
    dice = random.Random(7).random
    now, held = T0, staple(T0)
    fetches = 0
    while now < T0 + 7 * DAY:
        now = next_refresh(held, now, dice)
        assert now < held.effective_expiry
        assert held.fraction_left(now) >= 0.4
        held, fetches = staple(now), fetches + 1
    assert 3 <= fetches <= 5


def test_retry_backoff_grows_and_is_capped() -> None:
    top = [next_retry(n, T0, None, dice=lambda: 0.999999) - T0 for n in range(1, 12)]
    assert top[0] < timedelta(seconds=30)
    assert top[1] < timedelta(seconds=60)
    assert top == sorted(top)
    assert max(top) <= HOUR
    assert next_retry(1, T0, None, dice=lambda: 0.0) == T0 + timedelta(seconds=5)


def test_the_longest_retry_base_allowed_never_overflows() -> None:
    """retry_base may be a day: doubled 30 times that was past the largest timedelta, so a
    certificate failing for a month stopped its keeper's pass with an OverflowError."""
    policy = SchedulePolicy(retry_base=DAY, retry_max=DAY)
    for failures in (1, 31, 10**6):
        assert next_retry(failures, T0, None, dice=lambda: 0.5, policy=policy) == T0 + DAY / 2


def test_retry_is_more_urgent_near_expiry() -> None:
    far = next_retry(10, T0, T0 + 3 * DAY, dice=lambda: 0.999) - T0
    near = next_retry(10, T0, T0 + 20 * timedelta(minutes=1), dice=lambda: 0.999) - T0
    assert far > 50 * timedelta(minutes=1)
    assert near <= timedelta(minutes=5)


def test_outage_until_expiry_gives_many_tries() -> None:
    """With the responder down from the refresh point on, we keep trying until expiry."""
    dice = random.Random(3).random
    held = staple(T0)
    now, failures, tries_last_day = refresh_point(held), 0, 0
    while now < held.effective_expiry:
        failures += 1
        now = next_retry(failures, now, held.effective_expiry, dice)
        tries_last_day += now > held.effective_expiry - DAY
    assert tries_last_day >= 24


def test_alerts_escalate() -> None:
    held = staple(T0)
    assert alert_level(held, T0 + DAY) is Severity.OK
    assert alert_level(held, T0 + 3 * DAY + HOUR) is Severity.WARNING
    assert alert_level(held, T0 + 4 * DAY - 5 * HOUR) is Severity.CRITICAL
    assert alert_level(None, T0) is Severity.CRITICAL


@pytest.mark.parametrize(
    "kwargs",
    [{"refresh_at": 1.0}, {"refresh_at": 0.5, "jitter": 0.6}, {"retry_min": 2 * HOUR}],
)
def test_policy_rejects_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        SchedulePolicy(**kwargs)  # type: ignore[arg-type]


def test_failures_start_at_one() -> None:
    with pytest.raises(ValueError, match="starting at 1"):
        next_retry(0, T0, None, dice=lambda: 0.5)


def test_a_failed_issuer_download_waits_from_retry_base_doubling_up_to_retry_max() -> None:
    policy = SchedulePolicy(
        retry_min=timedelta(seconds=40), retry_base=timedelta(seconds=30), retry_max=HOUR
    )
    waits = [issuer_retry(n, policy).total_seconds() for n in (1, 2, 3, 7, 8, 1000)]
    assert waits == [40, 60, 120, 1920, 3600, 3600]
    assert issuer_retry(1) == timedelta(seconds=30)
    with pytest.raises(ValueError, match="starting at 1"):
        issuer_retry(0)
