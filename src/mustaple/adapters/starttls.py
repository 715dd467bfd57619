"""STARTTLS: the plain-text exchange that turns a connection into a TLS one (mail, NATS).

An I/O adapter for `probe`: `negotiate(sock, protocol, ...)` speaks the protocol on a connected
socket until the server says "go ahead with TLS", then returns; the caller starts the
handshake on the same socket. Two protocols, each tested here against a real server: SMTP
(RFC 3207; Exim) and NATS (the server's plain-text INFO line, then TLS; nats-server).

Hostile or broken servers get one clear `StarttlsError`: a reply that is not the expected
one, a line over 4096 bytes or a reply over 100 lines, silence past the deadline, a closed
connection, and bytes sent after the go-ahead but before TLS (the plain-text injection that
STARTTLS implementations must refuse, CVE-2011-0411).
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass, field

from mustaple.core.errors import MustapleError

__all__ = ["DEFAULT_PORTS", "PROTOCOLS", "StarttlsError", "negotiate"]

PROTOCOLS = ("smtp", "nats")
DEFAULT_PORTS = {"smtp": 25, "nats": 4222}
_MAX_LINE = 4096
_MAX_LINES = 100


class StarttlsError(MustapleError):
    """The server did not agree to STARTTLS; one line saying what it did instead."""


def negotiate(sock: socket.socket, protocol: str, *, where: str, deadline: float) -> None:
    """Speak `protocol` on the non-blocking `sock` until the server is ready for TLS."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"STARTTLS for {protocol!r} is not supported; use one of {PROTOCOLS}")
    lines = _Lines(sock, where, deadline)
    if protocol == "smtp":
        _smtp(lines, where)
    else:
        _nats(lines, where)
    if lines.pending:
        raise StarttlsError(
            f"{where}: the server sent data after agreeing to STARTTLS, before TLS "
            "(a plain-text injection risk); not probed"
        )


def _smtp(lines: _Lines, where: str) -> None:
    """RFC 3207: greeting 220, EHLO → 250 naming STARTTLS, STARTTLS → 220."""
    code, _ = _smtp_reply(lines, where)
    if code != "220":
        raise StarttlsError(f"{where}: the SMTP greeting is {code}, not 220")
    lines.send(f"EHLO {_client_name()}\r\n")
    code, text = _smtp_reply(lines, where)
    if code != "250":
        raise StarttlsError(f"{where}: the server answered EHLO with {code}")
    if not any(line.split()[:1] == ["STARTTLS"] for line in (t.upper() for t in text)):
        raise StarttlsError(f"{where}: the SMTP server does not offer STARTTLS")
    lines.send("STARTTLS\r\n")
    code, text = _smtp_reply(lines, where)
    if code != "220":
        said = " ".join(text)[:120]
        raise StarttlsError(f"{where}: the server refused STARTTLS ({code} {said})".rstrip())


def _nats(lines: _Lines, where: str) -> None:
    """NATS: the server speaks first, `INFO {json}`; TLS follows when it requires or offers it."""
    line = lines.read()
    verb, _, body = line.partition(" ")
    if verb != "INFO":
        raise StarttlsError(f"{where}: not a NATS server (it said {line[:80]!r})")
    try:
        info = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting too deep
        raise StarttlsError(f"{where}: the NATS INFO line is not JSON") from None
    if not isinstance(info, dict) or not (info.get("tls_required") or info.get("tls_available")):
        raise StarttlsError(f"{where}: the NATS server does not offer TLS")


def _smtp_reply(lines: _Lines, where: str) -> tuple[str, list[str]]:
    """One (possibly multi-line) SMTP reply: its code and the text of each line."""
    text = []
    for _ in range(_MAX_LINES):
        line = lines.read()
        code, more = line[:3], line[3:4]
        if len(line) < 3 or not (code.isascii() and code.isdigit()) or more not in ("", " ", "-"):
            raise StarttlsError(f"{where}: not an SMTP reply: {line[:80]!r}")
        text.append(line[4:])
        if more != "-":
            return code, text
    raise StarttlsError(f"{where}: an SMTP reply of over {_MAX_LINES} lines")


def _client_name() -> str:
    """The name we give in EHLO: this machine's, as a mail client would (no DNS lookup)."""
    name = socket.gethostname()
    return name if name and name.isascii() and " " not in name else "localhost"


@dataclass
class _Lines:
    """CRLF-terminated lines from a non-blocking socket, bounded in size and time."""

    sock: socket.socket
    where: str
    deadline: float
    pending: bytes = field(default=b"")

    def read(self) -> str:
        while b"\n" not in self.pending:
            if len(self.pending) > _MAX_LINE:
                raise StarttlsError(f"{self.where}: a line of over {_MAX_LINE} bytes")
            self._receive()
        line, _, self.pending = self.pending.partition(b"\n")
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def _receive(self) -> None:
        if not select.select([self.sock], [], [], self._left())[0]:
            raise StarttlsError(f"{self.where}: no STARTTLS answer in time")
        try:
            chunk = self.sock.recv(4096)
        except OSError as exc:
            raise StarttlsError(f"{self.where}: the connection failed ({exc})") from exc
        if not chunk:
            raise StarttlsError(f"{self.where}: the server closed the connection")
        self.pending += chunk

    def send(self, text: str) -> None:
        data = text.encode("ascii")
        while data:
            if not select.select([], [self.sock], [], self._left())[1]:
                raise StarttlsError(f"{self.where}: the server does not read what we send")
            try:
                data = data[self.sock.send(data) :]
            except OSError as exc:
                raise StarttlsError(f"{self.where}: the connection failed ({exc})") from exc

    def _left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())
