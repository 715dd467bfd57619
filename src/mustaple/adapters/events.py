"""Events worth telling an operator about, as log lines and as hook commands.

An event has a kind (revoked, expiring, expired, failure, recovered), the certificate, and the
reason code when there is one. The keeper logs every event as one line and runs the matching
hook command (docs/configuration.md, [hooks]) with the event in its environment:

    MUSTAPLE_EVENT  MUSTAPLE_NAME  MUSTAPLE_CERT  MUSTAPLE_MUST_STAPLE  MUSTAPLE_STATUS
    MUSTAPLE_REASON  MUSTAPLE_MESSAGE  MUSTAPLE_THIS_UPDATE  MUSTAPLE_EXPIRY
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta

from mustaple.adapters.shell import run_command
from mustaple.core.render import iso

__all__ = ["HOOK_FOR", "Event", "run_hook"]

# Which [hooks] key runs for which event kind.
HOOK_FOR = {
    "revoked": "on_revoked",
    "expiring": "on_expiring",
    "expired": "on_expiring",
    "failure": "on_failure",
    "recovered": "on_recovered",
}


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    name: str
    cert_path: str
    must_staple: bool
    status: str
    message: str
    reason: str | None = None
    this_update: datetime | None = None
    expiry: datetime | None = None

    def line(self) -> str:
        """The log line: certificate, event, reason code, what it means."""
        code = f" [{self.reason}]" if self.reason else ""
        return f"{self.name}: {self.kind}{code}: {self.message}"

    def environment(self) -> dict[str, str]:
        return {
            "MUSTAPLE_EVENT": self.kind,
            "MUSTAPLE_NAME": self.name,
            "MUSTAPLE_CERT": self.cert_path,
            "MUSTAPLE_MUST_STAPLE": "1" if self.must_staple else "0",
            "MUSTAPLE_STATUS": self.status,
            "MUSTAPLE_REASON": self.reason or "",
            "MUSTAPLE_MESSAGE": self.message,
            "MUSTAPLE_THIS_UPDATE": iso(self.this_update) or "",
            "MUSTAPLE_EXPIRY": iso(self.expiry) or "",
        }


async def run_hook(command: str, event: Event, timeout: timedelta) -> str | None:
    """Run `command` through the shell for `event`; None on success, else one line why not.

    See `mustaple.adapters.shell`: its own process group, killed whole at `timeout`, output capped.
    """
    env = {**os.environ, **event.environment()}
    return await run_command(command, timeout, env, label=f"hook {command!r}")
