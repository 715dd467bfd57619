"""The clock, as every part of mustaple is given it: `Clock` is a function returning an aware
UTC `datetime`, `utc_now` the real one. Tests pass a clock they move by hand
(`mustaple.testing.ManualClock`); nothing else reads the time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

__all__ = ["Clock", "utc_now"]

Clock = Callable[[], datetime]

# the real clock: a C call, no Python frame (the local responder reads it at every request)
utc_now: Clock = partial(datetime.now, UTC)
