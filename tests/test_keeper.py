"""The keeper driven by a fake clock (no sleeping): its logic with a fetcher that needs no
socket (`MemoryFetcher`: schedules, restarts, revocation, delivery), and the real HTTP path
against the misbehaving responder (outages, every misbehaviour, concurrency per host).

Sinks here record what they are given; the real servers are in test_sinks.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import ANY

import pytest
from cryptography.x509 import ocsp

from conftest import Crowded, Handler, LoopbackServer
from mustaple.adapters import files, reads
from mustaple.adapters.collector import Settled
from mustaple.adapters.config import CertEntry, Config, Hooks
from mustaple.adapters.coverage import configured_files
from mustaple.adapters.sinks import FileSink
from mustaple.adapters.store import SqliteStore
from mustaple.core import lifecycle
from mustaple.core.certs import Target, make_target
from mustaple.core.delivery import Action, Sink
from mustaple.core.health import health
from mustaple.core.reasons import Reason, Rejection
from mustaple.core.report import ExitCode
from mustaple.core.request import make_cert_id
from mustaple.core.severity import Severity
from mustaple.core.verify import Staple
from mustaple.front.status import prime_exit_code, prime_json, prime_line
from mustaple.keeper import daemon
from mustaple.keeper import keeper as keeper_module
from mustaple.keeper.keeper import Keeper, Life, Managed
from mustaple.testing import (
    CA,
    QUICK_FETCH,
    Behaviour,
    KeyType,
    Leaf,
    ManualClock,
    MemoryFetcher,
    RecordingSink,
    World,
    craft_response,
    good_spec,
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
        on_recovered=f"echo $MUSTAPLE_EVENT >> {tmp}/recovered.log",
    )
    return keeper_config(tmp, hooks=hooks, fetch=QUICK, **policy)


def world(tmp: Path, key_type: KeyType = "ec", **policy: Any) -> AbstractAsyncContextManager[World]:
    """The keeper's world (`mustaple.testing.keeper_world`) with hooks that leave files."""
    return keeper_world(tmp, config(tmp, **policy), key_type=key_type)


def run(coro: Callable[[Path], object], tmp: Path) -> None:
    asyncio.run(coro(tmp))  # type: ignore[arg-type]


class Counted(Settled):
    """A `Settled` that counts its settles (the daemon's loop settles after each pass)."""

    settles = 0

    def settle(self) -> None:
        self.settles += 1
        super().settle()


NOWHERE = "http://127.0.0.1:9/"  # nothing listens: only a MemoryFetcher answers for it


@dataclass
class Offline:
    """A keeper whose fetches a `MemoryFetcher` answers: the CA's correct answer, or what
    the test sets (`failing`, `revoked`)."""

    tmp: Path
    clock: ManualClock
    ca: CA
    sink: RecordingSink = field(default_factory=RecordingSink)
    leaves: dict[int, Leaf] = field(default_factory=dict)
    failing: Rejection | None = None
    revoked: bool = False

    def issue(self, name: str) -> Leaf:
        leaf = self.ca.issue(name, ocsp_urls=[NOWHERE])
        self.leaves[leaf.cert.serial_number] = leaf
        leaf.write(self.tmp / "live" / name)
        return leaf

    def answer(self, target: Target, now: datetime) -> bytes | Rejection:
        if self.failing is not None:
            return self.failing
        spec = good_spec(self.leaves[target.serial], self.ca.issuing, now)
        if self.revoked:
            single = replace(
                spec.singles[0],
                status=ocsp.OCSPCertStatus.REVOKED,
                revocation_time=now - timedelta(hours=1),
            )
            spec = replace(spec, singles=(single,))
        return craft_response(spec)

    def keeper(
        self,
        store: SqliteStore,
        fetcher: MemoryFetcher,
        sinks: dict[str, Sink] | None = None,
        **policy: Any,
    ) -> Keeper:
        return Keeper(
            config(self.tmp, **policy),
            store=store,
            sinks=sinks or {self.sink.name: self.sink},
            clock=self.clock,
            dice=lambda: 0.5,
            fetcher=fetcher,
        )


@asynccontextmanager
async def offline(
    tmp: Path,
    kind: type[Offline] | None = None,
    sinks: dict[str, Sink] | None = None,
    **policy: Any,
) -> AsyncIterator[tuple[Offline, Keeper, MemoryFetcher]]:
    """A keeper of `tmp/live` with no socket: the world (an `Offline`, or the `kind` given),
    the keeper (delivering to `sinks`, default the world's recording sink), its fetcher."""
    clock = ManualClock()
    world = (kind or Offline)(tmp, clock, CA(now=clock.now - DAY))
    fetcher = MemoryFetcher(world.answer)
    store = SqliteStore(tmp / "state" / "state.db")
    try:
        async with world.keeper(store, fetcher, sinks, **policy) as keeper:
            yield world, keeper, fetcher
    finally:
        store.close()


async def one_held(w: Offline, keeper: Keeper) -> tuple[Managed, Staple]:
    """A certificate issued, looked at and fetched: the keeper's one file, and its staple."""
    w.issue("a.test")
    await keeper.scan()
    await keeper.tick()
    (managed,) = keeper.managed.values()
    held = managed.held
    assert held is not None
    return managed, held


def beside() -> dict[str, Sink]:
    """One file sink, "files", writing each staple beside its certificate file."""
    return {"files": FileSink("files", path="{dir}/staple.der")}


def test_new_certificate_is_fetched_stored_and_delivered(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, fetcher):
            leaf = w.issue("a.test")
            assert [m.name for m in await keeper.scan()] == ["a.test"]
            await keeper.tick()
            assert [t.serial for t in fetcher.fetched] == [leaf.cert.serial_number]
            delivery = w.sink.last()
            assert delivery.action is Action.STAPLE
            assert delivery.name == "a.test"
            assert delivery.bundle_has_issuer
            managed = next(iter(keeper.managed.values()))
            assert managed.held is not None
            assert managed.held.der == delivery.der
            assert (
                managed.next_due == managed.held.this_update + 2 * DAY - 0.2 * DAY
            )  # 4-day window
            stored = keeper.store.load(managed.key)
            assert stored is not None
            assert stored.der == delivery.der
            assert stored.responder_url == NOWHERE
            assert [a.url for a in keeper.store.history(managed.key)] == [NOWHERE]
            await keeper.tick()  # nothing due, nothing changed: nothing fetched or delivered
            assert len(fetcher.fetched) == 1
            assert len(w.sink.batches) == 1

    run(scenario, tmp_path)


class Faulty(Offline):
    """An `Offline` world whose answer raises while `fault` is set: an error nobody
    foresaw in a refresh (such as a responder's absurd header once raised)."""

    fault: bool = False

    def answer(self, target: Target, now: datetime) -> bytes | Rejection:
        if self.fault:
            raise OverflowError("Python int too large to convert to C long")
        return super().answer(target, now)


def test_an_unexpected_error_in_a_refresh_is_a_failure_retried_not_the_end_of_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It made the certificate unusable (keeper-fault): never refreshed again until its file
    changed, so its staple ran out. Now it is a failed refresh: the staple in hand kept and
    delivered, on_failure told, retried with the back-off, good again once it works."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp, Faulty) as (w, keeper, fetcher):
            assert isinstance(w, Faulty)
            managed, held = await one_held(w, keeper)
            assert managed.next_due is not None
            w.fault = True
            w.clock.now = managed.next_due
            await keeper.tick()
            state = managed.life.state
            assert (state.phase, state.failures, state.held) == (lifecycle.Phase.FAILING, 1, held)
            assert state.rejection is not None
            assert state.rejection.reason is Reason.KEEPER_FAULT
            assert state.next_due is not None
            assert state.next_due > w.clock.now
            assert w.sink.last().der == held.der  # still served
            w.fault = False
            w.clock.now = state.next_due
            await keeper.tick()
            again = managed.life.state
            assert (again.phase, again.failures) == (lifecycle.Phase.GOOD, 0)
            assert len(fetcher.fetched) == 3

    with caplog.at_level(logging.INFO, logger="mustaple"):
        run(scenario, tmp_path)
    faults = [r for r in caplog.records if "OverflowError" in r.getMessage()]
    assert len(faults) == 1, [r.getMessage() for r in faults]


