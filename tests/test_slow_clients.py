"""Slow clients on the HTTP endpoint (`start_http`), over raw sockets: a request must come
whole, head and body, within `http.request_timeout` of its first byte, on the fast path and
after the hand-off to aiohttp. Past it the client gets 408 (or, once answered, nothing) and
the connection is closed, once the client has closed too (or after a linger); a client
trickling a byte at a time is caught as well; a slow request that ends in time is answered,
and its connection stays usable; other clients are answered meanwhile. The deadlines here
are short; every wait for the server is bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from mustaple.adapters.config import ConfigError, HttpConfig, load_config
from mustaple.core.request import encode_request, get_url, make_cert_id
from mustaple.serve import fastpath
from mustaple.serve.metrics import Metrics
from mustaple.serve.web import HttpServer, start_http
from mustaple.testing import World, keeper_world
from test_fastpath import WAIT, body_of, connection, head, read_reply, slow_reader, status_of

DEADLINE = timedelta(seconds=0.5)
STEP = 0.05  # seconds between two pieces a client sends
NAME = "www.example.test"
TIMEOUTS = "mustaple_http_request_timeouts_total"
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\n"
OCSP_REQUEST = "Content-Type: application/ocsp-request"


@dataclass
class Endpoint:
    """`start_http` serving a keeper that holds a staple for NAME."""

    world: World
    server: HttpServer
    der: bytes  # the staple
    request: bytes  # the DER OCSP request about NAME

    @property
    def port(self) -> int:
        port: int = self.server.addresses[0][1]
        return port

    def get(self) -> bytes:
        """A GET of the staple, as nginx sends it: answered by the fast path."""
        return head(get_url("/ocsp", self.request))

    def post(self) -> bytes:
        """A POST of the request, answered by aiohttp."""
        return post_head(len(self.request)) + self.request

    def timeouts(self) -> float:
        return self.world.metrics.registry.get_sample_value(TIMEOUTS) or 0.0


def post_head(length: int) -> bytes:
    return head("/ocsp", OCSP_REQUEST, f"Content-Length: {length}", method="POST")


@asynccontextmanager
async def endpoint(
    tmp: Path, deadline: timedelta = DEADLINE, max_connections: int = 512
) -> AsyncIterator[Endpoint]:
    async with keeper_world(tmp) as w:
        leaf, _, staple = await w.stapled(NAME)
        request = encode_request(make_cert_id(leaf.issuer, leaf.cert.serial_number))
        http = HttpConfig(port=0, request_timeout=deadline, max_connections=max_connections)
        server = await start_http(w.keeper, http, metrics=w.metrics)
        try:
            yield Endpoint(w, server, staple.der, request)
        finally:
            await server.cleanup()


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def client(e: Endpoint, first: bytes = b"") -> AsyncIterator[Streams]:
    """A connection that has sent `first`."""
    async with connection(e.port) as (reader, writer):
        writer.write(first)
        yield reader, writer


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (within WAIT)."""
    return await asyncio.wait_for(reader.read(), WAIT)


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and the body of the next answer."""
    reply = await read_reply(reader)
    return status_of(reply), body_of(reply)


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send `data` a byte every STEP."""
    for sent in range(len(data)):
        writer.write(data[sent : sent + 1])
        await writer.drain()
        await asyncio.sleep(STEP)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for `condition` (WAIT seconds at most)."""
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.01)


def run(scenario: Callable[[Path], Awaitable[None]], tmp: Path) -> None:
    asyncio.run(asyncio.wait_for(scenario(tmp), 60))


def test_empty_lines_around_requests_are_ignored_not_timed(tmp_path: Path) -> None:
    """RFC 9112 2.2: an empty line before a request line is ignored. After an answer, a CRLF
    (some clients send one) is no request: no 408 at the deadline, no hand-off; before a GET,
    in the same read or split from it, the GET is answered by the fast path."""

    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp) as e, client(e, e.get() + b"\r\n") as (reader, writer):
            assert await answer(reader) == (200, e.der)
            await asyncio.sleep(2 * DEADLINE.total_seconds())  # past the request deadline
            for sent in (b"\r\n" + e.get(), b"\r", b"\n" + e.get(), b"\r\n\r\n"):
                writer.write(sent)
                if sent.endswith(e.get()):
                    assert await answer(reader) == (200, e.der)
            await asyncio.sleep(2 * DEADLINE.total_seconds())
            writer.write(e.get())
            assert await answer(reader) == (200, e.der)
            assert (e.timeouts(), e.server.fast.handed_off) == (0.0, 0)

    run(scenario, tmp_path)


def test_a_half_head_gets_408_and_is_closed(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp) as e:
            ocsp_get = e.get()[:30]  # the fast path waits for the rest of it
            post = post_head(len(e.request))[:30]  # handed to aiohttp at once
            for half in (ocsp_get, post):
                async with client(e, half) as (reader, _):
                    assert (await until_closed(reader)).startswith(TIMED_OUT)
            assert e.timeouts() == 2

    run(scenario, tmp_path)


def test_a_post_with_half_its_body_gets_408_and_is_closed(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp) as e:
            async with client(e, e.post()[:-10]) as (reader, _):
                assert (await until_closed(reader)).startswith(TIMED_OUT)
            assert e.timeouts() == 1

    run(scenario, tmp_path)


@pytest.mark.parametrize("path", ["fast path", "aiohttp"])
def test_a_trickle_is_cut_at_the_deadline(tmp_path: Path, path: str) -> None:
    """A byte every STEP (of a GET's head, or of a POST's body): never idle, yet closed once
    the deadline has passed."""

    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp) as e:
            first, rest = (b"", e.get()) if path == "fast path" else (post_head(200), bytes(200))
            async with client(e, first) as (reader, writer):
                sending = asyncio.create_task(trickle(writer, rest))
                assert (await until_closed(reader)).startswith(TIMED_OUT)
                assert not sending.done()  # still trickling
                sending.cancel()
            assert e.timeouts() == 1

    run(scenario, tmp_path)


@pytest.mark.parametrize("path", ["fast path", "aiohttp"])
def test_after_its_408_the_client_is_read_until_it_closes(tmp_path: Path, path: str) -> None:
    """The server sends the 408 and its end of the connection, then reads and drops what the
    client still sends until it closes too (closing at once, on bytes it has not read, would
    reset the connection: the client could lose its 408)."""

    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp) as e:
            half = e.get()[:30] if path == "fast path" else e.post()[:-10]
            async with client(e, half) as (reader, writer):
                assert (await until_closed(reader)).startswith(TIMED_OUT)
                assert open_on_server(e) == 1  # still reading
                writer.write(bytes(1000) + e.get())
                await writer.drain()
                answered = e.server.fast.answered
            await until(lambda: open_on_server(e) == 0)
            assert e.server.fast.answered == answered  # dropped

    run(scenario, tmp_path)


@pytest.mark.parametrize("path", ["fast path", "aiohttp"])
def test_a_client_that_never_closes_after_its_408_is_closed_after_the_linger(
    tmp_path: Path, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastpath, "LINGER", 0.2)

    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp) as e:
            half = e.get()[:30] if path == "fast path" else e.post()[:-10]
            async with client(e, half) as (reader, _):
                assert (await until_closed(reader)).startswith(TIMED_OUT)
                await until(lambda: open_on_server(e) == 0)

    run(scenario, tmp_path)


def open_on_server(e: Endpoint) -> int:
    """The connections the endpoint holds open."""
    fast = e.server.fast
    return len(fast.connections) + sum(not h.transport.is_closing() for h in fast.handed)


@pytest.mark.parametrize("first", ["GET /healthz", "POST /ocsp"])
def test_a_request_pipelined_behind_one_aiohttp_answers_is_timed_too(
    tmp_path: Path, first: str
) -> None:
    """The head of a POST sent in the same bytes as the end of a request aiohttp answers,
    and half its body: the first is answered, the POST gets its 408 at the deadline."""

    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp) as e:
            answered = head("/healthz") if first == "GET /healthz" else e.post()
            async with client(e, answered + e.post()[:-10]) as (reader, _):
                assert (await answer(reader))[0] == 200
                assert (await until_closed(reader)).startswith(TIMED_OUT)
            assert e.timeouts() == 1

    run(scenario, tmp_path)


@pytest.mark.parametrize("sent", ["POST /ocsp", "GET /healthz", "pipelined", "fast path GET"])
def test_a_client_that_half_closes_after_its_requests_gets_every_answer(
    tmp_path: Path, sent: str
) -> None:
    """A client that shuts its side down once its requests are sent (shutdown(SHUT_WR), as
    `nc -N` does) gets each answer, then the end of the connection."""

    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp, timedelta(seconds=30)) as e:
            requests = {
                "POST /ocsp": [e.post()],
                "GET /healthz": [head("/healthz")],
                "pipelined": [e.post(), head("/healthz"), e.get(), e.post()],
                "fast path GET": [e.get()],
            }[sent]
            async with client(e, b"".join(requests)) as (reader, writer):
                writer.write_eof()
                for _ in requests:
                    assert (await answer(reader))[0] == 200
                assert await until_closed(reader) == b""

    run(scenario, tmp_path)


@pytest.mark.parametrize("sent", ["head", "body"])
def test_a_client_that_half_closes_within_a_request_is_closed_at_once(
    tmp_path: Path, sent: str
) -> None:
    """Half its head or its body, then a half-close: the request can never come whole, so
    the connection is closed then, not at the deadline."""

    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp, timedelta(seconds=30)) as e:
            half = post_head(len(e.request))[:30] if sent == "head" else e.post()[:-10]
            async with client(e, half) as (reader, writer):
                writer.write_eof()
                assert await until_closed(reader) == b""
            assert e.timeouts() == 0

    run(scenario, tmp_path)


def test_an_answered_request_whose_body_never_ends_is_just_closed(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp) as e:
            healthz = head("/healthz", "Content-Length: 100")
            async with client(e, healthz + b"12345") as (reader, _):
                sent = await until_closed(reader)
            assert sent.startswith(b"HTTP/1.1 200 OK\r\n")
            assert sent.endswith(b"\r\n\r\nok\n")  # and no 408 after it

    run(scenario, tmp_path)


def test_a_slow_request_within_the_deadline_is_answered(tmp_path: Path) -> None:
    """Sent in pieces, whole before the deadline: answered, and the deadline ends there (the
    connection is still open when a later client's deadline has passed)."""

    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp, timedelta(seconds=1)) as e:  # ample for 3 pieces
            async with client(e) as fast, client(e) as aio:
                asked = ((e.get(), fast), (e.post(), aio))  # the fast path's, aiohttp's
                for request, (reader, writer) in asked:
                    for piece in (request[:20], request[20:-20], request[-20:]):
                        writer.write(piece)
                        await asyncio.sleep(STEP)
                    assert await answer(reader) == (200, e.der)
                async with client(e, e.get()[:30]) as (later, _):
                    assert (await until_closed(later)).startswith(TIMED_OUT)
                for request, (reader, writer) in asked:
                    writer.write(request)
                    assert await answer(reader) == (200, e.der)
            assert e.timeouts() == 1

    run(scenario, tmp_path)


