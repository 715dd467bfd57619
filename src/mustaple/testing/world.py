"""A keeper's whole world on loopback, on a clock the test moves: for testing the keeper (and
what sits on it: the web endpoints, the local responder, the metrics) without sleeping.

`keeper_world(tmp)` gives a `World`: a test CA, its misbehaving OCSP responder, a `Keeper` of the
certificates under `tmp/live` with its state in `tmp/state`, a sink that records what it is
given, and the keeper's metrics, all on one `ManualClock`. docs/testing.md shows it at work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mustaple.adapters.config import CertEntry, Config, Hooks, KeeperPolicy
from mustaple.adapters.fetch import FetchPolicy, FetchResult
from mustaple.adapters.store import SqliteStore
from mustaple.core.delivery import Delivered, Delivery, Sink
from mustaple.core.verify import Staple
from mustaple.keeper.keeper import Keeper, Managed
from mustaple.serve.metrics import Metrics
from mustaple.testing.craft import DEFAULT_VALIDITY
from mustaple.testing.pki import CA, KeyType, Leaf
from mustaple.testing.responder import OCSPResponder

__all__ = [
    "QUICK_FETCH",
    "ManualClock",
    "RecordingSink",
    "World",
    "keeper_config",
    "keeper_world",
]

QUICK_FETCH = FetchPolicy(total_timeout=1.0, connect_timeout=1.0, attempts_per_url=1)


@dataclass
class ManualClock:
    """A clock the test moves by hand (`clock.now += ...`); starts at the real now."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def __call__(self) -> datetime:
        return self.now


@dataclass
class RecordingSink:
    """A sink that keeps what it was given, in order (`fail`: every delivery fails)."""

    name: str = "record"
    batches: list[list[Delivery]] = field(default_factory=list)
    fail: bool = False

    async def deliver(self, batch: Sequence[Delivery]) -> list[Delivered]:
        self.batches.append(list(batch))
        error = "disk full" if self.fail else None
        return [Delivered(d.key, self.name, True, error) for d in batch]

    def last(self) -> Delivery:
        return self.batches[-1][-1]


@dataclass
class World:
    """What `keeper_world` made; `results` holds every fetch result the keeper observed."""

    ca: CA
    clock: ManualClock
    responder: OCSPResponder
    keeper: Keeper
    metrics: Metrics
    sink: RecordingSink
    tmp: Path
    results: list[FetchResult] = field(default_factory=list)

    def issue(self, name: str, *, url: bool = True, **kwargs: object) -> Leaf:
        """A certificate for `name` (with this responder's URL unless `url` is False), known
        to the responder and written to `tmp/live/NAME`; `kwargs` go to `CA.issue`."""
        urls = [self.responder.url] if url else []
        leaf = self.ca.issue(name, ocsp_urls=urls, **kwargs)  # type: ignore[arg-type]
        self.responder.add(leaf)
        leaf.write(self.tmp / "live" / name)
        return leaf

    def managed(self, name: str) -> Managed:
        return next(m for m in self.keeper.managed.values() if m.name == name)

    async def stapled(self, name: str) -> tuple[Leaf, Managed, Staple]:
        """Issue a certificate and let the keeper fetch its staple."""
        leaf = self.issue(name)
        await self.keeper.scan()
        await self.keeper.tick()
        managed = self.managed(name)
        assert managed.held is not None, f"{name}: no staple fetched"
        return leaf, managed, managed.held

    async def advance_to_next(self) -> None:
        """Move the clock to the keeper's next wake-up (never back) and let it work."""
        wake = self.keeper.next_wakeup()
        assert wake is not None, "the keeper has nothing to do"
        self.clock.now = max(wake, self.clock.now)
        await self.keeper.tick()


def keeper_config(
    tmp: Path,
    *,
    sinks: Mapping[str, Mapping[str, object]] | None = None,
    hooks: Hooks | None = None,
    fetch: FetchPolicy = QUICK_FETCH,
    **policy: Any,
) -> Config:
    """A configuration keeping `tmp/live/*/fullchain.pem` with its state in `tmp/state`;
    `policy` are `KeeperPolicy` fields, `sinks` default to the recording sink."""
    return Config(
        path=tmp / "mustaple.toml",
        state_dir=tmp / "state",
        certificates=(CertEntry(paths=(str(tmp / "live" / "*" / "fullchain.pem"),)),),
        sinks={"record": {"type": "record"}} if sinks is None else dict(sinks),
        hooks=hooks or Hooks(),
        policy=KeeperPolicy(fetch=fetch, **policy),
    )


@asynccontextmanager
async def keeper_world(
    tmp: Path,
    config: Config | None = None,
    *,
    key_type: KeyType = "ec",
    sinks: Mapping[str, Sink] | None = None,
    validity: timedelta = DEFAULT_VALIDITY,
) -> AsyncIterator[World]:
    """A `World` whose keeper runs `config` (default `keeper_config(tmp)`), delivers to
    `sinks` (default: the world's recording sink) and rolls its dice at 0.5 (no jitter);
    its responder's answers are valid for `validity` (over an hour)."""
    clock = ManualClock()
    ca = CA(now=clock.now - timedelta(days=1), key_type=key_type)
    sink = RecordingSink()
    store = SqliteStore(tmp / "state" / "state.db")
    try:
        async with OCSPResponder(
            ca, clock=clock, cache_for=timedelta(0), validity=validity
        ) as responder:
            keeper = Keeper(
                config or keeper_config(tmp),
                store=store,
                sinks={sink.name: sink} if sinks is None else sinks,
                clock=clock,
                dice=lambda: 0.5,
            )
            async with keeper:
                metrics = Metrics(keeper, clock=clock)
                world = World(ca, clock, responder, keeper, metrics, sink, tmp)
                keeper.observers.append(lambda _, result: world.results.append(result))
                yield world
    finally:
        store.close()
