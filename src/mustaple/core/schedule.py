"""When to refresh a staple and when to retry a failure. Pure: the clock and dice are passed in.

- A held staple is refreshed at a point of its validity window (default: half way from
  thisUpdate to the effective expiry), moved earlier by up to `jitter` of the window so that a
  fleet of certificates issued together does not refresh together, and never sooner than
  `min_interval` after the last fetch, so that a responder serving answers already past that
  point is not asked again at once, and again. The floor never costs an expiry: when
  `min_interval` is more than `refresh_at` of the time the staple had left when fetched (the
  responder's answers are shorter than `min_interval`, or come late in their window: the
  staple is `hurried`), the refresh comes at that share of the time left instead (jittered
  likewise; never sooner than `retry_min` after the fetch, unless the staple expires sooner).
- After a failure, the next try comes after an exponential backoff with full jitter, but
  never later than a quarter of the time left before the staple in hand expires, so there are
  always several more tries before expiry, more urgent as it nears.
- An issuer download (an AIA caIssuers URL) that failed is left alone for `retry_base`,
  doubled at each further failure up to `retry_max`: no jitter, one URL is asked once for
  every certificate of its CA.
- Alerts (on the one severity scale, `mustaple.core.severity`) escalate as the expiry
  approaches with no fresh staple.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from mustaple.core.render import human_duration
from mustaple.core.severity import Severity
from mustaple.core.verify import Dated, Staple

__all__ = [
    "SchedulePolicy",
    "alert_level",
    "hurried",
    "hurried_note",
    "issuer_retry",
    "next_refresh",
    "next_retry",
    "refresh_floor",
]

Dice = Callable[[], float]  # uniform in [0, 1)


@dataclass(frozen=True, slots=True)
class SchedulePolicy:
    """Knobs of the refresh schedule, with the defaults of docs/configuration.md."""

    refresh_at: float = 0.5  # fraction of the window after thisUpdate
    jitter: float = 0.1  # fraction of the window the refresh may move earlier
    min_interval: timedelta = timedelta(minutes=5)
    retry_base: timedelta = timedelta(seconds=30)
    retry_max: timedelta = timedelta(hours=1)
    retry_min: timedelta = timedelta(seconds=5)
    warn_left: float = 0.25  # alert WARNING when less than this share of the window is left
    critical_left: timedelta = timedelta(hours=6)

    def __post_init__(self) -> None:
        if not 0 < self.refresh_at < 1:
            raise ValueError("refresh_at must be between 0 and 1 (a share of the window)")
        if not 0 <= self.jitter < self.refresh_at:
            raise ValueError("jitter must be at least 0 and less than refresh_at")
        if self.retry_min > self.retry_max:
            raise ValueError("retry_min must not exceed retry_max")


DEFAULT_SCHEDULE = SchedulePolicy()


def refresh_point(staple: Dated, policy: SchedulePolicy = DEFAULT_SCHEDULE) -> datetime:
    """The nominal refresh time, before jitter and floors."""
    window = staple.effective_expiry - staple.this_update
    return staple.this_update + window * policy.refresh_at


def next_refresh(
    staple: Staple,
    last_fetch: datetime,
    dice: Dice,
    policy: SchedulePolicy = DEFAULT_SCHEDULE,
) -> datetime:
    """When to fetch again after obtaining `staple` (fetched at `last_fetch`): see the
    module docstring."""
    share = _share(dice, policy)
    when = staple.this_update + (staple.effective_expiry - staple.this_update) * share
    return max(when, _floor(staple, last_fetch, share, policy))


def refresh_floor(
    staple: Dated, last_fetch: datetime, dice: Dice, policy: SchedulePolicy = DEFAULT_SCHEDULE
) -> datetime:
    """The soonest `staple`, fetched at `last_fetch`, is fetched again, whatever its refresh
    point: `min_interval` later, or sooner when it is `hurried` (the floor of `next_refresh`;
    a fleet member keeps it when another member got the same answer again)."""
    return _floor(staple, last_fetch, _share(dice, policy), policy)


def _share(dice: Dice, policy: SchedulePolicy) -> float:
    """The share of a window at which a refresh comes, jittered earlier."""
    return policy.refresh_at - policy.jitter * dice()


def _floor(staple: Dated, last_fetch: datetime, share: float, policy: SchedulePolicy) -> datetime:
    if not hurried(staple, last_fetch, policy):
        return last_fetch + policy.min_interval
    left = max(staple.effective_expiry - last_fetch, timedelta(0))
    return last_fetch + max(left * share, min(policy.retry_min, left))


def hurried(staple: Dated, fetched_at: datetime, policy: SchedulePolicy = DEFAULT_SCHEDULE) -> bool:
    """Whether `min_interval` after the fetch is more than `refresh_at` of the time `staple`
    had left then: waiting that long could let it expire before the next refresh, so the
    keeper refreshes sooner than `min_interval` (`next_refresh`)."""
    return policy.min_interval > (staple.effective_expiry - fetched_at) * policy.refresh_at


def hurried_note(
    staple: Dated, fetched_at: datetime, policy: SchedulePolicy = DEFAULT_SCHEDULE
) -> str | None:
    """What to tell the operator, in one line, when `staple` is `hurried`; else None."""
    if not hurried(staple, fetched_at, policy):
        return None
    left = max((staple.effective_expiry - fetched_at).total_seconds(), 0.0)
    return (
        f"the responder's answer had {human_duration(left)} left when fetched, too little for "
        f"policy.min_interval ({human_duration(policy.min_interval.total_seconds())}): the "
        "keeper refreshes sooner than min_interval, before the answer expires; set "
        f"min_interval below {human_duration(left * policy.refresh_at)} to keep to it"
    )


def next_retry(
    failures: int,
    now: datetime,
    expiry: datetime | None,
    dice: Dice,
    policy: SchedulePolicy = DEFAULT_SCHEDULE,
) -> datetime:
    """When to try again after `failures` consecutive failures (1 for the first).

    `expiry` is the effective expiry of the staple in hand, if any.
    """
    if failures < 1:
        raise ValueError("failures counts consecutive failures, starting at 1")
    ceiling = min(policy.retry_max, policy.retry_base * (1 << min(failures - 1, 20)))
    if expiry is not None and expiry > now:
        ceiling = min(ceiling, (expiry - now) / 4)
    delay = max(policy.retry_min, ceiling * dice())
    return now + delay


def issuer_retry(failures: int, policy: SchedulePolicy = DEFAULT_SCHEDULE) -> timedelta:
    """How long an issuer download that failed `failures` times in a row (1 for the first)
    is left alone: `retry_base`, doubled at each further failure, within `retry_min` and
    `retry_max`."""
    if failures < 1:
        raise ValueError("failures counts consecutive failures, starting at 1")
    wait = policy.retry_base * (1 << min(failures - 1, 20))
    return max(policy.retry_min, min(wait, policy.retry_max))


def critical_left(staple: Dated, policy: SchedulePolicy = DEFAULT_SCHEDULE) -> timedelta:
    """How little time left makes a staple's nearing expiry CRITICAL: `critical_left` (6
    hours), or half the WARNING share of a window too short for that (a responder's 2-hour
    answers would be CRITICAL from the moment they are fetched)."""
    window = staple.effective_expiry - staple.this_update
    return min(policy.critical_left, window * (policy.warn_left / 2))


def alert_level(
    staple: Staple | None, now: datetime, policy: SchedulePolicy = DEFAULT_SCHEDULE
) -> Severity:
    """How worried the keeper is about a certificate whose freshest valid staple is `staple`:
    WARNING when refreshing is overdue (the window is running out), CRITICAL when expiry is
    near (or passed) with no fresh staple."""
    if staple is None or staple.effective_expiry - now <= critical_left(staple, policy):
        return Severity.CRITICAL
    if staple.fraction_left(now) < policy.warn_left:
        return Severity.WARNING
    return Severity.OK
