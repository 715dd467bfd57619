"""Turning outcomes into what people and scripts read: exit codes, one-line verdicts, JSON.

Pure: the clock is passed in. The CLI prints what these functions return.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography.x509 import ocsp

from mustaple.core.certs import Target
from mustaple.core.reasons import Reason, Rejection
from mustaple.core.render import STAPLE_KEYS, human_duration, iso, one_line, shown, staple_json
from mustaple.core.verify import Staple

if TYPE_CHECKING:
    from mustaple.core.fetchtypes import Attempt, FetchResult

__all__ = [
    "FETCH_KEYS",
    "OUTCOME_KEYS",
    "STAPLE_KEYS",
    "ExitCode",
    "error_json",
    "exit_code",
    "explain",
    "fetch_json",
    "fetch_line",
    "file_hint",
    "human_duration",
    "outcome_json",
    "staple_json",
    "verdict",
]


class ExitCode(enum.IntEnum):
    """Exit codes of `fetch`, `inspect` and `prime` (docs/cli.md)."""

    GOOD = 0  # a valid `good` staple
    NO_STAPLE = 1  # rejected, unreachable, status unknown, or no OCSP URL
    USAGE = 2  # usage error or unreadable input
    REVOKED = 3  # a valid response says the certificate is revoked
    INTERNAL = 4  # a bug in mustaple
    INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + its number, as the shell reports it
    TERMINATED = 143  # SIGTERM (`prime`, which stops cleanly; the others die of it)


def exit_code(outcome: Staple | Rejection | None) -> ExitCode:
    if isinstance(outcome, Staple):
        return ExitCode.GOOD if outcome.good else ExitCode.REVOKED
    return ExitCode.NO_STAPLE


def _status_name(outcome: Staple | Rejection | None) -> str | None:
    if isinstance(outcome, Staple):
        return outcome.status.name.lower()
    if isinstance(outcome, Rejection) and outcome.reason is Reason.CERT_STATUS_UNKNOWN:
        return ocsp.OCSPCertStatus.UNKNOWN.name.lower()
    return None


def _attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "url": attempt.url,
        "method": attempt.method,
        "started": iso(attempt.started),
        "latency_ms": round(attempt.latency * 1000, 1),
        "http_status": attempt.http_status,
        "reason": attempt.reason,
        "message": attempt.message,
    }


OUTCOME_KEYS = (  # outcome_json's (inspect --json): every one always there
    "ok", "name", "serial", "must_staple", "status", "reason", "retryable", "message", "hint",
    *STAPLE_KEYS, "error",
)  # fmt: skip
FETCH_KEYS = (*OUTCOME_KEYS, "responder_url", "attempts", "out")  # fetch_json's


def outcome_json(
    target: Target, outcome: Staple | Rejection, now: datetime, *, from_file: bool = False
) -> dict[str, Any]:
    """The common JSON object for one certificate's outcome (fetch and inspect; `from_file`:
    the response was read from a file, so the hint is `file_hint`)."""
    staple = outcome if isinstance(outcome, Staple) else None
    rejection = outcome if isinstance(outcome, Rejection) else None
    empty = dict.fromkeys(STAPLE_KEYS)
    return {
        "ok": staple is not None and staple.good,
        "name": target.name,
        "serial": f"{target.serial:x}",
        "must_staple": target.must_staple,
        "status": _status_name(outcome),
        "reason": rejection.code if rejection else None,
        "retryable": rejection.retryable if rejection else None,
        "message": verdict(target, outcome, now),
        "hint": (file_hint(rejection) if from_file else rejection.hint) if rejection else None,
        **(staple_json(staple, now) if staple else empty),
        "error": None,
    }


def error_json(problem: str, keys: Sequence[str]) -> dict[str, Any]:
    """The JSON object of a command stopped by bad input (exit 2): `error` and `message` the
    line standard error gets, `ok` false, every other key of `keys` null."""
    return dict.fromkeys(keys) | {"ok": False, "message": problem, "error": problem}


def fetch_json(
    target: Target, result: FetchResult, now: datetime, out: str | None
) -> dict[str, Any]:
    """The `mustaple fetch --json` object."""
    outcome = _outcome(result)
    return {
        **outcome_json(target, outcome, now),
        "responder_url": result.url,
        "attempts": [_attempt_json(a) for a in result.attempts],
        "out": out,
    }


def _outcome(result: FetchResult) -> Staple | Rejection:
    if result.staple is not None:
        return result.staple
    assert result.rejection is not None
    return result.rejection


def verdict(target: Target, outcome: Staple | Rejection, now: datetime) -> str:
    """One sentence: what the outcome means for this certificate."""
    if isinstance(outcome, Rejection):
        if outcome.reason is Reason.NO_OCSP_URL:
            return outcome.detail
        return f"no valid staple: {outcome.message}"
    if outcome.good:
        left = human_duration(outcome.seconds_left(now))
        return f"good staple, valid until {iso(outcome.effective_expiry)} ({left} left)"
    reason = outcome.revocation_reason.name if outcome.revocation_reason else "unspecified"
    return (
        f"REVOKED at {iso(outcome.revocation_time)} (reason {reason}) according to a valid "
        "response; it is not stapled"
    )


def fetch_line(target: Target, result: FetchResult, now: datetime, out: str | None) -> str:
    """The one human line `mustaple fetch` prints."""
    outcome = _outcome(result)
    code = exit_code(outcome)
    head = {ExitCode.GOOD: "OK", ExitCode.REVOKED: "REVOKED"}.get(code, "FAILED")
    line = f"{head} {target.name}: {verdict(target, outcome, now)}"
    if isinstance(outcome, Staple):
        line += f", from {result.url}"
        if out and outcome.good:
            line += f"; saved to {one_line(shown(out))}"
        if not outcome.good:
            line += "; replace the certificate"
    elif outcome.reason is not Reason.NO_OCSP_URL:
        tries = len(result.attempts)
        line += f" ({tries} attempt{'s' * (tries != 1)}, last at {result.url}); {outcome.hint}"
    if isinstance(outcome, Staple) and outcome.notes:
        line += f" [notes: {', '.join(n.code for n in outcome.notes)}]"
    return line


def explain(target: Target, outcome: Staple | Rejection, now: datetime) -> list[str]:
    """The lines `mustaple inspect` prints about one response."""
    lines = [
        f"certificate:      {target.name} (serial {target.serial:x})",
        f"must-staple:      {'yes' if target.must_staple else 'no'}",
    ]
    if isinstance(outcome, Rejection):
        lines += [
            f"verdict:          REJECTED [{outcome.code}] {outcome.message}",
            f"what to do:       {file_hint(outcome)}",
        ]
        return lines
    label = "VALID, can be stapled" if outcome.good else "VALID, but REVOKED: never stapled"
    lines += [
        f"verdict:          {label}",
        f"status:           {outcome.status.name.lower()}",
        f"produced at:      {iso(outcome.produced_at)}",
        f"this update:      {iso(outcome.this_update)}",
        f"next update:      {iso(outcome.next_update) or 'none'}",
        f"effective expiry: {iso(outcome.effective_expiry)} "
        f"({human_duration(outcome.seconds_left(now))} left, "
        f"{outcome.fraction_left(now):.0%} of the window)",
        f"signed by:        {outcome.signer.value} ({outcome.signer_name})",
        f"CertID hash:      {outcome.hash_name}",
    ]
    if outcome.revocation_time:
        lines.append(f"revoked at:       {iso(outcome.revocation_time)}")
    lines += [f"note:             [{n.code}] {n.summary}" for n in outcome.notes]
    return lines


_CLOCK_REASONS = (Reason.PRODUCED_IN_FUTURE, Reason.THIS_UPDATE_IN_FUTURE)


def file_hint(rejection: Rejection) -> str:
    """What to do about a response read from a file: retrying it cannot help, a new one may."""
    if not rejection.retryable:
        return rejection.hint
    fetch = "fetch a new one with `mustaple fetch CERT --out FILE`"
    if rejection.reason in _CLOCK_REASONS:
        return f"check this machine's clock (NTP), or judge it at another time with --at; {fetch}"
    return f"this response cannot be stapled; {fetch}"
