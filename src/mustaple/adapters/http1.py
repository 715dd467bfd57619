"""A minimal HTTP/1.1 keep-alive client for OCSP exchanges over asyncio.

One job: send one GET or POST to a plain `http://` URL, directly or through an `http://` proxy
(absolute-form request target), and read the whole answer within a size cap and a total
timeout. It keeps connections alive in a pool per (host, port, proxy), at most `limit` open in
all; a connection the server closed, or whose answer said `Connection: close`, or came over
HTTP/1.0, or ended at close, or holds bytes nobody asked for, is never reused. A request on a
reused connection that finds it closed before the first byte of the answer, or gets a 408
(the server timed the idle connection out), is sent once more on a fresh connection. Bodies may
be sized by Content-Length, chunked, or end at close. Redirects (301, 302, 303, 307, 308) are
followed as aiohttp follows them; one to `https://` raises `Handover` so the caller can carry
on with a full client. The request target is sent byte for byte as given (RFC 5019 GET paths
keep %2B %2F %3D). Everything that goes wrong raises a subclass of `HttpProblem` (or
TimeoutError: `ConnectTimeout` for the connection alone) saying what happened; a `Watcher`
is told when each request starts and ends.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin, urlsplit

from mustaple.adapters.patience import NoThread, thread_problem
from mustaple.core.fetchtypes import FetchPolicy

__all__ = [
    "BadAnswer",
    "BadUrl",
    "ConnectFailed",
    "ConnectTimeout",
    "Handover",
    "Http1Client",
    "HttpProblem",
    "Response",
    "TooLarge",
    "TooManyRedirects",
    "Watcher",
    "media_type",
    "outcome",
]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HEAD_LIMIT = 65536  # bytes of status line and headers
_DECIMAL = re.compile(r"[0-9]+")  # ASCII only: str.isdigit takes '²', which int() refuses
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")  # int(x, 16) would take '-5', '0x5', '+5'


class Watcher(Protocol):
    """Told when each request starts and how it ended (e.g. to show what a command waits on)."""

    def request_started(self, method: str, url: str) -> object: ...

    def request_ended(self, token: object, outcome: str) -> None: ...


def outcome(status: int | None, error: BaseException | None = None) -> str:
    """How a request ended, in the words a `Watcher` is told: 'HTTP 200', 'failed (Error)'."""
    return f"failed ({type(error).__name__})" if error is not None else f"HTTP {status}"


class HttpProblem(Exception):
    """An exchange that gave no usable answer; the message says why."""


class BadUrl(HttpProblem):
    """A URL (given, or in a redirect) this client cannot send to."""


class ConnectFailed(HttpProblem):
    """No connection to `host`:`port` (the proxy's when `to_proxy`)."""

    def __init__(self, host: str, port: int, error: OSError, *, to_proxy: bool) -> None:
        super().__init__(f"{host}:{port}: {error}")
        self.host, self.port, self.error, self.to_proxy = host, port, error, to_proxy


class ConnectTimeout(TimeoutError):
    """No connection within the connect timeout (`seconds`)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no connection within {seconds:g} s")
        self.seconds = seconds


class BadAnswer(HttpProblem):
    """The peer closed early or sent something that is not HTTP/1.x."""


class TooManyRedirects(HttpProblem):
    """More redirects than allowed."""


class TooLarge(HttpProblem):
    """The body is over the cap; `status` and `headers` say whose answer it was."""

    def __init__(self, status: int, headers: Mapping[str, str], size: int) -> None:
        super().__init__(f"HTTP {status}: at least {size} bytes")
        self.status, self.headers, self.size = status, headers, size


class Handover(Exception):
    """A redirect to a URL this client does not speak (https://): carry on elsewhere, with
    `redirects` already followed."""

    def __init__(self, method: str, url: str, body: bytes | None, redirects: int) -> None:
        super().__init__(url)
        self.method, self.url, self.body, self.redirects = method, url, body, redirects


@dataclass(frozen=True, slots=True)
class Response:
    """A whole answer. `headers` has lower-case names (repeated fields joined by ', ')."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return media_type(self.headers)


def media_type(headers: Mapping[str, str]) -> str:
    """The media type of a Content-Type, lower case, without parameters ('' when none)."""
    return headers.get("content-type", "").partition(";")[0].strip().lower()


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a request goes: the address to connect to and the request line's target."""

    host: str  # of the URL
    port: int
    authority: str  # the Host header
    target: str  # origin-form, or absolute-form through a proxy
    peer: tuple[str, int]  # whom to connect to: the URL's host, or the proxy
    proxy: str | None


def _where(url: str, proxy: str | None) -> _Target:
    if not url.isascii() or not url.isprintable() or " " in url:
        raise BadUrl(f"{url[:120]!r} holds spaces, control or non-ASCII characters")
    scheme, _, rest = url.partition("://")
    ends = [at for at in (rest.find("/"), rest.find("?"), rest.find("#")) if at >= 0]
    end = min(ends, default=len(rest))
    path, _, query = rest[end:].partition("#")[0].partition("?")
    path = (path or "/") + (f"?{query}" if query else "")
    try:
        o = _origin(f"{scheme}://{rest[:end]}", proxy)
    except _NotHttp as exc:
        raise BadUrl(f"{url[:120]!r}{exc}") from None
    return _Target(o.host, o.port, o.authority, o.target + path, o.peer, o.proxy)


class _NotHttp(Exception):
    """What is wrong with an origin, said after its URL."""


@functools.lru_cache(maxsize=256)  # a GET's URL is new every time, its origin seldom
def _origin(url: str, proxy: str | None) -> _Target:
    """Where requests to the origin `url` (scheme://authority) go; the target is the prefix of
    every request target (empty unless through a proxy)."""
    try:
        parts = urlsplit(url)
        port = parts.port or 80
        host = parts.hostname
        via = urlsplit(proxy) if proxy else None
        peer = (via.hostname or "", via.port or 80) if via else None
    except ValueError as exc:
        raise _NotHttp(f": {exc}") from None
    if parts.scheme != "http" or not host or port == 0:
        raise _NotHttp(" is not an http:// URL with a host and a port")
    authority = f"[{host}]" if ":" in host else host
    if port != 80:
        authority += f":{port}"
    target = f"http://{authority}" if proxy else ""
    return _Target(host, port, authority, target, peer or (host, port), proxy)


_Key = tuple[str, int, str | None]  # host, port, proxy


@dataclass(eq=False)
class _Connection:
    key: _Key
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def usable(self) -> bool:
        """Open, and with nothing the server sent unasked waiting to be read (a second answer
        to one request, a stray CRLF, a 408 sent before closing an idle connection): such
        bytes would be read as the answer to the next request."""
        return not (self.reader.at_eof() or self.writer.is_closing() or _buffered(self.reader))

    def close(self) -> None:
        self.writer.close()


def _buffered(reader: asyncio.StreamReader) -> int:
    """Bytes received and not read yet (asyncio has no public way to ask; its `_buffer` has
    been the StreamReader's buffer since Python 3.4)."""
    buffer: bytearray = getattr(reader, "_buffer", bytearray())
    return len(buffer)


class _ClosedUnanswered(Exception):
    """The connection ended before the first byte of an answer."""


class Http1Client:
    """A pool of keep-alive connections, at most `limit` open, shared by every request."""

    def __init__(
        self, *, limit: int = 100, user_agent: str, watchers: Sequence[Watcher] = ()
    ) -> None:
        self.limit, self.user_agent, self.watchers = limit, user_agent, tuple(watchers)
        self._idle: dict[_Key, list[_Connection]] = {}
        self._open = 0  # idle and busy
        self._closed = False
        self._slots = asyncio.Semaphore(limit)

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str],
        proxy: str | None = None,
        policy: FetchPolicy,
    ) -> Response:
        """One exchange, redirects followed, within the policy's timeouts, size cap and
        redirect limit (with aiohttp's meaning: the `max_redirects`-th one is refused)."""
        tokens = [w.request_started(method, url) for w in self.watchers]
        try:
            async with asyncio.timeout(policy.total_timeout):
                response = await self._follow(
                    method, url, body, headers=headers, proxy=proxy, policy=policy
                )
        except BaseException as exc:
            self._tell(tokens, outcome(None, exc))
            raise
        self._tell(tokens, outcome(response.status))
        return response

    def _tell(self, tokens: list[object], said: str) -> None:
        for watcher, token in zip(self.watchers, tokens, strict=True):
            watcher.request_ended(token, said)

    async def close(self) -> None:
        """Close every idle connection (busy ones close when their exchange ends)."""
        self._closed = True
        idle = [connection for connections in self._idle.values() for connection in connections]
        self._idle.clear()
        for connection in idle:
            self._drop(connection)
        await asyncio.gather(*(c.writer.wait_closed() for c in idle), return_exceptions=True)

    async def _follow(
        self,
        method: str,
        url: str,
        body: bytes | None,
        *,
        headers: Mapping[str, str],
        proxy: str | None,
        policy: FetchPolicy,
    ) -> Response:
        redirects, max_redirects = 0, policy.max_redirects
        while True:
            where = _where(url, proxy)
            head = _head(method, where, headers, body, self.user_agent)
            response = await self._exchange(where, head + (body or b""), method, policy)
            location = response.headers.get("location")
            if response.status not in _REDIRECTS or location is None:
                return response
            redirects += 1
            if max_redirects and redirects >= max_redirects:
                raise TooManyRedirects(f"{redirects} redirects, the last to {location[:120]}")
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, body = "GET", None
            url = _redirected(url, location, proxy)
            if url.startswith("https:"):
                raise Handover(method, url, body, redirects)

    async def _exchange(
        self, where: _Target, data: bytes, method: str, policy: FetchPolicy
    ) -> Response:
        max_size = policy.max_size
        async with self._slots:
            key = (where.host, where.port, where.proxy)
            connection = self._take_idle(key)
            if connection is not None:
                try:
                    response = await self._on(connection, data, method, max_size)
                    if response.status != 408:
                        return response
                    # a 408 on a connection the server timed out while idle (sent just as
                    # the request went): not an answer to it, as browsers read it too
                except _ClosedUnanswered:
                    pass  # the server had closed it: once more, on a fresh connection
            connection = await self._connect(key, where, policy.connect_timeout)
            try:
                return await self._on(connection, data, method, max_size)
            except _ClosedUnanswered:
                raise BadAnswer("the server closed the connection without answering") from None

    def _take_idle(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.usable():
                return connection
            self._drop(connection)
        return None

    async def _connect(self, key: _Key, where: _Target, connect_timeout: float) -> _Connection:
        if self._open >= self.limit:
            self._evict_one()
        host, port = where.peer
        proxied = where.proxy is not None
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=_HEAD_LIMIT)
        except TimeoutError:
            raise ConnectTimeout(connect_timeout) from None
        except OSError as exc:
            raise ConnectFailed(host, port, exc, to_proxy=proxied) from None
        except RuntimeError as exc:  # no thread for the name's look-up (a limit of tasks)
            if thread_problem(exc) is None:
                raise
            raise ConnectFailed(host, port, NoThread(exc), to_proxy=proxied) from None
        except UnicodeError as exc:  # a name the resolver cannot encode
            raise BadUrl(f"the host {host[:120]!r} cannot be looked up ({exc})") from None
        self._open += 1
        return _Connection(key, reader, writer)

    def _evict_one(self) -> None:
        """Close an idle connection (the oldest of its key), to stay within `limit`."""
        for connections in self._idle.values():
            if connections:
                self._drop(connections.pop(0))
                return

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        self._open -= 1

    async def _on(
        self, connection: _Connection, data: bytes, method: str, max_size: int
    ) -> Response:
        """Send on `connection` and read the answer; keep the connection only if it may be."""
        keep = False
        try:
            connection.writer.write(data)
            response, keep = await _read_response(connection.reader, method, max_size)
            return response
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise BadAnswer(f"the connection broke mid-answer ({type(exc).__name__})") from None
        finally:
            if keep and not self._closed and connection.usable():
                self._idle.setdefault(connection.key, []).append(connection)
            else:
                self._drop(connection)


