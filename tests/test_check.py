"""`mustaple check` against servers that staple well, badly, lazily or not at all.

The test kit's `StaplingServer` staples whatever each test sets (a good staple, one past its
refresh point, expired, revoked, for another certificate, garbage, trailing bytes, nothing),
over TLS 1.2 and 1.3; `openssl s_client -status` confirms from the outside whether a staple was
sent. Real nginx and HAProxy (tests/servers.py) serving a staple file must come out OK, and
nginx's own stapling must show the lazy-stapling problem: no staple on the first connection.
The pure `judge` and the client model are checked on their own too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import http.server
import itertools
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from mustaple.adapters.fetch import fetch_staple
from mustaple.adapters.probe import ProbeResult, probe
from mustaple.check import (
    JSON_KEYS,
    Client,
    Issuer,
    Severity,
    StapleState,
    client_accepts,
    judge,
    parse_address,
    report_lines,
)
from mustaple.cli.check import check_command
from mustaple.core.certs import Target
from mustaple.core.request import make_cert_id
from mustaple.testing import (
    CA,
    Behaviour,
    Leaf,
    LeafFiles,
    ResponderThread,
    StaplingServer,
    craft_response,
    good_single,
    good_spec,
)
from servers import HAProxyServer, NginxServer

HOST = "127.0.0.1"
NAME = "www.example.test"
VERSIONS = ("1.2", "1.3")
DAY = timedelta(days=1)
VALIDITY = 4 * DAY


# --- Helpers ------------------------------------------------------------------------------------


def run_check(*args: str) -> tuple[int, str]:
    """Run `check` as the lead's CLI will: a click group with the command added."""
    group = click.Group()
    group.add_command(check_command, "check")
    result = CliRunner().invoke(group, ["check", *args], catch_exceptions=False)
    return result.exit_code, result.stdout


def check_json(*args: str) -> dict[str, Any]:
    code, out = run_check(*args, "--json")
    report: dict[str, Any] = json.loads(out)
    assert report["exit_code"] == code
    return report


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def good(ca: CA, leaf: Leaf, at: datetime) -> bytes:
    """A valid good response made at `at`, valid for four days."""
    return craft_response(good_spec(leaf, ca.issuing, at, validity=VALIDITY))


def revoked(ca: CA, leaf: Leaf, at: datetime) -> bytes:
    cert_id = make_cert_id(leaf.issuer, leaf.cert.serial_number)
    single = good_single(
        cert_id,
        at,
        validity=VALIDITY,
        status=ocsp.OCSPCertStatus.REVOKED,
        revocation_time=at - DAY,
    )
    return craft_response(good_spec(leaf, ca.issuing, at, singles=(single,)))


def staple_for(state: str, ca: CA, leaf: Leaf, other: Leaf) -> bytes | None:
    """The bytes a server staples in each named state."""
    now = utc_now()
    staples: dict[str, Callable[[], bytes | None]] = {
        "none": lambda: None,
        "good": lambda: good(ca, leaf, now),
        "past-refresh": lambda: good(ca, leaf, now - 3 * DAY),  # a quarter of the window left
        "expired": lambda: good(ca, leaf, now - 5 * DAY),
        "revoked": lambda: revoked(ca, leaf, now),
        "wrong-cert": lambda: good(ca, other, now),
        "garbage": lambda: b"this is not an OCSP response",
        "trailing": lambda: good(ca, leaf, now) + b"\x00\x00",
    }
    return staples[state]()


@pytest.fixture(scope="module")
def other(ca: CA) -> Leaf:
    return ca.issue("other.example.test")


@pytest.fixture(scope="module")
def plain(ca: CA) -> Leaf:
    return ca.issue("plain.example.test", must_staple=False)


@pytest.fixture
def server(leaf: Leaf) -> Iterator[StaplingServer]:
    with StaplingServer(leaf) as running:
        yield running


@pytest.fixture
def plain_server(plain: Leaf) -> Iterator[StaplingServer]:
    with StaplingServer(plain) as running:
        yield running


