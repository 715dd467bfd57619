"""The keeper as people run it: prime, status, check-config, and `mustaple run` as a real
process (systemd notify, SIGHUP, SIGTERM, kill -9 and restart from the state)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.x509 import ocsp
from cryptography.x509.ocsp import OCSPCertStatus

from mustaple.adapters.config import Config
from mustaple.cli import main
from mustaple.core.certs import make_target
from mustaple.core.clock import utc_now
from mustaple.core.report import ExitCode
from mustaple.core.request import encode_request, get_url, make_cert_id
from mustaple.core.verify import Staple, verify
from mustaple.keeper import daemon as daemon_module
from mustaple.keeper.daemon import check_config
from mustaple.testing import CA, Behaviour, Leaf, ResponderThread
from outside import wait_for
from ports import free_port

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))


@dataclass
class Site:
    tmp: Path
    ca: CA
    responder: ResponderThread
    config: Path

    def issue(self, name: str, **kwargs: object) -> Leaf:
        kwargs.setdefault("ocsp_urls", [self.responder.url])
        leaf = self.ca.issue(name, **kwargs)  # type: ignore[arg-type]
        if kwargs["ocsp_urls"]:
            self.responder.add(leaf)
        leaf.write(self.tmp / "live" / name)
        return leaf

    def cert(self, name: str) -> str:
        return str(self.tmp / "live" / name / "fullchain.pem")

    def staple(self, name: str) -> Path:
        return self.tmp / "staples" / f"{name}.der"


def write_config(tmp: Path, extra: str = "") -> Path:
    path = tmp / "mustaple.toml"
    path.write_text(f"""
state_dir = "{tmp}/state"

[[certificates]]
paths = ["{tmp}/live/*/fullchain.pem"]

[sinks.files]
type = "file"
path = "{tmp}/staples/{{name}}.der"
reload = "echo reloaded >> {tmp}/reloads.log"