def _redirected(url: str, location: str, proxy: str | None) -> str:
    """Where a redirect from `url` to `location` goes: an http(s):// URL; BadAnswer if the
    answer's Location cannot be one (the responder's fault, not its configured URL's)."""
    try:
        onward = urljoin(url, location)
        scheme = urlsplit(onward).scheme
        if scheme in ("http", "https"):  # a host and port a request can go to
            _where("http" + onward[len(scheme) :], proxy)
    except (ValueError, BadUrl) as exc:
        raise BadAnswer(f"a redirect to a malformed URL {location[:120]!r} ({exc})") from None
    if scheme not in ("http", "https"):
        raise BadAnswer(f"a redirect to {onward[:120]!r}, which is not an http(s):// URL")
    return onward


def _head(
    method: str, where: _Target, headers: Mapping[str, str], body: bytes | None, user_agent: str
) -> bytes:
    lines = [f"{method} {where.target} HTTP/1.1", f"Host: {where.authority}"]
    lines.append(f"User-Agent: {user_agent}")
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    if body is not None or method == "POST":
        lines.append(f"Content-Length: {len(body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_response(
    reader: asyncio.StreamReader, method: str, max_size: int
) -> tuple[Response, bool]:
    """The answer and whether the connection may serve another request."""
    version, status, reason, headers = await _read_head(reader)
    while 100 <= status < 200:  # interim answers (100 Continue...): the real one follows
        try:
            version, status, reason, headers = await _read_head(reader)
        except _ClosedUnanswered:
            raise BadAnswer(f"the connection ended after an interim HTTP {status}") from None
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep = version == "HTTP/1.1" and "close" not in tokens
    if status in (204, 304) or method == "HEAD":
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader, status, headers, max_size)
    elif "content-length" in headers:
        body = await _read_sized(reader, status, headers, max_size)
    else:
        body, keep = await _read_to_close(reader, status, headers, max_size), False
    return Response(status, reason, headers, body), keep


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, int, str, dict[str, str]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _ClosedUnanswered from None
        raise BadAnswer("the answer's headers were cut short") from None
    except asyncio.LimitOverrunError:
        raise BadAnswer(f"the answer's headers are over {_HEAD_LIMIT} bytes") from None
    except ConnectionError:
        raise _ClosedUnanswered from None
    status_line, *fields = head[:-4].decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not _DECIMAL.fullmatch(code):
        raise BadAnswer(f"not an HTTP/1.x status line: {status_line[:60]!r}")
    headers: dict[str, str] = {}
    for line in fields:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadAnswer(f"a malformed header line: {line[:60]!r}")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return version, int(code), reason, headers


