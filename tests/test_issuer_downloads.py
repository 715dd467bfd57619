"""Issuer downloads over AIA caIssuers for many certificates of one CA without their chain:
one download per URL at a time, a failure remembered (for the rest of a prime; in the keeper
for a back-off on its clock), each certificate with its own line, the other certificates
primed as usual.

Judged from outside: the connections the AIA server received (for a server that never
answers, a listening socket nobody reads, drained after the run), the requests an answering
one served, `mustaple prime`'s exit code and lines, the staples fetched. The back-off is walked
with a hand-moved clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

import mustaple.adapters.workers as workers_module
import mustaple.keeper.keeper as keeper_module
from conftest import Handler, LoopbackServer
from mustaple.adapters.store import SqliteStore
from mustaple.core.render import short_time
from mustaple.core.report import ExitCode
from mustaple.keeper.keeper import Keeper
from mustaple.testing import (
    CA,
    QUICK_FETCH,
    RecordingSink,
    ResponderThread,
    keeper_config,
    keeper_world,
)
from outside import end_all, get_json, http_get, wait_for
from servers import free_port

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
COUNT = 30  # certificates of the CA whose caIssuers URL fails
HINT = "or the `issuer` key of its [[certificates]] entry"
HOUR = timedelta(hours=1)


class Silent:
    """A caIssuers URL whose server completes every connection and never says a word (a
    listening socket nobody reads); `connections` takes and counts what came so far."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.listener.setblocking(False)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/ca.der"
        self.held: list[socket.socket] = []

    def connections(self) -> int:
        while True:
            try:
                self.held.append(self.listener.accept()[0])
            except BlockingIOError:
                return len(self.held)

    def close(self) -> None:
        for connection in self.held:
            connection.close()
        self.listener.close()


@dataclass
class Aia:
    """A failing caIssuers URL, how many times it was asked, and what the line says of it."""

    url: str
    asked: Callable[[], int]
    problem: str


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


def answering(body: bytes, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, content_type="application/pkix-cert")

    return handler


@pytest.fixture(params=["silent", "garbage", "http-503"])
def failing(
    request: pytest.FixtureRequest, silent: Silent, serve: Callable[[Handler], LoopbackServer]
) -> Aia:
    """The caIssuers URL of the CA: a server that never answers, one that answers what is
    no certificate, one that answers HTTP 503."""
    if request.param == "silent":
        problem = (
            f"could not download the issuer from {silent.url} "
            "(the caIssuers server did not answer in time"
        )
        return Aia(silent.url, silent.connections, problem)
    if request.param == "garbage":
        server = serve(answering(b"<html>no</html>"))
        problem = f"issuer at {server.url}ca.der: no certificate found"
    else:
        server = serve(answering(b"busy", 503))
        problem = f"could not download the issuer from {server.url}ca.der (HTTP 503)"
    return Aia(server.url + "ca.der", lambda: len(server.hits), problem)


def without_chain(ca: CA, live: Path, name: str, aia: str, ocsp: str) -> Path:
    """A leaf alone in live/NAME/fullchain.pem: its issuer is only at `aia`."""
    leaf = ca.issue(name, ocsp_urls=[ocsp], ca_issuer_urls=[aia])
    (live / name).mkdir(parents=True)
    path = live / name / "fullchain.pem"
    path.write_bytes(leaf.cert_pem)
    return path


def prime_config(tmp: Path) -> Path:
    config = tmp / "mustaple.toml"
    config.write_text(
        f'state_dir = "{tmp / "state"}"\n'
        f'[[certificates]]\npaths = ["{tmp}/live/*/fullchain.pem"]\n'
        f'[sinks.files]\ntype = "file"\npath = "{tmp}/staples/{{name}}.der"\n'
        '[policy]\ntimeout = "1s"\nattempts = 1\n'
    )
    return config


