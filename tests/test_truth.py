"""One truth across processes and time, judged from outside: real `mustaple run` and
`mustaple prime` processes, OpenSSL's own `openssl ocsp` responder and CA index, a real nginx,
and what clients see (`openssl s_client -status`, `openssl ocsp -respin`), the HTTP endpoints,
the files and the exit codes."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mustaple.adapters.store import SqliteStore
from mustaple.core.render import iso
from mustaple.core.request import encode_request, get_url, make_cert_id
from mustaple.serve.localresponder import UNAUTHORIZED
from mustaple.testing import CA, ResponderThread
from openssl_pki import Pki, Responder, run_openssl, serve_new_pki, start_responder
from outside import end_all, get_json, http_get, wait_for
from servers import NginxServer, free_port, staple_from

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
HOST = "good.ec.interop.test"


@dataclass
class Deployment:
    """An OpenSSL CA with its responder, one must-staple certificate, nginx, and the
    configuration of the keeper that looks after them."""

    tmp: Path
    pki: Pki
    responder: Responder
    nginx: NginxServer
    http_port: int
    config: Path
    runs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def live(self) -> Path:
        return self.tmp / "live" / HOST

    @property
    def fullchain(self) -> Path:
        return self.live / "fullchain.pem"

    @property
    def staple(self) -> Path:
        return self.tmp / "staples" / f"{HOST}.der"

    def mustaple(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [MUSTAPLE, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
        )

    def prime(self, *paths: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.mustaple("prime", "--config", str(self.config), *paths, cwd=cwd)

    def run(self) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [MUSTAPLE, "run", "--config", str(self.config)],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.runs.append(process)
        return process

    def run_until_good(self) -> subprocess.Popen[str]:
        """`run`, once its endpoint answers and its certificate is good."""
        process = self.run()
        wait_for(lambda: http_get(f"{self.base}/healthz")[0] == 200)
        wait_for(lambda: certificate(self.status())["state"] == "good")
        return process

    def stop(self, process: subprocess.Popen[str]) -> str:
        """SIGTERM to a `run`: it must exit 0 without a traceback; its log."""
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        log = process.stderr.read() if process.stderr else ""
        assert "Traceback" not in log
        return log

    def stored_rows(self) -> list[dict[str, Any]]:
        """`mustaple status --json` (empty when it fails)."""
        shown = self.mustaple("status", "--config", str(self.config), "--json")
        rows: list[dict[str, Any]] = json.loads(shown.stdout) if shown.returncode == 0 else []
        return rows

    def status(self) -> dict[str, Any]:
        """The running keeper's `/status`."""
        report: dict[str, Any] = get_json(f"{self.base}/status")
        return report

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def ready(self) -> int:
        return http_get(f"{self.base}/readyz")[0]

    def revoke(self) -> None:
        """Revoke the certificate in the CA's index; `openssl ocsp` reads its index at start,
        so the responder is started again on the same port."""
        run_openssl(
            "ca", "-config", "openssl.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
            "-revoke", "good.pem", cwd=self.pki.directory,
        )  # fmt: skip
        port = self.responder.port
        self.responder.stop()
        self.responder = start_responder(self.pki, "issuer", port=port)

    def local_answer(self) -> str:
        """What the running keeper's local OCSP responder answers for the certificate, read
        by OpenSSL's own client ("" for an answer with no status in it)."""
        leaf = x509.load_pem_x509_certificate(self.pki.leaf("good").read_bytes())
        ca = x509.load_pem_x509_certificate(self.pki.ca.read_bytes())
        request = encode_request(make_cert_id(ca, leaf.serial_number))
        status, body = http_get(get_url(f"{self.base}/ocsp", request))
        return self.says(body) if status == 200 and len(body) > len(UNAUTHORIZED) else ""

    def says(self, der: bytes) -> str:
        """What OpenSSL's own client makes of a response: `good` or `revoked`."""
        response = self.tmp / "check.der"
        response.write_bytes(der)
        out = run_openssl(
            "ocsp", "-respin", response, "-issuer", self.pki.ca, "-cert", self.pki.leaf("good"),
            "-CAfile", self.pki.ca, cwd=self.tmp,
        )  # fmt: skip
        line = next(line for line in out.splitlines() if "good.pem:" in line)
        return line.split(":", 1)[1].strip()


