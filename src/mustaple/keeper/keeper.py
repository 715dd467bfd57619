"""The keeper: the one orchestrator that keeps every staple fresh and delivered.

It gathers events (timers, file changes, fetch results, what another process stored, what the
fleet shares), hands each to the pure life cycle (`mustaple.core.lifecycle.step`), and carries
out the effects in order: store first, then hooks and logs; what the servers should have
follows from the state (`lifecycle.wanted`) and is delivered in one batch per sink. It decides
nothing itself.

One pass (`tick`) does, in order: pick up what another process stored (`prime`, a second
member), refresh every certificate that is due (fetching outside any lock, with bounded
concurrency overall and per responder host, once per certificate however many files hold it),
judge expiry and alerts, store, and deliver what changed. `scan` picks up new, changed and
removed certificate files; a new certificate is due at once, and a certificate whose stored
answer is still valid has it delivered at once, however old, before anything is fetched.

A certificate has one life (`Life`), keyed by its leaf, shared by every file that holds it; a
file the keeper cannot use is `Unusable`, with a line naming the key to fix, and shown as such.
Readers above the keeper (status, web, metrics) take `views()`: frozen snapshots.

An unexpected error while refreshing one certificate is a failed refresh of that certificate
(`keeper-fault`, retried with the back-off), one while loading its file makes that file
unusable; neither leaves the loop; a store that cannot be written (disk full) keeps the writes
pending, serves from memory, says so once, and writes them when it can.

In fleet mode a `Coordinator` (`mustaple.keeper.fleet`) is asked before each due fetch whether to
fetch, to adopt a staple another member fetched (validated here all the same), or to wait for
one; it is told every outcome, and hands in staples announced by other members (`adopt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import itertools
import logging
import operator
import os
import random
import sqlite3
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mustaple.adapters.collector import batch_collector, paused
from mustaple.adapters.config import CertEntry, Config, with_proxy
from mustaple.adapters.coverage import Coverage, configured_names
from mustaple.adapters.events import HOOK_FOR, Event, run_hook
from mustaple.adapters.fetch import HttpFetcher
from mustaple.adapters.files import read_input
from mustaple.adapters.http1 import Watcher
from mustaple.adapters.loader import (
    IssuerDownloads,
    Loaded,
    LoadFailed,
    Reader,
    load_or_fail,
    vanished,
)
from mustaple.adapters.reads import ReadAhead, by_entry
from mustaple.adapters.signatures import SignatureCache
from mustaple.adapters.store import (
    AttemptRecord,
    CertStatus,
    Looked,
    RecordedAttempt,
    SqliteStore,
    Store,
    StoredStaple,
    cert_key,
    damaged,
    disk_full,
    look_up,
)
from mustaple.adapters.workers import DEPTH, Limits, WorkerPool, cores
from mustaple.core import lifecycle
from mustaple.core.agenda import Agenda
from mustaple.core.certs import Target, display_name, is_must_staple, parse_certificates
from mustaple.core.clock import Clock, utc_now
from mustaple.core.delivery import (
    Action,
    Delivered,
    Delivery,
    HoldsBack,
    KeepsCopies,
    Reloads,
    Sink,
    SinkHealth,
    Trap,
    Watches,
    staple_serial,
)
from mustaple.core.der import looks_like_ocsp_response
from mustaple.core.errors import InputError
from mustaple.core.fetchtypes import Fetcher, FetchJob, FetchPolicy, FetchResult
from mustaple.core.lifecycle import (
    Accepted,
    CertState,
    Phase,
    Rejected,
    Restored,
    Stale,
    Tick,
    Tried,
    Wait,
)
from mustaple.core.reasons import Reason, Rejection
from mustaple.core.render import counted, human_time, shown
from mustaple.core.request import CertId, make_cert_id
from mustaple.core.schedule import issuer_retry
from mustaple.core.urls import first_host
from mustaple.core.verify import Policy, Staple, strictly_newer, verify
from mustaple.keeper.changes import Changes, Polled
from mustaple.keeper.surveys import Surveys, Unanswered

__all__ = [
    "NOT_DELIVERED",
    "NOT_DELIVERED_AT_START",
    "CertFile",
    "CertView",
    "Coordinator",
    "Interrupt",
    "Keeper",
    "Life",
    "Managed",
    "Observer",
    "Primed",
    "Turn",
    "Unusable",
    "attempt_records",
]

log = logging.getLogger("mustaple")
# Store writes are grouped, this many to a transaction (one fsync), and always written before
# anything is delivered: a crash loses at most the outcomes of one group, never a staple a
# server was given.
WRITE_GROUP = 256
# Called after every refresh with the certificate file and the fetch result (metrics use it).
Observer = Callable[["CertFile", FetchResult], None]
STORED_ELSEWHERE = "stored by another mustaple process"
# How long the news of flushes that find the state locked wait for it (`_waits_for_lock`)
LOCK_PATIENCE = timedelta(seconds=5)
# how often the copies the sinks keep (staple files) are looked at (`look_at_copies`), at
# most: every COPIES_PASSES watch intervals when that is sooner. Each look stats every one of
# them, 10 to 15 µs a certificate (1.5 s at 100k)
COPIES_EVERY = timedelta(seconds=30)
COPIES_PASSES = 6
_LOCKED = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # another connection holds the state
STORED_BEFORE_RELOAD = "stored by this process before its reload"  # see `Keeper.made`
# A sink's error when an interrupted prime cut its delivery short (`Interrupt`)
NOT_DELIVERED = (
    "not delivered: the prime was interrupted before this sink took the staple (its server "
    "may serve an older one); the next prime or `mustaple run` delivers it"
)
# A sink's error when a stop cut short the delivery of a start of `mustaple run`
NOT_DELIVERED_AT_START = (
    "not delivered: `mustaple run` was stopped while it delivered the stored staples at its "
    "start, before this sink took this one (its server may serve an older one); the next "
    "start or prime delivers it"
)
# A sink that failed is tried again after this, doubling up to the policy's retry_max.
DELIVERY_RETRY = timedelta(seconds=5)
# A batch of this many certificates to load or fetch is worth worker processes (each costs
# 0.15 to 0.3 s of start-up: a fresh interpreter and its imports). `mustaple prime` on 2 cores,
# in process against 2 workers: 1,000 files 1.01 against 0.93 s, 500 files 0.66 against 0.71 s.
WORKERS_FROM = 1000
RESOLVE_SLICE = 4096  # paths `prime` resolves before their loads go out to the workers
# Files read ahead at once for their loads in this process (`_read_ahead`): their bytes are
# held until loaded (a start of `run` with `workers = 0` loads every file in one batch)
READ_AHEAD = 256
# A load of this many files says in one line how many valid staples it restored from the
# state, each certificate's line at debug level (a restart of 100k wrote 100k journal lines)
QUIET_FROM = 1000
# How long a pass holds the event loop between two of its turns (`_turns`), in seconds of
# CPU: each pass judges, plans and compares every certificate, 10 to 20 µs each; in one go,
# at 100k, the local responder answered nothing for up to 2.6 s every watch interval, and
# in slices of 256 its paced p99 was 5.5 ms. A slice is sized from the last one's cost.
TURN = 0.0005
SLICE = (8, 4096)  # the fewest and the most certificates in a slice
# What a file was when read: (mtime_ns, size), and its entry's `issuer` file's, or (-1, -1)
Stamp = tuple[int, int, int, int]
Want = tuple[Action, bytes | None]  # what a file's sinks should have (`lifecycle.wanted`)
PerSink = dict[str, list[tuple["Managed", Delivery]]]  # the batch of each sink
FileToLoad = tuple[Path, "CertEntry", Stamp]  # a file, its entry, its stamp
_UNSEEN: Stamp = (-1, -1, -1, -1)  # no file is stamped so: one read again when seen again
_T = TypeVar("_T")


@dataclass
class Life:
    """One certificate's life: its frozen state, replaced only by `lifecycle.step`, shared by
    every file that holds the leaf; and how each sink took its staple."""

    key: str
    target: Target
    state: CertState = field(default_factory=CertState)
    sinks: dict[str, SinkHealth] = field(default_factory=dict)
    # the state the last tick made, when, and until when a tick changes nothing in it
    calm: tuple[CertState, datetime, datetime | None] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def name(self) -> str:
        return self.target.name

    def calm_at(self, now: datetime) -> bool:
        """Whether a tick at `now` would change nothing (`lifecycle.calm_until`)."""
        if self.calm is None or self.calm[0] is not self.state:
            return False
        since, until = self.calm[1:]
        return since <= now and (until is None or now < until)


@dataclass(frozen=True, slots=True)
class _News:
    """An `Emit` whose hook the shared state decides (`lifecycle.Emit.shared`), waiting for
    the flush that writes it; `event` is what its hook is told (None: not said yet), `own`
    whether this process tells it whatever the shared state says (a revocation, told by its
    fetcher), and `decided` whether this process already told it on its own (the state
    could not be written then: it is only recorded there; what it did not tell then, the
    state decides once written). Every hook starts after the commit of the write that
    records its news, or as soon as a write fails (`_tell_alone`): a process killed in
    between never ran it, and the next process reads it as told (at most once)."""

    life: Life
    emit: lifecycle.Emit
    event: Event | None
    own: bool = False
    decided: bool = False


@dataclass
class _Pending:
    """Store writes not applied yet, by kind: the staples and the attempts are each written
    in one statement when applied (`WRITE_GROUP` writes to a transaction); the news ride
    along with them (settled at the flush, they count toward no group)."""

    staples: list[tuple[str, StoredStaple]] = field(default_factory=list)
    attempts: list[tuple[str, list[AttemptRecord]]] = field(default_factory=list)
    other: list[Callable[[], object]] = field(default_factory=list)
    news: list[_News] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.staples) + len(self.attempts) + len(self.other)

    def __bool__(self) -> bool:
        return bool(len(self) or self.news)

    def apply(self, store: Store) -> None:
        if self.staples:
            store.save_staples(self.staples)
        if self.attempts:
            store.add_all_attempts(self.attempts)
        for write in self.other:
            write()

    def then(self, later: _Pending) -> _Pending:
        """These writes, then `later`'s (to keep what a failed transaction did not store)."""
        return _Pending(
            self.staples + later.staples,
            self.attempts + later.attempts,
            self.other + later.other,
            self.news + later.news,
        )


@dataclass
class Managed:
    """One certificate file the keeper looks after; its certificate's `life` is shared."""

    path: Path
    entry: CertEntry
    target: Target
    stamp: Stamp  # the file (and its `issuer` file) when loaded
    bundle_has_issuer: bool
    life: Life
    sent: tuple[Action, bytes | None] | None = None  # what every sink has confirmed
    sent_as: Delivery | None = None  # the delivery that sent it (a look at copies reads it)
    retry_at: datetime | None = None  # a sink failed: deliver `retrying` again then
    retrying: tuple[Action, bytes | None] | None = None  # what failed (a new answer waits not)
    # sinks whose server's reload is owed for this file (a `prime`'s failed, by the status
    # rows): delivered to again, though `sent` says they have it, until each takes it
    # (see `owe_reloads`)
    owed: set[str] = field(default_factory=set)
    # sinks whose copy of `sent` went astray (`Watches`): delivered to again until each takes it
    astray: set[str] = field(default_factory=set)
    order: int = 0  # when taken, among the files (`Keeper.managed` keeps them in that order)

    @property
    def key(self) -> str:
        return self.life.key

    @property
    def name(self) -> str:
        return self.target.name

    # Read-only windows on the state, for the keeper layer (and tests) that hold a Managed.
    @property
    def held(self) -> Staple | None:
        return self.life.state.held

    @property
    def revoked(self) -> Staple | None:
        return self.life.state.revoked

    @property
    def failures(self) -> int:
        return self.life.state.failures

    @property
    def next_due(self) -> datetime | None:
        return self.life.state.next_due

    def state(self) -> str:
        return self.life.state.phase.value


@dataclass(frozen=True, slots=True)
class Problem:
    """A configured file the keeper cannot use, and why (one line naming what to fix)."""

    path: Path
    key: str  # "file:<path>": its own row, beside any of a usable file holding the same leaf
    name: str
    must_staple: bool | None
    serial: int | None  # the leaf's, when it could be read
    message: str
    reason: Reason  # cert-unusable, or keeper-fault
    stamp: Stamp  # the file as it was read: read again when it (or its `issuer` file) changes
    retry_at: datetime | None = None  # its issuer download failed: read again from then on

    def left_alone(self, stamp: Stamp, now: datetime) -> bool:
        """Whether the file is not read again now: it is unchanged (`stamp`), and no failed
        issuer download of it is to be tried again (it is read again at a reload too)."""
        return self.stamp == stamp and (self.retry_at is None or self.retry_at > now)

    def out_of_sight(self) -> Problem:
        """This problem when its file cannot be looked at (a symbolic link to nothing): no
        retry is due (a due one would wake the keeper at every pass), and the file is read
        again as soon as it can be looked at, whatever it is then."""
        return replace(self, stamp=_UNSEEN, retry_at=None)


