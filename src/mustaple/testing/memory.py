"""A `Fetcher` with no network (`MemoryFetcher`), for testing the keeper's logic (schedules,
outages, delivery, restarts) without a socket: the test says what each fetch gets.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from mustaple.core.certs import Target
from mustaple.core.clock import Clock
from mustaple.core.errors import InputError
from mustaple.core.fetchplan import judged
from mustaple.core.fetchtypes import Attempt, FetchJob, FetchPolicy, FetchResult
from mustaple.core.reasons import Rejection
from mustaple.core.verify import HttpAnswer, Staple

__all__ = ["Answer", "MemoryFetcher"]

# What one fetch gets: the DER of an OCSP response (judged as the HTTP fetcher judges what
# arrives), or the Rejection of a failure on the way (a timeout, a refused connection...).
Answer = Callable[[Target, datetime], bytes | Rejection]


@dataclass
class MemoryFetcher:
    """Answers each fetch with `answer(target, now)` as one attempt at the first URL; keeps
    every target fetched in `fetched`. Downloads no issuer: certificate files must hold it."""

    answer: Answer
    fetched: list[Target] = field(default_factory=list)

    async def fetch(self, job: FetchJob, *, clock: Clock, rng: Callable[[], float]) -> FetchResult:
        target = job.target
        self.fetched.append(target)
        url = [*job.urls, *target.ocsp_urls][0]  # the keeper fetches no certificate without one
        now = clock()
        given = self.answer(target, now)
        if isinstance(given, Rejection):
            outcome: Staple | Rejection = given
            status = None
        else:
            answer = HttpAnswer(200, "application/ocsp-response", given)
            outcome, status = judged(answer, target, now, job.verify_policy, job.current), 200
        if isinstance(outcome, Staple):
            attempt = Attempt(url, "POST", now, 0.0, status, None, "valid staple")
            return FetchResult(outcome, None, (attempt,), url)
        attempt = Attempt(url, "POST", now, 0.0, status, outcome.code, outcome.message)
        return FetchResult(None, outcome, (attempt,), url)

    async def issuer(
        self, url: str, *, policy: FetchPolicy, cache: MutableMapping[str, bytes] | None
    ) -> list[x509.Certificate]:
        raise InputError(f"{url}: a MemoryFetcher downloads nothing; put the issuer in the file")
