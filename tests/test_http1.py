"""The lean HTTP/1.1 client against a real asyncio server on loopback that misbehaves on
purpose: keep-alive reuse, chunked and close-delimited bodies, Connection: close, HTTP/1.0,
an idle connection closed by the server, half an answer then silence, a size cap, redirects,
a proxy, the connection limit. Every fact is checked from the server's side (what it saw:
connections, request lines, headers, bodies) or from the answer the client returned."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from mustaple.adapters.fetch import USER_AGENT, Clients, FetchPolicy, _Reply, _send
from mustaple.adapters.http1 import (
    BadAnswer,
    ConnectFailed,
    Handover,
    Http1Client,
    Response,
    TooLarge,
    TooManyRedirects,
    outcome,
)
from mustaple.core.proxy import Proxy
from mustaple.core.reasons import Reason
from mustaple.core.request import HttpRequest

POLICY = FetchPolicy(connect_timeout=2.0, total_timeout=2.0, max_size=100, max_redirects=3)
OCSP = "Content-Type: application/ocsp-response\r\n"


@dataclass
class Seen:
    """One request as the server read it."""

    line: str
    headers: dict[str, str]
    body: bytes
    connection: int  # which connection (1, 2, ...) it came on


KEEP, CLOSE, STALL = "keep", "close", "stall"
# What the server does with a request: the bytes to send, then keep the connection, close
# it, or fall silent; None: close without a word.
Reply = Callable[[Seen], tuple[bytes, str] | None]


def ok(body: bytes = b"staple", extra: str = "") -> tuple[bytes, str]:
    head = f"HTTP/1.1 200 OK\r\n{OCSP}Content-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body, KEEP


@dataclass
class Server:
    """An HTTP server on loopback answering as `reply` says, recording what it saw."""

    reply: Reply
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    busy: int = 0
    most_busy: int = 0
    port: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # a connection has ended

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while (seen := await _read_request(reader, number)) is not None:
                self.seen.append(seen)
                self.busy += 1
                self.most_busy = max(self.most_busy, self.busy)
                action = self.reply(seen)
                await asyncio.sleep(0.01)  # long enough for others to pile up
                self.busy -= 1
                if action is None:
                    break
                data, after = action
                writer.write(data)
                await writer.drain()
                if after == STALL:
                    await asyncio.sleep(3600)
                if after == CLOSE:
                    break
        finally:
            writer.close()
            self.ended.set()


async def _read_request(reader: asyncio.StreamReader, connection: int) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    line, *fields = head.decode("latin-1").split("\r\n")[:-2]
    headers = {n.lower(): v.strip() for n, _, v in (f.partition(":") for f in fields)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Seen(line, headers, body, connection)


@asynccontextmanager
async def serving(reply: Reply) -> AsyncIterator[Server]:
    server = Server(reply)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server


@dataclass
class Told:
    """A watcher that keeps what it was told."""

    lines: list[str] = field(default_factory=list)

    def request_started(self, method: str, url: str) -> object:
        self.lines.append(f"start {method} {url}")
        return len(self.lines)

    def request_ended(self, token: object, said: str) -> None:
        self.lines.append(f"end {token} {said}")


def client(**kwargs: object) -> Http1Client:
    return Http1Client(user_agent=USER_AGENT, **kwargs)  # type: ignore[arg-type]


async def send(request: HttpRequest, proxy: Proxy | None = None) -> _Reply:
    """One exchange as the fetcher makes it (the lean client, aiohttp when handed over)."""
    clients = Clients()
    try:
        return await _send(clients, request, POLICY, proxy)
    finally:
        await clients.close()


async def get(http: Http1Client, url: str, policy: FetchPolicy = POLICY) -> Response:
    return await http.request("GET", url, headers={"Accept": "x/y"}, policy=policy)


async def get_once(url: str, policy: FetchPolicy = POLICY, watcher: Told | None = None) -> Response:
    """A GET on a client of its own, closed afterwards."""
    http = client(watchers=[watcher] if watcher else [])
    try:
        return await get(http, url, policy)
    finally:
        await http.close()


def test_keep_alive_reuses_one_connection_and_sends_the_path_byte_for_byte() -> None:
    async def scenario() -> tuple[Server, list[Response]]:
        async with serving(lambda seen: ok()) as server:
            http = client()
            path = "/ocsp/MFQwUjBQ%2B%2F%3D"
            answers = [await get(http, server.url + path) for _ in range(3)]
            answers.append(
                await http.request(
                    "POST", server.url, body=b"der", headers={"X-A": "b"}, policy=POLICY
                )
            )
            await http.close()
            return server, answers

    server, answers = asyncio.run(scenario())
    assert [a.body for a in answers] == [b"staple"] * 4
    assert answers[0].status == 200
    assert answers[0].content_type == "application/ocsp-response"
    assert server.connections == 1
    assert [s.line for s in server.seen] == ["GET /ocsp/MFQwUjBQ%2B%2F%3D HTTP/1.1"] * 3 + [
        "POST / HTTP/1.1"
    ]
    first, post = server.seen[0], server.seen[3]
    assert first.headers["host"] == f"127.0.0.1:{server.port}"
    assert first.headers["user-agent"] == USER_AGENT
    assert first.headers["accept"] == "x/y"
    assert "content-length" not in first.headers
    assert (post.body, post.headers["content-length"], post.headers["x-a"]) == (b"der", "3", "b")


def _chunked(seen: Seen) -> tuple[bytes, str]:
    chunks = b"4;ext=1\r\nstap\r\n2\r\nle\r\n0\r\nX-Trailer: t\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks, KEEP


def _until_close(seen: Seen) -> tuple[bytes, str]:
    return b"HTTP/1.1 200 OK\r\n\r\nstaple to the end", CLOSE


def _says_close(seen: Seen) -> tuple[bytes, str]:
    return ok(extra="Connection: close\r\n")[0], KEEP  # says close, yet leaves it open


def _http_1_0(seen: Seen) -> tuple[bytes, str]:
    return b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nstaple", KEEP


@pytest.mark.parametrize(
    ("reply", "body", "connections"),
    [
        (_chunked, b"staple", 1),
        (_until_close, b"staple to the end", 3),
        (_says_close, b"staple", 3),
        (_http_1_0, b"staple", 3),
    ],
)
def test_bodies_and_which_connections_are_kept(reply: Reply, body: bytes, connections: int) -> None:
    async def scenario() -> tuple[Server, list[bytes]]:
        async with serving(reply) as server:
            http = client()
            bodies = [(await get(http, server.url)).body for _ in range(3)]
            await http.close()
            return server, bodies

    server, bodies = asyncio.run(scenario())
    assert bodies == [body] * 3
    assert server.connections == connections
    assert len(server.seen) == 3


def test_a_kept_connection_the_server_dropped_is_retried_once_on_a_fresh_one() -> None:
    def first_only(seen: Seen) -> tuple[bytes, str] | None:
        return ok() if seen.connection > 1 or seen.line.endswith("/a HTTP/1.1") else None

    async def scenario() -> tuple[Server, list[bytes]]:
        async with serving(first_only) as server:
            http = client()
            bodies = [(await get(http, server.url + "/a")).body]
            bodies.append((await get(http, server.url + "/b")).body)  # the server drops conn 1
            await http.close()
            return server, bodies

    server, bodies = asyncio.run(scenario())
    assert bodies == [b"staple", b"staple"]
    assert [(s.line.split()[1], s.connection) for s in server.seen] == [
        ("/a", 1),
        ("/b", 1),
        ("/b", 2),
    ]


def test_a_kept_connection_closed_after_an_interim_answer_is_not_retried() -> None:
    answers = iter([ok(), (b"HTTP/1.1 100 Continue\r\n\r\n", CLOSE)])

    async def scenario() -> Server:
        async with serving(lambda seen: next(answers, None)) as server:
            http = client()
            await get(http, server.url)
            with pytest.raises(BadAnswer, match="after an interim HTTP 100"):
                await get(http, server.url)
            await http.close()
            return server

    server = asyncio.run(scenario())
    assert (server.connections, len(server.seen)) == (1, 2)  # a byte came: no second try


def test_an_idle_connection_the_server_closed_is_not_used() -> None:
    async def scenario() -> Server:
        async with serving(lambda seen: (ok()[0], CLOSE)) as server:
            http = client()
            await get(http, server.url)
            await asyncio.sleep(0.05)  # the FIN arrives while the connection is idle
            await get(http, server.url)
            await http.close()
            return server

    server = asyncio.run(scenario())
    assert (server.connections, len(server.seen)) == (2, 2)  # no request lost on conn 1


def test_a_connection_busy_when_the_client_closes_is_closed_after_its_answer() -> None:
    async def scenario() -> Response:
        async with serving(lambda seen: ok()) as server:
            http = client()
            pending = asyncio.create_task(get(http, server.url))
            await asyncio.sleep(0)  # the request is on its way
            await http.close()
            answer = await pending
            await asyncio.wait_for(server.ended.wait(), 5)  # the server saw it close
            return answer

    assert asyncio.run(scenario()).body == b"staple"


def test_a_fresh_connection_closed_unanswered_is_not_retried() -> None:
    async def scenario() -> Server:
        async with serving(lambda seen: None) as server:
            with pytest.raises(BadAnswer, match="closed the connection without answering"):
                await get_once(server.url)
            return server

    server = asyncio.run(scenario())
    assert (server.connections, len(server.seen)) == (1, 1)


@pytest.mark.parametrize(
    "reply",
    [
        lambda seen: (b"", STALL),  # accepts, reads, never answers
        lambda seen: (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhalf", STALL),
        lambda seen: (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nhal", STALL),
        lambda seen: (b"HTTP/1.1 200 OK\r\nContent-", STALL),
    ],
)
def test_silence_after_any_part_of_an_answer_ends_at_the_total_timeout(reply: Reply) -> None:
    policy = FetchPolicy(connect_timeout=5, total_timeout=0.3)
    told = Told()

    async def scenario() -> float:
        async with serving(reply) as server:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TimeoutError):
                await get_once(server.url, policy, told)
            return loop.time() - started

    waited = asyncio.run(scenario())
    assert 0.3 <= waited < 2.0  # the total timeout, not the connect timeout or forever
    assert told.lines[-1] == f"end 1 {outcome(None, TimeoutError())}"


@pytest.mark.parametrize(
    ("answer", "size"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n" + b"x" * 101, 101),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3c\r\n" + b"x" * 60 + b"\r\n"
         b"3c\r\n" + b"x" * 60 + b"\r\n0\r\n\r\n", 120),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 150, 150),
        # more digits than int() takes (4,300): it raised ValueError, out of the fetch
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"1" * 5000 + b"\r\n\r\n", 101),
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"0" * 5000 + b"101\r\n\r\n", 101),
    ],
)  # fmt: skip
def test_a_body_over_the_cap_is_refused_while_reading(answer: bytes, size: int) -> None:
    async def scenario() -> None:
        async with serving(lambda seen: (answer, CLOSE)) as server:
            with pytest.raises(TooLarge) as caught:
                await get_once(server.url)
            assert (caught.value.status, caught.value.size) == (200, size)

    asyncio.run(scenario())


def test_a_body_of_exactly_the_cap_is_read() -> None:
    async def scenario() -> Response:
        async with serving(lambda seen: ok(b"y" * 100)) as server:
            return await get_once(server.url)

    assert asyncio.run(scenario()).body == b"y" * 100


def test_a_content_length_with_thousands_of_leading_zeros_is_read() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: " + b"0" * 5000 + b"6\r\n\r\nstaple"

    async def scenario() -> Response:
        async with serving(lambda seen: (answer, CLOSE)) as server:
            return await get_once(server.url)

    assert asyncio.run(scenario()).body == b"staple"


def test_a_retry_after_no_clock_can_hold_leaves_the_answer_as_it_is() -> None:
    """A Retry-After date of year 10**20 (or a zone as wide) raised OverflowError out of
    the fetch: a good answer was thrown away, and the keeper took its certificate as its
    own fault (keeper-fault: not refreshed again until its file changed)."""
    dates = (
        "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
        "Mon, 01 Jan 2001 0:0:0 +999999999999",
    )

    async def scenario(date: str) -> _Reply:
        async with serving(lambda seen: ok(extra=f"Retry-After: {date}\r\n")) as server:
            return await send(HttpRequest("GET", server.url + "/x"))

    for date in dates:
        reply = asyncio.run(scenario(date))
        assert reply.rejection is None
        assert reply.answer is not None
        assert (reply.answer.body, reply.retry_after) == (b"staple", None)


def _redirecting(seen: Seen) -> tuple[bytes, str]:
    target = seen.line.split()[1]
    if target == "/final":
        return ok()
    where = {"/loop": "/loop", "/post": "/final", "/away": "https://127.0.0.1:1/x"}[target]
    return f"HTTP/1.1 302 Found\r\nLocation: {where}\r\nContent-Length: 0\r\n\r\n".encode(), KEEP


def test_redirects_are_followed_and_limited() -> None:
    async def scenario() -> Server:
        async with serving(_redirecting) as server:
            http = client()
            moved = await http.request(
                "POST", server.url + "/post", body=b"d", headers={}, policy=POLICY
            )
            assert moved.body == b"staple"
            with pytest.raises(TooManyRedirects):
                await get(http, server.url + "/loop")
            with pytest.raises(Handover) as caught:
                await get(http, server.url + "/away")
            assert (caught.value.url, caught.value.redirects) == ("https://127.0.0.1:1/x", 1)
            await http.close()
            return server

    server = asyncio.run(scenario())
    lines = [s.line for s in server.seen]
    assert lines[:2] == ["POST /post HTTP/1.1", "GET /final HTTP/1.1"]  # 302 after POST: GET
    assert lines[2:] == ["GET /loop HTTP/1.1"] * 3 + ["GET /away HTTP/1.1"]  # the 3rd refused


def test_a_redirect_to_https_is_carried_on_by_aiohttp() -> None:
    async def scenario() -> tuple[str | None, str]:
        async with serving(_redirecting) as server:
            request = HttpRequest("GET", server.url + "/away")
            reply = await send(request)
            assert reply.rejection is not None
            return reply.rejection.code, reply.rejection.message

    code, message = asyncio.run(scenario())
    assert code == Reason.CONNECTION_FAILED.code
    assert message.endswith(": 127.0.0.1:1: Connection refused")  # aiohttp tried the https URL


def test_through_a_proxy_the_target_is_absolute_and_credentials_go_along() -> None:
    async def scenario() -> Server:
        async with serving(lambda seen: ok(extra="Via: 1.1 test\r\n")) as proxy:
            via = Proxy(proxy.url, "user", "pa:ss")
            url = "http://ocsp.example.test:8080/MFQ%2B"
            reply = await send(HttpRequest("GET", url), via)
            assert reply.answer is not None
            assert reply.answer.body == b"staple"
            return proxy

    proxy = asyncio.run(scenario())
    (seen,) = proxy.seen
    assert seen.line == "GET http://ocsp.example.test:8080/MFQ%2B HTTP/1.1"
    assert seen.headers["host"] == "ocsp.example.test:8080"
    assert seen.headers["proxy-authorization"] == "Basic dXNlcjpwYTpzcw=="


def test_the_proxy_s_own_error_page_is_told_apart() -> None:
    page = b"HTTP/1.0 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 4\r\n\r\nnope"
    request = HttpRequest("GET", "http://o.test/")

    async def scenario() -> tuple[str, str, str]:
        async with serving(lambda seen: (page, CLOSE)) as proxy:
            reply = await send(request, Proxy(proxy.url))
            assert reply.rejection is not None
            return reply.rejection.code, reply.rejection.message, proxy.url

    code, message, proxy_url = asyncio.run(scenario())
    assert code == Reason.PROXY_ERROR.code
    assert message.endswith(f": {proxy_url} answered HTTP 502 Bad Gateway")


def test_no_more_connections_than_the_limit() -> None:
    async def scenario() -> Server:
        async with serving(lambda seen: ok()) as server:
            http = client(limit=2)
            urls = [f"{server.url}/{n}" for n in range(8)]
            answers = await asyncio.gather(*(get(http, url) for url in urls))
            assert all(a.body == b"staple" for a in answers)
            await http.close()
            return server

    server = asyncio.run(scenario())
    assert len(server.seen) == 8
    assert server.connections == 2
    assert server.most_busy == 2


def test_an_idle_connection_to_another_host_makes_room_at_the_limit() -> None:
    async def scenario() -> tuple[Server, Server]:
        async with serving(lambda seen: ok()) as first, serving(lambda seen: ok()) as second:
            http = client(limit=1)
            await get(http, first.url)
            await get(http, second.url)  # the idle connection to `first` is closed for it
            await asyncio.wait_for(first.ended.wait(), 5)
            await get(http, second.url)
            await http.close()
            return first, second

    first, second = asyncio.run(scenario())
    assert (first.connections, second.connections, len(second.seen)) == (1, 1, 2)


def test_a_refused_connection_says_where_and_why() -> None:
    async def scenario() -> int | None:
        async with serving(lambda seen: ok()) as server:
            port = server.port
        with pytest.raises(ConnectFailed) as caught:
            await get_once(f"http://127.0.0.1:{port}/")
        reply = await send(HttpRequest("GET", f"http://127.0.0.1:{port}/"))
        assert reply.rejection is not None
        assert reply.rejection.reason is Reason.CONNECTION_FAILED
        assert reply.rejection.message.endswith(f": 127.0.0.1:{port}: Connection refused")
        return caught.value.error.errno

    assert asyncio.run(scenario()) == errno.ECONNREFUSED


@pytest.mark.parametrize(
    "answer",
    [
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 \xb200 OK\r\n\r\n",  # a superscript 2: a digit to str.isdigit, not to int
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabcde\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nabcde\r\n0\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nLocation: http://[bad/x\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:99999/\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nLocation: ftp://x/\r\nContent-Length: 0\r\n\r\n",
        # the responder's fault, not its configured URL's (bad-url said "nothing was sent")
        b"HTTP/1.1 302 Found\r\nLocation: https://127.0.0.1:99999/\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nLocation: https:///x\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_what_is_not_http_is_a_bad_answer(answer: bytes) -> None:
    async def scenario() -> None:
        async with serving(lambda seen: (answer, CLOSE)) as server:
            with pytest.raises(BadAnswer):
                await get_once(server.url)

    asyncio.run(scenario())


def test_bytes_sent_unasked_are_never_read_as_the_next_answer() -> None:
    """A second answer to one request, or a stray CRLF after a body, waits in the buffer of a
    kept connection: the connection is not used again. A 408 sent as the server timed out an
    idle connection is no answer to the request sent on it then: once more, on a fresh one."""

    async def scenario() -> None:
        for extra in (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray", b"\r\n"):

            def twice(seen: Seen, extra: bytes = extra) -> tuple[bytes, str]:
                body = seen.line.split()[1].encode()
                answer, after = ok(body)
                return answer + extra, after

            async with serving(twice) as server:
                http = client()
                try:
                    for path in ("/one", "/two", "/three"):
                        assert (await get(http, server.url + path)).body == path.encode()
                finally:
                    await http.close()
            assert server.connections == 3  # none kept with bytes in it

        timed_out = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n"
        served: list[int] = []

        def timed_out_idle(seen: Seen) -> tuple[bytes, str]:
            served.append(seen.connection)
            if served == [1, 1]:  # the server timed the kept connection out as this request came
                return timed_out, CLOSE
            return ok(b"answered")

        async with serving(timed_out_idle) as server:
            http = client()
            try:
                assert (await get(http, server.url)).body == b"answered"
                assert (await get(http, server.url)).body == b"answered"
            finally:
                await http.close()
        assert served == [1, 1, 2]

    asyncio.run(scenario())


def test_interim_answers_are_skipped_and_the_watcher_told() -> None:
    told = Told()
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"

    async def scenario() -> Response:
        async with serving(lambda seen: (interim + ok()[0], KEEP)) as server:
            return await get_once(server.url + "/w", watcher=told)

    assert asyncio.run(scenario()).status == 200
    assert told.lines[1] == "end 1 HTTP 200"
    assert told.lines[0].startswith("start GET http://127.0.0.1:")
    assert told.lines[0].endswith("/w")
