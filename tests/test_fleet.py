"""Fleet mode on a real redis-server: the shared records, and members taking turns.

The members here are keepers in one process sharing a fake clock, each with its own Redis
connections, listener thread, SQLite file and file sink, so that a simulated day runs in
seconds. Real `mustaple run` processes (kill -9, Redis restarts) are in test_fleet_daemon.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID

from conftest import Clock
from mustaple.adapters.config import CertEntry, Config, FleetConfig, KeeperPolicy
from mustaple.adapters.fetch import FetchPolicy
from mustaple.adapters.redisstore import Lease, RedisStore, Retry
from mustaple.adapters.sinks import build_sink
from mustaple.adapters.store import AttemptRecord, SqliteStore, StoredStaple, cert_key
from mustaple.core.certs import make_target
from mustaple.core.errors import InputError
from mustaple.core.leaves import LeafFacts
from mustaple.core.schedule import SchedulePolicy
from mustaple.core.verify import Staple, verify
from mustaple.front.status import fleet_view
from mustaple.keeper.daemon import open_fleet
from mustaple.keeper.fleet import Fleet
from mustaple.keeper.keeper import Keeper
from mustaple.serve.metrics import Metrics
from mustaple.testing import CA, Behaviour, Leaf, OCSPResponder
from servers import RedisServer

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
VALIDITY = 6 * HOUR  # short windows: a simulated day holds eight refreshes
GATHER = 0.3  # seconds: a member hears and adopts what another shared (it gathers 0.2 s)
QUICK = FetchPolicy(total_timeout=2.0, connect_timeout=1.0, attempts_per_url=1)


def key_of(leaf: Leaf) -> str:
    return cert_key(leaf.cert)


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


def stored(n: int) -> StoredStaple:
    this_update = T0 + timedelta(minutes=n)
    return StoredStaple("x.test", bytes([n]) * 10, this_update, this_update + HOUR, T0, None)


# --- The shared records -----------------------------------------------------------------------


def test_a_lease_is_held_by_one_member_until_released_or_run_out(
    redis_server: RedisServer,
) -> None:
    p = prefix()
    a = RedisStore(redis_server.url, prefix=p, member="a")
    b = RedisStore(redis_server.url, prefix=p, member="b")
    first = a.acquire("k", timedelta(seconds=30))
    assert first is not None
    assert b.acquire("k", timedelta(seconds=30)) is None
    assert b.record("k").lease_holder == "a"
    b.release(Lease("k", "b", first.token))  # not b's: nothing happens
    assert b.acquire("k", timedelta(seconds=30)) is None
    a.release(first)
    second = b.acquire("k", timedelta(milliseconds=200))
    assert second is not None
    assert second.token > first.token  # fencing tokens only grow
    assert not a.renew(first, timedelta(seconds=30))
    assert b.renew(second, timedelta(milliseconds=200))
    time.sleep(0.5)
    third = a.acquire("k", timedelta(seconds=30))  # b's lease ran out: a takes over
    assert third is not None
    assert third.token > second.token


def test_a_write_under_an_older_lease_or_of_an_older_staple_is_refused(
    redis_server: RedisServer,
) -> None:
    p = prefix()
    a = RedisStore(redis_server.url, prefix=p, member="a")
    b = RedisStore(redis_server.url, prefix=p, member="b")
    old = a.acquire("k", timedelta(milliseconds=50))
    assert old is not None
    time.sleep(0.1)  # a's lease runs out while it is "paused"
    new = b.acquire("k", timedelta(seconds=30))
    assert new is not None
    assert b.publish("k", stored(2), new)
    assert not a.publish("k", stored(3), old)  # a newer staple, but a stale lease
    assert not a.publish("k", stored(1))  # without a lease, and an older staple
    assert b.load_with_origin("k") == (stored(2), "b")
    assert a.publish("k", stored(3))  # without a lease, and a newer staple
    assert b.load_with_origin("k") == (stored(3), "a")


def test_a_write_without_a_lease_does_not_outrank_the_live_lease(
    redis_server: RedisServer,
) -> None:
    """A member rejoining (catch-up) or `prime` shares an older staple without a lease while
    another member fetches under its live lease: that member's newer staple still wins."""
    p = prefix()
    a = RedisStore(redis_server.url, prefix=p, member="a")
    b = RedisStore(redis_server.url, prefix=p, member="b")
    assert a.publish("k", stored(1))
    lease = a.acquire("k", timedelta(seconds=30))
    assert lease is not None
    assert b.publish("k", stored(2))
    assert a.publish("k", stored(5), lease)
    assert b.load_with_origin("k") == (stored(5), "a")


def test_a_garbled_fencing_counter_starts_again_above_the_stored_staple(
    redis_server: RedisServer,
) -> None:
    """A counter that is no whole number: the lease taken next outranks the staple stored
    under the last good token, and a write without a lease ties with that staple."""
    p = prefix()
    a = RedisStore(redis_server.url, prefix=p, member="a")
    for _ in range(2):
        a.release(a.acquire("k", timedelta(seconds=30)) or Lease("k", "a", 0))
    lease = a.acquire("k", timedelta(seconds=30))
    assert lease is not None
    a.release(lease)
    assert lease.replaced == ()
    assert a.publish("k", stored(1), lease)
    a.client.set(f"{p}fence:k", "1.5")
    assert a.publish("k", stored(2))  # without a lease: it ties with the stored token
    renewed = a.acquire("k", timedelta(seconds=30))
    assert renewed is not None
    assert renewed.token > lease.token
    assert renewed.replaced == ("fence",)
    assert a.publish("k", stored(3), renewed)
    assert not a.publish("k", stored(4), lease)  # the older lease is still refused


