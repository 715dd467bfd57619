"""`mustaple check`: is a live server (or a certificate's responder) safe for must-staple?

The names of `mustaple check` gathered in one place, so `from mustaple.check import ...` is
the one import for users (docs/check.md). Three modules do the work, each thinner than the
one before:

- `mustaple.core.checkjudge` is pure: `judge` and `judge_responder` take what was served (or what
  the responder answered), the issuer, `now` and the policies, and give a `CheckReport`; the
  client model (`client_accepts`, `client_states`) lives there too.
- `mustaple.adapters.checkprobe` does the I/O: TLS probes, the issuer, the OCSP fetch for `--cert`.
- `mustaple.core.checkrender` renders a report as lines or as one JSON object.

The click command is `mustaple.cli.check`.
"""

from __future__ import annotations

from mustaple.adapters.checkprobe import DEFAULT_PORT, check_responder, check_server, parse_address
from mustaple.core.checkjudge import (
    CheckReport,
    Client,
    Connection,
    Issuer,
    StapleState,
    client_accepts,
    client_states,
    judge,
    judge_responder,
)
from mustaple.core.checkrender import JSON_KEYS, error_json, report_json, report_lines
from mustaple.core.severity import Severity

__all__ = [
    "DEFAULT_PORT",
    "JSON_KEYS",
    "CheckReport",
    "Client",
    "Connection",
    "Issuer",
    "Severity",
    "StapleState",
    "check_responder",
    "check_server",
    "client_accepts",
    "client_states",
    "error_json",
    "judge",
    "judge_responder",
    "parse_address",
    "report_json",
    "report_lines",
]
