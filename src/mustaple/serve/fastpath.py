"""The fast path of the HTTP endpoint: OCSP GETs answered straight from asyncio, the rest
handed to aiohttp.

`FastPath(responder, fallback)` is the protocol factory of every connection of the endpoint
(`loop.create_server(fast_path, ...)`; `mustaple.serve.web.start_http` does that). A connection
buffers the head of each request. A plain `GET {prefix}/<base64 request> HTTP/1.1` (or 1.0),
with no body, is answered at once with the responder's own answer (`Responder.for_path`: the
same decision and the same count in `served` as the aiohttp handler), framed as aiohttp frames
it: the same status line, headers in the same order (Server included), the same body; only the
`Date` value may differ, being taken at another moment (whole seconds, as aiohttp's). The bytes
are made once per answer, per second and per connection mode, then reused. A request that
comes alone in one read, with a head seen before (the same bytes: the same path, headers and
connection mode), is answered with the bytes sent for it last, without reading it again, while
the responder's memo of that answer holds (`Responder.again`, which counts it) and within the
second of their Date: a client such as nginx asks the same question again and again.

Anything else hands the connection to aiohttp for good, unchanged: another method or path (a
target in absolute form, `http://host/ocsp/...`, too: aiohttp answers it alike), a
body (Content-Length, Transfer-Encoding), an Expect, Upgrade or unusual Connection header, a
header aiohttp would refuse (HTTP/1.1 without Host, a repeated header, bytes outside printable
ASCII, a line too long, too many lines), a GET path over the size limit (aiohttp's handler
answers 414; a request line longer than aiohttp reads, `max_line`, gets its 414 here, counted
as too-large, where aiohttp would answer a 400 of its own), a head not ended within
`max_head` bytes, bytes that are not HTTP. `fallback()` (the runner's `aiohttp.web.Server`)
makes aiohttp's protocol, which takes over the transport and is fed every byte not answered
yet. So aiohttp serves every other page and every edge case exactly as it would alone, and
answers what it cannot parse itself.

Connections follow aiohttp's rules: HTTP/1.1 keeps the connection open unless
`Connection: close`; HTTP/1.0 closes it unless `Connection: keep-alive`. Pipelined requests
are answered in order. Empty lines (CRLF) before a request line are ignored, as aiohttp does
(RFC 9112 section 2.2): they are no request, and start no deadline. A client that stops
reading stops being read (the transport's flow control), and a connection idle for
`idle_timeout` seconds (75 by default) is closed. A client that half-closes the connection
once its requests are sent (shutdown(SHUT_WR)) gets their answers, then the end of the
connection; within a request (which then can never come whole), just the end.
`close()` closes every connection not handed off; the aiohttp runner closes the others.

Every request must come whole, head and body, within `request_timeout` seconds (60 by default,
nginx's client_header_timeout and client_body_timeout) of its first byte: a deadline, not an
idle timer, so a client trickling a byte at a time is caught too. Past it the client gets
408 and the end of the connection, and what it still sends is read and dropped until it closes
too, for `LINGER` seconds at most (as nginx's lingering close: closing on unread bytes would
reset the connection, and the client could lose the 408); if aiohttp has answered the request
already, the connection is just closed. Logged once a minute at most and counted
(`on_timeout`). Bytes kept while the client does
not read its answers are timed once it reads again (till then, the idle timeout). A connection
handed to aiohttp keeps the deadline of the request under way and is fed through `_Handed`,
which times each later request from its first byte; `request_deadlines`, the application's
middleware, tells it when aiohttp has read a head, so that it waits for the end of the body.
A request pipelined behind another, its first bytes in the same read as the end of that
one, is timed from the moment aiohttp has read its head (aiohttp does not say where a
request's bytes end); if even its head never comes whole, aiohttp's idle timeout
(`idle_timeout`) closes the connection.

At most `max_connections` connections are open at once, handed off or not, so idle clients can
never use up the file descriptors. A connection that comes at the cap takes the place of the
connection idle longest (by the idle checks of `idle_timeout` / 5, then by the events on
any connection since its last bytes; as nginx reuses keep-alive connections when short of
them), so a fresh request is still answered: ours, or aiohttp's while it waits for a
request, never one whose request aiohttp is handling (one within a head only if every
other is too). If there is none, the new connection is closed at once. Either
is logged once a minute at most, as is running out of descriptors in accept()
(`quiet_accept_errors`), instead of a traceback a second.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import resource
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from mustaple.serve.localresponder import Answer, Memo, Responder

log = logging.getLogger("mustaple")

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "REQUEST_TIMEOUT",
    "FastPath",
    "quiet_accept_errors",
    "raise_file_limit",
    "request_deadlines",
]

IDLE_TIMEOUT = 75.0  # seconds a connection may stay idle (nginx's keepalive_timeout)
REQUEST_TIMEOUT = 60.0  # seconds from a request's first byte to its last (as nginx)
LINGER = 5.0  # seconds to wait for a client to close after its 408 (nginx's lingering_timeout)
MAX_CONNECTIONS = 512  # open at once, well below the usual limit of 1024 descriptors
SPARE_DESCRIPTORS = 128  # for the state, sinks, fetches and hooks beside the connections
LOG_EVERY = 60.0  # seconds between two lines about the same shortage
MAX_FIELDS = 100  # header lines in a head answered here (aiohttp accepts 128)
MAX_FIELD_SIZE = 8190  # bytes of one header line (aiohttp's max_field_size)
HEAD_CACHE_LIMIT = 1024  # distinct request heads remembered, parsed
CACHED_HEAD_SIZE = 2048  # bytes: longer heads are parsed each time
WIRE_CACHE_LIMIT = 4096  # answers framed per second and connection mode
REPLY_CACHE_LIMIT = 1024  # whole request heads remembered with the bytes that answered them
_SWEEPS = 5  # idle checks per idle_timeout
_END = b"\r\n\r\n"
_END_SIZE = len(_END)
_CRLF = b"\r\n"  # an empty line before a request line: ignored (RFC 9112 section 2.2)
_CRLF_SIZE = len(_CRLF)
_GET = b"GET "
_REQUEST_LINE = re.compile(rb"GET ([^ ]+) HTTP/1\.([01])")
_FIELD = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[\x21-\x7e][\t\x20-\x7e]*)?[\x21-\x7e])?[ \t]*"
)
# the base64 of an OCSP request, '+', '/' and '=' escaped or not, and a plain query
_REQUEST = rb"(?:[A-Za-z0-9+/=]|%(?:2[BbFf]|3[Dd]))*(?:\?(?:[A-Za-z0-9=&._~+/-]|%[0-9A-Fa-f]{2})*)?"
_PLAIN_PREFIX = re.compile(r"(?:/[A-Za-z0-9_-]+)+")
# headers that give the request a body, ask for more than an answer, or that aiohttp refuses
_NOT_OURS = (
    b"content-length",
    b"transfer-encoding",
    b"expect",
    b"upgrade",
    b"te",
    b"sec-websocket-key1",
)
_TIMED_OUT = Answer(408, {"Content-Type": "text/plain; charset=utf-8"}, b"request timeout\n", "")
_CLOSE = 2  # the mode of an HTTP/1.1 answer that closes the connection


@dataclass(frozen=True, slots=True)
class _Request:
    """A GET this module answers, read from its head."""

    path: str  # as sent, query included
    if_none_match: str | None
    mode: int  # 2 x the HTTP minor version + keep-alive: which framing of the answer
    close: bool  # close the connection after answering


@dataclass(frozen=True, slots=True)
class _Reply:
    """The bytes that answered one whole request head, sent again while `memo` holds and
    within `second` (of their Date)."""

    wire: bytes
    memo: Memo
    second: int
    close: bool  # close the connection after answering


class FastPath:
    """The protocol factory: the responder, aiohttp's factory and what the connections share
    (the parsed heads, the framed answers, the Date of this second).

    `answered` counts the requests answered here, `handed_off` the connections given to
    aiohttp, `timeouts` the requests not come whole in time. `responder` must be served under
    a plain prefix of its own (such as "/ocsp").
    """

    def __init__(
        self,
        responder: Responder,
        fallback: Callable[[], asyncio.Protocol],
        *,
        max_head: int = 32768,
        max_line: int | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
        on_timeout: Callable[[], None] = lambda: None,
    ) -> None:
        if not _PLAIN_PREFIX.fullmatch(responder.base):
            raise ValueError(f"the fast path needs a plain prefix, not {responder.base!r}")
        if idle_timeout <= 0 or max_connections < 1 or request_timeout <= 0:
            raise ValueError("idle_timeout, max_connections and request_timeout must be positive")
        self.responder, self.fallback = responder, fallback
        self.max_head, self.idle_timeout = max_head, idle_timeout
        self.max_line = max_line  # aiohttp's limit on a request line (None: no such check)
        self._get = _GET + responder.base.encode() + b"/"
        self.max_connections = max_connections
        self.request_timeout, self.on_timeout = request_timeout, on_timeout
        self.answered = self.handed_off = self.evicted = self.refused = self.timeouts = 0
        self.activity = 0  # bytes received or answers given, on any connection: a clock
        self.connections: dict[_Connection, None] = {}  # in the order they came
        self.handed: dict[_Handed, None] = {}  # open connections given to aiohttp, in order
        self._full_logged, self._refused_logged, self._timeout_logged = _Every(), _Every(), _Every()
        self.closed = False
        self._target = re.compile(re.escape(responder.base.encode()) + b"/" + _REQUEST)
        self.heads: dict[bytes, _Request] = {}
        self.replies: dict[bytes, _Reply] = {}
        self._second = -1
        self._date = ""
        self._wires: tuple[dict[Answer, bytes], ...] = ({}, {}, {}, {})
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> _Connection:
        if self._sweeper is None and not self.closed:
            self._sweep()
        return _Connection(self)

    def close(self) -> None:
        """Close every connection not handed off, and any that comes later."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.shut()

    def moved(self) -> int:
        """Count one event (bytes came, an answer went) and return the count."""
        self.activity += 1
        return self.activity

    def admit(self, connection: _Connection) -> bool:
        """Make room for `connection` under the cap; False if it must be closed instead."""
        if self._full() and not self._evict():
            self.refused += 1
            return False
        self.connections[connection] = None
        return True

    def _full(self) -> bool:
        """Whether the cap is reached (connections aiohttp is closing do not count)."""
        if len(self.connections) + len(self.handed) < self.max_connections:
            return False
        self.handed = {h: None for h in self.handed if not h.transport.is_closing()}
        return len(self.connections) + len(self.handed) >= self.max_connections

    def _evict(self) -> bool:
        """Close the connection idle longest, ours or aiohttp's (one of aiohttp's only while
        it waits for a request or its head); False if there is none: every one is aiohttp's,
        handling a request."""
        candidates: list[_Connection | _Handed] = [*self.connections]
        candidates += [h for h in self.handed if h.waiting()]
        oldest = max(candidates, key=_idleness, default=None)
        if oldest is None:
            self._log_full(self._refused_logged, "none is idle: refusing new ones")
            return False
        self._log_full(self._full_logged, "closing the one idle longest for each new one")
        oldest.shut()
        self.evicted += 1
        return True

    def _log_full(self, every: _Every, what: str) -> None:
        if every.due():
            log.warning(
                "HTTP endpoint: %d connections open (http.max_connections): %s",
                self.max_connections,
                what,
            )

    def timed_out(self) -> bytes:
        """Count and log (once a minute at most) a request not come whole in time; return
        the answer that says so."""
        self.timeouts += 1
        self.on_timeout()
        if self._timeout_logged.due():
            log.warning(
                "HTTP endpoint: a client did not send its request whole within %gs "
                "(http.request_timeout): its connection is closed (%d so far)",
                self.request_timeout,
                self.timeouts,
            )
        return self.wire(_TIMED_OUT, _CLOSE)

    def too_long(self, data: bytes) -> bool:
        """Whether `data` begins a GET of this responder whose request line is longer than
        aiohttp reads (`max_line`): aiohttp would refuse it with a 400 of its own, uncounted,
        where a path over the size limit gets 414."""
        if self.max_line is None or not data.startswith(self._get):
            return False
        end = data.find(_CRLF)
        return (end if end >= 0 else len(data)) > self.max_line

    def request(self, head: bytes) -> _Request | None:
        """The GET in `head` (ending with its blank line), or None if it is not ours."""
        request = self.heads.get(head)
        if request is None and len(head) <= self.max_head:
            request = _parse(head, self._target)
            if request is not None and len(head) <= CACHED_HEAD_SIZE:
                if len(self.heads) >= HEAD_CACHE_LIMIT:
                    del self.heads[next(iter(self.heads))]
                self.heads[head] = request
        return request

    def remember(self, head: bytes, request: _Request, answer: Answer, wire: bytes) -> None:
        """Keep `wire`, just sent as `answer` to `head` (a whole request, alone in its read),
        for the same head again while the responder's memo of `answer` holds."""
        if request.if_none_match is not None or len(head) > CACHED_HEAD_SIZE:
            return
        memo = self.responder.remembered(request.path)
        if memo is None or memo.answer is not answer:
            return
        if len(self.replies) >= REPLY_CACHE_LIMIT:
            del self.replies[next(iter(self.replies))]
        self.replies[head] = _Reply(wire, memo, self._second, request.close)

    def wire(self, answer: Answer, mode: int) -> bytes:
        """`answer` framed for a connection in `mode`, with the Date of this second."""
        second = int(time.time())
        if second != self._second:
            self._second, self._date = second, formatdate(second, usegmt=True)
            for wires in self._wires:
                wires.clear()
        wires = self._wires[mode]
        wire = wires.get(answer)
        if wire is None:
            if len(wires) >= WIRE_CACHE_LIMIT:
                wires.clear()
            wire = wires[answer] = _frame(answer, mode, self._date)
        return wire

    def _sweep(self) -> None:
        """Close the connections idle for `idle_timeout` (checked `_SWEEPS` times as often)."""
        for connection in list(self.connections):
            connection.idle += 1
            if connection.idle > _SWEEPS:
                connection.shut()
        for handed in self.handed:  # closed by aiohttp's own idle timeout
            handed.idle += 1
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(self.idle_timeout / _SWEEPS, self._sweep)


