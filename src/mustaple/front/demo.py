"""`mustaple demo`: the whole system end to end in under a minute, with no internet and no setup.

A test PKI issues a must-staple certificate; a misbehaving OCSP responder answers for it and a
TLS server serves it, all on loopback. First `check` shows why a server without mustaple is not
safe: no staple, so every strict client refuses. Then the keeper fetches, validates, stores and
delivers a staple before any client connects, and `check` turns OK. Then the responder
misbehaves the ways real ones do: every bad answer is refused with its reason, the server keeps
the good staple, and the verdict stays OK. It recovers; last the CA revokes the certificate: the
good staple is withdrawn and the server staples the CA's revoked answer, so clients learn it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from mustaple.adapters.config import CertEntry, Config, KeeperPolicy
from mustaple.adapters.fetch import FetchPolicy, FetchResult
from mustaple.adapters.store import SqliteStore
from mustaple.check import CheckReport, check_server
from mustaple.core.clock import utc_now
from mustaple.core.delivery import Action, Delivered, Delivery
from mustaple.core.lifecycle import CertState
from mustaple.core.render import human_duration, human_time
from mustaple.core.verify import Staple
from mustaple.keeper.keeper import Keeper, Managed
from mustaple.testing import CA, Behaviour, OCSPResponder, StaplingServer

__all__ = ["MISBEHAVIOURS", "run_demo"]

Echo = Callable[[str], None]
# What real responders do, in the order the demo shows them.
MISBEHAVIOURS = (
    (Behaviour.TRY_LATER, "answers tryLater"),
    (Behaviour.HTML_200, "serves an HTML error page with status 200"),
    (Behaviour.HTTP_503, "is overloaded (HTTP 503, Retry-After)"),
    (Behaviour.HANG, "hangs"),
    (Behaviour.STALE, "serves a response older than ours"),
    (Behaviour.EXPIRED, "serves an expired response"),
    (Behaviour.WRONG_SERIAL, "answers about another certificate"),
    (Behaviour.BAD_SIGNATURE, "sends a response with a broken signature"),
    (Behaviour.DELEGATE_NO_EKU, "signs with a certificate not allowed to sign OCSP"),
    (Behaviour.TRUNCATED, "sends half a response (garbage)"),
)
_WIDTH = max(len(story) for _, story in MISBEHAVIOURS)
QUICK = FetchPolicy(total_timeout=1.0, connect_timeout=1.0, attempts_per_url=1)


@dataclass
class _ServerSink:
    """Hands staples straight to the demo's TLS server (real servers use the file sinks)."""

    server: StaplingServer
    name: str = "tls-server"

    async def deliver(self, batch: Sequence[Delivery]) -> list[Delivered]:
        for delivery in batch:
            self.server.set_staple(delivery.der if delivery.action is not Action.REMOVE else None)
        return [Delivered(d.key, self.name, True) for d in batch]


@dataclass
class _Scene:
    keeper: Keeper
    responder: OCSPResponder
    server: StaplingServer
    echo: Echo

    @property
    def managed(self) -> Managed:
        """The one certificate, to refresh (the demo drives the keeper)."""
        return next(iter(self.keeper.managed.values()))

    @property
    def state(self) -> CertState:
        """The one certificate's state, as every reader above the keeper sees it."""
        return self.keeper.views()[0].state

    async def answer(self, behaviour: Behaviour) -> FetchResult:
        """Make the responder behave so, refresh now and deliver what changed."""
        self.responder.set_behaviour(behaviour)
        result = await self.keeper.refresh(self.managed)
        await self.keeper.deliver()
        return result

    async def check(self) -> CheckReport:
        return await check_server("127.0.0.1", self.server.port, servername="www.demo.test")

    async def verdict(self, indent: str = "   ") -> bool:
        report = await self.check()
        self.echo(f"{indent}mustaple check: {report.level.name} {report.verdict}")
        return report.level.name == "OK"


async def run_demo(echo: Echo) -> int:
    """Tell the story; 0 when every step came out as it should."""
    logger = logging.getLogger("mustaple")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # the story says it all
    try:
        return await _tell(echo)
    finally:
        logger.setLevel(level)  # whoever runs the demo in-process keeps their logs


