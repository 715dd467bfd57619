"""The Store contract, run on both backends (SQLite and a real Redis), and a real kill -9
in the middle of SQLite writes."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mustaple.adapters.redisstore import RedisStore
from mustaple.adapters.store import (
    HISTORY_LIMIT,
    STILL_LOCKED_WAIT,
    AttemptRecord,
    CertStatus,
    RecordedAttempt,
    SqliteStore,
    Store,
    StoredStaple,
    cert_key,
)
from mustaple.core.delivery import SinkHealth, Trap
from mustaple.core.errors import InputError
from mustaple.core.lifecycle import Alert
from mustaple.core.severity import Severity
from mustaple.testing import Leaf
from servers import RedisServer

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stored(n: int) -> StoredStaple:
    """Staple number n: its DER encodes n, so a torn write would show."""
    der = n.to_bytes(4, "big") * 1000
    this_update = T0 + timedelta(minutes=n)
    return StoredStaple("x.test", der, this_update, this_update + timedelta(days=4), T0, None)


def attempt(n: int) -> AttemptRecord:
    return AttemptRecord(T0, f"http://r/{n}", "GET", 200, 0.01, None, "valid staple")


def status(name: str, failures: int = 0) -> CertStatus:
    return CertStatus(name, f"/certs/{name}.pem", True, "good", T0, failures, T0, None, None)


Opener = Callable[..., Store]  # (history_limit=...) -> a store


@pytest.fixture(params=["sqlite", "redis"])
def open_store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> Iterator[Opener]:
    """Opens the backend under test; opening again reaches the same state (a restart)."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    opened: list[Store] = []

    def opener(history_limit: int = HISTORY_LIMIT) -> Store:
        store: Store
        if request.param == "sqlite":
            store = SqliteStore(tmp_path / "state.db", history_limit=history_limit)
        else:
            store = RedisStore(redis_server.url, prefix=prefix, history_limit=history_limit)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def test_round_trip_and_replace(open_store: Opener) -> None:
    store = open_store()
    assert store.load("k") is None
    store.save_staple("k", stored(1))
    store.save_staple("k", stored(2))
    assert store.load("k") == stored(2)
    assert store.keys() == ["k"]
    store.close()
    assert open_store().load("k") == stored(2)


def test_history_is_bounded_and_newest_first(open_store: Opener) -> None:
    store = open_store(history_limit=5)
    store.add_attempts("k", [attempt(n) for n in range(8)])
    store.add_attempts("other", [attempt(99)])
    urls = [a.url for a in store.history("k")]
    assert urls == [f"http://r/{n}" for n in (7, 6, 5, 4, 3)]
    assert len(store.history("other")) == 1
    assert store.history("k", limit=2) == [attempt(7), attempt(6)]


def test_batches_keep_the_order_and_the_rule_for_newer(open_store: Opener) -> None:
    """A batch is the same writes one by one: each judged against what is stored or written
    before it in the batch, each history cut to its limit."""
    store = open_store(history_limit=3)
    store.save_staple("k", stored(5))
    revoked = StoredStaple("y.test", b"r" * 10, T0, T0 + timedelta(days=4), T0, None, revoked=True)
    same_age_good = StoredStaple("y.test", b"g" * 10, T0, T0 + timedelta(days=4), T0, None)
    batch = [("k", stored(4)), ("n", stored(1)), ("n", stored(3)), ("n", stored(2))]
    batch += [("r", revoked), ("r", same_age_good)]
    done = store.save_staples(batch)
    assert done == [False, True, True, False, True, False]
    assert store.load("k") == stored(5)
    assert store.load("n") == stored(3)
    assert store.load("r") == revoked
    store.add_all_attempts([("a", [attempt(1), attempt(2)]), ("b", [attempt(9)])])
    store.add_all_attempts([("a", [attempt(3), attempt(4)]), ("a", [attempt(5)])])
    assert [a.url for a in store.history("a")] == [f"http://r/{n}" for n in (5, 4, 3)]
    assert store.history("b") == [attempt(9)]
    store.save_statuses([("s1", status("b.test")), ("s2", status("a.test", failures=2))])
    assert [s.name for s in store.statuses().values()] == ["a.test", "b.test"]


