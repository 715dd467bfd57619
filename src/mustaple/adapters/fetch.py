"""Fetching over HTTP: OCSP responses with retries and failover, and AIA issuers.

The I/O adapter between the pure request builder and the pure validator, and the keeper's
`Fetcher` (`HttpFetcher`). Which request to send next, when to pause and when to stop is
decided by the pure plan (`fetchplan.next_step`: overrides first, then the certificate's own
URLs; GET, POST when GET fails; retries with exponential backoff and full jitter, honouring
Retry-After); this module carries its steps out and records every attempt (url, method, HTTP
status, latency, reason, proxy) so callers can log, store and show them. Requests go through
the outbound HTTP proxy that `proxy.choose_proxy` picks (the environment's, as curl does, or
the configured one); an answer that is the proxy's own error page is told apart from the
responder's (`proxy-refused`, `proxy-error`). Every answer is judged (`fetchplan.judged`) the
moment it arrives, so a `tryLater` or an HTML error page is retried exactly like a timeout.
Nothing here raises for a misbehaving responder: the result says what happened.

Two clients carry the exchanges: OCSP requests to plain `http://` URLs (almost all of them),
direct or through the proxy, go through the lean keep-alive client (`http1`), which costs a
fraction of aiohttp's CPU per exchange; `https://` URLs, a redirect to one, and AIA issuer
downloads go through aiohttp, whose session is opened (and aiohttp imported) only when first
needed. `Clients` holds both and tells the requests of both to its `Watcher`s (e.g. the
progress display).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import email.utils
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from cryptography import x509

from mustaple import __version__
from mustaple.adapters import http1
from mustaple.core.certs import Target, parse_certificates
from mustaple.core.clock import Clock, utc_now
from mustaple.core.errors import InputError
from mustaple.core.fetchplan import Exchange, Stop, Taken, Wait, judged, next_step, routes_for
from mustaple.core.fetchtypes import (
    DEFAULT_FETCH_POLICY,
    Attempt,
    FetchJob,
    FetchPolicy,
    FetchResult,
)
from mustaple.core.proxy import Proxy, ProxyError, choose_proxy
from mustaple.core.reasons import Reason, Rejection
from mustaple.core.request import HttpRequest, encode_request, make_cert_id
from mustaple.core.verify import DEFAULT_POLICY, HttpAnswer, Policy, Staple

if TYPE_CHECKING:  # imported where a session is opened: most fetches never need aiohttp
    import aiohttp

__all__ = [
    "DEFAULT_FETCH_POLICY",
    "Attempt",
    "Clients",
    "FetchPolicy",
    "FetchResult",
    "HttpFetcher",
    "fetch_issuer",
    "fetch_staple",
]

USER_AGENT = f"mustaple/{__version__}"
# A proxy's own answers that mean "not for you" (the rest of its error pages: it could not help).
_PROXY_REFUSALS = {401, 403, 407}

Sleep = Callable[[float], Awaitable[None]]
_ISSUER_HINT = (
    "give the issuer certificate: --issuer, or the `issuer` key of its [[certificates]] entry"
)


@dataclass(frozen=True, slots=True)
class _Reply:
    """What one HTTP exchange gave: an answer, or the reason there is none."""

    answer: HttpAnswer | None
    rejection: Rejection | None
    retry_after: float | None = None


async def fetch_staple(
    target: Target,
    *,
    urls: Sequence[str] = (),
    hash_name: str = "sha1",
    policy: FetchPolicy = DEFAULT_FETCH_POLICY,
    verify_policy: Policy = DEFAULT_POLICY,
    current: Staple | None = None,
    clients: Clients | None = None,
    clock: Clock = utc_now,
    sleep: Sleep = asyncio.sleep,
    rng: Callable[[], float] = random.random,
) -> FetchResult:
    """Get a validated staple for `target`, trying `urls` then the certificate's own URLs,
    as `fetchplan.next_step` says. Without `clients`, opens its own (only those needed).

    A staple that is not better than `current` (see `verify.compare`) counts as a rejection.
    """
    if not urls and not target.ocsp_urls:
        return FetchResult(None, Rejection(Reason.NO_OCSP_URL, target.no_url_message()), (), None)
    request_der = encode_request(make_cert_id(target.issuer, target.serial, hash_name))
    routes = routes_for(request_der, urls, target.ocsp_urls)
    run = _Run(target, policy, verify_policy, current, clock)
    taken: list[Taken] = []
    async with _using(clients) as http:
        while not isinstance(step := next_step(routes, taken, policy), Stop):
            if isinstance(step, Wait):
                await sleep(step.seconds(rng()))
                taken.append(step)
            else:
                taken.append(await run.exchange(http, step.request))
    return FetchResult(step.staple, step.rejection, tuple(run.attempts), step.url)


class Clients:
    """The lean client and an aiohttp session, each opened when first needed (aiohttp is
    imported only then) and kept, with its pool of at most `limit` connections, until `close`.
    Both tell each request to `watchers`."""

    def __init__(self, *, limit: int = 100, watchers: Sequence[http1.Watcher] = ()) -> None:
        self.limit, self.watchers = limit, tuple(watchers)
        self._session: aiohttp.ClientSession | None = None
        self._lean: http1.Http1Client | None = None

    @property
    def lean(self) -> http1.Http1Client:
        if self._lean is None:
            self._lean = http1.Http1Client(
                limit=self.limit, user_agent=USER_AGENT, watchers=self.watchers
            )
        return self._lean

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.limit),
                headers={"User-Agent": USER_AGENT},
                trace_configs=[_tracing(w) for w in self.watchers] or None,
            )
        return self._session

    async def close(self) -> None:
        session, lean, self._session, self._lean = self._session, self._lean, None, None
        if session is not None:
            await session.close()
        if lean is not None:
            await lean.close()


@contextlib.asynccontextmanager
async def _using(clients: Clients | None) -> AsyncIterator[Clients]:
    """`clients`, else clients of this call's own, closed after it."""
    if clients is not None:
        yield clients
        return
    own = Clients()
    try:
        yield own
    finally:
        await own.close()


