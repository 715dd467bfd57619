"""The TLS probe against the test kit's stapling server, OpenSSL's client, curl and nginx.

`StaplingServer` staples what each test sets (a staple fetched from the misbehaving responder,
a hand-built one, nothing, or broken bytes); `probe` must bring back exactly those bytes and
the chain as served, over TLS 1.2 and TLS 1.3. `openssl s_client` and `curl --cert-status`
check from the outside that the server really staples, and a real nginx serving a staple file
checks the probe against a server we did not write.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from OpenSSL import SSL

from mustaple.adapters.fetch import fetch_staple
from mustaple.adapters.probe import ProbeError, probe, probe_async
from mustaple.core.certs import Target
from mustaple.core.errors import InputError
from mustaple.core.reasons import Reason, Rejection
from mustaple.core.verify import Staple, verify
from mustaple.testing import (
    CA,
    Leaf,
    LeafFiles,
    ResponderThread,
    StaplingServer,
    craft_response,
    good_spec,
)
from ports import free_port

VERSIONS = ("1.2", "1.3")
HOST = "127.0.0.1"
NAME = "www.example.test"


@pytest.fixture(scope="module")
def responder(ca: CA, leaf: Leaf) -> Iterator[ResponderThread]:
    with ResponderThread(ca) as running:
        running.add(leaf)
        yield running


@pytest.fixture(scope="module")
def fetched(target: Target, responder: ResponderThread) -> bytes:
    """A staple as mustaple fetches it from the test responder."""
    result = asyncio.run(fetch_staple(target, urls=[responder.url]))
    assert result.staple is not None, result.rejection
    return result.staple.der


@pytest.fixture
def server(leaf: Leaf) -> Iterator[StaplingServer]:
    with StaplingServer(leaf) as running:
        yield running


@pytest.fixture(scope="module")
def files(leaf: Leaf, tmp_path_factory: pytest.TempPathFactory) -> LeafFiles:
    return leaf.write(tmp_path_factory.mktemp("pki"))


def crafted(ca: CA, leaf: Leaf) -> bytes:
    return craft_response(good_spec(leaf, ca.issuing, datetime.now(UTC).replace(microsecond=0)))


def one_line_error(host: str, port: int, **options: Any) -> str:
    with pytest.raises(ProbeError) as caught:
        probe(host, port, **options)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- What comes back ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_no_staple_is_none(server: StaplingServer, version: str) -> None:
    result = probe(HOST, server.port, tls_version=version)
    assert result.staple is None
    assert result.tls_version == version
    assert result.handshake_completed
    assert server.status_requests == 1


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("source", ["responder", "crafted"])
def test_staple_comes_back_byte_identical(
    server: StaplingServer,
    fetched: bytes,
    ca: CA,
    leaf: Leaf,
    target: Target,
    source: str,
    version: str,
) -> None:
    der = fetched if source == "responder" else crafted(ca, leaf)
    server.set_staple(der)
    result = probe(HOST, server.port, tls_version=version, servername=NAME)
    assert result.staple == der
    assert result.tls_version == version
    judged = verify(result.staple, target, datetime.now(UTC))
    assert isinstance(judged, Staple)
    assert judged.good


@dataclass(frozen=True)
class Broken:
    """Bytes no careful server would staple, and what the validator makes of them."""

    der: bytes
    reason: Reason


def long_form(der: bytes) -> bytes:
    """The same response with its outer length in four bytes: valid BER, but not DER."""
    content = der[2 + (der[1] & 0x7F) :]  # the outer SEQUENCE's length is in long form
    return b"\x30\x84" + len(content).to_bytes(4, "big") + content


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["garbage", "trailing", "long-form"])
def test_broken_bytes_come_back_as_sent(
    server: StaplingServer, fetched: bytes, target: Target, kind: str, version: str
) -> None:
    broken = {
        "garbage": Broken(b"\x00 not an OCSP response \xff", Reason.MALFORMED),
        "trailing": Broken(fetched + b"\x00\x00", Reason.TRAILING_DATA),
        "long-form": Broken(long_form(fetched), Reason.MALFORMED),
    }[kind]
    server.set_staple(broken.der)
    result = probe(HOST, server.port, tls_version=version)
    assert result.staple == broken.der
    assert result.chain[0] == target.leaf
    judged = verify(result.staple, target, datetime.now(UTC))
    assert isinstance(judged, Rejection)
    assert judged.reason == broken.reason


def test_a_staple_our_tls_library_refuses_is_still_returned(server: StaplingServer) -> None:
    server.set_staple(b"garbage")
    result = probe(HOST, server.port, tls_version="1.3")
    assert result.staple == b"garbage"
    # the OpenSSL in pyOpenSSL's wheels (3.6 and later) stops on a staple it cannot parse
    refuses = SSL.OPENSSL_VERSION_NUMBER >= 0x30600000
    assert result.handshake_completed is not refuses


def test_chain_comes_back_leaf_first() -> None:
    ca = CA(intermediate=True)
    leaf = ca.issue(NAME)
    with StaplingServer(leaf) as server:
        result = probe(HOST, server.port)
    assert result.chain == (leaf.cert, ca.cert)
    assert result.leaf == leaf.cert
    assert ca.cert != ca.root.cert


def test_any_version_negotiates_tls_1_3(server: StaplingServer) -> None:
    assert probe(HOST, server.port).tls_version == "1.3"


def test_server_name_is_sent_unless_the_host_is_an_address(server: StaplingServer) -> None:
    probe(HOST, server.port)
    probe("localhost", server.port)
    probe(HOST, server.port, servername=NAME)
    assert server.server_names == [None, "localhost", NAME]


def test_chain_verified_only_against_a_cafile(
    server: StaplingServer, files: LeafFiles, tmp_path: Path
) -> None:
    other = tmp_path / "other.pem"
    other.write_bytes(CA().root.cert_pem)
    assert probe(HOST, server.port).verified is None
    assert probe(HOST, server.port, cafile=str(files.root)).verified is True
    assert probe(HOST, server.port, cafile=str(other)).verified is False


def test_unreadable_cafile_is_input_error(server: StaplingServer, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a readable PEM file"):
        probe(HOST, server.port, cafile=str(tmp_path / "missing.pem"))


def test_misuse_is_value_error() -> None:
    with pytest.raises(ValueError, match="tls_version"):
        probe(HOST, 1, tls_version="1.1")
    with pytest.raises(ValueError, match="timeout"):
        probe(HOST, 1, timeout=0)


# --- Many clients -------------------------------------------------------------------------------


def test_many_sequential_and_a_few_concurrent_probes(
    server: StaplingServer, fetched: bytes
) -> None:
    server.set_staple(fetched)
    sequential = [probe(HOST, server.port, tls_version=VERSIONS[i % 2]) for i in range(20)]

    async def together() -> list[bytes | None]:
        results = await asyncio.gather(*(probe_async(HOST, server.port) for _ in range(6)))
        return [result.staple for result in results]

    assert {result.staple for result in sequential} == {fetched}
    assert asyncio.run(together()) == [fetched] * 6
    assert server.status_requests == 26


def test_staple_changes_at_run_time(server: StaplingServer, fetched: bytes) -> None:
    server.set_staple(fetched)
    assert probe(HOST, server.port).staple == fetched
    server.set_staple(None)
    assert probe(HOST, server.port).staple is None


def test_stapling_server_misuse(leaf: Leaf) -> None:
    server = StaplingServer(leaf)
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    with pytest.raises(ValueError, match="pass None"):
        server.set_staple(b"")
    with pytest.raises(TypeError, match="bytes or None"):
        server.set_staple("der")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Leaf"):
        StaplingServer(leaf.cert)  # type: ignore[arg-type]


def test_stapling_server_restarts(leaf: Leaf) -> None:
    server = StaplingServer(leaf, staple=b"0\x03\n\x01\x03")  # tryLater
    for _ in range(2):
        with server:
            assert probe(HOST, server.port).staple == b"0\x03\n\x01\x03"
    server.stop()


# --- Errors -------------------------------------------------------------------------------------


def test_connection_refused() -> None:
    with socket.socket() as bound:  # bound but not listening: connections are refused
        bound.bind((HOST, 0))
        port = bound.getsockname()[1]
        assert one_line_error(HOST, port) == f"{HOST}:{port}: connection refused"


def test_timeout_when_the_server_never_answers() -> None:
    with socket.create_server((HOST, 0)) as silent:  # the kernel accepts; nobody speaks
        port = silent.getsockname()[1]
        started = time.monotonic()
        message = one_line_error(HOST, port, timeout=0.3)
    assert message == f"{HOST}:{port}: no TLS handshake within 0.3 s"
    assert time.monotonic() - started < 3


def test_handshake_failure_with_a_plain_http_server(responder: ResponderThread) -> None:
    port = urlsplit(responder.url).port
    assert port is not None
    message = one_line_error(HOST, port)
    assert message.startswith(f"{HOST}:{port}: TLS handshake failed (")


def test_a_server_greeting_in_plain_text_is_told_to_need_starttls() -> None:
    """A mail server on port 25 probed without --starttls: OpenSSL says only "wrong version
    number"; the line says what to do."""
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()

        def greet() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(b"220 mail.example.test ESMTP\r\n")
                connection.recv(4096)

        threading.Thread(target=greet, daemon=True).start()
        message = one_line_error(HOST, listener.getsockname()[1], timeout=5)
    assert message.endswith(
        "; the server answered in plain text: one that starts TLS by STARTTLS needs "
        "--starttls smtp or --starttls nats"
    )