[policy]
timeout = "1s"
attempts = 1
watch_interval = "1s"
{extra}
""")
    return path


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    ca = CA()
    with ResponderThread(ca) as responder:
        yield Site(tmp_path, ca, responder, write_config(tmp_path))


def check_staple(site: Site, leaf: Leaf, name: str) -> Staple:
    target = make_target(leaf.cert, leaf.issuer)
    result = verify(site.staple(name).read_bytes(), target, utc_now())
    assert isinstance(result, Staple), result
    return result


def test_check_config(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--check-config", "--config", str(site.config)]) == 0
    assert "OK (1 certificate entry, 1 sink)" in capsys.readouterr().out
    site.config.write_text(site.config.read_text() + "bogus = 1\n")
    assert main(["run", "--check-config", "--config", str(site.config)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"{site.config}: policy.bogus: unknown key" in err
    assert err.count("\n") == 1


def test_prime_delivers_and_gates(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    leaf = site.issue("a.test")
    assert main(["prime", "--config", str(site.config), site.cert("a.test")]) == 0
    assert capsys.readouterr().out.startswith("OK a.test: good staple until ")
    assert check_staple(site, leaf, "a.test").good
    assert (site.tmp / "reloads.log").read_text() == "reloaded\n"
    site.responder.set_behaviour(Behaviour.REVOKED)
    assert main(["prime", "--config", str(site.config), site.cert("a.test")]) == ExitCode.REVOKED
    # the server keeps running and its clients learn the truth: the CA's revoked answer
    assert check_staple(site, leaf, "a.test").status is OCSPCertStatus.REVOKED
    assert "every server gets the CA's revoked answer" in capsys.readouterr().out


def test_prime_asks_nothing_for_a_certificate_past_its_own_expiry(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """An expired certificate is `cert-expired` at once: the responder is asked nothing (it
    was asked, and a CA that no longer answered for it left a 'failure ... next try at' line
    of a retry no prime makes), as the state table of observability.md says."""
    now = utc_now()
    site.issue("old.test", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1))
    asked = len(site.responder.requests)
    code = main(["prime", "--config", str(site.config), site.cert("old.test")])
    out, err = capsys.readouterr()
    assert code == ExitCode.NO_STAPLE, out + err
    assert out.startswith("FAILED old.test: the certificate expired at ")
    assert len(site.responder.requests) == asked
    assert "failure" not in err
    assert not site.staple("old.test").exists()


def test_prime_of_a_revocation_a_server_did_not_take_says_so(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """A revocation whose answer a sink could not deliver (a full disk, a failed reload) is
    not "every server gets the CA's revoked answer": that server may still staple the good
    one, the case where delivery matters most."""
    site.issue("a.test")
    assert main(["prime", "--config", str(site.config), site.cert("a.test")]) == 0
    reload = f"echo reloaded >> {site.tmp}/reloads.log"
    site.config.write_text(site.config.read_text().replace(reload, "exit 1"))
    site.responder.set_behaviour(Behaviour.REVOKED)
    capsys.readouterr()
    assert main(["prime", "--config", str(site.config), site.cert("a.test")]) == ExitCode.REVOKED
    out = capsys.readouterr().out
    assert out.startswith(
        "REVOKED a.test: the certificate is revoked, and the CA's revoked answer did not reach "
        "every server (files: reload failed: `exit 1` exited with status 1): one may still "
        "staple the good one"
    )


def test_prime_fails_without_a_staple(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.issue("down.test")
    site.issue("plain.test", must_staple=False)
    site.responder.set_behaviour(Behaviour.TRY_LATER)
    argv = ["prime", "--config", str(site.config), site.cert("down.test")]
    assert main(argv) == ExitCode.NO_STAPLE
    out = capsys.readouterr().out
    assert out.startswith("FAILED down.test: no valid staple: the responder asks us to try later")
    argv = ["prime", "--config", str(site.config), site.cert("plain.test")]
    assert main(argv) == ExitCode.GOOD  # not must-staple: a warning, not a failure
    assert capsys.readouterr().out.startswith("WARNING plain.test:")
    site.issue("nourl.test", ocsp_urls=[])
    assert main(["prime", "--config", str(site.config), site.cert("nourl.test")]) == 1
    assert "can never be served correctly" in capsys.readouterr().out
    assert main(["prime", "--config", str(site.config), "/nonexistent.pem"]) == ExitCode.USAGE


def test_a_deploy_hook_can_skip_a_certificate_no_entry_covers(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """certbot runs the hook for every lineage, those `init` left out too (no OCSP URL):
    `prime` of one of them is exit 2 and the hook never reloads nginx for its renewal;
    with --skip-uncovered it is said and skipped, and the covered ones are gated as ever."""
    site.issue("a.test")
    other = site.ca.issue("other.test", ocsp_urls=[])
    other.write(site.tmp / "elsewhere")
    outside = str(site.tmp / "elsewhere" / "fullchain.pem")
    argv = ["prime", "--config", str(site.config)]
    assert main([*argv, outside]) == ExitCode.USAGE
    capsys.readouterr()
    assert main([*argv, "--skip-uncovered", outside]) == 0
    out = capsys.readouterr().out
    assert (
        out
        == f"SKIPPED {outside}: no [[certificates]] entry of {site.config} covers it: not gated\n"
    )
    assert main([*argv, "--skip-uncovered", outside, site.cert("a.test"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["state"], line["ok"]) for line in lines] == [("skipped", True), ("good", True)]
    site.issue("b.test")
    site.responder.set_behaviour(Behaviour.TRY_LATER)
    assert main([*argv, "--skip-uncovered", outside, site.cert("b.test")]) == ExitCode.NO_STAPLE


def test_prime_all_primes_every_configured_file_in_one_batch(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a.test", "b.test"):
        site.issue(name)
    assert main(["prime", "--config", str(site.config), "--all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[:2] for line in lines) == [["OK", "a.test:"], ["OK", "b.test:"]]
    assert all(site.staple(name).exists() for name in ("a.test", "b.test"))
    assert (site.tmp / "reloads.log").read_text() == "reloaded\n"  # one batch, one reload
    for argv, problem in (([site.cert("a.test"), "--all"], "not both"), ([], "or --all")):
        assert main(["prime", "--config", str(site.config), *argv]) == ExitCode.USAGE
        assert problem in capsys.readouterr().err
    shutil.rmtree(site.tmp / "live")
    assert main(["prime", "--config", str(site.config), "--all"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "nothing to prime" in err
    assert err.count("\n") == 1


def test_prime_gives_no_file_to_two_certificates_and_writes_over_no_certificate(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two sinks whose paths meet (each certificate with its own sink): the second
    certificate fails, naming the first, instead of each server stapling the other's answer;
    a sink whose path names the certificate itself leaves it as it is."""
    a = site.issue("a.test")
    site.issue("b.test")
    site.config.write_text(f"""
state_dir = "{site.tmp}/state"
[[certificates]]
paths = ["{site.cert("a.test")}"]
sinks = ["one"]
[[certificates]]
paths = ["{site.cert("b.test")}"]
sinks = ["two", "itself"]
[sinks.one]
type = "file"
path = "{site.tmp}/staple.der"
[sinks.two]
type = "file"
path = "{site.tmp}/staple.der"
[sinks.itself]
type = "file"
path = "{{dir}}/{{stem}}.pem"
""")
    certificate = Path(site.cert("b.test")).read_bytes()
    assert main(["prime", "--config", str(site.config), "--all"]) == ExitCode.NO_STAPLE
    out = capsys.readouterr().out
    assert f"staple.der holds the staple of another certificate, {site.cert('a.test')}" in out
    assert "holds something other than an OCSP response" in out
    target = make_target(a.cert, a.issuer)
    assert isinstance(verify((site.tmp / "staple.der").read_bytes(), target, utc_now()), Staple)
    assert Path(site.cert("b.test")).read_bytes() == certificate