def test_a_fencing_counter_gone_before_its_staple_starts_again_above_it(
    redis_server: RedisServer,
) -> None:
    """The counter has an end now (as the staple record has): one gone while the staple is
    stored (evicted by a volatile maxmemory policy, deleted by hand) starts again above the
    stored staple's token, as a garbled one does: the next lease's write is not refused."""
    p = prefix()
    a = RedisStore(redis_server.url, prefix=p, member="a")
    for _ in range(3):
        lease = a.acquire("k", timedelta(seconds=30))
        assert lease is not None
        a.release(lease)
    assert lease is not None
    assert a.publish("k", stored(1), lease)
    a.client.delete(f"{p}fence:k")
    renewed = a.acquire("k", timedelta(seconds=30))
    assert renewed is not None
    assert (renewed.token > lease.token, renewed.replaced) == (True, ())
    assert a.publish("k", stored(2), renewed)
    ends = [a.client.execute_command("PEXPIRETIME", f"{p}{kind}:k") for kind in ("fence", "staple")]
    assert ends[0] == ends[1] > 0  # the counter ends with the staple record


def test_fencing_holds_when_eviction_takes_the_counter_and_the_staple_under_a_lease(
    redis_server: RedisServer,
) -> None:
    """Records with an end may be evicted (`maxmemory-policy volatile-*`): the staple, the
    counter and the lease of a member still fetching gone at once. The counter started again
    from 0, so the next lease's token was below the one the paused member still held: that
    member's late write was taken over its successor's, and the successor's newer staples
    were refused as fenced, one lease after another. It starts again from Redis's clock (in
    ms), above every token given before."""
    p = prefix()
    a = RedisStore(redis_server.url, prefix=p, member="a")
    b = RedisStore(redis_server.url, prefix=p, member="b")
    a.client.set(f"{p}fence:k", 3)  # three leases given (a counter as one started before)
    paused = a.acquire("k", timedelta(seconds=30))
    assert paused is not None
    assert paused.token == 4
    a.client.delete(*(f"{p}{kind}:k" for kind in ("staple", "fence", "lease")))  # evicted
    successor = b.acquire("k", timedelta(seconds=30))
    assert successor is not None
    assert successor.token > paused.token
    assert b.publish("k", stored(2), successor)
    assert not a.publish("k", stored(3), paused)  # a newer staple, but a stale lease
    assert b.load_with_origin("k") == (stored(2), "b")
    a.client.delete(*(f"{p}{kind}:k" for kind in ("staple", "fence")))  # evicted again
    assert a.publish("k", stored(3), paused)  # nothing held: the late write is stored
    b.release(successor)
    later = b.acquire("k", timedelta(seconds=30))
    assert later is not None
    assert later.token > successor.token
    assert b.publish("k", stored(4), later)  # the next lease is not fenced out
    assert b.load_with_origin("k") == (stored(4), "b")


def test_writes_sweep_ended_keys_out_of_a_large_key_set(redis_server: RedisServer) -> None:
    """300 keys, the staple records of 100 ended: they leave `keys()` at once, and the writes
    that follow take them out of the set a few at a time (one pass over the set, not one
    write per key left behind)."""
    p = prefix()
    a = RedisStore(redis_server.url, prefix=p, member="a")
    a.publish_many([(f"k{n}", stored(1), None) for n in range(300)])
    a.client.delete(*(f"{p}staple:k{n}" for n in range(0, 300, 3)))
    assert len(a.keys()) == 200
    writes = 0
    while a.client.scard(f"{p}keys") > 200 + writes:
        assert writes < 300, "the sweep did not come round"
        assert a.publish(f"new{writes}", stored(1))
        writes += 1
    assert len(a.keys()) == 200 + writes
    assert a.client.pttl(f"{p}staple:k1") > 0  # each has an end


def test_records_an_older_version_wrote_without_an_end_get_one_from_the_sweep(
    redis_server: RedisServer,
) -> None:
    """A version before the records' end wrote them with none (no TTL): those of a leaf
    renewed before the upgrade, which no member writes again, stayed for ever (the fleet view
    listed the name twice, Redis kept about 6 KB per leaf). The writes' sweep gives each the
    end a write gives it: a day after its staple's effective expiry, or a day from now for an
    expired one; the three keys of each, and nothing else."""
    p = prefix()
    a = RedisStore(redis_server.url, prefix=p, member="a")
    now = datetime.now(UTC)
    expiry = now + timedelta(days=3)
    live = StoredStaple("live.test", b"l" * 10, now - HOUR, expiry, now - HOUR, None)
    for key, staple in (("old-live", live), ("old-expired", stored(1))):
        lease = a.acquire(key, timedelta(seconds=30))
        assert lease is not None
        assert a.publish(key, staple, lease)
        a.add_attempts(key, [AttemptRecord(T0, "http://x/", "POST", 200, 0.1, None, "valid")])
        a.release(lease)
        for kind in ("staple", "fence", "attempts"):  # as an older version left them
            assert a.client.persist(f"{p}{kind}:{key}")
    a.client.set(f"{p}unrelated", "kept")
    for n in range(3):  # the set is small: one write sweeps it all
        assert a.publish(f"new{n}", stored(1))
    day = timedelta(days=1)
    for key, ends in (("old-live", expiry + day), ("old-expired", now + day)):
        for kind in ("staple", "fence", "attempts"):
            left = a.client.pttl(f"{p}{kind}:{key}")
            assert left > 0, (key, kind, left)
            assert abs(datetime.now(UTC) + timedelta(milliseconds=left) - ends) < timedelta(
                minutes=1
            ), (key, kind)
    assert a.client.pttl(f"{p}unrelated") == -1
    assert a.keys() == ["new0", "new1", "new2", "old-expired", "old-live"]