def test_a_client_that_does_not_read_is_left_to_the_idle_timeout(tmp_path: Path) -> None:
    """Whole requests kept while the client does not read its answers are not cut at the
    deadline: once it reads, every one is answered."""

    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp) as e:
            count = 20000
            reader, writer = await slow_reader(e.port)
            try:
                writer.write(e.get() * count)  # answers far beyond what the buffers take
                async with client(e, e.get()[:30]) as (later, _):
                    assert (await until_closed(later)).startswith(TIMED_OUT)
                assert any(c.paused for c in e.server.fast.connections)
                for _ in range(count):
                    assert await answer(reader) == (200, e.der)
            finally:
                writer.close()
            assert e.timeouts() == 1

    run(scenario, tmp_path)


def test_other_clients_are_answered_meanwhile(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stalled clients of every kind hold their connections; fresh clients are answered all
    the while; then each stalled one gets its 408, counted in the metrics, logged once."""

    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp, timedelta(seconds=2)) as e:
            halves = (e.get()[:30], post_head(10)[:30], e.post()[:-10], post_head(100))
            async with (
                client(e, halves[0]) as (r0, _),
                client(e, halves[1]) as (r1, _),
                client(e, halves[2]) as (r2, _),
                client(e, halves[3]) as (r3, w3),
            ):
                sending = asyncio.create_task(trickle(w3, bytes(100)))
                for request in (e.get(), e.post()):
                    async with client(e, request) as (reader, _):
                        assert await answer(reader) == (200, e.der)
                assert e.timeouts() == 0  # the stalled ones are still there
                for reader in (r0, r1, r2, r3):
                    assert (await until_closed(reader)).startswith(TIMED_OUT)
                assert not sending.done()  # still trickling
                sending.cancel()
            async with client(e, head("/metrics")) as (scraped, _):
                _, metrics = await answer(scraped)
            assert f"{TIMEOUTS} 4.0".encode() in metrics

    caplog.set_level(logging.DEBUG)
    run(scenario, tmp_path)
    said = [r for r in caplog.records if "http.request_timeout" in r.getMessage()]
    assert len(said) == 1, said
    assert not [r for r in caplog.records if r.exc_info], caplog.text


def test_timeouts_are_counted_in_the_metrics_of_the_keeper_served(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp) as e:
            reloaded = Metrics(e.world.keeper)
            e.server.switch(e.world.keeper, reloaded)  # as a reload does
            async with client(e, e.post()[:-10]) as (reader, _):
                assert (await until_closed(reader)).startswith(TIMED_OUT)
            assert reloaded.registry.get_sample_value(TIMEOUTS) == 1
            assert e.timeouts() == 0

    run(scenario, tmp_path)


def load_http(tmp: Path, table: str) -> HttpConfig | None:
    """The [http] of a configuration file with this [http] table."""
    config = tmp / "mustaple.toml"
    config.write_text(f'[[certificates]]\npaths = ["/x.pem"]\n[http]\n{table}')
    return load_config(config).http


def test_request_timeout_is_read_and_checked(tmp_path: Path) -> None:
    assert load_http(tmp_path, "") == HttpConfig()
    assert HttpConfig().request_timeout == timedelta(seconds=60)
    assert load_http(tmp_path, 'request_timeout = "0.5s"') == HttpConfig(request_timeout=DEADLINE)
    for value, said in (("0s", "more than zero"), ("2h", "at most 1h"), ("1", "not a duration")):
        with pytest.raises(ConfigError, match=f"http.request_timeout: .*{said}") as raised:
            load_http(tmp_path, f'request_timeout = "{value}"')
        assert "\n" not in str(raised.value)


CAP = 4  # max_connections in the tests of the cap
FULL = "connections open (http.max_connections)"


@pytest.mark.parametrize("sent", ["POST /ocsp", "GET /healthz", "P"])
def test_at_the_cap_a_new_client_takes_the_place_of_one_aiohttp_holds_idle(
    tmp_path: Path, sent: str, caplog: pytest.LogCaptureFixture
) -> None:
    """CAP connections handed to aiohttp, each answered (or with the start of a head) and
    now idle: a new client is answered, in the place of the first of them."""

    async def scenario(tmp: Path) -> None:
        async with endpoint(tmp, timedelta(seconds=30), max_connections=CAP) as e:
            first = {"POST /ocsp": e.post(), "GET /healthz": head("/healthz"), "P": b"P"}[sent]
            async with AsyncExitStack() as stack:
                idle = [await stack.enter_async_context(client(e, first)) for _ in range(CAP)]
                if sent != "P":
                    for reader, _ in idle:
                        assert (await answer(reader))[0] == 200
                await until(lambda: e.server.fast.handed_off == CAP)
                await asyncio.sleep(STEP)  # aiohttp waits for the next request
                async with client(e, head("/healthz")) as (reader, _):
                    assert await answer(reader) == (200, b"ok\n")
                    assert await until_closed(idle[0][0]) in (b"", TIMED_OUT)
                    assert open_on_server(e) == CAP

    caplog.set_level(logging.WARNING)
    run(scenario, tmp_path)
    assert [r.getMessage() for r in caplog.records if FULL in r.getMessage()] == [
        f"HTTP endpoint: {CAP} {FULL}: closing the one idle longest for each new one"
    ]


def test_at_the_cap_a_client_in_use_is_kept_over_idle_ones(tmp_path: Path) -> None:
    """Three clients asked /healthz (aiohttp's) and sit idle; a fourth keeps asking the fast
    path for its staple: a new client takes the place of one of the idle three, not of the
    one in use (equally idle by the sweeps, the fast path's came first in the list)."""

    async def scenario(tmp: Path) -> None:
        async with (
            endpoint(tmp, timedelta(seconds=30), max_connections=CAP) as e,
            AsyncExitStack() as stack,
        ):
            idle = [
                await stack.enter_async_context(client(e, head("/healthz"))) for _ in range(CAP - 1)
            ]
            for reader, _ in idle:
                assert (await answer(reader))[0] == 200
            await until(lambda: e.server.fast.handed_off == CAP - 1)
            reader, writer = await stack.enter_async_context(client(e))
            for _ in range(5):
                writer.write(e.get())
                assert (await answer(reader))[0] == 200
            async with client(e, head("/healthz")) as (new, _):
                assert await answer(new) == (200, b"ok\n")
                assert await until_closed(idle[0][0]) in (b"", TIMED_OUT)
                writer.write(e.get())  # the client in use is still served
                assert (await answer(reader))[0] == 200

    run(scenario, tmp_path)


def test_at_the_cap_connections_whose_requests_are_handled_are_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CAP connections whose POSTs aiohttp is reading: a new client is closed at once, and the
    log says so."""

    async def scenario(tmp: Path) -> None:
        async with (
            endpoint(tmp, timedelta(seconds=30), max_connections=CAP) as e,
            AsyncExitStack() as stack,
        ):
            for _ in range(CAP):
                await stack.enter_async_context(client(e, e.post()[:-10]))
            await until(lambda: e.server.fast.handed_off == CAP)
            await asyncio.sleep(STEP)  # aiohttp reads the bodies
            async with client(e, head("/healthz")) as (reader, _):
                with suppress(ConnectionResetError):
                    assert await until_closed(reader) == b""
            assert open_on_server(e) == CAP

    caplog.set_level(logging.WARNING)
    run(scenario, tmp_path)
    assert [r.getMessage() for r in caplog.records if FULL in r.getMessage()] == [
        f"HTTP endpoint: {CAP} {FULL}: none is idle: refusing new ones"
    ]