def test_prime_asks_a_failing_caissuers_url_once_and_says_it_for_each_certificate(
    tmp_path: Path, failing: Aia
) -> None:
    """30 certificates of a CA whose caIssuers URL fails, beside one with its chain: the URL
    is asked once (one timeout, not 30), each of the 30 has its UNUSABLE line naming its
    file, the URL and the key to set, and the other certificate is primed."""
    with ResponderThread(CA()) as responder:
        ca = responder.responder.ca
        good = ca.issue("good.test", ocsp_urls=[responder.url])
        responder.add(good)
        good.write(tmp_path / "live" / "good.test")
        lost = {
            without_chain(ca, tmp_path / "live", f"n{i:02d}.test", failing.url, responder.url)
            for i in range(COUNT)
        }
        done = subprocess.run(
            [MUSTAPLE, "prime", "--all", "--config", str(prime_config(tmp_path))],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert len(responder.requests) == 1  # good.test's
    assert failing.asked() == 1
    assert done.returncode == ExitCode.USAGE, done.stderr
    lines = done.stdout.splitlines()
    assert [line for line in lines if not line.startswith("UNUSABLE ")] == [
        next(line for line in lines if line.startswith("OK good.test"))
    ]
    unusable = [line for line in lines if line.startswith("UNUSABLE ")]
    assert {line.split()[1].rstrip(":") for line in unusable} == {str(p) for p in lost}
    for line in unusable:
        assert failing.problem in line
        assert line.endswith(HINT)
    assert (tmp_path / "staples" / "good.test.der").stat().st_size > 0
    assert "Traceback" not in done.stderr


def test_each_worker_process_asks_a_failing_caissuers_url_once(
    tmp_path: Path, silent: Silent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch loaded by two worker processes (each taking chunks of 4 files): the URL that
    never answers is asked once per worker, each file is unusable with the line of the
    timeout, and the certificates with their chain are primed."""
    monkeypatch.setattr(keeper_module, "WORKERS_FROM", 8)
    monkeypatch.setattr(workers_module, "LOAD_CHUNK", 4)

    async def scenario() -> None:
        with ResponderThread(CA()) as responder:
            ca = responder.responder.ca
            live = tmp_path / "live"
            for i in range(4):
                leaf = ca.issue(f"good{i}.test", ocsp_urls=[responder.url])
                responder.add(leaf)
                leaf.write(live / f"good{i}.test")
            for i in range(COUNT):
                without_chain(ca, live, f"n{i:02d}.test", silent.url, responder.url)
            config = keeper_config(tmp_path, fetch=QUICK_FETCH, workers=2)
            store = SqliteStore(config.state_dir / "state.db")
            keeper = Keeper(config, store=store, sinks={"record": RecordingSink()})
            async with keeper:
                primed, unusable = await keeper.prime_usable(sorted(live.glob("*/fullchain.pem")))
            store.close()
        assert [p.phase for p in primed] == ["good"] * 4
        assert len(unusable) == COUNT
        for left in unusable:
            assert (
                f"could not download the issuer from {silent.url} (the caIssuers server did not"
                in left.message
            )

    asyncio.run(scenario())
    assert silent.connections() == 2


def test_the_keeper_asks_a_failed_url_again_after_its_backoff_and_then_keeps_them(
    tmp_path: Path, serve: Callable[[Handler], LoopbackServer]
) -> None:
    """The running keeper (`mustaple run` passes: tick, then scan) on a hand-moved clock: the
    failed URL is asked once for its five certificates, not again before `retry_base` (30 s),
    then again (failing: the next wait doubles), and once it answers, the five are loaded and
    stapled; the certificate with its chain is kept all along."""
    answer = {"status": 503}
    issuer_der: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if answer["status"] != 200:
            return web.Response(status=answer["status"], text="busy")
        return web.Response(body=issuer_der[0], content_type="application/pkix-cert")

    server = serve(handler)
    url = server.url + "ca.der"

    async def scenario() -> None:
        async with keeper_world(tmp_path) as world:
            issuer_der.append(world.ca.cert.public_bytes(Encoding.DER))
            keeper, clock = world.keeper, world.clock
            world.issue("chained.test")
            for i in range(5):
                leaf = world.ca.issue(
                    f"n{i}.test", ocsp_urls=[world.responder.url], ca_issuer_urls=[url]
                )
                world.responder.add(leaf)
                (tmp_path / "live" / f"n{i}.test").mkdir(parents=True)
                (tmp_path / "live" / f"n{i}.test" / "fullchain.pem").write_bytes(leaf.cert_pem)

            async def a_pass() -> None:
                await keeper.tick()
                await keeper.scan()

            start = clock.now
            await a_pass()
            await keeper.tick()  # chained.test, loaded by the scan, fetched
            assert server.hits == ["GET /ca.der"]
            assert len(keeper.problems) == 5
            for problem in keeper.problems.values():
                assert f"could not download the issuer from {url} (HTTP 503)" in problem.message
                assert problem.message.endswith(HINT)
            assert [m.name for m in keeper.managed.values()] == ["chained.test"]
            assert keeper.next_wakeup() == start + timedelta(seconds=30)

            clock.now = start + timedelta(seconds=29)
            await a_pass()
            assert len(server.hits) == 1  # within the back-off: not asked

            clock.now = start + timedelta(seconds=30)
            await a_pass()
            assert len(server.hits) == 2  # asked again, failing again: 60 s now
            assert len(keeper.problems) == 5
            assert keeper.next_wakeup() == clock.now + timedelta(seconds=60)

            answer["status"] = 200
            clock.now += timedelta(seconds=59)
            await a_pass()
            assert len(server.hits) == 2
            clock.now += timedelta(seconds=1)
            await a_pass()
            assert len(server.hits) == 3
            assert not keeper.problems
            await keeper.tick()
            assert {v.phase for v in keeper.views()} == {"good"}
            assert len(keeper.views()) == 6
            assert len(world.responder.requests) == 6

    asyncio.run(scenario())


def test_a_file_gone_when_its_failed_download_is_due_does_not_spin_the_keeper(
    tmp_path: Path, serve: Callable[[Handler], LoopbackServer]
) -> None:
    """A certificate whose caIssuers URL failed, kept through a symbolic link (certbot's live/)
    that points to nothing when the retry falls due: the scan cannot look at it, so its retry
    stayed due, in the past, and `mustaple run` made pass after pass without pausing (23,000
    in 10 s, a core busy). The retry waits for the file; once it is there again (the same
    bytes), the URL is asked again."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, text="busy")

    server = serve(handler)
    url = server.url + "ca.der"

    async def scenario() -> None:
        async with keeper_world(tmp_path) as world:
            keeper, clock = world.keeper, world.clock
            leaf = world.ca.issue("aia.test", ocsp_urls=[world.responder.url], ca_issuer_urls=[url])
            archive = tmp_path / "archive" / "cert1.pem"
            archive.parent.mkdir()
            archive.write_bytes(leaf.cert_pem)
            (tmp_path / "live" / "aia.test").mkdir(parents=True)
            (tmp_path / "live" / "aia.test" / "fullchain.pem").symlink_to(archive)
            await keeper.scan()
            assert len(server.hits) == 1
            was = archive.stat()
            archive.unlink()  # the link points to nothing
            clock.now += timedelta(seconds=31)
            await keeper.tick()
            await keeper.scan()
            wake = keeper.next_wakeup()
            assert wake is None or wake > clock.now  # the daemon's next pause is no zero
            assert len(keeper.problems) == 1
            archive.write_bytes(leaf.cert_pem)
            os.utime(archive, ns=(was.st_atime_ns, was.st_mtime_ns))  # as it was, to the stamp
            await keeper.scan()
            assert len(server.hits) == 2

    asyncio.run(scenario())


def test_status_says_when_a_failed_issuer_download_is_tried_again(
    tmp_path: Path, serve: Callable[[Handler], LoopbackServer]
) -> None:
    """A real `mustaple run` whose certificate's caIssuers URL answers 503: `mustaple status`
    (JSON and table) and the `/status` of that run say when the download is tried again
    (`retry_base` after the failure, 1 h here), as they say a failed fetch's next try; the
    URL was asked once."""
    server = serve(answering(b"busy", 503))
    port = free_port()
    with ResponderThread(CA()) as responder:
        ca = responder.responder.ca
        without_chain(ca, tmp_path / "live", "aia.test", server.url + "ca.der", responder.url)
        config = prime_config(tmp_path)
        with config.open("a") as more:
            more.write(f'retry_base = "1h"\n[http]\nlisten = "127.0.0.1:{port}"\n')
        start = datetime.now(UTC).replace(microsecond=0)
        keeper = subprocess.Popen([MUSTAPLE, "run", "--config", str(config)])
        try:
            wait_for(lambda: status_json(config)[0]["state"] == "unusable")
            wait_for(lambda: http_get(f"http://127.0.0.1:{port}/status")[0] == 200)
            (row,) = status_json(config)
            end = datetime.now(UTC)
            (page,) = get_json(f"http://127.0.0.1:{port}/status")["certificates"]
            table = subprocess.run(
                [MUSTAPLE, "status", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            keeper.terminate()
            assert keeper.wait(20) == 0
        finally:
            end_all([keeper])
    assert (row["name"], row["state"]) == ("aia.test", "unusable")
    assert row["last_error"] == "cert-unusable"
    assert row["next_refresh"] is not None, row
    retry = datetime.fromisoformat(row["next_refresh"])
    assert start + HOUR <= retry <= end + HOUR
    assert page["next_refresh"] == row["next_refresh"]
    assert short_time(row["next_refresh"]) in next(
        line for line in table.splitlines() if "aia.test" in line
    )
    assert server.hits == ["GET /ca.der"]


def status_json(config: Path) -> list[dict[str, Any]]:
    command = [MUSTAPLE, "status", "--json", "--config", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    rows = json.loads(done.stdout)
    assert isinstance(rows, list)
    return rows
