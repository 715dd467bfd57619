"""A certificate's health for a person, on the one severity scale (`mustaple.core.severity`).

`health` judges a live state (the status page and `/status`); `phase_severity` judges a stored
phase alone (`mustaple status`, which reads the state store, not the staple). Pure: `now` is
passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from mustaple.core.delivery import SinkHealth
from mustaple.core.lifecycle import CertState, Phase
from mustaple.core.schedule import SchedulePolicy, alert_level, refresh_point
from mustaple.core.severity import Severity

__all__ = ["health", "phase_severity"]

_PHASE_SEVERITY = {
    Phase.GOOD.value: Severity.OK,
    Phase.PENDING.value: Severity.WARNING,
    Phase.FAILING.value: Severity.WARNING,
}


def health(
    state: CertState,
    must_staple: bool | None,
    sinks: Sequence[SinkHealth],
    now: datetime,
    policy: SchedulePolicy,
) -> tuple[Severity, str]:
    """The health of one certificate and a few words saying why."""
    held = state.held
    if state.revoked is not None:
        return Severity.CRITICAL, "the certificate is revoked"
    if held is None or held.effective_expiry <= now:
        worst = Severity.CRITICAL if must_staple else Severity.WARNING
        return worst, _why_no_staple(state)
    if alert_level(held, now, policy) is Severity.CRITICAL:
        return Severity.CRITICAL, "the staple expires soon and no fresh one came"
    failing = [s.sink for s in sinks if not s.ok]
    if failing:
        return Severity.WARNING, f"a server does not take the staple (sink {', '.join(failing)})"
    if state.failures:
        return Severity.WARNING, f"refreshing fails ({state.failures} in a row)"
    if now >= refresh_point(held, policy):
        return Severity.WARNING, "past the refresh point"
    return Severity.OK, "fresh staple"


def phase_severity(phase: str) -> Severity:
    """A stored phase alone: good is OK; pending and failing WARNING; expired, revoked,
    unusable (and a file no process has seen yet) CRITICAL."""
    return _PHASE_SEVERITY.get(phase, Severity.CRITICAL)


def _why_no_staple(state: CertState) -> str:
    if state.phase is Phase.UNUSABLE:
        return f"unusable: {state.problem}"
    if state.phase is Phase.EXPIRED:
        return "the staple expired and no valid one came"
    if state.phase is Phase.PENDING:
        return "no staple yet: the first fetch is due"
    return "no valid staple"
