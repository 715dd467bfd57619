"""The fast path of the HTTP endpoint, over real sockets: its answers against aiohttp's, byte
for byte, and every way a connection can go (keep-alive, HTTP/1.0, pipelining, a hand-off to
aiohttp in the middle of a connection, heads in pieces, garbage, heads too long, clients that
vanish or stop reading, idle connections, shutdown), and a head asked again, answered with the
bytes sent for it last only while they still hold.

Each test runs two endpoints on one keeper and one fake clock: `start_http` (the fast path in
front of aiohttp) and the same application served by aiohttp alone.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web

from conftest import Clock
from mustaple.adapters.config import CertEntry, Config, HttpConfig, KeeperPolicy
from mustaple.adapters.fetch import FetchPolicy
from mustaple.adapters.store import SqliteStore
from mustaple.core.clock import utc_now
from mustaple.core.request import encode_request, get_url, make_cert_id
from mustaple.core.verify import Staple
from mustaple.keeper.keeper import Keeper
from mustaple.serve import fastpath
from mustaple.serve.fastpath import FastPath
from mustaple.serve.localresponder import MALFORMED_REQUEST, UNAUTHORIZED, add_routes
from mustaple.serve.metrics import Metrics
from mustaple.serve.web import HttpServer, make_app, start_http
from mustaple.testing import CA, Leaf, OCSPResponder
from servers import NginxServer
from test_localresponder import LiveStack, first_staple, keeping

DAY = timedelta(days=1)
NAME = "www.example.test"
QUICK = FetchPolicy(total_timeout=1.0, connect_timeout=1.0, attempts_per_url=1)
LIMIT = 1000  # max_request_size in these tests
WAIT = 5.0  # seconds any answer may take
REQUESTS = "mustaple_responder_requests_total"


@dataclass
class World:
    """A keeper holding a staple for `leaf`, served by `fast` (start_http) and on
    `plain_port` by aiohttp alone."""

    tmp: Path
    clock: Clock
    ca: CA
    keeper: Keeper
    metrics: Metrics
    fast: HttpServer
    plain_port: int
    leaf: Leaf
    held: Staple

    @property
    def port(self) -> int:
        port: int = self.fast.addresses[0][1]
        return port

    @property
    def path(self) -> str:
        """The GET path of `leaf`'s request, as nginx sends it."""
        return get_url("/ocsp", encode_request(make_cert_id(self.leaf.issuer, self.held_serial)))

    @property
    def held_serial(self) -> int:
        return self.leaf.cert.serial_number

    def counted(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value(REQUESTS, {"result": result})
        return value or 0.0

    @property
    def answered(self) -> int:
        return self.fast.fast.answered

    @property
    def handed_off(self) -> int:
        return self.fast.fast.handed_off


def config(tmp: Path) -> Config:
    return Config(
        path=tmp / "mustaple.toml",
        state_dir=tmp / "state",
        certificates=(CertEntry(paths=(str(tmp / "live" / "*" / "fullchain.pem"),)),),
        sinks={},
        policy=KeeperPolicy(fetch=QUICK),
    )


@asynccontextmanager
async def serving_plain(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, max_line_size=LIMIT + 64)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def world(tmp: Path) -> AsyncIterator[World]:
    clock = Clock()
    ca = CA(now=clock.now - DAY)
    store = SqliteStore(tmp / "state" / "state.db")
    http = HttpConfig(port=0, max_request_size=LIMIT)
    try:
        async with (
            OCSPResponder(ca, clock=clock, cache_for=timedelta(0)) as responder,
            Keeper(config(tmp), store=store, sinks={}, clock=clock) as keeper,
        ):
            leaf = ca.issue(NAME, ocsp_urls=[responder.url])
            responder.add(leaf)
            leaf.write(tmp / "live" / NAME)
            await keeper.scan()
            await keeper.tick()
            (managed,) = keeper.managed.values()
            assert managed.held is not None
            metrics = Metrics(keeper, clock=clock)
            fast = await start_http(keeper, http, metrics=metrics)
            try:
                app = make_app(keeper, metrics, http, clock=clock)
                async with serving_plain(app) as plain_port:
                    yield World(
                        tmp, clock, ca, keeper, metrics, fast, plain_port, leaf, managed.held
                    )
            finally:
                await fast.cleanup()
    finally:
        store.close()


def run(scenario: Callable[[World], Awaitable[None]], tmp: Path) -> None:
    async def main() -> None:
        async with world(tmp) as w:
            await asyncio.wait_for(scenario(w), 60)

    asyncio.run(main())


# --- Talking HTTP over a raw socket ---------------------------------------------------------


def head(path: str, *headers: str, version: str = "1.1", method: str = "GET") -> bytes:
    """A request head; HTTP/1.1 ones get a Host header first."""
    host = ["Host: 127.0.0.1"] if version == "1.1" else []
    lines = [f"{method} {path} HTTP/{version}", *host, *headers, "", ""]
    return "\r\n".join(lines).encode()


async def read_reply(reader: asyncio.StreamReader, *, to_head: bool = False) -> bytes:
    """One whole answer, head and body (none for an answer `to_head`), as sent."""
    top = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    length = re.search(rb"\r\nContent-Length: (\d+)\r\n", top)
    if to_head or length is None:
        return top
    return top + await asyncio.wait_for(reader.readexactly(int(length[1])), WAIT)


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection (nothing more comes)."""
    return await asyncio.wait_for(reader.read(), WAIT) == b""


@asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


async def slow_reader(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection with a small receive window, for a client that does not read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=4096)


async def ask(port: int, data: bytes) -> bytes:
    """Send `data` on a new connection; everything the server sends until it closes."""
    async with connection(port) as (reader, writer):
        writer.write(data)
        return await asyncio.wait_for(reader.read(), WAIT)


async def ask_once(port: int, data: bytes) -> bytes:
    """Send `data` on a new connection; the first answer (the connection may stay open)."""
    async with connection(port) as (reader, writer):
        writer.write(data)
        return await read_reply(reader, to_head=data.startswith(b"HEAD "))


def dated(reply: bytes) -> bytes:
    """`reply` with its Date value blanked (taken at another moment by each server)."""
    return re.sub(rb"\r\nDate: [^\r]+\r\n", b"\r\nDate: -\r\n", reply, count=1)


def body_of(reply: bytes) -> bytes:
    return reply.partition(b"\r\n\r\n")[2]


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


# --- The answers ----------------------------------------------------------------------------


def test_fast_answers_are_aiohttps_byte_for_byte(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        etag = re.search(rb"\r\nETag: ([^\r]+)\r\n", await ask_once(w.port, head(w.path)))
        assert etag is not None
        stranger = CA().issue(NAME)
        unknown = get_url("/ocsp", encode_request(make_cert_id(stranger.issuer, 1)))
        raw = "/ocsp/" + get_url("", encode_request(make_cert_id(w.leaf.issuer, 1)))[1:]
        paths = [w.path, f"{w.path}?x=1&y=%41", unknown, "/ocsp/", "/ocsp/AAAA", raw]
        variants = [
            ("1.1",),
            ("1.1", "Connection: close"),
            ("1.1", "connection: Keep-Alive"),
            ("1.0",),
            ("1.0", "Connection: keep-alive"),
            ("1.0", "Connection: close"),
            ("1.1", f"If-None-Match: {etag[1].decode()}", "User-Agent: test"),
            ("1.0", 'If-None-Match: "other"'),
        ]
        before = w.answered
        for path in paths:
            for version, *headers in variants:
                request = head(path, *headers, version=version)
                fast = await ask_once(w.port, request)
                plain = await ask_once(w.plain_port, request)
                assert dated(fast) == dated(plain), request
        assert w.answered - before == len(paths) * len(variants)
        assert w.handed_off == 0

    run(scenario, tmp_path)


def test_what_the_answers_say(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        good = await ask_once(w.port, head(w.path))
        assert (status_of(good), body_of(good)) == (200, w.held.der)
        assert b"\r\nContent-Type: application/ocsp-response\r\n" in good
        assert re.search(rb"\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n", good)
        etag = re.search(rb"\r\nETag: ([^\r]+)\r\n", good)
        assert etag is not None
        not_modified = await ask_once(w.port, head(w.path, f"If-None-Match: W/{etag[1].decode()}"))
        assert (status_of(not_modified), body_of(not_modified)) == (304, b"")
        unknown = get_url("/ocsp", encode_request(make_cert_id(w.leaf.issuer, 1)))
        assert body_of(await ask_once(w.port, head(unknown))) == UNAUTHORIZED
        assert body_of(await ask_once(w.port, head("/ocsp/AAAA"))) == MALFORMED_REQUEST
        w.clock.now = w.held.effective_expiry  # the keeper has not ticked: held, but expired
        assert body_of(await ask_once(w.port, head(w.path))) == UNAUTHORIZED
        assert (w.counted("good"), w.counted("not-modified")) == (1, 1)
        assert (w.counted("unauthorized"), w.counted("malformed")) == (2, 1)
        assert w.handed_off == 0

    run(scenario, tmp_path)


def test_a_target_in_absolute_form_gets_the_same_answer(tmp_path: Path) -> None:
    """RFC 9112 3.2.2: a server must accept `GET http://host/ocsp/... HTTP/1.1` (the form a
    proxy is sent): the fast path hands it to aiohttp, and both answer as to the path."""

    async def scenario(w: World) -> None:
        origin = dated(await ask_once(w.port, head(w.path)))
        assert body_of(origin) == w.held.der
        for target in (f"http://127.0.0.1{w.path}", f"HTTP://x:80{w.path}?a=1"):
            for port in (w.port, w.plain_port):
                assert dated(await ask_once(port, head(target))) == origin, target
        assert (w.counted("good"), w.counted("malformed")) == (5, 0)

    run(scenario, tmp_path)


def test_the_date_and_max_age_follow_the_clocks(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        first = await ask_once(w.port, head(w.path))
        w.clock.now += timedelta(seconds=10)
        later = await ask_once(w.port, head(w.path))
        ages = [re.search(rb"max-age=(\d+),", reply) for reply in (first, later)]
        assert ages[0] is not None
        assert ages[1] is not None
        assert int(ages[0][1]) - int(ages[1][1]) == 10
        await asyncio.sleep(1.1)  # a new second: a new Date
        for port in (w.port, w.plain_port):
            date = re.search(rb"\r\nDate: ([^\r]+)\r\n", await ask_once(port, head(w.path)))
            assert date is not None
            sent = parsedate_to_datetime(date[1].decode())
            assert abs(sent - datetime.now(UTC)) < timedelta(seconds=2)

    run(scenario, tmp_path)


# --- Connections ----------------------------------------------------------------------------


def test_keep_alive_many_requests_on_one_connection(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        async with connection(w.port) as (reader, writer):
            for _ in range(300):
                writer.write(head(w.path))
                assert body_of(await read_reply(reader)) == w.held.der
        assert (w.answered, w.handed_off, w.counted("good")) == (300, 0, 300)

    run(scenario, tmp_path)


def test_http_1_0_and_connection_close(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        for request in (head(w.path, version="1.0"), head(w.path, "Connection: close")):
            async with connection(w.port) as (reader, writer):
                writer.write(request + request)  # the second one is never answered
                reply = await read_reply(reader)
                assert body_of(reply) == w.held.der
                assert await closed(reader)
        async with connection(w.port) as (reader, writer):
            for _ in range(3):
                writer.write(head(w.path, "Connection: keep-alive", version="1.0"))
                reply = await read_reply(reader)
                assert reply.startswith(b"HTTP/1.0 200 OK\r\n")
                assert b"\r\nConnection: keep-alive\r\n" in reply
        assert (w.answered, w.handed_off) == (5, 0)

    run(scenario, tmp_path)


def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        unknown = get_url("/ocsp", encode_request(make_cert_id(w.leaf.issuer, 1)))
        async with connection(w.port) as (reader, writer):
            writer.write(head(w.path) + head(unknown) + head(w.path)[:20])
            assert body_of(await read_reply(reader)) == w.held.der
            assert body_of(await read_reply(reader)) == UNAUTHORIZED
            writer.write(head(w.path)[20:])
            assert body_of(await read_reply(reader)) == w.held.der
        assert (w.answered, w.handed_off) == (3, 0)

    run(scenario, tmp_path)


# --- A head asked again ----------------------------------------------------------------------
# The same request head, alone in its read, gets the bytes sent for it last while the answer
# holds: these tests change each thing the answer depends on and ask with the same bytes.


def test_a_head_asked_again_follows_the_keeper(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        request = head(w.path)
        async with connection(w.port) as (reader, writer):
            for _ in range(3):
                writer.write(request)
                assert body_of(await read_reply(reader)) == w.held.der
            (managed,) = w.keeper.managed.values()
            assert managed.next_due is not None
            w.clock.now = managed.next_due  # the keeper fetches a new staple
            await w.keeper.tick()
            assert managed.held is not None
            assert managed.held.der != w.held.der
            writer.write(request)
            assert body_of(await read_reply(reader)) == managed.held.der
            assert w.counted("good") == 4
            # a reload: another keeper, which manages nothing, at the same revision by chance
            store = SqliteStore(tmp_path / "other" / "state.db")
            other = Keeper(config(tmp_path / "other"), store=store, sinks={})
            other.revision = w.keeper.revision
            reloaded = Metrics(other)
            responder = w.fast.fast.responder
            memo = responder.remembered(w.path)
            assert memo is not None
            w.fast.switch(other, reloaded)
            assert not responder.again(memo)  # whoever kept it
            assert not w.fast.fast.replies  # nothing holds the old keeper's answers alive
            writer.write(request)
            assert body_of(await read_reply(reader)) == UNAUTHORIZED
            store.close()
        sample = reloaded.registry.get_sample_value(REQUESTS, {"result": "unauthorized"})
        assert (sample, w.counted("good"), w.answered) == (1, 4, 5)

    run(scenario, tmp_path)


def test_a_head_asked_again_after_its_certificate_went(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        request = head(w.path)
        async with connection(w.port) as (reader, writer):
            for _ in range(2):
                writer.write(request)
                assert body_of(await read_reply(reader)) == w.held.der
            shutil.rmtree(tmp_path / "live" / NAME)  # at the same moment of the clock
            await w.keeper.scan()
            assert not w.keeper.managed
            writer.write(request)
            assert body_of(await read_reply(reader)) == UNAUTHORIZED
        assert (w.counted("good"), w.counted("unauthorized")) == (2, 1)

    run(scenario, tmp_path)


def test_a_head_asked_again_in_a_new_second_gets_a_new_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Date comes from the real clock (as aiohttp's): faked here, a second at a time."""
    second = [1_800_000_000.25]
    monkeypatch.setattr(fastpath, "time", SimpleNamespace(time=lambda: second[0]))

    async def scenario(w: World) -> None:
        request = head(w.path)
        async with connection(w.port) as (reader, writer):
            replies = []
            for step in (0, 0.5, 0.5):  # 0.25 and 0.75 in one second, then the next one
                second[0] += step
                writer.write(request)
                replies.append(await read_reply(reader))
        dates = [re.search(rb"\r\nDate: ([^\r]+)\r\n", reply) for reply in replies]
        assert [d[1] if d else None for d in dates] == [
            b"Fri, 15 Jan 2027 08:00:00 GMT",
            b"Fri, 15 Jan 2027 08:00:00 GMT",
            b"Fri, 15 Jan 2027 08:00:01 GMT",
        ]
        assert len({body_of(reply) for reply in replies}) == 1
        assert w.counted("good") == 3

    run(scenario, tmp_path)


def test_a_head_asked_again_that_closes_closes_each_time(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        for request in (head(w.path, "Connection: close"), head(w.path, version="1.0")):
            for _ in range(3):
                async with connection(w.port) as (reader, writer):
                    writer.write(request)
                    assert body_of(await read_reply(reader)) == w.held.der
                    assert await closed(reader)
        assert (w.answered, w.counted("good"), w.handed_off) == (6, 6, 0)

    run(scenario, tmp_path)


def test_a_post_after_gets_hands_the_connection_to_aiohttp(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        der = encode_request(make_cert_id(w.leaf.issuer, w.held_serial))
        post = head("/ocsp", f"Content-Length: {len(der)}", method="POST") + der
        async with connection(w.port) as (reader, writer):
            writer.write(head(w.path))
            assert body_of(await read_reply(reader)) == w.held.der
            writer.write(post)
            assert body_of(await read_reply(reader)) == w.held.der
            writer.write(head(w.path) + head("/healthz"))  # aiohttp's connection now
            assert body_of(await read_reply(reader)) == w.held.der
            assert body_of(await read_reply(reader)) == b"ok\n"
        async with connection(w.port) as (reader, writer):
            writer.write(head(w.path) + post + head(w.path))  # all at once
            for _ in range(3):
                assert body_of(await read_reply(reader)) == w.held.der
        assert (w.answered, w.handed_off, w.counted("good")) == (2, 2, 6)

    run(scenario, tmp_path)


def test_everything_else_is_aiohttps(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        der = encode_request(make_cert_id(w.leaf.issuer, w.held_serial))
        requests = [
            head("/healthz"),
            head("/readyz", version="1.0"),
            head("/status", "Connection: close"),
            head(w.path, method="HEAD"),
            head("/ocsp", f"Content-Length: {len(der)}", method="POST") + der,
            head(w.path, "Content-Length: 0"),
            head(w.path, "Transfer-Encoding: chunked") + b"0\r\n\r\n",
            head(w.path, "Connection: upgrade", "Upgrade: h2c"),
            head(w.path, "Upgrade: websocket"),
            head(w.path, "Sec-WebSocket-Key1: 1"),  # an old WebSocket draft: refused
            head(w.path, "Expect: 100-continue"),
            head(w.path, "Host: again"),  # a second Host
            head(w.path, "X-Folded: a", " b"),  # an obsolete line folding
            head("/ocsp/../healthz"),
            head("/ocsp/%2e%2e/healthz"),
            head("/ocsp/not-base64!"),
            head("/ocsp/%C3%A9"),
            head("http://127.0.0.1/ocsp/AAAA"),
            b"GET /ocsp/AAAA HTTP/1.1\r\n\r\n",  # no Host
            b"GET /ocsp/AAAA HTTP/1.0\n\n",  # bare line feeds
            b"GET /ocsp/AAAA HTTP/1.1\r\nHost: x\r\nX-Bin: \x01\r\n\r\n",
            b"GET /ocsp/AAAA HTTP/1.1\r\nHost: x\r\nX-Latin: \xe9\r\n\r\n",
            b"get /ocsp/AAAA HTTP/1.0\r\n\r\n",
            b"GET /ocsp/AAAA HTTP/2.0\r\n\r\n",
        ]
        for request in requests:
            fast = await ask_once(w.port, request)
            plain = await ask_once(w.plain_port, request)
            assert dated(fast) == dated(plain), request
        assert (w.answered, w.handed_off) == (0, len(requests))

    run(scenario, tmp_path)


def test_heads_in_pieces_byte_by_byte(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        async with connection(w.port) as (reader, writer):
            for _ in range(2):
                for byte in head(w.path, "If-None-Match: x"):
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0)
                assert body_of(await read_reply(reader)) == w.held.der
        assert (w.answered, w.handed_off) == (2, 0)

    run(scenario, tmp_path)


def test_garbage_is_refused_by_aiohttp_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(w: World) -> None:
        garbage = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # TLS
            b"\x00" * 100,
            b"GET /ocsp/AAAA HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST /ocsp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GET\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",  # a bad method: logged at debug level
        ]
        for data in garbage:
            reply = await ask(w.port, data)
            assert reply == b"" or status_of(reply) == 400, data
        assert body_of(await ask_once(w.port, head(w.path))) == w.held.der

    with caplog.at_level(logging.DEBUG):
        run(scenario, tmp_path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    said = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert not [r for r in said if r.exc_info or "\n" in r.getMessage()]  # -v: one line too
    assert any("Error handling request" in r.getMessage() for r in said)


def test_heads_too_long_go_to_aiohttp(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        long_path = "/ocsp/" + "A" * LIMIT
        assert status_of(await ask(w.port, head(long_path))) == 414
        assert w.counted("too-large") == 1
        longer = "/ocsp/" + "A" * 20 * LIMIT  # over aiohttp's line limit too: 414 here
        assert status_of(await ask(w.port, head(longer))) == 414
        assert w.counted("too-large") == 2
        async with connection(w.port) as (reader, writer):
            writer.write(head(w.path).removesuffix(b"\r\n"))  # never ended
            for _ in range(200):
                writer.write(b"X-Padding: " + b"x" * 1000 + b"\r\n")
            reply = await asyncio.wait_for(reader.read(), WAIT)
            assert status_of(reply) == 400
        assert (w.answered, w.handed_off) == (0, 2)
        assert body_of(await ask_once(w.port, head(w.path))) == w.held.der

    run(scenario, tmp_path)


def test_clients_that_vanish(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(w: World) -> None:
        for data in (head(w.path)[:30], head(w.path) * 50, b"GET /ocsp/"):
            _, writer = await asyncio.open_connection("127.0.0.1", w.port)
            writer.write(data)
            await writer.drain()
            writer.transport.abort()
        deadline = asyncio.get_running_loop().time() + WAIT
        while w.fast.fast.connections:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert body_of(await ask_once(w.port, head(w.path))) == w.held.der

    with caplog.at_level(logging.DEBUG):
        run(scenario, tmp_path)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


def test_a_client_that_stops_reading_is_not_read(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        count = 20000
        reader, writer = await slow_reader(w.port)
        try:
            writer.write(head(w.path) * count)  # answers far beyond what the buffers take
            await asyncio.sleep(0.5)
            assert w.answered < count  # paused: the client does not read
            assert [c.paused for c in w.fast.fast.connections] == [True]
            for _ in range(count):
                assert body_of(await read_reply(reader)) == w.held.der
        finally:
            writer.close()
        assert (w.answered, w.handed_off) == (count, 0)

    run(scenario, tmp_path)


def test_cleanup_closes_every_connection(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        async with connection(w.port) as (fast_r, fast_w), connection(w.port) as (aio_r, aio_w):
            fast_w.write(head(w.path))
            await read_reply(fast_r)
            aio_w.write(head("/healthz"))
            await read_reply(aio_r)
            waiting = await asyncio.open_connection("127.0.0.1", w.port)
            waiting[1].write(head(w.path)[:10])
            await asyncio.sleep(0.05)
            port = w.port
            await w.fast.cleanup()
            for reader in (fast_r, aio_r, waiting[0]):
                assert await closed(reader)
            waiting[1].close()
        assert not w.fast.fast.connections
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)

    run(scenario, tmp_path)


def test_idle_connections_are_closed(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        app = web.Application()
        responder = add_routes(app, w.keeper, clock=w.clock)
        runner = web.AppRunner(app)
        await runner.setup()
        assert runner.server is not None
        fast = FastPath(responder, runner.server, idle_timeout=0.5)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(fast, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with connection(port) as (idle, _), connection(port) as (busy, writer):
                for _ in range(12):  # 1.2 s of requests
                    writer.write(head(w.path))
                    assert body_of(await read_reply(busy)) == w.held.der
                    await asyncio.sleep(0.1)
                assert idle.at_eof() or await closed(idle)
                assert not busy.at_eof()
        finally:
            server.close()
            fast.close()
            await runner.cleanup()

    run(scenario, tmp_path)


def test_a_prefix_of_its_own_is_needed(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        for prefix in ("/", "/a.b"):
            responder = add_routes(web.Application(), w.keeper, prefix=prefix)
            with pytest.raises(ValueError, match="plain prefix"):
                FastPath(responder, web.Server(nothing))

    run(scenario, tmp_path)


async def nothing(request: web.BaseRequest) -> web.Response:
    return web.Response()


# --- With a real server ---------------------------------------------------------------------


class FastStack(LiveStack):
    """test_localresponder's live stack, with the responder served by `start_http`."""

    fast: FastPath | None = None

    async def _start(self) -> None:
        await self.exits.enter_async_context(self.responder)
        self.keeper = await self.exits.enter_async_context(keeping(self.tmp, utc_now, QUICK))
        server = await start_http(self.keeper, HttpConfig(port=0), metrics=Metrics(self.keeper))
        self.exits.push_async_callback(server.cleanup)
        self.fast = server.fast
        self.url = f"http://127.0.0.1:{server.addresses[0][1]}/ocsp"


def test_real_nginx_staples_through_the_fast_path(tmp_path: Path) -> None:
    stack = FastStack(tmp_path / "mustaple")
    with stack:
        leaf, _, held = stack.call(stack.stapled())
        files = leaf.write(tmp_path / "site")
        server = NginxServer(
            tmp_path / "nginx",
            cert=files.fullchain,
            key=files.key,
            responder=stack.url,
            trusted=files.chain,
        )
        with server:
            assert first_staple(server) == held.der
        assert stack.fast is not None
        assert stack.fast.answered >= 1
        assert stack.fast.handed_off == 0
