"""What a fetch is asked and what it gives, without doing one: the value types shared by the
fetcher, the configuration, the keeper and the reports (`FetchPolicy`, `FetchJob`, `Attempt`,
`FetchResult`), and `Fetcher`, the seam through which the keeper fetches (`fetch.HttpFetcher`
over HTTP; a test hands in its own, such as `mustaple.testing.MemoryFetcher`). Pure: importing
it loads no I/O library, so `config` and `report` stay pure.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography import x509

from mustaple.core.certs import Target
from mustaple.core.clock import Clock
from mustaple.core.proxy import check_proxy_url
from mustaple.core.reasons import Rejection
from mustaple.core.verify import DEFAULT_POLICY, Policy, Staple

__all__ = ["DEFAULT_FETCH_POLICY", "Attempt", "FetchJob", "FetchPolicy", "FetchResult", "Fetcher"]


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Timeouts (seconds), size cap (bytes) and retry rules for talking to responders."""

    connect_timeout: float = 5.0
    total_timeout: float = 10.0
    max_size: int = 65536
    max_redirects: int = 3
    attempts_per_url: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 60.0
    proxy: str | None = None  # None: from the environment (HTTP_PROXY...); "": no proxy

    def __post_init__(self) -> None:
        if self.attempts_per_url < 1:
            raise ValueError("attempts_per_url must be at least 1")
        if min(self.connect_timeout, self.total_timeout) <= 0 or self.max_size <= 0:
            raise ValueError("timeouts and max_size must be positive")
        if self.proxy:
            check_proxy_url(self.proxy)

    @classmethod
    def within(
        cls, timeout: float, *, attempts_per_url: int = 3, proxy: str | None = None
    ) -> FetchPolicy:
        """A one-shot command's policy: `timeout` seconds for each HTTP exchange (of which
        its connection at most 5 s)."""
        connect = min(timeout, 5.0)
        return cls(connect, timeout, attempts_per_url=attempts_per_url, proxy=proxy)


DEFAULT_FETCH_POLICY = FetchPolicy()


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP exchange with a responder and how it ended."""

    url: str
    method: str
    started: datetime
    latency: float  # seconds
    http_status: int | None
    reason: str | None  # a Reason code, None when the answer was a usable staple
    message: str
    proxy: str | None = None  # the proxy the request went through (no credentials)

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class FetchResult:
    """The staple obtained, or the last rejection, with every attempt on the way."""

    staple: Staple | None
    rejection: Rejection | None
    attempts: tuple[Attempt, ...]
    url: str | None  # the base URL the staple (or the last rejection) came from

    @property
    def ok(self) -> bool:
        return self.staple is not None


@dataclass(frozen=True, slots=True)
class FetchJob:
    """What one fetch is asked: a staple for `target`, valid under `verify_policy` and better
    than `current`, from `urls` then the certificate's own, asked with `hash_name`."""

    target: Target
    urls: Sequence[str] = ()
    hash_name: str = "sha1"
    policy: FetchPolicy = DEFAULT_FETCH_POLICY
    verify_policy: Policy = DEFAULT_POLICY
    current: Staple | None = None


class Fetcher(Protocol):
    """How the keeper gets staples and issuer certificates, handed to it (`Keeper(fetcher=)`)."""

    async def fetch(self, job: FetchJob, *, clock: Clock, rng: Callable[[], float]) -> FetchResult:
        """The staple `job` asks for, or why there is none; never raises for a misbehaving
        responder."""
        ...

    async def issuer(
        self, url: str, *, policy: FetchPolicy, cache: MutableMapping[str, bytes] | None
    ) -> list[x509.Certificate]:
        """The certificates at an AIA caIssuers URL; InputError (one line) when it fails."""
        ...
