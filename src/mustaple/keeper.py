"""The keeper: the one orchestrator that keeps every staple fresh and delivered.

One pass (`tick`) does, in order: refresh every certificate that is due (fetching outside any
lock, with bounded concurrency overall and per responder host), apply the outcomes (store the
new staple, schedule the next refresh or retry, raise events), handle expiry and alerts, and
deliver what changed to the sinks in one batch per sink. `scan` picks up new, changed and
removed certificate files; a new certificate is due at once, and a certificate whose stored
staple is still valid has it delivered at once, however old, before anything is fetched.

Decisions come from the pure core (`verify`, `schedule`); the keeper only wires them to the
adapters (`fetch`, `store`, sinks, hooks). The clock and the dice are injected, so tests drive
days of refreshes without sleeping.

In fleet mode a `Coordinator` (`mustaple.fleet`) is asked before each due fetch whether to
fetch, to adopt a staple another member fetched (validated here all the same), or to wait for
one; it is told every outcome, and hands in staples announced by other members (`adopt`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import glob
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mustaple.certs import Target
from mustaple.config import CertEntry, Config
from mustaple.delivery import Action, Delivered, Delivery, Sink
from mustaple.errors import InputError
from mustaple.events import HOOK_FOR, Event, run_hook
from mustaple.fetch import USER_AGENT, FetchResult, fetch_staple, utc_now
from mustaple.loader import load_file
from mustaple.reasons import Reason, Rejection
from mustaple.request import CertId, make_cert_id
from mustaple.schedule import Alert, alert_level, next_refresh, next_retry
from mustaple.store import AttemptRecord, CertStatus, Store, StoredStaple, cert_key
from mustaple.verify import Staple, compare, verify

__all__ = [
    "Coordinator",
    "Keeper",
    "Managed",
    "Observer",
    "Turn",
    "attempt_records",
    "configured_files",
]

log = logging.getLogger("mustaple")
Clock = Callable[[], datetime]
# Store writes are grouped, this many to a transaction (one fsync), and always written before
# anything is delivered: a crash loses at most the outcomes of one group, never a staple a
# server was given.
WRITE_GROUP = 256
# Called after every refresh with the certificate and the fetch result (metrics use it).
Observer = Callable[["Managed", FetchResult], None]


@dataclass
class Managed:
    """One certificate the keeper looks after, and what it knows about it."""

    path: Path
    entry: CertEntry
    target: Target
    stamp: tuple[int, int]  # (mtime_ns, size) of the file when loaded
    bundle_has_issuer: bool
    next_due: datetime | None  # None: nothing to do until the file changes
    held: Staple | None = None  # the freshest valid good staple
    revoked: Staple | None = None  # a valid answer saying revoked
    failures: int = 0  # consecutive failed refreshes
    last_rejection: Rejection | None = None
    last_attempt: datetime | None = None
    alert: Alert = Alert.OK
    sent: tuple[Action, bytes | None] | None = None  # what every sink has confirmed
    known: bool = False  # a staple of ours was stored or held: a staple file may be ours

    @functools.cached_property
    def key(self) -> str:
        """The store key: the leaf's SHA-256 fingerprint, worked out once."""
        return cert_key(self.target.leaf)

    @property
    def name(self) -> str:
        return self.target.name

    def state(self) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.next_due is None and self.held is None:
            return "no-ocsp-url"
        if self.held is not None:
            return "failing" if self.failures else "good"
        return "failing" if self.failures else "pending"


@dataclass(frozen=True)
class Turn:
    """A coordinator's answer for one due certificate: fetch (the default), or wait until a
    time (it may have adopted a shared staple, through `Keeper.adopt`, meanwhile). `token` is
    the coordinator's own (a lease), handed back to `settle`."""

    wait_until: datetime | None = None
    token: object = None


class Coordinator(Protocol):
    """Who fetches what, across a fleet (see the module docstring)."""

    async def claim(self, managed: Managed) -> Turn: ...

    async def settle(self, managed: Managed, turn: Turn, result: FetchResult | None) -> None: ...


@dataclass
class _Batch:
    """Deliveries gathered in one pass, per sink, and what each certificate should become."""

    per_sink: dict[str, list[Delivery]] = field(default_factory=dict)
    wanted: dict[str, tuple[Managed, tuple[Action, bytes | None]]] = field(default_factory=dict)