@dataclass(frozen=True, slots=True)
class CertView:
    """A frozen snapshot of one certificate, for every reader above the keeper."""

    key: str
    name: str
    paths: tuple[str, ...]
    must_staple: bool | None
    serial: int | None
    state: CertState
    sinks: tuple[SinkHealth, ...] = ()

    @property
    def phase(self) -> str:
        return self.state.phase.value


@dataclass(frozen=True, slots=True)
class CertFile:
    """Which certificate file a refresh was for, as the keeper's observers are told."""

    key: str
    name: str
    path: Path


@dataclass(frozen=True, slots=True)
class Primed:
    """One file `prime` was given, after it: its certificate's state, how each sink took its
    staple (in the order they first took one) and what every sink confirmed having (None:
    nothing yet). Leaner than a `CertView`: it is made for every file of a large prime."""

    path: Path
    name: str
    must_staple: bool
    state: CertState
    sinks: tuple[SinkHealth, ...]
    sent: tuple[Action, bytes | None] | None
    done: bool = True  # False: an interrupted prime did not fetch and deliver it to the end

    @property
    def phase(self) -> str:
        return self.state.phase.value


@dataclass(frozen=True, slots=True)
class Unusable:
    """A file `prime_usable` was given and left out: missing, or not usable as it is (the
    message names the file and what to fix), with what could be read of its certificate
    (else the file's directory name, and must-staple unknown) and the reason code."""

    path: Path
    name: str
    must_staple: bool | None
    reason: Reason
    message: str


@dataclass(frozen=True)
class Turn:
    """A coordinator's answer for one due certificate: fetch (the default), or wait until a
    time (it may have adopted a shared staple, through `Keeper.adopt`, meanwhile). `token` is
    the coordinator's own (a lease), handed back to `settle`."""

    wait_until: datetime | None = None
    token: object = None


