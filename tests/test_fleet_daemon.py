"""Fleet mode as people run it: real `mustaple run` processes sharing a real redis-server.

Each member is its own process with its own state directory and staple files; the CA is the
test responder in this process, so every upstream request is counted.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mustaple.adapters.fetch import fetch_staple
from mustaple.adapters.redisstore import RedisStore
from mustaple.adapters.store import StoredStaple, cert_key
from mustaple.cli import main
from mustaple.core.certs import make_target
from mustaple.core.clock import utc_now
from mustaple.core.report import ExitCode
from mustaple.core.verify import Staple, verify
from mustaple.testing import CA, Behaviour, Leaf, ResponderThread
from outside import wait_for
from servers import HAProxyServer, RedisServer, staple_from
from test_sinks import haproxy_pem

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
LEASE_SECONDS = 2


@dataclass
class Member:
    name: str
    directory: Path
    process: subprocess.Popen[bytes]

    def staple(self, leaf: Leaf) -> Staple | None:
        """The staple this member's file sink holds for `leaf`, if it is valid now."""
        path = self.directory / "staples" / f"{_name(leaf)}.der"
        if not path.exists():
            return None
        outcome = verify(path.read_bytes(), make_target(leaf.cert, leaf.issuer), utc_now())
        return outcome if isinstance(outcome, Staple) else None

    def log(self) -> str:
        return (self.directory / "stderr.log").read_text()


