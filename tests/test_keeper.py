"""The keeper against the misbehaving responder, driven by a fake clock (no sleeping).

Sinks here record what they are given; the real servers are in test_sinks.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import Handler, LoopbackServer
from mustaple.config import Config, Hooks
from mustaple.delivery import Action
from mustaple.keeper import Keeper
from mustaple.request import make_cert_id
from mustaple.store import SqliteStore
from mustaple.testing import (
    QUICK_FETCH,
    Behaviour,
    KeyType,
    RecordingSink,
    World,
    keeper_config,
    keeper_world,
)

DAY = timedelta(days=1)
QUICK = QUICK_FETCH


def config(tmp: Path, **policy: Any) -> Config:
    hooks = Hooks(
        on_failure=f"env > {tmp}/failure.env",
        on_revoked=f"env > {tmp}/revoked.env",
        on_expiring=f"echo $MUSTAPLE_EVENT >> {tmp}/expiring.log",
    )
    return keeper_config(tmp, hooks=hooks, fetch=QUICK, **policy)


def world(tmp: Path, key_type: KeyType = "ec", **policy: Any) -> AbstractAsyncContextManager[World]:
    """The keeper's world (`mustaple.testing.keeper_world`) with hooks that leave files."""
    return keeper_world(tmp, config(tmp, **policy), key_type=key_type)


def run(coro: Callable[[Path], object], tmp: Path) -> None:
    asyncio.run(coro(tmp))  # type: ignore[arg-type]