class Interrupt:
    """What tells a `prime` to stop (in `mustaple prime`: SIGINT and SIGTERM). Asked once
    (`stopping`), it starts no new fetch, drops those in flight (and the loads), and stores
    and delivers what it has, in one batch as at a normal end; asked again (`abandoning`),
    it cuts that delivery short too, and each status row it writes says which sinks did not
    take their staple (`NOT_DELIVERED`)."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.abandoning = asyncio.Event()

    def ask(self) -> None:
        (self.abandoning if self.stopping.is_set() else self.stopping).set()


class Coordinator(Protocol):
    """Who fetches what, across a fleet (see the module docstring)."""

    async def claim(self, managed: Managed) -> Turn: ...

    async def settle(self, managed: Managed, turn: Turn, result: FetchResult | None) -> None: ...


class Keeper:
    """Keeps the staples of the certificates in `config` fresh and delivered to `sinks`."""

    _unplanned: dict[Path, Managed]  # see __init__
    _relook: dict[Path, Managed]

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
        fetcher: Fetcher | None = None,
        watchers: Sequence[Watcher] = (),
        made: dict[str, datetime] | None = None,
        surveys: Surveys | None = None,
    ) -> None:
        """Without a `fetcher`, the keeper fetches over HTTP with a session of its own,
        opened on entering it (`watchers` are told its requests). `made`: when this process
        made the last refresh of each certificate key, shared with the keeper it replaces
        (a reload builds a new one in the same process): what the state records of those
        is said as this process's, not another's. `surveys`: that keeper's look at the
        files, whose entries that hang stay set aside (see `Surveys`)."""
        self.config, self.policy = config, config.policy
        self.store, self.sinks = store, dict(sinks)
        self.clock, self.dice = clock, dice
        self.observers = list(observers)
        self.coordinator = coordinator
        self.made = {} if made is None else made  # see __init__
        self.managed: dict[Path, Managed] = {}
        self.lives: dict[str, Life] = {}
        self.problems: dict[Path, Problem] = {}
        self._index: dict[str, dict[CertId, Managed]] = {}  # by hash name; see `find`
        self.revision = 0  # see `state_of`
        self._roster = 0  # changes whenever a file is taken or dropped
        self._first_end: tuple[int, datetime] | None = None  # see `_retire_expired`
        self._rows_swept = False  # the status rows of files gone meanwhile, at the first scan
        self._files: dict[str, list[Managed]] = {}  # by key, in the order of `managed`
        self._taken = itertools.count()  # `Managed.order`
        # What a pass looks at, rather than every certificate: the certificates by the moment
        # each falls due (`tick`) and by the moment a tick may change its state
        # (`judge_time`); the files whose delivery may have changed since the last plan
        # (`_plan`); the keys of those holding a staple (`count_held`). Each state's
        # change goes in at once (`_stirred`).
        self._due: Agenda[Life] = Agenda(self._due_at, _KEY)
        self._unjudged: Agenda[Life] = Agenda(self._judged_at, _KEY)
        self._judged: datetime | None = None  # the last `judge_time`'s clock
        self._holding: set[str] = set()
        # the files each sink that keeps copies (`Watches`) took its staple for, with the
        # delivery that sent it (`_kept_by`), brought up to date at each look at the copies
        # from the files whose state, delivery or sinks' health changed since (`_relook`)
        self._kept: dict[str, dict[Path, tuple[Managed, Delivery]]] = {}
        self._unplanned, self._relook = {}, {}
        self._delivering = asyncio.Lock()
        # the keys of due certificates a pass cut short did not fetch: first at the next pass
        self.unreached: list[str] = []
        self._downloads = IssuerDownloads(
            clock=clock, backoff=functools.partial(issuer_retry, policy=self.policy.schedule)
        )
        self._issuers: dict[x509.Certificate, x509.Certificate] = {}
        self._limits = Limits(self.policy.concurrency, self.policy.per_host)
        self.fetcher: Fetcher = fetcher or HttpFetcher()
        self._own_fetcher = fetcher is None
        self._watchers = list(watchers)  # e.g. `prime` showing what it waits on
        self._hooks: set[asyncio.Task[None]] = set()
        self._ending: set[asyncio.Task[None]] = set()  # worker pools closing meanwhile
        self._pending = _Pending()
        # pending status rows, one per key: a Life's row is made from its state at the flush
        self._statuses: dict[str, CertStatus | Life | None] = {}  # None: the row goes
        self._store_problem: str | None = None
        self._store_back = False  # opened for writing again: the next flush says so
        self._locked_since: datetime | None = None  # the first flush the state's lock failed
        self._patience: asyncio.TimerHandle | None = None  # see `_tell_when_patience_ends`
        self._copies_looked: datetime | None = None  # see `look_at_copies`
        entries = [(entry.paths, entry.issuer) for entry in config.certificates]
        # which entries' files changed, from file events (see `scan`)
        self._changes = Changes(entries, self.policy.rescan_interval)
        # the look at the files, which may hang (see `scan`)
        self.surveys = Surveys(
            self.policy.watch_timeout,
            [paths for paths, _ in entries],
            clock,
            carried=surveys,
            forget=self._changes.forget,
        )
        self._restored: int | None = None  # see `_restores_summed`
        # the reads of certificate files in this process, per entry (`_read_ahead`), and the
        # files held whose read hangs (`_hung_read`)
        self._reads = ReadAhead()
        self._hung: dict[Path, Unanswered | None] = {}  # None: no thread to read it in
        read_only = _read_only(store)
        if read_only is not None:  # a full disk at the start: read, served, not written
            self._store_trouble(read_only, full=True)
        self._signatures = SignatureCache.open(store, self._write, clock())

    async def __aenter__(self) -> Keeper:
        if self._own_fetcher:
            limit = self.policy.concurrency
            self.fetcher = HttpFetcher.open(limit=limit, watchers=self._watchers)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._flush()
        self._changes.close()
        self._end_patience()
        self._tell_all_alone()  # what the store could not take leaves with this process
        self._say_unstored()
        if self._ending:
            await asyncio.wait(self._ending)
        if self._hooks:
            await asyncio.wait(self._hooks, timeout=self.config.hooks.timeout.total_seconds())
        if isinstance(self.fetcher, HttpFetcher) and self._own_fetcher:
            await self.fetcher.close()

    # --- Which certificates -------------------------------------------------------------------

    async def scan(self, stop: asyncio.Event | None = None, watch: bool = False) -> list[Managed]:
        """Pick up new, changed and removed certificate files; return the new or changed.
        Once `stop` is set, the files not loaded yet are left for the next scan (or start).
        An entry whose files hang (a dead NFS mount) is left as last seen (`Surveys`).
        `watch` (`run`'s start and passes): the entries' directories are watched for changes,
        and an entry in which nothing changed is not looked at (`Changes`), unless
        `policy.rescan_interval` is no longer than `policy.watch_interval`."""
        now = self.clock()
        watch = watch and self.policy.rescan_interval > self.policy.watch_interval
        quiet = self._quiet(now) if watch else frozenset()
        if self.surveys.all_set_aside(quiet):
            return []
        managed, problems = dict(self.managed), list(self.problems)
        changes = (self._changes, now) if watch else None
        again = {str(path) for path in self._hung}
        look = functools.partial(
            _survey, self.config, managed, problems, changes=changes, again=again
        )
        surveyed = await self.surveys.look(look, stop or asyncio.Event(), quiet)
        if surveyed is None:
            return []
        found, gone = surveyed
        async for paths in _turns(gone):
            for path in paths:
                if path in self.managed:
                    name = self.managed[path].name
                    log.info("%s: no longer configured or present (%s)", name, path)
                    self._drop(path, gone=True)
                elif path in self.problems:
                    self._forget_status(self.problems.pop(path).key)
        now, changed = self.clock(), list[FileToLoad]()
        self._downloads.begin(now)
        async for part in _turns(found.items()):
            changed += self._changed(part, now)
        with _collecting(len(changed)), self._restores_summed(len(changed)):
            async with self._helpers(len(changed)):
                loading = await _until(stop or asyncio.Event(), self._load_all(changed))
        if loading is None:
            return []
        loaded = loading.result()
        self._take_recorded({m.key: m.life for m in loaded if m is not None}.values())
        # new to this process without a staple (a renewal, a file back after a gap): a sink's
        # file may hold the staple of the certificate it renewed (see `take_from_sinks`)
        await self.take_from_sinks(
            m for m in loaded if m is not None and m.life.state.answer is None
        )
        if not self._rows_swept:  # the first scan: rows of files gone while we were not here
            self._rows_swept = True
            shown = set(self.lives) | {problem.key for problem in self.problems.values()}
            for key in self.store.status_keys() - shown:
                self._forget_status(key)
        return [managed for managed in loaded if managed is not None]

    def _quiet(self, now: datetime) -> frozenset[int]:
        """The entries with nothing changed in their directories (`Changes.quiet`); none
        while the read of a file whose issuer download failed is due (`Problem.retry_at`)."""
        due = (p.retry_at for p in self.problems.values() if p.retry_at is not None)
        if self._hung or any(retry <= now for retry in due):
            return frozenset()
        return self._changes.quiet(now)

    def _changed(
        self, found: Iterable[tuple[Path, tuple[CertEntry, Stamp | None]]], now: datetime
    ) -> Iterator[FileToLoad]:
        """The files of `found` (as `_survey` found them) to load: new or changed, and not
        left alone as unusable. A file whose read hung that is back as it was when last
        read is not read again: it no longer waits."""
        for path, (entry, stamp) in found:
            current = self.managed.get(path)
            problem = self.problems.get(path)
            if stamp is None and problem is not None and problem.retry_at is not None:
                self.problems[path] = problem.out_of_sight()
            if stamp is None or (current and current.stamp == stamp and current.entry == entry):
                if stamp is not None and self._hung.pop(path, False) is not False:
                    log.info("%s: back as it was last read", path)
                continue
            if current is None and problem is not None and problem.left_alone(stamp, now):
                continue
            yield path, entry, stamp

    @contextlib.contextmanager
    def _restores_summed(self, batch: int) -> Iterator[None]:
        """While inside, for a batch of QUIET_FROM files or more, the valid staples restored
        from the state are counted, each one's line at debug level, and said in one line."""
        if batch < QUIET_FROM or self._restored is not None:
            yield
            return
        self._restored = 0
        try:
            yield
        finally:
            count, self._restored = self._restored, None
            if count:
                log.info(
                    "restored a valid staple from the state for %s (each one's line at debug "
                    "level)",
                    counted(count, "certificate"),
                )

    async def _load_all(self, files: Sequence[FileToLoad]) -> list[Managed | None]:
        """Load `files` (in worker processes when there are some: each taken as it comes
        back), in order; an unusable file becomes a `Problem` (None in the list)."""
        taken: list[Managed | None] = [None] * len(files)
        if not isinstance(self.fetcher, WorkerPool):
            for start in range(0, len(files), READ_AHEAD):
                some = files[start : start + READ_AHEAD]
                read = await self._read_ahead(some)
                for index, (path, entry, stamp) in enumerate(some, start):
                    loaded = await self._load_here(path, entry, read)
                    taken[index] = self._take(path, entry, stamp, loaded)
            return taken

        def take(index: int, loaded: Loaded | LoadFailed, looked: Looked | None) -> None:
            path, entry, stamp = files[index]
            taken[index] = self._take(path, entry, stamp, loaded, looked)

        asked = [
            (path, entry.issuer, self._fetch_policy(entry), entry.paths) for path, entry, _ in files
        ]
        await self.fetcher.load_many(
            asked,
            take,
            reads=self._reads,
            patience=self.policy.watch_timeout,
            restore=self._restore_from(),
            signatures=self._signatures,
            downloads=self._downloads,
        )
        return taken

    def _restore_from(self) -> tuple[Path, Policy] | None:
        """Where workers look up stored answers (a SQLite store: they read it themselves)."""
        if isinstance(self.store, SqliteStore):
            return self.store.path, self.policy.verify
        return None

    async def _load_here(self, path: Path, entry: CertEntry, read: Reader) -> Loaded | LoadFailed:
        return await load_or_fail(
            path,
            entry.issuer,
            fetcher=self.fetcher,
            policy=self._fetch_policy(entry),
            downloads=self._downloads,
            issuers=self._issuers,
            signatures=self._signatures,
            read=read,
        )

    async def _read_ahead(self, files: Sequence[FileToLoad]) -> Reader:
        """The certificate (and `issuer`) files of `files`, read now in a thread per entry
        given `watch_timeout` (`mustaple.adapters.reads`), for their loads to take."""
        wanted = by_entry((path, entry.issuer, entry.paths) for path, entry, _ in files)
        return await self._reads.read(wanted, self.policy.watch_timeout)

    def _fetch_policy(self, entry: CertEntry) -> FetchPolicy:
        return with_proxy(self.policy.fetch, entry)

    def _take(
        self,
        path: Path,
        entry: CertEntry,
        stamp: Stamp,
        loaded: Loaded | LoadFailed,
        looked: Looked | None = None,
    ) -> Managed | None:
        """A file as loaded becomes a `Managed` (its life begun if it is new, from `looked`
        when a worker looked up its stored answer), or a `Problem`."""
        if isinstance(loaded, LoadFailed) and loaded.hung:
            self._hung_read(path, entry, stamp, loaded)
            return None
        if self._hung.pop(path, False) is not False:
            log.info("%s: read again", path)
        if isinstance(loaded, LoadFailed):
            if loaded.unexpected:
                self._unusable(path, stamp, _internal(loaded.message), Reason.KEEPER_FAULT)
            else:
                retry_at = self._downloads.learn(loaded.downloads)
                self._unusable(path, stamp, loaded.message, Reason.CERT_UNUSABLE, retry_at)
            return None
        problem = self.problems.pop(path, None)
        target = loaded.target
        key = loaded.key or cert_key(target.leaf)
        before = self.managed.get(path)
        self._drop(path)
        life = self.lives.get(key)
        if life is None and before is not None and before.key == key:
            life = before.life  # the same certificate, its file rewritten: its truth goes on
        fresh = life is None
        if life is None:
            life = Life(key, target)
        self.lives[life.key] = life
        has_issuer, order = loaded.bundle_has_issuer, next(self._taken)
        managed = Managed(path, entry, target, stamp, has_issuer, life, order=order)
        self.managed[path] = managed
        self._files.setdefault(life.key, []).append(managed)
        self._indexed(managed)
        self._roster_changed()
        self._stirred(life)
        if problem is not None:
            self._forget_status(problem.key)
        if fresh:
            self._begin(managed, looked)
            if before is not None and before.key != key and before.sent is not None:
                # renewed: what the sinks have is the old leaf's answer, ours to take away
                self._apply(life, Stale(renewed=True), self.clock())
        else:
            self._save_status(life)  # its paths
        return managed

    @contextlib.asynccontextmanager
    async def _helpers(self, batch: int) -> AsyncIterator[None]:
        """For a batch of at least WORKERS_FROM certificates, load and fetch in worker
        processes (`policy.workers`, default one per core) while inside; else in process.
        Workers fetch over HTTP and judge by the real clock: a keeper given its own fetcher
        or clock (tests) stays in process."""
        count = self.policy.workers if self.policy.workers is not None else cores()
        if not self._own_fetcher or self.clock is not utc_now:
            count = 0
        if count < 1 or batch < WORKERS_FROM:
            yield
            return
        limits = Limits(self.policy.concurrency, self.policy.per_host)
        try:
            pool = await WorkerPool.start(
                count, limits=limits, fallback=self.fetcher, watchers=self._watchers
            )
        except (OSError, RuntimeError) as exc:
            log.warning("no worker processes (%s): working in this process only", exc)
            yield
            return
        mine, outside = self.fetcher, self._limits
        self.fetcher = pool
        self._limits = outside.deeper(DEPTH)  # the workers keep the limits themselves
        try:
            yield
        finally:
            self.fetcher, self._limits = mine, outside
            closing = asyncio.get_running_loop().create_task(pool.close())  # workers end
            self._ending.add(closing)  # while the keeper goes on (awaited on leaving it)
            closing.add_done_callback(self._ending.discard)

    def _begin(self, managed: Managed, looked: Looked | None = None) -> None:
        """A certificate seen for the first time by this process: its stored truth (validated
        now: `looked`, or looked up here), or due now."""
        life, now = managed.life, self.clock()
        if not managed.target.ocsp_urls and not managed.entry.urls:
            problem = (
                f"{managed.target.no_url_message()} (or set `urls` in its [[certificates]] entry)"
            )
            self._apply(life, lifecycle.Unusable(problem), now)
            level = logging.ERROR if managed.target.must_staple else logging.WARNING
            log.log(level, "%s: %s", managed.name, problem)
            return
        self._apply(life, Wait(now), now)
        if looked is None:
            looked = look_up(self.store, life.key, managed.target, now, self.policy.verify)
        outcome = looked.outcome
        if isinstance(outcome, Staple):
            assert looked.fetched_at is not None
            self._apply(life, Restored(outcome, looked.fetched_at), now)
        elif outcome is not None and looked.good:
            self._apply(life, Stale(), now)  # a staple file may be ours: ours to take away

    def _hung_read(self, path: Path, entry: CertEntry, stamp: Stamp, failed: LoadFailed) -> None:
        """A file whose read did not answer in `watch_timeout` (its stat did), or that was
        not read while another read of its entry still waits, or for want of a thread to
        read it in (`failed` says which): a file held stays as it was (its staple still
        delivered), a new one is a problem; either is read again at the next passes (no
        entry is quiet meanwhile: `_quiet`), and listed with the looks that have not
        answered (`unanswered`) unless no thread was there to read it. Said once."""
        message = f"{path}: {failed.message}; it is read again at the next passes"
        read = self._hung.get(path)  # waiting since then, or now
        if read is None and not failed.no_thread:
            since = self.clock() - self.policy.watch_timeout
            read = Unanswered(str(path), entry.paths, since, kind="read")
        if path not in self.managed:
            retry_at = self.clock() + self.policy.watch_timeout  # not due at once: no busy loop
            self._unusable(path, stamp, message, Reason.CERT_UNUSABLE, retry_at, readable=False)
        elif path not in self._hung:
            log.error("%s; what it held is kept", message)
        self._hung[path] = read

    def _unusable(
        self,
        path: Path,
        stamp: Stamp,
        message: str,
        reason: Reason,
        retry_at: datetime | None = None,
        *,
        readable: bool = True,
    ) -> None:
        """`path` becomes a problem; its leaf's name and serial are read from it when it is
        `readable` (not a file whose read hangs)."""
        self._drop(path, gone=True)
        key = file_key(path)
        name, must, serial = _identify(path) if readable else _unidentified(path)
        message = shown(message)  # it names the file, which may not be UTF-8
        problem = Problem(path, key, name, must, serial, message, reason, stamp, retry_at)
        before = self.problems.get(path)
        if before is None or before.message != message:
            log.error("%s", message)
        self.problems[path] = problem
        self._write_status(key, _problem_status(problem))

    def _roster_changed(self) -> None:
        self.revision += 1
        self._roster += 1

    def _indexed(self, managed: Managed) -> None:
        """`managed` found by its CertID in each index `find` built so far."""
        for hash_name, index in self._index.items():
            index[_cert_id(managed, hash_name)] = managed

    def _unindexed(self, managed: Managed, others: Sequence[Managed]) -> None:
        """`managed` found no more; its CertID names `others`' last (its leaf in another
        file), if any."""
        for hash_name, index in self._index.items():
            cert_id = _cert_id(managed, hash_name)
            if index.get(cert_id) is not managed:
                continue
            if others:
                index[cert_id] = others[-1]
            else:
                del index[cert_id]

    def _drop(self, path: Path, *, gone: bool = False) -> None:
        """Forget a file; its certificate's life goes when no file holds it any more. When
        the file is `gone` (not about to be read again), the sinks stop holding their
        reloads back for the life's traps: it is not kept any more (see `_let_go`)."""
        if gone:
            self._hung.pop(path, None)
        managed = self.managed.pop(path, None)
        if managed is None:
            return
        self._relook[path] = managed  # no copy of it is looked at any more
        self._roster_changed()
        files = self._files[managed.key]
        files.remove(managed)
        self._unindexed(managed, files)
        if files:
            self._save_status(managed.life)  # its paths
        else:
            del self._files[managed.key]
            self.lives.pop(managed.key, None)
            self._holding.discard(managed.key)
            self._forget_status(managed.key)
            for health in managed.life.sinks.values():
                if gone and health.trap is not None:
                    self._let_go(health.sink, health.trap)

    def _let_go(self, name: str, trap: Trap) -> None:
        """The certificate of `trap` is no longer kept: sink `name` reloads its server again,
        said once (a reload would spring it if the server still serves that certificate)."""
        sink = self.sinks.get(name)
        if isinstance(sink, HoldsBack):
            sink.let_go(trap)
        log.warning(
            "sink %s: %s holds the staple of serial %X, left in place for a renewed certificate "
            "that is no longer kept: the sink reloads its server again; if the server still "
            "serves that certificate, a reload serves it with this staple, which clients "
            "refuse: take %s out of the server's configuration",
            name,
            trap.path,
            trap.serial,
            trap.path,
        )

    # --- One pass -------------------------------------------------------------------------------

    async def tick(self, stop: asyncio.Event | None = None) -> None:
        """Take in what others stored, refresh what is due, judge expiry and alerts, store,
        deliver what changed. Once `stop` is set, no fetch starts and those in flight are
        dropped (a responder that hangs is not waited for): what was fetched is stored and
        delivered, as at the end of every pass; the due certificates whose fetch had not
        started go first at the next pass (`unreached`), so that passes cut short often
        (a SIGHUP each) still reach every certificate behind a responder that hangs."""
        self.sync()
        now = self.clock()
        await self._retire_expired(now)
        due = self._due_files(now)
        first = set(self.unreached)
        due.sort(key=lambda managed: managed.key not in first)  # stable: else as configured
        started: set[str] = set()
        with _collecting(len(due)):
            async with self._helpers(len(due)):
                work = self._refresh_all(due, started=started)
                refreshing = await _until(stop or asyncio.Event(), work)
            cut = refreshing is None
            self.unreached = [m.key for m in due if m.key not in started] if cut else []
            if refreshing is not None:
                refreshing.result()  # an unexpected error goes on up, as without `stop`
            await self.judge_time()
            await self.look_at_copies()
            await self.deliver()

    def sync(self) -> int:
        """Take in the answers another process (`prime`, a second keeper) stored since the last
        look: validated here, and taken only where the life cycle allows; then the attempts
        its status rows record, where later than this keeper's (`_take_recorded`); the
        reloads they say are owed are made at this pass's delivery, even when it stored
        nothing new (`owe_reloads`); the status rows it may have written over are written
        again from this keeper's view, which now holds its attempts, at the pass's end.
        Returns how many answers were taken."""
        was_read_only = _read_only(self.store)
        try:
            reopened = self.store.check()
            written = self.store.others_wrote()
        except (sqlite3.Error, InputError) as exc:
            self._store_failed(exc)
            return 0
        if was_read_only is not None and _read_only(self.store) is None:
            self._store_back = True  # space came back: said by the flush, even of nothing
        if reopened is not None:
            self._opened_again(reopened)
        looked_again = written is not None or reopened is not None
        if looked_again:  # even with no answer stored: a failed `prime` wrote its rows
            self.owe_reloads()  # before the rows are written over: a `prime`'s failed reload
            self._rewrite_statuses()
        else:
            self.owe_cut_deliveries()  # a `prime` killed in its delivery writes nothing more
        now, taken = self.clock(), 0
        for key, (this_update, revoked) in (written or {}).items():
            life = self.lives.get(key)
            answer = life.state.answer if life is not None else None
            if life is None or (answer is not None and _same(answer, this_update, revoked)):
                continue  # not ours, or the answer in hand: no DER to load
            looked = look_up(self.store, key, life.target, now, self.policy.verify)
            outcome = looked.outcome
            if isinstance(outcome, Staple):
                assert looked.fetched_at is not None
                ours = self.made.get(key) == looked.fetched_at
                origin = STORED_BEFORE_RELOAD if ours else STORED_ELSEWHERE
                event = Accepted(outcome, looked.fetched_at, looked.url, origin, told=True)
                self._apply(life, event, now)
                taken += life.state.answer is outcome
        if looked_again:
            self._take_recorded(self.lives.values())
        return taken

    def _take_recorded(self, lives: Iterable[Life]) -> None:
        """What the state records of `lives` that another process did (a `prime` beside this
        keeper, or the process before a start or a reload): the last attempt of each status
        row, taken where it is later than the life's own (`lifecycle.Tried`), so that the
        rows this keeper writes keep it until a later attempt; and the last expiring alert
        told, taken where it is about the staple in hand (`lifecycle.Alerted`), so that its
        level is not told again. One query each."""
        wanted = {life.key: life for life in lives}
        if not wanted:
            return
        try:
            recorded = self.store.last_attempts(wanted.keys())
            alerts = self.store.alerts(wanted.keys())
        except (sqlite3.Error, OSError):
            return  # the store's trouble is said where it is written
        now = self.clock()
        for key, attempt in recorded.items():
            event = _recorded(attempt, reloaded=self.made.get(key) == attempt.at)
            if event is not None:
                self._apply(wanted[key], event, now)
        for key, alert in alerts.items():
            self._apply(wanted[key], lifecycle.Alerted(alert), now)

    def _opened_again(self, why: str) -> None:
        log.warning(
            "the state database was %s while the keeper ran: opened again; the staples "
            "in memory are stored in it again, and what it holds is taken in",
            why,
        )
        self._store_again()

    def _afresh_when_damaged(self, exc: BaseException) -> bool:
        """Whether a write that met damage in the database (a page `check` does not read)
        got a new one (moved aside, as at a start), the answers in hand to be stored again."""
        if not damaged(exc):
            return False
        try:
            why = self.store.check()
        except InputError:
            return False  # it could not be moved aside: said as the store's trouble
        if why is not None:
            self._opened_again(why)
        return why is not None

    def _store_again(self) -> None:
        """Every answer in hand stored again (a new database: removed or replaced under us),
        by the same rules as any write: never over a newer one stored there meanwhile."""
        for life in self.lives.values():
            answer = life.state.answer
            if answer is not None:
                fetched = lifecycle.Store(answer, answer.produced_at, None)  # not after the fetch
                self._pending.staples.append((life.key, _stored(life, fetched)))

    def _say_unstored(self) -> None:
        """At exit: the answers the store could not take (a full disk) are lost with this
        process; said loudly, a revocation first (a file sink keeps its copy: the next start
        takes it back, see `take_from_sinks`)."""
        if not self._pending.staples:
            return
        lost = dict(self._pending.staples)
        revoked = sorted(s.name for s in lost.values() if s.revoked)
        log.error(
            "the state store could not take %d answers before the exit (%s)%s",
            len(lost),
            self._store_problem or "the store failed",
            f"; REVOKED, not stored: {', '.join(revoked)}" if revoked else "",
        )

    async def take_from_sinks(self, among: Iterable[Managed] | None = None) -> int:
        """At a start (and for a certificate new to a running keeper, without a staple),
        before the first delivery: a staple a sink holds for a certificate
        (a file sink's file) that is strictly newer than the one restored from the store is
        taken, validated as any answer (it was delivered while the store could not be
        written: a full disk; or written there by another tool). Without it, the start would
        deliver the older stored staple over it: a revocation undone. A file holding an
        answer that is no staple of the certificate, when none is held (the one before a
        renewal no keeper saw), is taken away as a stale one of ours (`wanted`), which
        sets the trap of `HoldsBack` where the file must stay. `among`: these only (a
        `prime`: those it has no staple for). Returns how many taken."""
        now, taken = self.clock(), 0
        chosen = list(self.managed.values() if among is None else among)
        for name, sink in self.sinks.items():
            if not isinstance(sink, KeepsCopies):
                continue
            these = [m for m in chosen if name in self._sinks_of(m)]
            if these:  # read in one go, in a thread (the files may hang: `FileSink.held`)
                copies = await sink.held([self._delivery(m, (Action.STAPLE, None)) for m in these])
                for managed, der in zip(these, copies, strict=True):
                    taken += self._take_copy(managed, der, name, now)
        return taken

    def owe_reloads(self) -> list[str]:
        """Before a delivery that may find the files unchanged (a start, a `prime`, a pass
        that saw another process write): each sink whose reload failed, by the stored
        status rows, reloads its server then. The failure was another process's (a `prime`
        from a deploy hook), or this keeper's before a SIGHUP: the files are in place while
        the server may still serve the old staple. Each file of a certificate whose row
        owes it is delivered to that sink again (`Managed.owed`), even when nothing changed
        (a `prime` that stored nothing new): the reload runs at once, its outcome goes in
        the row, and a reload that fails again is retried as any failed delivery. The
        traps in the rows are handed over too: no reload springs them (`HoldsBack`).
        The deliveries a process killed cut short are owed too (`owe_cut_deliveries`).
        Returns the owing sinks' names."""
        cut = self.owe_cut_deliveries()
        try:
            owed, traps = self.store.owed_reloads(), self.store.traps()
        except (sqlite3.Error, OSError):
            return cut  # the store's trouble is said where it is written
        for (key, name), trap in traps.items():
            sink = self.sinks.get(name)
            if key in self._statuses and self._statuses[key] is None:
                self._let_go(name, trap)  # a row this keeper removes: no longer configured
            elif isinstance(sink, HoldsBack):
                sink.hold_back(trap)
                self._still_trapped(key)
        owing: set[str] = set()
        for key, name in owed:
            sink = self.sinks.get(name)
            if not isinstance(sink, Reloads):
                continue
            sink.owe_reload()
            owing.add(name)
            for managed in self.by_key(key):
                if name in self._sinks_of(managed):
                    managed.owed.add(name)
                    self._replan(managed)
        return sorted(owing | set(cut))

    def owe_cut_deliveries(self) -> list[str]:
        """Each sink that reloads and whose delivery a process gone cut short (killed
        after it wrote the files, before its reload ended: `Store.begin_delivery`) reloads
        its server at its next delivery, even when no file changed: the delivery becomes
        this process's (`Store.take_cut_deliveries`), the sink owes its reload, and one file
        that has a staple for it is delivered to it again (`Managed.owed`: its row owes it
        until paid). Looked at every pass (one read of a few rows): a `prime` killed beside
        this keeper is paid for at its next pass. Returns the sinks' names."""
        reloading = [name for name, sink in self.sinks.items() if isinstance(sink, Reloads)]
        try:
            cut = self.store.take_cut_deliveries(reloading) if reloading else set()
        except (sqlite3.Error, OSError):
            return []  # the store's trouble is said where it is written; the record stays
        for name in sorted(cut):
            sink = self.sinks[name]
            assert isinstance(sink, Reloads)
            sink.owe_reload()
            payer = next((m for m in self.managed.values() if self._pays(m, name)), None)
            if payer is not None:
                payer.owed.add(name)
                self._replan(payer)
            log.warning(
                "sink %s: a mustaple process was killed while it delivered to it (its files "
                "may be new and its server not reloaded): reloaded at its next delivery",
                name,
            )
        return sorted(cut)

    def _pays(self, managed: Managed, sink: str) -> bool:
        """Whether a delivery of `managed` to `sink` would be made now."""
        return sink in self._sinks_of(managed) and self._wanted(managed) is not None

    def _still_trapped(self, key: str) -> None:
        """A trap in the status rows for a certificate with no answer in hand here: its file
        held the staple of the certificate it renewed, and may still, even where this process
        cannot read the file to see (`take_from_sinks` then sees nothing): that staple is
        taken away as such (`Stale`), so the sink's next delivery finds the trap again and
        this process's row keeps it."""
        life = self.lives.get(key)
        if life is not None and life.state.answer is None and not life.state.renewed:
            self._apply(life, Stale(renewed=True), self.clock())

    def _take_copy(self, managed: Managed, der: bytes | None, name: str, now: datetime) -> bool:
        """Take `der`, what sink `name` holds for `managed`, if it is a newer staple (see
        `take_from_sinks`); whether it was taken."""
        answer = managed.life.state.answer
        if der is None or (answer is not None and der == answer.der):
            return False
        found = verify(der, managed.target, now, self.policy.verify)
        if not isinstance(found, Staple):
            if answer is None and looks_like_ocsp_response(der):
                # an answer of ours that is no staple of this certificate (expired, or the
                # one before a renewal no keeper saw): ours to take away, as any stale one
                renewed = staple_serial(der) not in (None, managed.target.leaf.serial_number)
                self._apply(managed.life, Stale(renewed), now)
            return False
        if answer is not None and not strictly_newer(found, answer):
            return False
        log.warning(
            "%s: the staple in the file of sink %s is newer than the stored one (delivered "
            "when it could not be stored): taken",
            managed.name,
            name,
        )
        event = Accepted(found, found.produced_at, None, f"found in the file of sink {name}")
        self._apply(managed.life, event, now)
        return managed.life.state.answer is found

    async def look_at_copies(self) -> None:
        """Each sink that keeps copies where its server reads them (`Watches`) is asked
        whether those of the staples it took are still as it left them; where one is not
        (removed or replaced by something else) and what is there may not stay
        (`_as_good_in`), that sink is delivered to again at this pass's delivery
        (`Managed.astray`), once until it takes it. Every COPIES_PASSES watch intervals,
        at most every COPIES_EVERY (a look costs a stat of every copy)."""
        now = self.clock()
        last = self._copies_looked
        every = min(COPIES_EVERY, self.policy.watch_interval * COPIES_PASSES)
        if last is not None and last <= now < last + every:
            return
        self._copies_looked = now
        relook, self._relook = self._relook, {}
        for name, sink in self.sinks.items():
            if isinstance(sink, Watches):
                with paused():  # a delivery made for each of 100k copies: none collected
                    await self._look_at(name, sink, now, relook)

    async def _look_at(
        self, name: str, sink: Sink, now: datetime, relook: Mapping[Path, Managed]
    ) -> None:
        assert isinstance(sink, Watches)
        kept = list((await self._kept_now(name, relook)).values())
        if not kept:
            return
        found = await sink.astray([delivery for _, delivery in kept])
        astray: list[tuple[Managed, str]] = []
        async for indexes in _turns(range(len(found))):  # 100k in one go held every answer
            astray += [(kept[i][0], why) for i in indexes if (why := found[i]) is not None]
        copies = await self._copies(sink, [pair[0] for pair in astray])
        async for pairs in _turns(zip(astray, copies, strict=True)):
            for (managed, why), (copy, sent_copy) in pairs:
                if not self._as_good_in(managed, copy, sent_copy, name, now):
                    log.warning(
                        "%s: sink %s: %s (removed or replaced by something else): written again",
                        managed.name,
                        name,
                        why,
                    )
                    managed.astray.add(name)
                    self._replan(managed)

    async def _kept_now(
        self, name: str, relook: Mapping[Path, Managed]
    ) -> dict[Path, tuple[Managed, Delivery]]:
        """The files sink `name` took its staple for (`_kept_by`), each with the delivery
        that sent it: found among every file at the first look, then brought up to date
        from the files whose state, delivery or sinks' health changed since (`relook`):
        a look at 100k copies does not ask each file again."""
        kept = self._kept.get(name)
        changed: Iterable[Path] = relook
        if kept is None:
            kept, changed = self._kept.setdefault(name, {}), self.managed
        async for paths in _turns(changed):
            for path in paths:
                managed = self.managed.get(path)
                if managed is not None and self._kept_by(managed, name):
                    kept[path] = (managed, self._sent_as(managed))
                else:
                    kept.pop(path, None)
        return kept

    async def _copies(
        self, sink: Sink, among: Sequence[Managed]
    ) -> list[tuple[bytes | None, bytes | None]]:
        """What `sink` holds for each of `among`: at the file of a delivery made now, and at
        that of the one it was sent (most often the same file); read in one go (in a
        thread: `KeepsCopies.held`); None where it keeps no copies."""
        if not among or not isinstance(sink, KeepsCopies):
            return [(None, None)] * len(among)
        batch: list[Delivery] = []
        for managed in among:
            batch += (self._delivery(managed, (Action.STAPLE, None)), self._sent_as(managed))
        held = await sink.held(batch)
        return list(zip(held[::2], held[1::2], strict=True))

    def _sent_as(self, managed: Managed) -> Delivery:
        """The delivery of what the sinks confirmed (`sent`): the one that sent it, kept (a
        look at 100k copies made 100k deliveries), or one made now."""
        assert managed.sent is not None
        return managed.sent_as or self._delivery(managed, managed.sent)

    def _kept_by(self, managed: Managed, sink: str) -> bool:
        """Whether `sink` took `managed`'s staple and owes it nothing."""
        health = managed.life.sinks.get(sink)
        return (
            managed.sent is not None
            and managed.sent == self._wanted(managed)
            and sink in self._sinks_of(managed)
            and sink not in managed.owed | managed.astray
            and health is not None
            and health.ok
        )

    def _as_good_in(
        self,
        managed: Managed,
        copy: bytes | None,
        sent_copy: bytes | None,
        name: str,
        now: datetime,
    ) -> bool:
        """Whether what sink `name` holds for `managed` (`_copies`), though not what it was
        sent, may stay: a strictly newer staple of the certificate (taken, as at a start),
        or a good one as new as the one held (another process's, such as a `prime`'s of the
        same age)."""
        answer = managed.life.state.answer
        if answer is None:
            return False
        if self._take_copy(managed, copy, name, now):
            return True
        if managed.sent is None or managed.sent[0] is not Action.STAPLE:
            return False  # a revoked answer, or nothing, is what the file must hold
        found = verify(sent_copy, managed.target, now, self.policy.verify) if sent_copy else None
        return isinstance(found, Staple) and found.good and not strictly_newer(answer, found)

    def _rewrite_statuses(self) -> None:
        """Every status row again at the next flush, from this keeper's view (which takes in
        the attempts the rows record: `_take_recorded`): another process wrote over them."""
        for life in self.lives.values():
            self._save_status(life)
        for problem in self.problems.values():
            self._write_status(problem.key, _problem_status(problem))

    async def judge_time(self) -> None:
        """Expiry and alerts, for every certificate, at the clock's time (but those whose
        time is calm: `Life.calm_at`); a certificate past its own notAfter is fetched no
        more (it is unusable until its file is renewed)."""
        now, schedule = self.clock(), self.policy.schedule
        back = self._judged is not None and now < self._judged  # a clock set back: all again
        self._judged = now
        lives = self.lives.values() if back else self._unjudged.due(now)
        async for part in _turns(lives):
            for life in self._still_kept([life for life in part if not life.calm_at(now)]):
                self._apply(life, Tick(), now)
                life.calm = (life.state, now, lifecycle.calm_until(life.state, schedule))
                self._unjudged.add(life)  # at its calm's end
        await self._retire_expired(now)

    async def _retire_expired(self, now: datetime) -> None:
        """Each certificate past its own notAfter is unusable (`cert-expired`) until its file
        is renewed; done before a fetch too, so that none is asked for it. No look at each
        one while the earliest notAfter found by the last look is ahead and no file was taken
        or dropped since (two looks at 100k certificates a pass)."""
        roster, first = self._roster, self._first_end
        if first is not None and first[0] == roster and now < first[1]:
            return
        ends = []
        async for part in _turns(self.lives.values()):
            for life in self._still_kept(part):
                ended = life.target.not_after
                ends.append(ended)
                if ended <= now and life.state.phase is not Phase.UNUSABLE:
                    problem = f"the certificate expired at {human_time(ended)}: renew it"
                    self._apply(life, lifecycle.Unusable(problem, Reason.CERT_EXPIRED), now)
        self._first_end = (roster, min(ends)) if ends else None

    def _still_kept(self, lives: Iterable[Life]) -> Iterator[Life]:
        """`lives` without those dropped meanwhile (during a turn of `_turns`)."""
        return (life for life in lives if self.lives.get(life.key) is life)

    def find(self, cert_id: CertId) -> Managed | None:
        """The managed certificate a CertID names (any supported hash), or None."""
        index = self._index.get(cert_id.hash_name)
        if index is None:  # built once per hash, then kept as files come and go
            index = {_cert_id(m, cert_id.hash_name): m for m in self.managed.values()}
            self._index[cert_id.hash_name] = index
        return index.get(cert_id)

    async def build_index(self, hash_name: str = "sha1") -> None:
        """Build `find`'s index for `hash_name` now, in turns (the hash servers ask with,
        RFC 5019's; else the first look-up builds it in one go: 0.4 s at 100k)."""
        index: dict[CertId, Managed] = {}
        async for part in _turns(self.managed.values()):
            index.update((_cert_id(managed, hash_name), managed) for managed in part)
        self._index.setdefault(hash_name, index)  # unless a look-up built it meanwhile

    def state_of(self, cert_id: CertId) -> CertState | None:
        """The frozen state of the certificate a CertID names (what readers above the keeper,
        such as the local responder, take), or None.

        What it returns, for any CertID, can change only when `revision` does: a number that
        grows whenever a certificate's state changes or a certificate comes or goes, so a
        reader may keep what it derived from a state while the number stays the same."""
        managed = self.find(cert_id)
        return managed.life.state if managed is not None else None

    def by_key(self, key: str) -> list[Managed]:
        """The managed certificates stored under `key` (one, unless files repeat a leaf)."""
        return self._files.get(key, [])

    def next_wakeup(self) -> datetime | None:
        """When the next certificate falls due (or a failed delivery, or a failed issuer
        download, is tried again): no look at every certificate (`_due`; a file whose
        delivery failed waits among `_unplanned`)."""
        retries = [m.retry_at for p, m in self._unplanned.items() if self.managed.get(p) is m]
        problems = map(_RETRY_AT, self.problems.values())
        return _earliest([self._due.earliest(), _earliest(retries), _earliest(problems)])

    def count_held(self) -> int:
        """How many certificates have a valid good staple."""
        return len(self._holding)

    @staticmethod
    def _one_per_life(managed: Iterable[Managed]) -> list[Managed]:
        """One file per certificate (the first): a leaf in two files is fetched once."""
        first: dict[str, Managed] = {}
        for m in managed:
            first.setdefault(m.key, m)
        return list(first.values())

    def _due_files(self, now: datetime) -> list[Managed]:
        """The certificates due at `now`, by their first file (a leaf in two files is fetched
        once), in the order of `managed` (as configured)."""
        first = [self._files[life.key][0] for life in self._due.due(now)]
        return sorted(first, key=_ORDER)

    async def _refresh_all(
        self,
        due: Sequence[Managed],
        done: set[str] | None = None,
        *,
        started: set[str] | None = None,
    ) -> None:
        """Refresh `due`: per responder host, `per_host` workers take turns (no task per
        certificate, so a pass over 100k certificates costs no 100k tasks); the key of each
        certificate whose turn has begun goes into `started`, and once it is over into `done`."""
        by_host: dict[str, list[Managed]] = {}
        for managed in due:
            by_host.setdefault(_host(managed), []).append(managed)

        async def drain(queue: Iterator[Managed]) -> None:
            for managed in queue:
                if started is not None:
                    started.add(managed.key)
                await self._guarded_turn(managed)
                if done is not None:
                    done.add(managed.key)

        workers = []
        for items in by_host.values():
            queue = iter(items)
            workers += [drain(queue) for _ in range(min(self._limits.per_host, len(items)))]
        await asyncio.gather(*workers)

    async def _guarded_turn(self, managed: Managed) -> None:
        """A fault while handling one certificate stays in that certificate."""
        try:
            await self._take_turn(managed)
        except Exception as exc:
            self._broken(managed, exc)

    def _broken(self, managed: Managed, exc: Exception) -> None:
        """A refresh that met an unexpected error: a failed one (`keeper-fault`), retried
        with the failures' back-off, the staple in hand kept and delivered. Taken as
        unusable, the certificate was not refreshed again until its file changed: a fault a
        responder's odd answer set off made its staple run out."""
        message = shown(f"{managed.path}: {type(exc).__name__}: {exc}; please report it")
        failed = lifecycle.Rejected(Rejection(Reason.KEEPER_FAULT, message))
        self._apply(managed.life, failed, self.clock())  # its line says it

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
                self._apply(managed.life, Wait(turn.wait_until), self.clock())
        else:
            result = None
            try:
                result = await self._refresh(managed)
            finally:
                await self.coordinator.settle(managed, turn, result)

    def adopt(self, managed: Managed, staple: Staple, stored: StoredStaple, origin: str) -> bool:
        """Take a staple another member fetched, validated (`staple`), if the life cycle
        allows it; schedule from when it was fetched (never later than now: a member whose
        clock runs ahead must not push the next refresh past the staple's life). Returns
        whether it was taken."""
        now = self.clock()
        fetched = min(stored.fetched_at, now)
        event = Accepted(staple, fetched, stored.responder_url, f"fetched by {origin}")
        self._apply(managed.life, event, now)
        return managed.life.state.answer is staple

    async def refresh(self, managed: Managed) -> FetchResult:
        """Fetch a new staple for one certificate now, apply and store the outcome (in fleet
        mode too: an operator's explicit fetch)."""
        result = await self._refresh(managed)
        self._flush()
        return result

    async def _refresh(self, managed: Managed) -> FetchResult:
        """Fetch and apply; the store writes wait for the next `_flush`."""
        async with self._limits.slot(_host(managed)):
            job = FetchJob(
                managed.target,
                urls=managed.entry.urls,
                hash_name=self.policy.hash_name,
                policy=self._fetch_policy(managed.entry),
                verify_policy=self.policy.verify,
                current=managed.life.state.answer,
            )
            result = await self.fetcher.fetch(job, clock=self.clock, rng=self.dice)
        now = self.made[managed.key] = self.clock()
        self._pending.attempts.append((managed.key, attempt_records(result)))
        self._grouped()
        if self.observers:
            told = CertFile(managed.key, managed.name, managed.path)
            for observer in self.observers:
                observer(told, result)
        if result.staple is not None:
            self._apply(managed.life, Accepted(result.staple, now, result.url), now)
        else:
            assert result.rejection is not None
            self._apply(managed.life, Rejected(result.rejection), now)
        return result

    # --- Carrying out the life cycle's effects ----------------------------------------------------

    def _apply(self, life: Life, event: lifecycle.Event, now: datetime) -> None:
        """Step the life cycle, then do what it says, in order; store the new status."""
        before = life.state
        life.state, effects = lifecycle.step(before, event, now, self.policy.schedule, self.dice)
        for effect in effects:
            if isinstance(effect, lifecycle.Store):
                self._pending.staples.append((life.key, _stored(life, effect)))
                self._grouped()
            elif isinstance(effect, lifecycle.Emit):
                self._emit(life, effect)
            elif self._restored is not None and isinstance(event, Restored) and life.state.held:
                self._restored += 1  # said in one line (`_restores_summed`)
                log.debug("%s: %s", life.name, effect.message)
            else:
                level = _LEVELS[effect.level]
                if log.isEnabledFor(level):
                    log.log(level, "%s: %s", life.name, effect.message)
        if life.state is not before:
            self.revision += 1
            self._stirred(life)
        if life.state != before:
            self._save_status(life)

    def _stirred(self, life: Life) -> None:
        """`life` is new here or its state changed: a pass looks at it again (its due
        moment, its time judged, its files' delivery planned) and its staple is counted."""
        if self.lives.get(life.key) is not life:
            return  # dropped meanwhile (during a turn of `_turns`)
        self._due.add(life)
        self._unjudged.add(life)
        for managed in self._files.get(life.key, ()):
            self._replan(managed)
        if life.state.held is not None:
            self._holding.add(life.key)
        else:
            self._holding.discard(life.key)

    def _due_at(self, life: Life) -> datetime | None:
        """When `life` falls due (`_due`); None once it is not kept."""
        return life.state.next_due if self.lives.get(life.key) is life else None

    def _judged_at(self, life: Life) -> datetime | None:
        """When a tick may change `life`'s state (`_unjudged`): at once unless its time
        was judged since its last change (`Life.calm`), else at the calm's end."""
        if self.lives.get(life.key) is not life:
            return None
        calm = life.calm
        return _DAWN if calm is None or calm[0] is not life.state else calm[2]

    # --- Delivery -------------------------------------------------------------------------------

    def _wanted(self, managed: Managed) -> tuple[Action, bytes | None] | None:
        return lifecycle.wanted(managed.life.state, remove_at_expiry=self._removes_at_expiry)

    @property
    def _removes_at_expiry(self) -> bool:
        """Whether an expired staple is taken from the sinks (`at_expiry = "remove"`)."""
        return self.policy.at_expiry == "remove"

    async def deliver(self, *, again: bool = False) -> list[Delivered]:
        """Store the pending writes, then send every changed staple (or all, with `again`)
        to its sinks, one batch per sink, then write the status rows (how the sinks took it
        included: one row per certificate per pass); one delivery at a time. The sinks that
        reload are recorded as delivered to by this process in the commit of the staples,
        and no longer in that of the rows (`Store.begin_delivery`): a kill in between leaves
        the next process a reload to pay (`owe_cut_deliveries`)."""
        async with self._delivering:
            now = self.clock()
            per_sink, wanted = await self._plan(again, now)
            reloading = [name for name in per_sink if isinstance(self.sinks[name], Reloads)]
            if reloading:
                self._write(functools.partial(self.store.begin_delivery, reloading))
            self._flush(statuses=False)  # a staple is stored before any server is given it
            done = await self._send(per_sink, wanted, now)
            if reloading:
                self._write(functools.partial(self.store.end_delivery, reloading))
            self._flush()
            return done

    async def _plan(self, again: bool, now: datetime) -> tuple[PerSink, dict[Path, Want]]:
        """What each sink is sent (by sink), and what each file sent to some sink wants: of
        the files whose delivery may have changed (`_unplanned`), or of all, `again`."""
        per_sink: PerSink = {}
        wanted: dict[Path, Want] = {}
        async for part in _turns(self.managed.values() if again else self._to_plan()):
            self._plan_part(part, again, now, per_sink, wanted)
        return per_sink, wanted

    def _to_plan(self) -> list[Managed]:
        """The files whose delivery may have changed since a plan last found them settled
        (`_unplanned`), those still kept, in the order of `managed`."""
        gone = [path for path, m in self._unplanned.items() if self.managed.get(path) is not m]
        for path in gone:
            del self._unplanned[path]
        return sorted(self._unplanned.values(), key=_ORDER)

    def _replan(self, managed: Managed) -> None:
        """`managed`'s delivery may have changed: planned again at the next delivery
        (`_unplanned`), and looked at again by the next look at the copies (`_relook`)."""
        self._unplanned[managed.path] = managed
        self._relook[managed.path] = managed

    def _settled(self, managed: Managed) -> None:
        """A plan found nothing to send for `managed`: planned again once something changes."""
        if self._unplanned.get(managed.path) is managed:
            del self._unplanned[managed.path]

    def _plan_part(
        self,
        part: Iterable[Managed],
        again: bool,
        now: datetime,
        per_sink: PerSink,
        wanted: dict[Path, Want],
    ) -> None:
        remove_at_expiry = self._removes_at_expiry
        for managed in part:
            want = lifecycle.wanted(managed.life.state, remove_at_expiry=remove_at_expiry)
            if want is None:  # nothing for the sinks any more: no retry to wait for either
                managed.retry_at = managed.retrying = None
                managed.owed.clear()  # nothing to deliver: the sink pays at its next delivery
                managed.astray.clear()
                self._settled(managed)
                continue
            confirmed = want == managed.sent and not again
            if confirmed and not managed.owed and not managed.astray:  # the sinks have it
                managed.retry_at = managed.retrying = None  # no retry to wait for
                self._settled(managed)
                continue
            again_to = managed.owed | managed.astray  # sinks that have it, delivered to again
            waiting = managed.retry_at is not None and managed.retry_at > now
            if not again and waiting and want == managed.retrying:
                continue  # a failed delivery waits for its retry; a new answer goes now
            wanted[managed.path] = want
            delivery = self._delivery(managed, want)
            for sink in self._sinks_of(managed):
                if not confirmed or sink in again_to:  # else: only where owed, or astray
                    per_sink.setdefault(sink, []).append((managed, delivery))

    async def _send(
        self, per_sink: PerSink, wanted: Mapping[Path, Want], now: datetime
    ) -> list[Delivered]:
        """Send each sink its batch, and record how each took each staple."""
        names = list(per_sink)
        results = await asyncio.gather(
            *(self.sinks[name].deliver([d for _, d in per_sink[name]]) for name in names)
        )
        failed: set[Path] = set()
        done = []
        made = {m.path: (m, delivery) for group in per_sink.values() for m, delivery in group}
        taken = [
            (managed, delivered)
            for name, group in zip(names, results, strict=True)
            for (managed, _), delivered in zip(per_sink[name], group, strict=True)
        ]
        # successes first: where two files of one certificate go to one sink, a failure of
        # either is what that sink's health says
        for managed, delivered in sorted(taken, key=lambda pair: not pair[1].ok):
            done.append(delivered)
            if self._took(managed, delivered, now):
                managed.owed.discard(delivered.sink)
                managed.astray.discard(delivered.sink)
            else:
                failed.add(managed.path)
        for path, want in wanted.items():
            managed = self.managed[path]
            if path in failed:
                failures = max([1, *(h.failures for h in managed.life.sinks.values())])
                delay = min(
                    DELIVERY_RETRY * (1 << min(failures - 1, 20)), self.policy.schedule.retry_max
                )
                managed.retry_at, managed.retrying = now + delay, want
                self._replan(managed)
            else:
                managed.sent, managed.retry_at, managed.retrying = want, None, None
                sender, delivery = made.get(path, (None, None))
                managed.sent_as = delivery if sender is managed else None
        for life in {self.managed[p].life.key: self.managed[p].life for p in wanted}.values():
            self._save_status(life)
        return done

    def _took(
        self, managed: Managed, delivered: Delivered, now: datetime, *, quiet: bool = False
    ) -> bool:
        """Record how a sink took a delivery; log a repeated failure once, then at doubling
        counts, with the certificate's name (unless `quiet`). Returns whether it worked."""
        life, sink = managed.life, delivered.sink
        before = life.sinks.get(sink)
        for other in self._files.get(life.key, ()):  # the health, and what `_send` sent
            self._relook[other.path] = other
        if delivered.ok:
            if before is not None and not before.ok:
                log.info("%s: sink %s takes the staple again", life.name, sink)
            life.sinks[sink] = SinkHealth(sink, now, None, note=delivered.note)
            return True
        same = before is not None and before.error == delivered.error
        failures = before.failures + 1 if before is not None and not before.ok else 1
        since = before.since if before is not None and not before.ok and before.since else now
        last = before.last_delivery if before is not None else None
        life.sinks[sink] = SinkHealth(
            sink,
            last,
            delivered.error,
            failures,
            since,
            reload_owed=delivered.reload_owed,
            trap=delivered.trap,
        )
        if not quiet and (not same or failures & (failures - 1) == 0):
            repeat = f" (failed {failures} times since {human_time(since)})" if failures > 1 else ""
            log.error("%s: sink %s: %s%s", life.name, sink, delivered.error, repeat)
        return False

    def _sinks_of(self, managed: Managed) -> tuple[str, ...]:
        """The sinks a file's staple goes to: its entry's, or every sink."""
        return managed.entry.sinks or tuple(self.sinks)

    def _delivery(self, managed: Managed, wanted: tuple[Action, bytes | None]) -> Delivery:
        action, der = wanted
        return Delivery(
            key=managed.key,
            name=managed.name,
            cert_path=managed.path,
            action=action,
            der=der,
            issuer_pem=_pem(managed.target),
            bundle_has_issuer=managed.bundle_has_issuer,
            status=managed.state(),
            serial=managed.target.leaf.serial_number,
        )

    # --- Events and status ------------------------------------------------------------------------

    def _emit(self, life: Life, effect: lifecycle.Emit) -> None:
        """Say the event and run its hook; a `shared` one's hook waits for the flush that
        writes it, where the shared state says whether this process tells it (`_tell`)."""
        event = self._said(life, effect) if effect.said else None
        if effect.shared:
            revoked = effect.kind == "revoked"  # told by its fetcher: its run only recorded
            self._pending.news.append(_News(life, effect, event, own=revoked))
            return
        if effect.hook and event is not None:
            self._run_hook(effect.kind, event)

    def _said(self, life: Life, effect: lifecycle.Emit) -> Event:
        """The event as a hook is told it, said in the log now."""
        state = life.state
        staple = state.answer
        paths = [m.path for m in self.by_key(life.key)]
        message = effect.message
        if effect.kind == "expired":
            message += f"; at_expiry={self.policy.at_expiry}"
            if life.target.must_staple:
                message += ". A must-staple certificate is now FAILING for clients."
        event = Event(
            kind=effect.kind,
            name=life.name,
            cert_path=str(paths[0]) if paths else "",
            must_staple=life.target.must_staple,
            status=state.phase.value,
            message=message,
            reason=effect.reason,
            this_update=staple.this_update if staple else None,
            expiry=staple.effective_expiry if staple else None,
        )
        level = logging.INFO if effect.kind == "recovered" else logging.WARNING
        if effect.kind == "expired" or (effect.kind == "failure" and state.held is None):
            level = logging.ERROR
        log.log(level, "%s", event.line())
        return event

    def _tell(self, news: _News) -> None:
        """Run the hook of news this process tells (said now, if it was not yet)."""
        event = news.event or self._said(news.life, news.emit)
        self._run_hook(news.emit.kind, event)

    def _tell_alone(self, news: _News) -> _News:
        """News the shared state cannot decide now (it cannot be written): told as this
        process sees it (`Emit.hook`), then only recorded there once it can be written. What
        this process does not tell on its own (a recovery of a run it never saw opened) is
        left for the shared state to decide when it is written: else a run another process
        opened, closed by this write, would be told recovered by nobody."""
        if news.decided or not news.emit.hook:
            return news
        self._tell(news)
        return replace(news, decided=True)

    def _run_hook(self, kind: str, event: Event) -> None:
        command = self.config.hooks.command(HOOK_FOR[kind])
        if command:
            task = asyncio.get_running_loop().create_task(self._hook(command, event))
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)

    async def _hook(self, command: str, event: Event) -> None:
        problem = await run_hook(command, event, self.config.hooks.timeout)
        if problem:
            log.error("%s: %s", event.name, problem)

    def views(self) -> list[CertView]:
        """Every certificate, usable or not, as a frozen snapshot (sorted by name)."""
        views = [self.view(life) for life in self.lives.values()]
        views += [_problem_view(problem) for problem in self.problems.values()]
        return sorted(views, key=lambda v: (v.name, v.paths))

    def view(self, life: Life) -> CertView:
        target = life.target
        return CertView(
            life.key,
            life.name,
            self._paths(life),
            target.must_staple,
            target.serial,
            life.state,
            _sinks(life),
        )

    def _paths(self, life: Life) -> tuple[str, ...]:
        return tuple([shown(m.path) for m in self.by_key(life.key)])

    def _status(self, life: Life) -> CertStatus:
        """The status row of a life (a CertView's, without making one: a pass writes a row
        per certificate)."""
        state, rejection = life.state, life.state.rejection
        paths = self._paths(life)
        return CertStatus(
            name=life.name,
            cert_path=paths[0] if paths else "",
            must_staple=bool(life.target.must_staple),
            state=state.phase.value,
            next_due=state.next_due,
            failures=state.failures,
            last_attempt=state.last_attempt,
            last_reason=rejection.code if rejection else None,
            last_message=state.problem or (rejection.message if rejection else None),
            paths=paths,
            sinks=self._sinks_owing(life),
        )

    def _sinks_owing(self, life: Life) -> tuple[SinkHealth, ...]:
        """How each sink took the life's staple, as a status row says it: a reload this
        keeper owes and has not paid yet (`Managed.owed`: another process's failed one) is
        said too, so that the next process to read the row (a SIGHUP's keeper, a restart)
        still owes it."""
        owed = {name for managed in self.by_key(life.key) for name in managed.owed}
        sinks = _sinks(life)
        if not owed:
            return sinks
        shown = [replace(h, reload_owed=True) if h.sink in owed else h for h in sinks]
        shown += [SinkHealth(name, None, reload_owed=True) for name in owed - set(life.sinks)]
        return tuple(sorted(shown, key=lambda health: health.sink))

    def _save_status(self, life: Life) -> None:
        self._write_status(life.key, life)

    def _write(self, write: Callable[[], object]) -> None:
        self._pending.other.append(write)
        self._grouped()

    def _grouped(self) -> None:
        """Apply the pending writes once they make a group (while the store cannot take them,
        only the pass's last flush tries again: a locked database makes each try wait)."""
        if len(self._pending) >= WRITE_GROUP and self._store_problem is None:
            self._flush(statuses=False)

    def _write_status(self, key: str, status: CertStatus | Life) -> None:
        """A certificate's status row, written by the pass's last flush (after its delivery):
        one row per certificate however often its state changed meanwhile."""
        self._statuses[key] = status

    def _forget_status(self, key: str) -> None:
        """The row of a certificate (or an unusable file) no configured file shows any more,
        removed by the pass's last flush unless it is written again before: `status` lists
        only what is there (a renewed certificate's old leaf, a removed file, a file fixed)."""
        if key not in self.lives:
            self._statuses[key] = None

    def _flush(self, *, statuses: bool = True, again: bool = True) -> None:
        """Apply the pending store writes in one transaction, with the status rows unless
        `statuses` is False (a full group, or the staples before a delivery, in the middle of
        a pass: the rows would be written again at its end). When the store cannot take them
        (disk full), they stay pending and the keeper serves from memory until it can."""
        if not self._pending and not (statuses and self._statuses) and not self._store_back:
            return
        writes, rows = _Pending(), dict[str, CertStatus | Life | None]()
        try:
            with self.store.transaction():
                if statuses:
                    self._take_written_meanwhile()
                    rows, self._statuses = self._statuses, {}
                writes, self._pending = self._pending, _Pending()
                writes.apply(self.store)
                told = self._settle(writes.news)
                self.store.save_statuses(
                    (key, status if isinstance(status, CertStatus) else self._status(status))
                    for key, status in rows.items()
                    if status is not None
                )
                self.store.forget_statuses(key for key, status in rows.items() if status is None)
        except (sqlite3.Error, OSError) as exc:
            self._pending = writes.then(self._pending)
            self._statuses = rows | self._statuses
            if again and self._afresh_when_damaged(exc):
                self._flush(statuses=statuses, again=False)
                return
            if self._waits_for_lock(exc):
                self._tell_when_patience_ends()
            else:
                self._tell_all_alone()  # every pending news, taken or not
            self._store_failed(exc)
            return
        for news, tell in zip(writes.news, told, strict=True):
            if (tell or news.own) and not news.decided:
                self._tell(news)
        self._store_back, self._locked_since = False, None
        self._end_patience()
        if self._store_problem is not None:
            stored = len(writes) + len(rows)
            log.warning("state store writable again: %d pending writes stored", stored)
            self._store_problem = None

    def _settle(self, news: Sequence[_News]) -> list[bool]:
        """Whether this process tells each of `news`, as the shared state decides, inside
        the transaction that writes them: an expiring alert, or an expiry, by the rank it
        keeps per staple (`settle_alerts`), the rest by the run of failures (`settle_runs`)."""
        runs = [n for n in news if n.emit.alert is None]
        alerts = [(n.life.key, n.emit.alert) for n in news if n.emit.alert is not None]
        told_runs = iter(self.store.settle_runs([(n.life.key, n.emit.kind) for n in runs]))
        told_alerts = iter(self.store.settle_alerts(alerts))
        return [next(told_runs if n.emit.alert is None else told_alerts) for n in news]

    def _take_written_meanwhile(self) -> None:
        """Inside the transaction that writes the status rows, before they are made: what
        another process recorded in them since this keeper last looked at the store (a
        `prime` that ended while this keeper's pass fetched or delivered) is taken in first:
        the attempts of the rows about to be written (`_take_recorded`: the later one wins)
        and the reloads owed (`owe_reloads`: each row keeps its debt until paid). Else the
        rows would go back to this keeper's older view, and the next look at the store would
        read them: the other process's facts lost for good. No process writes in between
        (the transaction holds the write lock)."""
        try:
            if not self.store.written_since_look():
                return
        except sqlite3.Error:
            return  # the store's trouble is said where it is written
        self._take_recorded(self.lives[key] for key in self._statuses if key in self.lives)
        self.owe_reloads()

    def _waits_for_lock(self, exc: BaseException) -> bool:
        """Whether the news of a flush that failed wait for the next flush, which the shared
        state decides: the state was locked by another connection (a `prime`'s group of
        writes holds the lock for milliseconds, and its process may tell the same news), for
        less than `LOCK_PATIENCE` so far (a `prime`, which waits 30 s for a lock, tells at
        once; `run` waits 1 s a flush). Anything else (a full disk, a lock held longer: a
        stuck process, an `sqlite3` shell left in a transaction) and each news is told now,
        as this process sees it: a page is never held back by a broken state."""
        if getattr(exc, "sqlite_errorcode", None) not in _LOCKED:
            return False
        now = self.clock()
        if self._locked_since is None:  # held for the store's busy timeout at least, by now
            waited = getattr(self.store, "busy_timeout", 0.0)  # SqliteStore's; a lock is its
            self._locked_since = now - timedelta(seconds=waited)
        return now - self._locked_since < LOCK_PATIENCE

    def _tell_when_patience_ends(self) -> None:
        """Tell the pending news alone once the lock has lasted `LOCK_PATIENCE`, unless a
        flush works before: a page never waits for the next flush (a pass may be waiting on
        a slow responder meanwhile)."""
        if self._patience is not None or self._locked_since is None:
            return
        left = LOCK_PATIENCE - (self.clock() - self._locked_since)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to wait in
            self._tell_all_alone()
            return
        self._patience = loop.call_later(max(left.total_seconds(), 0.0), self._patience_over)

    def _end_patience(self) -> None:
        """No timer left to tell the pending news (a flush worked, or the keeper closes)."""
        if self._patience is not None:
            self._patience.cancel()
            self._patience = None

    def _patience_over(self) -> None:
        self._patience = None
        if self._locked_since is not None:  # no flush worked since
            self._tell_all_alone()

    def _tell_all_alone(self) -> None:
        """Every pending news told as this process sees it (`_tell_alone`)."""
        self._pending.news = [self._tell_alone(news) for news in self._pending.news]

    def _store_failed(self, exc: BaseException) -> None:
        self._store_trouble(f"{exc}", full=disk_full(exc))

    def _store_trouble(self, problem: str, *, full: bool) -> None:
        """Say why the store cannot be written, once (again when the reason changes)."""
        if problem != self._store_problem:
            if full:
                log.error(
                    "the state store cannot be written: %s. Free space on the file system of "
                    "%s (or raise its quota); meanwhile what is fetched is delivered and "
                    "served from memory, and stored once it can be (by `mustaple run` without "
                    "a restart)",
                    problem,
                    self.config.state_dir,
                )
            else:
                log.error(
                    "the state store cannot be written (%s): what is fetched is delivered "
                    "and served from memory, and stored once the store takes it (tried again "
                    "at each write, and by `mustaple run` at every pass)",
                    problem,
                )
        self._store_problem = problem

    @property
    def unanswered(self) -> tuple[Unanswered, ...]:
        """The entries whose look at their files has not answered (see `Surveys`), and the
        files whose read has not answered (`_hung_read`)."""
        reads = tuple(read for read in self._hung.values() if read is not None)
        return self.surveys.unanswered + reads

    @property
    def without_events(self) -> tuple[Polled, ...]:
        """The entries looked at every pass for want of file events, and why (`Changes`)."""
        return self._changes.polled

    @property
    def store_problem(self) -> str | None:
        """Why the state store cannot be written now, or None."""
        return self._store_problem

    def unstored(self) -> int:
        """How many answers the store has not taken yet (it cannot be written: a full disk)."""
        return len(self._pending.staples) if self._store_problem is not None else 0

    def unrecorded(self) -> int:
        """How many hooks this process told from its own view that the store has not
        recorded yet (it could not be written): a keeper built from the store would tell
        them again."""
        return sum(1 for news in self._pending.news if news.decided)

    def save_pending(self) -> None:
        """Store what is pending (a scan's rows), and only that: a row another process wrote
        since this keeper's last pass (a `prime`'s owed reload, its trap) stays as it is, for
        the next keeper (a SIGHUP's, a restart's) to read."""
        self._flush()

    # --- The deploy gate --------------------------------------------------------------------------

    def covered(self) -> Coverage:
        """Which configured file, and entry, a path given to `prime` is."""
        return Coverage(self.config)

    async def prime(
        self, paths: Sequence[Path], *, interrupt: Interrupt | None = None
    ) -> list[Primed]:
        """Load `paths` (each covered by an entry), fetch each now (in fleet mode: unless the
        fleet has just fetched it), deliver to its entry's sinks; one frozen `Primed` per path
        given; InputError for a missing or unusable file, before anything is fetched. Once
        `interrupt` is asked, one `Primed` per file loaded so far (see `Interrupt`)."""
        primed, _ = await self._prime(paths, refuse=True, interrupt=interrupt)
        return primed

    async def prime_usable(
        self, paths: Sequence[Path], *, interrupt: Interrupt | None = None
    ) -> tuple[list[Primed], list[Unusable]]:
        """`prime` of the usable files among `paths`; each file missing or unusable is left
        out and said, in the order given (`prime --all`: a fault in one file stays there)."""
        return await self._prime(paths, refuse=False, interrupt=interrupt)

    async def _prime(
        self, paths: Sequence[Path], *, refuse: bool, interrupt: Interrupt | None
    ) -> tuple[list[Primed], list[Unusable]]:
        stop = interrupt or Interrupt()  # never asked: to the end
        refreshed: set[str] = set()  # the certificates whose fetch is over
        self._downloads.begin(self.clock())
        with _collecting(len(paths)):
            async with self._helpers(len(paths)):  # workers start while the paths are resolved
                work = await _until(stop.stopping, self._fetch_given(paths, refuse, refreshed))
                outcome = work.result() if work is not None else None
            if outcome is not None:
                chosen, unusable, loaded = outcome
            else:  # what was loaded before the stop
                chosen, loaded = list(self.managed.values()), None
                unusable = [_unusable_of(p) for p in self.problems.values()]
            await self.judge_time()
            await self.take_from_sinks(m for m in chosen if m.life.state.answer is None)
            self.owe_reloads()
            unconfirmed = await self._deliver_unless(stop.abandoning)
            if loaded is not None:
                self._forget_held_elsewhere(loaded)
        return [
            _primed(m, (m.key in refreshed or m.next_due is None) and m.path not in unconfirmed)
            for m in chosen
        ], unusable

    async def _fetch_given(
        self, paths: Sequence[Path], refuse: bool, refreshed: set[str]
    ) -> tuple[list[Managed], list[Unusable], dict[Path, Managed | None]]:
        """Load `paths` and fetch each certificate now: the files loaded (in order), those
        left out, and what each file loaded as (see `_load_given`)."""
        unusable: list[Unusable] = []
        with self._restores_summed(len(paths)):
            resolved, loaded = await self._load_given(paths, refuse=refuse)
        # the attempts recorded before (a keeper's, an earlier prime's): this one's failure
        # continues their run of failures, its success ends it (the hooks are told here)
        self._take_recorded({m.key: m.life for m in loaded.values() if m}.values())
        chosen = []
        for path in resolved:
            managed = loaded.get(path)
            if managed is not None:
                chosen.append(managed)
                continue
            left = self._left_out(path, loaded)
            if refuse:
                raise InputError(left.message)
            unusable.append(left)
        now = self.clock()
        await self._retire_expired(now)
        wanted = self._one_per_life(m for m in chosen if m.next_due is not None)
        for managed in wanted:  # due now, even with a valid staple
            if not managed.life.state.due(now):
                self._apply(managed.life, Wait(now), now)
        await self._refresh_all(wanted, refreshed)
        return chosen, unusable, loaded

    async def _deliver_unless(self, abandon: asyncio.Event) -> set[Path]:
        """`deliver`, unless `abandon` is set first: then the delivery is cut short, the hooks
        still running are stopped, and each sink of a file whose staple no sink confirmed
        is recorded as not having taken it (`NOT_DELIVERED`, and a reload owed: the file may
        be in place with the server not reloaded). Returns the paths of those files."""
        delivering = await _until(abandon, self.deliver())
        if delivering is not None:
            delivering.result()  # an unexpected error goes on up, as without `abandon`
            return set()
        for hook in self._hooks:
            hook.cancel()  # the command is killed, with every process it started
        return self.not_delivered(NOT_DELIVERED)

    def not_delivered(self, error: str) -> set[Path]:
        """After a delivery cut short: each sink of a file whose staple no sink confirmed is
        recorded as not having taken it (`error`, and a reload owed where the sink reloads:
        the file may be in place with the server not reloaded), in the status rows written
        at the next flush. Returns the paths of those files."""
        now, left = self.clock(), set()
        for managed in self.managed.values():
            want = self._wanted(managed)
            if want is None or want == managed.sent:
                continue
            left.add(managed.path)
            for name in self._sinks_of(managed):
                owed = isinstance(self.sinks[name], Reloads)
                missed = Delivered(managed.key, name, False, error, reload_owed=owed)
                self._took(managed, missed, now, quiet=True)
            self._save_status(managed.life)
        return left

    def _left_out(self, path: Path, loaded: Mapping[Path, Managed | None]) -> Unusable:
        """A file `prime` could not load, and why."""
        if path in loaded:
            return _unusable_of(self.problems[path])
        name, must, _ = _identify(path)
        # There when it was listed, gone when looked at; or a symbolic link to nothing (listed)
        message = vanished(path) if not os.path.lexists(path) else f"{path}: certificate not found"
        return Unusable(path, name, must, Reason.CERT_UNUSABLE, shown(message))

    def _forget_held_elsewhere(self, loaded: Mapping[Path, Managed | None]) -> None:
        """The status rows of certificates these files held before (renewed, or turned
        unusable) lose their paths, and go when none is left: no keeper may be running to
        see it (`prime` from cron only), and `status` must not list a leaf no file holds."""
        known = set(self.lives) | {problem.key for problem in self.problems.values()}
        try:
            others = self.store.status_keys() - known
        except sqlite3.Error:
            return  # a damaged database: said by its writes; the rows go at a later prime
        if not others:  # a first prime, or every row is one of these files'
            return
        read = {shown(path) for path in loaded}
        try:
            rows = self.store.statuses()
        except sqlite3.Error:
            return
        for key, row in rows.items():
            kept = tuple(path for path in row.paths if path not in read)
            if key not in others or kept == row.paths:
                continue
            if kept:
                self._write_status(key, replace(row, cert_path=kept[0], paths=kept))
            else:
                self._forget_status(key)
        self._flush()

    async def _load_given(
        self, paths: Sequence[Path], *, refuse: bool
    ) -> tuple[list[Path], dict[Path, Managed | None]]:
        """The configured path of each given one, in order, and each file loaded (once);
        InputError for a path no entry covers, or that does not exist if `refuse` (else it
        is not loaded: it has no entry among those loaded). With worker processes,
        a slice of RESOLVE_SLICE paths at a time: the workers load the first slices while the
        main process resolves the next (a stat and a look-up per path: about 1 s at 100k)."""
        covered = self.covered()
        step = RESOLVE_SLICE if isinstance(self.fetcher, WorkerPool) else max(1, len(paths))
        files: dict[Path, FileToLoad] = {}
        resolved: list[Path] = []
        loading: list[asyncio.Future[list[Managed | None]]] = []
        try:
            for at in range(0, len(paths), step):
                new = []
                for given in paths[at : at + step]:
                    path, entry = covered.find(given)
                    if path not in files:
                        stamp = _stamp(path, entry.issuer)
                        if stamp is None and refuse:
                            raise InputError(f"{given}: certificate not found")
                        if stamp is not None:
                            new.append(files.setdefault(path, (path, entry, stamp)))
                    resolved.append(path)
                loading.append(asyncio.ensure_future(self._load_all(new)))
                await asyncio.sleep(0)  # the slice goes out to the workers
            done = [managed for part in await asyncio.gather(*loading) for managed in part]
        except BaseException:
            for task in loading:
                task.cancel()
            await asyncio.gather(*loading, return_exceptions=True)
            raise
        return resolved, dict(zip(files, done, strict=True))


