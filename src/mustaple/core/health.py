"""A certificate's health for a person, on the one severity scale (`mustaple.core.severity`).

`health` judges a live state (the status page and `/status`); `judge` the same facts as the
state store keeps them (`mustaple status`, which reads the store and the stored staple, not
the keeper), so that both say the same. Pure: `now` is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from mustaple.core.delivery import SinkHealth
from mustaple.core.lifecycle import CertState, Phase
from mustaple.core.schedule import SchedulePolicy, critical_left, refresh_point
from mustaple.core.severity import Severity
from mustaple.core.verify import Dated

__all__ = ["Facts", "health", "judge"]


@dataclass(frozen=True, slots=True)
class Facts:
    """What the health of one certificate is judged on."""

    phase: str  # a `lifecycle.Phase` value
    held: Dated | None  # the staple in hand, if any (valid or not: judged against `now`)
    revoked: bool
    failures: int
    problem: str | None  # why an unusable certificate is so


def health(
    state: CertState,
    must_staple: bool | None,
    sinks: Sequence[SinkHealth],
    now: datetime,
    policy: SchedulePolicy,
) -> tuple[Severity, str]:
    """The health of one certificate and a few words saying why."""
    facts = Facts(
        state.phase.value, state.held, state.revoked is not None, state.failures, state.problem
    )
    return judge(facts, must_staple, sinks, now, policy)


def judge(
    facts: Facts,
    must_staple: bool | None,
    sinks: Sequence[SinkHealth],
    now: datetime,
    policy: SchedulePolicy,
) -> tuple[Severity, str]:
    """`health` of the facts: revoked, unusable (nothing will refresh what it holds) and no
    valid staple first, then how close expiry is, the sinks, refresh failures, the refresh
    point."""
    held = facts.held
    if facts.revoked:
        return Severity.CRITICAL, "the certificate is revoked"
    if facts.phase == Phase.UNUSABLE.value:  # unknown must-staple (unreadable): as if it were
        worst = Severity.WARNING if must_staple is False else Severity.CRITICAL
        return worst, f"unusable: {facts.problem or 'see the log'}"
    if held is None or held.effective_expiry <= now:
        worst = Severity.CRITICAL if must_staple else Severity.WARNING
        return worst, _why_no_staple(facts.phase)
    if held.effective_expiry - now <= critical_left(held, policy):
        return Severity.CRITICAL, "the staple expires soon and no fresh one came"
    failing = [s.sink for s in sinks if not s.ok]
    if failing:
        return Severity.WARNING, f"a server does not take the staple (sink {', '.join(failing)})"
    if facts.failures:
        return Severity.WARNING, f"refreshing fails ({facts.failures} in a row)"
    if now >= refresh_point(held, policy):
        return Severity.WARNING, "past the refresh point"
    return Severity.OK, "fresh staple"


def _why_no_staple(phase: str) -> str:
    if phase == Phase.EXPIRED.value:
        return "the staple expired and no valid one came"
    if phase == Phase.PENDING.value:
        return "no staple yet: the first fetch is due"
    return "no valid staple"