def test_remove(open_store: Opener) -> None:
    store = open_store()
    store.save_staple("k", stored(1))
    store.add_attempts("k", [attempt(1)])
    store.save_status("k", status("k.test"))
    store.remove("k")
    assert store.load("k") is None
    assert store.history("k") == []
    assert store.statuses() == {}
    assert store.keys() == []


def test_statuses_round_trip_sorted_by_name(open_store: Opener) -> None:
    store = open_store()
    store.save_status("k2", status("b.test"))
    store.save_status("k1", status("c.test"))
    store.save_status("k2", status("a.test", failures=3))
    assert list(store.statuses().items()) == [("k2", status("a.test", 3)), ("k1", status("c.test"))]
    assert store.status_keys() == {"k1", "k2"}
    store.forget_statuses(["k2", "never"])
    store.forget_statuses([])
    assert list(store.statuses()) == ["k1"]
    assert store.status_keys() == {"k1"}
    assert list(open_store().statuses()) == ["k1"]  # as stored
    unknown = replace(status("d.test"), must_staple=None)  # a file that cannot be read
    store.save_status("k3", unknown)
    assert open_store().statuses()["k3"] == unknown


def test_last_attempts_are_those_the_rows_record(open_store: Opener) -> None:
    """What a keeper reads (once, when another process wrote, and at its start) to keep
    another process's attempt: each row's last attempt, its failures in a row and reason;
    none for a row without one, nor for an unusable certificate or file (its row says why
    it is unusable); of the keys asked only, in one query however many."""
    store = open_store()
    assert store.last_attempts() == {}
    failed = replace(status("b.test", failures=2), last_reason="timeout", last_message="slow")
    unusable = replace(failed, state="unusable", last_reason="cert-expired")
    store.save_statuses(
        [
            ("k1", status("a.test")),
            ("k2", failed),
            ("k3", replace(status("c.test"), last_attempt=None)),
            ("k4", unusable),
        ]
    )
    worked = RecordedAttempt(T0, 0, None, None)
    both = {"k1": worked, "k2": RecordedAttempt(T0, 2, "timeout", "slow")}
    assert store.last_attempts() == both
    assert open_store().last_attempts(["k2", "k3", "k4", "never"]) == {"k2": both["k2"]}
    many = {f"x{n}" for n in range(1200)} | {"k1"}  # more keys than one query names
    assert store.last_attempts(many) == {"k1": worked}


def test_a_run_of_failures_is_told_by_the_writer_that_opens_it_and_the_one_that_closes_it(
    open_store: Opener,
) -> None:
    """Each process writing its outcomes asks which it tells: a failure only when no run
    was open (or a revocation's), a recovery only when one was; in order, and kept across
    a reopening (another process, a restart)."""
    store = open_store()
    assert store.settle_runs([]) == []
    failures = [("a", "failure"), ("a", "failure"), ("b", "recovered")]
    assert store.settle_runs(failures) == [True, False, False]
    again = open_store()  # another process: its view of "a" did not see the failure
    assert again.settle_runs([("a", "failure"), ("a", "recovered")]) == [False, True]
    assert store.settle_runs([("a", "recovered")]) == [False]  # closed by the other one
    revoked = [("c", "revoked"), ("c", "failure"), ("c", "failure"), ("c", "recovered")]
    assert store.settle_runs(revoked) == [False, True, False, True]
    assert store.settle_runs([("d", "revoked")]) == [False]
    store.remove("d")
    assert store.settle_runs([("d", "recovered")]) == [False]


