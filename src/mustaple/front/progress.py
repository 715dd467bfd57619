"""Showing long work while it runs: which certificate and URL a command waits on, for how long.

`FetchProgress` watches the HTTP exchanges of `mustaple fetch` (as the `Watcher` the HTTP
clients tell when each request starts and ends, so the fetching code stays unaware of what it
is shown for) and its pauses between retries. On a
terminal it draws a rich progress display on stderr, one line per wait with a running clock,
gone once the work is done. Elsewhere (a pipe, cron, a log) it stays silent unless a wait
lasts: after `first_after` seconds it prints a plain line, then one every `every` seconds, and
one when that wait ends. `PrimeProgress` does the same for `mustaple prime`, fed by the
keeper's refresh observers, with a line per certificate refreshed once it is slow (for good
staples, one a second at most). Everything goes to stderr, so stdout keeps the one-line
results that scripts read.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from mustaple.adapters.fetch import FetchResult, HttpFetcher
from mustaple.keeper.keeper import CertFile

__all__ = ["Display", "FetchProgress", "PrimeProgress"]

FIRST_AFTER = 2.0  # seconds before a plain line about a wait
EVERY = 10.0  # seconds between plain lines about the same wait
GOOD_EVERY = 1.0  # seconds between two plain lines about certificates primed well
TICK = 0.25
_URL_CHARS = 72
_LIMIT = 100  # connections of one `mustaple fetch` (aiohttp's default)


def short_url(url: str) -> str:
    """A URL short enough for one line (GET URLs carry the whole request)."""
    return url if len(url) <= _URL_CHARS else url[: _URL_CHARS - 1] + "…"


@dataclass
class _Wait:
    what: str
    since: float
    next_line: float
    task: TaskID | None = None
    told: bool = False


class Display:
    """Waits in flight, drawn by rich on a terminal or told in plain lines elsewhere.

    `tty` None: a terminal if `stream` (default stderr) is one. `thresholds`: seconds before
    the first plain line about a wait, and between the next ones."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        thresholds: tuple[float, float] = (FIRST_AFTER, EVERY),
    ) -> None:
        stream = stream or sys.stderr
        self.stream, self.clock = stream, clock
        self.first_after, self.every = thresholds
        self.waits: dict[int, _Wait] = {}
        self.rich: Progress | None = None
        if stream.isatty() if tty is None else tty:
            self.rich = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}", markup=False),
                TimeElapsedColumn(),
                console=Console(file=stream, force_terminal=True),
                transient=True,
            )

    def start(self, key: int, what: str) -> None:
        wait = _Wait(what, self.clock(), self.first_after)
        if self.rich is not None:
            wait.task = self.rich.add_task(what, total=None)
        self.waits[key] = wait

    def update(self, key: int, what: str) -> None:
        wait = self.waits[key]
        wait.what = what
        if self.rich is not None and wait.task is not None:
            self.rich.update(wait.task, description=what)

    def told(self, key: int) -> bool:
        return key in self.waits and self.waits[key].told

    def end(self, key: int, outcome: str | None) -> None:
        """The wait is over; after plain lines about it, say how it ended (unless None)."""
        wait = self.waits.pop(key, None)
        if wait is None:
            return
        if self.rich is not None and wait.task is not None:
            self.rich.remove_task(wait.task)
        elif wait.told and outcome is not None:
            self.say(f"{wait.what}: {outcome} after {self.clock() - wait.since:.1f} s")

    def tick(self) -> None:
        """Plain mode: a line for each wait that has lasted past its next mark."""
        if self.rich is not None:
            return
        now = self.clock()
        for wait in self.waits.values():
            waited = now - wait.since
            if waited >= wait.next_line:
                self.say(f"{wait.what}: {waited:.0f} s so far")
                wait.told, wait.next_line = True, waited + self.every

    def say(self, line: str) -> None:
        print(f"mustaple: {line}", file=self.stream, flush=True)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        ticker = asyncio.create_task(self._tick_forever())
        live = self.rich if self.rich is not None else contextlib.nullcontext()
        try:
            with live:
                yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.tick()


class FetchProgress:
    """What one `mustaple fetch` waits on: each HTTP exchange and each pause between rounds."""

    def __init__(self, name: str, display: Display | None = None) -> None:
        self.name = name  # the certificate: its file until it is loaded, then its name
        self.display = display or Display()
        self._keys = 0

    @contextlib.asynccontextmanager
    async def fetcher(self) -> AsyncIterator[HttpFetcher]:
        """HTTP clients whose requests are shown, with the display running meanwhile."""
        fetcher = HttpFetcher.open(limit=_LIMIT, watchers=[self])
        try:
            async with self.display.running():
                yield fetcher
        finally:
            await fetcher.close()

    def request_started(self, method: str, url: str) -> object:
        key = self._next_key()
        self.display.start(key, f"{self.name}: waiting on {method} {short_url(url)}")
        return key

    def request_ended(self, token: object, outcome: str) -> None:
        assert isinstance(token, int)
        self.display.end(token, outcome)

    async def sleep(self, seconds: float) -> None:
        """The pause between rounds of tries, shown as a wait of its own."""
        key = self._next_key()
        self.display.start(key, f"{self.name}: pausing {seconds:.1f} s before trying again")
        try:
            await asyncio.sleep(seconds)
        finally:
            self.display.end(key, "trying again")

    def _next_key(self) -> int:
        self._keys += 1
        return self._keys


class PrimeProgress:
    """`mustaple prime`: how many certificates are refreshed, which came last, since when.

    Once the prime has been told of in plain mode, each certificate refreshed gets a line:
    every one without a valid good staple, and a good one at most every GOOD_EVERY seconds
    (a prime of 100k certificates would print as many lines otherwise, at 40 µs each)."""

    def __init__(self, total: int, display: Display | None = None) -> None:
        self.total, self.done = total, 0
        self.display = display or Display()
        self.good_said = -GOOD_EVERY  # the display's clock at the last line about a good one

    def refreshed(self, cert: CertFile, result: FetchResult) -> None:
        """A keeper observer: one certificate's refresh has ended."""
        self.done += 1
        outcome = "no valid staple"
        if result.staple is not None:  # a valid answer: a staple, or the CA says revoked
            outcome = "valid staple" if result.staple.good else "revoked"
        if result.rejection is not None:
            outcome = f"no valid staple ({result.rejection.code})"
        if self.display.told(0) and self._worth_a_line(outcome):
            self.display.say(f"prime: {cert.name}: {outcome} ({self.done}/{self.total})")
        self.display.update(0, self._what(f", last {cert.name}: {outcome}"))

    def _worth_a_line(self, outcome: str) -> bool:
        if outcome != "valid staple":
            return True
        now = self.display.clock()
        if now - self.good_said < GOOD_EVERY:
            return False
        self.good_said = now
        return True

    def _what(self, last: str = "") -> str:
        return f"prime: {self.done}/{self.total} certificates refreshed{last}"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.display.start(0, self._what())
        try:
            async with self.display.running():
                yield
        finally:
            self.display.end(0, None)  # each certificate had its line
