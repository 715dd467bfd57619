"""The leaf-signature cache across restarts: real `mustaple prime` and `mustaple run` processes
check each (issuer, leaf) pair once per state directory; a changed file is checked again; rows
the state directory's key did not make never make a wrong issuer accepted."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from mustaple.adapters.loader import load_file
from mustaple.adapters.signatures import KEY_FILE, SignatureCache
from mustaple.adapters.store import SqliteStore
from mustaple.core.errors import InputError
from mustaple.testing import CA, ResponderThread

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
# Put first on PYTHONPATH of a `mustaple` process: each leaf-signature check it makes appends
# the leaf's serial to the file named by $SIGNATURE_LOG.
COUNTER = """
import os
import mustaple.core.certs as certs

_check = certs.signed_by


def _counted(cert, issuer):
    with open(os.environ["SIGNATURE_LOG"], "a") as log:
        log.write(f"{cert.serial_number:x}\\n")
    return _check(cert, issuer)


certs.signed_by = _counted
"""


def immediately(write: Callable[[], object]) -> None:
    write()


class Site:
    """Certificates in live/NAME/fullchain.pem, a config with a file sink, and a way to run
    `mustaple` counting its leaf-signature checks."""

    def __init__(self, tmp: Path, ca: CA, responder: ResponderThread) -> None:
        self.tmp, self.ca, self.responder = tmp, ca, responder
        self.config = tmp / "mustaple.toml"
        self.config.write_text(f"""
state_dir = "{tmp}/state"

[[certificates]]
paths = ["{tmp}/live/*/fullchain.pem"]