def test_each_expiring_level_is_told_once_per_staple_by_the_first_writer(
    open_store: Opener,
) -> None:
    """A level is told when it is news over the one recorded: a higher level of the same
    staple, or any level of a newer one; never the same again (another process, a restart),
    nor an older staple's. Kept across a reopening; gone with the certificate."""
    store = open_store()
    staple = (T0 + timedelta(microseconds=7), T0 + timedelta(days=4))
    warning, critical = Alert(*staple, Severity.WARNING), Alert(*staple, Severity.CRITICAL)
    assert store.settle_alerts([]) == []
    assert store.settle_alerts([("a", warning), ("a", warning), ("b", critical)]) == [
        True,
        False,
        True,
    ]
    again = open_store()
    assert again.alerts(["a", "b", "c"]) == {"a": warning, "b": critical}
    assert again.settle_alerts([("a", warning), ("a", critical)]) == [False, True]
    assert store.settle_alerts([("a", critical), ("a", warning)]) == [False, False]
    newer = Alert(T0 + timedelta(hours=1), T0 + timedelta(days=4, hours=1), Severity.WARNING)
    longer = Alert(staple[0], staple[1] + timedelta(hours=1), Severity.WARNING)
    assert store.settle_alerts([("a", longer), ("a", newer), ("a", warning)]) == [
        True,
        True,
        False,
    ]
    assert store.alerts(["a"]) == {"a": newer}
    store.remove("a")
    assert store.alerts(["a"]) == {}


def test_a_staples_expiry_is_told_once_after_its_levels(open_store: Opener) -> None:
    """The expiry of a staple is recorded as its step after CRITICAL: told by the first
    writer only (another process that saw it too, a restart), read back as an expiry; a
    newer staple's levels, and its own expiry, are news again."""
    store = open_store()
    staple = (T0 + timedelta(microseconds=7), T0 + timedelta(days=4))
    critical = Alert(*staple, Severity.CRITICAL)
    expiry = Alert(*staple, Severity.CRITICAL, expired=True)
    assert store.settle_alerts([("a", critical), ("a", expiry), ("a", critical)]) == [
        True,
        True,
        False,
    ]
    again = open_store()
    assert again.alerts(["a"]) == {"a": expiry}
    assert again.settle_alerts([("a", expiry)]) == [False]
    newer = Alert(T0 + timedelta(hours=1), T0 + timedelta(days=4, hours=1), Severity.WARNING)
    assert store.settle_alerts([("a", newer), ("a", replace(newer, expired=True))]) == [
        True,
        True,
    ]


def test_owed_reloads_are_the_sinks_whose_reload_failed(open_store: Opener) -> None:
    """What a start (or a pass after a `prime`) reads to owe a reload: each sink whose
    reload failed at some certificate's last delivery, with that certificate's key; one
    that failed otherwise (a file it refused to replace), worked, or only noted the server
    down owes none."""
    store = open_store()
    assert store.owed_reloads() == set()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    fine = SinkHealth("fine", at)
    down = SinkHealth("down", at, note="the server is not running")
    refused = SinkHealth("files", None, "/x: holds something other than an OCSP response", 1, at)
    reload = SinkHealth(
        "nginx", None, 'reload failed: `nginx -s reload` "exited"', 1, at, None, True
    )
    store.save_status("k1", replace(status("a.test"), sinks=(fine, down, refused)))
    store.save_status("k2", replace(status("b.test"), sinks=(fine, reload)))
    store.save_status("k3", replace(status("c.test"), sinks=(reload,)))
    assert store.owed_reloads() == {("k2", "nginx"), ("k3", "nginx")}
    assert open_store().owed_reloads() == {("k2", "nginx"), ("k3", "nginx")}
    assert open_store().statuses()["k2"].sinks == (fine, reload)


def test_a_delivery_a_process_gone_cut_short_is_taken_over_by_one_process(
    open_store: Opener,
) -> None:
    """What a start (or a pass) reads to owe a reload a kill cut short: a delivery to a sink
    begun by a process that is gone (a real child process, ended) and never ended. The
    first process to ask takes it over (its own delivery pays the reload), so the next one
    asking finds none; a delivery that ended, one of a process that runs (this one), and
    one of a sink not asked about (left for a process that delivers to it) are none."""
    store = open_store()
    store.begin_delivery(["mine"])
    child = os.fork()
    if child == 0:  # the other process: begins its deliveries, ends one, and is gone
        code = 1
        try:
            theirs = open_store()
            theirs.begin_delivery(["nginx", "haproxy", "done"])
            theirs.end_delivery(["done"])
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(child, 0)[1] == 0
    asked = ["nginx", "done", "mine", "files"]
    assert store.take_cut_deliveries(asked) == {"nginx"}
    assert open_store().take_cut_deliveries(asked) == set()  # now this process's
    assert open_store().take_cut_deliveries(["haproxy", "nginx"]) == {"haproxy"}
    store.end_delivery(["nginx", "haproxy", "mine"])
    assert store.take_cut_deliveries([*asked, "haproxy"]) == set()


