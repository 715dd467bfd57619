"""The retry and failover plan of one fetch, as a pure function, in the manner of h11: no
socket, no clock, no sleep; the fetcher (`mustaple.adapters.fetch`) carries the steps out.

`next_step(routes, taken, policy)` reads the steps taken so far (each exchange with what it
gave, and each pause) and says what to do next: `Send` a request, `Wait` a moment, or `Stop`
with the staple, or with the rejection to report. The rules:

- the responder URLs in order (overrides first, then the certificate's own, once each); a URL
  that `urls.url_problem` refuses is never sent to;
- on each URL, rounds of GET then POST: POST at once when GET failed in a way that says the
  responder cannot do GET, unless it asked us to slow down (429, 503);
- another round on the same URL only after a retryable failure, up to `attempts_per_url`
  rounds, after a pause of full-jitter exponential backoff, never shorter than Retry-After
  (capped);
- the first usable staple ends the fetch; without one, the rejection reported is the latest
  that came with an HTTP answer (a responder's own words say more than a refused connection to
  a fallback URL tried afterwards), else the latest.

`judged` is how every answer is taken the moment it arrives: judged by `verify.judge`, and
refused when it is not better than the staple in hand (`verify.compare`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from mustaple.core.certs import Target
from mustaple.core.fetchtypes import FetchPolicy
from mustaple.core.reasons import Reason, Rejection
from mustaple.core.request import HttpRequest, plan_requests
from mustaple.core.urls import url_problem
from mustaple.core.verify import HttpAnswer, Policy, Staple, compare, judge

__all__ = [
    "Exchange",
    "Route",
    "Send",
    "Step",
    "Stop",
    "Taken",
    "Wait",
    "judged",
    "next_step",
    "routes_for",
]

# When GET fails in one of these ways, the same URL is tried at once with POST.
_POST_FALLBACK = {
    Reason.HTTP_CLIENT_ERROR,
    Reason.HTTP_SERVER_ERROR,
    Reason.CONTENT_TYPE,
    Reason.EMPTY_BODY,
    Reason.MALFORMED,
    Reason.MALFORMED_REQUEST,
    Reason.TOO_MANY_REDIRECTS,
}
# HTTP statuses that mean "later", not "GET unsupported".
_SLOW_DOWN = {429, 503}


@dataclass(frozen=True, slots=True)
class Route:
    """One responder URL as the plan takes it: its requests in order, or why it is refused."""

    url: str
    requests: tuple[HttpRequest, ...]
    refusal: Rejection | None = None


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request sent and what it gave: a staple, or a rejection (with the HTTP status and
    the Retry-After seconds when an answer came)."""

    request: HttpRequest
    outcome: Staple | Rejection
    http_status: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Send:
    """Send `request` to the responder at `url` (the route's URL)."""

    url: str
    request: HttpRequest


@dataclass(frozen=True, slots=True)
class Wait:
    """Pause before the next round: a random share of `backoff`, never less than `at_least`."""

    backoff: float
    at_least: float = 0.0

    def seconds(self, draw: float) -> float:
        """The pause for a random `draw` in [0, 1)."""
        return max(draw * self.backoff, self.at_least)


@dataclass(frozen=True, slots=True)
class Stop:
    """The fetch is over: the staple, or the rejection to report, and the URL it came from."""

    staple: Staple | None
    rejection: Rejection | None
    url: str | None


Step = Send | Wait | Stop
Taken = Exchange | Wait  # a step as carried out: a Send becomes the Exchange it gave


def routes_for(request_der: bytes, overrides: Sequence[str], own: Sequence[str]) -> list[Route]:
    """The routes of a fetch: `overrides` then the certificate's `own` URLs, once each."""
    routes = []
    for url in dict.fromkeys([*overrides, *own]):
        problem = url_problem(url)
        if problem is None:
            routes.append(Route(url, tuple(plan_requests(url, request_der))))
        else:
            refusal = Rejection(Reason.BAD_URL, f"{problem}; {_url_origin(url, overrides)}")
            routes.append(Route(url, (), refusal))
    return routes


def _url_origin(url: str, overrides: Sequence[str]) -> str:
    """Where a bad URL came from, so a person knows what to fix."""
    if url in overrides:
        return "fix it in `urls` (configuration) or --url"
    return "it is the certificate's AIA OCSP URL: give a working one in `urls` or --url"


def next_step(routes: Sequence[Route], taken: Sequence[Taken], policy: FetchPolicy) -> Step:
    """What to do after `taken` (the steps carried out so far, in order) on `routes`."""
    history = iter(taken)
    report = _Report()
    for route in routes:
        if route.refusal is not None:
            report.note(route.url, route.refusal, answered=False)
            continue
        step = _on_route(route, history, policy, report)
        if step is not None:
            return step
    return Stop(None, report.rejection, report.url)


def _on_route(
    route: Route, history: Iterator[Taken], policy: FetchPolicy, report: _Report
) -> Step | None:
    """The next step on `route`, or None when it is done with no staple."""
    last: Exchange | None = None  # the last exchange of the round before
    for round_no in range(policy.attempts_per_url):
        if last is not None:
            assert isinstance(last.outcome, Rejection)
            if not last.outcome.retryable:
                return None
            if _take(history, Wait) is None:
                return _pause(round_no - 1, last.retry_after, policy)
        last = None
        for request in route.requests:
            exchange = _take(history, Exchange)
            if exchange is None:
                return Send(route.url, request)
            if isinstance(exchange.outcome, Staple):
                return Stop(exchange.outcome, None, route.url)
            report.note(route.url, exchange.outcome, answered=exchange.http_status is not None)
            last = exchange
            if not _worth_post(request, exchange.outcome, exchange.http_status):
                break
        if last is None:
            return None
    return None


_T = TypeVar("_T", Exchange, Wait)


def _take(history: Iterator[Taken], kind: type[_T]) -> _T | None:
    """The next step taken, which must be a `kind`; None when none was taken yet."""
    step = next(history, None)
    if step is None or isinstance(step, kind):
        return step
    raise ValueError(f"a {kind.__name__} was due, but {step!r} was taken")


def _pause(round_no: int, retry_after: float | None, policy: FetchPolicy) -> Wait:
    """Full jitter exponential backoff after round `round_no` (from 0), at least Retry-After
    (capped)."""
    backoff = min(policy.backoff_max, policy.backoff_base * 2.0 ** min(round_no, 64))
    if retry_after is None:
        return Wait(backoff)
    return Wait(backoff, min(retry_after, policy.retry_after_max))


def _worth_post(request: HttpRequest, rejection: Rejection, http_status: int | None) -> bool:
    """After a failed GET, POST at once, unless the responder asked us to slow down."""
    if http_status in _SLOW_DOWN:
        return False
    return request.method == "GET" and rejection.reason in _POST_FALLBACK


class _Report:
    """The rejection a failed fetch reports: the latest, preferring one that came with an
    HTTP answer."""

    def __init__(self) -> None:
        self.rejection: Rejection | None = None
        self.url: str | None = None
        self.answered = False

    def note(self, url: str, rejection: Rejection, *, answered: bool) -> None:
        if answered or not self.answered:
            self.rejection, self.url, self.answered = rejection, url, answered


def judged(
    answer: HttpAnswer, target: Target, now: datetime, policy: Policy, current: Staple | None
) -> Staple | Rejection:
    """An answer as a fetch takes it: judged, and refused unless better than `current`."""
    outcome = judge(answer, target, now, policy)
    if isinstance(outcome, Staple):
        return compare(outcome, current) or outcome
    return outcome