def _collecting(batch: int) -> contextlib.AbstractContextManager[None]:
    """The garbage collector set for a batch of `batch` certificates (`batch_collector`, from
    WORKERS_FROM on: a large batch makes many objects that live until its end)."""
    return batch_collector() if batch >= WORKERS_FROM else contextlib.nullcontext()


def _read_only(store: Store) -> str | None:
    """Why `store` is open for reading only (a full disk at its opening), or None."""
    return store.read_only if isinstance(store, SqliteStore) else None


def _same(answer: Staple, this_update: datetime, revoked: bool) -> bool:
    """Whether a stored answer's stamp is the answer in hand's."""
    return answer.this_update == this_update and answer.good != revoked


def _unusable_of(problem: Problem) -> Unusable:
    p = problem
    return Unusable(p.path, p.name, p.must_staple, p.reason, p.message)


_stopwatch = time.perf_counter  # what a slice of `_turns` took
_RETRY_AT = operator.attrgetter("retry_at")
_ORDER = operator.attrgetter("order")
_KEY = operator.attrgetter("key")
_DAWN = datetime.min.replace(tzinfo=UTC)  # before any time: due at once


def _earliest(times: Iterable[datetime | None]) -> datetime | None:
    return min(filter(None, times), default=None)


async def _turns(items: Iterable[_T]) -> AsyncIterator[Sequence[_T]]:
    """`items` (taken as they are now) in slices that take about TURN seconds each to go
    through (the first has SLICE[0] items; each next one is sized from what the last one
    cost), the event loop given a turn between two: the local responder answers while a
    pass goes through 100k certificates."""
    with paused():  # a sweep makes many short-lived objects: none worth a collection
        listed = list(items)
        fewest, most = SLICE
        start, size = 0, fewest
        while start < len(listed):
            began = _stopwatch()
            yield listed[start : start + size]
            start += size
            if start < len(listed):
                spent = _stopwatch() - began
                size = max(fewest, min(most, int(size * TURN / spent) if spent > 0 else most))
                await asyncio.sleep(0)


