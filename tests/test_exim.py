"""Exim for real: mustaple's file sink feeds `tls_ocsp_file`, clients get the staple over SMTP
STARTTLS (openssl s_client, gnutls-cli, `mustaple check --starttls smtp`), a refresh is served
on the next connection; and the STARTTLS dialogues (SMTP, NATS) cope with hostile servers."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import Clock
from mustaple.adapters.probe import ProbeError, probe
from mustaple.adapters.starttls import DEFAULT_PORTS as STARTTLS_PORTS
from mustaple.check import parse_address
from mustaple.cli import main
from mustaple.core.report import ExitCode
from mustaple.testing import CA, Behaviour, Leaf, LeafFiles, ResponderThread
from mustaple.testing.craft import craft_response, good_spec
from reach_servers import EximServer, gnutls_staple
from servers import ServerError, staple_from

NAME = "mail.example.test"
EXIM_RELOAD_WAIT = 15.0  # Exim re-reads a preloaded file about 5 s after it changes


@dataclass
class MailSite:
    tmp: Path
    clock: Clock
    responder: ResponderThread
    leaf: Leaf
    files: LeafFiles
    config: Path

    @property
    def staple(self) -> Path:
        return self.tmp / "staples" / f"{NAME}.der"

    def prime(self) -> int:
        return main(["prime", "--config", str(self.config), str(self.files.fullchain)])

    def exim(self, *, guarded: bool = True) -> EximServer:
        return EximServer(
            self.tmp / "exim",
            cert=self.files.fullchain,
            key=self.files.key,
            ocsp_file=self.staple,
            guarded=guarded,
        )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[MailSite]:
    clock = Clock()
    clock.now -= timedelta(minutes=10)
    ca = CA(now=clock.now - timedelta(days=1))
    with ResponderThread(ca, clock=clock, cache_for=timedelta(0)) as responder:
        leaf = ca.issue(NAME, ocsp_urls=[responder.url])
        responder.add(leaf)
        files = leaf.write(tmp_path / "live" / NAME)
        config = tmp_path / "mustaple.toml"
        config.write_text(
            f'state_dir = "{tmp_path}/state"\n'
            f'[[certificates]]\npaths = ["{tmp_path}/live/*/fullchain.pem"]\n'
            f'[sinks.exim]\ntype = "file"\npath = "{tmp_path}/staples/{{name}}.der"\n'
            'revoked = "remove"\n'  # Exim refuses TLS with a revoked answer in the file
            "[policy]\nattempts = 1\n"
        )
        yield MailSite(tmp_path, clock, responder, leaf, files, config)


def check(port: int, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    capsys.readouterr()
    code = main(["check", f"127.0.0.1:{port}", "--starttls", "smtp", "--json"])
    return code, json.loads(capsys.readouterr().out)


def until(condition: Callable[[], bool], timeout: float = EXIM_RELOAD_WAIT) -> bool:
    """Poll a real server until `condition` holds (Exim's own timer), at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_exim_staples_from_the_first_connection_and_serves_each_refresh(
    site: MailSite, capsys: pytest.CaptureFixture[str]
) -> None:
    assert site.prime() == ExitCode.GOOD
    first = site.staple.read_bytes()
    with site.exim() as exim:
        assert staple_from(exim.port, NAME, starttls="smtp") == first  # the very first client
        completed, seen = gnutls_staple(exim.port, site.files.root, site.tmp / "gnutls.der")
        assert completed  # GnuTLS checked the staple (--ocsp) and accepted it
        assert seen == first
        code, report = check(exim.port, capsys)
        assert (code, report["status"], report["stapled"]) == (0, "good", True)

        site.clock.now += timedelta(minutes=1)
        assert site.prime() == ExitCode.GOOD
        second = site.staple.read_bytes()
        assert second != first
        assert staple_from(exim.port, NAME, starttls="smtp") == second  # no reload needed

        site.responder.set_behaviour(Behaviour.REVOKED)
        assert site.prime() == ExitCode.REVOKED
        assert not site.staple.exists()  # revoked = "remove": the good staple is gone
        assert staple_from(exim.port, NAME, starttls="smtp") is None  # TLS goes on, no staple
        completed, _ = gnutls_staple(exim.port, site.files.root, site.tmp / "gnutls.der")
        assert not completed  # must-staple without a staple: GnuTLS refuses
        code, report = check(exim.port, capsys)
        assert code == 2
        assert "no staple on a must-staple certificate" in str(report["verdict"])