[sinks.files]
type = "file"
path = "{tmp}/staples/{{name}}.der"
""")
        (tmp / "counter").mkdir()
        (tmp / "counter" / "sitecustomize.py").write_text(COUNTER)
        self.log = tmp / "signatures.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(tmp / "counter"),
            "SIGNATURE_LOG": str(self.log),
        }

    def issue(self, name: str) -> int:
        leaf = self.ca.issue(name, ocsp_urls=[self.responder.url])
        self.responder.add(leaf)
        leaf.write(self.tmp / "live" / name)
        return leaf.cert.serial_number

    def cert(self, name: str) -> str:
        return str(self.tmp / "live" / name / "fullchain.pem")

    def checked(self) -> list[int]:
        """The serials whose signature was checked since the last call."""
        lines = self.log.read_text().split() if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return sorted(int(line, 16) for line in lines)

    def prime(self, *names: str) -> None:
        command = [MUSTAPLE, "prime", "--config", str(self.config), *map(self.cert, names)]
        subprocess.run(command, env=self.env, check=True, capture_output=True, timeout=60)

    def run_until_ready(self) -> None:
        """`mustaple run` until it tells systemd it serves (every stored staple delivered),
        then stopped."""
        path = self.tmp / "notify.sock"
        path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(path))
            notify.settimeout(30)
            env = {**self.env, "NOTIFY_SOCKET": str(path)}
            command = [MUSTAPLE, "run", "--config", str(self.config)]
            process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
            try:
                while "READY=1" not in notify.recv(4096).decode().splitlines():
                    pass
            finally:
                process.send_signal(signal.SIGTERM)
                assert process.wait(30) == 0

    def tags(self) -> int:
        with sqlite3.connect(self.tmp / "state" / "state.db") as db:
            return int(db.execute("SELECT count(*) FROM signatures").fetchone()[0])


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    ca = CA()
    with ResponderThread(ca) as responder:
        yield Site(tmp_path, ca, responder)


def test_a_restart_checks_no_signature_checked_before(site: Site) -> None:
    serials = sorted(site.issue(name) for name in ("a.test", "b.test", "c.test"))
    site.prime("a.test", "b.test", "c.test")
    assert site.checked() == serials
    assert site.tags() == 3
    site.run_until_ready()
    assert site.checked() == []  # without the cache: every certificate again
    assert sorted(p.name for p in (site.tmp / "staples").iterdir()) == [
        "a.test.der",
        "b.test.der",
        "c.test.der",
    ]
    changed = site.issue("b.test")  # a new leaf in the same file
    site.run_until_ready()
    assert site.checked() == [changed]
    assert site.tags() == 4
    (site.tmp / "state" / KEY_FILE).unlink()  # a new key: every pair is checked again
    site.run_until_ready()
    assert len(site.checked()) == 3
    assert site.tags() == 3


def test_rows_the_key_did_not_make_never_accept_a_wrong_issuer(tmp_path: Path) -> None:
    real, impostor = CA(name="shared name"), CA(name="shared name")
    leaf = impostor.issue("forged.test")  # names the real CA as issuer; signed by another key
    bundle = tmp_path / "fullchain.pem"
    bundle.write_bytes(leaf.cert_pem + real.cert.public_bytes(Encoding.PEM))
    store = SqliteStore(tmp_path / "state" / "state.db")
    cache = SignatureCache.open(store, immediately, datetime.now(UTC))
    assert cache is not None
    key = (tmp_path / "state" / KEY_FILE).read_bytes()
    pair = real.cert.fingerprint(hashes.SHA256()) + leaf.cert.fingerprint(hashes.SHA256())
    forged = [
        pair,  # the plain pair of digests, as a cache without a key would keep it
        hashlib.sha256(pair).digest(),
        hmac.digest(b"another state directory's key!!!", pair, hashlib.sha256),
        hmac.digest(key, leaf.cert.fingerprint(hashes.SHA256()) * 2, hashlib.sha256),
        hmac.digest(key, pair, hashlib.sha256)[:16],  # truncated
        b"",
        os.urandom(32),
    ]
    for tag in forged:
        store.add_signatures([(tag, datetime.now(UTC) + timedelta(days=1))])
    with pytest.raises(InputError, match=r"the issuer of forged\.test is not in this file"):
        asyncio.run(load_file(bundle, signatures=cache))
    genuine = real.issue("genuine.test").write(tmp_path / "genuine")
    assert asyncio.run(load_file(genuine.fullchain, signatures=cache)).target.issuer == real.cert
    with pytest.raises(
        InputError, match=r"the issuer of forged\.test is not in this file"
    ):  # the genuine pair's tag changes nothing
        asyncio.run(load_file(bundle, signatures=cache))
    store.close()


def test_a_garbled_key_is_replaced_and_its_tags_forgotten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.add_signatures([(b"t" * 32, datetime.now(UTC) + timedelta(days=1))])
    (tmp_path / KEY_FILE).write_bytes(b"short")
    assert SignatureCache.open(store, immediately, datetime.now(UTC)) is not None
    assert caplog.messages == [
        f"{tmp_path / KEY_FILE}: not a key of 32 bytes: replaced by a new one"
    ]
    key = tmp_path / KEY_FILE
    assert len(key.read_bytes()) == 32
    assert key.stat().st_mode & 0o777 == 0o600
    assert not store.has_signature(b"t" * 32)
    store.close()


def test_tags_of_expired_leaves_are_dropped(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    now = datetime.now(UTC)
    assert SignatureCache.open(store, immediately, now) is not None  # makes the key
    store.add_signatures([(b"old" * 11, now - timedelta(seconds=1))])
    store.add_signatures([(b"new" * 11, now + timedelta(seconds=1))])
    assert SignatureCache.open(store, immediately, now) is not None
    assert not store.has_signature(b"old" * 11)
    assert store.has_signature(b"new" * 11)
    store.close()


def test_an_unreadable_key_turns_the_cache_off_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    (tmp_path / KEY_FILE).mkdir()  # not a file
    store = SqliteStore(tmp_path / "state.db")
    assert SignatureCache.open(store, immediately, datetime.now(UTC)) is None
    [message] = caplog.messages
    assert message.startswith(f"{tmp_path / KEY_FILE}: cannot read it (")
    assert "leaf signatures are checked at every start" in message
    store.close()