def test_name_that_does_not_resolve() -> None:
    message = one_line_error("mustaple.invalid", 443, timeout=5)
    assert message.startswith("mustaple.invalid:443: cannot resolve mustaple.invalid (")


# --- From the outside: OpenSSL's client, curl, nginx --------------------------------------------


def s_client(port: int, *options: str) -> str:
    command = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", NAME]
    done = subprocess.run(
        [*command, *options],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
    )
    return done.stdout


@pytest.mark.parametrize("version", VERSIONS)
def test_openssl_client_sees_the_staple(
    server: StaplingServer, fetched: bytes, version: str
) -> None:
    flag = f"-tls{version.replace('.', '_')}"
    assert "OCSP response: no response sent" in s_client(server.port, "-status", flag)
    server.set_staple(fetched)
    output = s_client(server.port, "-status", flag)
    assert "OCSP Response Status: successful (0x0)" in output
    assert "Cert Status: good" in output
    server.set_staple(b"garbage")
    assert "OCSP response: response parse error" in s_client(server.port, "-status", flag)
    assert server.status_requests == 3


def test_no_status_request_no_staple(server: StaplingServer, fetched: bytes) -> None:
    server.set_staple(fetched)
    assert "OCSP" not in s_client(server.port)
    assert server.status_requests == 0
    assert server.server_names == [NAME]


