"""A full disk degrades, never kills: a real `mustaple run` with its state, or its staple files,
on a small tmpfs keeps going, says so on `/status`, and catches up by itself once space
returns."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509 import ocsp
from cryptography.x509.ocsp import OCSPCertStatus

from mustaple.adapters.store import Looked, SqliteStore, look_up
from mustaple.core.certs import make_target
from mustaple.core.clock import utc_now
from mustaple.core.errors import InputError
from mustaple.core.request import encode_request, get_url, make_cert_id
from mustaple.testing import CA, Behaviour, Leaf, ResponderThread
from mustaple.testing.craft import DEFAULT_VALIDITY
from outside import get_json, http_get, keeping, wait_for
from servers import free_port

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))


def mounted(directory: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs at `directory` (the tests run as root, as CI does)."""
    directory.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert mount.returncode == 0, f"this test mounts a tmpfs as root: {mount.stderr.strip()}"
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    yield from mounted(tmp_path / "state")


@pytest.fixture
def small_staples(tmp_path: Path) -> Iterator[Path]:
    yield from mounted(tmp_path / "staples")


def primed_all(config: Path) -> None:
    """A real `mustaple prime --all` of `config`, which must pass (exit 0)."""
    command = [MUSTAPLE, "prime", "--config", str(config), "--all"]
    primed = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert primed.returncode == 0, primed.stdout + primed.stderr