def write_config(tmp: Path, nginx: NginxServer, http_port: int, extra: str = "") -> Path:
    path = tmp / "mustaple.toml"
    path.write_text(f"""
state_dir = "{tmp}/state"

[[certificates]]
paths = ["{tmp}/live/*/fullchain.pem"]
sinks = ["nginx"]

[sinks.nginx]
type = "file"
path = "{tmp}/staples/{{name}}.der"
remove = "keep"
reload = "{nginx.reload_command}"
running = "test -s {nginx.directory}/nginx.pid"

[hooks]
on_recovered = "echo $MUSTAPLE_EVENT >> {tmp}/hooks.log"
on_revoked = "echo $MUSTAPLE_EVENT >> {tmp}/hooks.log"

[policy]
timeout = "2s"
attempts = 1
watch_interval = "1s"

[http]
listen = "127.0.0.1:{http_port}"
{extra}
""")
    return path


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    pki, responder = serve_new_pki(tmp_path / "pki", "ec")
    live = tmp_path / "live" / HOST
    live.mkdir(parents=True)
    fullchain = live / "fullchain.pem"
    fullchain.write_bytes(pki.leaf("good").read_bytes() + pki.ca.read_bytes())
    nginx = NginxServer(
        tmp_path / "nginx",
        cert=fullchain,
        key=pki.directory / "leaf.key",
        stapling_file=tmp_path / "staples" / f"{HOST}.der",
    )
    http_port = free_port()
    d = Deployment(
        tmp_path, pki, responder, nginx, http_port, write_config(tmp_path, nginx, http_port)
    )
    try:
        yield d
    finally:
        end_all(d.runs)
        nginx.stop()
        d.responder.stop()


def certificate(report: dict[str, Any]) -> dict[str, Any]:
    (cert,) = report["certificates"]
    assert isinstance(cert, dict)
    return cert


def test_prime_before_nginx_then_revocation_found_by_prime_reaches_everything(
    deployment: Deployment,
) -> None:
    d = deployment
    # the documented start order: prime with nginx not running, then start nginx
    primed = d.prime(str(d.fullchain))
    assert primed.returncode == 0, primed.stdout + primed.stderr
    assert "the server is not running" in primed.stdout
    d.nginx.start()
    assert d.says(staple_from(d.nginx.port, HOST) or b"") == "good"
    keeper = d.run()
    wait_for(lambda: http_get(f"{d.base}/healthz")[0] == 200)
    wait_for(lambda: certificate(d.status())["state"] == "good")
    assert d.ready() == 200
    assert [d.local_answer(), d.local_answer()] == ["good", "good"]  # the second remembered

    d.revoke()
    revoked = d.prime(str(d.fullchain))
    assert revoked.returncode == 3, revoked.stdout + revoked.stderr
    assert revoked.stdout.startswith(f"REVOKED {HOST}")
    # nginx keeps running and staples the CA's revoked answer (remove = "keep" or not)
    assert d.says(d.staple.read_bytes()) == "revoked"
    wait_for(lambda: d.says(staple_from(d.nginx.port, HOST) or b"") == "revoked")
    # the running keeper hears it within seconds, without SIGHUP
    wait_for(lambda: certificate(d.status())["state"] == "revoked", timeout=10)
    assert d.local_answer() == "revoked"  # its local responder too
    assert d.ready() == 503
    check = d.mustaple("check", f"127.0.0.1:{d.nginx.port}", "--servername", HOST)
    assert check.returncode == 2, check.stdout  # CRITICAL

    # a reload, then a restart: the same truth, never the good staple again
    keeper.send_signal(signal.SIGHUP)
    time.sleep(1.5)
    assert certificate(d.status())["state"] == "revoked"
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(20) == 0
    log = keeper.stderr.read() if keeper.stderr else ""
    assert "Traceback" not in log
    assert "restored a valid staple" not in log.split("revoked at")[-1]
    again = d.run()
    wait_for(lambda: http_get(f"{d.base}/healthz")[0] == 200)
    assert certificate(d.status())["state"] == "revoked"
    assert d.local_answer() == "revoked"  # the restarted keeper's local responder too
    time.sleep(1.5)  # a pass or two of the new keeper
    assert d.says(d.staple.read_bytes()) == "revoked"
    shown = d.mustaple("status", "--config", str(d.config), "--json")
    (row,) = json.loads(shown.stdout)
    assert row["state"] == "revoked"
    again.send_signal(signal.SIGTERM)
    assert again.wait(20) == 0
    assert "revoked" in (d.tmp / "hooks.log").read_text().split()