def test_prime_all_leaves_out_an_unusable_file_and_primes_the_others(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fault in one file stays there: a garbled file gets one line and exit 2, the others
    are primed and delivered; a configured literal path that does not exist is not a file."""
    leaf = site.issue("a.test")
    broken = site.tmp / "live" / "broken.test" / "fullchain.pem"
    broken.parent.mkdir(parents=True)
    broken.write_text("garbage")
    literal = f'paths = ["{site.tmp}/live/*/fullchain.pem", "{site.tmp}/later/fullchain.pem"]'
    site.config.write_text(
        site.config.read_text().replace(f'paths = ["{site.tmp}/live/*/fullchain.pem"]', literal)
    )
    assert main(["prime", "--config", str(site.config), "--all"]) == ExitCode.USAGE
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["OK", "a.test:"], ["UNUSABLE", f"{broken}:"]]
    assert check_staple(site, leaf, "a.test").good
    assert (site.tmp / "reloads.log").read_text() == "reloaded\n"
    assert main(["prime", "--config", str(site.config), "--all", "--json"]) == ExitCode.USAGE
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(row["cert"], row["ok"]) for row in rows] == [
        (site.cert("a.test"), True), (str(broken), False)
    ]  # fmt: skip
    assert rows[1]["state"] == "unusable"
    # given by name, the same file still stops the whole prime before any fetch
    argv = ["prime", "--config", str(site.config), site.cert("a.test"), str(broken)]
    assert main(argv) == ExitCode.USAGE
    assert capsys.readouterr().out == ""


def test_a_file_name_cannot_forge_a_line_of_prime(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """A garbled file whose name holds a newline and a whole `OK` line: one UNUSABLE line,
    the newline written as an escape, as in the log."""
    site.issue("a.test")
    forged = "zz\nOK h1.test: good staple until 2099-01-01 delivered\n"
    odd = site.tmp / "live" / forged / "fullchain.pem"
    odd.parent.mkdir(parents=True)
    odd.write_text("garbage")
    assert main(["prime", "--config", str(site.config), "--all"]) == ExitCode.USAGE
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["OK", "UNUSABLE"]
    assert "zz\\nOK h1.test" in lines[1]


def mustaple(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """`mustaple ARGV...` run as a real process, its output kept as bytes."""
    return subprocess.run([MUSTAPLE, *argv], capture_output=True, timeout=60, check=False)


def test_prime_json_spells_a_file_name_that_is_not_utf8_as_status_json_does(
    site: Site,
) -> None:
    """A good certificate, a garbled file and an uncovered one, each under a name that is not
    UTF-8: `prime --json` gave Python's lone surrogates (`\\udcff`, which strict JSON readers
    refuse) where `status --json` gives `\\xff`; both now name each file alike."""
    leaf = site.issue("odd.test")
    (site.tmp / "live" / "odd.test").rename(site.tmp / "live" / os.fsdecode(b"odd-\xff"))
    garbled = site.tmp / "live" / os.fsdecode(b"bad-\xfe") / "fullchain.pem"
    garbled.parent.mkdir()
    garbled.write_bytes(b"garbled")
    config = ["--config", str(site.config)]
    primed = mustaple("prime", *config, "--all", "--json")
    assert primed.returncode == ExitCode.USAGE, primed.stderr  # the garbled file
    said = [json.loads(line) for line in primed.stdout.splitlines()]
    rows = json.loads(mustaple("status", *config, "--json").stdout)
    live = f"{site.tmp}/live"
    expected = [f"{live}/odd-\\xff/fullchain.pem", f"{live}/bad-\\xfe/fullchain.pem"]
    assert [(row["cert"], row["state"]) for row in said] == [
        (expected[0], "good"), (expected[1], "unusable")
    ]  # fmt: skip
    assert sorted(row["cert"] for row in rows) == sorted(expected)
    leaf.write(site.tmp / os.fsdecode(b"else-\xfd"))
    argv = ["prime", *config, "--skip-uncovered", f"{site.tmp}/else-\udcfd/fullchain.pem"]
    skipped = json.loads(mustaple(*argv, "--json").stdout)
    assert skipped["cert"] == f"{site.tmp}/else-\\xfd/fullchain.pem"
    line = mustaple(*argv).stdout
    assert line.startswith(f"SKIPPED {site.tmp}/else-\\xfd/fullchain.pem: ".encode())


PRIME_KEYS = {
    "name", "cert", "must_staple", "state", "ok", "effective_expiry", "reason", "message"
}  # fmt: skip


def test_every_object_of_prime_json_has_the_same_keys(site: Site) -> None:
    """A primed, an unusable and a skipped file: the objects of the last two lacked `name`,
    `must_staple`, `effective_expiry` and `reason` (a script reading `row["name"]` failed on
    them); now every object has every key, null where there is no value."""
    site.issue("a.test")
    leaf = site.issue("nourl.test", ocsp_urls=[], must_staple=False)
    broken = site.tmp / "live" / "broken.test" / "fullchain.pem"
    broken.parent.mkdir(parents=True)
    broken.write_text("garbage")
    config = ["--config", str(site.config)]
    primed = mustaple("prime", *config, "--all", "--json")
    assert primed.returncode == ExitCode.USAGE, primed.stderr
    rows = {row["cert"]: row for row in map(json.loads, primed.stdout.splitlines())}
    leaf.write(site.tmp / "elsewhere")
    outside = str(site.tmp / "elsewhere" / "fullchain.pem")
    skipped = mustaple("prime", *config, "--skip-uncovered", outside, "--json")
    rows[outside] = json.loads(skipped.stdout)
    assert [set(row) for row in rows.values()] == [PRIME_KEYS] * 4
    unusable = rows[str(broken)]
    assert (unusable["name"], unusable["must_staple"]) == ("broken.test", None)
    assert (unusable["state"], unusable["reason"]) == ("unusable", "cert-unusable")
    assert rows[site.cert("nourl.test")]["reason"] == "no-ocsp-url"
    assert rows[outside]["state"] == "skipped"
    assert rows[outside]["name"] is rows[outside]["reason"] is None


def test_status_after_prime(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.issue("a.test")
    site.issue("later.test")
    main(["prime", "--config", str(site.config), site.cert("a.test")])
    capsys.readouterr()
    assert main(["status", "--config", str(site.config), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["a.test"]["state"] == "good"
    assert rows["a.test"]["must_staple"] is True
    assert rows["a.test"]["seconds_left"] > 3 * 86400
    assert rows["later.test"]["state"] == "not yet seen by the keeper"
    assert main(["status", "--config", str(site.config)]) == 0
    table = capsys.readouterr().out
    assert "a.test" in table
    assert "good" in table


def test_status_shows_brackets_in_an_error_as_they_are(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reload's error naming `[emerg]` and a path with `[/...]` in it: the table showed an
    internal error (markup) and exit 4, or dropped the bracketed words."""
    site.issue("a.test")
    reload = f"echo reloaded >> {site.tmp}/reloads.log"
    failing = "echo 'nginx: [emerg] cannot load /etc/ssl/[/weird]/k.pem' >&2; exit 1"
    site.config.write_text(site.config.read_text().replace(reload, failing))
    main(["prime", "--config", str(site.config), site.cert("a.test")])
    capsys.readouterr()
    assert main(["status", "--config", str(site.config)]) == 0
    table = capsys.readouterr().out  # (it wraps long cells at spaces)
    assert "[emerg]" in table
    assert "/etc/ssl/[/weird]/k.pem" in table


