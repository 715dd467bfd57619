"""The retry and failover plan (`mustaple.core.fetchplan`), table-tested: no socket, no clock, no
sleep. Each row is the steps taken so far and the step the plan must say next; the HTTP path
that carries the steps out is tested in test_fetch.py and test_behaviours.py."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from conftest import build_response
from mustaple.core.certs import Target
from mustaple.core.fetchplan import (
    Exchange,
    Route,
    Send,
    Step,
    Stop,
    Taken,
    Wait,
    judged,
    next_step,
    routes_for,
)
from mustaple.core.fetchtypes import FetchPolicy
from mustaple.core.reasons import Reason, Rejection
from mustaple.core.request import HttpRequest
from mustaple.core.verify import DEFAULT_POLICY, HttpAnswer, Staple, verify
from mustaple.testing import CA, Leaf

A, B = "http://a.test/", "http://b.test/"
REQUEST = bytes(range(48))
ROUTES = routes_for(REQUEST, [A], [B, A])  # A given, then the certificate's own B (A once)
GET_A, POST_A = ROUTES[0].requests
GET_B, POST_B = ROUTES[1].requests
POLICY = FetchPolicy(attempts_per_url=3, backoff_base=0.5, backoff_max=1.5, retry_after_max=60)

SERVER_ERROR = Rejection(Reason.HTTP_SERVER_ERROR, "HTTP 500")
TRY_LATER = Rejection(Reason.TRY_LATER, "tryLater")
REFUSED = Rejection(Reason.CONNECTION_FAILED, "a.test:80: Connection refused")
TIMEOUT = Rejection(Reason.TIMEOUT, "after 10 s")
BAD_SIGNATURE = Rejection(Reason.BAD_SIGNATURE, "does not verify")
NOT_FOUND = Rejection(Reason.HTTP_CLIENT_ERROR, "HTTP 404")


def failed(request: HttpRequest, rejection: Rejection, status: int | None = None) -> Exchange:
    return Exchange(request, rejection, status)


def slow_down(request: HttpRequest, status: int, retry_after: float | None) -> Exchange:
    return Exchange(
        request, Rejection(Reason.HTTP_SERVER_ERROR, f"HTTP {status}"), status, retry_after
    )


def round_of(url: str, rejection: Rejection, status: int | None = None) -> list[Taken]:
    """A failed round on A or B: GET, then POST when the GET failure asks for it."""
    get, post = (GET_A, POST_A) if url == A else (GET_B, POST_B)
    taken: list[Taken] = [failed(get, rejection, status)]
    if (status is not None and status >= 500) or rejection.reason is Reason.HTTP_CLIENT_ERROR:
        taken.append(failed(post, rejection, status))
    return taken


TABLE: list[tuple[str, list[Taken], Step]] = [
    ("first GET on the given URL", [], Send(A, GET_A)),
    ("HTTP 500 to GET: POST at once", [failed(GET_A, SERVER_ERROR, 500)], Send(A, POST_A)),
    ("a refused connection: no POST, a pause", [failed(GET_A, REFUSED)], Wait(0.5)),
    ("503 asks to slow down: no POST", [slow_down(GET_A, 503, None)], Wait(0.5)),
    ("429 with Retry-After: pause at least that", [slow_down(GET_A, 429, 7)], Wait(0.5, 7)),
    ("Retry-After is capped", [slow_down(GET_A, 503, 3600)], Wait(0.5, 60)),
    ("after the pause, round two", [*round_of(A, TIMEOUT), Wait(0.5)], Send(A, GET_A)),
    (
        "backoff doubles",
        [*round_of(A, TIMEOUT), Wait(0.5), *round_of(A, TIMEOUT)],
        Wait(1.0),
    ),
    (
        "three rounds, then the next URL, without a pause",
        [*round_of(A, TIMEOUT), Wait(0.5), *round_of(A, TIMEOUT), Wait(1), *round_of(A, TIMEOUT)],
        Send(B, GET_B),
    ),
    ("not retryable: the next URL at once", round_of(A, NOT_FOUND), Send(B, GET_B)),
    (
        "tryLater in an answer is retried like a timeout",
        [failed(GET_A, TRY_LATER, 200)],
        Wait(0.5),
    ),
    (
        "every URL failed: the responder's own words are reported, not the later refusal",
        [failed(GET_A, BAD_SIGNATURE, 200), *round_of(B, NOT_FOUND, 404)],
        Stop(None, NOT_FOUND, B),
    ),
    (
        "an answered rejection outranks a later unanswered one",
        [
            failed(GET_A, BAD_SIGNATURE, 200),
            failed(GET_B, REFUSED),
            Wait(0.5),
            failed(GET_B, REFUSED),
            Wait(1.0),
            failed(GET_B, REFUSED),
        ],
        Stop(None, BAD_SIGNATURE, A),
    ),
]


@pytest.mark.parametrize(
    ("taken", "expected"), [row[1:] for row in TABLE], ids=[r[0] for r in TABLE]
)
def test_the_plan_says_what_to_do_next(taken: list[Taken], expected: Step) -> None:
    assert next_step(ROUTES, taken, POLICY) == expected


def test_the_backoff_is_capped_and_jittered() -> None:
    policy = FetchPolicy(attempts_per_url=9, backoff_base=0.5, backoff_max=1.5)
    taken: list[Taken] = []
    pauses = []
    for _ in range(4):
        taken.append(failed(GET_A, REFUSED))
        step = next_step(ROUTES, taken, policy)
        assert isinstance(step, Wait)
        pauses.append(step.backoff)
        taken.append(step)
    assert pauses == [0.5, 1.0, 1.5, 1.5]
    assert Wait(1.5).seconds(0.5) == 0.75  # full jitter: a share of the backoff
    assert Wait(1.5, 7).seconds(0.99) == 7  # never sooner than Retry-After


def test_a_staple_stops_the_fetch(target: Target, leaf: Leaf, ca: CA, now: datetime) -> None:
    der = build_response(leaf, ca.issuing, this_update=now, next_update=now + timedelta(days=2))
    staple = verify(der, target, now)
    assert isinstance(staple, Staple)
    taken: list[Taken] = [*round_of(A, TIMEOUT), Wait(0.5), Exchange(GET_A, staple, 200)]
    assert next_step(ROUTES, taken, POLICY) == Stop(staple, None, A)
    answer = HttpAnswer(200, "application/ocsp-response", der)
    assert judged(answer, target, now, DEFAULT_POLICY, None) == staple
    hour = timedelta(hours=1)
    older = build_response(leaf, ca.issuing, this_update=now - hour, next_update=now + hour)
    stale = HttpAnswer(200, "application/ocsp-response", older)
    assert isinstance(judged(stale, target, now, DEFAULT_POLICY, None), Staple)
    assert isinstance(judged(stale, target, now, DEFAULT_POLICY, staple), Rejection)


def test_a_bad_url_is_never_sent_to() -> None:
    routes = routes_for(REQUEST, ["ftp://a.test/"], ["http://b.test/"])
    assert routes[0] == Route("ftp://a.test/", (), routes[0].refusal)
    refusal = routes[0].refusal
    assert refusal is not None
    assert refusal.reason is Reason.BAD_URL
    assert "fix it in `urls`" in refusal.message
    assert next_step(routes, [], POLICY) == Send(B, routes[1].requests[0])
    alone = routes_for(REQUEST, [], ["ftp://a.test/"])
    stop = next_step(alone, [], POLICY)
    assert isinstance(stop, Stop)
    assert stop.rejection is not None
    assert "certificate's AIA OCSP URL" in stop.rejection.message
    assert stop.url == "ftp://a.test/"


def test_a_long_request_goes_by_post_alone() -> None:
    (route,) = routes_for(bytes(400), [A], [])
    assert [r.method for r in route.requests] == ["POST"]
    refused = [failed(route.requests[0], SERVER_ERROR, 500)]
    assert next_step([route], refused, POLICY) == Wait(0.5)


def test_a_history_out_of_order_is_refused() -> None:
    with pytest.raises(ValueError, match="a Wait was due"):
        next_step(ROUTES, [failed(GET_A, REFUSED), failed(GET_A, REFUSED)], POLICY)