def test_a_renewed_certificate_never_keeps_the_old_ones_staple(tmp_path: Path) -> None:
    """A file renewed with a new leaf the CA does not know yet (unauthorized, as just after
    issuance): the staple on the sinks is the old leaf's, which no client can use with the new
    one: it is taken away, not left there for ever."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            w.issue("site.test")
            await keeper.scan()
            await keeper.tick()
            assert w.sink.last().action is Action.STAPLE
            w.failing = Rejection(Reason.UNAUTHORIZED, "unauthorized")
            w.issue("site.test")  # a new leaf in the same file
            await keeper.scan()
            await keeper.tick()
            assert (w.sink.last().action, w.sink.last().der) == (Action.REMOVE, None)

    run(scenario, tmp_path)


def test_a_stored_row_that_cannot_be_read_costs_only_that_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row of the state edited by hand or damaged (a time that is not a time, a response
    stored as text): at the next start that certificate is fetched again, with one warning,
    and the others are restored; taking in what others stored skips it too."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, fetcher):
            w.issue("one.test")
            w.issue("two.test")
            await keeper.scan()
            await keeper.tick()
            one = next(m for m in keeper.managed.values() if m.name == "one.test")
        with sqlite3.connect(tmp / "state" / "state.db") as db:
            db.execute("UPDATE staples SET fetched_at = 'garbage' WHERE cert_key = ?", (one.key,))
        store = SqliteStore(tmp / "state" / "state.db")
        fetcher = MemoryFetcher(w.answer)
        try:
            async with w.keeper(store, fetcher) as again:
                await again.scan()
                await again.deliver(again=True)
                restored = sorted(m.name for m in again.managed.values() if m.held is not None)
                assert restored == ["two.test"]
                with sqlite3.connect(tmp / "state" / "state.db") as db:
                    damage = "UPDATE staples SET this_update = 'x' WHERE cert_key = ?"
                    db.execute(damage, (one.key,))
                assert again.sync() == 0  # another process wrote: the bad row is skipped
                await again.tick()
                assert [t.serial for t in fetcher.fetched] == [one.target.serial]
                assert all(m.held is not None for m in again.managed.values())
        finally:
            store.close()

    with caplog.at_level(logging.WARNING, logger="mustaple"):
        run(scenario, tmp_path)
    assert any("cannot be read (Invalid isoformat" in r.getMessage() for r in caplog.records)


def test_a_fixed_issuer_file_is_noticed(tmp_path: Path) -> None:
    """An entry with `issuer = FILE` whose file first holds the wrong certificate (the
    previous intermediate, same name, as when a client writes cert.pem before chain.pem):
    the certificate is unusable until that file is fixed, then loaded at the next scan
    without its own file changing."""

    async def scenario(tmp: Path) -> None:
        issuer = tmp / "issuer.pem"
        config = keeper_config(tmp)
        entry = CertEntry(paths=(str(tmp / "live" / "*" / "cert.pem"),), issuer=issuer)
        async with keeper_world(tmp, replace(config, certificates=(entry,))) as w:
            files = w.issue("site.test").write(tmp / "site")
            issuer.write_bytes(CA(name="mustaple test root").issuing.cert_pem)
            await w.keeper.scan()
            assert [p.path.name for p in w.keeper.problems.values()] == ["cert.pem"]
            issuer.write_bytes(files.issuer.read_bytes())
            await w.keeper.scan()
            assert (len(w.keeper.problems), len(w.keeper.managed)) == (0, 1)

    run(scenario, tmp_path)


def test_one_file_a_sink_refuses_beside_another_of_the_same_certificate(tmp_path: Path) -> None:
    """Two files of one certificate to one file sink, the first's staple path a directory:
    that delivery fails in one line and is retried, the other's file is written, and the
    sink's health says the failure (a success after it in the same batch used to hide it,
    and the retry arithmetic then raised at every pass)."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp, sinks=beside()) as (w, keeper, _):
            w.issue("a.test")
            copy = tmp / "live" / "b.test" / "fullchain.pem"
            copy.parent.mkdir()
            copy.write_bytes((tmp / "live" / "a.test" / "fullchain.pem").read_bytes())
            (tmp / "live" / "a.test" / "staple.der").mkdir()
            await keeper.scan()
            await keeper.tick()
            w.clock.now += timedelta(seconds=10)
            await keeper.tick()
            (life,) = keeper.lives.values()
            assert not life.sinks["files"].ok
            assert life.sinks["files"].failures == 2
            assert (tmp / "live" / "b.test" / "staple.der").is_file()

    run(scenario, tmp_path)