def test_garbled_records_cost_only_themselves_to_the_fleet_view(
    redis_server: RedisServer,
) -> None:
    """What `status --fleet` reads: a staple record with a field missing, a heartbeat that
    is not JSON or has a time without a zone, an attempt that is not JSON, a lease key of
    another type: each is left out or shown as unreadable, never an exception."""
    p = prefix()
    a = RedisStore(redis_server.url, prefix=p, member="a")
    assert a.publish("k", stored(1))
    a.add_attempts("k", [AttemptRecord(T0, "http://x/", "POST", 200, 0.1, None, "valid")])
    a.beat(T0, {"host": "h"})
    client = a.client
    client.hdel(f"{p}staple:k", "responder_url")
    client.hset(f"{p}members", "b", "not json")
    client.hset(f"{p}members", "c", '{"seen": "2026-01-01T00:00:00"}')
    client.lpush(f"{p}attempts:k", "not json")
    client.sadd(f"{p}lease:k", "x")
    record = a.record("k")
    assert (record.staple, record.fetched_by, record.lease_holder) == (None, None, None)
    assert [m.name for m in a.members()] == ["a"]
    assert [r.message for r, _ in a.history_by_member("k")] == ["valid"]
    client.set(f"{p}retry:k", '{"at": "2099-01-01T00:00:00", "member": "x", "reason": "r"}')
    assert a.retry("k") is None  # a time without a zone: another writer's, not ours


def test_the_fleet_view_says_redis_refused_a_read_not_that_it_is_unreachable(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    p = prefix()
    config = member_config(tmp_path, "m0", tmp_path / "live", redis_server.url, p)
    RedisStore(redis_server.url, prefix=p).client.set(f"{p}keys", "garbage")
    with pytest.raises(InputError) as raised:
        fleet_view(config, T0)
    assert str(raised.value).startswith(
        f"fleet: Redis at {redis_server.url} refused a read (WRONGTYPE "
    )


def test_an_accepted_staple_is_announced(redis_server: RedisServer) -> None:
    p = prefix()
    store = RedisStore(redis_server.url, prefix=p, member="a")
    pubsub = store.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.channel)
    pubsub.get_message(timeout=1)
    assert store.publish("k", stored(2))
    assert not store.publish("k", stored(1))
    message = pubsub.get_message(timeout=2)
    assert message is not None
    assert message["data"] == b"k a"
    assert pubsub.get_message(timeout=0.3) is None  # the refused write said nothing
    pubsub.close()


def test_retry_marks_members_and_history(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, prefix=prefix(), member="a")
    store.mark_retry("k", T0 + HOUR, "try-later", T0)
    retry = store.retry("k")
    assert retry is not None
    assert (retry.at, retry.member, retry.reason) == (T0 + HOUR, "a", "try-later")
    store.clear_retry("k")
    assert store.retry("k") is None
    store.beat(T0, {"certificates": 3})
    (member,) = store.members()
    assert (member.name, member.seen, member.info) == ("a", T0, {"certificates": 3})


def test_a_heartbeat_drops_the_members_silent_for_a_day_and_no_other(
    redis_server: RedisServer,
) -> None:
    """The `members` hash kept every member that ever joined. Each heartbeat now drops, in
    the same script, the heartbeats older than a day by its clock (a member that left or
    died): one a second younger stays, and so does one mustaple did not write (no time
    with a zone, not JSON). A member dropped that beats again joins again."""
    p = prefix()
    gone, late, alive = (RedisStore(redis_server.url, prefix=p, member=m) for m in "abc")
    day = timedelta(days=1)
    assert gone.beat(T0, {"left": True}) == (True, False, [])
    assert late.beat(T0 + timedelta(seconds=2), {}) == (True, False, [])
    client = alive.client
    client.hset(f"{p}members", "x", '{"seen": "2000-01-01T00:00:00"}')
    client.hset(f"{p}members", "y", "not json")
    assert alive.beat(T0 + day + timedelta(seconds=1), {}) == (True, False, ["a"])
    assert sorted(client.hkeys(f"{p}members")) == [b"b", b"c", b"x", b"y"]
    assert alive.beat(T0 + day + timedelta(seconds=3), {}) == (False, False, ["b"])
    assert gone.beat(T0 + day + timedelta(seconds=4), {}) == (True, False, [])  # back: joins again
    assert [m.name for m in alive.members()] == ["a", "c"]


def facts(key: str, issued: datetime, name: str = "a.test", days: int = 90) -> LeafFacts:
    return LeafFacts(key, name, key, issued, issued + timedelta(days=days))