def _cert_id(managed: Managed, hash_name: str) -> CertId:
    return make_cert_id(managed.target.issuer, managed.target.serial, hash_name)


def _survey(
    config: Config,
    managed: Mapping[Path, Managed],
    problems: Iterable[Path],
    skip: Collection[int] = (),
    at: list[object] | None = None,
    *,
    changes: tuple[Changes, datetime] | None = None,
    again: Collection[str] = (),
) -> tuple[dict[Path, tuple[CertEntry, Stamp | None]], list[Path]]:
    """The configured certificate files to look at (`_changed`), each with its entry and
    what it is now (`_stamp`): all but those of `managed` found as they were loaded; and the
    files of `managed` and `problems` no longer configured or present. Run in a thread on
    copies the keeper does not change meanwhile: a listing and a stat of each file, about
    0.7 s at 100k, names looked up as strings (a `Path`'s hash is a Python call). A pass
    that finds nothing new hands back nothing (100k entries handed back were scanned by the
    collector, 40 ms at a time). A known file is named by the same `Path` (the keeper's
    dictionaries then find it by identity). An entry's `issuer` file is stat-ed once.

    The entries numbered in `skip` are not looked at (their files hang, see `Surveys`, or
    nothing changed in their directories, see `Changes`): their files are kept as they were,
    and a file one of their patterns matches is not gone. `at` is kept at the entry's number
    and the pattern or file being looked at (what a look that hangs was doing). With
    `changes` (and when the look began), each entry looked at has its directories watched.
    The files named in `again` (held, their read hung) are handed back found as they are."""
    known: dict[str, tuple[Path, Managed | None]] = {str(p): (p, None) for p in problems}
    known.update((str(path), (path, current)) for path, current in managed.items())
    at = at if at is not None else [None, ""]
    numbers = {id(entry): number for number, entry in enumerate(config.certificates)}
    found, stat, unknown = {}, os.stat, (None, None)
    last, mtime, size = None, -1, -1
    listed: dict[int, list[str]] = {n: [] for n in range(len(config.certificates)) if n not in skip}
    fresh: set[str] = set()
    names: list[str] = []
    for name, entry in configured_names(config, known, skip, at).items():
        if entry is not last:
            at[:] = (numbers[id(entry)], entry.issuer)
            last, (mtime, size) = entry, _issuer_stamp(entry.issuer)
            names = listed[numbers[id(entry)]]
        at[1] = name
        path, current = known.pop(name, unknown)
        if current is not None and numbers.get(id(current.entry)) in skip:
            continue  # an entry set aside listed it first: kept as it was
        names.append(name)
        try:
            info = stat(name)
            stamp: Stamp | None = (info.st_mtime_ns, info.st_size, mtime, size)
        except OSError:
            stamp = None
        if (
            stamp is None
            or current is None
            or current.stamp != stamp
            or (current.entry is not entry and current.entry != entry)
            or name in again
        ):
            found[path or Path(name)] = (entry, stamp)
            fresh.add(name)
    if changes is not None:
        watch, began = changes
        for number, names in listed.items():
            at[:] = (number, "")
            watch.looked(number, began, names, fresh, at)
    return found, _gone(config, known, skip, numbers)