class _Connection(asyncio.Protocol):
    """One connection until it is handed to aiohttp (or closed)."""

    __slots__ = ("buffer", "deadline", "fast", "idle", "paused", "scanned", "seen", "transport")

    def __init__(self, fast: FastPath) -> None:
        self.fast = fast
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()  # the start of a head, until its end comes
        self.scanned = 0  # bytes of `buffer` known not to hold the end of the head
        self.idle = 0  # idle checks since the last bytes came
        self.seen = fast.activity  # the count of events at its last bytes (see `_idleness`)
        self.paused = False  # the client does not read: stop answering
        self.deadline: asyncio.TimerHandle | None = None  # of the head in `buffer`

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.fast.closed or not self.fast.admit(self):
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fast.connections.pop(self, None)
        self.transport = None
        self.buffer.clear()
        self._met()

    def data_received(self, data: bytes) -> None:
        fast = self.fast
        fast.activity += 1
        self.idle, self.seen = 0, fast.activity
        if not self.buffer:
            reply = fast.replies.get(data)
            if (
                reply is not None
                and not self.paused
                and reply.second == int(time.time())
                and fast.responder.again(reply.memo)
                and self.transport is not None
            ):
                self._answered(self.transport, reply.wire, reply.close)
                return
            self._serve(data)
            return
        start = len(self.buffer)
        self.buffer += data
        if self.paused or (self.buffer.find(_END, self.scanned) < 0 and self._unfinished(start)):
            return
        data = bytes(self.buffer)
        self.buffer.clear()
        self._serve(data)

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is None:
            return
        self.transport.resume_reading()
        if self.buffer:
            data = bytes(self.buffer)
            self.buffer.clear()
            self._serve(data)

    def shut(self) -> None:
        """Close now: at once if answers are still waiting to be sent (a stuck client)."""
        self.fast.connections.pop(self, None)
        if self.transport is not None:
            _shut(self.transport)

    def within_head(self) -> bool:
        """Whether the start of a head has come, and not its end."""
        return bool(self.buffer)

    def _serve(self, data: bytes) -> None:
        """Answer the requests in `data`, in order; keep an unfinished head for later; hand
        the connection off at the first request not ours."""
        fast, transport = self.fast, self.transport
        size = len(data)
        start = 0  # of the next request in `data`
        while transport is not None:
            end = data.find(_END, start) + _END_SIZE
            if self.paused or end < _END_SIZE:
                self._keep(data[start:])
                return
            head = data if end - start == size else data[start:end]
            request = fast.heads.get(head) or fast.request(head)
            if request is None and data.startswith(_CRLF, start):
                start += _CRLF_SIZE  # an empty line before a request is ignored
                continue
            if request is None:
                self._hand_off(data[start:])
                return
            answer = fast.responder.for_path(request.path, request.if_none_match)
            if answer is None:
                self._hand_off(data[start:])
                return
            wire = fast.wire(answer, request.mode)
            self._answered(transport, wire, request.close)
            if start == 0 and end == size:
                fast.remember(data, request, answer, wire)
            if end == size or transport.is_closing():  # all answered, closed, or client gone
                return
            start = end

    def _answered(self, transport: asyncio.Transport, wire: bytes, close: bool) -> None:
        transport.write(wire)
        self.fast.answered += 1
        if self.deadline is not None:
            self._met()
        if close:
            transport.close()

    def _keep(self, data: bytes) -> None:
        """Wait for the rest of a head (or for the client to read); give aiohttp what does
        not look like a head this module answers. Empty lines before a head are dropped, and
        are no request: they start no deadline (a lone CR is kept, without one, for its LF)."""
        while data.startswith(_CRLF):
            data = data[_CRLF_SIZE:]
        if not data or (data == b"\r" and not self.buffer):
            self.buffer += data
            self.scanned = 0
            return
        self.buffer += data
        if self.deadline is None and not self.paused:
            loop = asyncio.get_running_loop()
            self.deadline = loop.call_later(self.fast.request_timeout, self._expire)
        if self.paused or self._unfinished(0):
            return
        data = bytes(self.buffer)
        self.buffer.clear()
        self._hand_off(data)

    def _met(self) -> None:
        """The head under way came whole in time (or the connection is gone)."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expire(self) -> None:
        """The head under way did not come whole in time: say so and close."""
        self.deadline = None
        transport = self.transport
        assert transport is not None  # else the deadline was cancelled
        if not transport.is_closing():
            self.buffer.clear()
            _linger(transport, self.fast.timed_out(), self.connection_lost)

    def _unfinished(self, start: int) -> bool:
        """Whether the buffer, with no end of head in it, may still become a head answered
        here: a GET, lines ended by CRLF (checked from `start`), within `max_head` bytes."""
        buffer = self.buffer
        self.scanned = max(0, len(buffer) - _END_SIZE + 1)
        return (
            len(buffer) <= self.fast.max_head
            and _GET.startswith(buffer[: len(_GET)])
            and buffer.count(b"\n", start) == buffer.count(b"\r\n", max(0, start - 1))
        )

    def _hand_off(self, data: bytes) -> None:
        """Give the connection, and the bytes not answered yet, to aiohttp (through
        `_Handed`, with the deadline of the request under way)."""
        transport, fast = self.transport, self.fast
        fast.connections.pop(self, None)
        self.transport = None
        self.buffer.clear()
        deadline = self.deadline.when() if self.deadline is not None else None
        self._met()
        if transport is None or transport.is_closing():
            return
        if fast.too_long(data):  # 414, counted, as a path over the limit that aiohttp reads
            _linger(transport, fast.wire(fast.responder.path_too_long(), _CLOSE), _gone)
            return
        handler = fast.fallback()
        handed = _Handed(fast, handler, transport, deadline)
        transport.set_protocol(handed)
        handler.connection_made(transport)
        handed.data_received(data)
        fast.handed_off += 1
        fast.handed[handed] = None


class _Handed(asyncio.Protocol):
    """A connection handed to aiohttp: aiohttp's protocol, fed through this one, which gives
    each request a deadline from its first byte to the end of its body, and keeps the
    connection open to answer a client that half-closes it once its requests are sent."""

    __slots__ = (
        "answered",
        "deadline",
        "ended",
        "fast",
        "handler",
        "idle",
        "reading",
        "seen",
        "transport",
    )

    def __init__(
        self,
        fast: FastPath,
        handler: asyncio.Protocol,
        transport: asyncio.Transport,
        deadline: float | None,
    ) -> None:
        self.fast, self.handler, self.transport = fast, handler, transport
        self.answered = False  # aiohttp has answered the request under way
        self.reading = False  # aiohttp handles a request whose body has not ended
        self.ended = False  # the client has half-closed: it sends nothing more
        self.idle = 0  # idle checks since the last bytes came or the last answer
        self.seen = fast.moved()  # see `_idleness`
        self.deadline: asyncio.TimerHandle | None = None
        if deadline is not None:
            self.deadline = asyncio.get_running_loop().call_at(deadline, self._expire)

    def data_received(self, data: bytes) -> None:
        self.idle, self.seen = 0, self.fast.moved()
        if self.deadline is None and data:
            self._time()
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        """The client has sent all it will (shutdown(SHUT_WR)): keep the connection open to
        answer its requests, then close (aiohttp alone closes at once, the answers unsent:
        aiohttp issue #3659); close at once if aiohttp reads a body that cannot end now."""
        self.handler.eof_received()
        if self.reading:
            return None
        self.ended = True
        asyncio.get_running_loop().call_soon(self._close_if_idle)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.fast.handed.pop(self, None)
        self.received()
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def begun(self, request: web.BaseRequest) -> None:
        """aiohttp has read the head of `request` and is handling it. A request pipelined
        behind another, its first bytes fed with the end of that one, has no deadline yet:
        it is timed from now until its body ends."""
        self.answered = False
        self.reading = not request.content.is_eof()
        if self.reading and self.ended:  # the client half-closed within the body
            self.transport.close()
        elif self.deadline is None and self.reading:
            self._time()
        request.content.on_eof(self.received)
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(self._handled)

    def done(self) -> None:
        """aiohttp's handler has answered the request under way."""
        self.answered = True
        self.idle, self.seen = 0, self.fast.moved()

    def waiting(self) -> bool:
        """Whether aiohttp waits for a request (or the end of its head): none is being
        handled, so the connection may be closed to make room (`FastPath.admit`)."""
        return _waits(self.handler)

    def within_head(self) -> bool:
        """Whether the start of a request has come, and not its end (asked of a connection
        `waiting`: then aiohttp waits for the end of its head)."""
        return self.deadline is not None

    def shut(self) -> None:
        """Close now (see `_Connection.shut`)."""
        self.fast.handed.pop(self, None)
        _shut(self.transport)

    def received(self) -> None:
        """The request under way came whole (its body ended) in time."""
        self.reading = False
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _handled(self, task: asyncio.Task[object]) -> None:
        """aiohttp has sent its answer (`task` handled a request): after a half-close, close
        if aiohttp now waits for a request, once aiohttp has gone on to the next one if any."""
        if self.ended:
            asyncio.get_running_loop().call_soon(self._close_if_idle)

    def _close_if_idle(self) -> None:
        """After a half-close: close (what is written still sent) if aiohttp waits for a
        request, which can no longer come."""
        if _waits(self.handler) and not self.transport.is_closing():
            self.transport.close()

    def _time(self) -> None:
        """Give the request under way `request_timeout` seconds from now to come whole."""
        loop = asyncio.get_running_loop()
        self.deadline = loop.call_later(self.fast.request_timeout, self._expire)
        self.answered = False

    def _expire(self) -> None:
        """The request under way did not come whole in time: say so if aiohttp has not
        answered it, and close (aiohttp's handler then sees the connection lost)."""
        self.deadline = None
        if self.transport.is_closing():
            return
        timed_out = self.fast.timed_out()
        if not self.answered:
            if self.ended:  # the client has closed its side: no need to linger
                self.transport.write(timed_out)
            else:
                _linger(self.transport, timed_out, self.connection_lost)
                return
        self.transport.close()


def _gone(_: Exception | None) -> None:
    """Nothing to do when a connection refused before any hand-off ends."""


def _idleness(connection: _Connection | _Handed) -> tuple[bool, int, int]:
    """How idle a connection is, the most idle the largest: not within a head, then the most
    idle checks, then the longest since its last bytes (the fewest events since)."""
    return (not connection.within_head(), connection.idle, -connection.seen)


def _shut(transport: asyncio.Transport) -> None:
    """Close now: at once if answers are still waiting to be sent (a stuck client)."""
    if transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


def _waits(handler: asyncio.Protocol) -> bool:
    """Whether aiohttp's protocol waits for the next request, with none under way or queued
    (as aiohttp's own idle timeout tells it)."""
    waiter = getattr(handler, "_waiter", None)
    return isinstance(waiter, asyncio.Future) and not waiter.done()


def _linger(
    transport: asyncio.Transport, answer: bytes, then: Callable[[Exception | None], None]
) -> None:
    """Send `answer` and the end of the connection, then read and drop what comes until the
    client closes too (`LINGER` seconds at most); `then` is told when the connection is lost."""
    transport.write(answer)
    transport.write_eof()
    transport.set_protocol(_Lingering(transport, then))


class _Lingering(asyncio.Protocol):
    """A connection past its deadline whose answer is sent: see `_linger`."""

    __slots__ = ("then", "timer")

    def __init__(
        self, transport: asyncio.Transport, then: Callable[[Exception | None], None]
    ) -> None:
        self.then = then
        self.timer = asyncio.get_running_loop().call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        """Dropped: the request has been answered."""

    def eof_received(self) -> bool:
        return False  # the client has closed too: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.then(exc)


@web.middleware
async def request_deadlines(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The application's middleware that tells a connection handed off by the fast path
    (`_Handed`) when aiohttp has read a request's head, so that its deadline ends with the
    body (or starts, for a request pipelined behind another), and when the request is
    answered (no 408 then)."""
    transport = request.transport
    handed = transport.get_protocol() if transport is not None else None
    if not isinstance(handed, _Handed):
        return await handler(request)
    handed.begun(request)
    try:
        return await handler(request)
    finally:
        handed.done()


class _Every:
    """Whether a line about the same trouble is due: once every LOG_EVERY seconds at most."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = -LOG_EVERY

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < LOG_EVERY:
            return False
        self.last = now
        return True


_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_QUIETED: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log running out of descriptors in accept() as one line a minute at most, not a traceback
    a second (asyncio retries the accept by itself); pass every other error on as before."""
    if loop in _QUIETED:
        return
    _QUIETED.add(loop)
    previous = loop.get_exception_handler()
    logged = _Every()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES:
            if logged.due():
                log.error(
                    "HTTP endpoint: cannot accept connections (%s); raise LimitNOFILE or lower "
                    "http.max_connections",
                    exc.strerror,
                )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def raise_file_limit(connections: int, burst: int) -> int:
    """Raise the soft limit of open files, as far as the hard limit allows, to fit
    `connections`, a `burst` of connections accepted at once before any is closed (the
    listen backlog: asyncio accepts that many in one go) and the spare descriptors; return
    the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + burst + SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "HTTP endpoint: only %d file descriptors for %d connections (http.max_connections) "
            "and bursts of %d; raise LimitNOFILE to %d",
            soft,
            connections,
            burst,
            wanted,
        )
    return soft


def _parse(head: bytes, target: re.Pattern[bytes]) -> _Request | None:
    """The GET in `head` if this module answers it, else None."""
    lines = head[:-_END_SIZE].split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None or target.fullmatch(line[1]) is None:
        return None
    fields = _fields(lines[1:])
    minor = int(line[2])
    if fields is None or (minor == 1 and b"host" not in fields):
        return None
    if any(name in fields for name in _NOT_OURS):
        return None
    connection = fields.get(b"connection", b"").lower()
    if connection not in (b"", b"close", b"keep-alive"):
        return None
    keep = connection == b"keep-alive" or (minor == 1 and connection != b"close")
    if_none_match = fields.get(b"if-none-match")
    return _Request(
        line[1].decode(),
        None if if_none_match is None else if_none_match.decode(),
        2 * minor + keep,
        not keep,
    )


def _fields(lines: list[bytes]) -> dict[bytes, bytes] | None:
    """The header fields (lower-case names, trimmed values), or None if any is unusual."""
    if len(lines) > MAX_FIELDS:
        return None
    fields: dict[bytes, bytes] = {}
    for line in lines:
        match = _FIELD.fullmatch(line) if len(line) <= MAX_FIELD_SIZE else None
        if match is None:
            return None
        name = match[1].lower()
        if name in fields:
            return None
        fields[name] = match[2] or b""
    return fields


def _frame(answer: Answer, mode: int, date: str) -> bytes:
    """The HTTP answer, as aiohttp writes it for a connection in `mode`."""
    minor, keep = divmod(mode, 2)
    lines = [f"HTTP/1.{minor} {answer.status} {HTTPStatus(answer.status).phrase}"]
    lines += [f"{name}: {value}" for name, value in answer.headers.items()]
    if answer.status != HTTPStatus.NOT_MODIFIED:
        lines.append(f"Content-Length: {len(answer.body)}")
    lines += [f"Date: {date}", f"Server: {SERVER_SOFTWARE}"]
    if minor == 1 and not keep:
        lines.append("Connection: close")
    elif minor == 0 and keep:
        lines.append("Connection: keep-alive")
    return "\r\n".join([*lines, "", ""]).encode() + answer.body
