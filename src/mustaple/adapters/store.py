"""State that survives anything: the last good staple and a bounded history of attempts.

`Store` is the contract every backend keeps (SQLite here; Redis in fleet mode):

- Keys are certificate identities (`cert_key`: the leaf's SHA-256 fingerprint in hex).
- The store is the single truth every process shares (`run`, `prime`, a restarted `run`):
  the stored answer is the certificate's last valid answer, good or revoked.
- `save_staple` replaces the stored answer atomically, and only with one that may replace it
  (`verify.may_replace`: never older; a good answer after a revoked one only when strictly
  newer); it returns whether it wrote. After a crash at any moment, `load` returns either the
  previous answer or the new one, complete.
- `others_wrote()` is None unless another process committed since the last call; then it
  gives every stored answer's (thisUpdate, revoked) (none: empty, yet its status rows may
  have changed), so a running keeper loads only the
  answers that differ from its own (it picks up what `prime` stored without a reload).
  `written_since_look()` says only whether one did, without counting as that look: a
  process about to write its status rows over, inside the transaction that writes them,
  takes in what another process recorded in them first (a row never goes back to an older
  view).
- `last_attempts(keys)` gives the last attempt each status row recorded (by whichever
  process wrote it), so a keeper keeps showing another process's attempt when it is the
  latest (a `prime` beside it, or the process before a restart).
- `settle_runs(news)` decides, atomically with every other process, which process tells a
  certificate's run of failures to the hooks: a failure that opens the run, a recovery that
  closes it (each told once, whatever processes refreshed meanwhile). `settle_alerts(news)`
  likewise decides which process tells a staple's expiring alert, each level once per
  staple, and its expiry once (the step after CRITICAL), and `alerts(keys)` gives the last
  one told, for a process to start from.
- `begin_delivery(sinks)` records that this process delivers to `sinks` (its pid and start:
  `mustaple.adapters.processes`), and `end_delivery(sinks)` drops that record once the
  sinks' outcomes are written (in the commits of the staples and of the status rows: no
  write of its own, none per certificate). A record whose process is gone says that a
  delivery was cut short (a SIGKILL, the OOM killer, a power cut, a stop of the unit that
  killed the reload command): the files may be written and the server not reloaded.
  `take_cut_deliveries(sinks)` gives those of `sinks` (atomically: of processes starting at
  once, one takes each) and makes their records this process's, whose delivery pays the
  reload they owe (`delivery.Reloads`) and ends them; one that never delivers to such a
  sink leaves the record for the next process.
- `load` returns None for an unknown key; it never raises for a missing entry.
- Stored bytes are not trusted blindly: the keeper validates a loaded staple again before
  delivering it, so a corrupted row costs a fetch, never a bad staple.
- Calls may come from one thread at a time; the keeper serialises them.
- `transaction()` groups writes: inside it they are applied together, atomically and durably
  when it ends (or not at all); outside it each write is a transaction of its own.

`SqliteStore` also keeps the leaf-signature checks made (`mustaple.adapters.signatures`): one
tag per (issuer, leaf) pair whose signature was checked, with the leaf's notAfter (the Redis
store has none: there every start checks every signature).

`SqliteStore` uses the stdlib sqlite3 in WAL mode with synchronous=FULL: each transaction is
durable when it ends. A file that is not a readable database is moved aside
(`state.db.corrupt-TIME`, one loud line) and a fresh one started: every staple in it can be
fetched again; `check` finds a file damaged under a running process too (its first page read
from the file, not from SQLite's cache, which damage does not invalidate).

Opened with `read_when_full` (the daemon), a store whose file system is full (ENOSPC, or the
quota used up: EDQUOT) is opened for reading only instead of refused: `read_only` says why,
every write raises `StateDiskFull`, and each `check` tries to open it for writing again. Its
stored answers are read as usual (without even SQLite's shared-memory file, which cannot be
made on a full disk, when its log holds nothing); a database not made yet is an empty one in
memory until it can be.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mustaple.adapters.files import os_words
from mustaple.adapters.processes import running, this_process
from mustaple.core.certs import Target
from mustaple.core.delivery import SinkHealth, Trap
from mustaple.core.errors import InputError
from mustaple.core.lifecycle import EXPIRY_RANK, Alert, Phase
from mustaple.core.reasons import Rejection
from mustaple.core.verify import DEFAULT_POLICY, Dated, Policy, Staple, may_replace, verify

__all__ = [
    "AttemptRecord",
    "CertStatus",
    "RecordedAttempt",
    "SqliteStore",
    "StateDiskFull",
    "Store",
    "StoredStaple",
    "cert_key",
    "damaged",
    "disk_full",
    "regular_or_none",
    "sinks_from_json",
    "sinks_json",
    "traps_of",
]

log = logging.getLogger("mustaple")
HISTORY_LIMIT = 50
BUSY_TIMEOUT = 30.0  # seconds a write waits for another process's lock (a one-shot command)
# seconds a write waits while a lock that outlasted a whole busy timeout still holds (an
# operator's `sqlite3` shell left in a transaction, a stuck process): a prime waits its 30 s
# once, not at each of its writes
STILL_LOCKED_WAIT = 1.0
_LOCKED = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # another connection holds the lock
_IN_CHUNK = 500  # keys to one `IN (...)` query (SQLite allows 32,766 parameters)
_FULL = (errno.ENOSPC, errno.EDQUOT)  # a file system full, or the quota used up
_PROBE_SIZE = 65536  # bytes written to tell a full disk: a WAL frame and the shared memory
# 3: the signatures table; 4: the runs, alerts and deliveries tables; 5: an expiry told is
# recorded in the alerts table too, at `lifecycle.EXPIRY_RANK` (a level no older one reads)
_SCHEMA_VERSION = 5
# At the upgrade to schema 4: the runs of failures as an older mustaple left them in its
# status rows (failures counted, or revoked, or expired), so that the first good answer
# after the upgrade still tells on_recovered (`settle_runs`), as the process that told
# on_failure would have; and none where its rows say a run ended (a state of schema 4 that
# an older mustaple wrote to after a downgrade: it told the recovery itself).
_RUNS_FROM_STATUS = (
    """
    DELETE FROM runs WHERE cert_key IN (
        SELECT cert_key FROM status WHERE failures = 0 AND state NOT IN ('revoked', 'expired')
    )
    """,
    """
    INSERT OR IGNORE INTO runs (cert_key, opened_by)
    SELECT cert_key, CASE WHEN state = 'revoked' THEN 'revoked'
                          WHEN failures > 0 THEN 'failure' ELSE 'expired' END
    FROM status WHERE failures > 0 OR state IN ('revoked', 'expired')
    """,
)
# At the upgrade to schema 5: the expiries an older mustaple told, as its status rows say
# them (expired, the stored staple a good one), recorded as told for that staple, so that a
# process of this version that holds the same staple does not tell its expiry again; never
# over what is recorded for a newer staple, or already for this one.
_EXPIRIES_FROM_STATUS = f"""
    INSERT OR REPLACE INTO alerts (cert_key, this_update, effective_expiry, level)
    SELECT s.cert_key, s.this_update, s.effective_expiry, {EXPIRY_RANK}
    FROM staples AS s JOIN status AS t ON t.cert_key = s.cert_key
    WHERE t.state = 'expired' AND s.revoked = 0 AND NOT EXISTS (
        SELECT 1 FROM alerts AS a WHERE a.cert_key = s.cert_key
        AND (a.this_update, a.effective_expiry, a.level)
            >= (s.this_update, s.effective_expiry, {EXPIRY_RANK})
    )
