"""State that survives anything: the last good staple and a bounded history of attempts.

`Store` is the contract every backend keeps (SQLite here; Redis in fleet mode):

- Keys are certificate identities (`cert_key`: the leaf's SHA-256 fingerprint in hex).
- `save_staple` replaces the stored staple atomically: after a crash at any moment, `load`
  returns either the previous staple or the new one, complete.
- `load` returns None for an unknown key; it never raises for a missing entry.
- Stored bytes are not trusted blindly: the keeper validates a loaded staple again before
  delivering it, so a corrupted row costs a fetch, never a bad staple.
- Calls may come from one thread at a time; the keeper serialises them.
- `transaction()` groups writes: inside it they are applied together, atomically and durably
  when it ends (or not at all); outside it each write is a transaction of its own.

`SqliteStore` uses the stdlib sqlite3 in WAL mode with synchronous=FULL: each transaction is
durable when it ends.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mustaple.errors import InputError

__all__ = ["AttemptRecord", "CertStatus", "SqliteStore", "Store", "StoredStaple", "cert_key"]

HISTORY_LIMIT = 50
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS staples (
    cert_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    der BLOB NOT NULL,
    this_update TEXT NOT NULL,
    effective_expiry TEXT NOT NULL,
    fetched_at TEXT NOT NULL,
    responder_url TEXT
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
    last_message TEXT
);
"""


def cert_key(cert: x509.Certificate) -> str:
    """The identity a certificate's state is stored under."""
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True, slots=True)
class StoredStaple:
    """A staple as stored: the DER and enough metadata to schedule without parsing."""

    name: str
    der: bytes
    this_update: datetime
    effective_expiry: datetime
    fetched_at: datetime
    responder_url: str | None


@dataclass(frozen=True, slots=True)
class CertStatus:
    """What the keeper last knew about a certificate, for `mustaple status`."""

    name: str
    cert_path: str
    must_staple: bool
    state: str  # "good", "failing", "revoked", "expired", "no-ocsp-url", "pending"
    next_due: datetime | None
    failures: int
    last_attempt: datetime | None
    last_reason: str | None
    last_message: str | None


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

    def save_staple(self, key: str, staple: StoredStaple) -> None: ...

    def add_attempts(self, key: str, attempts: Iterable[AttemptRecord]) -> None: ...

    def history(self, key: str, limit: int = HISTORY_LIMIT) -> list[AttemptRecord]: ...

    def keys(self) -> list[str]: ...

    def save_status(self, key: str, status: CertStatus) -> None: ...

    def statuses(self) -> dict[str, CertStatus]: ...

    def remove(self, key: str) -> None: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


class SqliteStore:
    """The embedded default backend: one SQLite file in the state directory."""

    def __init__(self, path: str | Path, *, history_limit: int = HISTORY_LIMIT) -> None:
        self.path = Path(path)
        self.history_limit = history_limit
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise InputError(f"{self.path}: cannot open the state database ({exc})") from None

    def close(self) -> None:
        self._db.close()

    def load(self, key: str) -> StoredStaple | None:
        row = self._db.execute(
            "SELECT name, der, this_update, effective_expiry, fetched_at, responder_url "
            "FROM staples WHERE cert_key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        name, der, this_update, expiry, fetched_at, url = row
        return StoredStaple(
            name, bytes(der), _time(this_update), _time(expiry), _time(fetched_at), url
        )

    def save_staple(self, key: str, staple: StoredStaple) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO staples VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    staple.name,
                    staple.der,
                    _iso(staple.this_update),
                    _iso(staple.effective_expiry),
                    _iso(staple.fetched_at),
                    staple.responder_url,
                ),
            )

    def add_attempts(self, key: str, attempts: Iterable[AttemptRecord]) -> None:
        rows = [
            (key, _iso(a.at), a.url, a.method, a.http_status, a.latency, a.reason, a.message)
            for a in attempts
        ]
        with self.transaction():
            self._db.executemany(
                "INSERT INTO attempts (cert_key, at, url, method, http_status, latency, reason,"
                " message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._db.execute(
                "DELETE FROM attempts WHERE cert_key = ? AND id NOT IN "
                "(SELECT id FROM attempts WHERE cert_key = ? ORDER BY id DESC LIMIT ?)",
                (key, key, self.history_limit),
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
        values = (
            key,
            status.name,
            status.cert_path,
            int(status.must_staple),
            status.state,
            _iso(status.next_due) if status.next_due else None,
            status.failures,
            _iso(status.last_attempt) if status.last_attempt else None,
            status.last_reason,
            status.last_message,
        )
        with self.transaction():
            self._db.execute("INSERT OR REPLACE INTO status VALUES (?,?,?,?,?,?,?,?,?,?)", values)

    def statuses(self) -> dict[str, CertStatus]:
        rows = self._db.execute("SELECT * FROM status ORDER BY name").fetchall()
        return {row[0]: _status(row[1:]) for row in rows}

    def remove(self, key: str) -> None:
        with self.transaction():
            for table in ("staples", "attempts", "status"):
                self._db.execute(f"DELETE FROM {table} WHERE cert_key = ?", (key,))

    def transaction(self) -> _Transaction:
        """One transaction for every write inside it (see the module docstring)."""
        return _Transaction(self._db)


def _status(row: tuple[Any, ...]) -> CertStatus:
    name, path, must_staple, state, next_due, failures, last_attempt, reason, message = row
    return CertStatus(
        name,
        path,
        bool(must_staple),
        state,
        _time(next_due) if next_due else None,
        failures,
        _time(last_attempt) if last_attempt else None,
        reason,
        message,
    )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception; inside an open transaction,
    nothing (the writes join it)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._outer = False

    def __enter__(self) -> None:
        self._outer = not self._db.in_transaction
        if self._outer:
            self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if self._outer:
            self._db.execute("COMMIT" if kind is None else "ROLLBACK")