def test_traps_are_the_kept_files_holding_another_certificates_staple(
    open_store: Opener,
) -> None:
    """What a `prime` or a start reads so that its reload does not spring a trap another
    process found (`delivery.HoldsBack`); rows without one, or from before it, have none."""
    store = open_store()
    assert store.traps() == {}
    at = datetime(2026, 1, 1, tzinfo=UTC)
    trap = Trap("/staples/a.der", 0x1001)
    trapped = SinkHealth("nginx", at, "/staples/a.der still holds ...", 1, at, trap=trap)
    held_back = SinkHealth("nginx", None, "reload held back: ...", 1, at, None, True)
    store.save_status("k1", replace(status("a.test"), sinks=(trapped, SinkHealth("other", at))))
    store.save_status("k2", replace(status("b.test"), sinks=(held_back,)))
    assert store.traps() == {("k1", "nginx"): trap}
    assert open_store().traps() == {("k1", "nginx"): trap}
    assert open_store().statuses()["k1"].sinks[0] == trapped
    store.save_status("k1", replace(status("a.test"), sinks=(SinkHealth("nginx", at),)))
    assert open_store().traps() == {}


def test_a_transaction_writes_all_or_nothing(open_store: Opener) -> None:
    store = open_store()
    with store.transaction():
        store.save_staple("a", stored(1))
        with store.transaction():  # an inner one joins the outer
            store.add_attempts("a", [attempt(1)])
        store.save_status("a", status("a.test"))
    assert store.load("a") == stored(1)
    assert store.history("a") == [attempt(1)]

    def crash_in_the_middle() -> None:
        with store.transaction():
            store.save_staple("b", stored(2))
            store.save_status("b", status("b.test"))
            raise RuntimeError("crash in the middle")

    with pytest.raises(RuntimeError):
        crash_in_the_middle()
    assert store.load("b") is None
    assert "b" not in store.statuses()


def test_a_reader_sees_one_state_across_tables_inside_a_snapshot(tmp_path: Path) -> None:
    """`mustaple status` reads the status rows, then each staple: another process's commit
    in between made one row mix the two (its row said good, its staple read as the revoked
    answer stored since, so no thisUpdate). Inside `snapshot` both reads see one state."""
    writer = SqliteStore(tmp_path / "state.db")
    writer.save_staple("a", stored(1))
    writer.save_status("a", status("a.test"))
    reader = SqliteStore.reader(tmp_path / "state.db")
    try:
        with reader.snapshot():
            rows = reader.statuses()
            with writer.transaction():  # another process revokes meanwhile
                writer.save_staple("a", replace(stored(2), revoked=True))
                writer.save_status("a", replace(status("a.test"), state="revoked"))
            assert (rows["a"].state, reader.load("a")) == ("good", stored(1))
        after = reader.load("a")
        assert after is not None  # the next read sees the commit
        assert after.revoked
    finally:
        reader.close()
        writer.close()


def test_cert_key_is_the_fingerprint(leaf: Leaf) -> None:
    assert len(cert_key(leaf.cert)) == 64


def test_a_corrupted_database_is_moved_aside_and_started_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = b"this is not a database" * 100
    (tmp_path / "state.db").write_bytes(garbage)
    with caplog.at_level(logging.ERROR, "mustaple"):
        store = SqliteStore(tmp_path / "state.db")
    assert store.keys() == []
    store.save_staple("k", stored(1))
    store.close()
    aside = list(tmp_path.glob("state.db.corrupt-*"))
    assert [p.read_bytes() for p in aside] == [garbage]  # kept, for whoever wants to look
    assert "moved to" in caplog.text
    assert "started afresh" in caplog.text


def test_an_unwritable_state_directory_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the directory should be")
    with pytest.raises(InputError, match="cannot open the state database"):
        SqliteStore(tmp_path / "state" / "state.db")