async def _tell(echo: Echo) -> int:
    started = time.monotonic()
    ca = CA(key_type="ec", intermediate=True, name="mustaple demo root")
    with tempfile.TemporaryDirectory() as tmp:
        async with OCSPResponder(ca, cache_for=timedelta(0)) as responder:
            leaf = ca.issue("www.demo.test", ocsp_urls=[responder.url])
            responder.add(leaf)
            cert = leaf.write(Path(tmp) / "live").fullchain
            with StaplingServer(leaf) as server:
                echo(
                    "mustaple demo: a must-staple certificate, a misbehaving OCSP responder, "
                    "a TLS server, and mustaple keeping them safe.\n"
                )
                echo(
                    f"Test PKI: root and intermediate CA (ECDSA P-256), a must-staple "
                    f"certificate for www.demo.test; OCSP responder at {responder.url}; "
                    f"TLS server at 127.0.0.1:{server.port}.\n"
                )
                async with _keeper(Path(tmp), cert, server) as keeper:
                    scene = _Scene(keeper, responder, server, echo)
                    ok = await _story(scene)
    echo(
        f"\nDone in {time.monotonic() - started:.1f} s. Try it on yours: "
        "mustaple check www.example.org, mustaple fetch /path/to/fullchain.pem"
    )
    return 0 if ok else 1


@asynccontextmanager
async def _keeper(tmp: Path, cert: Path, server: StaplingServer) -> AsyncIterator[Keeper]:
    config = Config(
        path=tmp / "demo.toml",
        state_dir=tmp / "state",
        certificates=(CertEntry(paths=(str(cert),)),),
        sinks={},
        policy=KeeperPolicy(fetch=QUICK),
    )
    store = SqliteStore(tmp / "state" / "state.db")
    try:
        sinks = {"tls-server": _ServerSink(server)}
        async with Keeper(config, store=store, sinks=sinks) as keeper:
            yield keeper
    finally:
        store.close()


async def _story(scene: _Scene) -> bool:
    steps = (_without_mustaple, _first_staple, _misbehave, _recover, _revoked)
    for step in steps:
        if not await step(scene):
            return False
    return True


async def _without_mustaple(scene: _Scene) -> bool:
    scene.echo(
        "1. The server before mustaple: nothing to staple yet, like nginx on its first handshake."
    )
    report = await scene.check()
    scene.echo(f"   mustaple check: {report.level.name} {report.verdict}\n")
    return report.level.name == "CRITICAL"


async def _first_staple(scene: _Scene) -> bool:
    await scene.keeper.scan()
    await scene.keeper.tick()
    held = scene.state.held
    if held is None:
        scene.echo("2. The keeper could NOT get a first staple (this is a bug)")
        return False
    scene.echo("2. The keeper fetches, validates, stores and delivers a staple, before any client:")
    scene.echo(f"   {_held_line(held)}")
    ok = await scene.verdict()
    scene.echo("")
    return ok


def _held_line(staple: Staple) -> str:
    left = human_duration(staple.seconds_left(utc_now()))
    return (
        f"good staple from {staple.this_update:%H:%M:%S}Z signed by the {staple.signer.value}, "
        f"valid until {human_time(staple.effective_expiry)} ({left} left)"
    )


async def _misbehave(scene: _Scene) -> bool:
    scene.echo(
        "3. The responder misbehaves. Each answer is refused, with its reason; the "
        "server keeps the good staple:"
    )
    good = scene.state.held
    ok = True
    for behaviour, story in MISBEHAVIOURS:
        result = await scene.answer(behaviour)
        rejection = result.rejection
        if result.staple is not None or rejection is None:
            scene.echo(f"   it {story}: ACCEPTED (this is a bug)")
            ok = False
            continue
        retry = "retry later" if rejection.retryable else "needs the CA"
        scene.echo(f"   it {story:<{_WIDTH}} -> {rejection.code} ({retry})")
    ok = ok and scene.state.held is good
    scene.echo(f"   The server still staples the {_held_line(good)}." if good else "")
    ok = await scene.verdict() and ok
    scene.echo("")
    return ok


async def _recover(scene: _Scene) -> bool:
    await scene.answer(Behaviour.GOOD)
    held = scene.state.held
    if held is None:
        scene.echo("4. The responder recovers, but the refresh FAILED")
        return False
    scene.echo(
        f"4. The responder recovers: a fresh response replaces the old one: {_held_line(held)}."
    )
    ok = await scene.verdict()
    scene.echo("")
    return ok


async def _revoked(scene: _Scene) -> bool:
    await scene.answer(Behaviour.REVOKED)
    revoked = scene.state.revoked
    if revoked is None:
        scene.echo("5. Revocation was NOT recognised (this is a bug)")
        return False
    reason = revoked.revocation_reason.name if revoked.revocation_reason else "unspecified"
    scene.echo(
        f"5. The CA revokes the certificate ({reason}). The good staple is withdrawn and the "
        "server staples the CA's revoked answer, so every client learns it (in production "
        "the on_revoked hook gets a renewal)."
    )
    report = await scene.check()
    scene.echo(f"   mustaple check: {report.level.name} {report.verdict}")
    return report.level.name == "CRITICAL"