def test_recovery_stored_by_prime_is_taken_by_the_running_keeper(deployment: Deployment) -> None:
    d = deployment
    port = d.responder.port
    d.responder.stop()  # the CA is down from the start: the keeper fails
    keeper = d.run()
    wait_for(lambda: http_get(f"{d.base}/healthz")[0] == 200)
    wait_for(lambda: certificate(d.status())["state"] == "failing")
    d.responder = start_responder(d.pki, "issuer", port=port)
    assert d.prime(str(d.fullchain)).returncode == 0
    wait_for(lambda: certificate(d.status())["state"] == "good", timeout=10)
    wait_for((d.tmp / "hooks.log").exists)
    assert (d.tmp / "hooks.log").read_text().split() == ["recovered"]
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(20) == 0


def test_a_failed_prime_beside_a_running_keeper_says_the_same_in_status_and_on_the_page(
    deployment: Deployment,
) -> None:
    """`prime` fails (the CA is down) while the keeper holds a good staple: prime writes its
    "failing" row; the keeper's next pass takes the prime's failure in as the last refresh
    and writes its own view over the row, so `status` says what the page says: failing, the
    staple in hand still valid, and the keeper's own next try (the prime's row said "next
    refresh in seconds" for days, until the keeper wrote "good" over the prime's failure)."""
    d = deployment
    keeper = d.run_until_good()
    d.responder.stop()
    failed = d.prime(str(d.fullchain))  # the staple in hand is still valid: exit 0
    assert "failure" in failed.stderr, failed.stdout + failed.stderr

    shown = ("state", "health", "next_refresh", "last_attempt", "last_error", "failures")

    def same() -> bool:
        page = certificate(d.status())
        return [row[key] for row in d.stored_rows() for key in shown] == [
            page[key] for key in shown
        ]

    wait_for(lambda: certificate(d.status())["state"] == "failing", timeout=10)
    wait_for(same, timeout=10)
    page = certificate(d.status())
    assert (page["last_error"], page["seconds_left"] > 0) == ("connection-failed", True), page
    d.stop(keeper)


def test_another_process_holding_the_write_lock_does_not_stall_the_keeper(
    deployment: Deployment,
) -> None:
    """A process (an operator's sqlite3 shell) holds the state's write lock for 8 s right
    after a commit of its own: the keeper's next pass wants to write, and its event loop,
    which answers /healthz and the local OCSP responder, must not wait for the lock (it
    waited up to SQLite's 30 s busy timeout). The writes stay pending and land later."""
    d = deployment
    keeper = d.run_until_good()
    other = sqlite3.connect(d.tmp / "state" / "state.db", isolation_level=None, timeout=30)
    other.execute("UPDATE status SET last_message = 'edited'")  # the keeper rewrites it
    other.execute("BEGIN IMMEDIATE")
    slowest, until = 0.0, time.monotonic() + 8
    try:
        while time.monotonic() < until:
            started = time.monotonic()
            assert http_get(f"{d.base}/healthz")[0] == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.1)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert slowest < 4, slowest
    assert d.local_answer() == "good"

    # the pending writes landed
    wait_for(lambda: d.stored_rows()[0]["last_message"] != "edited", timeout=10)
    assert "database is locked" in d.stop(keeper)


def test_a_state_database_removed_under_the_keeper_is_made_again_and_a_revocation_reaches_it(
    deployment: Deployment,
) -> None:
    """The database files are deleted while `run` runs, then `prime` finds the certificate
    revoked and stores that in a new database: the keeper notices the new file, stores its
    staple again, takes the revocation in and serves it (it went on with the deleted file,
    saying good, its local responder answering good)."""
    d = deployment
    keeper = d.run_until_good()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (d.tmp / "state" / name).unlink(missing_ok=True)
    d.revoke()
    assert d.prime(str(d.fullchain)).returncode == 3
    wait_for(lambda: certificate(d.status())["state"] == "revoked", timeout=10)
    assert d.local_answer() == "revoked"
    assert [row["state"] for row in d.stored_rows()] == ["revoked"]
    assert "the state database was " in d.stop(keeper)


