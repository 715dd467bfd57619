"""A test PKI made with the `openssl` command line alone, and OpenSSL's own OCSP responder.

`build_pki` writes into a directory a root CA, a delegated OCSP signer (id-kp-OCSPSigning,
CA:FALSE) and four must-staple leaves whose AIA names a given OCSP URL, and records their
status in an OpenSSL index with `openssl ca -valid` / `openssl ca -revoke`: `good`, `revoked`
(keyCompromise, with an invalidity date), `held` (certificateHold, with a hold instruction) and
`unknown` (left out of the index). `start_responder` runs `openssl ocsp` as a server on that
index; `respond` answers one request file without a server.

Nothing here uses mustaple or cryptography to make a certificate or a response, so what the
interoperability tests feed to mustaple is OpenSSL's own output.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ports import free_port

__all__ = [
    "KEY_TYPES",
    "LEAVES",
    "NEXT_UPDATE_MINUTES",
    "SIGNERS",
    "VALIDITY",
    "Pki",
    "Responder",
    "ResponderError",
    "build_pki",
    "free_port",
    "request_text",
    "respond",
    "run_openssl",
    "serve_new_pki",
    "start_responder",
]

OPENSSL = "openssl"
KEY_TYPES = ("rsa", "ec")
LEAVES = ("good", "revoked", "held", "unknown")
SIGNERS = ("issuer", "delegated")
NEXT_UPDATE_MINUTES = 60
VALIDITY = ("-nmin", str(NEXT_UPDATE_MINUTES))  # responder options: nextUpdate 60 min on
INVALIDITY_DATE = "20250101000000Z"

_KEY_OPTIONS = {
    "rsa": ("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"),
    "ec": ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"),
}
# How `openssl ca` records each leaf in the index; `unknown` is never recorded.
_INDEX_ACTIONS = {
    "good": ("-valid", "{cert}"),
    "revoked": ("-revoke", "{cert}", "-crl_compromise", INVALIDITY_DATE),
    "held": ("-revoke", "{cert}", "-crl_hold", "holdInstructionReject"),
}
_CONFIG = """\
[req]
distinguished_name = dn
[dn]

[ca]
default_ca = local
[local]
database = index.txt
unique_subject = no
default_md = sha256

[root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[responder]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = OCSPSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
_LEAF_SECTION = """
[leaf_{name}]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
tlsfeature = status_request
authorityInfoAccess = OCSP;URI:{url}
subjectAltName = DNS:{host}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
_ACCEPT = re.compile(rb"^ACCEPT \S+:(\d+)", re.MULTILINE)


class ResponderError(RuntimeError):
    """`openssl ocsp` did not come up as a server."""


@dataclass(frozen=True)
class Pki:
    """The files of one PKI, all under `directory`, and what they were made with."""

    directory: Path
    key_type: str
    ocsp_url: str
    created: datetime  # just before the first certificate, to the second

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def index(self) -> Path:
        return self.directory / "index.txt"

    def leaf(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def host(self, name: str) -> str:
        return f"{name}.{self.key_type}.interop.test"

    def serial(self, name: str) -> int:
        """Top bit set, so the DER INTEGER needs a leading zero byte."""
        return (0xA5 << 120) | (LEAVES.index(name) + 1)

    def signer_files(self, signer: str) -> tuple[Path, Path]:
        """Certificate and key for `-rsigner`/`-rkey`: issuer, delegated, or a TLS leaf."""
        files = {
            "issuer": ("ca.pem", "ca.key"),
            "delegated": ("delegate.pem", "delegate.key"),
            "tls-leaf": ("good.pem", "leaf.key"),
        }
        cert, key = files[signer]
        return self.directory / cert, self.directory / key


def run_openssl(*args: str | Path, cwd: Path) -> str:
    """Run `openssl` with `args` in `cwd`; its standard output, or RuntimeError with stderr."""
    done = subprocess.run(
        [OPENSSL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def build_pki(directory: Path, key_type: str, ocsp_url: str) -> Pki:
    """Make (or remake, keeping the keys already there) the PKI in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory, key_type, ocsp_url, datetime.now(UTC).replace(microsecond=0))
    (directory / "openssl.cnf").write_text(_config(pki))
    for name in ("ca", "delegate", "leaf"):
        _make_key(pki, f"{name}.key")
    _make_root(pki)
    _make_delegate(pki)
    for name in LEAVES:
        _make_leaf(pki, name)
    _make_index(pki)
    return pki


def _config(pki: Pki) -> str:
    leaves = (
        _LEAF_SECTION.format(name=name, url=pki.ocsp_url, host=pki.host(name)) for name in LEAVES
    )
    return _CONFIG + "".join(leaves)


def _make_key(pki: Pki, file: str) -> None:
    if not (pki.directory / file).exists():
        run_openssl("genpkey", *_KEY_OPTIONS[pki.key_type], "-out", file, cwd=pki.directory)