def test_a_look_at_copies_reads_the_deliveries_that_sent_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look at a file sink's copies asks it about the deliveries that wrote them, kept
    with what was sent (it made one for each of 100k staples every 30 s): a delivery is
    made only for the copy found astray, and that staple file is written again."""

    async def scenario(tmp: Path) -> None:
        made: list[str] = []
        real = Keeper._delivery

        def delivery(keeper: Keeper, managed: Any, wanted: Any) -> Any:
            made.append(managed.name)
            return real(keeper, managed, wanted)

        monkeypatch.setattr(Keeper, "_delivery", delivery)
        async with offline(tmp, sinks=beside()) as (w, keeper, _):
            for name in ("a.test", "b.test"):
                w.issue(name)
            await keeper.scan()
            await keeper.tick()
            assert made.count("a.test") >= 1  # the delivery that wrote it, at least
            made.clear()
            file = tmp / "live" / "a.test" / "staple.der"
            written = file.read_bytes()
            file.unlink()
            w.clock.now += keeper_module.COPIES_EVERY
            await keeper.look_at_copies()
            assert made == ["a.test"]  # one for the copy astray (is what is there good?)
            (astray,) = [m for m in keeper.managed.values() if m.astray]
            assert astray.name == "a.test"
            await keeper.deliver()
            assert file.read_bytes() == written

    run(scenario, tmp_path)


def test_a_look_at_copies_takes_a_newer_staple_found_in_a_copy_and_leaves_it(
    tmp_path: Path,
) -> None:
    """A copy replaced by a newer staple of the certificate (another process's, such as a
    `prime`'s): the look at the copies reads it back (in one batch, `_copies`), takes it
    and leaves the file as it is; a copy replaced by garbage is written again."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp, sinks=beside()) as (w, keeper, _):
            leaves = {name: w.issue(name) for name in ("a.test", "b.test")}
            await keeper.scan()
            await keeper.tick()
            w.clock.now += keeper_module.COPIES_EVERY
            newer = w.answer(make_target(leaves["a.test"].cert, w.ca.issuing.cert), w.clock.now)
            assert isinstance(newer, bytes)
            a_file, b_file = (tmp / "live" / n / "staple.der" for n in ("a.test", "b.test"))
            a_file.write_bytes(newer)
            b_file.write_bytes(b"garbage")
            await keeper.look_at_copies()
            assert [m.name for m in keeper.managed.values() if m.astray] == ["b.test"]
            (life,) = [x for x in keeper.lives.values() if x.name == "a.test"]
            assert life.state.answer is not None
            assert life.state.answer.der == newer
            assert a_file.read_bytes() == newer

    run(scenario, tmp_path)


def test_a_start_takes_a_newer_valid_answer_back_from_a_file_sink_and_nothing_else(
    tmp_path: Path,
) -> None:
    """At a start, a file sink's staple that is newer than the stored one (delivered while
    the store could not be written) is taken: a revocation is not undone by the older good
    staple. Garbage, an older answer or another certificate's answer there is not taken."""

    async def scenario(tmp: Path) -> None:
        clock = ManualClock()
        w = Offline(tmp, clock, CA(now=clock.now - DAY))
        leaf = w.issue("a.test")
        other = w.issue("b.test")
        file = tmp / "live" / "a.test" / "staple.der"
        store = SqliteStore(tmp / "state" / "state.db")
        sinks: dict[str, Sink] = {"files": FileSink("files", path="{dir}/staple.der")}

        async def start() -> tuple[Keeper, int]:
            keeper = Keeper(config(tmp), store=store, sinks=sinks, clock=clock,
                            dice=lambda: 0.5, fetcher=MemoryFetcher(w.answer))  # fmt: skip
            await keeper.scan()
            return keeper, await keeper.take_from_sinks()

        try:
            keeper, _ = await start()
            await keeper.tick()  # stored and delivered: good
            older = file.read_bytes()
            clock.now += timedelta(hours=1)
            w.revoked = True
            target = make_target(leaf.cert, w.ca.issuing.cert)
            revoked = w.answer(target, clock.now)
            assert isinstance(revoked, bytes)
            b_target = make_target(other.cert, w.ca.issuing.cert)
            for found in (b"garbage", w.answer(b_target, clock.now)):
                assert isinstance(found, bytes)
                file.write_bytes(found)
                assert (await start())[1] == 0
            file.write_bytes(revoked)
            keeper, taken = await start()
            assert taken == 1
            (life,) = [x for x in keeper.lives.values() if x.name == "a.test"]
            assert life.state.revoked is not None
            await keeper.deliver(again=True)
            assert file.read_bytes() == revoked
            keeper._flush()
            file.write_bytes(older)  # the stored answer is now the revoked one: older stays
            assert (await start())[1] == 0
        finally:
            store.close()

    run(scenario, tmp_path)


def test_a_new_answer_does_not_wait_for_a_failed_sinks_retry(tmp_path: Path) -> None:
    """One sink fails and its delivery waits for a retry; meanwhile the CA says revoked:
    the working sink gets the revoked answer at once, not after the retry pause."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            keeper.sinks["broken"] = RecordingSink("broken", fail=True)
            w.issue("a.test")
            await keeper.scan()
            await keeper.tick()
            (managed,) = keeper.managed.values()
            assert managed.retry_at is not None
            assert managed.retry_at > w.clock.now
            w.revoked = True
            await keeper.refresh(managed)
            await keeper.deliver()
            assert w.sink.last().action is Action.REVOKED

    run(scenario, tmp_path)


def test_a_retry_with_nothing_left_to_deliver_is_dropped(tmp_path: Path) -> None:
    """A sink failed, then the staple expired with at_expiry = "keep" (nothing to deliver
    any more): the retry time goes with it, so the next wake-up is not left in the past (a
    daemon loop that never pauses)."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp, at_expiry="keep") as (w, keeper, _):
            w.sink.fail = True
            managed, held = await one_held(w, keeper)
            assert managed.retry_at is not None
            w.failing = Rejection(Reason.TRY_LATER, "try later")
            w.clock.now = held.effective_expiry + timedelta(minutes=1)
            await keeper.tick()
            assert managed.retry_at is None
            wake = keeper.next_wakeup()
            assert wake is None or wake >= w.clock.now  # not the old retry, days ago

    run(scenario, tmp_path)


def test_a_week_of_refreshes_always_serves_a_valid_staple(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, fetcher):
            w.issue("a.test")
            await keeper.scan()
            await keeper.tick()
            start = w.clock.now
            while w.clock.now < start + 7 * DAY:
                wake = keeper.next_wakeup()
                assert wake is not None
                w.clock.now = max(wake, w.clock.now)
                await keeper.tick()
                served = next(iter(keeper.managed.values())).held
                assert served is not None
                assert served.fraction_left(w.clock.now) > 0.4
                assert w.sink.last().der == served.der
            assert 4 <= len(fetcher.fetched) - 1 <= 5

    run(scenario, tmp_path)


def test_restart_delivers_the_stored_staple_before_fetching(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            w.issue("a.test")
            await keeper.scan()
            await keeper.tick()
            first = w.sink.last().der
            w.failing = Rejection(Reason.TIMEOUT, "after 1 s")
            w.sink = RecordingSink()
            fetcher = MemoryFetcher(w.answer)
            store = SqliteStore(tmp / "state" / "state.db")
            async with w.keeper(store, fetcher) as fresh:
                await fresh.scan()
                await fresh.deliver()
                assert w.sink.last().der == first
                assert fetcher.fetched == []
                wake = fresh.next_wakeup()
                assert wake is not None
                assert wake > w.clock.now
            store.close()

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


@dataclass
class Stale(Offline):
    """The CA's responder answers from a cache that is never refreshed (while `stale`): the
    same response again, until it expires."""

    stale: bool = False
    cached: bytes | Rejection | None = None

    def answer(self, target: Target, now: datetime) -> bytes | Rejection:
        if not self.stale or self.cached is None:
            self.cached = super().answer(target, now)
        return self.cached


def test_a_staple_the_ca_let_expire_is_told_expired_then_recovered_once(tmp_path: Path) -> None:
    """The CA answers the same response again until it expires (on_expiring, then
    MUSTAPLE_EVENT=expired, and the expired answer is a failure). The fresh answer that then
    comes ends that run, and on_recovered says so, once, as the state's run of failures
    decides (the shared `runs` table, not only this process's view)."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp, Stale) as (w, keeper, _):
            assert isinstance(w, Stale)
            managed, first = await one_held(w, keeper)
            w.stale = True
            while w.clock.now < first.effective_expiry:
                w.clock.now = keeper.next_wakeup()  # type: ignore[assignment]
                await keeper.tick()
            assert (managed.held, managed.failures) == (None, 1)
            w.stale = False
            for _ in range(2):
                w.clock.now = keeper.next_wakeup()  # type: ignore[assignment]
                await keeper.tick()
            assert (managed.failures, managed.held is not None) == (0, True)
        assert (tmp / "expiring.log").read_text().split()[-1] == "expired"
        assert (tmp / "recovered.log").read_text().split() == ["recovered"]

    run(scenario, tmp_path)


def test_revoked_replaces_the_good_staple_everywhere_and_is_hooked(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            w.issue("a.test")
            await keeper.scan()
            await keeper.tick()
            w.revoked = True
            w.clock.now = keeper.next_wakeup()  # type: ignore[assignment]
            await keeper.tick()
            revoked = w.sink.last()
            assert revoked.action is Action.REVOKED  # the CA's revoked answer, not a good one
            assert revoked.status == "revoked"
            managed = next(iter(keeper.managed.values()))
            assert managed.revoked is not None
            assert revoked.der == managed.revoked.der
            assert managed.held is None
            await asyncio.sleep(0.2)
        assert "MUSTAPLE_STATUS=revoked" in (tmp / "revoked.env").read_text()

    run(scenario, tmp_path)


def test_watching_new_changed_and_removed_files(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            w.issue("a.test")
            await keeper.scan()
            assert await keeper.scan() == []
            w.issue("b.test")
            assert [m.name for m in await keeper.scan()] == ["b.test"]
            w.issue("a.test")  # reissued: a new certificate in the same file
            (changed,) = await keeper.scan()
            assert changed.next_due == w.clock.now
            (tmp / "live" / "b.test" / "fullchain.pem").unlink()
            await keeper.scan()
            assert sorted(m.name for m in keeper.managed.values()) == ["a.test"]

    run(scenario, tmp_path)


def test_a_survey_hands_back_only_what_changed_and_stats_an_issuer_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_survey` on what the keeper holds: nothing when nothing changed (but an unusable
    file: the keeper says whether it is read again); a file changed, a
    new one and one whose `issuer` file changed, each with its entry and stamp (a known file
    under the keeper's own `Path`); the files gone, a problem's too. Two entries cover the
    same file: the first wins. Each entry's `issuer` file is stat-ed once a pass."""
    certs, other = tmp_path / "certs", tmp_path / "other"
    for folder, names in ((certs, "abcd"), (other, "e")):
        folder.mkdir()
        for name in names:
            (folder / f"{name}.pem").write_text(name)
    issuer = tmp_path / "issuer.pem"
    issuer.write_text("ca")
    first = CertEntry(paths=(str(certs / "*.pem"),), issuer=issuer)
    second = CertEntry(paths=(str(certs / "a.pem"), str(other / "*.pem")))
    conf = replace(config(tmp_path), certificates=(first, second))
    found, gone = keeper_module._survey(conf, {}, [])
    assert gone == []
    assert {p.name: e for p, (e, _) in found.items()} == {
        "a.pem": first, "b.pem": first, "c.pem": first, "d.pem": first, "e.pem": second
    }  # fmt: skip
    held: dict[Path, Any] = {
        path: SimpleNamespace(stamp=stamp, entry=entry) for path, (entry, stamp) in found.items()
    }
    del held[certs / "d.pem"]  # an unusable file, kept as a problem: the keeper decides
    found, gone = keeper_module._survey(conf, held, [certs / "d.pem"])
    assert (list(found), gone) == ([certs / "d.pem"], [])
    ends = keeper_module._issuer_stamp(issuer)
    looked: list[str] = []
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        looked.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    os.utime(certs / "a.pem", ns=(1, 1))
    (certs / "b.pem").unlink()
    (certs / "d.pem").unlink()
    (certs / "f.pem").write_text("f")
    found, gone = keeper_module._survey(conf, held, [certs / "d.pem"])
    assert sorted(p.name for p in gone) == ["b.pem", "d.pem"]
    assert [p.name for p in found] == ["a.pem", "f.pem"]
    assert next(iter(found)) is next(p for p in held if p.name == "a.pem")  # the keeper's own
    assert found[certs / "a.pem"] == (first, (1, 1, *ends))
    assert looked.count(str(issuer)) == 1
    os.utime(issuer, ns=(2, 2))  # a fixed issuer file: each of its entry's files again
    found, _ = keeper_module._survey(conf, held, [])
    assert sorted(p.name for p in found) == ["a.pem", "c.pem", "f.pem"]


def test_a_survey_leaves_a_skipped_entrys_files_as_they_are(tmp_path: Path) -> None:
    """An entry set aside (its look hangs, see `Surveys`) is not looked at, and the files
    its patterns match are neither changed nor gone (a dead mount must not remove their
    staples); `at` says where a look is: the entry's number and the file."""
    certs, other = tmp_path / "certs", tmp_path / "other"
    for folder in (certs, other):
        folder.mkdir()
        (folder / "a.pem").write_text("a")
    first = CertEntry(paths=(str(certs / "*.pem"),))
    second = CertEntry(paths=(str(other / "*.pem"),))
    conf = replace(config(tmp_path), certificates=(first, second))
    at: list[object] = []
    found, _ = keeper_module._survey(conf, {}, [], (), at)
    assert sorted(found) == [certs / "a.pem", other / "a.pem"]
    assert at == [1, str(other / "a.pem")]
    held: dict[Path, Any] = {
        path: SimpleNamespace(stamp=stamp, entry=entry) for path, (entry, stamp) in found.items()
    }
    (certs / "a.pem").unlink()  # what a look would take as gone
    (other / "a.pem").unlink()
    found, gone = keeper_module._survey(conf, held, [certs / "b.pem"], {0}, at)
    assert (found, gone) == ({}, [other / "a.pem"])
    assert at[0] == 1


def test_a_survey_keeps_a_file_a_skipped_entry_listed_first(tmp_path: Path) -> None:
    """A file of an entry set aside that a later entry's pattern also lists stays the set
    aside entry's: neither changed (a reload under the other entry) nor gone."""
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "a.pem").write_text("a")
    first = CertEntry(paths=(str(certs / "a.pem"),))
    second = CertEntry(paths=(str(certs / "*.pem"),))
    conf = replace(config(tmp_path), certificates=(first, second))
    found, _ = keeper_module._survey(conf, {}, [])
    assert found == {certs / "a.pem": (first, ANY)}
    held: dict[Path, Any] = {
        path: SimpleNamespace(stamp=stamp, entry=entry) for path, (entry, stamp) in found.items()
    }
    os.utime(certs / "a.pem", ns=(1, 1))
    assert keeper_module._survey(conf, held, [], {0}) == ({}, [])
    assert list(keeper_module._survey(conf, held, [], ())[0]) == [certs / "a.pem"]


def count_stats(monkeypatch: pytest.MonkeyPatch, looked: list[str]) -> None:
    """From now on, each stat of a `fullchain.pem` is added to `looked`."""
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path).endswith("fullchain.pem"):
            looked.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)


