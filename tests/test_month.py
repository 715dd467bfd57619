"""A simulated month of the keeper under a fake clock: random responder faults, revocations and
reissued certificate files, with the promises checked after every pass, from outside the keeper
as far as one process allows: what the sink was given, what `mustaple status` reads from the
store, and what the HTTP `/status` endpoint says."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
from aiohttp import web

from mustaple.adapters.config import HttpConfig
from mustaple.adapters.fetch import FetchResult
from mustaple.core.certs import make_target
from mustaple.core.delivery import Action, Delivery
from mustaple.core.verify import Staple, verify
from mustaple.front.status import status_rows
from mustaple.keeper.keeper import CertFile
from mustaple.serve.metrics import Metrics
from mustaple.serve.web import make_app
from mustaple.testing import Behaviour, World
from test_keeper import world

DAYS = 30
NAMES = [f"c{n}.test" for n in range(6)]
FAULTS = [
    Behaviour.TRY_LATER,
    Behaviour.HTTP_500,
    Behaviour.HTML_200,
    Behaviour.EXPIRED,
    Behaviour.BAD_SIGNATURE,
    Behaviour.UNKNOWN_STATUS,
]


class Watch:
    """What the sink was given, per certificate, and the promises about it."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.revoked: set[int] = set()  # serials the responder now says are revoked
        self.seen_revoked: set[str] = set()  # keys the sink was given a revoked answer for
        self.checked = 0
        self.known_revoked: set[str] = set()  # keys a fetch has brought a revoked answer for
        w.keeper.observers.append(self.fetched)
        self.current: dict[str, Delivery] = {}  # what the sink serves now, per certificate

    def fetched(self, cert: CertFile, result: FetchResult) -> None:
        if result.staple is not None and not result.staple.good:
            self.known_revoked.add(cert.key)

    def check_deliveries(self, now: datetime) -> None:
        """No good staple after a revoked answer; no expired staple left on the sink."""
        for batch in self.w.sink.batches[self.checked :]:
            for delivery in batch:
                if delivery.action is Action.REVOKED:
                    self.seen_revoked.add(delivery.key)
                good = delivery.action is Action.STAPLE
                assert not (good and delivery.key in self.known_revoked), "good after revoked"
                self.current[delivery.key] = delivery
        self.checked = len(self.w.sink.batches)
        for key in self.known_revoked:  # what the sink serves now, not only what came since
            served_now = self.current.get(key)
            assert served_now is None or served_now.action is not Action.STAPLE, "good stays"
        for managed in self.w.keeper.managed.values():
            served = self.current.get(managed.key)
            if served is None or served.action is not Action.STAPLE or served.der is None:
                continue
            outcome = verify(
                served.der, make_target(managed.target.leaf, managed.target.issuer), now
            )
            assert isinstance(outcome, Staple), f"{managed.name}: an expired or bad staple stays"


async def status_report(base: str) -> dict[str, str]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/status") as reply:
        report = await reply.json()
    return {c["name"]: c["state"] for c in report["certificates"]}


async def scenario(tmp: Path) -> None:
    rng = random.Random(2026)
    async with world(tmp) as w:
        leaves = {name: w.issue(name) for name in NAMES}
        await w.keeper.scan()
        app = make_app(w.keeper, Metrics(w.keeper, clock=w.clock), HttpConfig(), clock=w.clock)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        watch = Watch(w)
        end = w.clock.now + timedelta(days=DAYS)
        passes = revocations = reissues = 0
        try:
            while w.clock.now < end:
                roll = rng.random()
                if roll < 0.3:
                    w.responder.set_behaviour(rng.choice(FAULTS))
                else:
                    w.responder.set_behaviour(Behaviour.GOOD)
                if roll > 0.985:  # now and then the CA revokes one
                    name = rng.choice(NAMES)
                    serial = leaves[name].cert.serial_number
                    w.responder.set_behaviour(Behaviour.REVOKED, serial=serial)
                    watch.revoked.add(serial)
                    revocations += 1
                elif 0.97 < roll <= 0.985:  # or a certificate is reissued in place
                    name = rng.choice(NAMES)
                    leaves[name] = w.issue(name)
                    reissues += 1
                    await w.keeper.scan()
                wake = w.keeper.next_wakeup() or w.clock.now + timedelta(hours=1)
                step = min(wake - w.clock.now, timedelta(hours=rng.uniform(0.5, 12)))
                w.clock.now += max(step, timedelta(seconds=1))
                await w.keeper.tick()
                passes += 1
                watch.check_deliveries(w.clock.now)
                views = {v.name: v.phase for v in w.keeper.views()}
                rows = {r["name"]: r["state"] for r in status_rows(w.keeper.config, w.clock.now)}
                assert rows == views, "mustaple status and the keeper disagree"
                assert await status_report(base) == views, "/status and the keeper disagree"
        finally:
            await runner.cleanup()
        assert passes > 100, passes
        assert revocations >= 2
        assert reissues >= 2
        assert watch.seen_revoked  # the promise was put to the test


def test_a_month_of_faults_revocations_and_reissues(tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))