"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS staples (
    cert_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    der BLOB NOT NULL,
    this_update TEXT NOT NULL,
    effective_expiry TEXT NOT NULL,
    fetched_at TEXT NOT NULL,
    responder_url TEXT,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cert_key TEXT NOT NULL,
    at TEXT NOT NULL,
    url TEXT NOT NULL,
    method TEXT NOT NULL,
    http_status INTEGER,
    latency REAL NOT NULL,
    reason TEXT,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_by_cert ON attempts (cert_key, id);
CREATE TABLE IF NOT EXISTS status (
    cert_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    cert_path TEXT NOT NULL,
    must_staple INTEGER NOT NULL,
    state TEXT NOT NULL,
    next_due TEXT,
    failures INTEGER NOT NULL,
    last_attempt TEXT,
    last_reason TEXT,
    last_message TEXT,
    paths TEXT NOT NULL DEFAULT '[]',
    sinks TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS runs (
    cert_key TEXT PRIMARY KEY,
    opened_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    cert_key TEXT PRIMARY KEY,
    this_update TEXT NOT NULL,
    effective_expiry TEXT NOT NULL,
    level INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    sink TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT NOT NULL,
    PRIMARY KEY (sink, pid, started)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signatures (
    tag BLOB PRIMARY KEY,
    not_after TEXT NOT NULL
) WITHOUT ROWID;
"""

_ADDED_IN_2 = (
    ("staples", "revoked", "INTEGER NOT NULL DEFAULT 0"),
    ("status", "paths", "TEXT NOT NULL DEFAULT '[]'"),
    ("status", "sinks", "TEXT NOT NULL DEFAULT '[]'"),
)


def cert_key(cert: x509.Certificate) -> str:
    """The identity a certificate's state is stored under."""
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True, slots=True)
class StoredStaple:
    """An answer as stored (a good staple, or the revoked answer): the DER and enough metadata
    to schedule and compare without parsing."""

    name: str
    der: bytes
    this_update: datetime
    effective_expiry: datetime
    fetched_at: datetime
    responder_url: str | None
    revoked: bool = False

    @property
    def good(self) -> bool:
        return not self.revoked


@dataclass(frozen=True, slots=True)
class Looked:
    """What the store held for a certificate, validated at one moment (`look_up`): `outcome`
    is None when nothing was stored."""

    outcome: Staple | Rejection | None = None
    fetched_at: datetime | None = None
    good: bool = False  # the stored answer was a good staple (valid now or not)
    url: str | None = None  # the responder it came from


def look_up(
    store: Store, key: str, target: Target, now: datetime, policy: Policy = DEFAULT_POLICY
) -> Looked:
    """The stored answer for `key`, validated again at `now` (a process starting, or taking
    in what another process stored)."""
    try:
        stored = store.load(key)
    except sqlite3.Error:  # a damaged database: as if nothing were stored (its writes say it)
        return Looked()
    if stored is None:
        return Looked()
    outcome = verify(stored.der, target, now, policy)
    return Looked(outcome, stored.fetched_at, stored.good, stored.responder_url)


@dataclass(frozen=True, slots=True)
class CertStatus:
    """What the keeper last knew about a certificate, for `mustaple status`."""

    name: str
    cert_path: str
    must_staple: bool | None  # None: not known (a file that cannot be read)
    state: str  # a `lifecycle.Phase` value: good, failing, expired, revoked, unusable, pending
    next_due: datetime | None
    failures: int
    last_attempt: datetime | None
    last_reason: str | None
    last_message: str | None
    paths: tuple[str, ...] = ()  # every configured file holding this certificate
    sinks: tuple[SinkHealth, ...] = ()  # how each sink last took its staple


@dataclass(frozen=True, slots=True)
class RecordedAttempt:
    """A certificate's last attempt as its status row recorded it (`Store.last_attempts`)."""

    at: datetime
    failures: int  # failed refreshes in a row, this one included: 0 when it worked
    reason: str | None  # the failure's reason code
    message: str | None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt as kept in the history."""

    at: datetime
    url: str
    method: str
    http_status: int | None
    latency: float
    reason: str | None
    message: str


class Store(Protocol):
    """The storage contract (see the module docstring)."""

    def load(self, key: str) -> StoredStaple | None: ...

    def save_staple(self, key: str, staple: StoredStaple) -> bool: ...

    def save_staples(self, items: Sequence[tuple[str, StoredStaple]]) -> list[bool]: ...

    def others_wrote(self) -> dict[str, tuple[datetime, bool]] | None: ...

    def written_since_look(self) -> bool: ...

    def check(self) -> str | None: ...

    def add_attempts(self, key: str, attempts: Iterable[AttemptRecord]) -> None: ...

    def add_all_attempts(self, items: Sequence[tuple[str, Iterable[AttemptRecord]]]) -> None: ...

    def history(self, key: str, limit: int = HISTORY_LIMIT) -> list[AttemptRecord]: ...

    def keys(self) -> list[str]: ...

    def save_status(self, key: str, status: CertStatus) -> None: ...

    def save_statuses(self, rows: Iterable[tuple[str, CertStatus]]) -> None: ...

    def statuses(self) -> dict[str, CertStatus]: ...

    def last_attempts(self, keys: Collection[str] | None = None) -> dict[str, RecordedAttempt]: ...

    def settle_runs(self, news: Sequence[tuple[str, str]]) -> list[bool]: ...

    def settle_alerts(self, news: Sequence[tuple[str, Alert]]) -> list[bool]: ...

    def alerts(self, keys: Collection[str]) -> dict[str, Alert]: ...

    def forget_statuses(self, keys: Iterable[str]) -> None: ...

    def status_keys(self) -> set[str]: ...

    def owed_reloads(self) -> set[tuple[str, str]]: ...

    def traps(self) -> dict[tuple[str, str], Trap]: ...

    def begin_delivery(self, sinks: Collection[str]) -> None: ...

    def end_delivery(self, sinks: Collection[str]) -> None: ...

    def take_cut_deliveries(self, sinks: Collection[str]) -> set[str]: ...

    def remove(self, key: str) -> None: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...


class StateDiskFull(sqlite3.OperationalError):
    """A write to a store opened for reading only because its disk is full."""


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the state's file system is full (or its quota used up)."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL
    if isinstance(exc, StateDiskFull):
        return True
    code = getattr(exc, "sqlite_errorcode", None)  # set on what SQLite itself raised
    return isinstance(exc, sqlite3.Error) and code == sqlite3.SQLITE_FULL


def damaged(exc: BaseException) -> bool:
    """Whether `exc` says the database file is damaged ("database disk image is malformed",
    "file is not a database"), not locked, full or unwritable."""
    code = getattr(exc, "sqlite_errorcode", None)  # an extended code: its low byte is the kind
    if code is None:
        return type(exc) is sqlite3.DatabaseError
    return (code & 0xFF) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _locked(exc: BaseException) -> bool:
    """Whether `exc` says another connection holds the database's lock."""
    return getattr(exc, "sqlite_errorcode", None) in _LOCKED


def _no_space(directory: Path) -> str | None:
    """Why nothing can be written in `directory` (its file system full, or the quota used up),
    found by writing a small unnamed file there; None when that works, or fails otherwise.
    SQLite says only "disk I/O error" when it cannot make its shared-memory file."""
    try:
        with tempfile.TemporaryFile(dir=directory) as probe:
            probe.write(bytes(_PROBE_SIZE))
            probe.flush()
    except OSError as exc:
        if exc.errno in _FULL:
            return exc.strerror or str(exc)
    return None


def _read_only(directory: Path) -> str | None:
    """Why nothing can be written in `directory` when its file system is mounted read-only
    (SQLite says only "unable to open database file"), else None."""
    try:
        flags = os.statvfs(directory).f_flag
    except OSError:
        return None
    if not flags & os.ST_RDONLY:
        return None
    return os_words(OSError(errno.EROFS, os.strerror(errno.EROFS)), directory)


def _full_disk(why: str) -> str:
    """What a store open for reading only says of itself (`read_only`)."""
    return f"the state disk is full ({why}), the state is read only"


def _in_memory() -> sqlite3.Connection:
    """An empty state in memory: what a store reads while its database cannot be made."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(_SCHEMA)
    return db


def _empty(path: Path) -> bool:
    """Whether there is no database at `path`: no file, or an empty one."""
    try:
        return os.path.getsize(path) == 0
    except FileNotFoundError:
        return True


def _log_holds(path: Path) -> bool:
    """Whether the database's write-ahead log holds anything (an immutable reader skips it)."""
    try:
        return os.path.getsize(f"{path}-wal") > 0
    except OSError:
        return False


def _reading(path: Path, mode: str, timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """A connection reading `path` (`mode`: "mode=ro" or "immutable=1"), checked by a read.
    The path is quoted in the URI: a %, ? or # in it is a name."""
    uri = f"file:{quote(str(path))}?{mode}"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def _read_on_any_disk(path: Path) -> sqlite3.Connection:
    """`path` opened to read only, on a full disk too (as immutable, when SQLite cannot make
    its shared-memory file there and the log holds nothing that would then be missed)."""
    try:
        return _reading(path, "mode=ro")
    except sqlite3.OperationalError:
        if _log_holds(path) or _no_space(path.parent) is None:
            raise
        return _reading(path, "immutable=1")


def regular_or_none(path: Path) -> None:
    """InputError when the database file is there but no regular file: a FIFO would block a
    read-only connect for ever, and SQLite says only "disk I/O error" of the others."""
    if os.path.exists(path) and not os.path.isfile(path):
        raise InputError(
            f"{path}: not a regular file (a directory, a FIFO or a device), so no state "
            "database; move it away: prime or run makes a new one"
        )


def _iso(value: datetime) -> str:
    if value.tzinfo is not UTC:  # the keeper's times are in UTC already
        value = value.astimezone(UTC)
    return value.isoformat()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _unreadable(key: str, exc: Exception) -> None:
    """One line for a stored row that cannot be read (edited by hand, or damaged): it is
    taken as absent, so it costs only that certificate's stored answer."""
    log.warning(
        "state store: the stored answer of %s cannot be read (%s); taken as none: it is "
        "fetched again",
        key[:16],
        exc,
    )


def _words(exc: sqlite3.Error | OSError, directory: Path) -> str:
    """What `exc` says (an OSError in the system's words: `os_words`)."""
    return os_words(exc, directory) if isinstance(exc, OSError) else str(exc)


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file `path` is (device and inode), or None when there is none."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


class SqliteStore:
    """The embedded default backend: one SQLite file in the state directory."""

    def __init__(
        self,
        path: str | Path,
        *,
        history_limit: int = HISTORY_LIMIT,
        busy_timeout: float = BUSY_TIMEOUT,
        read_when_full: bool = False,
    ) -> None:
        """`busy_timeout`: how long a write waits for another process's write lock before it
        fails (the keeper then keeps it pending: `run` waits little, its loop serves).
        `read_when_full`: a full disk opens the store for reading only (see the module)
        instead of raising InputError."""
        self.path = Path(path)
        self.history_limit = history_limit
        self.busy_timeout = busy_timeout
        self.read_when_full = read_when_full
        self.read_only: str | None = None  # why it is open for reading only (a full disk)
        self._connect()

    def _connect(self) -> None:
        regular_or_none(self.path)
        self.read_only = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._open()
        except (sqlite3.Error, OSError) as exc:
            db = self._unopened(exc)
        self._use(db)

    def _use(self, db: sqlite3.Connection) -> None:
        """Work with `db` from now on: what another process wrote is looked at from here."""
        # opening may wait for another process's lock as long as a one-shot command would
        # (the schema check writes): only the writes after it wait `busy_timeout`
        self._db = db
        self._wait_for_lock(self.busy_timeout)
        self._version: int | None = self._data_version()
        self._identity = _identity(self.path)
        self._damage: str | None = None  # what a write found damaged, for `check`

    def _wait_for_lock(self, seconds: float) -> None:
        """How long the next writes wait for another connection's write lock."""
        self._db.execute(f"PRAGMA busy_timeout = {round(seconds * 1000)}")
        self._lock_wait = seconds

    def _ended(self, exc: BaseException | None) -> None:
        """After a transaction: a lock that outlasted the whole `busy_timeout` makes the next
        writes wait only STILL_LOCKED_WAIT, until one gets through; damage it met (a page
        beyond the first, which `check` alone does not read) is what the next `check` says."""
        if exc is None:
            if self._lock_wait != self.busy_timeout:
                self._wait_for_lock(self.busy_timeout)
        elif self._lock_wait > STILL_LOCKED_WAIT and _locked(exc):
            self._wait_for_lock(STILL_LOCKED_WAIT)
        elif damaged(exc):
            self._damage = str(exc)

    def _unopened(self, exc: sqlite3.Error | OSError) -> sqlite3.Connection:
        """What to work with when the database cannot be opened for writing: a damaged one
        moved aside and a new one; on a full disk, with `read_when_full`, the database read
        only; else InputError."""
        if type(exc) is sqlite3.DatabaseError:  # corruption, not locked, unwritable, full...
            return self._start_afresh(exc)
        full = _no_space(self.path.parent) if self.read_when_full else None
        if full is None:
            why = _read_only(self.path.parent) or _words(exc, self.path.parent)
            raise InputError(f"{self.path}: cannot open the state database ({why})") from None
        try:
            db = self._read_only_db()
        except sqlite3.Error as again:
            raise InputError(
                f"{self.path}: cannot open the state database ({exc}), its disk is full "
                f"({full}), and it cannot be read either ({again}); free space on it"
            ) from None
        self.read_only = _full_disk(full)
        return db

    def _read_only_db(self) -> sqlite3.Connection:
        """The database for reading only (`_read_on_any_disk`); an empty one in memory when
        there is none yet."""
        if _empty(self.path):  # none yet (or the empty file our own try made)
            return _in_memory()
        return _read_on_any_disk(self.path)

    def check(self) -> str | None:
        """Why the database was opened again, or None when the one open is still there and
        readable: its file was removed, replaced by another (an operator, a restore), or
        damaged in place (then moved aside, as at a start). Opened again, it holds what the
        new file holds: the next `others_wrote` gives every stored answer, and the caller
        stores its own again. InputError when it cannot be opened again. A store open for
        reading only (a full disk) is opened for writing when it can be (`read_only` None)."""
        if self.read_only is not None:
            return self._writable_again()
        why = self._gone()
        if why is None:
            return None
        damage = self._damage
        self._db.close()
        if damage is None:
            self._connect()  # a page-1 damage is found again there, and moved aside
        else:  # the schema reads fine: opened again, the damage would stay
            self.read_only = None
            self._use(self._start_afresh(damage))
        self._version = None
        return why

    def _writable_again(self) -> str | None:
        """Open the database for writing if it can be now (space came back); None, or, when
        the file is another than the one read, why (as `check` says it)."""
        read = self._identity
        try:
            db = self._open(self.busy_timeout)
        except (sqlite3.Error, OSError):
            return None  # still full (or locked): read as before, tried again at the next
        self._db.close()
        self.read_only = None
        self._use(db)
        self._version = None  # another connection: the next `others_wrote` gives every answer
        if read is not None and read != self._identity:
            return "replaced by another file"
        return None

    def _gone(self) -> str | None:
        if self._damage is not None:
            return f"damaged ({self._damage})"
        now = _identity(self.path)
        if now is None:
            return "removed"
        if now != self._identity:
            return "replaced by another file"
        try:  # never open the file ourselves: closing it would drop SQLite's locks on it
            # In WAL mode SQLite keeps its page cache while the log's index is unchanged, and
            # damage to the file does not change it: a cache filled since another process's
            # last commit or checkpoint would answer the query below from memory, and say
            # nothing, at every pass. Dropped first, the file's first page is read again.
            self._db.execute("PRAGMA shrink_memory")
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            if type(exc) is sqlite3.DatabaseError:  # not a lock, nor a full disk: damage
                return f"damaged ({exc})"
        return None

    @classmethod
    def reader(cls, path: str | Path) -> SqliteStore:
        """A read-only connection to an existing store (a worker process looking up answers);
        InputError when it cannot be opened, or is no regular file (a FIFO would block the
        connect for ever). The path is quoted in the URI: a %, ? or # in it is a name."""
        store = cls.__new__(cls)
        store.path, store.history_limit = Path(path), HISTORY_LIMIT
        store.busy_timeout, store.read_when_full = BUSY_TIMEOUT, False
        store.read_only, store._lock_wait, store._damage = None, BUSY_TIMEOUT, None
        regular_or_none(store.path)
        try:
            store._db = _read_on_any_disk(store.path)
            store._version = store._data_version()
            store._identity = _identity(store.path)
        except sqlite3.Error as exc:
            raise InputError(f"{path}: cannot read the state database ({exc})") from None
        return store

    def outdated(self) -> bool:
        """Whether the database was written by an older mustaple (its schema is upgraded
        when a store that writes opens it)."""
        row = self._db.execute("PRAGMA user_version").fetchone()
        return int(row[0]) < _SCHEMA_VERSION

    def _open(self, timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
        """The database opened for writing, its schema made or upgraded (a current one is not
        written to: a start on a full disk whose SQLite files are there writes nothing)."""
        db = sqlite3.connect(self.path, isolation_level=None, timeout=timeout)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            for table, column, kind in _ADDED_IN_2:  # schema 1 had none of these
                columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != _SCHEMA_VERSION:
                if version < 4:
                    for statement in _RUNS_FROM_STATUS:
                        db.execute(statement)
                if version < 5:
                    db.execute(_EXPIRIES_FROM_STATUS)
                db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _start_afresh(self, exc: sqlite3.DatabaseError | str) -> sqlite3.Connection:
        """Move an unreadable database aside and start an empty one (`exc`: what was wrong)."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            db = self._open()
        except (sqlite3.Error, OSError) as again:
            moved = self.read_when_full and _empty(self.path)
            full = _no_space(self.path.parent) if moved else None
            if full is None:
                raise InputError(
                    f"{self.path}: the state database is unreadable ({exc}) and could not be "
                    f"replaced ({again}); move it away by hand"
                ) from None
            db = _in_memory()  # as if there were none yet, on a full disk
            self.read_only = _full_disk(full)
        log.error(
            "%s: the state database is unreadable (%s): moved to %s and started afresh; "
            "staples not in a running keeper's memory will be fetched again",
            self.path,
            exc,
            aside,
        )
        return db

    def close(self) -> None:
        self._db.close()

    def load(self, key: str) -> StoredStaple | None:
        row = self._db.execute(
            "SELECT name, der, this_update, effective_expiry, fetched_at, responder_url, revoked "
            "FROM staples WHERE cert_key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        name, der, this_update, expiry, fetched_at, url, revoked = row
        try:
            if not isinstance(der, bytes):
                raise TypeError(f"the response is {type(der).__name__}, not bytes")
            return StoredStaple(
                name, der, _time(this_update), _time(expiry), _time(fetched_at), url, bool(revoked)
            )
        except (ValueError, TypeError) as exc:
            _unreadable(key, exc)
            return None

    def save_staple(self, key: str, staple: StoredStaple) -> bool:
        return self.save_staples([(key, staple)])[0]

    def save_staples(self, items: Sequence[tuple[str, StoredStaple]]) -> list[bool]:
        """`save_staple` for each (key, staple), in order, in one statement; whether each
        was written."""
        written: dict[str, StoredStaple] = {}
        done = []
        with self.transaction():  # read and written together: no other writer in between
            current = self._stamps({key for key, _ in items})
            for key, staple in items:
                stored = current.get(key)
                ok = stored is None or may_replace(staple, stored) is None
                if ok:
                    current[key] = written[key] = staple
                done.append(ok)
            self._db.executemany(
                "INSERT OR REPLACE INTO staples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [_staple_values(key, staple) for key, staple in written.items()],
            )
        return done

    def _stamps(self, keys: Iterable[str]) -> dict[str, Dated]:
        """What `may_replace` reads of the stored answers of `keys` (those stored)."""
        found: dict[str, Dated] = {}
        columns = "cert_key, this_update, effective_expiry, revoked FROM staples"
        for key, this_update, expiry, revoked in self._rows_of(columns, keys):
            # unreadable: as if absent, so a new answer replaces it
            with contextlib.suppress(ValueError, TypeError):
                found[key] = _Stamp(_time(this_update), _time(expiry), not revoked)
        return found

    def _rows_of(self, columns: str, keys: Iterable[str]) -> Iterator[tuple[Any, ...]]:
        """`SELECT columns` ("COLUMNS FROM TABLE") of the rows whose cert_key is one of `keys`,
        `_IN_CHUNK` keys to a query."""
        listed = list(keys)
        for at in range(0, len(listed), _IN_CHUNK):
            chunk = listed[at : at + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            yield from self._db.execute(f"SELECT {columns} WHERE cert_key IN ({marks})", chunk)

    def others_wrote(self) -> dict[str, tuple[datetime, bool]] | None:
        """None unless another connection (another process) committed since the last call;
        then every stored answer's (thisUpdate, revoked), in one query without the DER: empty
        when none is stored, although it may have written status rows (a failed `prime`)."""
        version = self._data_version()
        changed, self._version = version != self._version, version
        if not changed:
            return None
        rows = self._db.execute("SELECT cert_key, this_update, revoked FROM staples")
        written = {}
        for key, this_update, revoked in rows:
            try:
                written[key] = (_time(this_update), bool(revoked))
            except (ValueError, TypeError) as exc:
                _unreadable(key, exc)
        return written

    def written_since_look(self) -> bool:
        """Whether another connection committed since the last `others_wrote`, which still
        tells it (this is no look). Inside a transaction, which holds the write lock, the
        answer holds until it ends: no other process writes in between."""
        return self._data_version() != self._version

    def _data_version(self) -> int:
        row = self._db.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def add_attempts(self, key: str, attempts: Iterable[AttemptRecord]) -> None:
        self.add_all_attempts([(key, attempts)])

    def add_all_attempts(self, items: Sequence[tuple[str, Iterable[AttemptRecord]]]) -> None:
        """`add_attempts` for each (key, attempts), in one statement; each key's history is
        cut to the last `history_limit` attempts."""
        rows = [
            (key, _iso(a.at), a.url, a.method, a.http_status, a.latency, a.reason, a.message)
            for key, attempts in items
            for a in attempts
        ]
        keys = {key: None for key, _ in items}
        with self.transaction():
            self._db.executemany(
                "INSERT INTO attempts (cert_key, at, url, method, http_status, latency, reason,"
                " message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._db.executemany(  # the oldest beyond the limit, if there are so many
                "DELETE FROM attempts WHERE cert_key = ? AND id <= (SELECT id FROM attempts "
                "WHERE cert_key = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                [(key, key, self.history_limit) for key in keys],
            )

    def history(self, key: str, limit: int = HISTORY_LIMIT) -> list[AttemptRecord]:
        """The most recent attempts, newest first."""
        rows = self._db.execute(
            "SELECT at, url, method, http_status, latency, reason, message FROM attempts "
            "WHERE cert_key = ? ORDER BY id DESC LIMIT ?",
            (key, limit),
        ).fetchall()
        return [AttemptRecord(_time(r[0]), *r[1:]) for r in rows]

    def keys(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT cert_key FROM staples ORDER BY cert_key")]

    def save_status(self, key: str, status: CertStatus) -> None:
        self.save_statuses([(key, status)])

    def save_statuses(self, rows: Iterable[tuple[str, CertStatus]]) -> None:
        """Write each (key, status) row, in one statement (a pass writes one per certificate)."""
        sinks: dict[tuple[SinkHealth, ...], str] = {}  # most rows share their sinks' health
        values = []
        for key, status in rows:
            shown = sinks.get(status.sinks)
            if shown is None:
                shown = sinks[status.sinks] = sinks_json(status.sinks)
            values.append(_status_values(key, status, shown))
        with self.transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO status VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", values
            )

    def statuses(self) -> dict[str, CertStatus]:
        rows = self._db.execute("SELECT * FROM status ORDER BY name").fetchall()
        found = {}
        for row in rows:
            try:
                found[row[0]] = _status(row[1:])
            except (ValueError, TypeError, KeyError) as exc:  # written again at the next pass
                log.warning("state store: the status row of %s cannot be read (%s)", row[0], exc)
        return found

    def status_keys(self) -> set[str]:
        """The keys that have a status row."""
        return {row[0] for row in self._db.execute("SELECT cert_key FROM status")}

    def last_attempts(self, keys: Collection[str] | None = None) -> dict[str, RecordedAttempt]:
        """The last attempt recorded in the status row of each of `keys` (None: of every
        row) that has one, an unusable file's or certificate's excepted (its row says why
        it is unusable, not how an attempt went); one query, without the sinks' health."""
        query = (
            "SELECT cert_key, last_attempt, failures, last_reason, last_message FROM status "
            "WHERE last_attempt IS NOT NULL AND state != ?"
        )
        asked: list[str] = [Phase.UNUSABLE.value]
        if keys is not None and len(keys) <= _IN_CHUNK:  # else every row, then those of keys
            query += f" AND cert_key IN ({','.join('?' * len(keys))})"
            asked += keys
        found = {}
        for key, at, failures, reason, message in self._db.execute(query, asked):
            if keys is not None and key not in keys:
                continue
            with contextlib.suppress(ValueError, TypeError):  # written again at the next pass
                found[key] = RecordedAttempt(_time(at), int(failures), reason, message)
        return found

    def settle_runs(self, news: Sequence[tuple[str, str]]) -> list[bool]:
        """For each of `news` (certificate key, kind), in order: whether the process writing
        it tells it to the hooks. A "failure" opens the certificate's run of failures and is
        told when none was open (or only a revocation's); a "revoked" opens it too (told by
        its fetcher whatever this says); a "recovered" closes it and is told when one was
        open. Read and written in one transaction: of processes that refresh at the same
        time, only the first to write a failure tells it, and only the first to write a good
        answer after it tells the recovery."""
        if not news:
            return []
        with self.transaction():
            found = self._runs({key for key, _ in news})
            opened, told = dict(found), []
            for key, kind in news:
                before = opened.pop(key, None)
                if kind == "recovered":
                    told.append(before is not None)
                else:
                    told.append(kind == "failure" and before != "failure")
                    opened[key] = kind
            closed = [(key,) for key in found if key not in opened]
            changed = [(key, kind) for key, kind in opened.items() if found.get(key) != kind]
            self._db.executemany("DELETE FROM runs WHERE cert_key = ?", closed)
            self._db.executemany("INSERT OR REPLACE INTO runs VALUES (?, ?)", changed)
        return told

    def _runs(self, keys: Collection[str]) -> dict[str, str]:
        """The open runs of failures of `keys`: what opened each ("failure", "revoked")."""
        return dict(self._rows_of("cert_key, opened_by FROM runs", keys))

    def settle_alerts(self, news: Sequence[tuple[str, Alert]]) -> list[bool]:
        """For each of `news` (certificate key, alert), in order: whether the process
        writing it tells it to the hooks: when it is news over the alert recorded for the
        certificate (`Alert.news_over`: a newer staple's, or a higher level of the same
        staple), which it then replaces. Read and written in one transaction: of processes
        that see a staple's level at the same time (a keeper restarted, a `prime` beside
        it), only the first to write it tells it."""
        if not news:
            return []
        with self.transaction():
            recorded = self.alerts({key for key, _ in news})
            told, changed = [], {}
            for key, alert in news:
                told.append(alert.news_over(recorded.get(key)))
                if told[-1]:
                    recorded[key] = changed[key] = alert
            self._db.executemany(
                "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?)",
                [(key, _iso(a.this_update), _iso(a.expiry), a.rank) for key, a in changed.items()],
            )
        return told

    def alerts(self, keys: Collection[str]) -> dict[str, Alert]:
        """The last alert told for each of `keys` that has one (a row that cannot be read
        is taken as none: a level may be told once more, never lost)."""
        found: dict[str, Alert] = {}
        columns = "cert_key, this_update, effective_expiry, level FROM alerts"
        for key, this_update, expiry, level in self._rows_of(columns, keys):
            with contextlib.suppress(ValueError, TypeError):
                found[key] = Alert.ranked(_time(this_update), _time(expiry), int(level))
        return found

    def owed_reloads(self) -> set[tuple[str, str]]:
        """The (certificate key, sink) pairs whose server's reload failed at that
        certificate's last delivery to that sink, by the status rows (see
        `delivery.Reloads`): one query, of the rows that owe one only."""
        rows = self._db.execute(
            """SELECT cert_key, sinks FROM status WHERE sinks LIKE '%"reload_owed": true%'"""
        )
        healths: list[tuple[str, tuple[SinkHealth, ...]]] = []
        for key, text in rows:
            with contextlib.suppress(ValueError, KeyError, TypeError):  # written again soon
                healths.append((key, sinks_from_json(text)))
        return owed_of(healths)

    def traps(self) -> dict[tuple[str, str], Trap]:
        """The sinks' traps, by the status rows (see `delivery.HoldsBack`)."""
        rows = self._db.execute(
            """SELECT cert_key, sinks FROM status WHERE sinks LIKE '%"trap": {%'"""
        )
        healths: list[tuple[str, tuple[SinkHealth, ...]]] = []
        for key, text in rows:
            with contextlib.suppress(ValueError, KeyError, TypeError):  # written again soon
                healths.append((key, sinks_from_json(text)))
        return traps_of(healths)

    def begin_delivery(self, sinks: Collection[str]) -> None:
        """Record that this process delivers to `sinks` (see the module docstring)."""
        pid, started = this_process()
        with self.transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?)",
                [(sink, pid, started) for sink in sinks],
            )

    def end_delivery(self, sinks: Collection[str]) -> None:
        """Drop this process's records of its delivery to `sinks`."""
        self._drop_deliveries([(sink, *this_process()) for sink in sinks])

    def take_cut_deliveries(self, sinks: Collection[str]) -> set[str]:
        """Those of `sinks` whose delivery a process gone cut short: their records become
        this process's (see the module docstring). One read of the few records, and no
        write, when there is none."""
        if not self._cut(sinks):
            return set()
        with self.transaction():  # read again under the write lock: one process takes each
            cut = self._cut(sinks)
            self._drop_deliveries(cut)
            taken = {sink for sink, _, _ in cut}
            self.begin_delivery(taken)
        return taken

    def _cut(self, sinks: Collection[str]) -> list[tuple[str, int, str]]:
        """The records of deliveries to `sinks` whose process is gone."""
        rows = self._db.execute("SELECT sink, pid, started FROM deliveries").fetchall()
        return [
            (sink, pid, started)
            for sink, pid, started in rows
            if sink in sinks and not running(pid, started)
        ]

    def _drop_deliveries(self, records: Iterable[tuple[str, int, str]]) -> None:
        with self.transaction():
            self._db.executemany(
                "DELETE FROM deliveries WHERE sink = ? AND pid = ? AND started = ?", records
            )

    def forget_statuses(self, keys: Iterable[str]) -> None:
        """Remove the status rows of `keys` (the staples and attempts stay)."""
        with self.transaction():
            self._db.executemany("DELETE FROM status WHERE cert_key = ?", ((k,) for k in keys))

    def remove(self, key: str) -> None:
        with self.transaction():
            for table in ("staples", "attempts", "status", "runs", "alerts"):
                self._db.execute(f"DELETE FROM {table} WHERE cert_key = ?", (key,))

    def has_signature(self, tag: bytes) -> bool:
        """Whether `tag` (see `mustaple.adapters.signatures`) was stored."""
        found = self._db.execute("SELECT 1 FROM signatures WHERE tag = ?", (tag,)).fetchone()
        return found is not None

    def add_signatures(self, tags: Iterable[tuple[bytes, datetime]]) -> None:
        """Store (tag, the leaf's notAfter) pairs."""
        rows = [(tag, _iso(not_after)) for tag, not_after in tags]
        with self.transaction():
            self._db.executemany("INSERT OR IGNORE INTO signatures VALUES (?, ?)", rows)

    def forget_signatures(self, expired_before: datetime | None = None) -> None:
        """Drop the tags of leaves expired before `expired_before` (None: every tag)."""
        with self.transaction():
            if expired_before is None:
                self._db.execute("DELETE FROM signatures")
            else:
                self._db.execute(
                    "DELETE FROM signatures WHERE not_after < ?", (_iso(expired_before),)
                )

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees one committed state of the database (one read
        transaction: WAL readers keep the snapshot of their first read until it ends), so
        reads of two tables never mix a state before another process's commit with one
        after it (a status row saying good beside the revoked answer stored since)."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN DEFERRED")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def transaction(self) -> _Transaction:
        """One transaction for every write inside it (see the module docstring);
        StateDiskFull when the store is open for reading only because its disk is full."""
        if self.read_only is not None:
            raise StateDiskFull(self.read_only)
        return _Transaction(self._db, self._ended)