def address(port: int) -> str:
    return f"{HOST}:{port}"


# --- Every state, over TLS 1.2 and 1.3 ----------------------------------------------------------

# state -> level, reason code, what each client does (Firefox, GnuTLS, curl), must-staple leaf
MUST_STAPLE = {
    "good": (Severity.OK, None, (True, True, True)),
    "past-refresh": (Severity.WARNING, None, (True, True, True)),
    "none": (Severity.CRITICAL, None, (False, False, False)),
    "expired": (Severity.CRITICAL, "expired", (False, False, False)),
    "revoked": (Severity.CRITICAL, None, (False, False, False)),
    "wrong-cert": (Severity.CRITICAL, "cert-not-in-response", (False, False, False)),
    "garbage": (Severity.CRITICAL, "malformed", (False, False, False)),
    "trailing": (Severity.CRITICAL, "trailing-data", (False, False, None)),  # curl ignores the rest
}

# the same without must-staple: a missing staple is a warning, clients differ
NOT_MUST_STAPLE = {
    "good": (Severity.OK, None, (True, True, True)),
    "none": (Severity.WARNING, None, (True, True, False)),
    "expired": (Severity.CRITICAL, "expired", (True, False, False)),
    "revoked": (Severity.CRITICAL, None, (False, False, False)),
    "garbage": (Severity.CRITICAL, "malformed", (False, False, False)),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("state", MUST_STAPLE)
def test_must_staple_states(
    server: StaplingServer, ca: CA, leaf: Leaf, other: Leaf, state: str, version: str
) -> None:
    staple = staple_for(state, ca, leaf, other)
    server.set_staple(staple)
    level, reason, clients = MUST_STAPLE[state]
    report = check_json(address(server.port), "--servername", NAME, "--tls", version)
    assert (report["level"], report["exit_code"], report["reason"]) == (level.name, level, reason)
    assert report["stapled"] is (staple is not None)
    assert report["must_staple"] is True
    assert tuple(report["clients"].values()) == clients
    assert report["connections"][0]["tls_version"] == version
    code, out = run_check(address(server.port), "--tls", version)
    assert code == level
    assert out.startswith(f"{level.name} {NAME}: ")


@pytest.mark.parametrize("state", NOT_MUST_STAPLE)
def test_states_without_must_staple(
    plain_server: StaplingServer, ca: CA, plain: Leaf, other: Leaf, state: str
) -> None:
    plain_server.set_staple(staple_for(state, ca, plain, other))
    level, reason, clients = NOT_MUST_STAPLE[state]
    report = check_json(address(plain_server.port))
    assert (report["level"], report["reason"]) == (level.name, reason)
    assert report["must_staple"] is False
    assert tuple(report["clients"].values()) == clients


def test_text_output_of_a_good_staple(server: StaplingServer, ca: CA, leaf: Leaf) -> None:
    server.set_staple(good(ca, leaf, utc_now()))
    code, out = run_check(address(server.port), "--tls", "1.3")
    lines = out.splitlines()
    assert code == Severity.OK
    assert lines[0].startswith(f"OK {NAME}: safe for must-staple: a valid good staple, 3d 23h")
    labels = [line.split(":")[0] for line in lines[1:]]
    assert labels == ["certificate", "must-staple", "staple", "time left", "clients", "connections"]
    assert len({line.index(line.split(":", 1)[1].strip()) for line in lines[1:]}) == 1  # aligned
    assert "must-staple:  yes" in lines
    assert "staple:       sent, valid, good" in lines
    assert "Firefox accepts, GnuTLS accepts, curl --cert-status accepts" in out
    assert f"1 to {HOST}:{server.port} over TLS 1.3, stapled" in out


def test_revoked_and_past_refresh_are_explained(server: StaplingServer, ca: CA, leaf: Leaf) -> None:
    server.set_staple(revoked(ca, leaf, utc_now()))
    report = check_json(address(server.port))
    assert (report["valid"], report["status"]) == (True, "revoked")
    assert "REVOKED" in report["verdict"]
    server.set_staple(good(ca, leaf, utc_now() - 3 * DAY))
    report = check_json(address(server.port))
    assert report["past_refresh_point"] is True
    assert report["staple"]["fraction_left"] == pytest.approx(0.25, abs=0.01)
    assert report["verdict"].startswith("safe for must-staple for now, but the staple is past")


def test_json_keys_are_stable(server: StaplingServer, ca: CA, leaf: Leaf) -> None:
    server.set_staple(good(ca, leaf, utc_now()))
    report = check_json(address(server.port))
    assert tuple(report) == JSON_KEYS
    assert set(report["clients"]) == {"firefox", "gnutls", "curl"}
    assert report["issuer_source"] == "chain"
    assert report["staple"]["seconds_left"] > 3 * 86400


# --- Several connections ------------------------------------------------------------------------


def test_every_connection_stapled_the_same(server: StaplingServer, ca: CA, leaf: Leaf) -> None:
    server.set_staple(good(ca, leaf, utc_now()))
    report = check_json(address(server.port), "--connections", "3")
    assert report["level"] == "OK"
    assert [c["stapled"] for c in report["connections"]] == [True, True, True]
    assert report["same_staple"] is True
    assert server.status_requests == 3
    _, out = run_check(address(server.port), "--connections", "3")
    assert ": 3 of 3 stapled, the same staple each time" in out
    assert "3 sequential" in out


@contextlib.contextmanager
def balancer(backends: list[int | None]) -> Iterator[int]:
    """A TCP proxy sending connection N to backends[N % len] (None: closed at once), as a
    load balancer in front of several servers; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        for number in itertools.count():
            with contextlib.suppress(OSError):
                client, _ = listener.accept()
                backend = backends[number % len(backends)]
                if backend is None:
                    client.close()
                    continue
                upstream = socket.create_connection(("127.0.0.1", backend))
                for ends in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pipe, args=ends, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    with listener:
        yield listener.getsockname()[1]


def test_connections_that_serve_different_certificates_are_not_judged_as_one(
    server: StaplingServer, ca: CA, leaf: Leaf, other: Leaf
) -> None:
    """Two backends behind one address, each with its own certificate and a good staple of
    its own: judging both against the first one's certificate said CRITICAL (or, the other
    way round, OK for a must-staple certificate with no staple); UNKNOWN says why."""
    server.set_staple(good(ca, leaf, utc_now()))
    with StaplingServer(other) as second:
        second.set_staple(good(ca, other, utc_now()))
        with balancer([server.port, second.port]) as port:
            code, out = run_check(address(port), "--connections", "2")
    assert code == Severity.UNKNOWN
    assert "the connections served different certificates" in out


def test_a_later_connection_that_fails_never_hides_a_critical_one(
    server: StaplingServer, ca: CA, leaf: Leaf
) -> None:
    """The worst decides, CRITICAL before UNKNOWN before OK: an expired staple on connection
    1 stays CRITICAL when connection 2 is dropped; a good one becomes UNKNOWN, naming it."""
    server.set_staple(good(ca, leaf, utc_now() - timedelta(days=8)))
    with balancer([server.port, None]) as port:
        code, out = run_check(address(port), "--connections", "2")
    assert code == Severity.CRITICAL
    server.set_staple(good(ca, leaf, utc_now()))
    with balancer([server.port, None]) as port:
        code, out = run_check(address(port), "--connections", "2")
    assert code == Severity.UNKNOWN
    assert out.startswith("UNKNOWN connection 2 of 2: ")


def lazy_results(server: StaplingServer, staple: bytes, connections: int) -> list[ProbeResult]:
    """Probe `connections` times; the server staples only from the second connection on."""
    server.set_staple(None)
    results = [probe(HOST, server.port)]
    server.set_staple(staple)
    results += [probe(HOST, server.port) for _ in range(connections - 1)]
    return results


def test_staple_only_after_the_first_connection(server: StaplingServer, ca: CA, leaf: Leaf) -> None:
    results = lazy_results(server, good(ca, leaf, utc_now()), 3)
    report = judge(results, Issuer(leaf.issuer, "chain"), utc_now(), server="lazy:443")
    assert report.level is Severity.CRITICAL
    assert [c.staple is not None for c in report.connections] == [False, True, True]
    assert report.verdict.endswith("so clients refuse it (connection 1 of 3)")
    assert report.clients() == dict.fromkeys(Client, False)
    assert report.same_staple is True
    lines = report_lines(report)
    assert "staple:       sent (first on connection 2), valid, good" in lines
    assert "2 of 3 stapled (none on the first: lazy stapling)" in lines[-1]


def test_some_connections_stapled_without_must_staple(
    plain_server: StaplingServer, ca: CA, plain: Leaf
) -> None:
    results = lazy_results(plain_server, good(ca, plain, utc_now()), 2)
    report = judge(results, Issuer(plain.issuer, "chain"), utc_now(), server="lazy:443")
    assert report.level is Severity.WARNING
    assert report.verdict.startswith("not safe for must-staple: no staple; fine for")


def test_different_staples_on_different_connections(
    server: StaplingServer, ca: CA, leaf: Leaf
) -> None:
    now = utc_now()
    server.set_staple(good(ca, leaf, now))
    first = probe(HOST, server.port)
    server.set_staple(good(ca, leaf, now - timedelta(hours=1)))
    report = judge([first, probe(HOST, server.port)], Issuer(leaf.issuer, "chain"), now, server="s")
    assert (report.level, report.same_staple) == (Severity.OK, False)
    assert report_lines(report)[-1].endswith(", different staples")


# --- The issuer ---------------------------------------------------------------------------------


@pytest.fixture
def bare(ca: CA) -> Leaf:
    """A leaf served without its chain, with no caIssuers URL."""
    return dataclasses.replace(ca.issue(NAME), chain=())


def test_no_issuer_is_unknown(bare: Leaf, ca: CA) -> None:
    with StaplingServer(bare, staple=good(ca, bare, utc_now())) as alone:
        code, out = run_check(address(alone.port))
    assert code == Severity.UNKNOWN
    assert out.startswith(f"UNKNOWN {NAME}: cannot tell: a staple was sent but cannot be")
    assert "names no caIssuers URL; pass it with --issuer FILE" in out
    assert "cannot tell" in out.splitlines()[5]  # clients


def test_no_staple_needs_no_issuer(bare: Leaf) -> None:
    with StaplingServer(bare) as alone:
        assert run_check(address(alone.port))[0] == Severity.CRITICAL


def test_issuer_from_a_file(bare: Leaf, ca: CA, other: Leaf, tmp_path: Path) -> None:
    files = bare.write(tmp_path)
    wrong = other.write(tmp_path / "other").cert  # a leaf: it signed nothing
    with StaplingServer(bare, staple=good(ca, bare, utc_now())) as alone:
        report = check_json(address(alone.port), "--issuer", str(files.issuer))
        assert (report["level"], report["issuer_source"]) == ("OK", "file")
        report = check_json(address(alone.port), "--issuer", str(wrong))
        assert report["level"] == "UNKNOWN"
        assert f"{wrong} did not sign {NAME}" in report["verdict"]
        code, out = run_check(address(alone.port), "--issuer", str(tmp_path / "missing.pem"))
    assert (code, out) == (
        Severity.UNKNOWN,
        f"UNKNOWN {tmp_path / 'missing.pem'}: issuer certificate not found\n",
    )


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""


@contextlib.contextmanager
def file_server(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on loopback; yields the base URL."""
    handler = functools.partial(_Quiet, directory=str(directory))
    with http.server.ThreadingHTTPServer((HOST, 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield f"http://{HOST}:{httpd.server_address[1]}/"
        finally:
            httpd.shutdown()
            thread.join()


def test_issuer_from_aia(ca: CA, tmp_path: Path) -> None:
    (tmp_path / "issuer.der").write_bytes(ca.cert.public_bytes(serialization.Encoding.DER))
    with file_server(tmp_path) as base:
        leaf = ca.issue(NAME, ca_issuer_urls=[base + "issuer.der"])
        bare = dataclasses.replace(leaf, chain=())
        with StaplingServer(bare, staple=good(ca, bare, utc_now())) as alone:
            report = check_json(address(alone.port))
    assert (report["level"], report["issuer_source"]) == ("OK", "aia")


# --- Chain verification -------------------------------------------------------------------------


def test_cafile(server: StaplingServer, ca: CA, leaf: Leaf, tmp_path: Path) -> None:
    server.set_staple(good(ca, leaf, utc_now()))
    files = leaf.write(tmp_path)
    assert check_json(address(server.port), "--cafile", str(files.root))["level"] == "OK"
    stranger = CA(name="another root").issue("x.test").write(tmp_path / "stranger")
    report = check_json(address(server.port), "--cafile", str(stranger.root))
    assert report["level"] == "CRITICAL"
    assert report["verdict"].endswith("the chain does not verify against the CA file")
    assert report["clients"] == {"firefox": False, "gnutls": False, "curl": False}


# --- Cannot check: UNKNOWN, exit 3 --------------------------------------------------------------


def closed_port() -> int:
    """A port nothing listens on (bound, never listened)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def test_cannot_connect() -> None:
    port = closed_port()
    code, out = run_check(address(port))
    assert (code, out) == (Severity.UNKNOWN, f"UNKNOWN {HOST}:{port}: connection refused\n")
    report = check_json(address(port))
    assert tuple(report) == JSON_KEYS
    assert (report["level"], report["name"]) == ("UNKNOWN", None)


def test_handshake_failure(responder: ResponderThread) -> None:
    http_port = responder.url.rsplit(":", 1)[1].strip("/")  # plain HTTP, not TLS
    code, out = run_check(f"{HOST}:{http_port}")
    assert code == Severity.UNKNOWN
    assert out.startswith(f"UNKNOWN {HOST}:{http_port}: TLS handshake failed (")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["127.0.0.1:0"],
        ["127.0.0.1:x"],
        ["[::1"],
        ["127.0.0.1", "--connections", "0"],
        ["127.0.0.1", "--timeout", "0"],
        ["127.0.0.1", "--timeout", "nan"],
        ["127.0.0.1", "--tls", "1.1"],
        ["127.0.0.1", "--url", "http://127.0.0.1/"],
        ["127.0.0.1", "--cert", "cert.pem"],
        ["--cert", "cert.pem", "--connections", "2"],
        ["--no-such-option"],
        ["a..b"],  # host names the resolver cannot encode: empty label, label over 63
        ["x" * 64 + ".test"],
        ["127.0.0.1", "--servername", "a..b"],
        ["127.0.0.1", "--servername", "straße.example"],  # IDNA 2003 would send strasse
    ],
)
def test_usage_errors_are_unknown(args: list[str]) -> None:
    code, out = run_check(*args)
    assert code == Severity.UNKNOWN
    assert out.startswith("UNKNOWN usage error: ")
    assert len(out.splitlines()) == 1


def test_timeout_bounds_the_connection_and_handshake() -> None:
    """`--timeout` (a monitoring plugin's): a server that accepts and never speaks is
    UNKNOWN after it, not after the 10 s a check allowed before."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody speaks
        port = silent.getsockname()[1]
        started = time.monotonic()
        code, out = run_check(f"127.0.0.1:{port}", "--timeout", "0.5")
    assert (code, out) == (
        Severity.UNKNOWN,
        f"UNKNOWN 127.0.0.1:{port}: no TLS handshake within 0.5 s\n",
    )
    assert time.monotonic() - started < 5


def test_a_certificate_whose_extensions_cannot_be_read_is_one_line(ca: CA, leaf: Leaf) -> None:
    """A served leaf with its TLS Feature extension twice: it parses, but its extensions
    cannot be read (strict clients refuse it); UNKNOWN in one line, never an internal error."""
    stand_in = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.99")  # encoded as long as TLS Feature's
    built = (
        x509.CertificateBuilder()
        .subject_name(leaf.cert.subject)
        .issuer_name(leaf.cert.issuer)
        .public_key(leaf.key.public_key())
        .serial_number(4242)
        .not_valid_before(leaf.cert.not_valid_before_utc)
        .not_valid_after(leaf.cert.not_valid_after_utc)
        .add_extension(x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False)
        .add_extension(x509.UnrecognizedExtension(stand_in, b"\x30\x03\x02\x01\x05"), False)
        .sign(ca.issuing.key, hashes.SHA256())
    )
    der = built.public_bytes(serialization.Encoding.DER)
    stand_in_der, feature_der = "06082b06010505070163", "06082b06010505070118"
    twice = der.replace(bytes.fromhex(stand_in_der), bytes.fromhex(feature_der))
    bad = dataclasses.replace(leaf, cert=x509.load_der_x509_certificate(twice))
    with StaplingServer(bad) as served:
        code, out = run_check(address(served.port))
    assert code == Severity.UNKNOWN
    assert "the certificate's extensions cannot be read (Duplicate 1.3.6.1.5.5.7.1.24" in out
    assert len(out.splitlines()) == 1


def _aborting_server(leaf: Leaf, staple: bytes, ending: bytes) -> tuple[socket.socket, int]:
    """A raw TLS 1.2 server: ServerHello, Certificate and a good CertificateStatus, then
    `ending` (nothing, or an alert) and a close: no handshake with it can ever finish."""

    def u24(n: int) -> bytes:
        return n.to_bytes(3, "big")

    def message(kind: int, body: bytes) -> bytes:
        return bytes([kind]) + u24(len(body)) + body

    def serve(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            hello = conn.recv(16384)[5:]  # one record: the ClientHello
            session = hello[4 + 34 : 4 + 35 + hello[4 + 34]]
            extensions = b"\x00\x05\x00\x00\xff\x01\x00\x01\x00"  # status_request, reneg.
            server_hello = b"\x03\x03" + bytes(32) + session + b"\xc0\x2b\x00"
            server_hello += len(extensions).to_bytes(2, "big") + extensions
            ders = [c.public_bytes(serialization.Encoding.DER) for c in (leaf.cert, *leaf.chain)]
            chain = b"".join(u24(len(der)) + der for der in ders)
            status = b"\x01" + u24(len(staple)) + staple
            flight = message(2, server_hello) + message(11, u24(len(chain)) + chain)
            flight += message(22, status)
            conn.sendall(b"\x16\x03\x03" + len(flight).to_bytes(2, "big") + flight + ending)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    return listener, listener.getsockname()[1]


@pytest.mark.parametrize("ending", [b"", b"\x15\x03\x03\x00\x02\x02\x28"])  # close, alert
def test_a_handshake_that_cannot_finish_is_never_ok(ca: CA, leaf: Leaf, ending: bytes) -> None:
    """A valid good staple, then the server closes or sends a fatal alert: every client
    fails this handshake, so the check is UNKNOWN with the reason, not OK on the staple."""
    listener, port = _aborting_server(leaf, good(ca, leaf, utc_now()), ending)
    with listener:
        code, out = run_check(address(port), "--tls", "1.2")
    assert code == Severity.UNKNOWN
    assert "TLS handshake failed (" in out
    assert len(out.splitlines()) == 1


def test_exit_code_through_a_non_standalone_group(server: StaplingServer) -> None:
    """The lead's `main` runs the group with standalone_mode=False: same codes."""
    group = click.Group()
    group.add_command(check_command, "check")
    assert group.main(["check", address(server.port)], standalone_mode=False) == Severity.CRITICAL
    assert group.main(["check", "--bad"], standalone_mode=False) == Severity.UNKNOWN
    assert group.main(["check", "--help"], standalone_mode=False) == 0


def test_parse_address() -> None:
    assert parse_address("example.org") == ("example.org", 443)
    assert parse_address("example.org:8443") == ("example.org", 8443)
    assert parse_address("[::1]:8443") == ("::1", 8443)
    assert parse_address("[::1]") == ("::1", 443)
    assert parse_address("::1") == ("::1", 443)
    for bad in ("", ":443", "example.org:", "example.org:70000", "[::1]x"):
        with pytest.raises(ValueError, match="HOST"):
            parse_address(bad)


# --- The client model ---------------------------------------------------------------------------


def test_client_model() -> None:
    states = list(StapleState)
    accepted = {
        (client, must): [s.value for s in states if client_accepts(client, must, s)]
        for client in Client
        for must in (True, False)
    }
    assert accepted == {
        (Client.FIREFOX, True): ["good"],
        (Client.FIREFOX, False): ["none", "good", "expired"],
        (Client.GNUTLS, True): ["good"],
        (Client.GNUTLS, False): ["none", "good"],
        (Client.CURL, True): ["good"],
        (Client.CURL, False): ["good"],
    }
    for client in Client:
        assert client_accepts(client, True, StapleState.UNVALIDATED) is None


def test_judge_is_pure_and_strict_about_time(server: StaplingServer, ca: CA, leaf: Leaf) -> None:
    server.set_staple(good(ca, leaf, utc_now()))
    result = probe(HOST, server.port)
    issuer = Issuer(leaf.issuer, "chain")
    later = utc_now() + 3 * DAY  # the same handshake judged three days on
    assert judge([result], issuer, later, server="s").level is Severity.WARNING
    assert judge([result], issuer, later + 2 * DAY, server="s").level is Severity.CRITICAL
    with pytest.raises(ValueError, match="aware"):
        judge([result], issuer, datetime(2030, 1, 1), server="s")
    with pytest.raises(ValueError, match="at least one"):
        judge([], issuer, later, server="s")


# --- No server: ask the responder (--cert) ------------------------------------------------------


@pytest.fixture(scope="module")
def responder(ca: CA) -> Iterator[ResponderThread]:
    with ResponderThread(ca) as running:
        yield running


def responder_leaf(
    ca: CA, responder: ResponderThread, tmp_path: Path, behaviour: Behaviour, *, must: bool = True
) -> LeafFiles:
    leaf = ca.issue("responder.example.test", ocsp_urls=[responder.url], must_staple=must)
    responder.add(leaf)
    responder.set_behaviour(behaviour, serial=leaf.cert.serial_number)
    return leaf.write(tmp_path)


def test_cert_mode_good(ca: CA, responder: ResponderThread, tmp_path: Path) -> None:
    files = responder_leaf(ca, responder, tmp_path, Behaviour.GOOD)
    report = check_json("--cert", str(files.fullchain))
    assert (report["level"], report["stapled"], report["status"]) == ("OK", True, "good")
    assert report["responder_url"] == responder.url
    assert (report["server"], report["clients"], report["connections"]) == (None, None, None)
    code, out = run_check("--cert", str(files.cert), "--issuer", str(files.issuer))
    assert code == Severity.OK
    assert f"valid, good, from {responder.url} (no server asked)" in out
    assert "clients:      no server: not applicable" in out


@pytest.mark.parametrize(
    ("behaviour", "must", "level", "reason"),
    [
        (Behaviour.REVOKED, True, Severity.CRITICAL, None),
        (Behaviour.UNAUTHORIZED, True, Severity.CRITICAL, "unauthorized"),
        (Behaviour.UNAUTHORIZED, False, Severity.WARNING, "unauthorized"),
        (Behaviour.WRONG_ISSUER_KEY_HASH, True, Severity.CRITICAL, "wrong-issuer"),
    ],
)
def test_cert_mode_problems(
    ca: CA,
    responder: ResponderThread,
    tmp_path: Path,
    behaviour: Behaviour,
    must: bool,
    level: Severity,
    reason: str | None,
) -> None:
    files = responder_leaf(ca, responder, tmp_path, behaviour, must=must)
    report = check_json("--cert", str(files.fullchain))
    assert (report["level"], report["reason"]) == (level.name, reason)


def test_cert_mode_unusable_input(tmp_path: Path) -> None:
    code, out = run_check("--cert", str(tmp_path / "nothing.pem"))
    assert (code, out) == (
        Severity.UNKNOWN,
        f"UNKNOWN {tmp_path / 'nothing.pem'}: certificate not found\n",
    )


# --- Cross-check with OpenSSL's client ----------------------------------------------------------


def openssl_saw_a_staple(port: int) -> bool:
    done = subprocess.run(
        ["openssl", "s_client", "-connect", address(port), "-servername", NAME, "-status"],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
    )
    if "OCSP response: no response sent" in done.stdout:
        return False
    assert (
        "OCSP Response Status: successful" in done.stdout or "response parse error" in done.stdout
    )
    return True


@pytest.mark.parametrize("state", ["none", "good", "revoked", "garbage"])
def test_openssl_agrees_on_stapled(
    server: StaplingServer, ca: CA, leaf: Leaf, other: Leaf, state: str
) -> None:
    server.set_staple(staple_for(state, ca, leaf, other))
    assert check_json(address(server.port))["stapled"] is openssl_saw_a_staple(server.port)


# --- Real servers: nginx and HAProxy ------------------------------------------------------------


@pytest.fixture(scope="module")
def site(leaf: Leaf, tmp_path_factory: pytest.TempPathFactory) -> LeafFiles:
    return leaf.write(tmp_path_factory.mktemp("site"))


def fetched_staple(ca: CA, leaf: Leaf) -> bytes:
    with ResponderThread(ca) as answering:
        answering.add(leaf)
        result = asyncio.run(fetch_staple(Target(leaf.cert, leaf.issuer), urls=[answering.url]))
    assert result.staple is not None, result.rejection
    return result.staple.der


def test_real_nginx_with_a_staple_file(ca: CA, leaf: Leaf, site: LeafFiles, tmp_path: Path) -> None:
    staple = tmp_path / "staple.der"
    staple.write_bytes(fetched_staple(ca, leaf))
    server = NginxServer(
        tmp_path / "nginx", cert=site.fullchain, key=site.key, stapling_file=staple
    )
    with server as nginx:
        report = check_json(address(nginx.port), "--servername", NAME, "--connections", "2")
    assert (report["level"], report["stapled"], report["same_staple"]) == ("OK", True, True)


def test_real_nginx_own_stapling_is_lazy(
    ca: CA, leaf: Leaf, site: LeafFiles, responder: ResponderThread, tmp_path: Path
) -> None:
    responder.add(leaf)
    responder.set_behaviour(Behaviour.GOOD, serial=leaf.cert.serial_number)
    server = NginxServer(
        tmp_path / "nginx",
        cert=site.fullchain,
        key=site.key,
        responder=responder.url,
        trusted=site.root,
    )
    with server as nginx:
        report = check_json(address(nginx.port), "--servername", NAME, "--connections", "3")
        later = poll_until_ok(address(nginx.port))
    assert report["level"] == "CRITICAL"
    assert report["connections"][0]["stapled"] is False
    assert report["verdict"].startswith("not safe for must-staple: no staple on a must-staple")
    assert later["level"] == "OK"  # once nginx has fetched it, it staples


def poll_until_ok(where: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    report = check_json(where, "--servername", NAME)
    while report["level"] != "OK" and time.monotonic() < deadline:
        time.sleep(0.05)
        report = check_json(where, "--servername", NAME)
    return report


@pytest.mark.parametrize("version", VERSIONS)
def test_real_haproxy_with_an_ocsp_file(ca: CA, leaf: Leaf, tmp_path: Path, version: str) -> None:
    pem = tmp_path / "site.pem"
    pem.write_bytes(leaf.fullchain_pem + leaf.key_pem)
    (tmp_path / "site.pem.ocsp").write_bytes(fetched_staple(ca, leaf))
    with HAProxyServer(tmp_path / "haproxy", pem=pem) as haproxy:
        report = check_json(address(haproxy.port), "--servername", NAME, "--tls", version)
    assert (report["level"], report["stapled"], report["status"]) == ("OK", True, "good")
