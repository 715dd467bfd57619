"""The hooks when the state cannot be written: each process tells from its own view, and
what the shared state decides once it can be written again is told once, never lost.

The shared state (`runs`, `alerts`) decides which process tells a run of failures or an
alert; while it cannot be written (another connection holds its write lock for more than
`LOCK_PATIENCE`: an operator's `sqlite3` shell, a stuck process; or its disk is full), each
process tells what it sees itself, says one line about the store, and records its news once
it can. Real `mustaple run` and `mustaple prime` on one state directory, a loopback
responder the test holds and answers, the state locked by a connection of the test's own
(`BEGIN IMMEDIATE`), or its disk a full tmpfs (as root, as CI runs); judged by the hooks'
file, `status --json` and `/status`.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from mustaple.adapters.store import BUSY_TIMEOUT
from mustaple.core.clock import utc_now
from mustaple.keeper.keeper import LOCK_PATIENCE
from mustaple.testing import Behaviour
from outside import get_json, wait_for
from test_attempt_hooks import hooked, lines, patient, waiting
from test_diskfull import fill, mounted
from test_expiring_hooks import RUNNING_OUT, reloaded
from test_recorded_attempts import MUSTAPLE, Site, site


@contextmanager
def locked(s: Site) -> Iterator[None]:
    """The state database write-locked by another connection until the block ends (what
    an operator's `sqlite3 state.db` with `BEGIN IMMEDIATE` open does): it can be read,
    never written."""
    db = sqlite3.connect(s.tmp / "state" / "state.db", isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


def store_problem(s: Site) -> str | None:
    problem = get_json(f"http://127.0.0.1:{s.http_port}/status")["store_problem"]
    assert problem is None or isinstance(problem, str)
    return problem


def quick_retries(s: Site) -> None:
    """A failed refresh is tried again a second later (each request held until released)."""
    text = s.config.read_text()
    s.config.write_text(
        text.replace('retry_min = "1h"\nretry_base = "1h"', 'retry_min = "1s"\nretry_base = "1s"')
    )


def held_keeper(s: Site) -> tuple[Path, subprocess.Popen[str]]:
    """The hooks' file, and a `mustaple run` whose first request the responder holds; a
    failure is tried again a second later."""
    told = hooked(s)
    patient(s)
    quick_retries(s)
    s.responder.hold()
    return told, waiting(s, "run")


def said_once_and_healed(s: Site) -> None:
    """The log said once that the state could not be written, then that it could again."""
    log = s.logs()
    assert log.count("the state store cannot be written") == 1, log
    assert "state store writable again" in log


def test_a_keeper_tells_its_failure_and_recovery_while_the_state_stays_locked(
    tmp_path: Path,
) -> None:
    """Another connection holds the state's write lock (longer than a `prime`'s writes
    would: `LOCK_PATIENCE`): the keeper's failure and its recovery are each told while it
    lasts, from its own view (a page lost or late because the state is broken is a page
    lost), the store's trouble in one line and on `/status`; once
    the lock goes, they are recorded and told no second time, and the run is closed in the
    shared state (a prime's failure after it opens a new one: told). The keeper told nothing
    while the lock lasted: its write failed before its news were taken out to be told."""
    with site(tmp_path) as s:
        told, keeper = held_keeper(s)
        with locked(s):
            s.responder.release(Behaviour.TRY_LATER)
            wait_for(lambda: lines(told) == ["failure run"])
            assert "locked" in (store_problem(s) or "")
            wait_for(lambda: s.responder.held == 1)  # its retry
            s.responder.release(Behaviour.GOOD)
            wait_for(lambda: lines(told) == ["failure run", "recovered run"])
            wait_for(s.staple.exists)  # delivered from memory
            assert s.row()["state"] == "pending"  # nothing written: the state read as it was
        wait_for(lambda: store_problem(s) is None)
        s.passes(3)
        assert lines(told) == ["failure run", "recovered run"], lines(told)
        row = s.row()
        assert (row["state"], row["failures"]) == ("good", 0), row
        s.responder.hold(False)
        s.responder.set_behaviour(Behaviour.TRY_LATER)
        assert s.prime()[0] == 0  # the staple in hand stays valid
        assert lines(told) == ["failure run", "recovered run", "failure prime"], lines(told)
        said_once_and_healed(s)
        s.stop(keeper)


def test_a_recovery_written_while_the_state_disk_is_full_is_told_once_space_returns(
    tmp_path: Path,
) -> None:
    """A prime fails and tells on_failure (its write opens the run); the keeper, whose fetch
    was under way before that write, gets a good answer while the state's disk is full: it
    saw no failure itself, so it tells nothing then, and once its write closes the prime's
    run, it must tell on_recovered. It took the news as settled by itself and never told
    it: the run was closed in the state and the pager stayed on failing for ever."""
    with site(tmp_path) as s, contextmanager(mounted)(s.tmp / "state") as state:
        told = hooked(s)
        patient(s)
        s.responder.hold()
        prime = waiting(s, "prime")
        keeper = waiting(s, "run")
        s.responder.release(Behaviour.TRY_LATER)  # the prime's (one request): no staple
        assert prime.wait(60) == 1
        assert lines(told) == ["failure prime"]
        filler = fill(state)
        s.responder.release(Behaviour.GOOD)  # the keeper's
        wait_for(s.staple.exists)  # delivered from memory
        wait_for(lambda: "full" in (store_problem(s) or ""))
        s.passes(2)
        assert lines(told) == ["failure prime"]  # not seen here: the state decides
        filler.unlink()
        wait_for(lambda: store_problem(s) is None)
        wait_for(lambda: len(lines(told)) == 2)
        s.passes(3)
        assert lines(told) == ["failure prime", "recovered run"], lines(told)
        row = s.row()
        assert (row["state"], row["failures"]) == ("good", 0), row
        said_once_and_healed(s)
        s.stop(keeper)


def test_an_expiring_staple_is_told_at_once_while_the_state_is_locked_and_not_again(
    tmp_path: Path,
) -> None:
    """The keeper's answer has 12 hours left (WARNING) while another connection holds the
    state's write lock: on_expiring runs while it lasts (it ran only once the lock went); once
    the state is written, the level is recorded: the keeper a SIGHUP builds, which starts
    from the recorded level, does not tell it again."""
    made = utc_now() - RUNNING_OUT
    with site(tmp_path, clock=lambda: made) as s:
        told = hooked(s, ("on_expiring",))
        patient(s)
        s.responder.hold()
        keeper = waiting(s, "run")
        with locked(s):
            s.responder.release(Behaviour.GOOD)
            wait_for(lambda: lines(told) == ["expiring WARNING run"])
            assert "locked" in (store_problem(s) or "")
        wait_for(lambda: store_problem(s) is None)
        keeper.send_signal(signal.SIGHUP)
        reloaded(s, 1)
        assert lines(told) == ["expiring WARNING run"], lines(told)
        s.stop(keeper)


def stored(s: Site, leaf: x509.Certificate) -> bool:
    """Whether the state holds an answer for `leaf` (read from the database file)."""
    db = sqlite3.connect(f"file:{s.tmp / 'state' / 'state.db'}?mode=ro", uri=True)
    try:
        key = leaf.fingerprint(hashes.SHA256()).hex()
        return db.execute("SELECT 1 FROM staples WHERE cert_key = ?", (key,)).fetchone() is not None
    finally:
        db.close()


def primed_renewal(s: Site) -> tuple[subprocess.CompletedProcess[str], x509.Certificate]:
    """A renewal (a new leaf in the site's file), then a real `mustaple prime` of it: how it
    ended, and the new leaf."""
    s.issue()
    leaf = x509.load_pem_x509_certificates(s.fullchain.read_bytes())[0]
    command = [MUSTAPLE, "prime", "--config", str(s.config), str(s.fullchain)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=2 * BUSY_TIMEOUT, check=False
    )
    assert "Traceback" not in done.stderr
    return done, leaf


def delivered_unstored(
    s: Site, done: subprocess.CompletedProcess[str], leaf: x509.Certificate
) -> None:
    """The prime passed, its staple of `leaf` in the sink's file, not in the state, and said."""
    assert done.returncode == 0, done.stderr
    assert "could not take 1 answers before the exit" in done.stderr, done.stderr
    answer = ocsp.load_der_ocsp_response(s.staple.read_bytes())
    assert answer.serial_number == leaf.serial_number
    assert not stored(s, leaf)


def test_a_prime_waits_once_for_a_lock_left_held_and_delivers_from_memory(tmp_path: Path) -> None:
    """A lock another connection keeps (an `sqlite3` shell left in a transaction, a stuck
    process): a prime waits `BUSY_TIMEOUT` (30 s) at its first write, then 1 s at each of
    its later ones while the lock holds. It waited 30 s at every write: 120 s for one
    certificate, which a deploy hook's timeout would kill. It delivers the renewed
    certificate's staple from memory, exits 0 (the staple is in place) and names on
    standard error the answer it could not store; the next prime, the lock gone, stores it."""
    with site(tmp_path) as s:
        assert s.prime()[0] == 0
        with locked(s):
            began = time.monotonic()
            done, leaf = primed_renewal(s)
            took = time.monotonic() - began
        assert BUSY_TIMEOUT <= took < BUSY_TIMEOUT + 15, took
        delivered_unstored(s, done, leaf)
        assert "(database is locked)" in done.stderr
        assert s.prime()[0] == 0
        assert stored(s, leaf)


def test_a_prime_on_a_full_state_disk_delivers_from_memory(tmp_path: Path) -> None:
    """A deploy hook on a machine whose state disk filled up: the prime stopped at the
    state's open ("cannot open the state database (disk I/O error)", exit 2), the renewed
    certificate's staple never written, so a reload of the server by anyone served the new
    must-staple certificate with no staple. As `run` does, it now reads the state, fetches,
    delivers, exits 0 and names what it could not store; once space returns, the next
    prime stores it."""
    with site(tmp_path) as s, contextmanager(mounted)(s.tmp / "state") as state:
        assert s.prime()[0] == 0
        filler = fill(state)
        done, leaf = primed_renewal(s)
        filler.unlink()  # (the state is read after: SQLite reads no log without room)
        delivered_unstored(s, done, leaf)
        assert "the state disk is full" in done.stderr
        assert s.prime()[0] == 0
        assert stored(s, leaf)


def test_a_failure_told_while_the_state_stays_locked_is_not_told_again_after_a_sighup(
    tmp_path: Path,
) -> None:
    """The keeper told its failure from its own view while the state stayed locked; the
    news waits in its memory to be recorded. A SIGHUP built a new keeper from the state,
    which says nothing of it: its next failure paged again. The reload is refused while
    told news are not recorded (one line, as for answers not stored), and once the lock
    goes the news is recorded, the reload works, and the new keeper's failures and its
    recovery are told as the shared run says: the recovery once, the failure no second time."""
    with site(tmp_path) as s:
        told, keeper = held_keeper(s)
        with locked(s):
            s.responder.release(Behaviour.TRY_LATER)
            wait_for(lambda: lines(told) == ["failure run"])
            keeper.send_signal(signal.SIGHUP)
            wait_for(lambda: "reloaded" in s.logs())  # "not reloaded", or a new keeper
            wait_for(lambda: s.responder.held == 1)  # a retry, by the old keeper or a new one
            s.responder.release(Behaviour.TRY_LATER)
            failed = utc_now()
            # a new keeper would tell its failure alone once the lock outlasts its patience
            wait_for(lambda: utc_now() > failed + LOCK_PATIENCE + timedelta(seconds=2))
            assert lines(told) == ["failure run"], lines(told)
            assert "not reloaded: 1 hooks told" in s.logs(), s.logs()
        wait_for(lambda: s.responder.held == 1)  # the pass that writes again, once answered
        s.responder.release(Behaviour.TRY_LATER)
        wait_for(lambda: store_problem(s) is None)
        keeper.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in s.logs())
        wait_for(lambda: s.responder.held == 1)
        s.responder.release(Behaviour.TRY_LATER)
        wait_for(lambda: s.responder.held == 1)
        s.responder.release(Behaviour.GOOD)
        wait_for(lambda: lines(told) == ["failure run", "recovered run"])
        s.responder.hold(False)
        s.passes(2)
        assert lines(told) == ["failure run", "recovered run"], lines(told)
        s.stop(keeper)
