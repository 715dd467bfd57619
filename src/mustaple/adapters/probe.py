"""Probing a live TLS server: what it serves when a client asks for an OCSP staple.

An I/O adapter (pyOpenSSL, blocking). `probe` connects (for a mail server, first speaking
STARTTLS: `mustaple.adapters.starttls`), sends status_request in the ClientHello (TLS 1.2 or 1.3),
and returns the certificate chain and the stapled bytes exactly as they came over the wire.
It judges nothing: the chain is verified only when a CA file is given (and then only
reported), and the staple is handed back raw for `verify` to judge.

Why the handshake is read message by message: OpenSSL 3.6 and later (pyOpenSSL's wheels bundle
it) parse a staple and re-encode it before a client sees it, so trailing bytes vanish and a
staple that is not DER makes the handshake fail. `probe` therefore reads the server's handshake
messages as they arrive (OpenSSL's message callback) and takes the chain and the staple from
there. When OpenSSL aborts because of the staple itself (its reason names the certificate
status response, and the staple was the last message read), the result is still returned,
with `handshake_completed=False`; a server that closes or sends an alert after its staple
fails the handshake like any other.

A server that cannot be reached or that fails the handshake for any other reason raises
`ProbeError`, whose message is one line naming the server: show it and move on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL, crypto

from mustaple.adapters.starttls import PROTOCOLS, StarttlsError, negotiate
from mustaple.core.errors import InputError, MustapleError

__all__ = ["ProbeError", "ProbeResult", "probe", "probe_async"]

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_VERSION_NAMES = {"TLSv1": "1.0", "TLSv1.1": "1.1", "TLSv1.2": "1.2", "TLSv1.3": "1.3"}
_HANDSHAKE = 22  # TLS record content type
_CERTIFICATE = 11  # handshake message types
_CERTIFICATE_STATUS = 22
_STATUS_REQUEST = 5  # extension type (RFC 6066)
_STATUS_TYPE_OCSP = 1
_MSG_CALLBACK = "void(int, int, int, const void *, size_t, SSL *, void *)"
_BINDING = Binding()  # the OpenSSL that pyOpenSSL itself uses
# what OpenSSL says when the first bytes are no TLS record (by version)
_NO_TLS_RECORD = ("wrong version number", "packet length too long", "record layer failure")
_STARTTLS_HINT = (
    "; the server answered in plain text: one that starts TLS by STARTTLS needs --starttls "
    + " or --starttls ".join(PROTOCOLS)
)


class ProbeError(MustapleError):
    """The server could not be probed (DNS, refused, timeout, handshake); one-line message."""


@dataclass(frozen=True)
class ProbeResult:
    """What the server served: its chain (leaf first, as sent) and the staple, if any."""

    chain: tuple[x509.Certificate, ...]
    staple: bytes | None = field(repr=False)  # the bytes stapled; None when none was sent
    tls_version: str  # "1.2", "1.3" (or older when tls_version=None allowed it)
    verified: bool | None  # the chain verifies against `cafile`; None when none was given
    handshake_completed: bool = True  # False: our TLS library refused the staple and stopped

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def probe(
    host: str,
    port: int,
    *,
    servername: str | None = None,
    tls_version: str | None = None,
    cafile: str | None = None,
    timeout: float = 10.0,
    starttls: str | None = None,
) -> ProbeResult:
    """Handshake with `host`:`port` asking for a staple, and return what was served.

    `servername` is sent as SNI (default `host`, unless it is an IP address). `tls_version`
    is "1.2", "1.3" or None for the best both sides support. With `cafile` (PEM), `verified`
    says whether the chain verifies against it (the name is not checked). `timeout` covers
    connecting, STARTTLS (`starttls`: "smtp", or None for TLS at once) and the handshake.
    Raises ProbeError when the server cannot be probed,
    InputError for an unreadable `cafile`, ValueError for a bad `tls_version`, `timeout` or
    `servername`.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    store = _trust_store(cafile) if cafile is not None else None
    sni = _server_name(host, servername)
    transcript = _Transcript()
    context = _context(tls_version, transcript)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    deadline = time.monotonic() + timeout
    sock = _connect(host, port, timeout, where)
    if starttls is not None:
        _starttls(sock, starttls, where, deadline)
    conn = SSL.Connection(context, sock)
    try:
        conn.set_connect_state()
        conn.request_ocsp()
        if sni:
            conn.set_tlsext_host_name(sni)
        error = _handshake(conn, sock, where, timeout, deadline)
        hint = _STARTTLS_HINT if starttls is None and _plain_text(error) else ""
        return _result(conn, transcript, error, store, where, hint=hint)
    finally:
        _close(conn, sock)