def test_a_members_leaves_end_with_its_heartbeat_and_go_when_it_is_dropped(
    redis_server: RedisServer,
) -> None:
    """Each member records the leaves it manages: what changed, and all of them at once when
    asked (whatever was there goes). The record ends a day after it is written, and each
    heartbeat counts that end again in its script; a member dropped from the fleet view goes
    with its leaves, and a key of another type in its place is no member's: the heartbeat
    takes it out and says the leaves were not kept."""
    p, day = prefix(), timedelta(days=1)
    a, b = (RedisStore(redis_server.url, prefix=p, member=m) for m in "ab")
    one, two, three = (facts(f"k{n}", T0 - timedelta(days=n)) for n in (1, 2, 3))
    a.client.hset(f"{p}leaves:a", "stale", "from before")
    a.record_leaves([one, two], whole=True)
    assert sorted(a.leaves(["a"])["a"], key=lambda leaf: leaf.key) == [one, two]
    a.record_leaves([three], gone=["k1"])
    assert sorted(a.leaves(["a", "b"])["a"], key=lambda leaf: leaf.key) == [two, three]
    assert day - timedelta(minutes=1) < timedelta(milliseconds=a.client.pttl(f"{p}leaves:a"))
    a.client.pexpire(f"{p}leaves:a", 60_000)
    assert a.beat(T0, {}) == (True, True, [])
    assert day - timedelta(minutes=1) < timedelta(milliseconds=a.client.pttl(f"{p}leaves:a"))
    assert b.beat(T0 + day + timedelta(seconds=1), {}) == (True, False, ["a"])
    assert not a.client.exists(f"{p}leaves:a")
    a.client.set(f"{p}leaves:a", "garbage")
    assert a.beat(T0 + day, {}).leaves_kept is False
    assert not a.client.exists(f"{p}leaves:a")


def test_the_fleet_view_says_which_members_manage_an_older_leaf(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """`status --fleet` could not say which members still manage an old leaf after a renewal
    on only some of them. It groups the members' leaves by name: the older one is a warning
    naming the members left behind, critical within a week of its notAfter; a member that
    left is not counted; garbled records (a key of another type, values that are not ours)
    are left out with one line per member, never an exception."""
    p = prefix()
    config = member_config(tmp_path, "m0", tmp_path / "live", redis_server.url, p)
    old, new = facts("old", T0 - 60 * DAY), facts("new", T0 - DAY)
    gone = facts("gone", T0 - 80 * DAY)
    for name, leaves, info in [
        ("web1", [new], {}),
        ("web2", [new], {}),
        ("web3", [old], {}),
        ("web4", [gone], {"left": True}),
        ("web5", [], {}),
        ("web6", [], {}),
    ]:
        store = RedisStore(redis_server.url, prefix=p, member=name)
        store.beat(T0, info)
        store.record_leaves(leaves, whole=True)
    client = RedisStore(redis_server.url, prefix=p).client
    client.set(f"{p}leaves:web5", "garbage")
    client.hset(f"{p}leaves:web6", mapping={"x": "not json", "y": '{"name": 1}'})
    caplog.set_level("WARNING", "mustaple")

    (group,) = fleet_view(config, T0)["names"]
    assert (group["name"], group["health"]) == ("a.test", "warning")
    assert group["health_reason"] == (
        "older leaf on web3: serial old, notAfter 2026-01-31 00:00:00Z (expires in 30d 0h);"
        " renewed on web1, web2"
    )
    rows = [
        (s["key"], s["members"], s["older"], s["renewed_on"], s["health"]) for s in group["leaves"]
    ]
    assert rows == [
        ("new", ["web1", "web2"], False, [], "ok"),
        ("old", ["web3"], True, ["web1", "web2"], "warning"),
    ]
    assert group["leaves"][1]["not_after"] == "2026-01-31T00:00:00Z"
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if "'web5' cannot be read" in line]) == 1
    assert len([line for line in lines if "2 of the leaves of member 'web6'" in line]) == 1

    (group,) = fleet_view(config, T0 + 24 * DAY)["names"]  # a week left: critical
    assert (group["health"], group["leaves"][1]["health"]) == ("critical", "critical")
    RedisStore(redis_server.url, prefix=p, member="web3").record_leaves([new], gone=["old"])
    (group,) = fleet_view(config, T0)["names"]
    assert (group["health"], group["health_reason"]) == ("ok", None)
    assert [s["members"] for s in group["leaves"]] == [["web1", "web2", "web3"]]


# --- Members taking turns ---------------------------------------------------------------------


@dataclass
class Member:
    name: str
    keeper: Keeper
    fleet: Fleet
    out: Path  # the file sink's directory

    def served(self, leaf: Leaf) -> bytes | None:
        (name,) = leaf.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        path = self.out / f"{name.value!s}.der"
        return path.read_bytes() if path.exists() else None


def member_config(
    tmp: Path, name: str, live: Path, url: str, p: str, schedule: SchedulePolicy | None = None
) -> Config:
    out = tmp / name / "out"
    return Config(
        path=tmp / name / "mustaple.toml",
        state_dir=tmp / name,
        certificates=(CertEntry(paths=(str(live / "*" / "fullchain.pem"),)),),
        sinks={"out": {"type": "file", "path": f"{out}/{{name}}.der"}},
        policy=KeeperPolicy(fetch=QUICK, schedule=schedule or SchedulePolicy()),
        fleet=FleetConfig(url, prefix=p, member=name, lease=timedelta(seconds=10)),
    )


@asynccontextmanager
async def member(
    stack: AsyncExitStack,
    tmp: Path,
    name: str,
    live: Path,
    url: str,
    p: str,
    clock: Clock,
    schedule: SchedulePolicy | None = None,
) -> AsyncIterator[Member]:
    config = member_config(tmp, name, live, url, p, schedule)
    store = SqliteStore(config.state_dir / "state.db")
    stack.callback(store.close)
    sinks = {"out": build_sink("out", config.sinks["out"])}
    dice = random.Random(name).random
    keeper = await stack.enter_async_context(
        Keeper(config, store=store, sinks=sinks, clock=clock, dice=dice)
    )
    fleet = await stack.enter_async_context(open_fleet(config, keeper))
    assert fleet is not None
    yield Member(name, keeper, fleet, tmp / name / "out")