def test_new_certificate_is_fetched_stored_and_delivered(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with world(tmp) as w:
            leaf = w.issue("a.test")
            assert [m.name for m in await w.keeper.scan()] == ["a.test"]
            await w.keeper.tick()
            delivery = w.sink.last()
            assert delivery.action is Action.STAPLE
            assert delivery.name == "a.test"
            assert delivery.bundle_has_issuer
            managed = next(iter(w.keeper.managed.values()))
            assert managed.held is not None
            assert managed.held.der == delivery.der
            assert (
                managed.next_due == managed.held.this_update + 2 * DAY - 0.2 * DAY
            )  # 4-day window
            stored = w.keeper.store.load(managed.key)
            assert stored is not None
            assert stored.der == delivery.der
            assert leaf.cert.serial_number == managed.target.serial
            await w.keeper.tick()  # nothing due, nothing changed: nothing delivered again
            assert len(w.sink.batches) == 1

    run(scenario, tmp_path)


def test_a_week_of_refreshes_always_serves_a_valid_staple(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with world(tmp) as w:
            w.issue("a.test")
            await w.keeper.scan()
            await w.keeper.tick()
            start, fetches = w.clock.now, len(w.responder.requests)
            while w.clock.now < start + 7 * DAY:
                await w.advance_to_next()
                served = w.keeper.managed[next(iter(w.keeper.managed))].held
                assert served is not None
                assert served.fraction_left(w.clock.now) > 0.4
                assert w.sink.last().der == served.der
            assert 4 <= len(w.responder.requests) - fetches <= 5

    run(scenario, tmp_path)


def test_restart_delivers_the_stored_staple_before_fetching(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with world(tmp) as w:
            w.issue("a.test")
            await w.keeper.scan()
            await w.keeper.tick()
            first = w.sink.last().der
            w.responder.set_behaviour(Behaviour.HANG)
            store = SqliteStore(tmp / "state" / "state.db")
            sink = RecordingSink()
            fresh = Keeper(w.keeper.config, store=store, sinks={"record": sink}, clock=w.clock)
            async with fresh:
                await fresh.scan()
                served_before = len(w.responder.requests)
                await fresh.deliver()
                assert sink.last().der == first
                assert len(w.responder.requests) == served_before
                assert fresh.next_wakeup() is not None
                assert fresh.next_wakeup() > w.clock.now  # type: ignore[operator]

    run(scenario, tmp_path)


def test_what_a_server_has_is_only_taken_away_if_it_was_ours(tmp_path: Path) -> None:
    """A certificate never seen with a staple: its sinks are left alone, even when the first
    fetch fails. One whose stored staple expired while mustaple was down: removed at start."""

    async def scenario(tmp: Path) -> None:
        async with world(tmp) as w:
            w.responder.set_behaviour(Behaviour.TRY_LATER)
            w.issue("new.test")
            await w.keeper.scan()
            await w.keeper.deliver(again=True)
            await w.keeper.tick()
            assert w.sink.batches == []  # nothing to say yet, and nothing taken away
            w.responder.set_behaviour(Behaviour.GOOD)
            w.clock.now = w.keeper.next_wakeup() or w.clock.now
            await w.keeper.tick()
            assert w.sink.last().action is Action.STAPLE
            w.clock.now += 5 * DAY  # mustaple was down past the staple's expiry
            store = SqliteStore(tmp / "state" / "state.db")
            sink = RecordingSink()
            fresh = Keeper(w.keeper.config, store=store, sinks={"record": sink}, clock=w.clock)
            async with fresh:
                await fresh.scan()
                await fresh.deliver(again=True)
                assert sink.last().action is Action.REMOVE  # the expired one was ours
            store.close()

    run(scenario, tmp_path)


BAD = [
    Behaviour.TRY_LATER,
    Behaviour.HTML_200,
    Behaviour.EXPIRED,
    Behaviour.STALE,
    Behaviour.BAD_SIGNATURE,
    Behaviour.WRONG_SERIAL,
    Behaviour.UNRELATED_SIGNER,
    Behaviour.TRUNCATED,
    Behaviour.DELEGATE_NO_EKU,
    Behaviour.UNKNOWN_STATUS,
]


def test_outage_keeps_the_last_good_staple_until_expiry_then_removes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(tmp: Path) -> None:
        async with world(tmp) as w:
            w.issue("a.test")
            await w.keeper.scan()
            await w.keeper.tick()
            good = w.sink.last().der
            expiry = next(iter(w.keeper.managed.values())).held.effective_expiry  # type: ignore[union-attr]
            for i in range(200):
                w.responder.set_behaviour(BAD[i % len(BAD)])
                await w.advance_to_next()
                if w.clock.now >= expiry:
                    break
                assert w.sink.last().der == good, f"replaced by {BAD[i % len(BAD)]}"
            assert w.sink.last().action is Action.REMOVE
            assert "FAILING" in caplog.text
            await asyncio.sleep(0.2)  # hooks run in the background
        failure_env = (tmp / "failure.env").read_text()
        assert "MUSTAPLE_EVENT=failure" in failure_env
        assert "MUSTAPLE_NAME=a.test" in failure_env
        assert "MUSTAPLE_MUST_STAPLE=1" in failure_env
        assert (tmp / "expiring.log").read_text().split() == ["expiring", "expiring", "expired"]

    caplog.set_level(logging.INFO, "mustaple")
    run(scenario, tmp_path)


def test_revoked_replaces_the_good_staple_everywhere_and_is_hooked(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with world(tmp) as w:
            w.issue("a.test")
            await w.keeper.scan()
            await w.keeper.tick()
            w.responder.set_behaviour(Behaviour.REVOKED)
            w.clock.now = w.keeper.next_wakeup()  # type: ignore[assignment]
            await w.keeper.tick()
            revoked = w.sink.last()
            assert revoked.action is Action.REVOKED  # the CA's revoked answer, not a good one
            assert revoked.status == "revoked"
            managed = next(iter(w.keeper.managed.values()))
            assert managed.revoked is not None
            assert revoked.der == managed.revoked.der
            assert managed.held is None
            await asyncio.sleep(0.2)
        assert "MUSTAPLE_STATUS=revoked" in (tmp / "revoked.env").read_text()

    run(scenario, tmp_path)


def test_watching_new_changed_and_removed_files(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with world(tmp) as w:
            w.issue("a.test")
            await w.keeper.scan()
            assert await w.keeper.scan() == []
            w.issue("b.test")
            assert [m.name for m in await w.keeper.scan()] == ["b.test"]
            w.issue("a.test")  # reissued: a new certificate in the same file
            (changed,) = await w.keeper.scan()
            assert changed.next_due == w.clock.now
            (tmp / "live" / "b.test" / "fullchain.pem").unlink()
            await w.keeper.scan()
            assert sorted(m.name for m in w.keeper.managed.values()) == ["a.test"]

    run(scenario, tmp_path)


def test_unusable_files_are_reported_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(tmp: Path) -> None:
        async with world(tmp) as w:
            bad = tmp / "live" / "bad.test" / "fullchain.pem"
            bad.parent.mkdir(parents=True)
            bad.write_text("garbage")
            leaf = w.ca.issue("nourl.test", ocsp_urls=[])
            leaf.write(tmp / "live" / "nourl.test")
            await w.keeper.scan()
            await w.keeper.scan()
            await w.keeper.tick()
            names = {m.name: m for m in w.keeper.managed.values()}
            assert names["nourl.test"].next_due is None
            assert names["nourl.test"].state() == "unusable"
            views = {v.name: v for v in w.keeper.views()}
            assert views["nourl.test"].state.rejection.code == "no-ocsp-url"  # type: ignore[union-attr]
            assert "`urls`" in (views["nourl.test"].state.problem or "")
            # the garbled file is visible too, with its reason and its own line
            bad_view = views["bad.test"]
            assert bad_view.phase == "unusable"
            assert bad_view.paths == (str(bad),)
            assert bad_view.state.rejection.code == "cert-unusable"  # type: ignore[union-attr]

    caplog.set_level(logging.INFO, "mustaple")
    run(scenario, tmp_path)
    assert caplog.text.count("no certificate found") == 1
    assert "must-staple certificate without an OCSP URL" in caplog.text


def test_failed_delivery_is_retried_on_the_next_pass(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with world(tmp) as w:
            w.issue("a.test")
            await w.keeper.scan()
            w.sink.fail = True
            await w.keeper.tick()
            w.sink.fail = False
            await w.keeper.tick()  # a failed sink is tried again after a pause, not at once
            assert len(w.sink.batches) == 1
            w.clock.now += timedelta(seconds=5)
            await w.keeper.tick()
            assert len(w.sink.batches) == 2
            await w.keeper.tick()
            assert len(w.sink.batches) == 2

    run(scenario, tmp_path)


def test_concurrency_per_responder_host_is_bounded(
    tmp_path: Path, serve: Callable[[Handler], LoopbackServer]
) -> None:
    active, peak = 0, 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1
        return web.Response(status=503)

    server = serve(slow)

    async def scenario(tmp: Path) -> None:
        async with world(tmp, per_host=2) as w:
            for n in range(8):
                leaf = w.ca.issue(f"c{n}.test", ocsp_urls=[server.url])
                leaf.write(tmp / "live" / f"c{n}.test")
            await w.keeper.scan()
            await w.keeper.tick()

    run(scenario, tmp_path)
    assert peak == 2


def test_find_by_cert_id_and_observers(tmp_path: Path) -> None:
    seen: list[str] = []

    async def scenario(tmp: Path) -> None:
        async with world(tmp) as w:
            w.keeper.observers.append(lambda m, r: seen.append(f"{m.name} {r.ok}"))
            leaf = w.issue("a.test")
            await w.keeper.scan()
            await w.keeper.tick()
            for hash_name in ("sha1", "sha256"):
                found = w.keeper.find(make_cert_id(leaf.issuer, leaf.cert.serial_number, hash_name))
                assert found is not None
                assert found.name == "a.test"
            assert w.keeper.find(make_cert_id(leaf.issuer, 12345)) is None
            (tmp / "live" / "a.test" / "fullchain.pem").unlink()
            await w.keeper.scan()
            assert w.keeper.find(make_cert_id(leaf.issuer, leaf.cert.serial_number)) is None

    run(scenario, tmp_path)
    assert seen == ["a.test True"]


# Valid answers: a newer one may replace the staple (revoked withdraws it). Every other
# behaviour of the misbehaving responder must leave the staple in hand where it is.
VALID = {
    Behaviour.GOOD,
    Behaviour.DELEGATED,
    Behaviour.SEVERAL_RESPONSES,
    Behaviour.PSS_SIGNATURE,
    Behaviour.REVOKED,
}


def test_every_misbehaviour_keeps_the_last_good_staple(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with world(tmp, key_type="rsa") as w:
            w.issue("a.test")
            await w.keeper.scan()
            await w.keeper.tick()
            managed = next(iter(w.keeper.managed.values()))
            good, delivered = managed.held, w.sink.last().der
            for behaviour in Behaviour:
                if behaviour in VALID:
                    continue
                w.responder.set_behaviour(behaviour)
                result = await w.keeper.refresh(managed)
                await w.keeper.deliver()
                assert result.rejection is not None, behaviour
                assert managed.held is good, behaviour
                assert w.sink.last().der == delivered, behaviour
            assert good is not None
            w.clock.now = good.effective_expiry
            await w.keeper.tick()
            assert w.sink.last().action is Action.REMOVE

    run(scenario, tmp_path)
