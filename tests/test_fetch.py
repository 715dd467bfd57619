"""Fetching over real HTTP on loopback: order of URLs, GET/POST, retries, attempts.

The misbehaving responder's transport faults (hangs, resets, drips) are in test_behaviours.py.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import unquote, urlsplit

import pytest
from aiohttp import web
from cryptography.x509 import ocsp

from conftest import Handler, LoopbackServer, build_response, ocsp_reply
from mustaple.adapters.fetch import FetchPolicy, FetchResult, _retry_after, fetch_staple
from mustaple.core.certs import Target, make_target
from mustaple.core.reasons import Reason
from mustaple.core.request import encode_request, get_url, make_cert_id
from mustaple.core.verify import Staple
from mustaple.testing import CA, Leaf

Serve = Callable[[Handler], LoopbackServer]
DAY = timedelta(days=1)
FAST = FetchPolicy(total_timeout=2.0, connect_timeout=1.0)


def run_fetch(target: Target, **kwargs: object) -> tuple[FetchResult, list[float]]:
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    kwargs.setdefault("policy", FAST)
    result = asyncio.run(fetch_staple(target, sleep=fake_sleep, **kwargs))  # type: ignore[arg-type]
    return result, delays


@pytest.fixture(scope="module")
def lone(ca: CA) -> Leaf:
    """A leaf with no OCSP URL of its own: only the URLs a test gives are tried."""
    return ca.issue("lone.test", ocsp_urls=[])


@pytest.fixture
def good_body(ca: CA, leaf: Leaf, now: datetime) -> bytes:
    return build_response(leaf, ca.issuing, this_update=now, next_update=now + timedelta(days=2))


def answering(body: bytes) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return ocsp_reply(body)

    return handler


def test_get_carries_the_request_in_the_path(
    serve: Serve, target: Target, good_body: bytes
) -> None:
    server = serve(answering(good_body))
    result, _ = run_fetch(target, urls=[server.url])
    assert result.ok
    assert result.url == server.url
    method, path = server.hits[0].split(" ", 1)
    request = ocsp.load_der_ocsp_request(base64.b64decode(unquote(path.lstrip("/"))))
    assert method == "GET"
    assert request.serial_number == target.serial
    (attempt,) = result.attempts
    assert (attempt.method, attempt.http_status, attempt.reason) == ("GET", 200, None)
    assert attempt.latency > 0


@pytest.mark.parametrize("hash_name", ["sha1", "sha256"])
def test_get_path_arrives_exactly_as_built(
    serve: Serve, target: Target, good_body: bytes, hash_name: str
) -> None:
    raw_paths: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        raw_paths.append(request.raw_path)
        return ocsp_reply(good_body)

    server = serve(handler)
    run_fetch(target, urls=[server.url + "ocsp/"], hash_name=hash_name)
    der = encode_request(make_cert_id(target.issuer, target.serial, hash_name))
    assert raw_paths == [urlsplit(get_url(server.url + "ocsp/", der)).path]
    assert "=" not in raw_paths[0]
    assert "+" not in raw_paths[0]


def test_post_fallback_when_get_is_refused(serve: Serve, target: Target, good_body: bytes) -> None:
    async def post_only(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405)
        assert request.content_type == "application/ocsp-request"
        assert "Expect" not in request.headers
        ocsp.load_der_ocsp_request(await request.read())
        return ocsp_reply(good_body)

    server = serve(post_only)
    result, delays = run_fetch(target, urls=[server.url])
    assert result.ok
    assert [(a.method, a.reason) for a in result.attempts] == [
        ("GET", "http-client-error"),
        ("POST", None),
    ]
    assert delays == []


def test_retry_with_backoff_honours_retry_after(serve: Serve, lone: Leaf) -> None:
    async def busy(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, headers={"Retry-After": "7"})

    server = serve(busy)
    target = make_target(lone.cert, lone.issuer)
    result, delays = run_fetch(target, urls=[server.url], rng=lambda: 1.0)
    assert not result.ok
    assert result.rejection is not None
    assert result.rejection.reason is Reason.HTTP_SERVER_ERROR
    assert [a.method for a in result.attempts] == ["GET"] * 3  # no POST after a 503
    assert delays == [7.0, 7.0]


def test_full_jitter_backoff_doubles(serve: Serve, lone: Leaf) -> None:
    async def try_later(request: web.Request) -> web.StreamResponse:
        return ocsp_reply(b"\x30\x03\x0a\x01\x03")  # responseStatus tryLater

    server = serve(try_later)
    policy = FetchPolicy(attempts_per_url=5, backoff_base=1.0, backoff_max=5.0)
    target = make_target(lone.cert, lone.issuer)
    result, delays = run_fetch(target, urls=[server.url], policy=policy, rng=lambda: 0.5)
    assert result.rejection is not None
    assert result.rejection.reason is Reason.TRY_LATER
    assert delays == [0.5, 1.0, 2.0, 2.5]


def test_unretryable_rejection_moves_to_the_next_url(
    serve: Serve, target: Target, good_body: bytes
) -> None:
    async def unauthorized(request: web.Request) -> web.StreamResponse:
        return ocsp_reply(b"\x30\x03\x0a\x01\x06")

    bad, good = serve(unauthorized), serve(answering(good_body))
    result, delays = run_fetch(target, urls=[bad.url, good.url])
    assert result.ok
    assert result.url == good.url
    assert [a.reason for a in result.attempts] == ["unauthorized", None]
    assert delays == []


def test_overrides_come_before_the_certificates_urls(serve: Serve, ca: CA, now: datetime) -> None:
    own, override = serve(answering(b"")), serve(answering(b""))
    leaf = ca.issue("order.test", ocsp_urls=[own.url, override.url])
    target = make_target(leaf.cert, leaf.issuer)
    body = build_response(leaf, ca.issuing, this_update=now, next_update=now + timedelta(days=1))
    override.handler = answering(body)
    result, _ = run_fetch(target, urls=[override.url])
    assert result.ok
    assert own.hits == []  # the override answered first; the duplicate was not tried twice


def test_a_staple_older_than_the_one_held_is_refused(
    serve: Serve, ca: CA, leaf: Leaf, now: datetime, good_body: bytes
) -> None:
    """The AIA URL (nothing listens there) is tried too, but the real answer is reported."""
    target = make_target(leaf.cert, leaf.issuer)
    later = now + timedelta(minutes=1)
    newer = build_response(leaf, ca.issuing, this_update=later, next_update=later + 3 * DAY)
    server = serve(answering(newer))
    held, _ = run_fetch(target, urls=[server.url])
    assert isinstance(held.staple, Staple)
    server.handler = answering(good_body)
    result, _ = run_fetch(target, urls=[server.url], current=held.staple)
    assert result.rejection is not None
    assert result.rejection.reason is Reason.OLDER_THAN_CURRENT
    assert result.url == server.url
    assert result.attempts[-1].reason == "connection-failed"


def test_no_url_at_all(ca: CA) -> None:
    leaf = ca.issue("nourl.test", ocsp_urls=[])
    result, _ = run_fetch(make_target(leaf.cert, leaf.issuer))
    assert result.rejection is not None
    assert result.rejection.reason is Reason.NO_OCSP_URL
    assert result.attempts == ()
    assert "can never be served correctly" in result.rejection.message


def test_refused_connection(target: Target) -> None:
    policy = FetchPolicy(attempts_per_url=2)
    result, delays = run_fetch(target, urls=["http://127.0.0.1:9/"], policy=policy)
    assert result.rejection is not None
    assert result.rejection.reason is Reason.CONNECTION_FAILED
    assert "127.0.0.1:9" in result.rejection.message
    assert len(delays) == 1


def test_retry_after_forms() -> None:
    assert _retry_after("120") == 120.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412500.0) == 0.0
    assert _retry_after("soon") is None
    assert _retry_after(None) is None
    assert _retry_after("\u00b9") is None  # a superscript 1: a digit to str.isdigit only


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="attempts_per_url"):
        FetchPolicy(attempts_per_url=0)
    with pytest.raises(ValueError, match="positive"):
        FetchPolicy(total_timeout=0)