def _gone(
    config: Config,
    left: Mapping[str, tuple[Path, Managed | None]],
    skip: Collection[int],
    numbers: Mapping[int, int],
) -> list[Path]:
    """The files of `left` (known, not listed by a look) that are gone: all but those of an
    entry set aside (kept as they were), and those one of its patterns may list."""
    if not skip:
        return [path for path, _ in left.values()]
    skipped = [p for n in skip for p in config.certificates[n].paths]
    return [
        path
        for name, (path, current) in left.items()
        if not (current is not None and numbers.get(id(current.entry)) in skip)
        and not _matched(name, skipped)
    ]


def _matched(name: str, patterns: Iterable[str]) -> bool:
    """Whether one of `patterns` may list `name` (fnmatch: a '*' also matches a '/', so
    more than glob would; used to keep files, not to find them)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


async def _until(stop: asyncio.Event, work: Awaitable[_T]) -> asyncio.Future[_T] | None:
    """`work` run to its end (its future, done: its result or its exception), unless `stop`
    is set first: then it is cancelled, waited for, and None is returned."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return None if task.cancelled() else task


def _primed(managed: Managed, done: bool = True) -> Primed:
    life = managed.life
    sinks = tuple(life.sinks.values())
    return Primed(
        managed.path, life.name, life.target.must_staple, life.state, sinks, managed.sent, done
    )