async def probe_async(
    host: str,
    port: int,
    *,
    servername: str | None = None,
    tls_version: str | None = None,
    cafile: str | None = None,
    timeout: float = 10.0,
    starttls: str | None = None,
) -> ProbeResult:
    """`probe` in a worker thread, for asyncio code."""
    return await asyncio.to_thread(
        probe,
        host,
        port,
        servername=servername,
        tls_version=tls_version,
        cafile=cafile,
        timeout=timeout,
        starttls=starttls,
    )


_NO_CALLBACK = (
    "the TLS probe cannot run in this process: it may not make memory both writable and "
    "executable (systemd's MemoryDenyWriteExecute=, as in examples/mustaple.service), which "
    "pyOpenSSL's callbacks need; run `mustaple check` from a shell, not from the unit or its "
    "hooks"
)


class _Transcript:
    """The server's handshake messages as received (decrypted in TLS 1.3), in order."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []  # each with its 4-byte header: type, uint24 length
        try:
            self._callback = _BINDING.ffi.callback(_MSG_CALLBACK, self._on_message)
        except MemoryError:  # cffi makes a callback in memory both writable and executable
            raise ProbeError(_NO_CALLBACK) from None

    def install(self, context: SSL.Context) -> None:
        # pyOpenSSL has no public hook for this; its SSL_CTX pointer is `_context`.
        _BINDING.lib.SSL_CTX_set_msg_callback(context._context, self._callback)

    def _on_message(
        self, write_p: int, version: int, content_type: int, buf: Any, size: int, *_: Any
    ) -> None:
        if not write_p and content_type == _HANDSHAKE:
            self.messages.append(bytes(_BINDING.ffi.buffer(buf, size)))


def _trust_store(cafile: str) -> crypto.X509Store:
    store = crypto.X509Store()
    try:
        store.load_locations(cafile)
    except crypto.Error as exc:
        raise InputError(f"{cafile}: not a readable PEM file of CA certificates") from exc
    return store


def _context(tls_version: str | None, transcript: _Transcript) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if tls_version is not None:
        if tls_version not in _VERSIONS:
            raise ValueError(f"tls_version must be '1.2', '1.3' or None, not {tls_version!r}")
        context.set_min_proto_version(_VERSIONS[tls_version])
        context.set_max_proto_version(_VERSIONS[tls_version])
    transcript.install(context)
    return context


def _server_name(host: str, servername: str | None) -> bytes | None:
    """What to send as SNI: `servername`, else `host` unless it is an IP address (RFC 6066);
    ProbeError for a name that cannot be encoded (`server_name_problem`)."""
    if servername is None:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            servername = host
    if not servername:
        return None
    problem = server_name_problem(servername)
    if problem is not None:
        raise ProbeError(problem)
    return servername.encode("idna")


def server_name_problem(name: str) -> str | None:
    """None when `name` is an IP address or a host name that can be sent and looked up,
    else one line saying why not (not ASCII, an empty label, or one over 63 characters)."""
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        return None
    if not name.isascii():  # Python's codec is IDNA 2003: straße would become strasse
        return (
            f"{name[:80]!r} is not ASCII; give the name in its ASCII form (xn--...), as "
            "clients send it"
        )
    try:
        name.encode("idna")
    except UnicodeError as exc:
        return f"{name[:80]!r} is not a valid host name ({exc})"
    return None


def _connect(host: str, port: int, timeout: float, where: str) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise ProbeError(f"{where}: cannot resolve {host} ({exc.strerror})") from exc
    except ConnectionRefusedError as exc:
        raise ProbeError(f"{where}: connection refused") from exc
    except TimeoutError as exc:
        raise ProbeError(f"{where}: no connection within {timeout:g} s") from exc
    except OSError as exc:
        raise ProbeError(f"{where}: cannot connect ({exc.strerror or exc})") from exc
    sock.setblocking(False)
    return sock


def _starttls(sock: socket.socket, protocol: str, where: str, deadline: float) -> None:
    try:
        negotiate(sock, protocol, where=where, deadline=deadline)
    except StarttlsError as exc:
        sock.close()
        raise ProbeError(str(exc)) from exc


def _handshake(
    conn: SSL.Connection, sock: socket.socket, where: str, timeout: float, deadline: float
) -> SSL.Error | None:
    """Drive the non-blocking handshake; OpenSSL's error when it fails, None when it is done."""
    while True:
        try:
            conn.do_handshake()
            return None
        except SSL.WantReadError:
            ready = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]
        except SSL.WantWriteError:
            ready = select.select([], [sock], [], max(0.0, deadline - time.monotonic()))[1]
        except SSL.Error as exc:
            return exc
        if not ready:
            raise ProbeError(f"{where}: no TLS handshake within {timeout:g} s")