@dataclass
class Fleet:
    tmp: Path
    ca: CA
    responder: ResponderThread
    redis: RedisServer
    prefix: str
    members: list[Member] = field(default_factory=list)

    def issue(self, name: str) -> Leaf:
        leaf = self.ca.issue(name, ocsp_urls=[self.responder.url])
        self.responder.add(leaf)
        leaf.write(self.tmp / "live" / name)
        return leaf

    def start(self, name: str, *, timeout: str = "1s", sink: str = "") -> Member:
        directory = self.tmp / name
        directory.mkdir(exist_ok=True)
        config = write_member_config(self, name, directory, timeout=timeout, sink=sink)
        with (directory / "stderr.log").open("wb") as log:
            process = subprocess.Popen(
                [MUSTAPLE, "run", "--config", str(config), "-v"],
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        self.members.append(Member(name, directory, process))
        return self.members[-1]

    def fetches(self, *leaves: Leaf) -> int:
        serials = {leaf.cert.serial_number for leaf in leaves}
        return sum(r.serial in serials for r in self.responder.requests)

    def shared(self) -> RedisStore:
        return RedisStore(self.redis.url, prefix=self.prefix)


def write_member_config(
    fleet: Fleet, name: str, directory: Path, timeout: str = "1s", sink: str = ""
) -> Path:
    """A member's configuration: its own state and staple files (or `sink`, a `[sinks.X]`
    table and the certificates it takes), the fleet's Redis."""
    sink = (
        sink
        or f"""
[[certificates]]
paths = ["{fleet.tmp}/live/*/fullchain.pem"]

[sinks.files]
type = "file"
path = "{directory}/staples/{{name}}.der"
"""
    )
    config = directory / "mustaple.toml"
    config.write_text(f"""
state_dir = "{directory}/state"
{sink}

[policy]
timeout = "{timeout}"
attempts = 1
watch_interval = "1s"

[fleet]
redis = "{fleet.redis.url}"
prefix = "{fleet.prefix}"
member = "{name}"
lease = "{LEASE_SECONDS}s"
""")
    return config


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    ca = CA()
    with ResponderThread(ca) as responder, RedisServer(tmp_path / "redis") as redis:
        f = Fleet(tmp_path, ca, responder, redis, f"t{uuid.uuid4().hex[:8]}:")
        yield f
        for member in f.members:
            if member.process.poll() is None:
                member.process.send_signal(signal.SIGTERM)
        for member in f.members:
            try:
                member.process.wait(15)
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()
            assert "Traceback" not in member.log(), member.log()


def _name(leaf: Leaf) -> str:
    return str(leaf.cert.subject.rfc4514_string().split("=", 1)[1].split(",")[0])


def test_one_fetch_per_certificate_for_the_whole_fleet(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    leaves = [fleet.issue(f"c{n}.test") for n in range(5)]
    # the same certificate in a second file: one certificate (the heartbeat counted files)
    shutil.copytree(fleet.tmp / "live" / "c0.test", fleet.tmp / "live" / "c0-again")
    members = [fleet.start(f"m{n}") for n in range(3)]
    wait_for(lambda: all(m.staple(leaf) for m in members for leaf in leaves))
    time.sleep(1.5)  # a few more passes of every member: still nothing fetched again
    assert fleet.fetches(*leaves) == len(leaves)
    holders = {m.staple(leaf).der for m in members for leaf in leaves[:1]}  # type: ignore[union-attr]
    assert len(holders) == 1  # every member staples the same response
    config = str(members[0].directory / "mustaple.toml")
    assert main(["status", "--fleet", "--json", "--config", config]) == 0
    view = json.loads(capsys.readouterr().out)
    assert [m["member"] for m in view["members"]] == ["m0", "m1", "m2"]
    assert all(m["certificates"] == 5 and m["good"] == 5 for m in view["members"])
    rows = view["certificates"]
    assert [row["name"] for row in rows] == [f"c{n}.test" for n in range(5)]
    assert all(row["fetched_by"] in {"m0", "m1", "m2"} for row in rows)
    assert all(row["last_attempt_by"] == row["fetched_by"] for row in rows)
    assert main(["status", "--fleet", "--config", config]) == 0
    table = capsys.readouterr().out
    assert "mustaple fleet: members" in table
    assert "c4.test" in table


def test_status_of_a_fleet_whose_redis_is_unreachable(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    member = fleet.start("m0")
    fleet.redis.stop()
    config = str(member.directory / "mustaple.toml")
    assert main(["status", "--fleet", "--config", config]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"mustaple: fleet: cannot reach Redis at {fleet.redis.url} (")
    assert err.count("\n") == 1


def test_kill_9_of_the_lease_holder_hands_over_after_the_lease(fleet: Fleet) -> None:
    first = fleet.start("m0")
    early = fleet.issue("early.test")
    wait_for(lambda: first.staple(early) is not None)
    fleet.responder.set_behaviour(Behaviour.HANG)  # the CA hangs: m0 holds the leases
    first.process.send_signal(signal.SIGTERM)  # restarted with a long timeout, to hang long
    first.process.wait(15)
    fleet.members.remove(first)
    holder = fleet.start("m0-again", timeout="60s")
    leaves = [fleet.issue(f"c{n}.test") for n in range(4)]
    shared = fleet.shared()
    wait_for(lambda: all(shared.record(cert_key(x.cert)).lease_holder for x in leaves))
    assert {shared.record(cert_key(x.cert)).lease_holder for x in leaves} == {"m0-again"}
    others = [fleet.start("m1"), fleet.start("m2")]
    wait_for(lambda: all(m.staple(early) for m in others))  # adopted from the shared state
    assert fleet.fetches(early) == 1
    time.sleep(2 * LEASE_SECONDS)  # the lease is renewed: nobody else asks the CA
    assert fleet.fetches(*leaves) == len(leaves)
    holder.process.kill()  # kill -9 in the middle of the fetches
    holder.process.wait(10)
    killed_at = time.monotonic()
    fleet.responder.set_behaviour(Behaviour.GOOD)
    wait_for(lambda: all(m.staple(x) for m in others for x in leaves))
    handed_over = time.monotonic() - killed_at
    assert handed_over < LEASE_SECONDS + 8
    assert fleet.fetches(*leaves) == 2 * len(leaves)  # once more per certificate, not twice
    assert all(m.staple(early) for m in others)  # never went stale meanwhile
    fetched_by = {shared.record(cert_key(x.cert)).fetched_by for x in leaves}
    assert fetched_by <= {"m1", "m2"}


def test_a_lease_or_retry_mark_that_never_runs_out_holds_no_member_back(fleet: Fleet) -> None:
    """Keys no member wrote under the prefix (every lease and retry mark of ours runs out): a
    lease key without a TTL, one of another type, a retry mark without a TTL. Each certificate
    is still fetched once for the fleet and delivered by every member (they waited for ever,
    and the staples ran out in silence); the member that replaced a lease says so."""
    leaves = [fleet.issue(f"c{n}.test") for n in range(3)]
    keys = [cert_key(leaf.cert) for leaf in leaves]
    client, p = fleet.shared().client, fleet.prefix
    client.set(f"{p}lease:{keys[0]}", "ghost 7")
    client.sadd(f"{p}lease:{keys[1]}", "ghost")
    mark = {"at": "2099-01-01T00:00:00+00:00", "member": "ghost", "reason": "try-later"}
    client.set(f"{p}retry:{keys[2]}", json.dumps(mark))
    members = [fleet.start("m0"), fleet.start("m1")]
    wait_for(lambda: all(m.staple(leaf) for m in members for leaf in leaves))
    assert [fleet.fetches(leaf) for leaf in leaves] == [1, 1, 1]
    logs = "".join(m.log() for m in members)
    for leaf in leaves[:2]:
        said = f"{_name(leaf)}: fleet: the lease key in Redis was no member's lease"
        assert logs.count(said) == 1, logs


def test_a_garbled_fencing_counter_costs_no_member_its_place_in_the_fleet(fleet: Fleet) -> None:
    """A fencing counter no member wrote (not a whole number; a list): every lease of that
    certificate failed, and each member said Redis was unavailable (it answered), left the
    fleet and fetched alone. Now the member that takes the lease starts the counter again and
    says so; the certificate is fetched once for the fleet, and nobody leaves it."""
    leaves = [fleet.issue(f"c{n}.test") for n in range(2)]
    client, p = fleet.shared().client, fleet.prefix
    client.set(f"{p}fence:{cert_key(leaves[0].cert)}", "garbage")
    client.rpush(f"{p}fence:{cert_key(leaves[1].cert)}", "garbage")
    members = [fleet.start("m0"), fleet.start("m1")]
    wait_for(lambda: all(m.staple(leaf) for m in members for leaf in leaves))
    assert [fleet.fetches(leaf) for leaf in leaves] == [1, 1]
    logs = "".join(m.log() for m in members)
    assert "unavailable" not in logs
    assert logs.count("fleet: the fencing counter in Redis was no member's") == 2, logs
    assert all(m.log().count("fleet: joined") == 1 for m in members)
    for leaf in leaves:
        record = fleet.shared().record(cert_key(leaf.cert))
        assert record.fetched_by in {"m0", "m1"}


def test_redis_stopped_and_restarted_members_keep_serving(fleet: Fleet) -> None:
    members = [fleet.start(f"m{n}") for n in range(3)]
    before = [fleet.issue(f"b{n}.test") for n in range(3)]
    wait_for(lambda: all(m.staple(x) for m in members for x in before))
    fleet.redis.stop()
    during = fleet.issue("during.test")  # each member fetches it alone
    wait_for(lambda: all(m.staple(during) for m in members))
    assert all(m.staple(x) for m in members for x in before)
    assert all(m.process.poll() is None for m in members)
    assert fleet.fetches(during) == len(members)
    fleet.redis.start()
    wait_for(lambda: all(m.log().count("fleet: joined") >= 2 for m in members))
    shared = fleet.shared()
    wait_for(lambda: shared.load(cert_key(during.cert)) is not None)  # shared on return
    after = fleet.issue("after.test")
    wait_for(lambda: all(m.staple(after) for m in members))
    assert fleet.fetches(after) == 1  # one fetch again, as a fleet
    for member in members:
        log = member.log()
        assert log.count("Redis at") == 1, log  # said once, not at every pass
        assert "Traceback" not in log
    assert os.path.exists(fleet.redis.directory / "appendonlydir")


def test_a_flushed_redis_is_filled_again_by_the_members(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """FLUSHALL under running members (their connections hold, so nobody rejoins): the fleet
    view showed no certificate, and a member started then asked the CA for every one again.
    The members notice their heartbeats gone and share their staples again."""
    leaves = [fleet.issue(f"c{n}.test") for n in range(2)]
    members = [fleet.start("m0"), fleet.start("m1")]
    wait_for(lambda: all(m.staple(leaf) for m in members for leaf in leaves))
    shared = fleet.shared()
    shared.client.flushall()
    wanted = sorted(cert_key(leaf.cert) for leaf in leaves)
    wait_for(lambda: shared.keys() == wanted, timeout=10)
    config = str(members[0].directory / "mustaple.toml")
    assert main(["status", "--fleet", "--json", "--config", config]) == 0
    rows = json.loads(capsys.readouterr().out)["certificates"]
    assert [row["name"] for row in rows] == ["c0.test", "c1.test"]
    assert all(row["seconds_left"] > 0 for row in rows)
    late = fleet.start("m2")
    wait_for(lambda: all(late.staple(leaf) for leaf in leaves))
    assert fleet.fetches(*leaves) == len(leaves)  # m2 adopted: nothing fetched again
    assert all(m.log().count("lost the fleet's records") == 1 for m in members)


def test_prime_uses_and_shares_the_fleets_staples(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """The deploy hook on each member: the first fetches and shares, the others take the
    shared staple; a member started afterwards adopts it too. Nobody waits."""
    leaf = fleet.issue("deployed.test")
    cert = str(fleet.tmp / "live" / "deployed.test" / "fullchain.pem")
    configs = []
    for name in ("m0", "m1"):
        directory = fleet.tmp / f"{name}-prime"
        directory.mkdir()
        configs.append(write_member_config(fleet, name, directory))
    assert main(["prime", "--config", str(configs[0]), cert]) == 0
    assert fleet.fetches(leaf) == 1
    assert main(["prime", "--config", str(configs[1]), cert]) == 0
    assert fleet.fetches(leaf) == 1  # taken from the fleet
    assert capsys.readouterr().out.count("OK deployed.test: good staple") == 2
    later = fleet.start("m2")
    wait_for(lambda: later.staple(leaf) is not None)
    assert fleet.fetches(leaf) == 1
    names = {m.name for m in fleet.shared().members()}
    assert not names & {"m0", "m1"}  # a one-shot prime is no member of the fleet view


def test_prime_without_redis_fetches_alone(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    leaf = fleet.issue("alone.test")
    cert = str(fleet.tmp / "live" / "alone.test" / "fullchain.pem")
    directory = fleet.tmp / "m0-prime"
    directory.mkdir()
    config = write_member_config(fleet, "m0", directory)
    fleet.redis.stop()
    assert main(["prime", "--config", str(config), cert]) == 0
    assert fleet.fetches(leaf) == 1
    assert capsys.readouterr().out.startswith("OK alone.test: good staple")
    said = [r.getMessage() for r in caplog.records if "fleet:" in r.getMessage()]
    assert len(said) == 1
    assert "serving and refreshing alone" in said[0]


def test_every_member_hands_the_shared_staple_to_its_own_haproxy(fleet: Fleet) -> None:
    """Distribution reaches the servers: two members, each with its HAProxy (runtime API, no
    reload); one fetch, and both HAProxys staple the new response."""
    leaf = fleet.issue("ha.test")
    fleet.responder.set_behaviour(Behaviour.STALE)  # valid, but older than what comes next
    result = asyncio.run(fetch_staple(make_target(leaf.cert, leaf.issuer)))
    fleet.responder.set_behaviour(Behaviour.GOOD)
    assert result.staple is not None
    first = result.staple.der  # HAProxy 2.6 takes staples at run time only if it started with one
    servers = []
    for name in ("m0", "m1"):
        pem = haproxy_pem(leaf, fleet.tmp / name / "certs")
        Path(f"{pem}.ocsp").write_bytes(first)
        server = HAProxyServer(fleet.tmp / f"{name}-haproxy", pem=pem).start()
        servers.append(server)
        sink = f"""
[[certificates]]
paths = ["{pem}"]

[sinks.haproxy]
type = "haproxy"
socket = "{server.api_socket}"
"""
        fleet.start(name, sink=sink)
    try:
        workers = [server.worker_pid() for server in servers]
        shared = fleet.shared()
        wait_for(lambda: shared.load(cert_key(leaf.cert)) is not None)
        newest = shared.load(cert_key(leaf.cert)).der  # type: ignore[union-attr]
        assert newest != first
        for server in servers:
            wait_for(functools.partial(serves, server.port, "ha.test", newest))
        assert fleet.fetches(leaf) == 2  # the one above, and one for the whole fleet
        assert [server.worker_pid() for server in servers] == workers  # no reload
    finally:
        for server in servers:
            server.stop()


def serves(port: int, name: str, der: bytes) -> bool:
    return staple_from(port, name) == der


def served_by_two(fleet: Fleet, name: str) -> tuple[Leaf, list[Member], StoredStaple]:
    """A leaf for `name`, two members (m0, m1) serving its staple, and the shared record."""
    leaf = fleet.issue(name)
    members = [fleet.start("m0"), fleet.start("m1")]
    wait_for(lambda: all(m.staple(leaf) for m in members))
    stored = fleet.shared().load(cert_key(leaf.cert))
    assert stored is not None
    return leaf, members, stored


def records_end(fleet: Fleet, key: str, ends: datetime) -> None:
    """The key's staple, attempts and fencing counter end at `ends` (Redis's TTL)."""
    client = fleet.shared().client
    for kind in ("staple", "attempts", "fence"):
        left = timedelta(milliseconds=client.pttl(f"{fleet.prefix}{kind}:{key}"))
        assert abs(utc_now() + left - ends) < timedelta(minutes=1), (kind, left)


def test_the_records_of_a_renewed_leaf_end_and_leave_the_fleet_view(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """A leaf's records in Redis (staple, attempts, fencing counter) end a day after its
    staple's effective expiry, counted again at each write: they stayed for ever, so after a
    renewal the fleet view listed the name twice and Redis grew with every renewal. A member
    that still serves the old leaf keeps writing its records (each refresh counts their end
    again); once they end, the fleet view lists the name once and the next write of any
    staple takes the old key out of the `keys` set."""
    old, members, stored = served_by_two(fleet, "renewed.test")
    client, p, old_key = fleet.shared().client, fleet.prefix, cert_key(old.cert)
    records_end(fleet, old_key, stored.effective_expiry + timedelta(days=1))

    new = fleet.issue("renewed.test")  # renewed under both members
    wait_for(lambda: all(m.staple(new) for m in members))
    config = str(members[0].directory / "mustaple.toml")
    assert names_in_view(config, capsys) == ["renewed.test", "renewed.test"]  # until the end

    for kind in ("staple", "attempts", "fence"):  # their end, as Redis makes it
        client.pexpire(f"{p}{kind}:{old_key}", 1)
    wait_for(lambda: not client.keys(f"{p}*{old_key}*"))
    assert names_in_view(config, capsys) == ["renewed.test"]
    other = fleet.issue("other.test")  # a write of another staple sweeps the set
    wait_for(lambda: all(m.staple(other) for m in members))
    kept = {key.decode() for key in client.smembers(f"{p}keys")}
    assert kept == {cert_key(new.cert), cert_key(other.cert)}


def test_the_records_of_a_leaf_renewed_before_the_upgrade_end_too(fleet: Fleet) -> None:
    """An older version wrote a leaf's records without an end; renewed before the upgrade,
    the leaf is written by no member again, so they stayed for ever (the fleet view listed
    its name twice). The members' writes of other staples give them the end a write gives:
    a day after the old staple's effective expiry."""
    old, members, stored = served_by_two(fleet, "renewed.test")
    client, p, old_key = fleet.shared().client, fleet.prefix, cert_key(old.cert)
    kinds = ("staple", "attempts", "fence")
    for kind in kinds:  # as the older version wrote them
        assert client.persist(f"{p}{kind}:{old_key}")
    new = fleet.issue("renewed.test")  # renewed under both members
    others = [fleet.issue(f"c{n}.test") for n in range(3)]
    wait_for(lambda: all(m.staple(x) for m in members for x in [new, *others]))
    wait_for(lambda: all(client.pttl(f"{p}{kind}:{old_key}") > 0 for kind in kinds), 10)
    records_end(fleet, old_key, stored.effective_expiry + timedelta(days=1))


def names_in_view(config: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The certificates' names `mustaple status --fleet --json` lists."""
    capsys.readouterr()
    assert main(["status", "--fleet", "--json", "--config", config]) == 0
    return [row["name"] for row in json.loads(capsys.readouterr().out)["certificates"]]


def test_a_staple_record_evicted_under_the_members_is_shared_again(fleet: Fleet) -> None:
    """Records with an end may be evicted (`maxmemory-policy volatile-*`): the staple,
    attempts and fencing counter of a certificate gone while every member holds its staple.
    The members kept serving, but a member started then found nothing and asked the CA again.
    A member's heartbeat finds the record gone and shares its staple again."""
    leaf = fleet.issue("evicted.test")
    members = [fleet.start("m0"), fleet.start("m1")]
    wait_for(lambda: all(m.staple(leaf) for m in members))
    served = [(m.directory / "staples" / "evicted.test.der").read_bytes() for m in members]
    shared, key = fleet.shared(), cert_key(leaf.cert)
    assert fleet.fetches(leaf) == 1
    shared.client.delete(
        *(f"{fleet.prefix}{kind}:{key}" for kind in ("staple", "attempts", "fence"))
    )
    wait_for(lambda: shared.load(key) is not None)
    assert shared.load(key).der == served[0] == served[1]  # type: ignore[union-attr]
    now = [(m.directory / "staples" / "evicted.test.der").read_bytes() for m in members]
    assert now == served  # each member kept serving its staple
    late = fleet.start("m2")
    wait_for(lambda: late.staple(leaf) is not None)
    assert fleet.fetches(leaf) == 1  # adopted: not asked of the CA again
    assert sum("shared again" in m.log() for m in members) >= 1


def test_a_full_redis_under_noeviction_is_said_once_not_at_every_heartbeat(fleet: Fleet) -> None:
    """`maxmemory-policy noeviction` and Redis full: it answers PING but refuses every
    write. A member rejoined on PING at each heartbeat and lost Redis at its first write,
    logging 'joined' and 'unavailable' every few seconds for as long as Redis stayed full.
    It joins on a heartbeat written: one line when Redis fills, one when it has room again."""
    leaf = fleet.issue("full.test")
    member = fleet.start("m0")
    wait_for(lambda: member.staple(leaf) is not None)
    client = fleet.shared().client
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    wait_for(lambda: _refused_for_memory(client) >= 6, timeout=20)  # heartbeats and probes
    log = member.log()
    assert log.count("unavailable (command not allowed when used memory") == 1, log
    assert log.count("joined as m0") == 1, log
    assert member.staple(leaf) is not None  # served alone meanwhile
    client.config_set("maxmemory", 0)
    wait_for(lambda: member.log().count("joined as m0") == 2)


def _refused_for_memory(client: Any) -> int:
    """How many commands Redis refused for want of memory (OOM), by its own count."""
    return int(client.info("errorstats").get("errorstat_OOM", {}).get("count", 0))


def test_members_that_left_or_died_are_dropped_from_the_fleet_view_a_day_on(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """The `members` hash kept every member that ever joined, for ever. A member that
    stopped is shown left, one killed stale; once their heartbeats are a day old (written
    back here, as the day would make them), the next heartbeat of a live member drops them
    from the hash; one that comes back joins again."""
    fleet.issue("c.test")
    alive, stopped, killed = (fleet.start(name) for name in ("m0", "m1", "m2"))
    client, members = fleet.shared().client, f"{fleet.prefix}members"
    wait_for(lambda: len(client.hkeys(members)) == 3)
    wait_for(lambda: "joined as m1" in stopped.log())  # its first heartbeat's call returned
    stopped.process.send_signal(signal.SIGTERM)
    assert stopped.process.wait(15) == 0
    killed.process.kill()
    killed.process.wait()
    config = str(alive.directory / "mustaple.toml")
    hour_ago = _beat_written_back(client, members, "m2", timedelta(hours=1))
    states = _member_states(config, capsys)
    assert states == {"m0": "alive", "m1": "left", "m2": "stale"}, states
    assert hour_ago in client.hget(members, "m2").decode()  # a live member left it there

    for name in ("m1", "m2"):
        _beat_written_back(client, members, name, timedelta(days=1, minutes=1))
    wait_for(lambda: sorted(client.hkeys(members)) == [b"m0"])
    assert _member_states(config, capsys) == {"m0": "alive"}
    assert "member 'm1' dropped from the fleet view: no heartbeat for 1d 0h" in alive.log()

    back = fleet.start("m1")
    wait_for(lambda: sorted(client.hkeys(members)) == [b"m0", b"m1"])
    assert _member_states(config, capsys) == {"m0": "alive", "m1": "alive"}
    wait_for(lambda: "joined as m1" in back.log())
    assert "lost the fleet's records" not in alive.log() + back.log()


def _beat_written_back(client: Any, members: str, name: str, age: timedelta) -> str:
    """Write `name`'s heartbeat back by `age`, as time passing would leave it; its time."""
    data = json.loads(client.hget(members, name))
    data["seen"] = (utc_now() - age).replace(microsecond=0).isoformat()
    client.hset(members, name, json.dumps(data))
    return str(data["seen"])


def _member_states(config: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """Each member's state as `mustaple status --fleet --json` shows it."""
    capsys.readouterr()
    assert main(["status", "--fleet", "--json", "--config", config]) == 0
    return {row["member"]: row["state"] for row in json.loads(capsys.readouterr().out)["members"]}


def test_status_says_which_member_still_manages_the_old_leaf_after_a_renewal(
    fleet: Fleet,
) -> None:
    """A certificate renewed on one member only (the other's deploy hook did not run):
    `status --fleet` could not say so (Redis held no record of who manages what). Each member
    records its leaves, writing only what changed (none at a heartbeat that finds nothing
    new); `status --fleet`, from another process, names the member left behind and its old
    leaf until that member renews too. A key of another type in place of a member's record
    is replaced at its next heartbeat."""
    client = fleet.shared().client
    client.config_set("notify-keyspace-events", "Kh")  # hash writes, as Redis sees them
    writes = client.pubsub()
    writes.psubscribe(f"__keyspace@0__:{fleet.prefix}leaves:*")
    assert writes.get_message(timeout=5)["type"] == "psubscribe"
    old = fleet.ca.issue(
        "split.test",
        ocsp_urls=[fleet.responder.url],
        not_before=utc_now() - timedelta(days=30),
        not_after=utc_now() + timedelta(days=60),
    )
    fleet.responder.add(old)
    members = []
    for name in ("m0", "m1"):
        put_leaf(old, fleet.tmp / f"live-{name}" / "split.test")
        members.append(fleet.start(name, sink=own_live(fleet, name)))
    first, second = members
    wait_for(lambda: all(m.staple(old) for m in members))
    ops = write_member_config(fleet, "ops", fleet.tmp)  # a host that runs no member
    wait_for(lambda: _leaves_view(ops) == [(serial(old), ["m0", "m1"], [], "ok")])
    _hash_writes(writes)
    for member in members:  # a few heartbeats each, with nothing new
        _heartbeats(client, fleet.prefix, member.name, 3)
    assert _hash_writes(writes) == []

    new = fleet.issue("split.test")  # renewed on m0 only
    put_leaf(new, fleet.tmp / "live-m0" / "split.test")
    wait_for(lambda: first.staple(new) is not None)
    split = [
        (serial(new), ["m0"], [], "ok"),
        (serial(old), ["m1"], ["m0"], "warning"),
    ]
    wait_for(lambda: _leaves_view(ops) == split)
    (group,) = _status(ops, "--json")["names"]
    assert group["health"] == "warning"
    assert group["health_reason"].startswith(f"older leaf on m1: serial {serial(old)}, notAfter")
    table = _status(ops)
    assert "mustaple fleet: leaves members disagree on" in table
    assert "older, expires in 59d" in table
    assert _hash_writes(writes) == [("m0", "hdel"), ("m0", "hset")]  # one write: the change

    client.delete(f"{fleet.prefix}leaves:m1")
    client.set(f"{fleet.prefix}leaves:m1", "garbage")
    wait_for(lambda: client.type(f"{fleet.prefix}leaves:m1") == b"hash")
    assert _leaves_view(ops) == split
    assert second.log().count("the record of this member's leaves was gone") == 1

    put_leaf(new, fleet.tmp / "live-m1" / "split.test")  # m1's deploy hook runs at last
    wait_for(lambda: _leaves_view(ops) == [(serial(new), ["m0", "m1"], [], "ok")])
    assert "mustaple fleet: leaves: no member manages an older leaf" in _status(ops)
    writes.close()


def own_live(fleet: Fleet, name: str) -> str:
    """A member's own certificates (`live-NAME`) and file sink, as `write_member_config`
    takes them."""
    return f"""
[[certificates]]
paths = ["{fleet.tmp}/live-{name}/*/fullchain.pem"]

[sinks.files]
type = "file"
path = "{fleet.tmp / name}/staples/{{name}}.der"
"""


def put_leaf(leaf: Leaf, directory: Path) -> None:
    """`leaf`'s fullchain.pem in `directory`, replaced at once (as certbot's link is)."""
    staging = directory.with_name(directory.name + ".new")
    leaf.write(staging)
    directory.mkdir(parents=True, exist_ok=True)
    os.replace(staging / "fullchain.pem", directory / "fullchain.pem")
    shutil.rmtree(staging)


def serial(leaf: Leaf) -> str:
    return f"{leaf.cert.serial_number:x}"


def _status(config: Path, *options: str) -> Any:
    """`mustaple status --fleet` run in its own process: its JSON with --json, else its text."""
    done = subprocess.run(
        [MUSTAPLE, "status", "--fleet", "--config", str(config), *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, ""), done
    return json.loads(done.stdout) if "--json" in options else done.stdout


def _leaves_view(config: Path) -> list[tuple[str, list[str], list[str], str]]:
    """split.test's leaves as `status --fleet --json` shows them: serial, members, renewed
    on, health."""
    (group,) = _status(config, "--json")["names"]
    return [(s["serial"], s["members"], s["renewed_on"], s["health"]) for s in group["leaves"]]


def _hash_writes(pubsub: Any) -> list[tuple[str, str]]:
    """The writes to the members' leaves heard since the last call: (member, command)."""
    heard = []
    while (message := pubsub.get_message(timeout=0.2)) is not None:
        assert message["type"] == "pmessage"
        heard.append((message["channel"].decode().rpartition(":")[2], message["data"].decode()))
    return heard


def _heartbeats(client: Any, prefix: str, member: str, count: int) -> None:
    """Until `member` has written `count` more heartbeats."""
    seen: set[bytes] = set()

    def beaten() -> bool:
        seen.add(client.hget(f"{prefix}members", member))
        return len(seen) > count

    wait_for(beaten)
