"""A state database damaged beyond its first page: a table's page overwritten, the schema
intact, so the database opens and reads fine until a process touches that table. A
process's look at the file (`check`) reads the first page only: the damage showed only as a
write that failed, and `run` served from memory for ever ("the state store cannot be
written (database disk image is malformed)"), `prime` stored nothing, and `status` failed
every time. Now the first write that meets the damage moves the file aside and starts a new
one, as damage found at a start does, and stores what the process holds in it. Real
`mustaple run`, `prime` and `status` on one state directory, judged by the files, `/status`,
`status --json` and the exit codes."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from cryptography import x509

from outside import get_json, wait_for
from test_recorded_attempts import MUSTAPLE, Site, site
from test_unwritable_hooks import stored


def damage(s: Site, table: str) -> None:
    """Every byte of `table`'s first page made 0xFF, in the file itself (the log emptied
    into it first): the schema still reads, the table does not."""
    db = s.tmp / "state" / "state.db"
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = other.execute(
            "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        (size,) = other.execute("PRAGMA page_size").fetchone()
    finally:
        other.close()
    with db.open("r+b") as file:
        file.seek((root - 1) * size)
        file.write(b"\xff" * size)


def set_aside(s: Site) -> bool:
    return any((s.tmp / "state").glob("state.db.corrupt-*"))


def stored_yet(s: Site, leaf: x509.Certificate) -> bool:
    """`stored`, False while the new database has no tables yet (just made)."""
    try:
        return stored(s, leaf)
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        return False


def renewed(s: Site) -> x509.Certificate:
    """A renewal: a new leaf in the site's file, whose answer is to be fetched and stored."""
    s.issue()
    return x509.load_pem_x509_certificates(s.fullchain.read_bytes())[0]


def status(s: Site) -> subprocess.CompletedProcess[str]:
    command = [MUSTAPLE, "status", "--json", "--config", str(s.config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_a_keeper_whose_write_meets_a_damaged_table_sets_the_file_aside(tmp_path: Path) -> None:
    with site(tmp_path) as s:
        keeper = s.run()
        damage(s, "staples")
        leaf = renewed(s)
        wait_for(lambda: set_aside(s), timeout=30)
        wait_for(lambda: stored_yet(s, leaf), timeout=30)
        page = f"http://127.0.0.1:{s.http_port}/status"
        wait_for(lambda: get_json(page)["store_problem"] is None)
        assert s.row()["state"] == "good"
        s.stop(keeper)
        assert "moved to" in s.logs()


def test_a_prime_whose_write_meets_a_damaged_table_sets_the_file_aside(tmp_path: Path) -> None:
    with site(tmp_path) as s:
        assert s.prime()[0] == 0
        damage(s, "staples")
        leaf = renewed(s)
        assert s.prime()[0] == 0
        assert set_aside(s)
        assert stored(s, leaf)
        assert status(s).returncode == 0


def test_status_on_a_damaged_table_says_what_is_wrong_and_what_mends_it(tmp_path: Path) -> None:
    with site(tmp_path) as s:
        assert s.prime()[0] == 0
        damage(s, "status")
        done = status(s)
        assert done.returncode == 2
        (line,) = done.stderr.splitlines()
        assert "database disk image is malformed" in line, line
        assert "moves it aside and starts afresh" in line, line
        assert not set_aside(s)  # status only reads