@dataclass(frozen=True, slots=True)
class _Stamp:
    """A stored answer as the rule for "newer" reads it (`verify.Dated`)."""

    this_update: datetime
    effective_expiry: datetime
    good: bool


def _staple_values(key: str, staple: StoredStaple) -> tuple[object, ...]:
    return (
        key,
        staple.name,
        staple.der,
        _iso(staple.this_update),
        _iso(staple.effective_expiry),
        _iso(staple.fetched_at),
        staple.responder_url,
        int(staple.revoked),
    )


_UNKNOWN = -1  # the status table's must_staple when it is not known (the column is NOT NULL)


def _status_values(key: str, status: CertStatus, sinks: str) -> tuple[object, ...]:
    """A status row as SQLite stores it (`sinks` already as JSON)."""
    return (
        key,
        status.name,
        status.cert_path,
        _UNKNOWN if status.must_staple is None else int(status.must_staple),
        status.state,
        _iso(status.next_due) if status.next_due else None,
        status.failures,
        _iso(status.last_attempt) if status.last_attempt else None,
        status.last_reason,
        status.last_message,
        json.dumps(list(status.paths)),
        sinks,
    )


def traps_of(
    rows: Iterable[tuple[str, Iterable[SinkHealth]]],
) -> dict[tuple[str, str], Trap]:
    """The traps in the sink health of status rows, by certificate key and sink."""
    return {
        (key, health.sink): health.trap
        for key, healths in rows
        for health in healths
        if health.trap is not None
    }