def fill(directory: Path) -> Path:
    """Fill the file system of `directory` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)
    return filler


def status(port: int) -> dict[str, Any]:
    report: dict[str, Any] = get_json(f"http://127.0.0.1:{port}/status")
    return report


def write_config(tmp_path: Path, state: Path, staples: Path, port: int) -> Path:
    """One file sink; quick passes; the HTTP endpoint on `port`."""
    config = tmp_path / "mustaple.toml"
    config.write_text(
        f'state_dir = "{state}"\n'
        f'[[certificates]]\npaths = ["{tmp_path}/live/*/fullchain.pem"]\n'
        f'[sinks.files]\ntype = "file"\npath = "{staples}/{{name}}.der"\n'
        '[policy]\ntimeout = "2s"\nattempts = 1\nwatch_interval = "1s"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    return config


@contextmanager
def running(config: Path, log: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A `mustaple run`, stopped by SIGTERM at the end: it must exit 0 without a
    traceback; its log is appended to `log`."""
    keeper = subprocess.Popen(
        [MUSTAPLE, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True
    )
    try:
        yield keeper
    finally:
        keeper.send_signal(signal.SIGTERM)
        code = keeper.wait(20)
    log.append(keeper.stderr.read() if keeper.stderr else "")
    assert code == 0, log[-1]
    assert "Traceback" not in log[-1]


def states(port: int) -> dict[str, str]:
    return {c["name"]: c["state"] for c in status(port)["certificates"]}


def test_a_full_state_disk_keeps_the_keeper_serving_and_recovers(
    tmp_path: Path, small_state: Path
) -> None:
    ca, port = CA(), free_port()
    config = write_config(tmp_path, small_state, tmp_path / "staples", port)
    with ResponderThread(ca) as responder:
        for name in ("a.test", "b.test"):
            leaf = ca.issue(name, ocsp_urls=[responder.url])
            responder.add(leaf)
            if name == "a.test":
                leaf.write(tmp_path / "live" / name)
        keeper = subprocess.Popen(
            [MUSTAPLE, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for((tmp_path / "staples" / "a.test.der").exists)
            filler = fill(small_state)
            # a new certificate while nothing can be stored: fetched and delivered all the same
            b = ca.issue("b.test", ocsp_urls=[responder.url])
            responder.add(b)
            b.write(tmp_path / "live" / "b.test")
            wait_for((tmp_path / "staples" / "b.test.der").exists)
            wait_for(lambda: status(port)["store_problem"])
            assert "full" in status(port)["store_problem"]
            assert states(port) == {"a.test": "good", "b.test": "good"}
            assert keeper.poll() is None
            filler.unlink()  # space returns: the pending writes are stored by themselves
            wait_for(lambda: status(port)["store_problem"] is None)
            shown = subprocess.run(
                [MUSTAPLE, "status", "--config", str(config), "--json"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            rows = {row["name"]: row["state"] for row in json.loads(shown.stdout)}
            assert rows == {"a.test": "good", "b.test": "good"}
        finally:
            keeper.send_signal(signal.SIGTERM)
            code = keeper.wait(20)
        log = keeper.stderr.read() if keeper.stderr else ""
    assert code == 0, log
    assert "Traceback" not in log
    assert log.count("the state store cannot be written") == 1
    assert "state store writable again" in log
    assert shutil.disk_usage(small_state).free > 0


def test_a_full_sink_directory_is_a_sink_failure_that_heals(
    tmp_path: Path, small_staples: Path
) -> None:
    ca, port = CA(), free_port()
    config = write_config(tmp_path, tmp_path / "state", small_staples, port)
    with ResponderThread(ca) as responder:
        leaf = ca.issue("a.test", ocsp_urls=[responder.url])
        responder.add(leaf)
        filler = fill(small_staples)
        leaf.write(tmp_path / "live" / "a.test")
        keeper = subprocess.Popen(
            [MUSTAPLE, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200)
            wait_for(lambda: status(port)["certificates"][0]["sinks"])
            (sink,) = status(port)["certificates"][0]["sinks"]
            assert not sink["ok"]
            assert "No space left on device" in sink["error"]
            assert status(port)["certificates"][0]["health"] != "ok"
            filler.unlink()  # space returns: the next retry delivers
            wait_for((small_staples / "a.test.der").exists, timeout=30)
            wait_for(lambda: status(port)["certificates"][0]["sinks"][0]["ok"])
            assert keeper.poll() is None
        finally:
            keeper.send_signal(signal.SIGTERM)
            code = keeper.wait(20)
        log = keeper.stderr.read() if keeper.stderr else ""
    assert code == 0, log
    assert "Traceback" not in log
    assert "a.test: sink files takes the staple again" in log


def test_a_revocation_delivered_while_the_state_disk_is_full_survives_a_restart(
    tmp_path: Path, small_state: Path
) -> None:
    """The keeper learns a revocation while nothing can be stored: it delivers it, says at
    its exit that it could not store it, and the next start, the CA down, takes the revoked
    answer back from the staple file instead of delivering the older good staple over it."""
    ca, port = CA(), free_port()
    config = write_config(tmp_path, small_state, tmp_path / "staples", port)
    quick = '[policy]\nrefresh_at = 0.001\njitter = 0.0\nmin_interval = "1s"\n'  # seconds
    config.write_text(config.read_text().replace("[policy]\n", quick))
    staple = tmp_path / "staples" / "a.test.der"
    with ResponderThread(ca, validity=timedelta(hours=2), cache_for=timedelta(0)) as responder:
        leaf = ca.issue("a.test", ocsp_urls=[responder.url])
        responder.add(leaf)
        leaf.write(tmp_path / "live" / "a.test")
        logs: list[str] = []
        with running(config, logs):
            wait_for(staple.exists)
            filler = fill(small_state)
            responder.set_behaviour(Behaviour.REVOKED)
            wait_for(lambda: said(staple) == OCSPCertStatus.REVOKED, timeout=20)
        assert "REVOKED, not stored: a.test" in logs[0]
        filler.unlink()
        responder.set_behaviour(Behaviour.HTTP_500)
        with running(config, logs):
            wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200)
            assert states(port) == {"a.test": "revoked"}
            assert said(staple) == OCSPCertStatus.REVOKED
    assert "newer than the stored one" in logs[1]


def said(path: Path) -> OCSPCertStatus:
    return ocsp.load_der_ocsp_response(path.read_bytes()).certificate_status


def test_a_write_the_full_disk_refuses_says_so_and_leaves_no_transaction(
    small_state: Path,
) -> None:
    """SQLite rolls a transaction back itself when the disk is full: the error raised is the
    full disk, not "cannot rollback - no transaction is active" from a ROLLBACK after it, and
    the next write can begin (a COMMIT that failed left nothing open)."""
    store = SqliteStore(small_state / "state.db")
    fill(small_state)
    big = [(f"k{i}", "x" * 2000) for i in range(2000)]
    for _ in range(2):
        with pytest.raises(sqlite3.Error) as raised, store.transaction():
            store._db.executemany("INSERT INTO signatures VALUES (?, ?)", big)
        assert "full" in str(raised.value)
        assert not store._db.in_transaction


def test_a_damaged_database_reads_as_nothing_stored(tmp_path: Path) -> None:
    """What a prime looks up, when another hand has damaged the database under it (a table
    gone): as if nothing were stored, fetched anew; it was an internal error (exit 4)."""
    store = SqliteStore(tmp_path / "state.db")
    other = sqlite3.connect(tmp_path / "state.db")
    other.execute("DROP TABLE staples")
    other.commit()
    ca = CA(key_type="ec")
    leaf = ca.issue("www.example.test")
    assert look_up(store, "any", make_target(leaf.cert, leaf.issuer), utc_now()) == Looked()


def issue(ca: CA, responder: ResponderThread, tmp_path: Path, name: str) -> Leaf:
    leaf = ca.issue(name, ocsp_urls=[responder.url])
    responder.add(leaf)
    leaf.write(tmp_path / "live" / name)
    return leaf


def shown(config: Path) -> dict[str, dict[str, Any]]:
    """What a separate `mustaple status --json` says, by name."""
    done = subprocess.run(
        [MUSTAPLE, "status", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {row["name"]: row for row in json.loads(done.stdout)}


def test_run_starts_on_a_full_state_disk_serves_the_stored_staples_and_stores_again(
    tmp_path: Path, small_state: Path
) -> None:
    """Primed with space; then the state disk full, the CA failing and the staple file gone:
    `run` starts all the same and serves the stored staple (sink, local responder), says the
    store is read only, delivers a new staple it cannot store, refuses a reload that would
    lose it, and stores it once space returns, without a restart."""
    ca, port = CA(), free_port()
    staples, log, base = tmp_path / "staples", tmp_path / "run.log", f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, small_state, staples, port)
    with ResponderThread(ca) as responder:
        a = issue(ca, responder, tmp_path, "a.test")
        primed_all(config)
        stored = (staples / "a.test.der").read_bytes()
        (staples / "a.test.der").unlink()  # only the state holds it now
        responder.set_behaviour(Behaviour.HTTP_500)
        asked = len(responder.requests)
        filler = fill(small_state)
        with keeping(config, log) as keeper:
            wait_for(lambda: http_get(f"{base}/healthz")[0] == 200)
            assert (staples / "a.test.der").read_bytes() == stored
            assert len(responder.requests) == asked  # from the state, not from the CA
            request = encode_request(make_cert_id(a.issuer, a.cert.serial_number))
            assert http_get(get_url(f"{base}/ocsp", request)) == (200, stored)
            assert "full" in status(port)["store_problem"]
            assert states(port) == {"a.test": "good"}
            assert b"mustaple_state_store_writable 0.0" in http_get(f"{base}/metrics")[1]
            assert b"The state store cannot be written" in http_get(f"{base}/")[1]
            assert shown(config)["a.test"]["state"] == "good"  # `status` reads a full disk
            responder.set_behaviour(Behaviour.GOOD)
            issue(ca, responder, tmp_path, "b.test")  # a staple nothing can store
            wait_for((staples / "b.test.der").exists)
            assert shown(config).get("b.test", {}).get("effective_expiry") is None
            keeper.send_signal(signal.SIGHUP)
            wait_for(lambda: "not reloaded: 1 answers held in memory" in log.read_text())
            filler.unlink()  # space returns
            wait_for(lambda: status(port)["store_problem"] is None)
            assert b"mustaple_state_store_writable 1.0" in http_get(f"{base}/metrics")[1]
            rows = shown(config)
            assert {name: row["state"] for name, row in rows.items()} == {
                "a.test": "good",
                "b.test": "good",
            }
            assert rows["b.test"]["effective_expiry"] is not None  # its staple is stored
            assert keeper.poll() is None
    said = log.read_text()
    assert said.count("the state store cannot be written") == 1
    assert f"Free space on the file system of {small_state}" in said
    assert "state store writable again" in said


def test_run_starts_on_a_full_state_disk_with_no_state_yet(
    tmp_path: Path, small_state: Path
) -> None:
    """No state database yet, and no space to make one: `run` starts from an empty state
    in memory (nothing stored is lost: there is none), fetches and delivers, and makes the
    database once space returns. The pid it writes into run.lock only informs: its failure
    is no error ("cannot write the output" was said once)."""
    ca, port = CA(), free_port()
    staples, log = tmp_path / "staples", tmp_path / "run.log"
    config = write_config(tmp_path, small_state, staples, port)
    filler = fill(small_state)
    with ResponderThread(ca) as responder, keeping(config, log) as keeper:
        issue(ca, responder, tmp_path, "a.test")
        wait_for((staples / "a.test.der").exists)
        wait_for(lambda: states(port) == {"a.test": "good"})
        assert "full" in status(port)["store_problem"]
        filler.unlink()
        wait_for(lambda: status(port)["store_problem"] is None)
        assert shown(config)["a.test"]["effective_expiry"] is not None
        assert keeper.poll() is None
    assert "cannot write the output" not in log.read_text()


def test_a_start_on_a_full_disk_that_cannot_read_its_state_is_refused(
    tmp_path: Path, small_state: Path
) -> None:
    """A state whose log holds writes SQLite cannot read without space for its shared memory
    cannot be served from: one line, exit 2, and nothing is moved."""
    config = write_config(tmp_path, small_state, tmp_path / "staples", free_port())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = SqliteStore(elsewhere / "state.db")
    with contextlib.closing(sqlite3.connect(elsewhere / "state.db")) as reader:
        reader.execute("SELECT count(*) FROM staples").fetchone()  # no checkpoint at the close
        store.add_signatures([(b"tag", utc_now())])
        store.close()
        for name in ("state.db", "state.db-wal"):  # the log, without its shared memory
            shutil.copy(elsewhere / name, small_state / name)
    assert os.path.getsize(small_state / "state.db-wal") > 0
    fill(small_state)
    done = subprocess.run(
        [MUSTAPLE, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"mustaple: {small_state}/state.db: cannot open the state")
    assert "disk is full" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_a_store_on_a_full_disk_is_read_then_written_again_when_space_returns(
    small_state: Path,
) -> None:
    """The daemon's store (`read_when_full`) on a full disk reads what is stored, refuses
    every write with the full disk's reason, and takes writes again at the first `check`
    after space returns; the one-shot commands' store still refuses to open."""
    store = SqliteStore(small_state / "state.db")
    store.add_signatures([(b"tag", utc_now())])
    store.close()
    filler = fill(small_state)
    with pytest.raises(InputError, match="cannot open the state database"):
        SqliteStore(small_state / "state.db")
    full = SqliteStore(small_state / "state.db", read_when_full=True)
    assert full.read_only is not None
    assert "full" in full.read_only
    assert full.has_signature(b"tag")
    with pytest.raises(sqlite3.Error) as raised:
        full.add_signatures([(b"new", utc_now())])
    assert "the state disk is full (No space left on device)" in str(raised.value)
    assert full.check() is None
    assert full.read_only is not None
    filler.unlink()
    assert full.check() is None
    assert full.read_only is None
    full.add_signatures([(b"new", utc_now())])
    assert SqliteStore.reader(small_state / "state.db").has_signature(b"new")


def test_an_expiry_seen_on_a_full_state_disk_is_told_then_recorded_once(
    tmp_path: Path, small_state: Path
) -> None:
    """`run` started on a full state disk (its store open for reading only) holds a staple
    that expires: MUSTAPLE_EVENT=expired is told all the same, on the keeper's own view
    (the state cannot decide who tells it), and once space returns it is recorded, not told
    again."""
    left = timedelta(seconds=15)
    made = utc_now() - DEFAULT_VALIDITY + left  # the answers expire `left` from now
    ca, port = CA(now=made), free_port()
    log, told = tmp_path / "run.log", tmp_path / "told"
    config = write_config(tmp_path, small_state, tmp_path / "staples", port)
    config.write_text(
        config.read_text() + f'[hooks]\non_expiring = "echo $MUSTAPLE_EVENT >> {told}"\n'
    )
    with ResponderThread(ca, clock=lambda: made) as responder:
        issue(ca, responder, tmp_path, "a.test")
        primed_all(config)
        responder.set_behaviour(Behaviour.TRY_LATER)
        filler = fill(small_state)
        with keeping(config, log):
            wait_for(lambda: "expired" in told.read_text().split(), left.total_seconds() + 20)
            assert "full" in status(port)["store_problem"]
            filler.unlink()  # space returns
            wait_for(lambda: status(port)["store_problem"] is None)
            wait_for(lambda: shown(config)["a.test"]["state"] == "expired")
        assert told.read_text().split().count("expired") == 1