def _make_root(pki: Pki) -> None:
    subject = f"/O=mustaple interop/CN=OpenSSL {pki.key_type} Root"
    run_openssl(
        "req", "-x509", "-new", "-config", "openssl.cnf", "-extensions", "root",
        "-key", "ca.key", "-subj", subject, "-days", "30", "-out", "ca.pem",
        cwd=pki.directory,
    )  # fmt: skip


def _issue(pki: Pki, name: str, subject: str, section: str, serial: int, key: str) -> None:
    """Issue `name`.pem from the CA: a CSR with `openssl req`, signed by `openssl x509`."""
    run_openssl(
        "req", "-new", "-config", "openssl.cnf", "-key", key, "-subj", subject,
        "-out", f"{name}.csr",
        cwd=pki.directory,
    )  # fmt: skip
    run_openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", hex(serial), "-days", "30", "-sha256",
        "-extfile", "openssl.cnf", "-extensions", section, "-out", f"{name}.pem",
        cwd=pki.directory,
    )  # fmt: skip


def _make_delegate(pki: Pki) -> None:
    subject = f"/O=mustaple interop/CN=OpenSSL {pki.key_type} OCSP Responder"
    _issue(pki, "delegate", subject, "responder", 0x5E, "delegate.key")


def _make_leaf(pki: Pki, name: str) -> None:
    subject = f"/CN={pki.host(name)}"
    _issue(pki, name, subject, f"leaf_{name}", pki.serial(name), "leaf.key")


def _make_index(pki: Pki) -> None:
    """Record the leaves' status the way a CA does: with `openssl ca` itself."""
    pki.index.write_text("")
    for name, action in _INDEX_ACTIONS.items():
        args = [arg.format(cert=pki.leaf(name).name) for arg in action]
        run_openssl(
            "ca", "-config", "openssl.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", *args,
            cwd=pki.directory,
        )  # fmt: skip


def _responder_args(pki: Pki, signer: str, options: tuple[str, ...]) -> list[str]:
    cert, key = pki.signer_files(signer)
    return [
        "ocsp", "-index", str(pki.index), "-CA", str(pki.ca),
        "-rsigner", str(cert), "-rkey", str(key), *options,
    ]  # fmt: skip


@dataclass
class Responder:
    """A running `openssl ocsp` server."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start_responder(
    pki: Pki, signer: str, *, port: int = 0, options: tuple[str, ...] = VALIDITY
) -> Responder:
    """Run `openssl ocsp` as a server signing as `signer`; port 0 lets openssl pick one.

    OpenSSL 3.0 takes only a port number, so it listens on every interface, not just
    loopback. It prints `ACCEPT <address>:<port>` once it listens; that line is the signal
    that the port accepts connections, and tells which port it got.
    """
    log = pki.directory / f"responder-{signer}-{uuid.uuid4().hex[:8]}.log"
    args = [*_responder_args(pki, signer, options), "-port", str(port), "-timeout", "5"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [OPENSSL, *args, "-ignore_err"],
            cwd=pki.directory,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    responder = Responder(process, port, log)
    try:
        responder.port = _wait_for_accept(process, log)
    except ResponderError:
        responder.stop()
        raise
    if port and responder.port != port:
        responder.stop()
        raise ResponderError(f"asked for port {port}, openssl listens on {responder.port}")
    return responder


def _wait_for_accept(process: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _ACCEPT.search(log.read_bytes())
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            text = log.read_text(errors="replace").strip()
            raise ResponderError(f"openssl ocsp exited ({process.returncode}): {text}")
        time.sleep(0.01)
    raise ResponderError(f"openssl ocsp did not listen within {timeout:g} s")


def serve_new_pki(directory: Path, key_type: str, attempts: int = 3) -> tuple[Pki, Responder]:
    """A new PKI whose leaves' OCSP URL is an issuer-signed responder, already running.

    The port must be in the leaves before openssl listens on it, so it is picked free first;
    should another process take it in between, the leaves are issued again for another port.
    """
    error = ResponderError("no attempt made")
    for _ in range(attempts):
        port = free_port()
        pki = build_pki(directory, key_type, f"http://127.0.0.1:{port}/")
        try:
            return pki, start_responder(pki, "issuer", port=port)
        except ResponderError as exc:
            error = exc
    raise error


def _request_file(pki: Pki, request_der: bytes) -> Path:
    path = pki.directory / f"request-{uuid.uuid4().hex}.der"
    path.write_bytes(request_der)
    return path


def respond(
    pki: Pki, request_der: bytes, signer: str, options: tuple[str, ...] = VALIDITY
) -> bytes:
    """OpenSSL's answer to `request_der`, signed as `signer`, made without a server."""
    request = _request_file(pki, request_der)
    response = request.with_name(request.name.replace("request-", "response-"))
    args = _responder_args(pki, signer, options)
    run_openssl(*args, "-reqin", request, "-respout", response, cwd=pki.directory)
    return response.read_bytes()


def request_text(pki: Pki, request_der: bytes) -> str:
    """How `openssl ocsp -req_text` reads a DER request."""
    request = _request_file(pki, request_der)
    return run_openssl("ocsp", "-reqin", request, "-req_text", cwd=pki.directory)
