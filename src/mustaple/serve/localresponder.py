"""The local OCSP responder: answers OCSP requests from the keeper's staples, in memory.

For servers that insist on fetching their staples themselves (Apache mod_ssl, nginx with
`ssl_stapling_responder`): pointed at mustaple, they fetch from a cache that is always warm
and never breaks. `add_routes(app, keeper)` adds to an aiohttp application, under `prefix`:

- `GET {prefix}/<url-escaped base64 DER request>` (RFC 6960 appendix A.1, RFC 5019 section 5),
  where a base64 '/' may come escaped (%2F, as nginx sends it) or not, the target in origin
  form or in absolute form (`http://host{prefix}/...`, as through a proxy);
- `POST {prefix}` and `POST {prefix}/` with the DER request as the body (as Apache sends it).

The request must name exactly one certificate (CertID hashed with SHA-1, SHA-256, SHA-384 or
SHA-512). The answer is, byte for byte, the response the keeper holds for it, if that response
answers this CertID, hash algorithm included. The keeper asks the CA with a SHA-1 CertID (as
RFC 5019 has clients do), so the CA's answer names the certificate that way; a client that
asked with another hash would not find its certificate in it (OpenSSL: "No Status found"),
so it gets `unauthorized` (RFC 6960 section 2.3: a responder not capable of answering
authoritatively), unless the CA's answer has a SingleResponse under that hash too. So:

- its valid `good` staple, with the caching headers of RFC 5019 section 6.2: `max-age` until
  the staple's refresh point (when mustaple will have a fresher one), `ETag`, `Last-Modified`
  (thisUpdate, or now while a CA's clock ahead puts thisUpdate later: never after the
  answer's Date, RFC 9110 section 8.8.2.1), `Expires` (the effective expiry); a matching
  `If-None-Match` gets 304 on a GET, and is ignored on a POST: RFC 9110 section 13.1.2
  allows a 304 for GET and HEAD only and has other methods answered 412, of no use to a
  server fetching its staple (only GETs are cached: RFC 5019 section 6);
- for a revoked certificate, the CA's signed `revoked` answer (validated by the keeper) while
  it is valid: it is the truth and exactly what the CA itself would answer, so a server that
  staples it (Apache does) tells its clients the certificate is revoked, where `unauthorized`
  would only say that this responder cannot help;
- otherwise (a certificate mustaple does not manage, or holds no valid answer for):
  `unauthorized`; a request that cannot be read: `malformedRequest`. Both with
  `Cache-Control: no-store`.

A request over `max_request_size` bytes is refused with HTTP 413 (POST body, not read past the
limit) or 414 (GET path), counted as "too-large"; a POST body that does not decode (a broken
gzip or deflate `Content-Encoding`) with HTTP 400, counted as "malformed". Nothing here
contacts a CA, or anything else: the responder only reads the keeper's memory, so it is never
an open proxy and answers at once even when the CA is down. It answers whoever can reach the
app, which listens on loopback unless configured otherwise
(`mustaple.adapters.config.HttpConfig`).

Every answer is counted by result in `served` (a count for each of `RESPONDER_RESULTS`, kept
by the caller, such as the metrics), increased in place: a dictionary, not a callback, as the
fast path counts about 150,000 requests a second and a call costs a tenth of its own work.

What to answer is decided in one place, `Responder.answer` (a CertID, `now` and the
If-None-Match header in, an `Answer` out: status, headers, body and the metrics label); the
aiohttp handlers here and the fast path of `mustaple.serve.fastpath` only put it on the wire.
A GET path asked again is answered with the answer it got last, without reading the request
or the keeper again, for as long as that answer is the one `answer` would give: until the
keeper's `revision` changes (a certificate's state changed, or a certificate came or went),
`max-age` drops by a second, or the staple expires (and anew if the clock goes back). The memo
reads the clock as POSIX seconds (`mustaple.core.clock.timestamps`). A server may keep what it
made of a remembered answer (`Responder.remembered`) and use it again while `Responder.again`
says the memo holds: the fast path keeps the very bytes it sent.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TypeVar
from urllib.parse import unquote

from aiohttp import web
from aiohttp.http import HttpProcessingError
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509 import ocsp

from mustaple.core.clock import Clock, timestamps, utc_now
from mustaple.core.lifecycle import CertState
from mustaple.core.request import HASHES, CertId
from mustaple.core.schedule import SchedulePolicy, refresh_point
from mustaple.core.verify import Staple
from mustaple.keeper.keeper import Keeper

__all__ = [
    "MALFORMED_REQUEST",
    "RESPONDER_RESULTS",
    "UNAUTHORIZED",
    "Answer",
    "Memo",
    "Responder",
    "add_routes",
    "read_cert_id",
    "served_counts",
]

# the results every answer is counted under (`served`), in the order the metrics show them
RESPONDER_RESULTS = ("good", "revoked", "not-modified", "unauthorized", "malformed", "too-large")
OCSP_RESPONSE = "application/ocsp-response"
MALFORMED_REQUEST = bytes.fromhex("30030a0101")  # OCSPResponse, responseStatus 1
UNAUTHORIZED = bytes.fromhex("30030a0106")  # OCSPResponse, responseStatus 6
CACHE_LIMIT = 4096  # entries in each of the two caches: prepared staples, known requests
CACHED_REQUEST_LIMIT = 512  # bytes: longer requests (big nonces) are read each time
_CACHE_CONTROL = "max-age={}, public, no-transform, must-revalidate"
_TEXT = {"Content-Type": "text/plain; charset=utf-8"}  # as aiohttp's web.Response(text=...)
_NEVER = datetime.max.replace(tzinfo=UTC)
_TICK = timedelta(microseconds=1)  # the datetime's resolution
_K = TypeVar("_K")
_V = TypeVar("_V")


def add_routes(
    app: web.Application,
    keeper: Keeper,
    *,
    prefix: str = "/ocsp",
    max_request_size: int = 10000,
    clock: Clock = utc_now,
    served: dict[str, int] | None = None,
) -> Responder:
    """Serve OCSP requests under `prefix` from `keeper`'s staples (see the module docstring);
    return the `Responder` behind the routes (`mustaple.serve.fastpath` answers with it too).

    `served` (from `served_counts`; a new one if None) counts the requests answered, by
    result: "good", "revoked", "not-modified", "unauthorized", "malformed" or "too-large".
    """
    if not prefix.startswith("/"):
        raise ValueError(f"prefix must start with '/', not {prefix!r}")
    if max_request_size < 1:
        raise ValueError("max_request_size must be at least 1 byte")
    responder = Responder(
        keeper,
        prefix.rstrip("/"),
        max_request_size,
        clock,
        served_counts() if served is None else served,
    )
    for path in sorted({responder.base or "/", responder.base + "/"}):
        app.router.add_post(path, responder.post)
    app.router.add_get(responder.base + "/{request:.*}", responder.get)
    return responder


def served_counts() -> dict[str, int]:
    """A count of 0 for each of `RESPONDER_RESULTS`: what a `Responder` counts in."""
    return dict.fromkeys(RESPONDER_RESULTS, 0)


def _counting(served: dict[str, int]) -> dict[str, int]:
    """`served`, once it is known to count every result (else the first answer of a result
    missing would fail)."""
    missing = set(RESPONDER_RESULTS) - set(served)
    if missing:
        raise ValueError(f"served has no count for {', '.join(sorted(missing))}")
    return served


def read_cert_id(request_der: bytes) -> CertId | None:
    """The CertID of a DER OCSP request about exactly one certificate, or None when the
    request cannot be read (not DER, several CertIDs, a hash outside `request.HASHES`)."""
    try:
        request = ocsp.load_der_ocsp_request(request_der)
        hash_name = request.hash_algorithm.name
    # cryptography raises NotImplementedError for a request with several CertIDs
    except (ValueError, NotImplementedError, UnsupportedAlgorithm):
        return None
    if hash_name not in HASHES:
        return None
    return CertId(
        hash_name, request.issuer_name_hash, request.issuer_key_hash, request.serial_number
    )


@dataclass(frozen=True, eq=False, slots=True)
class Answer:
    """One answer of the responder before any HTTP framing: what every server sends for it.

    `headers` are in the order sent (Content-Length, Date and Server are the server's to
    add); `result` is the count it goes under (`RESPONDER_RESULTS`). Answers compare by
    identity: the same object is returned while nothing in it changes (a second at least), so
    servers may cache what they make of it. Shared: callers must not change `headers`.
    """

    status: int  # 200, or 304 for a matching If-None-Match
    headers: Mapping[str, str]
    body: bytes  # empty for a 304
    result: str


def _unsuccessful(body: bytes, result: str) -> Answer:
    return Answer(200, {"Content-Type": OCSP_RESPONSE, "Cache-Control": "no-store"}, body, result)


MALFORMED_ANSWER = _unsuccessful(MALFORMED_REQUEST, "malformed")
UNAUTHORIZED_ANSWER = _unsuccessful(UNAUTHORIZED, "unauthorized")


class _Prepared:
    """What every answer carrying one staple shares, worked out once per staple; the two
    answers (200 and 304) are made again only when `max-age` changes (once a second at most)."""

    __slots__ = (
        "_max_age",
        "_modified",
        "answers",
        "body",
        "etag",
        "expires",
        "fresh_until",
        "hashes",
        "result",
        "this_update",
    )

    def __init__(self, staple: Staple, schedule: SchedulePolicy) -> None:
        self.body = staple.der
        self.hashes = _cert_id_hashes(staple)  # a request's CertID must use one of these
        self.etag = f'"{hashlib.sha256(staple.der).hexdigest()[:32]}"'
        self.this_update = staple.this_update
        self.expires = _http_date(staple.effective_expiry)
        # the refresh point: mustaple should have a fresher answer then
        self.fresh_until = min(refresh_point(staple, schedule), staple.effective_expiry)
        self.result = "good" if staple.good else "revoked"  # the count it goes under
        self._max_age = -1
        self._modified = _NEVER
        self.answers = (MALFORMED_ANSWER, MALFORMED_ANSWER)  # replaced at the first call

    def answers_at(self, now: datetime) -> tuple[Answer, Answer, datetime]:
        """The 200 answer and the 304 answer at `now`, and when they next change (`max-age`,
        or `Last-Modified` while thisUpdate is ahead of `now`)."""
        max_age = max(0, int((self.fresh_until - now).total_seconds()))
        # never later than the answer's Date (RFC 9110 8.8.2.1): a CA's clock may be ahead
        modified = min(self.this_update, now.replace(microsecond=0))
        if max_age != self._max_age or modified != self._modified:
            self.answers = self._answers(max_age, modified)
            self._max_age, self._modified = max_age, modified
        # max-age stays while fresh_until - now >= max_age: up to and with that moment
        changes = self.fresh_until - timedelta(seconds=max_age) + _TICK if max_age else _NEVER
        if modified < self.this_update:
            changes = min(changes, modified + timedelta(seconds=1))
        return (*self.answers, changes)

    def _answers(self, max_age: int, modified: datetime) -> tuple[Answer, Answer]:
        headers = {
            "Content-Type": OCSP_RESPONSE,
            "ETag": self.etag,
            "Last-Modified": _http_date(modified),
            "Expires": self.expires,
            "Cache-Control": _CACHE_CONTROL.format(max_age),
        }
        unchanged = {k: v for k, v in headers.items() if k != "Content-Type"}
        return (
            Answer(200, headers, self.body, self.result),
            Answer(304, unchanged, b"", "not-modified"),
        )


@dataclass(frozen=True, slots=True)
class Memo:
    """An answer to one GET path, and while it holds (`Responder.again`): from `since` to
    before `until` of the responder's clock (POSIX seconds), while `keeper` answers and its
    `revision` stays `revision`."""

    answer: Answer
    keeper: Keeper
    revision: int
    since: float
    until: float


class Responder:
    """The responder: what it answers (`answer`), for a GET path (`for_path`) or a POST body
    (`for_body`), and the aiohttp handlers that serve those (`get`, `post`).

    Two bounded caches keep the hot path free of parsing: the CertID of each request already
    read (by GET path or POST body), and the prepared answers of each staple (by its DER).
    `base` is the prefix without its trailing '/' ("" for "/").
    """

    def __init__(
        self,
        keeper: Keeper,
        base: str,
        max_request_size: int,
        clock: Clock,
        served: dict[str, int],
    ) -> None:
        self.keeper, self.clock, self.served = keeper, clock, _counting(served)
        self.stamp = timestamps(clock)
        self.base, self.limit = base, max_request_size
        self.path_start = len(base) + 1
        self._cert_ids: dict[str | bytes, CertId] = {}
        self._prepared: dict[bytes, _Prepared] = {}
        self._memos: dict[str, Memo] = {}

    def switch(self, keeper: Keeper, served: dict[str, int]) -> None:
        """Answer from `keeper` from now on (after a configuration reload), counting in
        `served`; answers prepared under the old keeper's policy are dropped."""
        self.keeper, self.served = keeper, _counting(served)
        self._prepared.clear()
        self._memos.clear()

    def answer(self, cert_id: CertId | None, now: datetime, if_none_match: str | None) -> Answer:
        """What to answer at `now` for a request about `cert_id` (None: unreadable) with
        this If-None-Match header (None: none). Counts nothing."""
        return self._answer(cert_id, now, if_none_match)[0]

    def _answer(
        self, cert_id: CertId | None, now: datetime, if_none_match: str | None
    ) -> tuple[Answer, datetime]:
        """`answer`, and the moment it may change (while the keeper's revision stays)."""
        if cert_id is None:
            return MALFORMED_ANSWER, _NEVER
        state = self.keeper.state_of(cert_id)
        staple = _servable(state, now) if state is not None else None
        if staple is None:
            return UNAUTHORIZED_ANSWER, _NEVER
        prepared = self._prepare(staple)
        if cert_id.hash_name not in prepared.hashes:  # the client would not find its answer
            return UNAUTHORIZED_ANSWER, staple.effective_expiry
        ok, not_modified, changes = prepared.answers_at(now)
        until = min(changes, staple.effective_expiry)
        if if_none_match is not None and _matches(if_none_match, prepared.etag):
            return not_modified, until
        return ok, until

    def for_path(self, raw_path: str, if_none_match: str | None) -> Answer | None:
        """The answer to `GET raw_path` (the path as sent, query included), counted; None
        for a path over the size limit, which the caller refuses (414, counted there).

        A path asked again (without If-None-Match) gets the answer it got last while that
        answer holds (`Memo`), with no CertID, state or staple looked up."""
        memo = self._memos.get(raw_path) if if_none_match is None else None
        if memo is not None and self.again(memo):
            return memo.answer
        if len(raw_path) > self.limit:
            return None
        now = self.clock()
        cert_id = self._cert_ids.get(raw_path)
        if cert_id is None:
            cert_id = self._read(raw_path, _from_path(raw_path, self.path_start))
        answer, until = self._answer(cert_id, now, if_none_match)
        if if_none_match is None and len(raw_path) <= CACHED_REQUEST_LIMIT:
            end = math.inf if until == _NEVER else until.timestamp()
            memo = Memo(answer, self.keeper, self.keeper.revision, now.timestamp(), end)
            _put(self._memos, raw_path, memo)
        self.served[answer.result] += 1
        return answer

    def remembered(self, raw_path: str) -> Memo | None:
        """The answer `GET raw_path` got last and while it holds (None: not remembered), for
        a server that keeps what it made of that answer."""
        return self._memos.get(raw_path)

    def again(self, memo: Memo) -> bool:
        """Whether `memo` still holds (its keeper answers, at the same revision, and the
        clock is within its window); if so, it is counted as served once more."""
        keeper = self.keeper
        if (
            memo.keeper is keeper
            and memo.revision == keeper.revision
            and memo.since <= self.stamp() < memo.until
        ):
            self.served[memo.answer.result] += 1
            return True
        return False

    def for_body(self, body: bytes, if_none_match: str | None) -> Answer:
        """The answer to a POST of `body` (within the size limit), counted. (`post` gives no
        If-None-Match: see the module docstring.)"""
        cert_id = self._cert_ids.get(body)
        if cert_id is None:
            cert_id = self._read(body, body)
        answer = self.answer(cert_id, self.clock(), if_none_match)
        self.served[answer.result] += 1
        return answer

    async def get(self, request: web.Request) -> web.Response:
        answer = self.for_path(_origin_form(request), request.headers.get("If-None-Match"))
        if answer is None:
            return await self._too_large(request, 414)
        return _response(answer)

    async def post(self, request: web.Request) -> web.Response:
        try:
            body = await _read_body(request, self.limit)
        except (web.RequestPayloadError, HttpProcessingError):
            # a gzip or deflate body that does not decode, or chunks that do not parse; not
            # the client gone in the middle of its body (nobody to answer)
            if request.transport is None or request.transport.is_closing():
                raise
            return await self._refuse(request, 400, "malformed", "OCSP request does not decode")
        if body is None:
            return await self._too_large(request, 413)
        # If-None-Match is ignored: a 304 is for GET and HEAD only (RFC 9110 13.1.2)
        return _response(self.for_body(body, None))

    def _read(self, key: str | bytes, request_der: bytes) -> CertId | None:
        cert_id = read_cert_id(request_der)
        if cert_id is not None and len(key) <= CACHED_REQUEST_LIMIT:
            _put(self._cert_ids, key, cert_id)
        return cert_id

    def _prepare(self, staple: Staple) -> _Prepared:
        prepared = self._prepared.get(staple.der)
        if prepared is None:
            prepared = _Prepared(staple, self.keeper.policy.schedule)
            _put(self._prepared, staple.der, prepared)
        return prepared

    def path_too_long(self) -> Answer:
        """The answer to a GET whose path is too long even for aiohttp to read (the fast path
        gives it): 414, as any path over the limit, counted as too-large."""
        self.served["too-large"] += 1
        return Answer(414, _TEXT, f"OCSP request over {self.limit} bytes\n".encode(), "too-large")

    async def _too_large(self, request: web.Request, status: int) -> web.Response:
        return await self._refuse(
            request, status, "too-large", f"OCSP request over {self.limit} bytes"
        )

    async def _refuse(
        self, request: web.Request, status: int, result: str, why: str
    ) -> web.Response:
        """Refuse, counted under `result`, then close the connection: the rest of a body is
        never read (aiohttp would read and drop it for up to 10 s before closing)."""
        self.served[result] += 1
        response = web.Response(status=status, text=why + "\n")
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()
        return response


