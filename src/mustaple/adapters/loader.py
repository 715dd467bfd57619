"""From certificate files to a `Target`: read the bundle, find the issuer that signed the leaf.

The issuer is taken from, in order: an explicit issuer file, the rest of the bundle
(fullchain.pem), or the leaf's AIA caIssuers URL (downloaded, size-capped, cached). Whichever it
is, its signature on the leaf is checked. Every failure is an InputError with one line saying
what is wrong and what to do.

The downloads of one process go through its `IssuerDownloads`: one at a time per URL (the
loads of the other certificates of that CA wait for it and take what it gave), and a failed one
is remembered, so that a caIssuers URL that hangs costs one timeout, not one per certificate.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography import x509

from mustaple.adapters.fetch import HttpFetcher
from mustaple.adapters.files import MissingInputError, read_input
from mustaple.adapters.patience import FilesHang, NoThread, Patient
from mustaple.adapters.signatures import SignatureCache
from mustaple.core.certs import (
    Target,
    ca_issuer_urls,
    check_extensions,
    display_name,
    find_issuer,
    is_ca,
    issuer_encoded_differently,
    parse_certificates,
    signed_by,
)
from mustaple.core.clock import Clock, utc_now
from mustaple.core.errors import InputError
from mustaple.core.fetchtypes import DEFAULT_FETCH_POLICY, Fetcher, FetchPolicy
from mustaple.core.issuers import issuer_over_aia

__all__ = [
    "FailedDownload",
    "IssuerDownloads",
    "IssuerNotFound",
    "LoadFailed",
    "Loaded",
    "Reader",
    "load_file",
    "load_or_fail",
    "load_target",
    "vanished",
]


@dataclass(frozen=True)
class Loaded:
    """A certificate file as loaded: its Target, and whether the file carries the issuer."""

    target: Target
    bundle_has_issuer: bool
    key: str | None = None  # the leaf's `cert_key`, when the loader (a worker) computed it


@dataclass(frozen=True, slots=True)
class LoadFailed:
    """A file that could not be loaded: the `InputError` line, or an unexpected error."""

    message: str
    unexpected: bool = False  # a bug of ours, or input nobody foresaw
    downloads: tuple[FailedDownload, ...] = ()  # the issuer downloads that failed for it
    hung: bool = False  # its read did not answer (`FilesHang`): what was held stays
    no_thread: bool = False  # ... for want of a thread to read in (`NoThread`), not a hang


_T = TypeVar("_T")

# How a load reads a file (path, what it is for the error line): its bytes, or InputError
Reader = Callable[[str | Path, str], Awaitable[bytes]]


async def read_now(path: str | Path, what: str) -> bytes:
    """`read_input`, in this thread."""
    return read_input(path, what)


async def read_patiently(path: str | Path, what: str, *, patience: timedelta) -> bytes:
    """`read_input` given `patience` (`patiently`)."""
    return await patiently(functools.partial(read_input, path, what), path, patience)


async def patiently(work: Callable[[], _T], where: str | Path, patience: timedelta) -> _T:
    """`work()` (a one-shot command's work on the file `where`) in a daemon thread given
    `patience`: an InputError saying so when it has not answered by then (a file system that
    hangs; the thread ends with the process)."""
    try:
        return await Patient(patience).run(lambda at: work(), str(where))
    except FilesHang as exc:
        raise InputError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class FailedDownload:
    """A caIssuers URL whose download failed, asked through the `proxy` setting given (None:
    the environment's), and the line saying why."""

    url: str
    proxy: str | None
    message: str


class IssuerNotFound(InputError):
    """No issuer over AIA; `downloads` are the URLs whose download failed (another try may
    do better), beside those that gave a certificate that did not sign the leaf."""

    def __init__(self, message: str, downloads: tuple[FailedDownload, ...]) -> None:
        super().__init__(message)
        self.downloads = downloads


@dataclass(frozen=True, slots=True)
class _Failure:
    message: str
    at: datetime
    count: int  # failures in a row


class IssuerDownloads:
    """The issuer downloads of one process (a keeper, a worker): one at a time per URL and
    proxy setting, what came kept for good (`cache`, by URL), and what failed remembered.

    A failure is remembered for the rest of the batch of loads it happened in (a prime, a
    scan: `begin` starts one), whatever its length, and after that for `backoff(failures in a
    row)`, measured from the failure by `clock`; without `backoff`, for good."""

    def __init__(
        self, *, clock: Clock = utc_now, backoff: Callable[[int], timedelta] | None = None
    ) -> None:
        self.cache: dict[str, bytes] = {}
        self._clock, self._backoff = clock, backoff
        self._failed: dict[tuple[str, str | None], _Failure] = {}
        self._locks: dict[tuple[str, str | None], asyncio.Lock] = {}
        self._batch = clock()

    def begin(self, now: datetime) -> None:
        """A new batch of loads, at `now`: a URL whose back-off has passed is asked again."""
        self._batch = now

    async def download(
        self, url: str, policy: FetchPolicy, fetcher: Fetcher
    ) -> list[x509.Certificate]:
        """The certificates at `url`, downloaded by `fetcher` unless they came before;
        InputError (the line of the failure) when it failed, now or in a download remembered."""
        route = (url, policy.proxy)
        async with self._locks.setdefault(route, asyncio.Lock()):
            failure = self._failed.get(route)
            if url not in self.cache and failure is not None and self._holds(failure):
                raise InputError(failure.message)
            try:
                certs = await fetcher.issuer(url, policy=policy, cache=self.cache)
            except InputError as exc:
                count = failure.count + 1 if failure is not None else 1
                self._failed[route] = _Failure(str(exc), self._clock(), count)
                raise
            self._failed.pop(route, None)
            return certs

    def learn(self, downloads: Iterable[FailedDownload]) -> datetime | None:
        """Take in `downloads` that failed (in a worker process, or here: then they are known
        already); when the first of them may be asked again (None: not in this run)."""
        retries = []
        for failed in downloads:
            route = (failed.url, failed.proxy)
            known = self._failed.get(route)
            if known is None or not self._holds(known):  # asked by a worker, and failed
                count = known.count + 1 if known is not None else 1
                known = self._failed[route] = _Failure(failed.message, self._clock(), count)
            if self._backoff is not None:
                retries.append(known.at + self._backoff(known.count))
        return min(retries, default=None)

    def _holds(self, failure: _Failure) -> bool:
        return self._backoff is None or failure.at + self._backoff(failure.count) > self._batch


async def load_target(
    cert_path: str | Path,
    issuer_path: str | Path | None = None,
    *,
    patience: timedelta,
    fetcher: Fetcher | None = None,
    policy: FetchPolicy = DEFAULT_FETCH_POLICY,
    downloads: IssuerDownloads | None = None,
) -> Target:
    """The Target for the first certificate in `cert_path`, for a one-shot command: each
    file read given `patience` (`read_patiently`)."""
    loaded = await load_file(
        cert_path,
        issuer_path,
        fetcher=fetcher,
        policy=policy,
        downloads=downloads,
        read=functools.partial(read_patiently, patience=patience),
    )
    return loaded.target


async def load_file(
    cert_path: str | Path,
    issuer_path: str | Path | None = None,
    *,
    fetcher: Fetcher | None = None,
    policy: FetchPolicy = DEFAULT_FETCH_POLICY,
    downloads: IssuerDownloads | None = None,
    issuers: MutableMapping[x509.Certificate, x509.Certificate] | None = None,
    signatures: SignatureCache | None = None,
    read: Reader = read_now,
) -> Loaded:
    """`cert_path` (read once, by `read`) with the Target for its first certificate; an
    issuer found over AIA is downloaded by `fetcher` (default: over HTTP, with clients of
    its own) through `downloads` (default: its own, for this call).

    `issuers` makes every Target with the same issuer share one certificate object (memory,
    and caches keyed by the issuer): a found issuer equal to one in it is replaced by it.
    `signatures` skips the check of a leaf's signature this state directory saw verify before.
    """
    signed = signatures.signed_by if signatures is not None else signed_by
    certs = parse_certificates(await read(cert_path, "certificate"), source=str(cert_path))
    leaf = certs[0]
    check_extensions(leaf, str(cert_path))
    _refuse_leaf_after_its_ca(certs, str(cert_path))
    if issuer_path is not None:
        data = await read(issuer_path, "issuer certificate")
        given = parse_certificates(data, source=str(issuer_path))
        issuer = find_issuer(leaf, given, signed)
        if issuer is None:
            _refuse_differently_encoded(leaf, given, str(issuer_path))
            raise InputError(
                f"{issuer_path}: this issuer did not sign {display_name(leaf)} "
                f"(the certificate names {leaf.issuer.rfc4514_string()} as its issuer)"
            )
    else:
        issuer = find_issuer(leaf, certs[1:], signed)
        if issuer is None:
            _refuse_differently_encoded(leaf, certs[1:], str(cert_path))
            issuer = await _issuer_from_aia(
                leaf,
                str(cert_path),
                fetcher or HttpFetcher(),
                policy=policy,
                downloads=downloads or IssuerDownloads(),
            )
    if issuers is not None:
        issuer = issuers.setdefault(issuer, issuer)
    return Loaded(Target(leaf, issuer), issuer in certs[1:])


async def load_or_fail(
    cert_path: str | Path,
    issuer_path: str | Path | None,
    *,
    fetcher: Fetcher,
    policy: FetchPolicy,
    downloads: IssuerDownloads,
    issuers: MutableMapping[x509.Certificate, x509.Certificate],
    signatures: SignatureCache | None = None,
    read: Reader = read_now,
) -> Loaded | LoadFailed:
    """`load_file`, with any failure as a value: a fault in one file stays in that file
    (a read that did not answer: `hung`).

    `cert_path` is a file that was there a moment ago (listed and looked at): when it is not
    there any more, the failure says that it disappeared, not that it was never there."""
    try:
        return await load_file(
            cert_path,
            issuer_path,
            fetcher=fetcher,
            policy=policy,
            downloads=downloads,
            issuers=issuers,
            signatures=signatures,
            read=read,
        )
    except NoThread as exc:
        return LoadFailed(str(exc), hung=True, no_thread=True)
    except FilesHang as exc:
        return LoadFailed(str(exc), hung=True)
    except MissingInputError as exc:
        return LoadFailed(vanished(cert_path) if exc.path == Path(cert_path) else str(exc))
    except IssuerNotFound as exc:
        return LoadFailed(str(exc), downloads=exc.downloads)
    except InputError as exc:
        return LoadFailed(str(exc))
    except Exception as exc:
        return LoadFailed(f"{type(exc).__name__}: {exc}", unexpected=True)


def vanished(cert_path: str | Path) -> str:
    """The line for a certificate file that disappeared between its listing and its reading."""
    return (
        f"{cert_path}: the file disappeared while it was being read (a renewal may have "
        "replaced it); the next prime, or the keeper's next pass, takes it"
    )


def _refuse_leaf_after_its_ca(certs: list[x509.Certificate], source: str) -> None:
    """InputError when the first certificate is a CA's and a leaf comes after it (the
    chain in the wrong order): a server sends the first as its own, and so would be
    stapled; the line said only that the CA's issuer was missing."""
    if not is_ca(certs[0]):
        return
    leaf = next((cert for cert in certs[1:] if not is_ca(cert)), None)
    if leaf is not None:
        raise InputError(
            f"{source}: the first certificate is a CA's ({display_name(certs[0])}) and the "
            f"server's own ({display_name(leaf)}) comes after it: a server sends the first "
            "as its own, and mustaple staples for it; put the server's certificate first, "
            "then its chain (certbot's fullchain.pem is in that order)"
        )


def _refuse_differently_encoded(
    leaf: x509.Certificate, candidates: list[x509.Certificate], source: str
) -> None:
    """Raise InputError when the issuer is there but its name is encoded otherwise."""
    if issuer_encoded_differently(leaf, candidates) is not None:
        raise InputError(
            f"{source}: the issuer {leaf.issuer.rfc4514_string()} is in this file, but "
            f"{display_name(leaf)} names it encoded differently (for example PrintableString "
            "against UTF8String); Firefox and GnuTLS compare names as bytes and find no issuer "
            "for it, so the CA must reissue the certificate"
        )


async def _issuer_from_aia(
    leaf: x509.Certificate,
    source: str,
    fetcher: Fetcher,
    *,
    policy: FetchPolicy,
    downloads: IssuerDownloads,
) -> x509.Certificate:
    """Download the issuer named by the leaf's caIssuers URLs; the first that signed it wins."""
    urls = ca_issuer_urls(leaf)
    if not urls:
        raise InputError(
            f"{source}: the issuer of {display_name(leaf)} is not in this file and the "
            "certificate names no caIssuers URL; use fullchain.pem, or name the issuer's file "
            "(`issuer` in the [[certificates]] entry, --issuer FILE on the command line)"
        )
    failed: list[FailedDownload] = []

    async def download(url: str) -> list[x509.Certificate]:
        try:
            return await downloads.download(url, policy, fetcher)
        except InputError as exc:
            failed.append(FailedDownload(url, policy.proxy, str(exc)))
            raise

    issuer, problems = await issuer_over_aia(leaf, urls, download)
    if issuer is not None:
        return issuer
    raise IssuerNotFound(f"{source}: no issuer found: {'; '.join(problems)}", tuple(failed))