def _result(
    conn: SSL.Connection,
    transcript: _Transcript,
    error: SSL.Error | None,
    store: crypto.X509Store | None,
    where: str,
    *,
    hint: str = "",
) -> ProbeResult:
    chain, staple = _served(conn, transcript, error, where, hint)
    version = conn.get_protocol_version_name()
    return ProbeResult(
        chain=chain,
        staple=staple,
        tls_version=_VERSION_NAMES.get(version, version),
        verified=_verifies(chain, store) if store is not None else None,
        handshake_completed=error is None,
    )


def _served(
    conn: SSL.Connection,
    transcript: _Transcript,
    error: SSL.Error | None,
    where: str,
    hint: str,
) -> tuple[tuple[x509.Certificate, ...], bytes | None]:
    """The chain and staple, unless the handshake failed for a reason other than the staple
    (said with `hint` after OpenSSL's reason)."""
    failed = f"{where}: TLS handshake failed ({_ssl_reason(error)}){hint}" if error else None
    tls13 = conn.get_protocol_version() == SSL.TLS1_3_VERSION
    try:
        served = _read_transcript(transcript.messages, tls13=tls13)
        chain = tuple(x509.load_der_x509_certificate(der) for der in served.chain)
    except ValueError as exc:
        raise ProbeError(failed or f"{where}: cannot read what the server sent ({exc})") from exc
    if failed and not (served.staple_refused and _about_the_staple(error)):
        raise ProbeError(failed) from error
    if not chain:
        raise ProbeError(f"{where}: the server sent no certificate")
    return chain, served.staple


def _about_the_staple(error: SSL.Error | None) -> bool:
    """Whether OpenSSL stopped because of the staple itself ("bad certificate status
    response"), not because the server closed the connection or sent an alert after it: a
    handshake that cannot finish is never judged as if only its staple were refused."""
    if error is None or isinstance(error, SSL.ZeroReturnError | SSL.SysCallError):
        return False
    return "status response" in _ssl_reason(error)


def _verifies(chain: tuple[x509.Certificate, ...], store: crypto.X509Store) -> bool:
    leaf, *rest = (crypto.X509.from_cryptography(cert) for cert in chain)
    try:
        crypto.X509StoreContext(store, leaf, rest).verify_certificate()
    except crypto.X509StoreContextError:
        return False
    return True