def test_a_pass_looks_only_at_entries_whose_directories_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With file events (the passes of `run`): from the second watched pass, a pass in
    which nothing changed stats no certificate file; a new certificate, a reissued one and
    a removed one are each seen at the next pass; the rescan interval looks at every file;
    so does a pass while an unusable file's issuer download is due again."""
    looked: list[str] = []

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            w.issue("a.test")
            await keeper.scan()  # the start: no watch
            count_stats(monkeypatch, looked)
            for _ in range(2):  # the first watched pass sets the watches up
                assert await keeper.scan(watch=True) == []
            assert looked
            looked.clear()
            assert await keeper.scan(watch=True) == []
            assert looked == []
            w.issue("b.test")
            assert [m.name for m in await keeper.scan(watch=True)] == ["b.test"]
            await keeper.scan(watch=True)  # b.test's directory now watched from the start
            looked.clear()
            w.issue("a.test")  # reissued
            assert [m.name for m in await keeper.scan(watch=True)] == ["a.test"]
            (tmp / "live" / "b.test" / "fullchain.pem").unlink()
            await keeper.scan(watch=True)
            assert sorted(m.name for m in keeper.managed.values()) == ["a.test"]
            await keeper.scan(watch=True)
            looked.clear()
            await keeper.scan(watch=True)
            assert looked == []
            w.clock.now += keeper.policy.rescan_interval
            await keeper.scan(watch=True)
            assert looked == [str(tmp / "live" / "a.test" / "fullchain.pem")]
            looked.clear()
            await keeper.scan(watch=True)
            assert looked == []
            path = tmp / "live" / "a.test" / "fullchain.pem"
            keeper.problems[path] = SimpleNamespace(retry_at=w.clock.now)  # type: ignore[assignment]
            await keeper.scan(watch=True)
            assert looked == [str(path)]
            del keeper.problems[path]

    run(scenario, tmp_path)


def test_without_a_rescan_longer_than_the_watch_every_pass_looks_at_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked: list[str] = []

    async def scenario(tmp: Path) -> None:
        five = timedelta(seconds=5)
        async with offline(tmp, rescan_interval=five, watch_interval=five) as (w, keeper, _):
            w.issue("a.test")
            await keeper.scan()
            count_stats(monkeypatch, looked)
            for _ in range(3):
                await keeper.scan(watch=True)
            assert len(looked) == 3

    run(scenario, tmp_path)


def test_status_rows_follow_the_files_across_passes(tmp_path: Path) -> None:
    """The stored status rows (what `mustaple status` lists) are those of the files there now:
    a second file's path goes when it goes, a renewed certificate's old leaf goes, a file
    turned unusable shows that only, and its row goes with the file."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):

            async def rows() -> list[tuple[str, str, tuple[str, ...]]]:
                await keeper.scan()
                await keeper.tick()
                return sorted((r.name, r.state, r.paths) for r in keeper.store.statuses().values())

            def live(name: str) -> str:
                return str(tmp / "live" / name / "fullchain.pem")

            w.issue("a.test")
            w.issue("b.test")
            copy = tmp / "live" / "d.test" / "fullchain.pem"
            copy.parent.mkdir()
            copy.write_bytes(Path(live("a.test")).read_bytes())  # the same leaf, twice
            both = (live("a.test"), str(copy))
            assert await rows() == [("a.test", "good", both), ("b.test", "good", (live("b.test"),))]
            copy.unlink()
            w.issue("b.test")  # renewed: a new leaf in the same file
            assert await rows() == [
                ("a.test", "good", (live("a.test"),)), ("b.test", "good", (live("b.test"),))
            ]  # fmt: skip
            Path(live("a.test")).write_text("garbled")
            assert await rows() == [
                ("a.test", "unusable", (live("a.test"),)), ("b.test", "good", (live("b.test"),))
            ]  # fmt: skip
            Path(live("a.test")).unlink()
            assert await rows() == [("b.test", "good", (live("b.test"),))]

    run(scenario, tmp_path)


def test_rows_of_files_gone_while_no_keeper_ran_go_at_its_next_start(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, fetcher):
            w.issue("a.test")
            w.issue("b.test")
            await keeper.scan()
            await keeper.tick()
        (tmp / "live" / "b.test" / "fullchain.pem").unlink()  # while no keeper runs
        store = SqliteStore(tmp / "state" / "state.db")
        try:
            assert sorted(r.name for r in store.statuses().values()) == ["a.test", "b.test"]
            async with w.keeper(store, fetcher) as again:
                await again.scan()
                await again.tick()
            assert [r.name for r in store.statuses().values()] == ["a.test"]
        finally:
            store.close()

    run(scenario, tmp_path)


def test_a_rewritten_file_of_the_same_certificate_keeps_what_is_known_of_it(
    tmp_path: Path,
) -> None:
    """A file rewritten with the same leaf (a re-deploy, a touch) is the same certificate:
    its state goes on, not read back from the store, which may be behind (a full disk)."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            w.issue("a.test")
            await keeper.scan()
            await keeper.tick()
            setattr(keeper.store, "save_staples", _disk_full)  # noqa: B010 (a method, shadowed)
            w.revoked = True
            w.clock.now = keeper.next_wakeup()  # type: ignore[assignment]
            await keeper.tick()
            assert w.sink.last().action is Action.REVOKED  # learned, not stored
            w.failing = Rejection(Reason.TIMEOUT, "the CA is down")
            path = tmp / "live" / "a.test" / "fullchain.pem"
            os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
            assert [m.name for m in await keeper.scan()] == ["a.test"]
            await keeper.tick()
            assert [v.phase for v in keeper.views()] == ["revoked"]
            assert w.sink.last().action is Action.REVOKED  # never the older good staple again
            del keeper.store.save_staples  # the class's own again
            w.clock.now += timedelta(seconds=1)
            await keeper.tick()
            stored = keeper.store.load(next(iter(keeper.lives)))
            assert stored is not None
            assert stored.revoked

    run(scenario, tmp_path)


def _disk_full(*_: object) -> list[bool]:
    raise sqlite3.OperationalError("database or disk is full")


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
        async with offline(tmp) as (w, keeper, _):
            w.issue("a.test")
            await keeper.scan()
            w.sink.fail = True
            await keeper.tick()
            w.sink.fail = False
            await keeper.tick()  # a failed sink is tried again after a pause, not at once
            assert len(w.sink.batches) == 1
            w.clock.now += timedelta(seconds=5)
            await keeper.tick()
            assert len(w.sink.batches) == 2
            await keeper.tick()
            assert len(w.sink.batches) == 2

    run(scenario, tmp_path)


def test_concurrency_per_responder_host_is_bounded(
    tmp_path: Path, serve: Callable[[Handler], LoopbackServer]
) -> None:
    crowded = Crowded()
    server = serve(crowded)

    async def scenario(tmp: Path) -> None:
        async with world(tmp, per_host=2) as w:
            for n in range(8):
                leaf = w.ca.issue(f"c{n}.test", ocsp_urls=[server.url])
                leaf.write(tmp / "live" / f"c{n}.test")
            await w.keeper.scan()
            await w.keeper.tick()

    run(scenario, tmp_path)
    assert crowded.peak == 2


GONE = (
    "{}: the file disappeared while it was being read (a renewal may have replaced it); "
    "the next prime, or the keeper's next pass, takes it"
)


