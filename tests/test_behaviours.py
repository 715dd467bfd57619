"""Every behaviour of the misbehaving responder ends in the right outcome.

OCSP-level behaviours are fetched over HTTP and judged with `verify.judge`; transport-level
ones go through `fetch.fetch_staple` with tiny timeouts and a sleep that only records.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from mustaple.adapters.fetch import FetchPolicy, FetchResult, fetch_staple
from mustaple.core.certs import Target, make_target
from mustaple.core.reasons import Note, Reason, Rejection
from mustaple.core.request import CertId, cert_id_for, encode_request, get_url, make_cert_id
from mustaple.core.verify import HttpAnswer, Signer, Staple, compare, judge
from mustaple.testing import CA, Behaviour, OCSPResponder, ResponderThread, Served
from outside import wait_for

B = Behaviour
Outcome = tuple[ocsp.OCSPCertStatus, Signer, tuple[Note, ...]]
JUDGED = {
    B.HTML_200: Reason.CONTENT_TYPE,
    B.WRONG_CONTENT_TYPE: Reason.CONTENT_TYPE,
    B.EMPTY_BODY: Reason.EMPTY_BODY,
    B.TRUNCATED: Reason.MALFORMED,
    B.TRAILING_GARBAGE: Reason.TRAILING_DATA,
    B.VERSION_2: Reason.UNSUPPORTED_VERSION,
    B.CRITICAL_EXTENSION: Reason.UNKNOWN_CRITICAL_EXTENSION,
    B.NOT_BASIC: Reason.NOT_BASIC,
    B.MALFORMED_REQUEST: Reason.MALFORMED_REQUEST,
    B.INTERNAL_ERROR: Reason.INTERNAL_ERROR,
    B.TRY_LATER: Reason.TRY_LATER,
    B.SIG_REQUIRED: Reason.SIG_REQUIRED,
    B.UNAUTHORIZED: Reason.UNAUTHORIZED,
    B.UNKNOWN_STATUS: Reason.CERT_STATUS_UNKNOWN,
    B.WRONG_SERIAL: Reason.CERT_NOT_IN_RESPONSE,
    B.WRONG_ISSUER_KEY_HASH: Reason.WRONG_ISSUER,
    B.BAD_SIGNATURE: Reason.BAD_SIGNATURE,
    B.UNRELATED_SIGNER: Reason.SIGNER_UNKNOWN,
    B.DELEGATE_NO_EKU: Reason.DELEGATE_NO_OCSP_SIGNING,
    B.DELEGATE_EXPIRED: Reason.DELEGATE_EXPIRED,
    B.DELEGATE_OTHER_CA: Reason.DELEGATE_NOT_ISSUED_BY_ISSUER,
    B.DELEGATE_IS_CA: Reason.DELEGATE_IS_CA,
    B.EXPIRED: Reason.EXPIRED,
    B.FUTURE_THIS_UPDATE: Reason.THIS_UPDATE_IN_FUTURE,
    B.FUTURE_PRODUCED_AT: Reason.PRODUCED_IN_FUTURE,
    B.NO_NEXT_UPDATE: Reason.NO_NEXT_UPDATE,
}
JUDGED_RSA = {B.MD5_SIGNATURE: Reason.WEAK_ALGORITHM}
GOOD, REVOKED = ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED
# behaviour -> (certificate status, who signed, notes) of the staple
ACCEPTED = {
    B.GOOD: (GOOD, Signer.ISSUER, ()),
    B.REVOKED: (REVOKED, Signer.ISSUER, ()),
    B.DELEGATED: (GOOD, Signer.DELEGATED, ()),
    B.SEVERAL_RESPONSES: (GOOD, Signer.ISSUER, (Note.SEVERAL_RESPONSES,)),
}
ACCEPTED_RSA = {B.PSS_SIGNATURE: (GOOD, Signer.ISSUER, ())}
COMPARED = {B.STALE: Reason.OLDER_THAN_CURRENT}  # valid alone, refused after a newer one
FETCHED = {
    B.HANG: "timeout",
    B.SLOW_DRIP: "timeout",
    B.RESET: "connection-failed",
    B.HTTP_500: "http-server-error",
    B.HTTP_503: "http-server-error",
    B.OVERSIZED: "too-large",
    B.REDIRECT_LOOP: "too-many-redirects",
}
FAST = FetchPolicy(connect_timeout=0.5, total_timeout=0.5, attempts_per_url=2)


@pytest.fixture(scope="module")
def ec_ca() -> CA:
    return CA(key_type="ec", name="behaviours EC CA")


@pytest.fixture(scope="module")
def rsa_ca() -> CA:
    return CA(key_type="rsa", name="behaviours RSA CA")


@pytest.fixture(scope="module")
def responder(ec_ca: CA) -> Iterator[ResponderThread]:
    with ResponderThread(ec_ca) as running:
        yield running


@pytest.fixture(scope="module")
def rsa_responder(rsa_ca: CA) -> Iterator[ResponderThread]:
    with ResponderThread(rsa_ca) as running:
        yield running


def enrol(responder: ResponderThread, ca: CA, behaviour: Behaviour) -> Target:
    """A new leaf, registered with `responder`, which will answer for it with `behaviour`."""
    leaf = ca.issue("behaviour.example.test", key_type="ec")
    responder.add(leaf)
    responder.set_behaviour(behaviour, serial=leaf.cert.serial_number)
    return make_target(leaf.cert, leaf.issuer)


def ask(url: str, cert_id: CertId, *, method: str = "GET") -> HttpAnswer:
    """One plain HTTP exchange (urllib), as the answer would reach the validator."""
    request_der = encode_request(cert_id)
    if method == "GET":
        request = urllib.request.Request(get_url(url, request_der))
    else:
        headers = {"Content-Type": "application/ocsp-request"}
        request = urllib.request.Request(url, data=request_der, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return HttpAnswer(response.status, response.headers["Content-Type"], response.read())


def judged(responder: ResponderThread, target: Target) -> Staple | Rejection:
    return judge(ask(responder.url, cert_id_for(target)), target, datetime.now(UTC))


def accepted(responder: ResponderThread, ca: CA, behaviour: Behaviour) -> Staple:
    result = judged(responder, enrol(responder, ca, behaviour))
    assert isinstance(result, Staple), result
    return result


def test_every_behaviour_is_covered_once() -> None:
    groups: list[set[Behaviour]] = [
        set(JUDGED),
        set(JUDGED_RSA),
        set(ACCEPTED),
        set(ACCEPTED_RSA),
        set(COMPARED),
        set(FETCHED),
    ]
    assert set().union(*groups) == set(Behaviour)
    assert sum(len(g) for g in groups) == len(Behaviour)


def test_behaviour_values_are_kebab_case() -> None:
    for behaviour in Behaviour:
        assert behaviour.value == behaviour.name.lower().replace("_", "-")


# --- Judged over HTTP ---------------------------------------------------------------------------


@pytest.mark.parametrize(("behaviour", "expected"), JUDGED.items(), ids=[b.value for b in JUDGED])
def test_rejected(
    behaviour: Behaviour, expected: Reason, responder: ResponderThread, ec_ca: CA
) -> None:
    result = judged(responder, enrol(responder, ec_ca, behaviour))
    assert isinstance(result, Rejection)
    assert result.reason == expected, result.message


@pytest.mark.parametrize(
    ("behaviour", "expected"), JUDGED_RSA.items(), ids=[b.value for b in JUDGED_RSA]
)
def test_rejected_rsa(
    behaviour: Behaviour, expected: Reason, rsa_responder: ResponderThread, rsa_ca: CA
) -> None:
    result = judged(rsa_responder, enrol(rsa_responder, rsa_ca, behaviour))
    assert isinstance(result, Rejection)
    assert result.reason == expected, result.message


@pytest.mark.parametrize(
    ("behaviour", "expected"), ACCEPTED.items(), ids=[b.value for b in ACCEPTED]
)
def test_accepted(
    behaviour: Behaviour, expected: Outcome, responder: ResponderThread, ec_ca: CA
) -> None:
    staple = accepted(responder, ec_ca, behaviour)
    assert (staple.status, staple.signer, staple.notes) == expected


@pytest.mark.parametrize(
    ("behaviour", "expected"), ACCEPTED_RSA.items(), ids=[b.value for b in ACCEPTED_RSA]
)
def test_accepted_rsa(
    behaviour: Behaviour, expected: Outcome, rsa_responder: ResponderThread, rsa_ca: CA
) -> None:
    staple = accepted(rsa_responder, rsa_ca, behaviour)
    assert (staple.status, staple.signer, staple.notes) == expected


def test_revoked_says_when_and_why(responder: ResponderThread, ec_ca: CA) -> None:
    staple = accepted(responder, ec_ca, B.REVOKED)
    assert staple.revocation_reason == x509.ReasonFlags.key_compromise
    assert staple.revocation_time is not None
    assert staple.revocation_time < staple.produced_at
    assert not staple.good


def test_stale_is_older_than_what_was_served(responder: ResponderThread, ec_ca: CA) -> None:
    target = enrol(responder, ec_ca, B.GOOD)
    current = judged(responder, target)
    responder.set_behaviour(B.STALE, serial=target.serial)
    stale = judged(responder, target)
    assert isinstance(current, Staple)
    assert isinstance(stale, Staple), "a stale answer is valid on its own"
    rejection = compare(stale, current)
    assert rejection is not None
    assert rejection.reason == COMPARED[B.STALE]
    fetched, _ = run_fetch(responder, target, current=current)
    assert fetched.rejection is not None
    assert fetched.rejection.reason == COMPARED[B.STALE]


# --- Through fetch_staple -----------------------------------------------------------------------


def run_fetch(
    responder: ResponderThread, target: Target, current: Staple | None = None
) -> tuple[FetchResult, list[float]]:
    """fetch_staple from `responder`, with a sleep that only records its delays."""
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    coroutine = fetch_staple(
        target, urls=[responder.url], policy=FAST, current=current, sleep=sleep
    )
    return asyncio.run(coroutine), delays


def fetch(
    responder: ResponderThread, ca: CA, behaviour: Behaviour
) -> tuple[FetchResult, list[float]]:
    """fetch_staple for a new leaf answered with `behaviour`; also the delays it slept."""
    return run_fetch(responder, enrol(responder, ca, behaviour))


@pytest.mark.parametrize(("behaviour", "code"), FETCHED.items(), ids=[b.value for b in FETCHED])
def test_fetch_fails(
    behaviour: Behaviour, code: str, responder: ResponderThread, ec_ca: CA
) -> None:
    result, _ = fetch(responder, ec_ca, behaviour)
    assert not result.ok
    assert result.rejection is not None
    assert result.rejection.code == code
    assert {attempt.reason for attempt in result.attempts} == {code}
    assert all(attempt.latency < FAST.total_timeout + 0.5 for attempt in result.attempts)


def test_fetch_gives_up_after_the_rounds(responder: ResponderThread, ec_ca: CA) -> None:
    result, delays = fetch(responder, ec_ca, B.RESET)
    assert [a.method for a in result.attempts] == ["GET"] * FAST.attempts_per_url
    assert len(delays) == FAST.attempts_per_url - 1


def test_retry_after_is_honoured(responder: ResponderThread, ec_ca: CA) -> None:
    result, delays = fetch(responder, ec_ca, B.HTTP_503)
    assert delays == [1.0]
    assert [(a.method, a.http_status) for a in result.attempts] == [("GET", 503), ("GET", 503)]


def test_fetch_good(responder: ResponderThread, ec_ca: CA) -> None:
    result, delays = fetch(responder, ec_ca, B.GOOD)
    assert result.ok
    assert result.staple is not None
    assert result.staple.good
    assert delays == []


# --- The responder itself -----------------------------------------------------------------------


def test_get_and_post_get_the_same_answer(responder: ResponderThread, ec_ca: CA) -> None:
    target = enrol(responder, ec_ca, B.GOOD)
    cert_id = cert_id_for(target)
    by_get = ask(responder.url, cert_id)
    by_post = ask(responder.url, cert_id, method="POST")
    assert by_get.body == by_post.body, "the good answer is cached"
    assert isinstance(judge(by_post, target, datetime.now(UTC)), Staple)
    served = [r for r in responder.requests if r.serial == target.serial]
    assert [(r.method, r.behaviour) for r in served] == [("GET", B.GOOD), ("POST", B.GOOD)]


def test_get_under_a_path_prefix_with_sha256(responder: ResponderThread, ec_ca: CA) -> None:
    target = enrol(responder, ec_ca, B.GOOD)
    answer = ask(responder.url + "ocsp/v1", cert_id_for(target, "sha256"))
    result = judge(answer, target, datetime.now(UTC))
    assert isinstance(result, Rejection)  # answered, but not stapleable: see cert-id-not-sha1
    assert result.reason is Reason.CERT_ID_NOT_SHA1


def test_unregistered_serial_is_unauthorized(responder: ResponderThread, ec_ca: CA) -> None:
    leaf = ec_ca.issue("stranger.example.test")
    target = make_target(leaf.cert, leaf.issuer)
    result = judged(responder, target)
    assert isinstance(result, Rejection)
    assert result.reason == Reason.UNAUTHORIZED
    assert responder.requests[-1].behaviour == B.UNAUTHORIZED


def test_other_issuer_is_unauthorized(responder: ResponderThread, ec_ca: CA) -> None:
    target = enrol(responder, ec_ca, B.GOOD)
    other = CA(name="another root")
    answer = ask(responder.url, make_cert_id(other.cert, target.serial))
    result = judge(answer, target, datetime.now(UTC))
    assert isinstance(result, Rejection)
    assert result.reason == Reason.UNAUTHORIZED


def test_unreadable_request_is_malformed(responder: ResponderThread) -> None:
    with urllib.request.urlopen(responder.url + "not-an-ocsp-request", timeout=5) as response:
        body = response.read()
    assert ocsp.load_der_ocsp_response(body).response_status == (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )
    assert responder.requests[-1].serial is None
    assert responder.requests[-1].behaviour == B.MALFORMED_REQUEST


def test_global_behaviour_and_per_serial_override(ec_ca: CA) -> None:
    with ResponderThread(ec_ca) as running:
        usual = enrol(running, ec_ca, B.GOOD)
        other = ec_ca.issue("other.example.test")
        running.add(other)
        running.set_behaviour(B.TRY_LATER)
        result = judged(running, make_target(other.cert, other.issuer))
        assert isinstance(result, Rejection)
        assert result.reason == Reason.TRY_LATER
        assert isinstance(judged(running, usual), Staple)


def test_rsa_only_behaviours_need_an_rsa_signer(ec_ca: CA) -> None:
    responder = OCSPResponder(ec_ca)
    for behaviour in (B.MD5_SIGNATURE, B.PSS_SIGNATURE):
        with pytest.raises(ValueError, match="RSA"):
            responder.set_behaviour(behaviour)


def test_leaf_of_another_ca_is_refused(ec_ca: CA) -> None:
    leaf = CA(name="elsewhere").issue()
    with pytest.raises(ValueError, match="not issued by this responder's CA"):
        OCSPResponder(ec_ca).add(leaf)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def get_body(session: aiohttp.ClientSession, url: str, cert_id: CertId) -> bytes:
    async with session.get(get_url(url, encode_request(cert_id))) as response:
        return await response.read()


def test_good_answer_is_cached_then_renewed(ec_ca: CA) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    leaf = ec_ca.issue("cached.example.test")
    target = make_target(leaf.cert, leaf.issuer)

    async def three_fetches() -> list[bytes]:
        async with (
            OCSPResponder(ec_ca, clock=clock, cache_for=timedelta(minutes=5)) as running,
            aiohttp.ClientSession() as session,
        ):
            running.add(leaf)
            bodies = [await get_body(session, running.url, cert_id_for(target)) for _ in "ab"]
            clock.now += timedelta(minutes=5)
            bodies.append(await get_body(session, running.url, cert_id_for(target)))
        return bodies

    first, again, renewed = asyncio.run(three_fetches())
    assert first == again
    assert renewed != first
    newer = judge(HttpAnswer(200, "application/ocsp-response", renewed), target, clock.now)
    older = judge(HttpAnswer(200, "application/ocsp-response", first), target, clock.now)
    assert isinstance(newer, Staple)
    assert isinstance(older, Staple)
    assert newer.this_update - older.this_update == timedelta(minutes=5)


def test_stop_ends_a_hanging_answer_at_once(ec_ca: CA) -> None:
    leaf = ec_ca.issue("hang.example.test")
    cert_id = make_cert_id(leaf.issuer, leaf.cert.serial_number)

    async def hang_then_stop() -> tuple[float, list[Served]]:
        running = OCSPResponder(ec_ca)
        await running.start()
        running.add(leaf)
        running.set_behaviour(B.HANG)
        async with aiohttp.ClientSession() as session:
            pending = asyncio.create_task(get_body(session, running.url, cert_id))
            while not running.requests:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            await running.stop()
            elapsed = time.monotonic() - started
            with pytest.raises(aiohttp.ClientError):
                await pending
        return elapsed, running.requests

    elapsed, requests = asyncio.run(hang_then_stop())
    assert elapsed < 1.0
    assert [r.behaviour for r in requests] == [B.HANG]


def test_thread_reports_misuse(ec_ca: CA) -> None:
    thread = ResponderThread(ec_ca)
    with pytest.raises(RuntimeError, match="not started"):
        _ = thread.url
    with thread, pytest.raises(RuntimeError, match="already started"):
        thread.start()


def test_a_held_request_whose_client_went_away_is_no_longer_held(
    responder: ResponderThread, ec_ca: CA
) -> None:
    """A fetch cut short (a SIGHUP ends a pass's fetching) while its request is held: the
    request no longer waits, and `release` answers the next one that does. It counted as
    held, and `release` failed on it (InvalidStateError): a test lost its place in the order
    it meant to give the processes fetching."""
    target = enrol(responder, ec_ca, Behaviour.GOOD)
    url = get_url(responder.url, encode_request(cert_id_for(target)))
    responder.hold()
    _, _, where, path = url.split("/", 3)
    host, port = where.split(":")
    with socket.create_connection((host, int(port))) as cut:
        cut.sendall(f"GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        wait_for(lambda: responder.held == 1)
    wait_for(lambda: responder.held == 0)
    with pytest.raises(ValueError, match="no request is held"):
        responder.release(Behaviour.GOOD)
    answers: list[HttpAnswer] = []
    asking = threading.Thread(
        target=lambda: answers.append(ask(responder.url, cert_id_for(target)))
    )
    asking.start()
    wait_for(lambda: responder.held == 1)
    responder.release(Behaviour.GOOD)
    asking.join(10)
    assert isinstance(judge(answers[0], target, datetime.now(UTC)), Staple)
