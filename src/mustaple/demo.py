"""`mustaple demo`: the whole story in under a minute, with no internet and no setup.

A test PKI issues a must-staple certificate, a misbehaving OCSP responder answers for it on
loopback, and mustaple fetches and validates. Then the responder misbehaves in the ways real
ones do; every bad answer is rejected with its reason while the staple in hand stays valid.
It recovers, and last it says the certificate is revoked. The demo grows with the keeper
(delivery to a live TLS server) and `mustaple check`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from mustaple.certs import Target, make_target
from mustaple.fetch import FetchPolicy, FetchResult, fetch_staple, utc_now
from mustaple.files import write_atomic
from mustaple.report import human_duration
from mustaple.testing import CA, Behaviour, OCSPResponder
from mustaple.verify import Staple

__all__ = ["run_demo"]

Echo = Callable[[str], None]
# What real responders do, in the order the demo shows them, with what a person would see.
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
    (Behaviour.TRUNCATED, "sends half a response"),
)
_WIDTH = max(len(story) for _, story in MISBEHAVIOURS)
QUICK = FetchPolicy(total_timeout=1.0, connect_timeout=1.0, attempts_per_url=1)


@dataclass
class _Scene:
    target: Target
    responder: OCSPResponder
    echo: Echo
    held: Staple | None = None

    async def fetch(self) -> FetchResult:
        return await fetch_staple(self.target, policy=QUICK, current=self.held)


async def run_demo(echo: Echo) -> int:
    """Tell the story; 0 when every step came out as it should."""
    started = time.monotonic()
    ca = CA(key_type="ec", intermediate=True, name="mustaple demo root")
    async with OCSPResponder(ca, validity=timedelta(days=4), cache_for=timedelta(0)) as responder:
        leaf = ca.issue("www.demo.test", ocsp_urls=[responder.url])
        responder.add(leaf)
        scene = _Scene(make_target(leaf.cert, leaf.issuer), responder, echo)
        echo(
            "mustaple demo: a must-staple certificate, a misbehaving OCSP responder, and "
            "what mustaple makes of them.\n"
        )
        echo(
            f"Test PKI: root and intermediate CA (ECDSA P-256); must-staple certificate for "
            f"{scene.target.name}; its OCSP responder runs at {responder.url}\n"
        )
        ok = await _first_fetch(scene) and await _misbehave(scene) and await _recover(scene)
        ok = ok and await _revoked(scene)
    echo(
        f"\nDone in {time.monotonic() - started:.1f} s. "
        "Try it on yours: mustaple fetch /path/to/fullchain.pem --json"
    )
    return 0 if ok else 1


async def _first_fetch(scene: _Scene) -> bool:
    result = await scene.fetch()
    if result.staple is None:
        scene.echo(f"1. First fetch FAILED: {result.rejection and result.rejection.message}")
        return False
    scene.held = result.staple
    attempt = result.attempts[-1]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "www.demo.test.der"
        write_atomic(path, scene.held.der)
        size = path.stat().st_size
    scene.echo(
        f"1. Fetch before any client connects: {attempt.method} in "
        f"{attempt.latency * 1000:.0f} ms, every check passed."
    )
    scene.echo(f"   {_held_line(scene.held)}; {size} bytes, ready for the server.\n")
    return True


def _held_line(staple: Staple) -> str:
    left = human_duration(staple.seconds_left(utc_now()))
    return (
        f"good staple from {staple.this_update:%H:%M:%S}Z signed by the {staple.signer.value}, "
        f"valid until {staple.effective_expiry:%Y-%m-%d %H:%M}Z ({left} left)"
    )


async def _misbehave(scene: _Scene) -> bool:
    scene.echo("2. The responder misbehaves. Each answer is refused, with its reason:")
    ok = True
    for behaviour, story in MISBEHAVIOURS:
        scene.responder.set_behaviour(behaviour)
        result = await scene.fetch()
        rejection = result.rejection
        if result.staple is not None or rejection is None:
            scene.echo(f"   the responder {story}: ACCEPTED (this is a bug)")
            ok = False
            continue
        retry = "retry later" if rejection.retryable else "needs the CA"
        scene.echo(f"   it {story:<{_WIDTH}} -> {rejection.code} ({retry})")
    assert scene.held is not None
    scene.echo(f"   Meanwhile the staple in hand is untouched: {_held_line(scene.held)}.\n")
    return ok


async def _recover(scene: _Scene) -> bool:
    scene.responder.set_behaviour(Behaviour.GOOD)
    result = await scene.fetch()
    if result.staple is None:
        scene.echo("3. The responder recovers, but the fetch FAILED")
        return False
    scene.held = result.staple
    scene.echo(
        f"3. The responder recovers: a fresh response replaces the old one: "
        f"{_held_line(scene.held)}.\n"
    )
    return True


async def _revoked(scene: _Scene) -> bool:
    scene.responder.set_behaviour(Behaviour.REVOKED)
    result = await scene.fetch()
    staple = result.staple
    if staple is None or staple.good:
        scene.echo("4. Revocation was NOT recognised (this is a bug)")
        return False
    reason = staple.revocation_reason.name if staple.revocation_reason else "unspecified"
    scene.echo(
        f"4. The CA revokes the certificate ({reason}): a valid answer, so it is "
        "believed, but a revoked staple is never served; `mustaple fetch` exits with 3 "
        "so a deploy hook can act."
    )
    return True