WRITER = """
import sys
sys.path.insert(0, "tests")
from tests.test_store import stored
from mustaple.adapters.store import SqliteStore
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


def test_others_wrote_tells_a_status_row_written_with_no_answer_stored(tmp_path: Path) -> None:
    """Another process wrote only a status row (a `prime` that failed) while no answer is
    stored: told as a write with no answer (it was told as nothing at all)."""
    ours, theirs = SqliteStore(tmp_path / "state.db"), SqliteStore(tmp_path / "state.db")
    ours.others_wrote()
    assert ours.others_wrote() is None
    theirs.save_status("a", status("a", failures=1))
    assert ours.others_wrote() == {}
    assert ours.others_wrote() is None
    ours.close()
    theirs.close()


def test_others_wrote_tells_only_what_another_process_committed(tmp_path: Path) -> None:
    ours, theirs = SqliteStore(tmp_path / "state.db"), SqliteStore(tmp_path / "state.db")
    ours.others_wrote()  # opening `theirs` committed its schema check
    ours.save_staple("a", stored(1))
    assert ours.others_wrote() is None  # our own write
    theirs.save_staple("b", stored(2))
    seen = ours.others_wrote()
    assert seen is not None
    assert set(seen) == {"a", "b"}
    assert seen["b"] == (stored(2).this_update, False)
    assert ours.others_wrote() is None  # told once
    ours.close()
    theirs.close()


def test_check_opens_again_a_database_removed_replaced_or_damaged_under_it(
    tmp_path: Path,
) -> None:
    """What `run` looks at each pass: the file it has open may be gone (deleted), another
    (restored from a backup, or made by a `prime` after the deletion) or no database any
    more; each is opened again (a damaged one moved aside), and the next `others_wrote`
    gives every stored answer."""
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    store.save_staple("a", stored(1))
    assert store.check() is None
    other = SqliteStore(tmp_path / "other.db")
    other.save_staple("b", stored(2))
    other.close()
    for name in ("state.db", "state.db-wal", "state.db-shm"):  # a restore, with its log
        (tmp_path / name).unlink(missing_ok=True)
    (tmp_path / "other.db").replace(path)
    assert store.check() == "replaced by another file"
    assert set(store.others_wrote() or ()) == {"b"}
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    assert store.check() == "removed"
    assert store.load("b") is None
    prime = SqliteStore(path)  # another process writes to the new database
    prime.save_staple("c", stored(3))
    prime.close()
    assert set(store.others_wrote() or ()) == {"c"}
    damage = (  # in another process: closing the file here would drop SQLite's locks
        "import sqlite3, sys; path = sys.argv[1]; "
        "sqlite3.connect(path).execute('PRAGMA wal_checkpoint(TRUNCATE)').close(); "
        "f = open(path, 'r+b'); f.write(b'garbage!' * 4096); f.close()"
    )
    subprocess.run([sys.executable, "-c", damage, str(path)], check=True)
    assert store.check() == "damaged (file is not a database)"
    assert [p.name.startswith("state.db.corrupt-") for p in tmp_path.glob("state.db.*")] == [True]
    assert store.check() is None
    store.close()


def test_a_lock_that_outlasts_a_whole_wait_is_waited_for_briefly_until_a_write_gets_through(
    tmp_path: Path,
) -> None:
    """Another connection keeps the write lock (an `sqlite3` shell left in a transaction):
    the first write waits the store's whole `busy_timeout`, the next ones only
    STILL_LOCKED_WAIT while the lock holds (a prime waited 30 s at each of its writes);
    once a write gets through, a lock is waited for in full again."""
    store = SqliteStore(tmp_path / "state.db", busy_timeout=4.0)
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)

    def write_while_locked() -> float:
        other.execute("BEGIN IMMEDIATE")
        began = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.save_staple("a" * 64, stored(1))
        took = time.monotonic() - began
        other.execute("ROLLBACK")
        return took

    assert write_while_locked() >= 4.0
    assert STILL_LOCKED_WAIT <= write_while_locked() < 3.0
    store.save_staple("a" * 64, stored(1))
    assert write_while_locked() >= 4.0
    store.close()
    other.close()
