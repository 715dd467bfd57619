"""The output of `mustaple check`: a `CheckReport` as lines for people or as one JSON object.

Pure; the verdict comes first, as monitoring systems show the first line.
"""

from __future__ import annotations

from typing import Any

from mustaple.core.checkjudge import CheckReport, Connection, Issuer
from mustaple.core.reasons import Rejection
from mustaple.core.render import human_duration, iso, staple_json
from mustaple.core.severity import Severity
from mustaple.core.verify import Staple

__all__ = ["JSON_KEYS", "error_json", "report_json", "report_lines"]


def report_lines(report: CheckReport) -> list[str]:
    """The human output: the verdict first (monitoring systems show the first line)."""
    return [
        f"{report.level.name} {report.name}: {report.verdict}",
        f"certificate:  {report.name} (serial {report.serial:x}), {_issuer_text(report.issuer)}",
        f"must-staple:  {'yes' if report.must_staple else 'no'}",
        f"staple:       {_staple_text(report)}",
        f"time left:    {_time_text(report)}",
        f"clients:      {_clients_text(report)}",
        f"connections:  {_connections_text(report)}",
    ]


def _issuer_text(issuer: Issuer) -> str:
    if issuer.cert is None:
        return f"issuer not found ({issuer.problem})"
    where = {"chain": "the served chain", "file": "--issuer", "cafile": "--cafile", "aia": "AIA"}
    source = where.get(issuer.source or "", "the bundle or AIA")
    return f"issued by {issuer.cert.subject.rfc4514_string()} (from {source})"


def _staple_text(report: CheckReport) -> str:
    outcome = report.outcome
    if report.server is None:
        origin = f"from {report.responder_url}" if report.responder_url else "no responder URL"
        if isinstance(outcome, Staple):
            return f"{_valid_text(outcome)}, {origin} (no server asked)"
        message = outcome.message if outcome else "no answer"
        return f"no valid response, {origin}: {message}"
    first = next((c for c in report.connections if c.staple is not None), None)
    if first is None:
        return "none sent"
    where = f" (first on connection {first.number})" if first.number > 1 else ""
    refused = (
        "" if first.handshake_completed else "; OpenSSL 3.6+ clients abort the handshake on it"
    )
    if outcome is None:
        return f"sent{where}, not validated: {report.issuer.problem}"
    if isinstance(outcome, Rejection):
        return f"sent{where}, INVALID [{outcome.code}] {outcome.message}{refused}"
    return f"sent{where}, {_valid_text(outcome)}"


def _valid_text(staple: Staple) -> str:
    if staple.good:
        return "valid, good"
    reason = staple.revocation_reason.name if staple.revocation_reason else "unspecified"
    return f"valid, REVOKED at {iso(staple.revocation_time) or 'unknown'} ({reason})"


def _time_text(report: CheckReport) -> str:
    staple = report.staple
    if staple is None:
        return "n/a (no valid staple)"
    left = human_duration(staple.seconds_left(report.now))
    fraction = staple.fraction_left(report.now)
    past = ", past its refresh point" if report.past_refresh_point else ""
    return f"{left} (until {iso(staple.effective_expiry)}), {fraction:.0%} of its window left{past}"


def _clients_text(report: CheckReport) -> str:
    clients = report.clients()
    if clients is None:
        return "no server: not applicable"
    words = {True: "accepts", False: "REFUSES", None: "cannot tell"}
    return ", ".join(f"{client.label} {words[verdict]}" for client, verdict in clients.items())


def _connections_text(report: CheckReport) -> str:
    connections = report.connections
    if not connections:
        return "no server: not applicable"
    total = len(connections)
    versions = "/".join(sorted({c.tls_version for c in connections}))
    head = f"{total} sequential" if total > 1 else "1"
    text = f"{head} to {report.server} over TLS {versions}"
    stapled = [c.number for c in connections if c.staple is not None]
    if total == 1:
        return f"{text}, {'stapled' if stapled else 'no staple'}"
    text += f": {len(stapled)} of {total} stapled"
    lazy = bool(stapled) and stapled[0] > 1 and stapled == list(range(stapled[0], total + 1))
    if lazy:
        text += " (none on the first: lazy stapling)"
    same = report.same_staple
    if same is not None:
        text += ", the same staple each time" if same else ", different staples"
    return text + (_LAZY_ADVICE if lazy else "")


_LAZY_ADVICE = (
    "; the server fetches its staple only after a client has asked (nginx does, even "
    "pointed at a responder URL): hand it the staple as a file instead"
)


JSON_KEYS = (
    "level",
    "exit_code",
    "verdict",
    "name",
    "serial",
    "must_staple",
    "issuer",
    "issuer_source",
    "server",
    "responder_url",
    "stapled",
    "valid",
    "status",
    "reason",
    "message",
    "past_refresh_point",
    "staple",
    "clients",
    "same_staple",
    "connections",
)


def report_json(report: CheckReport) -> dict[str, Any]:
    """The `--json` object: every key of JSON_KEYS, null when it does not apply."""
    outcome, staple = report.outcome, report.staple
    rejection = outcome if isinstance(outcome, Rejection) else None
    clients = report.clients()
    return {
        "level": report.level.name,
        "exit_code": int(report.level),
        "verdict": report.verdict,
        "name": report.name,
        "serial": f"{report.serial:x}",
        "must_staple": report.must_staple,
        "issuer": report.issuer.cert.subject.rfc4514_string() if report.issuer.cert else None,
        "issuer_source": report.issuer.source,
        "server": report.server,
        "responder_url": report.responder_url,
        "stapled": report.stapled,
        "valid": None if outcome is None else staple is not None,
        "status": staple.status.name.lower() if staple else None,
        "reason": rejection.code if rejection else None,
        "message": rejection.message if rejection else None,
        "past_refresh_point": report.past_refresh_point,
        "staple": staple_json(staple, report.now) if staple else None,
        "clients": {c.key: v for c, v in clients.items()} if clients is not None else None,
        "same_staple": report.same_staple,
        "connections": (
            [_connection_json(c) for c in report.connections] if report.server is not None else None
        ),
    }


def _connection_json(connection: Connection) -> dict[str, Any]:
    outcome = connection.outcome
    return {
        "number": connection.number,
        "stapled": connection.staple is not None,
        "tls_version": connection.tls_version,
        "handshake_completed": connection.handshake_completed,
        "chain_verified": connection.chain_verified,
        "state": connection.state.value,
        "reason": outcome.code if isinstance(outcome, Rejection) else None,
        "level": connection.level.name,
        "why": connection.why,
    }


def error_json(message: str) -> dict[str, Any]:
    """The `--json` object when nothing could be checked (UNKNOWN)."""
    return {
        **dict.fromkeys(JSON_KEYS),
        "level": Severity.UNKNOWN.name,
        "exit_code": int(Severity.UNKNOWN),
        "verdict": message,
    }