def curl(port: int, files: LeafFiles, *options: str) -> subprocess.CompletedProcess[str]:
    command = ["curl", "-sS", "--cert-status", "--cacert", str(files.root)]
    command += ["--resolve", f"{NAME}:{port}:{HOST}", *options, f"https://{NAME}:{port}/"]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("version", VERSIONS)
def test_curl_cert_status_accepts_the_staple(
    server: StaplingServer, fetched: bytes, files: LeafFiles, version: str
) -> None:
    server.set_staple(fetched)
    done = curl(server.port, files, f"--tlsv{version}", "--tls-max", version)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr
    server.set_staple(None)
    done = curl(server.port, files, f"--tlsv{version}", "--tls-max", version)
    assert done.returncode == 91, done.stderr  # CURLE_SSL_INVALIDCERTSTATUS


NGINX_CONF = """\
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {host}:{port} ssl;
        ssl_certificate {files.fullchain};
        ssl_certificate_key {files.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_stapling on;
        ssl_stapling_file {d}/staple.der;
        return 200 "ok\\n";
    }}
}}
"""


@pytest.fixture(scope="module")
def nginx(
    files: LeafFiles, fetched: bytes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """A real nginx stapling `fetched` from a file; yields its port."""
    directory = tmp_path_factory.mktemp("nginx")
    (directory / "staple.der").write_bytes(fetched)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=directory, host=HOST, port=port, files=files))
    command = ["/usr/sbin/nginx", "-p", str(directory), "-c", str(conf), "-e", "stderr"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_for_port(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {process.communicate()[1]}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("nginx did not open its port within 10 s")


@pytest.mark.parametrize("version", VERSIONS)
def test_real_nginx_staple(
    nginx: int, fetched: bytes, files: LeafFiles, leaf: Leaf, target: Target, version: str
) -> None:
    result = probe(HOST, nginx, servername=NAME, tls_version=version, cafile=str(files.root))
    assert result.staple == fetched
    assert result.chain == (leaf.cert, *leaf.chain)
    assert result.tls_version == version
    assert result.verified is True
    assert isinstance(verify(fetched, target, datetime.now(UTC)), Staple)