def test_status_of_a_state_an_older_mustaple_wrote(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state of schema 1 (no `revoked`, `paths`, `sinks` columns, no signatures table), as
    before an upgrade whose daemon has not started yet: `status` upgrades it as it opens it,
    and shows the rows (read only, it said 'not yet seen by the keeper')."""
    site.issue("a.test")
    main(["prime", "--config", str(site.config), site.cert("a.test")])
    capsys.readouterr()
    db = sqlite3.connect(site.tmp / "state" / "state.db", isolation_level=None)
    for table, column in (("staples", "revoked"), ("status", "paths"), ("status", "sinks")):
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute("DROP TABLE signatures")
    db.execute("PRAGMA user_version = 1")
    db.close()
    assert main(["status", "--config", str(site.config), "--json"]) == 0
    assert [row["state"] for row in json.loads(capsys.readouterr().out)] == ["good"]


@pytest.mark.parametrize("name", ["st%41", "st#1", "st?x", "st x"])
def test_status_reads_a_state_dir_whose_name_holds_uri_characters(
    site: Site, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The read-only URI held the path unquoted: %41 named another file (status failed), and
    after # or ? the rest was no path: an empty database `st` was made beside it, found
    outdated, and the real one opened read-write."""
    site.config.write_text(
        site.config.read_text().replace(f"{site.tmp}/state", f"{site.tmp}/{name}")
    )
    site.issue("a.test")
    assert main(["prime", "--config", str(site.config), site.cert("a.test")]) == 0
    capsys.readouterr()
    assert main(["status", "--config", str(site.config), "--json"]) == 0
    assert [row["state"] for row in json.loads(capsys.readouterr().out)] == ["good"]
    assert not (site.tmp / "st").exists()


def test_a_state_database_that_is_a_fifo_is_one_line_without_waiting(site: Site) -> None:
    """A read-only connect to a FIFO blocks for ever (`status`), and SQLite says only "disk
    I/O error" to a writer (`prime`): both say what it is, in one line."""
    site.issue("a.test")
    db = site.tmp / "state" / "state.db"
    db.parent.mkdir()
    os.mkfifo(db)
    for command in ("status", "prime"):
        argv = [MUSTAPLE, command, "--config", str(site.config)] + ["--all"] * (command == "prime")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert (done.returncode, done.stdout) == (ExitCode.USAGE, ""), done.stderr
        assert done.stderr.startswith(f"mustaple: {db}: not a regular file (a directory, a FIFO")
        assert done.stderr.count("\n") == 1


def test_status_reads_without_waiting_for_a_writer_and_never_moves_the_database(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` only reads: a process holding the write lock does not make it wait (it took
    the 30 s busy timeout, then failed), and a damaged database is one line, left in place
    (it was moved aside and a new one made, under a daemon that still had the old one)."""
    site.issue("a.test")
    main(["prime", "--config", str(site.config), site.cert("a.test")])
    capsys.readouterr()
    db = site.tmp / "state" / "state.db"
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    try:
        assert main(["status", "--config", str(site.config), "--json"]) == 0
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert time.monotonic() - started < 10
    assert [row["state"] for row in json.loads(capsys.readouterr().out)] == ["good"]
    for name in ("state.db-wal", "state.db-shm"):
        (db.parent / name).unlink(missing_ok=True)
    db.write_bytes(b"not a database" * 100)
    assert main(["status", "--config", str(site.config)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err == f"mustaple: {db}: cannot read the state database (file is not a database)\n"
    assert sorted(p.name for p in db.parent.iterdir() if p.name.startswith("state.db")) == [
        "state.db"
    ]


@dataclass
class Daemon:
    process: subprocess.Popen[str]
    notify: socket.socket

    def notices(self, until: str, timeout: float = 20) -> list[str]:
        """The notices up to the first line that starts with `until`."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while not any(line.startswith(until) for line in seen):
            self.notify.settimeout(max(0.01, deadline - time.monotonic()))
            seen += self.notify.recv(4096).decode().splitlines()
        return seen


@pytest.fixture
def daemon(site: Site) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(**environment: str) -> Daemon:
        path = site.tmp / f"notify{len(started)}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        env = {**os.environ, "NOTIFY_SOCKET": str(path), **environment}
        process = subprocess.Popen(
            [MUSTAPLE, "run", "--config", str(site.config), "-v"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(Daemon(process, sock))
        return started[-1]

    yield start
    for d in started:
        if d.process.poll() is None:
            d.process.kill()
        d.process.wait(10)
        d.notify.close()


def test_run_delivers_watches_and_stops_gracefully(
    site: Site, daemon: Callable[..., Daemon]
) -> None:
    leaf = site.issue("a.test")
    d = daemon()
    assert "READY=1" in d.notices("READY=1")
    wait_for(site.staple("a.test").exists)
    assert check_staple(site, leaf, "a.test").good
    new = site.issue("b.test")  # picked up without a restart
    wait_for(site.staple("b.test").exists)
    assert check_staple(site, new, "b.test").good
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(20) == 0
    assert "STOPPING=1" in d.notices("STOPPING=1")
    assert "Traceback" not in (d.process.stderr.read() if d.process.stderr else "")


def test_ready_counts_certificates_not_files(site: Site, daemon: Callable[..., Daemon]) -> None:
    """One leaf in two files, a certificate without an OCSP URL and a garbled file: READY
    said `3 certificates, 2 with a valid staple` (the usable files, a staple counted per
    file); it is two certificates from four files, one of them unusable, one staple."""
    site.issue("a.test")
    shutil.copytree(site.tmp / "live" / "a.test", site.tmp / "live" / "a-copy.test")
    site.issue("plain.test", ocsp_urls=[], must_staple=False)
    broken = site.tmp / "live" / "broken.test" / "fullchain.pem"
    broken.parent.mkdir()
    broken.write_text("garbage")
    assert main(["prime", "--config", str(site.config), site.cert("a.test")]) == 0
    d = daemon()
    said = "STATUS=2 certificates from 4 files (1 unusable), 1 with a valid staple"
    assert said in d.notices("READY=1")


def test_sigterm_while_starting_stops_without_waiting_for_the_start(
    site: Site, daemon: Callable[..., Daemon]
) -> None:
    """The start waits on an issuer download that never answers (timeout 60 s): SIGTERM ends
    the daemon at once, cleanly, without waiting for it."""
    with socket.socket() as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen()
        hanging.settimeout(20)
        url = f"http://127.0.0.1:{hanging.getsockname()[1]}/issuer.der"
        leaf = site.ca.issue("slow.test", ocsp_urls=[site.responder.url], ca_issuer_urls=[url])
        (site.tmp / "live" / "slow.test").mkdir(parents=True)
        (site.tmp / "live" / "slow.test" / "fullchain.pem").write_bytes(leaf.cert_pem)
        site.config.write_text(site.config.read_text().replace('"1s"\nattempts', '"60s"\nattempts'))
        assert 'timeout = "60s"' in site.config.read_text()
        d = daemon()
        connection, _ = hanging.accept()  # the start now waits on the download
        with connection:
            d.process.send_signal(signal.SIGTERM)
            assert d.process.wait(20) == 0
    assert "STOPPING=1" in d.notices("STOPPING=1")
    log = d.process.stderr.read() if d.process.stderr else ""
    assert "stopped while starting" in log
    assert "Traceback" not in log


def reload_refused(d: Daemon, site: Site, text: str) -> None:
    """SIGHUP with the configuration `text`, which the daemon must refuse: a pass of the same
    keeper follows (no new start), and it still runs."""
    site.config.write_text(text)
    d.process.send_signal(signal.SIGHUP)
    seen = d.notices("STATUS=")
    seen += d.notices("STATUS=")
    assert "READY=1" not in seen
    assert d.process.poll() is None


def test_sighup_reloads_and_a_bad_config_keeps_the_running_one(
    site: Site, daemon: Callable[..., Daemon]
) -> None:
    """A configuration that cannot be used (a bad value, a moved state_dir, a port in use) is
    one line and changes nothing: the same keeper goes on, with its backoff and its streaks,
    and the endpoint keeps answering; a good one is taken."""
    site.issue("a.test")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    ours = free_port()
    good = write_config(site.tmp, f'[http]\nlisten = "127.0.0.1:{ours}"\n').read_text()
    d = daemon()
    d.notices("READY=1")
    wait_for(lambda: _get(f"http://127.0.0.1:{ours}/healthz")[0] == 200)
    unusable = [
        good.replace("attempts = 1", 'attempts = "x"'),
        good.replace(f"{site.tmp}/state", f"{site.tmp}/elsewhere"),
        good.replace(str(ours), str(busy.getsockname()[1])),
    ]
    for text in unusable:
        reload_refused(d, site, text)
        assert _get(f"http://127.0.0.1:{ours}/healthz")[0] == 200
    site.config.write_text(good)
    d.process.send_signal(signal.SIGHUP)
    assert "READY=1" in d.notices("READY=1")
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(20) == 0
    busy.close()
    log = d.process.stderr.read() if d.process.stderr else ""
    assert "policy.attempts: must be an integer, not str" in log
    assert "state_dir changed from" in log
    assert "http.listen: cannot listen on" in log
    assert log.count("keeping the running configuration") == 3
    assert "configuration reloaded" in log
    assert not (site.tmp / "elsewhere").exists()


def test_a_reload_that_failed_before_is_made_at_the_next_start(
    site: Site, daemon: Callable[..., Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    """`prime` wrote the staple but the server's reload failed: the server may still serve
    the old staple. Once the reload works again, `mustaple run` starts with the file
    unchanged, yet reloads the server once: the debt is read from the status rows, no
    process remembers it otherwise."""
    site.issue("a.test")
    ready, reloads = site.tmp / "ready", site.tmp / "reloads.log"
    reload = f"echo reloaded >> {reloads}"
    site.config.write_text(site.config.read_text().replace(reload, f"test -e {ready} && {reload}"))
    assert main(["prime", "--config", str(site.config), site.cert("a.test")]) != 0
    assert "reload failed" in capsys.readouterr().out
    staple = site.staple("a.test").read_bytes()
    ready.touch()
    d = daemon()
    d.notices("READY=1")
    assert site.staple("a.test").read_bytes() == staple  # unchanged: no write, yet reloaded
    assert reloads.read_text() == "reloaded\n"
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(20) == 0
    d = daemon()  # the debt was paid: the next start reloads nothing
    d.notices("READY=1")
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(20) == 0
    assert reloads.read_text() == "reloaded\n"


def test_sighup_with_a_config_that_broke_the_checks_keeps_the_running_one(
    site: Site, daemon: Callable[..., Daemon]
) -> None:
    """These stopped the daemon (exit 4, an internal error while checking the new file): each
    is now one line naming the key, and the same keeper goes on."""
    site.issue("a.test")
    good = site.config.read_text()
    template = f"{site.tmp}/staples/{{name}}.der"
    unusable = [
        good + '[fleet]\nredis = "redis://[::1/0"\n',
        good + f'[http]\nlisten = "127.0.0.1:{"9" * 5000}"\n',
        good.replace(template, f"{site.tmp}/staples/{{name:{{x}}}}.der"),
        good.replace(template, f"{site.tmp}/staples/{{name:{{}}}}.der"),
    ]
    d = daemon()
    d.notices("READY=1")
    for text in unusable:
        reload_refused(d, site, text)
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(20) == 0
    log = d.process.stderr.read() if d.process.stderr else ""
    assert "internal error" not in log
    assert "fleet.redis: 'redis://[::1/0' is not a valid URL" in log
    assert "http.listen: '127.0.0.1:999" in log
    assert "sinks.files.path: {name:{x}}: placeholders take no" in log
    assert "sinks.files.path: {name:{}}: placeholders take no" in log
    assert log.count("keeping the running configuration") == 4


def test_a_reload_that_fails_unexpectedly_keeps_the_running_configuration(
    site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The last resort, for a fault no configuration is known to cause (so one is put in
    check_config's place): one error line, the running configuration kept."""
    running = check_config(site.config)

    def broken(path: Path) -> Config:
        raise RuntimeError("a bug")

    monkeypatch.setattr(daemon_module, "check_config", broken)
    assert daemon_module._reloaded(site.config, running) is None
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"{site.config}: cannot use the new configuration (internal error: RuntimeError: a "
        "bug; please report it); keeping the running configuration"
    ]


def test_a_running_keeper_makes_the_reload_a_prime_beside_it_failed(
    site: Site, daemon: Callable[..., Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    """The usual deployment: the keeper under systemd, `prime` in certbot's deploy hook.
    The prime wrote the staple but its reload failed; the keeper takes the stored staple,
    finds the file already in place, and still reloads: the debt is in prime's status row,
    read before the keeper writes its own rows over it."""
    site.issue("a.test")
    fail, reloads = site.tmp / "fail", site.tmp / "reloads.log"
    reload = f"echo reloaded >> {reloads}"
    site.config.write_text(site.config.read_text().replace(reload, f"test ! -e {fail} && {reload}"))
    d = daemon()
    wait_for(reloads.exists)  # its own first delivery
    assert reloads.read_text() == "reloaded\n"
    fail.touch()
    ahead = utc_now() + timedelta(minutes=2)  # past the responder cache: a newer answer
    site.responder.responder.clock = lambda: ahead
    assert main(["prime", "--config", str(site.config), site.cert("a.test")]) != 0
    assert "reload failed" in capsys.readouterr().out
    fail.unlink()
    wait_for(lambda: reloads.read_text() == "reloaded\nreloaded\n")
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(20) == 0


def test_a_reload_may_move_the_endpoint_to_another_host_on_the_same_port(
    site: Site, daemon: Callable[..., Daemon]
) -> None:
    """127.0.0.1:P to 0.0.0.0:P: both cannot hold P at once, so the old listener frees it
    first (binding the new one first was refused, and the reload with it)."""
    site.issue("a.test")
    port = free_port()
    write_config(site.tmp, f'[http]\nlisten = "127.0.0.1:{port}"\n')
    d = daemon()
    d.notices("READY=1")
    site.config.write_text(site.config.read_text().replace("127.0.0.1:", "0.0.0.0:"))
    d.process.send_signal(signal.SIGHUP)
    assert "READY=1" in d.notices("READY=1")
    assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(20) == 0
    log = d.process.stderr.read() if d.process.stderr else ""
    assert "configuration reloaded" in log
    assert "keeping the running configuration" not in log


def test_the_watchdog_is_fed_while_a_pass_waits_on_a_hanging_ca(
    site: Site, daemon: Callable[..., Daemon]
) -> None:
    """WatchdogSec is about a stuck process, not a slow CA: while the first pass waits on
    responders that hang, WATCHDOG=1 keeps coming (every half interval); a zero interval
    asks for none."""
    for name in ("a.test", "b.test", "c.test"):
        leaf = site.issue(name)
        site.responder.set_behaviour(Behaviour.HANG, serial=leaf.cert.serial_number)
    site.config.write_text(site.config.read_text() + "per_host = 1\n")
    d = daemon(WATCHDOG_USEC="400000")
    seen = d.notices("READY=1")
    seen = d.notices("STATUS=")  # the first pass: 3 hanging fetches of 1 s, one at a time
    assert seen.count("WATCHDOG=1") >= 5
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(20) == 0
    quiet = daemon(WATCHDOG_USEC="0")
    seen = quiet.notices("READY=1")
    seen += quiet.notices("STATUS=")
    assert "WATCHDOG=1" not in seen
    quiet.process.send_signal(signal.SIGTERM)
    assert quiet.process.wait(20) == 0


def test_a_newline_in_a_path_cannot_forge_a_log_line(
    site: Site, daemon: Callable[..., Daemon]
) -> None:
    """A directory named with a newline and a forged line after it, holding a garbled file:
    its one error line shows the newline escaped; no line of the log is the forged one."""
    site.issue("a.test")
    forged = site.tmp / "live" / "x\n2026-01-01T00:00:00 INFO bank.test: recovered \x1b[2J"
    forged.mkdir()
    (forged / "fullchain.pem").write_bytes(b"garbled")
    d = daemon()
    d.notices("READY=1")
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(20) == 0
    log = d.process.stderr.read() if d.process.stderr else ""
    assert not [line for line in log.splitlines() if line.startswith("2026-01-01")]
    assert "x\\n2026-01-01T00:00:00 INFO bank.test: recovered \\x1b[2J" in log
    assert "\x1b" not in log


def test_kill_9_loses_nothing(site: Site, daemon: Callable[..., Daemon]) -> None:
    leaves = [site.issue(f"c{n}.test") for n in range(20)]
    d = daemon()
    d.notices("READY=1")
    wait_for(lambda: sum(site.staple(f"c{n}.test").exists() for n in range(20)) >= 10)
    d.process.kill()  # SIGKILL in the middle of the burst
    d.process.wait(10)
    for n in range(20):
        site.staple(f"c{n}.test").unlink(missing_ok=True)
    site.responder.set_behaviour(Behaviour.HANG)  # the CA is down: only the state can help
    served = len(site.responder.requests)
    second = daemon()
    second.notices("READY=1")
    stored = [n for n in range(20) if site.staple(f"c{n}.test").exists()]
    assert len(stored) >= 10
    for n in stored:
        staple = check_staple(site, leaves[n], f"c{n}.test")
        assert staple.status == ocsp.OCSPCertStatus.GOOD
    assert len(site.responder.requests) - served <= 20 - len(stored)


def test_run_serves_health_metrics_and_the_local_responder(
    site: Site, daemon: Callable[..., Daemon]
) -> None:
    leaf = site.issue("a.test")
    port = free_port()
    text = site.config.read_text()
    site.config.write_text(text + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    d = daemon()
    d.notices("READY=1")
    base = f"http://127.0.0.1:{port}"
    wait_for(site.staple("a.test").exists)
    wait_for(lambda: _get(f"{base}/readyz")[0] == 200)
    assert _get(f"{base}/healthz") == (200, b"ok\n")
    status, metrics = _get(f"{base}/metrics")
    assert b"mustaple_seconds_until_expiry" in metrics
    request = encode_request(make_cert_id(leaf.issuer, leaf.cert.serial_number))
    status, body = _get(get_url(f"{base}/ocsp", request))
    assert status == 200
    assert body == site.staple("a.test").read_bytes()
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(20) == 0


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_reload_keeps_the_local_responder_answering(
    site: Site, daemon: Callable[..., Daemon]
) -> None:
    leaf = site.issue("a.test")
    port = free_port()
    text = site.config.read_text()
    site.config.write_text(text + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    d = daemon()
    d.notices("READY=1")
    wait_for(site.staple("a.test").exists)
    request = encode_request(make_cert_id(leaf.issuer, leaf.cert.serial_number))
    url = get_url(f"http://127.0.0.1:{port}/ocsp", request)
    expected = site.staple("a.test").read_bytes()
    answers: list[tuple[int, bytes] | str] = []
    done = threading.Event()

    def ask_all_the_time() -> None:
        while not done.is_set():
            try:
                answers.append(_get(url))
            except OSError as exc:  # refused, reset: the endpoint went away
                answers.append(str(exc))

    asker = threading.Thread(target=ask_all_the_time)
    asker.start()
    try:
        for _ in range(3):
            asked = len(answers)
            d.process.send_signal(signal.SIGHUP)
            assert "READY=1" in d.notices("READY=1")
            wait_for(functools.partial(more_than, answers, asked + 3))  # during and after it
    finally:
        done.set()
        asker.join(10)
    assert set(answers) == {(200, expected)}
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(20) == 0


def more_than(items: Sequence[object], count: int) -> bool:
    return len(items) > count


def test_reload_moves_the_endpoint_when_http_changes(
    site: Site, daemon: Callable[..., Daemon]
) -> None:
    site.issue("a.test")
    base = site.config.read_text()
    first, second = free_port(), free_port()
    site.config.write_text(base + f'\n[http]\nlisten = "127.0.0.1:{first}"\n')
    d = daemon()
    d.notices("READY=1")
    assert _get(f"http://127.0.0.1:{first}/healthz") == (200, b"ok\n")
    site.config.write_text(base + f'\n[http]\nlisten = "127.0.0.1:{second}"\n')
    d.process.send_signal(signal.SIGHUP)
    d.notices("READY=1")
    wait_for(lambda: _answers(f"http://127.0.0.1:{second}/healthz"))
    assert not _answers(f"http://127.0.0.1:{first}/healthz")
    site.config.write_text(base)  # no [http] at all: the endpoint closes
    d.process.send_signal(signal.SIGHUP)
    d.notices("READY=1")
    wait_for(lambda: not _answers(f"http://127.0.0.1:{second}/healthz"))
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(20) == 0


def _answers(url: str) -> bool:
    try:
        return _get(url)[0] == 200
    except OSError:
        return False


def test_run_hands_the_interpreter_to_its_event_loop_promptly(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 100k certificates a helper thread lists and stats the files at each pass; with
    Python's 5 ms switch interval each answer of the local responder could wait that long
    for it (paced p99 5.4 ms): `run` hands the interpreter over within SWITCH, and leaves
    the interval as it found it."""
    site.issue("a.test")
    seen: list[float] = []

    async def one_pass(keeper: object, stop: asyncio.Event, *_: object) -> None:
        seen.append(sys.getswitchinterval())
        stop.set()

    monkeypatch.setattr(daemon_module, "_loop", one_pass)
    before = sys.getswitchinterval()
    asyncio.run(daemon_module.serve(site.config, stop=asyncio.Event()))
    assert seen == [daemon_module.SWITCH]
    assert before > daemon_module.SWITCH
    assert sys.getswitchinterval() == before