def _host(managed: Managed) -> str:
    """The host of the first responder URL tried: what `per_host` limits."""
    return first_host(managed.entry.urls, managed.target.ocsp_urls)


FILE_KEY = "file:"  # the start of an unusable file's key


def file_key(path: Path) -> str:
    """The key of an unusable file's row: its path, or the hex of its bytes when they are not
    UTF-8 (where `shown` could give two files one text)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"{FILE_KEY}hex:{os.fsencode(path).hex()}"
    return f"{FILE_KEY}{text}"


def _stamp(path: Path, issuer: Path | None = None) -> Stamp | None:
    """What `path` and its `issuer` file are now (a fixed issuer file is noticed: the file
    it made unusable is read again), or None when `path` cannot be looked at."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, *_issuer_stamp(issuer))


def _issuer_stamp(issuer: Path | None) -> tuple[int, int]:
    """The `issuer` file's part of a stamp: (-1, -1) without one, or when it is not there."""
    try:
        given = os.stat(issuer) if issuer is not None else None
    except OSError:
        given = None
    return (given.st_mtime_ns, given.st_size) if given is not None else (-1, -1)


def _identify(path: Path) -> tuple[str, bool | None, int | None]:
    """The name, must-staple flag and serial of an unusable file's leaf, when it can be read
    (else `_unidentified`)."""
    try:
        leaf = parse_certificates(read_input(path, "certificate"), source=str(path))[0]
        return display_name(leaf), is_must_staple(leaf), leaf.serial_number
    except Exception:
        return _unidentified(path)