def owed_of(rows: Iterable[tuple[str, Iterable[SinkHealth]]]) -> set[tuple[str, str]]:
    """The owed reloads in the sink health of status rows: (certificate key, sink) pairs."""
    return {(key, health.sink) for key, healths in rows for health in healths if health.reload_owed}


def sinks_json(sinks: Iterable[SinkHealth]) -> str:
    """Sink health as stored (SQLite and Redis alike)."""
    return json.dumps(
        [
            {
                "sink": s.sink,
                "last_delivery": _iso(s.last_delivery) if s.last_delivery else None,
                "error": s.error,
                "failures": s.failures,
                "since": _iso(s.since) if s.since else None,
                "note": s.note,
                "reload_owed": s.reload_owed,
                "trap": {"path": s.trap.path, "serial": f"{s.trap.serial:x}"} if s.trap else None,
            }
            for s in sinks
        ]
    )


def sinks_from_json(text: str) -> tuple[SinkHealth, ...]:
    def when(value: str | None) -> datetime | None:
        return _time(value) if value else None

    return tuple(
        SinkHealth(
            d["sink"],
            when(d["last_delivery"]),
            d["error"],
            d["failures"],
            when(d["since"]),
            d["note"],
            d.get("reload_owed", False) is True,  # rows before it: none owed
            _trap(d.get("trap")),
        )
        for d in json.loads(text)
    )


