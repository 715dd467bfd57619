"""The SQLite store: the contract, bounded history, and a real kill -9 mid-write."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mustaple.errors import InputError
from mustaple.store import AttemptRecord, SqliteStore, StoredStaple, cert_key
from mustaple.testing import Leaf

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stored(n: int) -> StoredStaple:
    """Staple number n: its DER encodes n, so a torn write would show."""
    der = n.to_bytes(4, "big") * 1000
    this_update = T0 + timedelta(minutes=n)
    return StoredStaple("x.test", der, this_update, this_update + timedelta(days=4), T0, None)


def attempt(n: int) -> AttemptRecord:
    return AttemptRecord(T0, f"http://r/{n}", "GET", 200, 0.01, None, "valid staple")


def test_round_trip_and_replace(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    assert store.load("k") is None
    store.save_staple("k", stored(1))
    store.save_staple("k", stored(2))
    assert store.load("k") == stored(2)
    assert store.keys() == ["k"]
    store.close()
    assert SqliteStore(tmp_path / "state.db").load("k") == stored(2)


def test_history_is_bounded_and_newest_first(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", history_limit=5)
    store.add_attempts("k", [attempt(n) for n in range(8)])
    store.add_attempts("other", [attempt(99)])
    urls = [a.url for a in store.history("k")]
    assert urls == [f"http://r/{n}" for n in (7, 6, 5, 4, 3)]
    assert len(store.history("other")) == 1


def test_remove(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.save_staple("k", stored(1))
    store.add_attempts("k", [attempt(1)])
    store.remove("k")
    assert store.load("k") is None
    assert store.history("k") == []


def test_cert_key_is_the_fingerprint(leaf: Leaf) -> None:
    assert len(cert_key(leaf.cert)) == 64


def test_unopenable_database_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(InputError, match="cannot open the state database"):
        SqliteStore(tmp_path / "state.db")


WRITER = """
import sys
from tests.test_store import stored
from mustaple.store import SqliteStore
store = SqliteStore(sys.argv[1])
n = 0
while True:
    n += 1
    store.save_staple("k", stored(n))
    if n == 1:
        print("started", flush=True)
"""


def test_kill_9_during_writes_leaves_a_complete_staple(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    root = Path(__file__).resolve().parent.parent
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], cwd=root, stdout=subprocess.PIPE, text=True
    ) as writer:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "started\n"
        time.sleep(0.3)
        writer.send_signal(signal.SIGKILL)
    loaded = SqliteStore(db).load("k")
    assert loaded is not None
    n = int.from_bytes(loaded.der[:4], "big")
    assert n > 1
    assert loaded == stored(n)
