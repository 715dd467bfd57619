"""The one severity scale: how worried a person should be, everywhere mustaple says it.

The keeper's alerts (`schedule.alert_level`, `CertState.alert`), a certificate's health on the
status page, in `/status` and `mustaple status` (`mustaple.core.health`), and the verdict and
exit code of `mustaple check`, which alone also says UNKNOWN (it could not tell). The values
are the monitoring-plugin exit codes (docs/check.md); `word` is what JSON and the status page
show, `colour` what a terminal shows.
"""

from __future__ import annotations

import enum

__all__ = ["Severity"]


class Severity(enum.IntEnum):
    OK = 0  # safe: a valid staple, refreshed on time
    WARNING = 1  # works now, but at risk
    CRITICAL = 2  # clients refuse, or soon will
    UNKNOWN = 3  # `mustaple check` only: cannot tell (no connection, no issuer, usage error)

    @property
    def word(self) -> str:
        """The lowercase word of JSON values and the status page's classes."""
        return self.name.lower()

    @property
    def colour(self) -> str:
        """The colour a terminal shows it in (rich's names)."""
        return _COLOURS[self]


_COLOURS = {
    Severity.OK: "green",
    Severity.WARNING: "yellow",
    Severity.CRITICAL: "red",
    Severity.UNKNOWN: "magenta",
}