def _trap(value: Any) -> Trap | None:
    if not isinstance(value, dict):
        return None  # rows before it, and sinks with none
    return Trap(str(value["path"]), int(value["serial"], 16))


def _status(row: tuple[Any, ...]) -> CertStatus:
    name, path, must_staple, state, next_due, failures, last_attempt, reason, message = row[:9]
    paths, sinks = row[9:]
    return CertStatus(
        name,
        path,
        None if must_staple == _UNKNOWN else bool(must_staple),
        state,
        _time(next_due) if next_due else None,
        failures,
        _time(last_attempt) if last_attempt else None,
        reason,
        message,
        tuple(json.loads(paths)),
        sinks_from_json(sinks),
    )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception; inside an open transaction,
    nothing (the writes join it). An error SQLite has rolled back itself (a full disk) is
    what is raised, never the "no transaction is active" of a ROLLBACK after it; a COMMIT
    that fails leaves no transaction open."""

    def __init__(
        self, db: sqlite3.Connection, ended: Callable[[BaseException | None], None]
    ) -> None:
        """`ended`: told how the outer transaction ended (None: committed; else the error)."""
        self._db = db
        self._ended = ended
        self._outer = False

    def __enter__(self) -> None:
        self._outer = not self._db.in_transaction
        if self._outer:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._ended(exc)
                raise

    def __exit__(self, kind: object, value: BaseException | None, tb: object) -> None:
        if not self._outer:
            return
        if value is not None:
            self._roll_back()
            self._ended(value)
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._roll_back()
            self._ended(exc)
            raise
        self._ended(None)

    def _roll_back(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the error under way is the one to say
                self._db.execute("ROLLBACK")