@dataclass
class Fleetworld:
    clock: Clock
    ca: CA
    responder: OCSPResponder
    leaves: list[Leaf]
    members: list[Member]

    async def tick_all(self) -> None:
        await asyncio.gather(*(m.keeper.tick() for m in self.members))

    async def advance(self) -> None:
        """To the next moment a member has something due; those members tick."""
        wakes = {m.name: m.keeper.next_wakeup() for m in self.members}
        self.clock.now = max(self.clock.now, min(w for w in wakes.values() if w is not None))
        due = [m for m in self.members if (w := wakes[m.name]) is not None and w <= self.clock.now]
        await asyncio.gather(*(m.keeper.tick() for m in due))

    def fetch_times(self, leaf: Leaf) -> list[datetime]:
        serial = leaf.cert.serial_number
        return [r.time for r in self.responder.requests if r.serial == serial]


@asynccontextmanager
async def fleetworld(
    tmp: Path,
    redis_server: RedisServer,
    *,
    members: int,
    certificates: int,
    url: str | None = None,
    validity: timedelta = VALIDITY,
    cache_for: timedelta = timedelta(0),
    schedule: SchedulePolicy | None = None,
) -> AsyncIterator[Fleetworld]:
    """`members` keepers on one fake clock, `certificates` leaves; the CA's answers last
    `validity`, and it gives the same answer again for `cache_for`."""
    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    ca = CA(now=clock.now - timedelta(days=1), key_type="ec")
    live = tmp / "live"
    p = prefix()
    async with OCSPResponder(ca, clock=clock, validity=validity, cache_for=cache_for) as r:
        leaves = []
        for n in range(certificates):
            leaf = ca.issue(f"c{n}.test", ocsp_urls=[r.url], must_staple=True)
            r.add(leaf)
            leaf.write(live / f"c{n}.test")
            leaves.append(leaf)
        async with AsyncExitStack() as stack:
            found = []
            for n in range(members):
                found.append(
                    await stack.enter_async_context(
                        member(
                            stack, tmp, f"m{n}", live, url or redis_server.url, p, clock, schedule
                        )
                    )
                )
            yield Fleetworld(clock, ca, r, leaves, found)


def run(scenario: Callable[[], object]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)