def _plain_text(error: SSL.Error | None) -> bool:
    """Whether OpenSSL's error says the server's first bytes were no TLS record (a mail or
    NATS server greeting in plain text, as it does before STARTTLS)."""
    if error is None:
        return False
    reason = _ssl_reason(error)
    return any(words in reason for words in _NO_TLS_RECORD)


def _ssl_reason(exc: SSL.Error) -> str:
    """One line from pyOpenSSL's error: OpenSSL's reasons, or what happened to the socket."""
    if isinstance(exc, SSL.ZeroReturnError):
        return "the server closed the connection"
    if isinstance(exc, SSL.SysCallError):
        errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
        return "the server closed the connection" if errno < 1 else os.strerror(errno)
    reasons = [str(entry[-1]) for entry in exc.args[0] if entry] if exc.args else []
    return "; ".join(reasons) or type(exc).__name__


def _close(conn: SSL.Connection, sock: socket.socket) -> None:
    """Say goodbye politely if the socket lets us at once; the verdict is already in."""
    with contextlib.suppress(SSL.Error, OSError):  # the server left, or the buffer is full
        conn.shutdown()
    sock.close()


# --- Reading the server's handshake messages (pure) ---------------------------------------------


@dataclass(frozen=True)
class _Served:
    chain: tuple[bytes, ...]  # DER, leaf first
    staple: bytes | None
    staple_refused: bool  # the staple came in the last message read: a failure was about it


class _Reader:
    """Big-endian integers and length-prefixed vectors; ValueError when the data runs out."""

    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    @property
    def done(self) -> bool:
        return self._at >= len(self._data)

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._data):
            raise ValueError("a handshake message ends too soon")
        chunk = self._data[self._at : self._at + size]
        self._at += size
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.number(length_size))


def _read_transcript(messages: list[bytes], *, tls13: bool) -> _Served:
    """The chain and the staple from the server's messages (header: type, uint24 length)."""
    chain: tuple[bytes, ...] = ()
    staple, staple_at = None, -1
    for index, message in enumerate(messages):
        kind, body = message[0], message[4:]
        if kind == _CERTIFICATE:
            chain, leaf_staple = _certificate(body, tls13=tls13)
            if leaf_staple is not None:
                staple, staple_at = leaf_staple, index
        elif kind == _CERTIFICATE_STATUS:
            staple, staple_at = _certificate_status(body), index
    last = staple is not None and staple_at == len(messages) - 1
    return _Served(chain, staple, last)


def _certificate(body: bytes, *, tls13: bool) -> tuple[tuple[bytes, ...], bytes | None]:
    """Certificate (RFC 8446 4.4.2, RFC 5246 7.4.2): the DER chain and the leaf's staple."""
    reader = _Reader(body)
    if tls13:
        reader.vector(1)  # certificate_request_context
    entries = _Reader(reader.vector(3))
    chain: list[bytes] = []
    staple = None
    while not entries.done:
        chain.append(entries.vector(3))
        extensions = _Reader(entries.vector(2) if tls13 else b"")
        if len(chain) == 1:  # only the leaf's staple; OpenSSL 3.6+ may staple the chain too
            staple = _status_extension(extensions)
    return tuple(chain), staple


def _status_extension(extensions: _Reader) -> bytes | None:
    while not extensions.done:
        kind, data = extensions.number(2), extensions.vector(2)
        if kind == _STATUS_REQUEST:
            return _certificate_status(data)
    return None


def _certificate_status(body: bytes) -> bytes:
    """CertificateStatus (RFC 6066 8): status_type ocsp, then the OCSPResponse."""
    reader = _Reader(body)
    if reader.number(1) != _STATUS_TYPE_OCSP:
        raise ValueError("a certificate status that is not OCSP")
    return reader.vector(3)
