"""A SIGHUP in fleet mode: the replaced keeper leaves the fleet's work to the new one.

Real processes on loopback: a `mustaple run` member of a fleet on a real redis-server, the
test as a second member announcing a newer staple (through the same Redis client code a
member uses), file sinks whose reload commands count their runs and can be held (the new
keeper's start is held in its delivery: the moment both keepers live in one process).
Judged from outside: Redis's count of the announcement's receivers, the staple files, the
reloads' counts, `mustaple status --json` and `status --fleet --json`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from mustaple.adapters.fetch import fetch_staple
from mustaple.adapters.redisstore import RedisStore
from mustaple.adapters.store import StoredStaple, cert_key
from mustaple.core.certs import make_target
from mustaple.core.clock import utc_now
from mustaple.testing import CA, Leaf, ResponderThread
from outside import end_all, wait_for
from servers import RedisServer
from test_owed_reloads import notify_socket, passes
from test_rows_forward import MUSTAPLE, gated_reload

KEPT, REMOVED = "kept.example.test", "removed.example.test"


@dataclass
class Member:
    """`mustaple run` as member m0 of a fleet, whose configuration the test rewrites."""

    tmp: Path
    ca: CA
    responder: ResponderThread
    redis: RedisServer
    prefix: str
    sock: socket.socket
    env: dict[str, str]
    process: subprocess.Popen[str] | None = None

    @property
    def config(self) -> Path:
        return self.tmp / "mustaple.toml"

    def issue(self, name: str) -> Leaf:
        leaf = self.ca.issue(name, ocsp_urls=[self.responder.url])
        self.responder.add(leaf)
        leaf.write(self.tmp / "live" / name)
        return leaf

    def configure(self, *, paths: str, sinks: tuple[str, ...], extra: str = "") -> None:
        """Certificates `paths` (under live/), file sinks `sinks` (each in its directory,
        reloading with a `gated_reload`); the fleet with a long lease (a heartbeat every 10 s:
        none in the middle of the test)."""
        tables = "".join(
            f'[sinks.{sink}]\ntype = "file"\npath = "{self.tmp}/{sink}/{{name}}.der"\n'
            f'reload = "{gated_reload(self.tmp, sink)}"\n'
            for sink in sinks
        )
        self.config.write_text(
            f'state_dir = "{self.tmp}/state"\n'
            f'[[certificates]]\npaths = ["{self.tmp}/live/{paths}/fullchain.pem"]\n{tables}'
            '[policy]\ntimeout = "2s"\nattempts = 1\nwatch_interval = "1h"\n'
            f'[fleet]\nredis = "{self.redis.url}"\nprefix = "{self.prefix}"\n'
            f'member = "m0"\nlease = "30s"\n{extra}'
        )

    def run(self) -> subprocess.Popen[str]:
        with (self.tmp / "run.err").open("a") as err:
            self.process = subprocess.Popen(
                [MUSTAPLE, "run", "--config", str(self.config)],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
            )
        passes(self.sock, 1)
        return self.process

    def hold(self, sink: str) -> Path:
        gate = self.tmp / f"open.{sink}"
        (self.tmp / f"{sink}.hold").write_text(str(gate))
        return gate

    def holding(self, sink: str) -> bool:
        return any(self.tmp.glob(f"{sink}.held.*"))

    def runs(self, sink: str) -> int:
        path = self.tmp / f"{sink}.runs"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def files(self) -> dict[str, bytes]:
        """Every staple file of every sink, by its path under the test's directory."""
        found = sorted(self.tmp.glob("*/*.der"))
        return {str(path.relative_to(self.tmp)): path.read_bytes() for path in found}

    def announce(self, leaf: Leaf) -> tuple[int, bytes]:
        """As member m1: fetch a staple of `leaf` newer than any before (in a second of its
        own), store it in Redis and announce it: how many listened on the channel then, and
        the staple."""
        second = utc_now().replace(microsecond=0) + timedelta(seconds=1)
        wait_for(lambda: utc_now() >= second)
        result = asyncio.run(fetch_staple(make_target(leaf.cert, leaf.issuer)))
        staple = result.staple
        assert staple is not None, result.rejection
        stored = StoredStaple(
            _name(leaf), staple.der, staple.this_update, staple.effective_expiry, utc_now(), None
        )
        shared = RedisStore(self.redis.url, prefix=self.prefix, member="m1")
        try:
            listeners = self.listeners()
            assert shared.publish(cert_key(leaf.cert), stored)
        finally:
            shared.close()
        return listeners, staple.der

    def listeners(self) -> int:
        """How many listen on the fleet's channel now, as Redis counts them."""
        shared = RedisStore(self.redis.url, prefix=self.prefix)
        try:
            return int(shared.client.pubsub_numsub(shared.channel)[0][1])
        finally:
            shared.close()

    def status(self, *more: str) -> Any:
        done = subprocess.run(
            [MUSTAPLE, "status", "--json", *more, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def log(self) -> str:
        path = self.tmp / "run.err"
        return path.read_text() if path.exists() else ""


def _name(leaf: Leaf) -> str:
    return str(leaf.cert.subject.rfc4514_string().split("=", 1)[1].split(",")[0])


@contextmanager
def member(tmp: Path) -> Iterator[Member]:
    """With a responder that signs every answer afresh (a later fetch is a newer staple)."""
    ca = CA()
    with (
        ResponderThread(ca, cache_for=timedelta(0)) as responder,
        RedisServer(tmp / "redis") as redis,
        notify_socket(tmp) as (sock, env),
    ):
        m = Member(tmp, ca, responder, redis, f"t{uuid.uuid4().hex[:8]}:", sock, env)
        try:
            yield m
        finally:
            for gate in tmp.glob("*.hold"):
                Path(gate.read_text()).touch()
            for held in tmp.glob("*.held.*"):
                Path(held.read_text()).touch()
            end_all([m.process] if m.process else [])
    assert "Traceback" not in m.log()


def test_the_keeper_a_sighup_replaces_adopts_nothing_while_the_new_one_starts(
    tmp_path: Path,
) -> None:
    """The reload drops a certificate and a sink; the new keeper's start is held in its
    delivery when another member announces a newer staple of the dropped certificate. Only
    the new keeper hears it: the replaced one's listener is gone, so it neither writes the
    dropped certificate's files (in either sink) nor reloads the dropped sink's server, nor
    brings back its status row; and once it is closed, the member is not shown `left`."""
    with member(tmp_path) as m:
        m.issue(KEPT)
        removed = m.issue(REMOVED)
        m.configure(paths="*", sinks=("files", "extra"))
        keeper = m.run()
        before, extra_runs = m.files(), m.runs("extra")
        assert len(before) == 4  # two certificates, two sinks
        m.configure(paths=KEPT, sinks=("files",))
        gate = m.hold("files")
        m.issue(KEPT)  # renewed: the new keeper's start takes the old staple away
        keeper.send_signal(signal.SIGHUP)
        wait_for(lambda: m.holding("files"))
        assert m.announce(removed)[0] == 1  # the new keeper's listener only
        gate.touch()
        passes(m.sock, 1, drop=False)  # the new keeper's first (the old one's next is in 1 h)
        after = m.files()
        for sink in ("files", "extra"):
            path = f"{sink}/{REMOVED}.der"
            assert after[path] == before[path], path  # the dropped certificate's, untouched
        assert after[f"extra/{KEPT}.der"] == before[f"extra/{KEPT}.der"]
        assert m.runs("extra") == extra_runs  # the dropped sink's server never reloaded
        assert [row["name"] for row in m.status()] == [KEPT]
        (seen,) = m.status("--fleet")["members"]
        assert (seen["member"], seen["left"]) == ("m0", False), seen
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(20) == 0


def test_a_reload_that_cannot_start_leaves_the_keeper_in_its_fleet(tmp_path: Path) -> None:
    """The new configuration's endpoint cannot listen (its port is taken): the running
    keeper goes on, back in its fleet: it hears the next announcement and delivers it."""
    with member(tmp_path) as m, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        leaf = m.issue(KEPT)
        m.configure(paths="*", sinks=("files",))
        keeper = m.run()
        port = taken.getsockname()[1]
        m.configure(paths="*", sinks=("files",), extra=f'[http]\nlisten = "127.0.0.1:{port}"\n')
        keeper.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the running configuration" in m.log())
        wait_for(lambda: m.listeners() == 1)  # it listens again
        listeners, der = m.announce(leaf)
        assert listeners == 1
        wait_for(lambda: (tmp_path / "files" / f"{KEPT}.der").read_bytes() == der)
        (seen,) = m.status("--fleet")["members"]
        assert seen["left"] is False, seen
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(20) == 0
