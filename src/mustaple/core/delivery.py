"""The contract between the keeper and the sinks that hand staples to TLS servers.

The keeper decides *what* each certificate's staple should be; a `Sink` makes one kind of
server see it (a file plus a reload, HAProxy's runtime API, a command). The keeper calls
`deliver` with a batch (everything that changed in one pass) so a sink can reload a server
once per batch, not once per certificate.

Rules every sink keeps:
- `deliver` never raises for a failure of the outside world (a missing directory, a
  reload command that fails, a running HAProxy not answering): it returns a `Delivered`
  with `error` set, one line that says what failed, and goes on with the rest of the batch.
- Delivering the same staple again is harmless and reports `changed=False`.
- `Action.REVOKED` serves the CA's revoked answer instead of the good staple, so clients learn
  the truth and the server keeps running; a sink whose server cannot serve one withdraws the
  staple instead. Never the good staple of a revoked certificate.
- `Action.REMOVE` takes the staple away (an expired staple): a server must never go on
  serving it.
- A sink that must leave a file in place (nginx's `remove = "keep"`) and finds another
  certificate's staple in it (the certificate at that path renewed, no staple fetched for the
  new one yet) reports a `Trap` and reloads its server no more while the file holds it: the
  reload would serve that staple with the new certificate, and clients refuse it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.x509 import ocsp

from mustaple.core.der import looks_like_ocsp_response

__all__ = [
    "Action",
    "Delivered",
    "Delivery",
    "HoldsBack",
    "KeepsCopies",
    "Reloads",
    "Sink",
    "SinkHealth",
    "Trap",
    "Watches",
    "staple_serial",
]


class Action(enum.Enum):
    STAPLE = "staple"  # serve `der`
    REVOKED = "revoked"  # serve `der`, the CA's revoked answer (or nothing, if it cannot)
    REMOVE = "remove"  # serve nothing


@dataclass(frozen=True, slots=True)
class Delivery:
    """One certificate's staple, as the sinks should make the servers see it."""

    key: str  # the certificate's identity (store.cert_key)
    name: str  # its display name, for logs and path templates
    cert_path: Path  # the certificate file as configured (fullchain.pem, HAProxy crt file)
    action: Action
    der: bytes | None  # the DER response for STAPLE, None for REMOVE
    issuer_pem: bytes  # the issuer certificate, for sinks that need it beside the staple
    bundle_has_issuer: bool  # whether `cert_path` already carries the issuer
    status: str  # "good", "revoked", "expired" ...: for commands and logs
    serial: int | None = None  # the leaf's serial number: whose staple a kept file holds


@dataclass(frozen=True, slots=True)
class Trap:
    """A staple file left in place (`remove = "keep"`) that holds the staple of another
    certificate than the one at its certificate path now: a reload would serve it with that
    one. It is sprung until the file holds something else (the new staple) or nothing."""

    path: str  # the staple file
    serial: int  # the serial number in the response it holds


def staple_serial(held: bytes | None) -> int | None:
    """The serial number of the certificate a staple file's response is about (whose staple
    a kept file holds); None for no file, or a response that cannot be read."""
    if not held or not looks_like_ocsp_response(held):
        return None
    try:
        return int(ocsp.load_der_ocsp_response(held).serial_number)
    except ValueError:  # not successful, several SingleResponses, garbled
        return None


@dataclass(frozen=True, slots=True)
class Delivered:
    """What a sink did with one Delivery."""

    key: str
    sink: str
    changed: bool
    error: str | None = None
    # In place for the server's next start, but no running server took it (HAProxy not
    # running, or the file sink's `running` check says the server is down): not an error.
    note: str | None = None
    # the running server may not have what was written (its reload failed, or HAProxy
    # did not take the push): see `Reloads`
    reload_owed: bool = False
    trap: Trap | None = None  # this certificate's file holds another's staple: see `HoldsBack`

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class SinkHealth:
    """How one sink last took one certificate's staple (status, page and metrics show it)."""

    sink: str
    last_delivery: datetime | None  # when it last took a staple
    error: str | None = None  # the last failure; None when the last delivery worked
    failures: int = 0  # failed deliveries in a row
    since: datetime | None = None  # when this run of failures began
    note: str | None = None  # see `Delivered.note`
    reload_owed: bool = False  # see `Delivered.reload_owed`
    trap: Trap | None = None  # see `Delivered.trap`

    @property
    def ok(self) -> bool:
        return self.error is None


class Sink(Protocol):
    """Something that makes servers see staples. See the module docstring for the rules."""

    name: str

    async def deliver(self, batch: Sequence[Delivery]) -> list[Delivered]: ...


@runtime_checkable
class KeepsCopies(Protocol):
    """A sink whose staples can be read back (a file sink): at a start, a staple it holds
    that is newer than the stored one (delivered when the state could not be written) is
    not undone by the older one."""

    async def held(self, batch: Sequence[Delivery]) -> list[bytes | None]:
        """The bytes of each delivery's copy, or None where there is none or it cannot be
        read (its file system hangs, too)."""
        ...


@runtime_checkable
class Watches(Protocol):
    """A sink whose copies stay where its server reads them at a start or reload (a file
    sink's staple file, HAProxy's `.ocsp` and `.issuer`), where something else can remove or
    replace them (an operator, a configuration management tool, a restored backup) while the
    keeper believes the sink has them: nginx then does not start at all without its
    `ssl_stapling_file`, and HAProxy staples nothing, and takes no push, for a certificate it
    loaded without a `.ocsp` file. `astray` says, for deliveries the sink took, why each copy
    is no longer what the sink left ("... is gone"), or None where it is; the keeper looks at
    every pass and delivers those again to that sink."""

    async def astray(self, batch: Sequence[Delivery]) -> list[str | None]: ...


@runtime_checkable
class Reloads(Protocol):
    """A sink that reloads its server to make it read what it wrote (a file sink's `reload`).
    A reload that failed is owed: the next delivery reloads even when no file changed. Its
    `Delivered.reload_owed` says so, and the status rows keep it: a new sink (a start, a
    SIGHUP) or another process (a running keeper at its next look at the store, whether or
    not the `prime` that failed stored anything new) learns it from them, and `owe_reload`
    hands it over. A HAProxy push that a running HAProxy did not take is
    owed the same way: every delivery pushes again, and `owe_reload` makes the next one run
    the sink's `reload`, if it has one."""

    def owe_reload(self) -> None: ...


@runtime_checkable
class HoldsBack(Protocol):
    """A sink that holds back its server's reloads while a `Trap` is sprung. The status rows
    keep each trap (`SinkHealth.trap`): another process (a `prime`, a start) learns it from
    them, and `hold_back` hands it over, so that its reload does not spring it either.
    `let_go` ends it when its certificate is no longer kept (no row will hold it)."""

    def hold_back(self, trap: Trap) -> None: ...

    def let_go(self, trap: Trap) -> None: ...