async def _read_sized(
    reader: asyncio.StreamReader, status: int, headers: dict[str, str], max_size: int
) -> bytes:
    text = headers["content-length"]
    if not _DECIMAL.fullmatch(text):
        raise BadAnswer(f"a Content-Length that is not a number: {text[:40]!r}")
    digits = text.lstrip("0") or "0"  # int() takes at most 4,300 digits
    size = int(digits) if len(digits) <= len(str(max_size)) else max_size + 1
    if size > max_size:
        raise TooLarge(status, headers, size)
    return await reader.readexactly(size)


async def _read_chunked(
    reader: asyncio.StreamReader, status: int, headers: dict[str, str], max_size: int
) -> bytes:
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        digits = line.split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(digits):
            raise BadAnswer(f"a malformed chunk size: {digits[:20]!r}")
        size = int(digits, 16)
        if size == 0:
            break
        if len(body) + size > max_size:
            raise TooLarge(status, headers, len(body) + size)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise BadAnswer("a chunk not followed by CRLF")
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, ignored
        pass
    return bytes(body)


async def _read_to_close(
    reader: asyncio.StreamReader, status: int, headers: dict[str, str], max_size: int
) -> bytes:
    body = bytearray()
    while chunk := await reader.read(65536):
        body += chunk
        if len(body) > max_size:
            raise TooLarge(status, headers, len(body))
    return bytes(body)