class Keeper:
    """Keeps the staples of the certificates in `config` fresh and delivered to `sinks`."""

    def __init__(
        self,
        config: Config,
        *,
        store: Store,
        sinks: Mapping[str, Sink],
        clock: Clock = utc_now,
        dice: Callable[[], float] = random.random,
        observers: Sequence[Observer] = (),
        coordinator: Coordinator | None = None,
    ) -> None:
        self.config, self.policy = config, config.policy
        self.store, self.sinks = store, dict(sinks)
        self.clock, self.dice = clock, dice
        self.observers = list(observers)
        self.coordinator = coordinator
        self.managed: dict[Path, Managed] = {}
        self._index: dict[str, dict[CertId, Managed]] = {}  # by hash name; see `find`
        self._by_key: dict[str, list[Managed]] | None = None  # see `by_key`
        self._delivering = asyncio.Lock()
        self._problems: dict[Path, str] = {}
        self._issuer_cache: dict[str, bytes] = {}
        self._issuers: dict[x509.Certificate, x509.Certificate] = {}
        self._all = asyncio.Semaphore(self.policy.concurrency)
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._session: aiohttp.ClientSession | None = None
        self._hooks: set[asyncio.Task[None]] = set()
        self._writes: list[Callable[[], None]] = []

    async def __aenter__(self) -> Keeper:
        connector = aiohttp.TCPConnector(limit=self.policy.concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": USER_AGENT}
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._flush()
        if self._hooks:
            await asyncio.wait(self._hooks, timeout=self.config.hooks.timeout.total_seconds())
        if self._session is not None:
            await self._session.close()

    # --- Which certificates -------------------------------------------------------------------

    def entry_for(self, path: Path) -> CertEntry:
        """The configured entry matching `path`, or a default one (all sinks)."""
        for entry in self.config.certificates:
            if any(fnmatch.fnmatch(str(path), p) or Path(p) == path for p in entry.paths):
                return entry
        return CertEntry(paths=(str(path),))

    async def scan(self) -> list[Managed]:
        """Pick up new, changed and removed certificate files; return the new or changed."""
        wanted = configured_files(self.config)
        for path in set(self.managed) - set(wanted):
            log.info("%s: no longer configured or present (%s)", self.managed[path].name, path)
            del self.managed[path]
            self._forget()
        added = []
        for path, entry in wanted.items():
            current = self.managed.get(path)
            stamp = _stamp(path)
            if stamp is None or (current and current.stamp == stamp and current.entry == entry):
                continue
            managed = await self._load(path, entry, stamp)
            if managed is not None:
                added.append(managed)
        return added

    async def _load(self, path: Path, entry: CertEntry, stamp: tuple[int, int]) -> Managed | None:
        try:
            loaded = await load_file(
                path,
                entry.issuer,
                session=self._session,
                policy=self.policy.fetch,
                cache=self._issuer_cache,
                issuers=self._issuers,
            )
        except InputError as exc:
            self.managed.pop(path, None)
            self._forget()
            if self._problems.get(path) != str(exc):
                log.error("%s", exc)
                self._problems[path] = str(exc)
            return None
        self._problems.pop(path, None)
        managed = Managed(path, entry, loaded.target, stamp, loaded.bundle_has_issuer, self.clock())
        self._restore(managed)
        self.managed[path] = managed
        self._forget()
        return managed

    def _restore(self, managed: Managed) -> None:
        """Take back a stored staple that is still valid; schedule the first refresh."""
        now = self.clock()
        if not managed.target.ocsp_urls and not managed.entry.urls:
            managed.next_due = None
            level = logging.ERROR if managed.target.must_staple else logging.WARNING
            log.log(level, "%s: %s", managed.name, managed.target.no_url_message())
            return
        stored = self.store.load(managed.key)
        if stored is None:
            return
        managed.known = True
        outcome = verify(stored.der, managed.target, now, self.policy.verify)
        if isinstance(outcome, Staple) and outcome.good:
            managed.held = outcome
            due = next_refresh(outcome, stored.fetched_at, self.dice, self.policy.schedule)
            managed.next_due = min(due, now) if due <= now else due
            log.info(
                "%s: restored a valid staple from the state (until %s)",
                managed.name,
                _time(outcome.effective_expiry),
            )

    # --- One pass -------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Refresh what is due, handle expiry and alerts, deliver what changed."""
        now = self.clock()
        due = [m for m in self.managed.values() if m.next_due is not None and m.next_due <= now]
        await self._refresh_all(due)
        self._watch_expiry(self.clock())
        self._flush()
        await self.deliver()

    def find(self, cert_id: CertId) -> Managed | None:
        """The managed certificate a CertID names (any supported hash), or None."""
        index = self._index.get(cert_id.hash_name)
        if index is None:
            index = {
                make_cert_id(m.target.issuer, m.target.serial, cert_id.hash_name): m
                for m in self.managed.values()
            }
            self._index[cert_id.hash_name] = index
        return index.get(cert_id)

    def by_key(self, key: str) -> list[Managed]:
        """The managed certificates stored under `key` (one, unless files repeat a leaf)."""
        if self._by_key is None:
            self._by_key = {}
            for managed in self.managed.values():
                self._by_key.setdefault(managed.key, []).append(managed)
        return self._by_key.get(key, [])

    def _forget(self) -> None:
        """Drop the lookup indexes: the managed certificates changed."""
        self._index.clear()
        self._by_key = None

    def next_wakeup(self) -> datetime | None:
        """When the next certificate falls due."""
        dues = [m.next_due for m in self.managed.values() if m.next_due is not None]
        return min(dues, default=None)

    async def _refresh_all(self, due: Sequence[Managed]) -> None:
        """Refresh `due`: per responder host, `per_host` workers take turns (no task per
        certificate, so a pass over 100k certificates costs no 100k tasks)."""
        by_host: dict[str, list[Managed]] = {}
        for managed in due:
            by_host.setdefault(_host(managed), []).append(managed)

        async def drain(queue: Iterator[Managed]) -> None:
            for managed in queue:
                await self._take_turn(managed)

        workers = []
        for items in by_host.values():
            queue = iter(items)
            workers += [drain(queue) for _ in range(min(self.policy.per_host, len(items)))]
        await asyncio.gather(*workers)

    async def _take_turn(self, managed: Managed) -> None:
        """Refresh a due certificate, or do what the coordinator says instead."""
        if self.coordinator is None:
            await self._refresh(managed)
            return
        due = managed.next_due
        if due is None or due > self.clock():
            return  # a staple was adopted since the pass began: not due any more
        turn = await self.coordinator.claim(managed)
        if turn.wait_until is not None:
            if managed.next_due == due:  # else a staple was adopted meanwhile: its schedule wins
                managed.next_due = turn.wait_until
        else:
            result = None
            try:
                result = await self._refresh(managed)
            finally:
                await self.coordinator.settle(managed, turn, result)

    def adopt(self, managed: Managed, staple: Staple, stored: StoredStaple, origin: str) -> bool:
        """Take a staple another member fetched, validated (`staple`), if it is newer than
        the one held; schedule from when it was fetched. Returns whether it was taken."""
        current = managed.revoked if managed.revoked is not None else managed.held
        if current is not None and (current.der == staple.der or compare(staple, current)):
            return False
        self._accepted(
            managed, staple, stored.responder_url, stored.fetched_at, f" (fetched by {origin})"
        )
        self._save_status(managed)
        return True

    async def refresh(self, managed: Managed) -> FetchResult:
        """Fetch a new staple for one certificate now, apply and store the outcome (in fleet
        mode too: an operator's explicit fetch)."""
        result = await self._refresh(managed)
        self._flush()
        return result

    async def _refresh(self, managed: Managed) -> FetchResult:
        """Fetch and apply; the store writes wait for the next `_flush`."""
        host = _host(managed)
        async with self._all, self._hosts.setdefault(host, asyncio.Semaphore(self.policy.per_host)):
            result = await fetch_staple(
                managed.target,
                urls=managed.entry.urls,
                hash_name=self.policy.hash_name,
                policy=self.policy.fetch,
                verify_policy=self.policy.verify,
                current=managed.held,
                session=self._session,
                clock=self.clock,
                rng=self.dice,
            )
        now = self.clock()
        managed.last_attempt = now
        self._write(
            functools.partial(self.store.add_attempts, managed.key, attempt_records(result))
        )
        for observer in self.observers:
            observer(managed, result)
        if result.staple is not None:
            self._accepted(managed, result.staple, result.url, now)
        else:
            assert result.rejection is not None
            self._failed(managed, result.rejection, now)
        self._save_status(managed)
        return result

    def _accepted(
        self,
        managed: Managed,
        staple: Staple,
        url: str | None,
        now: datetime,
        origin: str = "",
    ) -> None:
        """Hold `staple`, fetched at `now` (by another member, as `origin` says)."""
        managed.next_due = next_refresh(staple, now, self.dice, self.policy.schedule)
        if not staple.good:
            first = managed.revoked is None
            managed.revoked, managed.held = staple, None
            if first:
                when = _time(staple.revocation_time)
                self._emit("revoked", managed, f"revoked at {when}; withdrawn from every server")
            return
        recovered = managed.failures > 0 or managed.revoked is not None
        managed.held, managed.revoked, managed.failures = staple, None, 0
        managed.known = True
        managed.last_rejection, managed.alert = None, Alert.OK
        stored = StoredStaple(
            managed.name, staple.der, staple.this_update, staple.effective_expiry, now, url
        )
        self._write(functools.partial(self.store.save_staple, managed.key, stored))
        if recovered:
            self._emit(
                "recovered", managed, f"good staple again, until {_time(staple.effective_expiry)}"
            )
        log.info(
            "%s: good staple until %s%s; next refresh at %s",
            managed.name,
            _time(staple.effective_expiry),
            origin,
            _time(managed.next_due),
        )

    def _failed(self, managed: Managed, rejection: Rejection, now: datetime) -> None:
        managed.failures += 1
        managed.last_rejection = rejection
        if rejection.reason is Reason.NO_OCSP_URL:
            managed.next_due = None
        else:
            expiry = managed.held.effective_expiry if managed.held else None
            managed.next_due = next_retry(
                managed.failures, now, expiry, self.dice, self.policy.schedule
            )
        held = (
            f"; the staple in hand stays valid until {_time(managed.held.effective_expiry)}"
            if managed.held
            else "; no valid staple in hand"
        )
        message = f"{rejection.message}{held}; next try at {_time(managed.next_due)}"
        self._emit("failure", managed, message, rejection.code, hook=managed.failures == 1)

    def _watch_expiry(self, now: datetime) -> None:
        for managed in self.managed.values():
            held = managed.held
            if held is not None and held.effective_expiry <= now:
                managed.held = None
                failing = (
                    " A must-staple certificate is now FAILING for clients."
                    if (managed.target.must_staple)
                    else ""
                )
                self._emit(
                    "expired",
                    managed,
                    "the staple expired with no valid replacement;"
                    f" policy at_expiry={self.policy.at_expiry}.{failing}",
                )
                self._save_status(managed)
            if managed.next_due is None or managed.revoked is not None:
                continue
            level = alert_level(managed.held, now, self.policy.schedule)
            if level > managed.alert and managed.held is not None:
                self._emit(
                    "expiring",
                    managed,
                    f"{level.name}: the staple expires at "
                    f"{_time(managed.held.effective_expiry)} and no fresh one came yet",
                )
            managed.alert = level

    # --- Delivery -------------------------------------------------------------------------------

    def _wanted(self, managed: Managed) -> tuple[Action, bytes | None] | None:
        """What the sinks should have: the staple held; nothing when it expired (or was
        withdrawn for revocation) and `at_expiry` says remove; else leave them alone. A
        certificate never seen with a staple is left alone: what a server has for it then
        is not ours to take away (HAProxy, for one, needs the file it started with)."""
        if managed.held is not None:
            return (Action.STAPLE, managed.held.der)
        if managed.revoked is not None:
            return (Action.REMOVE, None)
        if self.policy.at_expiry == "keep" or not managed.known:
            return None
        return (Action.REMOVE, None)

    async def deliver(self, *, again: bool = False) -> list[Delivered]:
        """Store the pending writes, then send every changed staple (or all, with `again`)
        to its sinks, one batch per sink; one delivery at a time."""
        async with self._delivering:
            self._flush()  # a staple is stored before any server is given it
            return await self._deliver(again)

    async def _deliver(self, again: bool) -> list[Delivered]:
        batch = _Batch()
        for managed in self.managed.values():
            wanted = self._wanted(managed)
            if wanted is None or (wanted == managed.sent and not again):
                continue
            batch.wanted[managed.key] = (managed, wanted)
            for sink in managed.entry.sinks or tuple(self.sinks):
                batch.per_sink.setdefault(sink, []).append(self._delivery(managed, wanted))
        results = await asyncio.gather(
            *(self.sinks[name].deliver(items) for name, items in batch.per_sink.items())
        )
        done = [d for group in results for d in group]
        failed = {d.key for d in done if not d.ok}
        for delivered in done:
            if not delivered.ok:
                log.error("%s: sink %s: %s", delivered.key[:12], delivered.sink, delivered.error)
        for key, (managed, wanted) in batch.wanted.items():
            if key not in failed:
                managed.sent = wanted
        return done

    def _delivery(self, managed: Managed, wanted: tuple[Action, bytes | None]) -> Delivery:
        action, der = wanted
        status = "good" if action is Action.STAPLE else managed.state()
        return Delivery(
            key=managed.key,
            name=managed.name,
            cert_path=managed.path,
            action=action,
            der=der,
            issuer_pem=_pem(managed.target),
            bundle_has_issuer=managed.bundle_has_issuer,
            status=status,
        )

    # --- Events and status ------------------------------------------------------------------------

    def _emit(
        self,
        kind: str,
        managed: Managed,
        message: str,
        reason: str | None = None,
        *,
        hook: bool = True,
    ) -> None:
        staple = managed.held or managed.revoked
        event = Event(
            kind=kind,
            name=managed.name,
            cert_path=str(managed.path),
            must_staple=managed.target.must_staple,
            status=managed.state(),
            message=message,
            reason=reason,
            this_update=staple.this_update if staple else None,
            expiry=staple.effective_expiry if staple else None,
        )
        level = logging.INFO if kind == "recovered" else logging.WARNING
        if kind == "expired" or (kind == "failure" and managed.held is None):
            level = logging.ERROR
        log.log(level, "%s", event.line())
        command = self.config.hooks.command(HOOK_FOR[kind])
        if hook and command:
            task = asyncio.get_running_loop().create_task(self._hook(command, event))
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)

    async def _hook(self, command: str, event: Event) -> None:
        problem = await run_hook(command, event, self.config.hooks.timeout)
        if problem:
            log.error("%s: %s", event.name, problem)

    def _save_status(self, managed: Managed) -> None:
        rejection = managed.last_rejection
        status = functools.partial(
            self.store.save_status,
            managed.key,
            CertStatus(
                name=managed.name,
                cert_path=str(managed.path),
                must_staple=managed.target.must_staple,
                state=managed.state(),
                next_due=managed.next_due,
                failures=managed.failures,
                last_attempt=managed.last_attempt,
                last_reason=rejection.code if rejection else None,
                last_message=rejection.message if rejection else None,
            ),
        )
        self._write(status)

    def _write(self, write: Callable[[], None]) -> None:
        self._writes.append(write)
        if len(self._writes) >= WRITE_GROUP:
            self._flush()

    def _flush(self) -> None:
        """Apply the pending store writes in one transaction."""
        writes, self._writes = self._writes, []
        if writes:
            with self.store.transaction():
                for write in writes:
                    write()

    def save_all_status(self) -> None:
        for managed in self.managed.values():
            self._save_status(managed)
        self._flush()

    async def prime(self, paths: Sequence[Path]) -> list[Managed]:
        """Load `paths`, fetch each now (in fleet mode: unless the fleet has just fetched it),
        deliver; raises InputError for unusable files."""
        chosen = []
        for path in paths:
            stamp = _stamp(path)
            entry = self.entry_for(path)
            if stamp is None:
                raise InputError(f"{path}: certificate not found")
            managed = await self._load(path, entry, stamp)
            if managed is None:
                raise InputError(self._problems.get(path, f"{path}: cannot be loaded"))
            chosen.append(managed)
        wanted = [m for m in chosen if m.next_due is not None]
        for managed in wanted:
            managed.next_due = self.clock()  # due now, even with a valid staple restored
        await self._refresh_all(wanted)
        self._watch_expiry(self.clock())
        self._flush()
        await self.deliver()
        return chosen


def configured_files(config: Config) -> dict[Path, CertEntry]:
    """Every configured certificate file that exists now, with its entry (first wins)."""
    found: dict[Path, CertEntry] = {}
    for entry in config.certificates:
        for pattern in entry.paths:
            names = glob.glob(pattern) if glob.has_magic(pattern) else [pattern]
            for name in sorted(names):
                found.setdefault(Path(name), entry)
    return found


def _host(managed: Managed) -> str:
    """The host of the first responder URL tried: what `per_host` limits."""
    urls = [*managed.entry.urls, *managed.target.ocsp_urls]
    return urlsplit(urls[0]).hostname or "" if urls else ""


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size)


def attempt_records(result: FetchResult) -> list[AttemptRecord]:
    """The attempts of a fetch, as the store keeps them."""
    return [
        AttemptRecord(a.started, a.url, a.method, a.http_status, a.latency, a.reason, a.message)
        for a in result.attempts
    ]


def _pem(target: Target) -> bytes:
    return _issuer_pem(target.issuer)


@functools.lru_cache(maxsize=64)
def _issuer_pem(issuer: x509.Certificate) -> bytes:
    return issuer.public_bytes(Encoding.PEM)


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "never"