def _unidentified(path: Path) -> tuple[str, bool | None, int | None]:
    """An unread file's name (its directory's), must-staple flag (unknown) and serial (none)."""
    return shown(path.parent.name or path.name), None, None


def _internal(what: str) -> str:
    return (
        f"unexpected error while handling this certificate ({what}); "
        "the other certificates go on; please report it"
    )


def _problem_status(problem: Problem) -> CertStatus:
    return CertStatus(
        name=problem.name,
        cert_path=shown(problem.path),
        must_staple=problem.must_staple,
        state=Phase.UNUSABLE.value,
        next_due=problem.retry_at,  # its failed issuer download's next try, as a fetch's
        failures=0,
        last_attempt=None,
        last_reason=problem.reason.code,
        last_message=problem.message,
        paths=(shown(problem.path),),
    )


def _problem_view(problem: Problem) -> CertView:
    rejection = Rejection(problem.reason, problem.message)
    state = CertState(
        phase=Phase.UNUSABLE,
        problem=problem.message,
        rejection=rejection,
        next_due=problem.retry_at,
    )
    return CertView(
        problem.key,
        problem.name,
        (shown(problem.path),),
        problem.must_staple,
        problem.serial,
        state,
    )


def _sinks(life: Life) -> tuple[SinkHealth, ...]:
    return tuple(life.sinks[name] for name in sorted(life.sinks))


def _stored(life: Life, effect: lifecycle.Store) -> StoredStaple:
    staple = effect.staple
    return StoredStaple(
        life.name,
        staple.der,
        staple.this_update,
        staple.effective_expiry,
        effect.fetched_at,
        effect.url,
        revoked=not staple.good,
    )


def _recorded(attempt: RecordedAttempt, *, reloaded: bool) -> Tried | None:
    """The life cycle's event for an attempt a status row records (`reloaded`: made by this
    process before its reload); None when it cannot be read (a reason code this version
    does not know, a failure without one)."""
    if not attempt.failures:
        return Tried(attempt.at, reloaded=reloaded)
    if attempt.reason is None:
        return None
    try:
        rejection = Rejection.read(attempt.reason, attempt.message or "")
    except ValueError:
        return None
    return Tried(attempt.at, rejection, attempt.failures, reloaded)


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


_LEVELS = {"info": logging.INFO, "warning": logging.WARNING}
