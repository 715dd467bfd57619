"""The clock, as every part of mustaple is given it: `Clock` is a function returning an aware
UTC `datetime`, `utc_now` the real one. Tests pass a clock they move by hand
(`mustaple.testing.ManualClock`); nothing else reads the time. `timestamps(clock)` is the same
clock read as POSIX seconds, for a hot path that only compares moments.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

__all__ = ["Clock", "timestamps", "utc_now"]

Clock = Callable[[], datetime]

# the real clock: a C call, no Python frame (the local responder reads it at every request)
utc_now: Clock = partial(datetime.now, UTC)


def timestamps(clock: Clock) -> Callable[[], float]:
    """`clock` as POSIX seconds (`datetime.timestamp`): `time.time` itself for the real clock,
    so that no datetime is made (the local responder's memo reads it at every request)."""
    if clock is utc_now:
        return time.time
    return lambda: clock().timestamp()