def _tracing(watcher: http1.Watcher) -> aiohttp.TraceConfig:
    """aiohttp's request signals, told to `watcher` as the lean client tells it."""
    import aiohttp

    async def started(_: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
        ctx.mustaple_token = watcher.request_started(params.method, str(params.url))

    async def ended(_: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
        watcher.request_ended(ctx.mustaple_token, http1.outcome(params.response.status))

    async def failed(_: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
        watcher.request_ended(ctx.mustaple_token, http1.outcome(None, params.exception))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(started)
    trace.on_request_end.append(ended)
    trace.on_request_exception.append(failed)
    return trace


class HttpFetcher:
    """The `Fetcher` over HTTP: with `clients`, every fetch and issuer download shares their
    pools of connections; without, each call opens its own."""

    def __init__(self, clients: Clients | None = None) -> None:
        self.clients = clients

    @classmethod
    def open(cls, *, limit: int, watchers: Sequence[http1.Watcher] = ()) -> HttpFetcher:
        """A fetcher with clients of its own, at most `limit` connections each, opened when
        first needed (in the running event loop; `close` it), telling `watchers` each request."""
        return cls(Clients(limit=limit, watchers=watchers))

    async def close(self) -> None:
        if self.clients is not None:
            await self.clients.close()

    async def fetch(self, job: FetchJob, *, clock: Clock, rng: Callable[[], float]) -> FetchResult:
        return await fetch_staple(
            job.target,
            urls=job.urls,
            hash_name=job.hash_name,
            policy=job.policy,
            verify_policy=job.verify_policy,
            current=job.current,
            clients=self.clients,
            clock=clock,
            rng=rng,
        )

    async def issuer(
        self, url: str, *, policy: FetchPolicy, cache: MutableMapping[str, bytes] | None
    ) -> list[x509.Certificate]:
        return await fetch_issuer(url, clients=self.clients, policy=policy, cache=cache)


def _timeout(policy: FetchPolicy) -> aiohttp.ClientTimeout:
    import aiohttp

    return aiohttp.ClientTimeout(total=policy.total_timeout, connect=policy.connect_timeout)


@dataclass
class _Run:
    """The exchanges of one fetch: each request sent, its answer judged, its attempt kept."""

    target: Target
    policy: FetchPolicy
    verify_policy: Policy
    current: Staple | None
    clock: Clock
    attempts: list[Attempt] = field(default_factory=list)

    async def exchange(self, http: Clients, request: HttpRequest) -> Exchange:
        started, t0 = self.clock(), time.monotonic()
        try:
            proxy = choose_proxy(request.url, self.policy.proxy, os.environ)
        except ProxyError as exc:
            proxy, reply = None, _Reply(None, Rejection(Reason.PROXY_INVALID, str(exc)))
        else:
            reply = await _send(http, request, self.policy, proxy)
        outcome: Staple | Rejection
        if reply.answer is None:
            assert reply.rejection is not None
            outcome = reply.rejection
        else:
            outcome = judged(
                reply.answer, self.target, self.clock(), self.verify_policy, self.current
            )
        latency = time.monotonic() - t0
        self.attempts.append(_record(request, started, latency, reply, outcome, proxy=proxy))
        status = reply.answer.status if reply.answer is not None else None
        return Exchange(request, outcome, status, reply.retry_after)


def _record(
    request: HttpRequest,
    started: datetime,
    latency: float,
    reply: _Reply,
    outcome: object,
    *,
    proxy: Proxy | None,
) -> Attempt:
    """The attempt as it is kept; its message names the proxy, so the store's history does."""
    status = reply.answer.status if reply.answer is not None else None
    reason, message = None, "valid staple"
    if isinstance(outcome, Rejection):
        reason, message = outcome.code, outcome.message
    if proxy is not None and proxy.url not in message:
        message += f" (via proxy {proxy.url})"
    via = proxy.url if proxy else None
    return Attempt(request.url, request.method, started, latency, status, reason, message, via)


async def _send(
    http: Clients, request: HttpRequest, policy: FetchPolicy, proxy: Proxy | None = None
) -> _Reply:
    """One HTTP exchange, through `proxy` if given: plain http:// on the lean client, the rest
    (and a redirect to https://) on aiohttp; transport failures become rejections."""
    if request.url[:7].lower() != "http://":
        return await _send_aiohttp(http.session, request, policy, proxy)
    started = time.monotonic()
    try:
        response = await http.lean.request(
            request.method,
            request.url,
            body=request.body,
            headers=_headers(request, proxy),
            proxy=proxy.url if proxy else None,
            policy=policy,
        )
    except http1.Handover as turn:
        onward = HttpRequest("POST" if turn.method == "POST" else "GET", turn.url, turn.body)
        return await _send_aiohttp(http.session, onward, _rest(policy, turn, started), proxy)
    except (http1.HttpProblem, TimeoutError, OSError) as exc:
        return _failed(exc, request, policy, proxy)
    if proxy is not None and _from_proxy(response.status, response.content_type, response.headers):
        return _proxy_answer(proxy, response.status, response.reason)
    answer = HttpAnswer(response.status, response.headers.get("content-type"), response.body)
    return _Reply(answer, None, _retry_after(response.headers.get("retry-after")))


def _rest(policy: FetchPolicy, turn: http1.Handover, started: float) -> FetchPolicy:
    """The policy for the rest of an exchange handed over: what is left of its time and
    redirects (0 stays 'no limit')."""
    left = max(policy.total_timeout - (time.monotonic() - started), 0.001)
    redirects = policy.max_redirects and policy.max_redirects - turn.redirects
    return dataclasses.replace(policy, total_timeout=left, max_redirects=redirects)


def _failed(
    exc: Exception, request: HttpRequest, policy: FetchPolicy, proxy: Proxy | None
) -> _Reply:
    """The rejection for what the lean client raised."""
    if isinstance(exc, http1.TooLarge):
        if proxy is not None and _from_proxy(
            exc.status, http1.media_type(exc.headers), exc.headers
        ):
            return _proxy_answer(proxy, exc.status, None)
        return _too_large(exc.size, policy.max_size)
    if isinstance(exc, http1.ConnectTimeout):
        return _timed_out(policy, proxy, exc.seconds)
    if isinstance(exc, TimeoutError):
        return _timed_out(policy, proxy)
    if isinstance(exc, http1.ConnectFailed):
        reason = Reason.PROXY_UNREACHABLE if exc.to_proxy else Reason.CONNECTION_FAILED
        return _Reply(None, Rejection(reason, _unreachable(exc.host, exc.port, exc.error)))
    if isinstance(exc, http1.TooManyRedirects):
        return _Reply(None, Rejection(Reason.TOO_MANY_REDIRECTS, request.url[:120]))
    if isinstance(exc, http1.BadUrl):
        return _Reply(None, Rejection(Reason.BAD_URL, f"{request.url[:120]!r}: {exc}"))
    return _Reply(None, Rejection(Reason.CONNECTION_FAILED, str(exc) or type(exc).__name__))


def _headers(request: HttpRequest, proxy: Proxy | None) -> dict[str, str]:
    headers = {"Accept": "application/ocsp-response"}
    if request.method == "POST":
        headers["Content-Type"] = "application/ocsp-request"
    credentials = _proxy_headers(proxy)
    if credentials and request.url.startswith("http:"):  # https: only in CONNECT, never inside
        headers.update(credentials)
    return headers


def _timed_out(policy: FetchPolicy, proxy: Proxy | None, seconds: float | None = None) -> _Reply:
    """A timeout: of the whole exchange, or of the connection alone (`seconds`)."""
    through = f" (through proxy {proxy.url})" if proxy else ""
    if seconds is None:
        return _Reply(None, Rejection(Reason.TIMEOUT, f"after {policy.total_timeout:g} s{through}"))
    said = f"no connection within {seconds:g} s{through}"
    return _Reply(None, Rejection(Reason.TIMEOUT, said))


async def _send_aiohttp(
    http: aiohttp.ClientSession,
    request: HttpRequest,
    policy: FetchPolicy,
    proxy: Proxy | None = None,
) -> _Reply:
    """One HTTP exchange on aiohttp, through `proxy` if given."""
    import aiohttp
    from yarl import URL

    try:
        url = URL(request.url, encoded=True)  # keep %2B %2F %3D exactly as RFC 5019 wants
        async with http.request(
            request.method,
            url,
            data=request.body,
            headers=_headers(request, proxy),
            max_redirects=policy.max_redirects,
            timeout=_timeout(policy),
            proxy=URL(proxy.url) if proxy else None,
            proxy_headers=_proxy_headers(proxy),
        ) as response:
            if proxy is not None and _from_proxy(
                response.status, response.content_type, response.headers
            ):
                return _proxy_answer(proxy, response.status, response.reason)
            return await _read(response, policy.max_size)
    except aiohttp.TooManyRedirects:
        return _Reply(None, Rejection(Reason.TOO_MANY_REDIRECTS, request.url[:120]))
    except aiohttp.ConnectionTimeoutError:  # the connection (through the proxy too) alone
        return _timed_out(policy, proxy, policy.connect_timeout)
    except TimeoutError:
        return _timed_out(policy, proxy)
    except aiohttp.ClientProxyConnectionError as exc:
        return _Reply(None, Rejection(Reason.PROXY_UNREACHABLE, _describe(exc)))
    except aiohttp.ClientHttpProxyError as exc:
        assert proxy is not None
        return _proxy_answer(proxy, exc.status, exc.message)
    except ValueError as exc:  # a URL yarl or aiohttp cannot use (aiohttp.InvalidURL too)
        return _Reply(None, Rejection(Reason.BAD_URL, f"{request.url[:120]!r}: {exc}"))
    except (aiohttp.ClientError, OSError) as exc:
        return _Reply(None, Rejection(Reason.CONNECTION_FAILED, _describe(exc)))


def _proxy_headers(proxy: Proxy | None) -> dict[str, str] | None:
    if proxy is None or proxy.user is None:
        return None
    token = base64.b64encode(f"{proxy.user}:{proxy.password}".encode()).decode("ascii")
    return {"Proxy-Authorization": f"Basic {token}"}


def _from_proxy(status: int, media_type: str, headers: Mapping[str, str]) -> bool:
    """Whether an answer through a proxy is the proxy's own error page, not the responder's
    (`headers`: case-insensitive, or with lower-case names).

    A proxy marks what it forwards with a Via header (RFC 9110 7.6.3); its own error pages
    carry none (tinyproxy), or say so (Squid's X-Squid-Error). 407 is always the proxy's.
    """
    if status < 400 or media_type == "application/ocsp-response":
        return False
    return status == 407 or "x-squid-error" in headers or "via" not in headers


def _proxy_answer(proxy: Proxy, status: int, words: str | None) -> _Reply:
    reason = Reason.PROXY_REFUSED if status in _PROXY_REFUSALS else Reason.PROXY_ERROR
    detail = f"{proxy.url} answered HTTP {status} {words or ''}".rstrip()
    return _Reply(None, Rejection(reason, detail))


def _describe(exc: BaseException) -> str:
    """A short account of a transport failure, e.g. '127.0.0.1:80: Connection refused'."""
    import aiohttp  # loaded already: only aiohttp's failures come here

    if isinstance(exc, aiohttp.ClientConnectorError):
        return _unreachable(exc.host, exc.port, exc.os_error)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _unreachable(host: str, port: int | None, error: OSError) -> str:
    """What went wrong connecting, in words: the resolver's own for a name that cannot be
    looked up (its codes are negative: os.strerror(-2) is "Unknown error -2")."""
    if isinstance(error, socket.gaierror) or not error.errno or error.errno < 0:
        problem = error.strerror or str(error) or "connection failed"
    else:
        problem = os.strerror(error.errno)
    return f"{host}:{port}: {problem}"


async def _read(response: aiohttp.ClientResponse, max_size: int) -> _Reply:
    if response.content_length is not None and response.content_length > max_size:
        return _too_large(response.content_length, max_size)
    body = bytearray()
    async for chunk in response.content.iter_chunked(16384):
        body += chunk
        if len(body) > max_size:
            return _too_large(len(body), max_size)
    answer = HttpAnswer(response.status, response.headers.get("Content-Type"), bytes(body))
    return _Reply(answer, None, _retry_after(response.headers.get("Retry-After")))


def _too_large(size: int, max_size: int) -> _Reply:
    return _Reply(None, Rejection(Reason.TOO_LARGE, f"over {max_size} bytes (at least {size})"))


def _retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None (also for
    a date no clock can hold: a year or a zone of twenty digits)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # '²' is a digit to isdigit, not to float
        return float(value)  # inf past 10**308: the fetch policy's cap decides
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    except (TypeError, ValueError, OverflowError):
        return None


_ISSUER_WORDS = {
    Reason.TIMEOUT: "the caIssuers server did not answer in time",
    Reason.CONNECTION_FAILED: "could not connect to the caIssuers server",
    Reason.TOO_MANY_REDIRECTS: "the caIssuers server redirected too often",
    Reason.PROXY_ERROR: "the HTTP proxy answered with its own error page (it could not reach "
    "the caIssuers server?)",
    Reason.BAD_URL: "the caIssuers URL is malformed; nothing was sent",
}


def _issuer_problem(reply: _Reply) -> str:
    """Why an issuer download failed, in words about the caIssuers server (a reason's own
    summary speaks of the OCSP responder, which is not the server at fault here)."""
    if reply.answer is not None:
        return f"HTTP {reply.answer.status}"
    rejection = reply.rejection
    if rejection is None:
        return "no answer"
    words = _ISSUER_WORDS.get(rejection.reason, rejection.reason.summary)
    return f"{words}: {rejection.detail}" if rejection.detail else words


async def fetch_issuer(
    url: str,
    *,
    clients: Clients | None = None,
    policy: FetchPolicy = DEFAULT_FETCH_POLICY,
    cache: MutableMapping[str, bytes] | None = None,
) -> list[x509.Certificate]:
    """The certificates at an AIA caIssuers URL (DER or PKCS#7), size-capped and cached.

    Raises InputError with one line saying what went wrong and what to do instead.
    """
    if cache is not None and url in cache:
        return parse_certificates(cache[url], source=url)
    request = HttpRequest("GET", url)
    try:
        proxy = choose_proxy(url, policy.proxy, os.environ)
    except ProxyError as exc:
        raise InputError(f"{exc}; fix or unset it") from None
    async with _using(clients) as http:
        reply = await _send_aiohttp(http.session, request, policy, proxy)
    if reply.answer is None or reply.answer.status != 200:
        problem = _issuer_problem(reply)
        raise InputError(f"could not download the issuer from {url} ({problem}); {_ISSUER_HINT}")
    try:
        certs = parse_certificates(reply.answer.body, source=f"issuer at {url}")
    except InputError as exc:
        raise InputError(f"{exc}; {_ISSUER_HINT}") from None
    if cache is not None:
        cache[url] = reply.answer.body
    return certs