def test_a_plain_tls_ocsp_file_is_reread_by_exim_itself_and_must_never_be_missing(
    site: MailSite, capsys: pytest.CaptureFixture[str]
) -> None:
    """Why exim.md recommends the ${if exists...} form: with a plain path Exim preloads the
    file and sees a change only a few seconds later, and fails every STARTTLS when the file
    is missing or expired."""
    assert site.prime() == ExitCode.GOOD
    first = site.staple.read_bytes()
    with site.exim(guarded=False) as exim:
        assert staple_from(exim.port, NAME, starttls="smtp") == first
        site.clock.now += timedelta(minutes=1)
        assert site.prime() == ExitCode.GOOD
        second = site.staple.read_bytes()
        assert until(lambda: staple_from(exim.port, NAME, starttls="smtp") == second)
    ca = site.responder.responder.ca
    expired = craft_response(good_spec(site.leaf, ca.issuing, site.clock.now - timedelta(days=6)))
    for staple, logged in [(None, "Error while reading file"), (expired, "has expired")]:
        site.staple.unlink(missing_ok=True)
        if staple is not None:
            site.staple.write_bytes(staple)
        with site.exim(guarded=False) as exim:
            code, report = check(exim.port, capsys)
            with pytest.raises(ServerError, match="no TLS handshake"):
                staple_from(exim.port, NAME, starttls="smtp")
        assert code == 3
        assert "the server refused STARTTLS (454 TLS currently unavailable)" in str(
            report["verdict"]
        )
        assert logged in exim.error_log.read_text()


# --- The STARTTLS dialogue against scripted servers ---------------------------------------------


def scripted(lines: list[bytes]) -> Iterator[int]:
    """A one-connection SMTP server on loopback that answers each command with the next reply
    (the first one is its greeting), then keeps the connection open until the client leaves."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            for reply in lines:
                conn.sendall(reply)
                if not conn.recv(4096):
                    return
            while conn.recv(4096):
                pass

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


EHLO_OK = b"250-mail.example.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"


@pytest.mark.parametrize(
    ("protocol", "replies", "problem"),
    [
        ("nats", [b"+OK\r\n"], "not a NATS server (it said '+OK')"),
        ("nats", [b"INFO {oops\r\n"], "the NATS INFO line is not JSON"),
        ("nats", [b"INFO " + b"[" * 3000 + b"\r\n"], "the NATS INFO line is not JSON"),
        ("nats", [b'INFO {"tls_required":false}\r\n'], "the NATS server does not offer TLS"),
        ("smtp", [b"554 go away\r\n"], "the SMTP greeting is 554, not 220"),
        ("smtp", [b"220 hi\r\n", b"250-mail\r\n250 SIZE 1000\r\n"], "does not offer STARTTLS"),
        ("smtp", [b"220 hi\r\n", EHLO_OK, b"454 TLS not available\r\n"], "refused STARTTLS (454"),
        ("smtp", [b"220 hi\r\n", EHLO_OK, b"220 go\r\nINJECTED\r\n"], "data after agreeing"),
        ("smtp", [b"HTTP/1.1 200 OK\r\n"], "not an SMTP reply"),
        ("smtp", [b"220 " + b"x" * 5000], "a line of over 4096 bytes"),
        ("smtp", [b"220 hi\r\n", b"250-x\r\n" * 101], "over 100 lines"),
        ("smtp", [b"220-still greeting\r\n"], "no STARTTLS answer in time"),
    ],
)
def test_starttls_refusals_are_one_clear_line(
    protocol: str, replies: list[bytes], problem: str
) -> None:
    for port in scripted(replies):
        with pytest.raises(ProbeError, match=re.escape(problem)) as caught:
            probe("127.0.0.1", port, starttls=protocol, timeout=1.0)
        assert str(caught.value).startswith(f"127.0.0.1:{port}: ")
        assert "\n" not in str(caught.value)


def test_starttls_default_ports() -> None:
    assert STARTTLS_PORTS == {"smtp": 25, "nats": 4222}
    assert parse_address("mx.example.org", STARTTLS_PORTS["smtp"]) == ("mx.example.org", 25)
    assert parse_address("mx.example.org:587", STARTTLS_PORTS["smtp"]) == ("mx.example.org", 587)


def test_check_starttls_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "127.0.0.1:1", "--starttls", "xmpp"]) == 3
    assert "UNKNOWN usage error" in capsys.readouterr().out
    assert main(["check", "--cert", "x.pem", "--starttls", "smtp"]) == 3
    assert "--starttls: only for checking a server" in capsys.readouterr().out