def test_a_state_database_damaged_under_the_keeper_is_set_aside_and_the_pages_still_answer(
    deployment: Deployment,
) -> None:
    """The database file is overwritten in place: the status page, /status and /metrics
    still answer (they were 500s with tracebacks), and at its next pass the keeper moves the
    file aside, starts a new one and stores its staple and rows there."""
    d = deployment
    keeper = d.run_until_good()
    db = d.tmp / "state" / "state.db"
    sqlite3.connect(db).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    with db.open("r+b") as damaged:  # all of it in the file, then every byte of it garbage
        damaged.write(b"not a database at all" * (db.stat().st_size // 21 + 1))
    for path in ("/", "/status", "/metrics"):
        assert http_get(d.base + path)[0] == 200, path
    wait_for(lambda: any(d.tmp.joinpath("state").glob("state.db.corrupt-*")), timeout=30)
    wait_for(lambda: [row["state"] for row in d.stored_rows()] == ["good"], timeout=30)
    assert certificate(d.status())["state"] == "good"
    log = d.stop(keeper)
    assert "damaged" in log
    assert "unexpected error" not in log


def test_a_state_database_damaged_after_the_keeper_read_it_is_still_set_aside(
    deployment: Deployment,
) -> None:
    """The same damage, once the keeper has read the database since the last checkpoint
    (the keeper's pass falls between the checkpoint and the damage, as it did now and then
    on a loaded machine): SQLite kept the pages it read, whose log index the damage does
    not change, and its look at the file was answered from them at every pass: the
    keeper went on with the damaged file for ever, and `status` read nothing from it."""
    d = deployment
    keeper = d.run_until_good()
    db = d.tmp / "state" / "state.db"
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("UPDATE status SET last_message = 'edited'")  # the keeper rewrites it
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    other.close()
    wait_for(lambda: d.stored_rows()[0]["last_message"] != "edited", timeout=30)
    # all of it in the file, the log's index left as it is (a restart of the log is a change
    # the keeper would see, and read the file again)
    sqlite3.connect(db).execute("PRAGMA wal_checkpoint(PASSIVE)").close()
    with db.open("r+b") as damaged:
        damaged.write(b"not a database at all" * (db.stat().st_size // 21 + 1))
    wait_for(lambda: any(d.tmp.joinpath("state").glob("state.db.corrupt-*")), timeout=30)
    wait_for(lambda: [row["state"] for row in d.stored_rows()] == ["good"], timeout=30)
    assert "damaged" in d.stop(keeper)


def test_a_second_run_stops_before_it_delivers_or_hooks(deployment: Deployment) -> None:
    d = deployment
    first = d.run()
    wait_for(d.staple.exists)
    before = d.staple.stat().st_mtime_ns
    hooks = d.tmp / "hooks.log"
    second = subprocess.run(
        [MUSTAPLE, "run", "--config", str(d.config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"another `mustaple run` (pid {first.pid}) keeps this state directory" in lines[0]
    assert d.staple.stat().st_mtime_ns == before
    assert not hooks.exists()
    first.send_signal(signal.SIGTERM)
    assert first.wait(20) == 0


def test_run_logs_one_line_per_event_by_default(deployment: Deployment) -> None:
    d = deployment
    keeper = d.run()
    wait_for(d.staple.exists)
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(20) == 0
    log = keeper.stderr.read() if keeper.stderr else ""
    assert f"{HOST}: good staple until" in log
    assert "started: 1 certificate from 1 file, 0 with a valid staple" in log


def two_entries(d: Deployment) -> Path:
    """The same leaf for nginx (fullchain.pem) and for another server (a combined file)."""
    combined = d.tmp / "combined" / "site.pem"
    combined.parent.mkdir()
    combined.write_bytes(d.fullchain.read_bytes())
    d.config.write_text(
        d.config.read_text().replace(
            "[sinks.nginx]",
            f'[[certificates]]\npaths = ["{combined}"]\nsinks = ["other"]\n\n'
            f'[sinks.other]\ntype = "file"\npath = "{d.tmp}/other/{{stem}}.der"\n\n'
            "[sinks.nginx]",
        )
    )
    return combined


def test_the_same_leaf_in_two_entries_is_one_certificate(deployment: Deployment) -> None:
    d = deployment
    combined = two_entries(d)
    primed = d.prime(str(d.fullchain), str(combined))
    assert primed.returncode == 0, primed.stdout + primed.stderr
    assert len(primed.stdout.splitlines()) == 2
    assert d.staple.exists()
    assert (d.tmp / "other" / "site.der").exists()
    shown = d.mustaple("status", "--config", str(d.config), "--json")
    (row,) = json.loads(shown.stdout)
    assert row["name"] == HOST
    assert row["state"] == "good"
    assert sorted(row["paths"]) == sorted([str(d.fullchain), str(combined)])
    keeper = d.run()
    wait_for(lambda: http_get(f"{d.base}/healthz")[0] == 200)
    cert = certificate(d.status())
    assert sorted(cert["paths"]) == sorted([str(d.fullchain), str(combined)])
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(20) == 0


def test_prime_all_beside_a_running_keeper_primes_every_entry(deployment: Deployment) -> None:
    d = deployment
    combined = two_entries(d)
    keeper = d.run()
    wait_for(lambda: http_get(f"{d.base}/healthz")[0] == 200)
    primed = d.mustaple("prime", "--config", str(d.config), "--all")
    assert primed.returncode == 0, primed.stdout + primed.stderr
    assert [line.split()[0] for line in primed.stdout.splitlines()] == ["OK", "OK"]  # 2 files
    assert d.says(d.staple.read_bytes()) == "good"
    assert d.says((d.tmp / "other" / "site.der").read_bytes()) == "good"
    assert sorted(certificate(d.status())["paths"]) == sorted([str(d.fullchain), str(combined)])
    d.staple.unlink()
    combined.write_text("garbled\n")  # a fault in one file stays in that file
    again = d.mustaple("prime", "--config", str(d.config), "--all")
    assert again.returncode == 2, again.stdout + again.stderr
    assert [line.split()[:2] for line in again.stdout.splitlines()] == [
        ["OK", f"{HOST}:"], ["UNUSABLE", f"{combined}:"]
    ]  # fmt: skip
    assert d.says(d.staple.read_bytes()) == "good"
    combined.unlink()  # a configured path that is not there (yet) is no file to prime
    assert d.mustaple("prime", "--config", str(d.config), "--all").returncode == 0
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(20) == 0


def test_prime_resolves_paths_and_delivers_only_to_its_entry(deployment: Deployment) -> None:
    d = deployment
    two_entries(d)
    certbot = d.tmp / "letsencrypt"
    (certbot / "live").mkdir(parents=True)
    (certbot / "live" / HOST).symlink_to(d.live)
    primed = d.prime("fullchain.pem", cwd=certbot / "live" / HOST)  # relative, through a link
    assert primed.returncode == 0, primed.stdout + primed.stderr
    assert d.staple.exists()
    assert not (d.tmp / "other").exists()  # the other entry's sink is not this file's
    assert not (d.live / "fullchain.pem.ocsp").exists()
    stray = d.tmp / "stray.pem"
    stray.write_bytes(d.fullchain.read_bytes())
    uncovered = d.prime(str(stray))
    assert uncovered.returncode == 2
    assert "no [[certificates]] entry" in uncovered.stderr
    assert "`paths`" in uncovered.stderr


def test_prime_alone_drops_the_row_of_a_certificate_its_file_no_longer_holds(
    deployment: Deployment,
) -> None:
    """Where `prime` runs from cron and no keeper ever runs: a renewed certificate (a new
    leaf in the same file) has one row in `mustaple status`, not one more per renewal; a
    file that turns unusable shows only that, with must-staple unknown, not "no"."""
    d = deployment
    assert d.prime(str(d.fullchain)).returncode == 0
    assert [row["name"] for row in status_rows(d)] == [HOST]
    d.fullchain.write_bytes(d.pki.leaf("held").read_bytes() + d.pki.ca.read_bytes())
    d.prime(str(d.fullchain))
    assert [row["name"] for row in status_rows(d)] == [d.pki.host("held")]
    d.fullchain.write_bytes(b"garbled")
    assert d.prime("--all").returncode == 2
    (row,) = status_rows(d)
    assert (row["state"], row["must_staple"]) == ("unusable", None)  # not known: not "no"


def test_status_between_an_answer_and_its_row_follows_the_answer(
    deployment: Deployment,
) -> None:
    """A process stores the CA's answer before it delivers it, and the certificate's row
    after: a `status` in between shows a revocation (it showed "good" without a staple),
    and a good answer stored after a revocation as good (it showed "revoked" beside the
    good staple's times); an unusable certificate (past its notAfter) stays unusable, as
    `/status` and the metrics say it."""
    d = deployment
    assert d.prime(str(d.fullchain)).returncode == 0
    store = SqliteStore(d.tmp / "state" / "state.db")
    try:
        (key,) = store.keys()
        staple, row = store.load(key), store.statuses()[key]
        assert staple is not None
        store.save_staple(key, replace(staple, revoked=True))  # the row still says good
        assert said(d) == ("revoked", "critical", None)
        newer = replace(staple, this_update=staple.this_update + timedelta(seconds=1))
        assert store.save_staple(key, newer)  # good again, the row still says revoked
        store.save_status(key, replace(row, state="revoked"))
        assert said(d) == ("good", "ok", iso(newer.this_update))
        store.save_staple(key, replace(staple, revoked=True))
        store.save_status(key, replace(row, state="unusable"))
        assert said(d)[0] == "unusable"
    finally:
        store.close()


def said(d: Deployment) -> tuple[str, str, str | None]:
    """The state, health and thisUpdate `mustaple status` gives the certificate."""
    (row,) = status_rows(d)
    return row["state"], row["health"], row["this_update"]


def status_rows(d: Deployment) -> list[dict[str, Any]]:
    """The rows `mustaple status` (its own process) lists from the shared state."""
    shown = d.mustaple("status", "--config", str(d.config), "--json")
    rows: list[dict[str, Any]] = json.loads(shown.stdout)
    return rows


def test_an_unusable_certificate_is_visible_everywhere(deployment: Deployment) -> None:
    d = deployment
    lonely = d.tmp / "live" / "lonely.test"
    lonely.mkdir()
    (lonely / "fullchain.pem").write_bytes(d.pki.leaf("unknown").read_bytes())  # no issuer
    keeper = d.run()
    wait_for(lambda: http_get(f"{d.base}/healthz")[0] == 200)
    wait_for(lambda: len(d.status()["certificates"]) == 2)
    rows = {tuple(c["paths"]): c for c in d.status()["certificates"]}
    bad = rows[(str(lonely / "fullchain.pem"),)]
    assert bad["state"] == "unusable"
    assert bad["name"] == d.pki.host("unknown")  # its own name, read from the file
    assert bad["last_error"] == "cert-unusable"
    assert "`issuer`" in bad["last_message"]
    assert d.ready() == 503  # a must-staple certificate that cannot be served
    metrics = http_get(f"{d.base}/metrics")[1].decode()
    serial = f"{d.pki.serial('unknown'):x}"  # read from the file: it has no issuer, but a serial
    unusable = (
        f'mustaple_status{{name="{d.pki.host("unknown")}",serial="{serial}",state="unusable"}} 1.0'
    )
    assert unusable in metrics
    assert stored_states(d) == ["good", "unusable"]
    (lonely / "fullchain.pem").unlink()  # gone while the keeper runs: its row goes
    wait_for(lambda: stored_states(d) == ["good"])
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(20) == 0
    (lonely / "fullchain.pem").write_bytes(d.pki.leaf("unknown").read_bytes())
    keeper = d.run()
    wait_for(lambda: stored_states(d) == ["good", "unusable"])
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(20) == 0
    (lonely / "fullchain.pem").unlink()  # gone while no keeper runs: its row goes at the start
    assert stored_states(d) == ["good", "unusable"]
    keeper = d.run()
    wait_for(lambda: stored_states(d) == ["good"])
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(20) == 0


def stored_states(d: Deployment) -> list[str]:
    """The states `mustaple status` (its own process) lists from the shared state."""
    return sorted(row["state"] for row in status_rows(d))


def test_sink_failures_are_shown_and_logged_with_the_name_not_every_pass(
    deployment: Deployment,
) -> None:
    d = deployment
    d.config.write_text(
        d.config.read_text()
        .replace(f'running = "test -s {d.nginx.directory}/nginx.pid"', 'reload = "exit 3"')
        .replace(f'reload = "{d.nginx.reload_command}"\n', "")
    )
    keeper = d.run()
    wait_for(lambda: http_get(f"{d.base}/healthz")[0] == 200)
    wait_for(lambda: certificate(d.status())["sinks"])
    time.sleep(8)  # several passes
    cert = certificate(d.status())
    (sink,) = cert["sinks"]
    assert sink["sink"] == "nginx"
    assert not sink["ok"]
    assert "reload failed" in sink["error"]
    assert cert["health"] != "ok"
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(20) == 0
    log = keeper.stderr.read() if keeper.stderr else ""
    lines = [line for line in log.splitlines() if "sink nginx" in line]
    assert lines
    assert all(HOST in line for line in lines)
    assert len(lines) <= 3  # once, then at doubling counts: not every 1 s pass


def test_run_starts_and_reloads_while_another_process_holds_the_write_lock(
    deployment: Deployment,
) -> None:
    """Opening the state waits for another process's lock (the schema check writes), as a
    one-shot command does: a start or a SIGHUP while an operator's shell holds it for 3 s
    goes on once it is free (with a 1 s wait for everything, both failed with 'locked')."""
    d = deployment
    assert d.prime(str(d.fullchain)).returncode == 0
    db = d.tmp / "state" / "state.db"

    def locked_for(seconds: float) -> threading.Thread:
        def hold() -> None:
            other = sqlite3.connect(db, isolation_level=None, timeout=30)
            other.execute("BEGIN IMMEDIATE")
            time.sleep(seconds)
            other.execute("ROLLBACK")
            other.close()

        thread = threading.Thread(target=hold)
        thread.start()
        time.sleep(0.3)  # the lock is held
        return thread

    holder = locked_for(3)
    keeper = d.run()
    holder.join()
    wait_for(lambda: http_get(f"{d.base}/healthz")[0] == 200)
    holder = locked_for(3)
    keeper.send_signal(signal.SIGHUP)
    holder.join()
    time.sleep(1.5)  # the reload is done
    assert keeper.poll() is None
    log = d.stop(keeper)
    assert "cannot open the state database" not in log
    assert "configuration reloaded" in log
    assert "keeping the running configuration" not in log


def test_a_prime_that_changes_nothing_still_says_the_stopped_nginx_has_not_taken_it(
    tmp_path: Path,
) -> None:
    """A CA serves one answer for a while (as real ones do): a second `prime` finds the file
    already right, so nothing is written and nothing reloaded, and nginx, still stopped, has
    loaded it no more than after the first. `status` goes on saying so; once nginx has
    started and read the file, a prime that changes nothing says no more that it waits."""
    ca = CA()
    with ResponderThread(ca, cache_for=timedelta(hours=1)) as responder:
        leaf = ca.issue(HOST, ocsp_urls=[responder.url])
        responder.add(leaf)
        files = leaf.write(tmp_path / "live" / HOST)
        staple = tmp_path / "staples" / f"{HOST}.der"
        nginx = NginxServer(
            tmp_path / "nginx", cert=files.fullchain, key=files.key, stapling_file=staple
        )
        config = write_config(tmp_path, nginx, free_port())
        try:
            notes = [_primed_note(config, files.fullchain) for _ in range(2)]
            assert all("the server is not running" in (note or "") for note in notes), notes
            written = staple.stat().st_mtime_ns
            nginx.start()
            assert staple_from(nginx.port, HOST) == staple.read_bytes()
            assert _primed_note(config, files.fullchain) is None
            assert staple.stat().st_mtime_ns == written  # the same answer: never rewritten
        finally:
            nginx.stop()


def _primed_note(config: Path, cert: Path) -> str | None:
    """A `mustaple prime` of `cert` (exit 0), then the note `mustaple status --json` shows
    on its one sink (which took the staple)."""
    run = [MUSTAPLE, "prime", "--config", str(config), str(cert)]
    primed = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert primed.returncode == 0, primed.stdout + primed.stderr
    run = [MUSTAPLE, "status", "--config", str(config), "--json"]
    shown = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    (row,) = json.loads(shown.stdout)
    (sink,) = row["sinks"]
    assert sink["ok"], sink
    note: str | None = sink["note"]
    return note