def _response(answer: Answer) -> web.Response:
    """`answer` for aiohttp."""
    return web.Response(status=answer.status, body=answer.body or None, headers=answer.headers)


def _origin_form(request: web.Request) -> str:
    """The path and query of the request's target as sent: in the absolute form too
    (`GET http://host/ocsp/...`, which a server must accept: RFC 9112 section 3.2.2)."""
    raw_path = request.raw_path
    return raw_path if raw_path.startswith("/") else request.rel_url.raw_path_qs


def _servable(state: CertState, now: datetime) -> Staple | None:
    """The answer at `now` for a certificate in `state`: its good staple, else its revoked
    answer, if valid."""
    for staple in (state.held, state.revoked):
        if staple is not None and staple.effective_expiry > now:
            return staple
    return None


def _cert_id_hashes(staple: Staple) -> frozenset[str]:
    """The hashes of the CertIDs of `staple`'s SingleResponses about its certificate: a
    client finds its answer in the staple only under the CertID it asked about (OpenSSL's
    OCSP_resp_find compares the hash algorithm too)."""
    singles = ocsp.load_der_ocsp_response(staple.der).responses
    names = {staple.hash_name}
    for single in singles:
        with suppress(UnsupportedAlgorithm):
            if single.serial_number == staple.serial:
                names.add(single.hash_algorithm.name)
    return frozenset(names)


def _from_path(raw_path: str, start: int) -> bytes:
    """The DER request in a GET path (empty when it is not base64): what follows the prefix
    and its slash, without the query, url-unescaped (a raw '/' of base64 stays as it is)."""
    encoded = unquote(raw_path.split("?", 1)[0][start:])
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:  # binascii.Error, or characters outside ASCII
        return b""


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to be over `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    while chunk := await request.content.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak comparison, RFC 9110 13.1.2)."""
    if if_none_match is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _put(cache: dict[_K, _V], key: _K, value: _V) -> None:
    """Add to a bounded cache, dropping its oldest entry when full."""
    if len(cache) >= CACHE_LIMIT:
        del cache[next(iter(cache))]
    cache[key] = value


def _http_date(when: datetime) -> str:
    return format_datetime(when, usegmt=True)