def test_a_simulated_day_fetches_each_staple_once_per_window(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """8 members, 50 certificates, a day: one upstream fetch per certificate per refresh
    window, every member always holds a fresh staple, and every sink ends with the newest."""

    async def scenario() -> None:
        async with fleetworld(tmp_path, redis_server, members=8, certificates=50) as w:
            start = w.clock.now
            await w.tick_all()
            steps = 0
            while w.clock.now < start + timedelta(days=1):
                await w.advance()
                steps += 1
                if steps % 10:
                    continue
                for m in w.members:
                    for managed in m.keeper.managed.values():
                        held = managed.held
                        assert held is not None, f"{m.name}: {managed.name} has no staple"
                        assert held.fraction_left(w.clock.now) > 0.35
            window = VALIDITY
            for leaf in w.leaves:
                times = w.fetch_times(leaf)
                gaps = [b - a for a, b in itertools.pairwise(times)]
                # never two fetches in one window: the earliest refresh point of the members
                # (0.4 to 0.5 of the window, jittered) is the only fetch of that window
                assert all(gap >= 0.4 * window - timedelta(minutes=1) for gap in gaps), min(gaps)
                assert all(gap <= 0.5 * window + timedelta(minutes=1) for gap in gaps), max(gaps)
                assert 9 <= len(times) <= 11, len(times)

            def all_newest() -> bool:
                return all(
                    m.served(leaf) == w.members[0].fleet.shared.load(key_of(leaf)).der  # type: ignore[union-attr]
                    for m in w.members
                    for leaf in w.leaves
                )

            await eventually(all_newest)

    run(scenario)


def test_a_fetch_that_raises_releases_its_lease_and_a_clock_ahead_is_not_trusted(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A member whose fetch raised leaves no lease behind: the next member fetches at once.
    A shared staple said fetched 30 days ahead (a member's clock, or its bug) is scheduled
    from now, not from then: the next refresh stays within the staple's life."""

    async def scenario() -> None:
        async with fleetworld(tmp_path, redis_server, members=2, certificates=1) as w:
            a, b = w.members
            (leaf,) = w.leaves
            key = key_of(leaf)

            async def raising(*_: object, **__: object) -> None:
                raise RuntimeError("a bug in the fetch")

            setattr(a.keeper.fetcher, "fetch", raising)  # noqa: B010
            await a.keeper.tick()
            assert b.fleet.shared.record(key).lease_holder is None
            await b.keeper.tick()
            assert len(w.responder.requests) == 1  # b did not wait out a's lease
        async with fleetworld(tmp_path / "ahead", redis_server, members=2, certificates=1) as w:
            a, b = w.members
            (leaf,) = w.leaves
            key = key_of(leaf)
            b.fleet._stop_listening()  # b finds the staple when it claims, not by the news
            await a.keeper.tick()
            ahead = (w.clock.now + timedelta(days=30)).isoformat()
            a.fleet.shared.client.hset(f"{a.fleet.shared.prefix}staple:{key}", "fetched_at", ahead)
            (managed,) = b.keeper.by_key(key)
            await b.keeper.tick()  # due: it claims, finds the shared staple, adopts it
            assert len(w.responder.requests) == 1
            assert managed.held is not None
            assert managed.next_due is not None
            assert managed.next_due < managed.held.effective_expiry
            far = Retry(w.clock.now + timedelta(days=30), "m0", "try-later", timedelta(days=30))
            turn = b.fleet._from_look(managed, None, far, w.clock.now)
            longest = w.clock.now + b.keeper.policy.schedule.retry_max
            assert turn is not None
            assert turn.wait_until == longest  # never held back longer than our own retry

    run(scenario)


def test_a_garbled_shared_record_or_message_is_refused_and_the_member_goes_on(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Another writer's garbage in Redis (a staple record with a field missing or a bad time,
    a message that is not UTF-8) is refused with a line: the member fetches for itself, is
    not marked broken, and keeps hearing the others."""

    async def scenario() -> None:
        async with fleetworld(tmp_path, redis_server, members=2, certificates=1) as w:
            a, b = w.members
            (leaf,) = w.leaves
            key = key_of(leaf)
            a.fleet.shared.client.publish(a.fleet.shared.channel, b"\xff\xfe")
            listener = b.fleet._listener
            await asyncio.sleep(0.5)  # the listener thread reads it
            assert listener is not None
            assert listener.is_alive()
            b.fleet._stop_listening()  # b finds the record when it claims
            # the thread ends at its next poll: until then it would hear a's announcement,
            # and b adopt the staple instead of reading the garbled record (a loaded machine)
            await asyncio.to_thread(listener.join, 5)
            assert not listener.is_alive()
            await a.keeper.tick()
            record = f"{a.fleet.shared.prefix}staple:{key}"
            a.fleet.shared.client.hdel(record, "fetched_by")
            (managed,) = b.keeper.by_key(key)
            await b.keeper.tick()
            assert len(w.responder.requests) == 2  # b fetched for itself
            assert managed.held is not None
            assert managed.life.state.phase.value == "good"
            a.fleet.shared.client.hset(record, "fetched_at", "garbage")
            assert b.fleet.shared.load(key) is None
            await b.fleet._listen()
            w.clock.now = a.keeper.next_wakeup()  # type: ignore[assignment]
            await a.keeper.tick()
            await eventually(lambda: b.served(leaf) == a.served(leaf) is not None, 3.0)

    run(scenario)


def test_a_time_without_a_zone_or_a_key_of_another_type_costs_only_that_record(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Another writer's record with a time without a zone (it cannot be compared with ours),
    a staple key and the heartbeats' key of another type (WRONGTYPE): each record is refused
    with a line, the member fetches for itself, stays in the fleet, keeps beating, and no
    certificate is marked broken."""

    async def scenario() -> None:
        async with fleetworld(tmp_path, redis_server, members=2, certificates=2) as w:
            a, b = w.members
            first, second = (key_of(leaf) for leaf in w.leaves)
            b.fleet._stop_listening()  # b finds the records when it claims
            await a.keeper.tick()
            client, p = a.fleet.shared.client, a.fleet.shared.prefix
            client.hset(f"{p}staple:{first}", "fetched_at", "2026-01-01T00:00:00")
            client.delete(f"{p}staple:{second}")
            client.set(f"{p}staple:{second}", "garbage")
            client.delete(f"{p}members")
            client.sadd(f"{p}members", "garbage")
            await b.keeper.tick()
            assert len(w.responder.requests) == 4  # b fetched both for itself
            for managed in b.keeper.managed.values():
                assert managed.life.state.phase.value == "good"
            await asyncio.sleep(b.fleet.beat_interval * 2.5)
            assert b.fleet.up
            assert all(not task.done() for task in b.fleet._tasks)

    caplog.set_level("WARNING", "mustaple")
    run(scenario)
    lines = [r.getMessage() for r in caplog.records]
    assert not [line for line in lines if "unexpected error" in line or "unavailable" in line]
    assert any("no time zone" in line for line in lines)
    refused = [line for line in lines if "refused the heartbeat" in line]
    assert len(refused) == 2  # once per member, not at every beat


def test_redis_refusing_writes_is_redis_unavailable_not_a_refused_record(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only replica after a failover, or a user without write permission: Redis
    refuses every write (a ResponseError, as WRONGTYPE is). That is Redis unavailable (one
    line, the member goes on alone), not one refused record per certificate (two warnings per
    certificate at every pass, while the member said it was in the fleet)."""
    user = f"reader{uuid.uuid4().hex[:6]}"
    RedisStore(redis_server.url).client.execute_command(
        "ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-@write", "-@scripting"
    )
    url = redis_server.url.replace("redis://", f"redis://{user}:pw@")

    async def scenario() -> None:
        async with fleetworld(tmp_path, redis_server, members=1, certificates=3, url=url) as w:
            (a,) = w.members
            await a.keeper.tick()
            assert len(w.responder.requests) == 3  # fetched alone
            assert not a.fleet.up
            assert all(m.held is not None for m in a.keeper.managed.values())

    caplog.set_level("WARNING", "mustaple")
    run(scenario)
    lines = [r.getMessage() for r in caplog.records]
    assert not [line for line in lines if "refused the shared records" in line]
    assert len([line for line in lines if "unavailable" in line]) == 1


def test_a_forged_shared_staple_from_the_future_is_replaced_by_the_next_fetch(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A record claiming thisUpdate in 2099 outranks every real staple by its numbers; once
    a member's validation refused it, that member's next staple replaces it, and the fleet
    is back to one fetch per window."""

    async def scenario() -> None:
        async with fleetworld(tmp_path, redis_server, members=3, certificates=1) as w:
            (leaf,) = w.leaves
            key = key_of(leaf)
            await w.tick_all()
            far = w.clock.now.replace(year=2099)
            forged = StoredStaple("c0.test", b"\x30\x03\x0a\x01\x00", far, far, w.clock.now, None)
            shared = w.members[0].fleet.shared
            assert shared.publish(key, forged)
            await asyncio.sleep(0.5)
            for _ in range(2):
                before = len(w.responder.requests)
                w.clock.now += VALIDITY / 2 + timedelta(minutes=30)
                for m in w.members:
                    await m.keeper.tick()
                    await asyncio.sleep(0.3)
                assert (shared.load(key) or forged).der != forged.der
            assert len(w.responder.requests) - before == 1

    run(scenario)


@pytest.mark.parametrize("behind", [timedelta(minutes=3), timedelta(minutes=-30)])
def test_a_retry_mark_lasts_by_the_clock_of_redis(
    tmp_path: Path, redis_server: RedisServer, behind: timedelta
) -> None:
    """A member whose clock is 3 minutes behind (inside the default clock_skew) or 30 minutes
    ahead marks a retry after a failure: the others wait for the mark as long as Redis keeps
    it, neither asking the CA at once nor waiting half an hour."""

    async def scenario() -> None:
        async with fleetworld(tmp_path, redis_server, members=2, certificates=1) as w:
            a, b = w.members
            a.keeper.clock = lambda: w.clock.now - behind
            await w.tick_all()
            await asyncio.sleep(0.5)  # each has heard the other's staple
            w.responder.set_behaviour(Behaviour.TRY_LATER)
            w.clock.now += VALIDITY / 2 + timedelta(minutes=30)
            before = len(w.responder.requests)
            await a.keeper.tick()  # a fails and asks the fleet to wait
            assert len(w.responder.requests) == before + 1
            assert a.fleet.shared.retry(key_of(w.leaves[0])) is not None
            w.clock.now += timedelta(seconds=1)
            await b.keeper.tick()
            assert len(w.responder.requests) == before + 1  # b waits
            (managed,) = b.keeper.managed.values()
            assert managed.next_due is not None
            assert managed.next_due - w.clock.now < timedelta(minutes=1)

    run(scenario)


def test_the_same_short_answer_fetched_again_never_lapses_in_a_fleet(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Answers of 2 hours, min_interval 3 hours: one member refreshes before half the time
    left (`schedule.next_refresh`), and so must a fleet. When the CA gave the fleet the same
    answer again (its cache), the members waited min_interval from that fetch, past the
    answer's expiry, and refreshed only once it expired. Four hours, each member ticked when
    due: whenever one is due, every file holds a staple with time left (the refresh comes
    before half of what the answer had left), and the CA is not hammered."""
    short = timedelta(hours=2)
    schedule = SchedulePolicy(min_interval=timedelta(hours=3))

    async def scenario() -> None:
        async with fleetworld(
            tmp_path,
            redis_server,
            members=2,
            certificates=1,
            validity=short,
            cache_for=timedelta(minutes=90),
            schedule=schedule,
        ) as w:
            (leaf,) = w.leaves
            start = w.clock.now
            await w.tick_all()
            while w.clock.now < start + 2 * short:
                await asyncio.sleep(GATHER)  # what one member shared, the other heard
                wakes = [m.keeper.next_wakeup() for m in w.members]
                w.clock.now = max(w.clock.now, min(wake for wake in wakes if wake is not None))
                for m in w.members:  # due now: the staple in each file has time left
                    left = served_staple(m, leaf, w.clock.now).effective_expiry - w.clock.now
                    assert left >= timedelta(minutes=10), f"{m.name}: {left} left"
                await w.advance()
            times = w.fetch_times(leaf)
            # the CA gave the same answer again: the case this is about
            assert len([t for t in times if t < start + timedelta(minutes=90)]) >= 2, times
            assert len(times) <= 12, times

    run(scenario)


def served_staple(m: Member, leaf: Leaf, now: datetime) -> Staple:
    """The staple in `m`'s file for `leaf`, validated at `now` (an expired one fails)."""
    der = m.served(leaf)
    assert der is not None, f"{m.name} serves no staple"
    outcome = verify(der, make_target(leaf.cert, leaf.issuer), now)
    assert isinstance(outcome, Staple), outcome
    return outcome


def test_a_member_adopts_an_announced_staple_within_a_second(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        async with fleetworld(tmp_path, redis_server, members=2, certificates=1) as w:
            a, b = w.members
            (leaf,) = w.leaves
            await a.keeper.tick()  # a fetches; b has not ticked at all
            assert len(w.responder.requests) == 1
            await eventually(lambda: b.served(leaf) == a.served(leaf) is not None, 2.0)
            await b.keeper.tick()  # nothing due for b: it fetches nothing
            assert len(w.responder.requests) == 1
            text = Metrics(b.keeper, fleet=b.fleet).exposition()[0].decode()
            assert "mustaple_fleet_connected 1.0" in text
            assert "mustaple_fleet_adopted_total 1.0" in text

    run(scenario)


def test_a_shared_staple_that_fails_validation_is_never_delivered(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        async with fleetworld(tmp_path, redis_server, members=2, certificates=1) as w:
            a, b = w.members
            (leaf,) = w.leaves
            await w.tick_all()
            await eventually(
                lambda: a.served(leaf) is not None and b.served(leaf) == a.served(leaf)
            )
            good = a.served(leaf)
            forged = StoredStaple(
                "c0.test",
                b"\x30\x03\x0a\x01\x00",
                w.clock.now,
                w.clock.now + 2 * VALIDITY,
                w.clock.now,
                None,
            )
            assert a.fleet.shared.publish(key_of(leaf), forged)  # a newer, garbled "staple"
            await asyncio.sleep(1.0)
            assert b.served(leaf) == good  # heard, validated, refused
            w.clock.now += VALIDITY / 2 + timedelta(minutes=1)
            await b.keeper.tick()  # due: the shared one is refused, so b fetches itself
            assert b.served(leaf) not in (None, good)

    run(scenario)


def test_failures_are_shared_so_the_fleet_does_not_hammer_the_ca(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        async with fleetworld(tmp_path, redis_server, members=4, certificates=1) as w:
            await w.tick_all()
            assert len(w.responder.requests) == 1
            w.responder.set_behaviour(Behaviour.TRY_LATER)
            w.clock.now += VALIDITY / 2
            for _ in range(12):
                await w.advance()
            fetches = w.fetch_times(w.leaves[0])[1:]
            # retries back off across the fleet: never two tries closer than the first backoff
            gaps = [b - a for a, b in itertools.pairwise(fetches)]
            assert len(fetches) >= 3
            assert all(gap >= timedelta(seconds=5) for gap in gaps), gaps
            members = {
                r.member for r in [w.members[0].fleet.shared.retry(key_of(w.leaves[0]))] if r
            }
            assert members  # the retry mark names who tried last
            w.responder.set_behaviour(Behaviour.GOOD)
            for _ in range(8):
                await w.advance()
            for m in w.members:
                assert all(x.failures == 0 for x in m.keeper.managed.values())

    run(scenario)


def test_redis_gone_members_go_on_alone_and_rejoin(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A Redis of its own (stopped and restarted here), without persistence: when it returns
    empty, the members share their staples again."""

    async def scenario() -> None:
        own = RedisServer(tmp_path / "redis", persist=False).start()
        try:
            async with fleetworld(tmp_path, own, members=2, certificates=2) as w:
                a, b = w.members
                await w.tick_all()
                own.stop()
                w.clock.now += VALIDITY / 2 + timedelta(minutes=1)
                await w.tick_all()  # both due, Redis gone: each fetches alone
                assert not a.fleet.up
                assert not b.fleet.up
                text = Metrics(a.keeper, fleet=a.fleet).exposition()[0].decode()
                assert "mustaple_fleet_connected 0.0" in text
                for m in w.members:
                    for managed in m.keeper.managed.values():
                        assert managed.held is not None
                        assert managed.held.fraction_left(w.clock.now) > 0.9
                own.start()
                await eventually(lambda: a.fleet.up and b.fleet.up, 15.0)
                wanted = sorted(key_of(leaf) for leaf in w.leaves)
                await eventually(lambda: a.fleet.shared.keys() == wanted)  # shared again
        finally:
            own.stop()

    run(scenario)


def test_the_shared_record_names_who_fetched(tmp_path: Path, redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with fleetworld(tmp_path, redis_server, members=2, certificates=1) as w:
            a = w.members[0]
            await a.keeper.tick()
            record = a.fleet.shared.record(key_of(w.leaves[0]))
            assert record.fetched_by == "m0"
            assert record.lease_holder is None  # released after the fetch
            assert record.staple is not None
            assert [m.name for m in a.fleet.shared.members()] == ["m0", "m1"]  # beat at joining
            history = a.fleet.shared.history_by_member(key_of(w.leaves[0]))
            assert [who for _, who in history] == ["m0"]

    run(scenario)


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by the openssl command."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_a_fleet_over_tls_and_a_redis_it_cannot_trust(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """rediss:// with a private CA works; a Redis whose certificate does not verify is one
    the members never talk to: they go on alone and say why."""

    async def scenario() -> None:
        tls = self_signed(tmp_path / "tls", "redis")
        with RedisServer(tmp_path / "redis", tls=tls) as own:
            async with fleetworld(tmp_path / "good", own, members=2, certificates=1) as w:
                a, b = w.members
                (leaf,) = w.leaves
                assert a.fleet.up
                await a.keeper.tick()
                await eventually(lambda: b.served(leaf) == a.served(leaf) is not None, 2.0)
                assert len(w.responder.requests) == 1
            other, _ = self_signed(tmp_path / "tls", "other")
            untrusted_url = f"rediss://127.0.0.1:{own.port}/0?ssl_ca_certs={other}"
            async with fleetworld(
                tmp_path / "bad", own, members=1, certificates=1, url=untrusted_url
            ) as w:
                (m,) = w.members
                assert not m.fleet.up  # certificate verify failed: never joined
                await m.keeper.tick()
                assert m.served(w.leaves[0]) is not None  # alone, but serving

    run(scenario)
    assert "certificate verify failed" in caplog.text.lower()


def test_a_member_stopped_while_it_joins_says_it_left(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop (SIGTERM) that comes after the first heartbeat and before the member listens
    and beats in the background: its heartbeat is in Redis, and its close must say it left
    (it said nothing: shown alive, then stale, for a day). Held at that point by a listen
    that never ends."""
    p = prefix()
    listening = asyncio.Event()

    async def never(self: Fleet) -> None:
        listening.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(Fleet, "_listen", never)

    async def scenario() -> None:
        config = member_config(tmp_path, "m0", tmp_path / "live", redis_server.url, p)
        store = SqliteStore(config.state_dir / "state.db")
        async with Keeper(config, store=store, sinks={}) as keeper:

            async def join() -> None:
                async with open_fleet(config, keeper):
                    await asyncio.Event().wait()

            joining = asyncio.create_task(join())
            await asyncio.wait_for(listening.wait(), 10)
            joining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await joining
        store.close()

    asyncio.run(scenario())
    (member,) = RedisStore(redis_server.url, prefix=p, member="x").members()
    assert (member.name, member.info.get("left")) == ("m0", True)