def test_a_file_gone_between_its_look_and_its_reading_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b.test's file is looked at, then taken away before it is read (the reads of a scan
    are made together, after the look): the file disappeared, and the next pass takes it;
    it said `certificate not found`, of a file the keeper had just seen."""
    doomed = tmp_path / "live" / "b.test" / "fullchain.pem"
    read_into = reads._read_into

    def taken_away_first(got: dict[str, Any], files: dict[str, str], at: list[object]) -> None:
        doomed.unlink(missing_ok=True)
        read_into(got, files, at)

    async def scenario(tmp: Path) -> None:
        async with world(tmp) as w:
            w.issue("a.test")
            b = w.issue("b.test")
            monkeypatch.setattr(reads, "_read_into", taken_away_first)
            await w.keeper.scan()
            assert w.keeper.problems[doomed].message == GONE.format(doomed)
            assert [m.name for m in w.keeper.managed.values()] == ["a.test"]
            monkeypatch.setattr(reads, "_read_into", read_into)
            b.write(tmp / "live" / "b.test")  # the renewal's file
            await w.keeper.scan()
            assert doomed in w.keeper.managed
            assert not w.keeper.problems

    run(scenario, tmp_path)


def test_prime_of_a_file_gone_since_it_was_listed_says_it_disappeared(tmp_path: Path) -> None:
    """`prime --all` lists the files, then primes them: one removed in between disappeared
    (it said `certificate not found`); a symbolic link to nothing, listed too, is not found."""

    async def scenario(tmp: Path) -> None:
        async with world(tmp) as w:
            w.issue("a.test")
            w.issue("b.test")
            link = tmp / "live" / "c.test" / "fullchain.pem"
            link.parent.mkdir()
            link.symlink_to(tmp / "nowhere.pem")
            listed = list(configured_files(w.keeper.config))
            gone = tmp / "live" / "b.test" / "fullchain.pem"
            gone.unlink()
            primed, unusable = await w.keeper.prime_usable(listed)
        assert [p.name for p in primed] == ["a.test"]
        assert [(u.name, u.message) for u in unusable] == [
            ("b.test", GONE.format(gone)), ("c.test", f"{link}: certificate not found")
        ]  # fmt: skip

    run(scenario, tmp_path)


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
                cert_id = make_cert_id(leaf.issuer, leaf.cert.serial_number, hash_name)
                assert w.keeper.state_of(cert_id) is found.life.state
            assert w.keeper.find(make_cert_id(leaf.issuer, 12345)) is None
            assert w.keeper.state_of(make_cert_id(leaf.issuer, 12345)) is None
            (tmp / "live" / "a.test" / "fullchain.pem").unlink()
            await w.keeper.scan()
            assert w.keeper.find(make_cert_id(leaf.issuer, leaf.cert.serial_number)) is None

    run(scenario, tmp_path)
    assert seen == ["a.test True"]


# Valid answers: a newer one may replace the staple (revoked replaces it). Every other
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


def test_a_fault_in_a_pass_does_not_end_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug that escapes a whole pass (not one certificate's) is one error line; the
    daemon's loop goes on, and the next pass delivers."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            w.issue("a.test")
            stop = asyncio.Event()
            passes: list[int] = []
            real_tick = keeper.tick

            async def tick(_: asyncio.Event | None = None) -> None:
                passes.append(1)
                if len(passes) == 1:
                    raise RuntimeError("a bug in a pass")
                await real_tick()
                stop.set()

            async def no_pause(*_: object) -> float:
                return 0.0

            monkeypatch.setattr(keeper, "tick", tick)
            monkeypatch.setattr(daemon, "_pause", no_pause)
            await keeper.scan()  # as the daemon's start does
            settled = Counted()
            passing = daemon._loop(keeper, stop, asyncio.Event(), w.clock, settled)
            await asyncio.wait_for(passing, 10)
            assert len(passes) == 2
            assert w.sink.last().name == "a.test"
            assert settled.settles == 1  # after the pass that ended, not the one that failed

    with caplog.at_level(logging.ERROR, logger="mustaple"):
        run(scenario, tmp_path)
    (line,) = [r.getMessage() for r in caplog.records if "in a pass" in r.getMessage()]
    assert line.startswith("unexpected error in a pass (RuntimeError: a bug in a pass)")


def test_a_pass_that_always_fails_is_no_busy_loop(tmp_path: Path) -> None:
    """What was due stays due when every pass fails: the loop waits 1 s, 2 s ... between
    them (up to the watch interval), not a pass and an error line as fast as it can."""

    async def scenario(tmp: Path) -> int:
        async with offline(tmp) as (_, keeper, _fetcher):
            passes: list[int] = []

            async def tick(stop: asyncio.Event | None = None) -> None:
                passes.append(1)
                raise RuntimeError("a bug in every pass")

            keeper.tick = tick  # type: ignore[method-assign]
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(1.5, stop.set)
            await daemon._loop(keeper, stop, asyncio.Event(), keeper.clock, Settled())
            return len(passes)

    assert asyncio.run(scenario(tmp_path)) == 2  # at 0 s and 1 s (28,000 before)


@dataclass
class Cached(Offline):
    """A responder behind a cache: the same answer (thisUpdate `fixed_at`) again and again."""

    fixed_at: datetime | None = None

    def answer(self, target: Target, now: datetime) -> bytes | Rejection:
        if self.failing is not None or self.fixed_at is None:
            return super().answer(target, now)
        return craft_response(good_spec(self.leaves[target.serial], self.ca.issuing, self.fixed_at))


def test_the_same_answer_again_does_not_raise_the_expiring_alert_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A responder's cache serves one answer until it expires: past 25% left, each refresh
    took the same answer as news, so on_expiring ran again at every refresh (12 in an hour)."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp, Cached) as (w, keeper, fetcher):
            assert isinstance(w, Cached)
            w.issue("a.test")
            w.fixed_at = w.clock.now
            await keeper.scan()
            await keeper.tick()
            w.clock.now += 4 * DAY * 0.8
            for _ in range(60):
                await keeper.tick()
                w.clock.now += timedelta(minutes=1)
            assert len(fetcher.fetched) > 10

    caplog.set_level(logging.WARNING, "mustaple")
    run(scenario, tmp_path)
    assert len([r for r in caplog.records if "expiring" in r.getMessage()]) == 1


def test_a_restarted_keeper_tells_each_level_of_a_staple_once(tmp_path: Path) -> None:
    """The staple in hand runs out (the CA's cache serves it again): WARNING is told once,
    and not again by each keeper started after it on the same state (a restart, a SIGHUP:
    it started at alert OK and told WARNING again at its first pass); CRITICAL is told
    when it comes, and a newer staple's own decline is told again."""

    async def scenario(tmp: Path) -> None:
        told = tmp / "expiring.log"
        async with offline(tmp, Cached) as (w, keeper, fetcher):
            assert isinstance(w, Cached)
            w.issue("a.test")
            w.fixed_at = w.clock.now
            await keeper.scan()
            await keeper.tick()
            w.clock.now += 4 * DAY * 0.8  # a fifth of the 4 days left: WARNING
            await keeper.tick()
        assert told.read_text().split() == ["expiring"]

        async def restart(then: timedelta = timedelta(0)) -> None:
            store = SqliteStore(tmp / "state" / "state.db")
            try:
                async with w.keeper(store, fetcher) as keeper:
                    await keeper.scan()
                    w.clock.now += then
                    await keeper.tick()
            finally:
                store.close()

        for _ in range(2):
            await restart()
        assert told.read_text().split() == ["expiring"], "the same level again"
        await restart(4 * DAY * 0.15)  # 4.8 hours left: CRITICAL
        assert told.read_text().split() == ["expiring"] * 2
        w.fixed_at = w.clock.now + timedelta(minutes=10)  # a fresh answer from then on
        await restart(timedelta(minutes=10))
        await restart(4 * DAY * 0.8)  # the fresh one runs out in turn: WARNING
        await restart()
        assert told.read_text().split() == ["expiring"] * 3

    run(scenario, tmp_path)


async def _until_expired(keeper: Keeper, w: Offline, last: Callable[[], object] = list) -> None:
    """The keeper's passes, at each time it wakes, until the staple in hand has expired;
    `last()` before the pass that finds it expired."""
    (managed,) = keeper.managed.values()
    held = managed.held
    assert held is not None
    while w.clock.now < held.effective_expiry:
        wake = keeper.next_wakeup()
        assert wake is not None
        w.clock.now = wake
        if wake >= held.effective_expiry:
            last()
        await keeper.tick()
    assert managed.held is None


async def _told_expired(
    w: Offline, fetcher: MemoryFetcher, locker: sqlite3.Connection | None = None
) -> datetime:
    """A keeper fetched a staple, then no fresh answer came until it expired, and one pass
    a minute later. With `locker`, another process: it holds the state's write lock over
    the pass that finds the staple expired. Returns the expiry."""
    store = SqliteStore(w.tmp / "state" / "state.db", busy_timeout=0.1 if locker else 30.0)
    try:
        async with w.keeper(store, fetcher) as keeper:
            await keeper.scan()
            await keeper.tick()
            (managed,) = keeper.managed.values()
            assert managed.held is not None
            expiry = managed.held.effective_expiry
            w.failing = Rejection(Reason.TRY_LATER, "try later")
            if locker is None:
                await _until_expired(keeper, w)
            else:
                await _until_expired(keeper, w, lambda: locker.execute("BEGIN IMMEDIATE"))
                locker.execute("ROLLBACK")
            w.clock.now += timedelta(minutes=1)
            await keeper.tick()
    finally:
        store.close()
    return expiry


async def _seen_again(w: Offline, fetcher: MemoryFetcher, expiry: datetime) -> list[str]:
    """The clock went back an hour before `expiry` (a snapshot restored, NTP); a keeper
    started on the same state holds that staple again and sees it expire again. The events
    `on_expiring` was told, in order, by every keeper."""
    w.clock.now = expiry - timedelta(hours=1)
    store = SqliteStore(w.tmp / "state" / "state.db")
    try:
        async with w.keeper(store, fetcher) as keeper:
            await keeper.scan()
            await _until_expired(keeper, w)
    finally:
        store.close()
    return (w.tmp / "expiring.log").read_text().split()


def _offline(tmp: Path) -> tuple[Offline, MemoryFetcher]:
    """The world of `offline`, for keepers the test starts one after the other."""
    clock = ManualClock()
    w = Offline(tmp, clock, CA(now=clock.now - DAY))
    w.issue("a.test")
    return w, MemoryFetcher(w.answer)


def test_an_expiry_told_is_not_told_again_after_a_restart_on_a_clock_set_back(
    tmp_path: Path,
) -> None:
    """The restarted keeper held the staple again (still valid by its clock) and told its
    expiry a second time: the state records the expiry told for that staple, the step after
    CRITICAL, and the keeper that sees it again tells nothing."""

    async def scenario() -> list[str]:
        w, fetcher = _offline(tmp_path)
        return await _seen_again(w, fetcher, await _told_expired(w, fetcher))

    assert asyncio.run(scenario()) == ["expiring", "expiring", "expired"]


def test_an_expiry_a_locked_state_could_not_record_is_told_by_the_next_flush(
    tmp_path: Path,
) -> None:
    """Another process holds the state's write lock as the staple expires: the keeper's
    flush cannot take it, and the next one (a pass later) records the expiry and tells it;
    the keeper after a restart on a clock set back does not tell it again."""
    (tmp_path / "state").mkdir()
    locker = sqlite3.connect(tmp_path / "state" / "state.db", isolation_level=None)

    async def scenario() -> list[str]:
        w, fetcher = _offline(tmp_path)
        return await _seen_again(w, fetcher, await _told_expired(w, fetcher, locker))

    try:
        told = asyncio.run(scenario())
    finally:
        locker.close()
    assert told == ["expiring", "expiring", "expired"]


def test_a_failure_the_state_was_locked_for_waits_for_it_and_is_told_once(
    tmp_path: Path,
) -> None:
    """Keeper A's failure cannot be written: another connection holds the state's write
    lock (a `prime`'s group of writes holds it for milliseconds), past A's busy timeout.
    Meanwhile another process (keeper B, as a `prime` beside it) opens the same run of
    failures in the shared state and tells it. Once the lock goes, A's next flush finds the
    run open: on_failure ran once. A used to tell it at once, from its own view, when its
    flush failed: paged twice for one run."""
    (tmp_path / "state").mkdir()
    database = tmp_path / "state" / "state.db"
    locker = sqlite3.connect(database, isolation_level=None)
    w, fetcher = _offline(tmp_path)
    told = tmp_path / "failures.log"
    hooks = Hooks(on_failure=f"echo failure >> {told}")
    settings = replace(config(tmp_path), hooks=hooks)

    def keeper(store: SqliteStore) -> Keeper:
        sinks: dict[str, Sink] = {w.sink.name: w.sink}
        return Keeper(settings, store=store, sinks=sinks, clock=w.clock, fetcher=fetcher)

    async def scenario() -> None:
        mine, theirs = SqliteStore(database, busy_timeout=0.1), SqliteStore(database)
        async with keeper(mine) as a:
            await a.scan()
            await a.tick()  # a good staple, stored
            wake = a.next_wakeup()
            assert wake is not None
            w.clock.now, w.failing = wake, Rejection(Reason.TRY_LATER, "try later")
            locker.execute("BEGIN IMMEDIATE")
            await a.tick()  # its refresh fails; its flush finds the state locked
            assert a.store_problem is not None
            locker.execute("ROLLBACK")
            async with keeper(theirs) as b:  # a prime: its write opens the run
                (primed,) = await b.prime([tmp_path / "live" / "a.test" / "fullchain.pem"])
            assert primed.state.failures == 1
            w.clock.now += timedelta(seconds=1)
            await a.tick()  # its next flush: the run is open already, told by the other
            assert a.store_problem is None
        mine.close()
        theirs.close()

    try:
        asyncio.run(scenario())
    finally:
        locker.close()
    assert told.read_text().split() == ["failure"]


def test_an_expiry_an_older_mustaple_told_is_not_told_again_after_the_upgrade(
    tmp_path: Path,
) -> None:
    """An older mustaple (schema 4) told the expiry and recorded only the CRITICAL level
    before it; its status row says expired. The upgrade records the expiry as told for the
    stored staple, so that a keeper that holds it again does not tell it again."""

    async def scenario() -> list[str]:
        w, fetcher = _offline(tmp_path)
        expiry = await _told_expired(w, fetcher)
        db = sqlite3.connect(tmp_path / "state" / "state.db", isolation_level=None)
        db.execute("UPDATE alerts SET level = ?", (int(Severity.CRITICAL),))
        db.execute("PRAGMA user_version = 4")
        db.close()
        return await _seen_again(w, fetcher, expiry)

    assert asyncio.run(scenario()) == ["expiring", "expiring", "expired"]


def test_a_failure_after_a_long_suspend_does_not_call_the_expired_staple_valid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Five days suspended, the responder down at the resume: the refresh runs before the
    pass judges expiry, and its failure said the staple in hand 'stays valid' until a time
    already past."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            w.issue("a.test")
            await keeper.scan()
            await keeper.tick()
            w.clock.now += 5 * DAY
            w.failing = Rejection(Reason.TIMEOUT, "timed out")
            await keeper.tick()

    caplog.set_level(logging.WARNING, "mustaple")
    run(scenario, tmp_path)
    (failure,) = [r.getMessage() for r in caplog.records if "failure" in r.getMessage()]
    assert "no valid staple in hand: the last one expired at" in failure
    assert "stays valid" not in failure


def test_a_delivery_retry_no_longer_needed_leaves_no_wake_up_in_the_past(tmp_path: Path) -> None:
    """The sinks hold the removal after an expiry; a new staple's delivery fails; it expires
    before the retry, so the removal they hold is what is wanted again: the retry was never
    cleared, the next wake-up stayed in the past and the daemon spun (pauses of 0 s)."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp, at_expiry="remove") as (w, keeper, _):
            w.issue("a.test")
            await keeper.scan()
            await keeper.tick()  # delivered
            w.failing = Rejection(Reason.TIMEOUT, "timed out")
            w.clock.now += 5 * DAY
            await keeper.tick()  # expired: the removal delivered
            w.failing, w.sink.fail = None, True
            w.clock.now = keeper.next_wakeup() or w.clock.now
            await keeper.tick()  # a new staple, its delivery failed
            (managed,) = keeper.managed.values()
            assert managed.retry_at is not None
            w.failing, w.sink.fail = Rejection(Reason.TIMEOUT, "timed out"), False
            w.clock.now += 5 * DAY  # expired before the retry: the removal is wanted again
            for _ in range(3):  # the pass after the expiry tries the CA again at once
                await keeper.tick()
                w.clock.now += timedelta(milliseconds=1)
            wake = keeper.next_wakeup()
            assert wake is not None
            assert wake > w.clock.now

    run(scenario, tmp_path)


def test_a_clock_stepped_back_does_not_hold_a_retry_back_longer_than_retry_max(
    tmp_path: Path,
) -> None:
    """The clock ran a day ahead, a refresh failed, then NTP stepped it back: the retry,
    planned by the wrong time, was a day away (retry_max is 1 h): no attempt for 24 hours."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, fetcher):
            w.issue("a.test")
            await keeper.scan()
            await keeper.tick()
            w.clock.now += 2 * DAY + timedelta(hours=1)  # past the refresh point
            w.failing = Rejection(Reason.HTTP_SERVER_ERROR, "HTTP 503")
            await keeper.tick()
            failed = len(fetcher.fetched)
            w.clock.now -= DAY
            w.failing = None
            for _ in range(90):  # an hour and a half of passes, one a minute
                await keeper.tick()
                w.clock.now += timedelta(minutes=1)
            assert len(fetcher.fetched) > failed
            (life,) = keeper.lives.values()
            assert life.state.phase.value == "good"

    run(scenario, tmp_path)


@dataclass
class Short(Offline):
    """A responder whose answers live two hours."""

    def answer(self, target: Target, now: datetime) -> bytes | Rejection:
        if self.failing is not None:
            return self.failing
        leaf = self.leaves[target.serial]
        return craft_response(good_spec(leaf, self.ca.issuing, now, validity=timedelta(hours=2)))


def test_answers_of_two_hours_refreshed_on_time_raise_no_alert(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """'CRITICAL: expires soon' was 6 hours before expiry whatever the window: a responder
    of 2-hour answers made every fresh staple critical (an alert at every refresh, the page
    red). It is now the shorter of 6 hours and an eighth of the window."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp, Short) as (w, keeper, _):
            w.issue("a.test")
            await keeper.scan()
            for _ in range(6):
                await keeper.tick()
                w.clock.now = max(keeper.next_wakeup() or w.clock.now, w.clock.now)
            (view,) = keeper.views()
            level, _ = health(view.state, True, (), w.clock.now, keeper.policy.schedule)
            assert level is Severity.OK

    caplog.set_level(logging.WARNING, "mustaple")
    run(scenario, tmp_path)
    assert not [r for r in caplog.records if "expiring" in r.getMessage()]


def test_a_prime_after_the_certificate_expired_fails_its_gate(tmp_path: Path) -> None:
    """A must-staple certificate past its notAfter whose stored staple is still valid: a
    prime fetched it again and said `OK ... good staple ..., delivered`, exit 0 (a deploy
    hook's `&& systemctl reload` ran), while `status` said unusable, CRITICAL. It asks
    nothing, says FAILED with the expiry, and exits 1."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, fetcher):
            leaf = w.ca.issue("a.test", ocsp_urls=[NOWHERE], not_after=w.clock.now + DAY)
            w.leaves[leaf.cert.serial_number] = leaf
            path = leaf.write(w.tmp / "live" / "a.test").fullchain
            assert prime_exit_code(await keeper.prime([path])) is ExitCode.GOOD
            w.clock.now += 2 * DAY  # the staple has two days left, the certificate none
            fetched = len(fetcher.fetched)
            (primed,) = await keeper.prime([path])
            assert len(fetcher.fetched) == fetched
            line = prime_line(primed, w.clock.now)
            assert line.startswith("FAILED a.test: the certificate expired at "), line
            assert prime_exit_code([primed]) is ExitCode.NO_STAPLE
            assert prime_json(primed, w.clock.now)["reason"] == "cert-expired"

    run(scenario, tmp_path)


def test_a_certificate_past_its_own_expiry_is_fetched_no_more_and_says_so(
    tmp_path: Path,
) -> None:
    """A leaf past its notAfter was fetched at every refresh for ever and shown as OK (or,
    with a CA that stops answering for it, retried hourly for ever): it is now unusable,
    `cert-expired`, nothing fetched, until its file is renewed; not even once more at the
    pass that finds it expired (its refresh was due then)."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, fetcher):
            leaf = w.ca.issue("a.test", ocsp_urls=[NOWHERE], not_after=w.clock.now + 3 * DAY)
            w.leaves[leaf.cert.serial_number] = leaf
            leaf.write(w.tmp / "live" / "a.test")
            await keeper.scan()
            await keeper.tick()
            fetched = len(fetcher.fetched)
            w.clock.now += 4 * DAY
            (managed,) = keeper.managed.values()
            assert managed.life.state.due(w.clock.now)
            await keeper.tick()
            for _ in range(5):
                w.clock.now += DAY
                await keeper.tick()
            assert len(fetcher.fetched) == fetched
            (view,) = keeper.views()
            assert view.state.phase.value == "unusable"
            assert view.state.rejection is not None
            assert view.state.rejection.code == "cert-expired"
            assert keeper.next_wakeup() is None
            level, why = health(view.state, True, (), w.clock.now, keeper.policy.schedule)
            assert level is Severity.CRITICAL
            assert "the certificate expired at" in why

    run(scenario, tmp_path)


def test_expired_certificates_are_looked_for_only_once_one_may_have_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pass looked twice at each certificate's notAfter (100k looks each time): now
    not before the earliest one found, unless a file was taken since; and a certificate is
    still retired at the first pass past its notAfter."""
    sweeps = [0]
    real_turns = keeper_module._turns

    def counted(items: Any) -> Any:
        sweeps[0] += 1
        return real_turns(items)

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            start = w.clock.now
            for name, days in (("soon.test", 3), ("later.test", 30)):
                leaf = w.ca.issue(name, ocsp_urls=[NOWHERE], not_after=start + days * DAY)
                w.leaves[leaf.cert.serial_number] = leaf
                leaf.write(w.tmp / "live" / name)
            await keeper.scan()
            monkeypatch.setattr(keeper_module, "_turns", counted)
            await keeper._retire_expired(start)
            assert sweeps == [1]
            await keeper._retire_expired(start + 2 * DAY)
            assert sweeps == [1]  # nothing ends before three days
            w.issue("new.test")
            await keeper.scan()  # a file taken: looked at again
            sweeps[0] = 0
            await keeper._retire_expired(start + 2 * DAY)
            assert sweeps == [1]
            await keeper._retire_expired(start + 3 * DAY)
            assert sweeps == [2]
            phases = {life.name: life.state.phase for life in keeper.lives.values()}
            assert phases["soon.test"] is lifecycle.Phase.UNUSABLE
            assert phases["later.test"] is not lifecycle.Phase.UNUSABLE
            await keeper._retire_expired(start + 4 * DAY)
            assert sweeps == [3]  # an expired one is there: looked at every time

    run(scenario, tmp_path)


def on_tick(
    keeper: Keeper, monkeypatch: pytest.MonkeyPatch, told: Callable[[datetime], object]
) -> None:
    """`told(now)` at each certificate the keeper judges the time of (each `Tick` applied)."""
    real = keeper._apply

    def apply(life: Life, event: lifecycle.Event, now: datetime) -> None:
        if isinstance(event, lifecycle.Tick):
            told(now)
        real(life, event, now)

    monkeypatch.setattr(keeper, "_apply", apply)


def test_a_pass_gives_the_event_loop_a_turn_every_turn_of_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 100k certificates a pass held the event loop (and so the local responder) for
    seconds: it goes through them a slice at a time, the loop turning in between."""
    monkeypatch.setattr(keeper_module, "SLICE", (2, 2))

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            for n in range(6):
                w.issue(f"t{n}.test")
            await keeper.scan()
            await keeper.tick()
            turns = 0

            async def elsewhere() -> None:  # counts the loop's turns meanwhile
                nonlocal turns
                while True:
                    turns += 1
                    await asyncio.sleep(0)

            judged: list[int] = []  # the loop's turns so far at each certificate judged
            on_tick(keeper, monkeypatch, lambda _: judged.append(turns))
            for life in keeper.lives.values():
                life.calm = None  # else skipped: nothing changes that soon
            counting = asyncio.ensure_future(elsewhere())
            await asyncio.sleep(0)
            await keeper.judge_time()
            counting.cancel()
            assert len(judged) == 6
            assert len(set(judged)) == 3  # two at a time, a turn of the loop between

    run(scenario, tmp_path)


def test_a_pass_judges_the_time_of_a_certificate_only_when_a_tick_may_change_something(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Judging expiry and alerts of 100k certificates was a fifth of a pass's CPU, every
    5 s, for states that change a few times a week: a life is ticked again only once its
    calm is over (`lifecycle.calm_until`), the state changed, or the clock went back; and
    then the WARNING comes as it did."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            w.issue("a.test")
            await keeper.scan()
            await keeper.tick()
            (life,) = keeper.lives.values()
            ticks: list[datetime] = []
            on_tick(keeper, monkeypatch, ticks.append)
            start = w.clock.now
            for _ in range(3):
                w.clock.now += timedelta(seconds=5)
                await keeper.judge_time()
            assert ticks == []  # calm
            w.clock.now = start - timedelta(hours=1)  # the clock set back: judged again
            await keeper.judge_time()
            assert ticks == [w.clock.now]
            assert life.calm is not None
            assert life.calm[2] is not None
            w.clock.now = life.calm[2]  # judged again (the calm ends 1 s before the WARNING)
            await keeper.judge_time()
            assert len(ticks) == 2
            w.clock.now += timedelta(seconds=2)  # the WARNING comes, as without the skipping
            await keeper.judge_time()
            assert len(ticks) == 3
            assert life.state.alert is Severity.WARNING

    run(scenario, tmp_path)


def walked(keeper: Keeper) -> tuple[datetime | None, int, list[Path]]:
    """What a look at every certificate finds: the next wake-up, the staples held, and
    the files a delivery would send something to."""
    dues = [life.state.next_due for life in keeper.lives.values()]
    dues += [m.retry_at for m in keeper.managed.values()]
    dues += [p.retry_at for p in keeper.problems.values()]
    held = sum(life.state.held is not None for life in keeper.lives.values())
    per_sink: dict[str, list[tuple[Any, Any]]] = {}
    wanted: dict[Path, Any] = {}
    now, unplanned = keeper.clock(), dict(keeper._unplanned)
    keeper._plan_part(list(keeper.managed.values()), False, now, per_sink, wanted)
    keeper._unplanned = unplanned  # as it was: the walk is the test's, not the keeper's
    return min(filter(None, dues), default=None), held, sorted(wanted)


def test_a_pass_in_which_nothing_changed_looks_at_no_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once every staple is fetched and delivered, a pass whose clock finds nothing due
    neither judges the time of a certificate nor works out what a file's sinks should have:
    it costs what changed, not what is kept (a pass of 100k was 0.3 s of CPU every 5 s)."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, fetcher):
            for n in range(5):
                w.issue(f"t{n}.test")
            await keeper.scan()
            await keeper.tick()
            await keeper.tick()  # the plan finds each file delivered
            looked: list[str] = []
            wanted = lifecycle.wanted
            calm_at = Life.calm_at

            def counted_wanted(state: lifecycle.CertState, **kwargs: bool) -> Any:
                looked.append("wanted")
                return wanted(state, **kwargs)

            def counted_calm_at(life: Life, now: datetime) -> bool:
                looked.append("calm_at")
                return calm_at(life, now)

            monkeypatch.setattr(lifecycle, "wanted", counted_wanted)
            monkeypatch.setattr(Life, "calm_at", counted_calm_at)
            w.clock.now += timedelta(minutes=5)
            await keeper.tick()
            assert looked == []
            assert len(fetcher.fetched) == 5
            w.issue("t5.test")  # a new one: it alone is looked at
            await keeper.scan()
            await keeper.tick()
            assert looked.count("wanted") == 1
            assert w.sink.last().name == "t5.test"

    run(scenario, tmp_path)


def test_a_look_at_the_copies_asks_only_the_files_that_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look at a file sink's copies (every 30 s) asked each of 100k files whether the
    sink took its staple: now only those whose state, delivery or sinks' health changed
    since the last look, and through deliveries, a revocation, a file gone, a new one and
    a copy removed by hand it knows what asking every file would."""

    async def scenario(tmp: Path) -> None:
        async with offline(tmp, sinks=beside(), at_expiry="keep") as (w, keeper, _):
            asked: list[Path] = []
            kept_by = keeper._kept_by

            def counted(managed: Any, name: str) -> bool:
                asked.append(managed.path)
                return kept_by(managed, name)

            monkeypatch.setattr(keeper, "_kept_by", counted)

            async def step() -> None:
                await keeper.scan()
                await keeper.tick()  # a look at the copies, then a delivery
                w.clock.now += timedelta(minutes=1)  # a look is due again (every 30 s)
                asked.clear()
                await keeper.look_at_copies()
                walked = sorted(m.path for m in keeper.managed.values() if kept_by(m, "files"))
                assert sorted(keeper._kept["files"]) == walked
                w.clock.now += timedelta(minutes=1)

            for n in range(4):
                w.issue(f"t{n}.test")
            await step()
            await step()
            assert len(keeper._kept["files"]) == 4
            await step()
            assert asked == []  # nothing changed since the last look
            w.revoked = True
            await keeper.refresh(keeper.managed[tmp / "live" / "t0.test" / "fullchain.pem"])
            (tmp / "live" / "t1.test" / "fullchain.pem").unlink()
            w.issue("t4.test")
            (tmp / "live" / "t2.test" / "staple.der").unlink()  # by hand: written again
            await step()
            await step()
            assert (tmp / "live" / "t2.test" / "staple.der").exists()
            assert len(keeper._kept["files"]) == 4
            await step()
            assert asked == []
            w.failing = Rejection(Reason.TRY_LATER, "try later")
            w.clock.now += 10 * DAY  # the good staples expired, left in the files: not ours
            await step()
            assert len(keeper._kept["files"]) < 4

    run(scenario, tmp_path)


def test_a_pass_finds_from_what_changed_what_a_look_at_every_certificate_finds(
    tmp_path: Path,
) -> None:
    """A pass of `run` no longer looks at each of 100k certificates to find the due ones,
    the next wake-up, the staples held and the deliveries to make (`Agenda`, and the files
    whose delivery may have changed): through fetches, failures, a revocation, a sink that
    fails then works, a file gone and a new one, what it finds is what a look at every
    certificate finds, and after each pass nothing is left to deliver but a retry."""

    async def scenario(tmp: Path) -> None:
        broken = RecordingSink("broken", fail=True)
        sinks: dict[str, Sink] = {"record": RecordingSink(), "broken": broken}
        async with offline(tmp, sinks=sinks) as (w, keeper, fetcher):

            async def step(advance: bool = True) -> None:
                await keeper.scan()
                await keeper.tick()
                wake, held, left = walked(keeper)
                assert keeper.next_wakeup() == wake
                assert keeper.count_held() == held
                assert left == []  # a failed delivery waits for its retry
                assert all(life.calm_at(w.clock.now) for life in keeper.lives.values())
                if advance:
                    w.clock.now = max(wake or w.clock.now, w.clock.now)

            for n in range(5):
                w.issue(f"t{n}.test")
            await step()
            assert keeper.count_held() == 5
            assert len(fetcher.fetched) == 5
            broken.fail = False  # its retry delivers every staple
            await step(advance=False)
            await keeper.deliver()  # nothing to send: each file found settled
            broken.fail = True  # every staple again (as at a start): retried
            await keeper.deliver(again=True)
            assert all(m.retry_at for m in keeper.managed.values())
            assert keeper.next_wakeup() == walked(keeper)[0]
            await step()
            broken.fail = False
            await step()
            assert keeper.next_wakeup() is not None
            w.failing = Rejection(Reason.TRY_LATER, "try later")
            for _ in range(3):  # refreshes fail; then the staples age
                await step()
            w.failing = None
            (tmp / "live" / "t0.test" / "fullchain.pem").unlink()  # with its staple
            w.issue("t5.test")
            await step()
            assert sorted(life.name for life in keeper.lives.values()) == [
                f"t{n}.test" for n in range(1, 6)
            ]
            w.revoked = True
            await step()
            assert any(life.state.revoked for life in keeper.lives.values())
            broken.fail = True
            w.revoked = False
            w.clock.now += 10 * DAY  # everything due, and the staples expired
            await step()
            await step()
            assert fetcher.fetched

    run(scenario, tmp_path)


@pytest.mark.parametrize(
    ("cost", "sizes"),
    [
        (2**-16, [8, 32, 32, 32, 10]),  # 15 µs each: slices grow to fit the budget
        (2**-10, [8] * 5 + [3]),  # 1 ms each: never fewer than SLICE[0]
        (0.0, [8, 4096, 100]),  # nothing (a coarse clock): the most
    ],
)
def test_a_pass_slices_its_certificates_by_what_they_cost(
    monkeypatch: pytest.MonkeyPatch, cost: float, sizes: list[int]
) -> None:
    """A slice of 256 certificates held the loop 5 ms at 100k (paced p99 5.5 ms): each
    slice is sized so that going through it takes about TURN seconds."""
    now = [0.0]
    monkeypatch.setattr(keeper_module, "_stopwatch", lambda: now[0])
    items = list(range(sum(sizes)))

    async def slice_all() -> list[int]:
        seen = []
        async for part in keeper_module._turns(items):
            seen.append(len(part))
            now[0] += cost * len(part)
        return seen

    assert asyncio.run(slice_all()) == sizes


def test_the_index_built_ahead_in_turns_finds_what_a_look_up_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` builds the SHA-1 index of CertIDs in turns after its start; a first look-up
    would build it in one go (0.4 s at 100k, every answer waiting)."""
    monkeypatch.setattr(keeper_module, "SLICE", (2, 2))

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            leaves = [w.issue(f"t{n}.test") for n in range(5)]
            await keeper.scan()
            await keeper.build_index()
            for leaf in leaves:
                cert_id = make_cert_id(leaf.issuer, leaf.cert.serial_number)
                found = keeper.find(cert_id)
                assert found is not None
                assert found.target.leaf == leaf.cert
            other = w.ca.issue("other.test", ocsp_urls=[NOWHERE])
            assert keeper.find(make_cert_id(other.issuer, other.cert.serial_number)) is None

    run(scenario, tmp_path)


@pytest.mark.parametrize("quiet_from", [3, 4])
def test_a_large_start_says_in_one_line_how_many_staples_it_restored(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    quiet_from: int,
) -> None:
    """A restart of 100k certificates wrote 100k "restored a valid staple" lines: from
    QUIET_FROM files, one line gives the count, each certificate's at debug level (a revoked
    answer restored keeps its own line)."""
    monkeypatch.setattr(keeper_module, "QUIET_FROM", quiet_from)

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            for n in range(3):
                w.issue(f"t{n}.test")
            await keeper.scan()
            await keeper.tick()
            store = SqliteStore(tmp / "state" / "state.db")
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="mustaple"):
                async with w.keeper(store, MemoryFetcher(w.answer)) as fresh:
                    await fresh.scan()
            store.close()

    run(scenario, tmp_path)
    lines = [r.getMessage() for r in caplog.records if "restored" in r.getMessage()]
    if quiet_from == 3:
        assert lines == [
            "restored a valid staple from the state for 3 certificates (each one's line at "
            "debug level)"
        ]
    else:  # fewer files than QUIET_FROM: a line each, as always
        assert [line.split(" (until")[0] for line in sorted(lines)] == [
            f"t{n}.test: restored a valid staple from the state" for n in range(3)
        ]


def test_an_unexpected_error_reading_one_file_stays_in_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files of a scan are read together, in a thread: an error nobody foresaw while
    reading one makes that file unusable (keeper-fault), and the others are taken."""
    real = files.read_input

    def read_input(path: str | Path, what: str = "file") -> bytes:
        if "b.test" in str(path):
            raise RuntimeError("a bug")
        return real(path, what)

    monkeypatch.setattr(reads, "read_input", read_input)

    async def scenario(tmp: Path) -> None:
        async with offline(tmp) as (w, keeper, _):
            w.issue("a.test")
            w.issue("b.test")
            assert [m.name for m in await keeper.scan()] == ["a.test"]
            (problem,) = keeper.problems.values()
            assert problem.reason is Reason.KEEPER_FAULT
            assert "RuntimeError: a bug" in problem.message

    run(scenario, tmp_path)
