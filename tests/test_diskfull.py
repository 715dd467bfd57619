"""A full disk degrades, never kills: a real `mustaple run` with its state, or its staple files,
on a small tmpfs keeps going, says so on `/status`, and catches up by itself once space
returns."""

from __future__ import annotations

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
from mustaple.testing import CA, Behaviour, ResponderThread
from outside import get_json, http_get, wait_for
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


def test_a_start_on_a_full_state_disk_names_the_state_not_the_output(
    tmp_path: Path, small_state: Path
) -> None:
    """The pid written into run.lock only informs: on a full disk `run` said "cannot write
    the output", as if its standard output had failed; now it says what cannot be done."""
    config = write_config(tmp_path, small_state, tmp_path / "staples", free_port())
    fill(small_state)
    done = subprocess.run(
        [MUSTAPLE, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "cannot write the output" not in done.stderr
    assert f"{small_state}/state.db: cannot open the state database" in done.stderr
