"""`mustaple check`: is a live server (or a certificate's responder) safe for must-staple?

Three layers, each thinner than the one before:

- `judge` and `judge_responder` are pure: what was served (probe results, or what the
  responder answered), the issuer, `now` and the policies in, a `CheckReport` out. They read
  no clock, file or socket, so every verdict can be tested in microseconds.
- `check_server` and `check_responder` do the I/O: TLS probes (`mustaple.probe`), the issuer
  from the served chain, a file or AIA, and the OCSP fetch for `--cert`.
- `check_command` is the click command: options in, lines or JSON out, and an exit code of the
  monitoring-plugin convention (`Level`).

The client model (`client_accepts`) says whether Firefox, GnuTLS and `curl --cert-status`
would accept each handshake; docs/check.md explains it and its limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import click
from cryptography import x509
from cryptography.x509 import ocsp

from mustaple.certs import (
    Target,
    ca_issuer_urls,
    display_name,
    find_issuer,
    is_must_staple,
    issuer_encoded_differently,
    parse_certificates,
)
from mustaple.errors import InputError
from mustaple.fetch import FetchResult, fetch_issuer, fetch_staple, utc_now
from mustaple.files import read_input
from mustaple.loader import load_target
from mustaple.probe import ProbeError, ProbeResult, probe_async
from mustaple.reasons import Note, Reason, Rejection
from mustaple.report import human_duration, staple_json
from mustaple.schedule import DEFAULT_SCHEDULE, SchedulePolicy, refresh_point
from mustaple.starttls import DEFAULT_PORTS as STARTTLS_PORTS
from mustaple.starttls import PROTOCOLS as STARTTLS_PROTOCOLS
from mustaple.verify import DEFAULT_POLICY, Policy, Staple, verify

__all__ = [
    "JSON_KEYS",
    "CheckReport",
    "Client",
    "Connection",
    "Issuer",
    "Level",
    "StapleState",
    "check_command",
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

DEFAULT_PORT = 443
MAX_CONNECTIONS = 100


class Level(enum.IntEnum):
    """Exit codes of `mustaple check`: the monitoring-plugin convention (docs/check.md)."""

    OK = 0  # safe for must-staple
    WARNING = 1  # works now, but at risk (past the refresh point; no staple, not must-staple)
    CRITICAL = 2  # clients refuse, or will: no valid good staple where one is needed, revoked
    UNKNOWN = 3  # cannot tell: no connection, failed handshake, no issuer, usage error


# How bad each level is when several connections disagree: CRITICAL wins, then UNKNOWN.
_SEVERITY = {Level.OK: 0, Level.WARNING: 1, Level.UNKNOWN: 2, Level.CRITICAL: 3}


class StapleState(enum.Enum):
    """What one handshake stapled, as far as the client model cares."""

    NONE = "none"  # no staple sent
    GOOD = "good"  # a valid response, status good
    REVOKED = "revoked"  # a valid response, status revoked
    EXPIRED = "expired"  # rejected only because it has expired
    INVALID = "invalid"  # rejected for any other reason
    UNVALIDATED = "unvalidated"  # sent, but there is no issuer to validate it with


class Client(enum.Enum):
    """The clients whose verdict `mustaple check` models."""

    def __init__(self, key: str, label: str) -> None:
        self.key = key
        self.label = label

    FIREFOX = ("firefox", "Firefox")
    GNUTLS = ("gnutls", "GnuTLS")
    CURL = ("curl", "curl --cert-status")


def client_accepts(client: Client, must_staple: bool, state: StapleState) -> bool | None:
    """Whether `client` accepts a handshake that stapled `state` (None: cannot tell).

    `state` is the staple as this client sees it (`client_states`). Firefox (mozpkix): a
    must-staple certificate needs a valid good staple; otherwise a revoked or invalid staple
    fails the handshake, while an expired one is ignored like no staple. GnuTLS: a
    must-staple certificate needs a valid good staple; otherwise any staple sent must be
    valid and good, and none is fine. curl --cert-status: always a valid good staple.
    """
    if state is StapleState.UNVALIDATED:
        return None
    if must_staple or client is Client.CURL:
        return state is StapleState.GOOD
    if client is Client.FIREFOX:
        return state in (StapleState.NONE, StapleState.GOOD, StapleState.EXPIRED)
    return state in (StapleState.NONE, StapleState.GOOD)


# How long after the end of a response's life each client still takes it, and the lifetime
# rules it applies, for a staple mustaple calls `expired` or lacking nextUpdate:
# - Firefox: notAfter is min(nextUpdate, thisUpdate + 10 days), or thisUpdate + 1 day without
#   nextUpdate, and a response is old only one day (SLOP_SECONDS) after that (mozpkix,
#   pkixocsp.cpp, SingleResponse).
# - curl: OCSP_check_validity(thisupd, nextupd, 300L, -1L) (lib/vtls/openssl.c, verifystatus):
#   five minutes after nextUpdate, no cap on the window, no age limit without nextUpdate.
# - GnuTLS: refused once nextUpdate has passed ("There is a newer OCSP response"), no cap;
#   without nextUpdate, MAX_OCSP_VALIDITY_SECS (15 days) after thisUpdate (lib/cert-session.c,
#   check_ocsp_response).
_FOREVER = timedelta(days=36500)
_CLIENT_TIMES: dict[Client, tuple[timedelta, Policy]] = {
    Client.FIREFOX: (timedelta(days=1), Policy(allow_missing_next_update=True)),
    Client.CURL: (
        timedelta(seconds=300),
        Policy(
            max_lifetime=_FOREVER,
            allow_missing_next_update=True,
            missing_next_update_lifetime=_FOREVER,
        ),
    ),
    Client.GNUTLS: (
        timedelta(0),
        Policy(
            max_lifetime=_FOREVER,
            allow_missing_next_update=True,
            missing_next_update_lifetime=timedelta(days=15),
        ),
    ),
}
_TIME_REASONS = (Reason.EXPIRED, Reason.NO_NEXT_UPDATE)
# Rejections that some clients take all the same; for those the model cannot tell (the
# validator stops at the first problem, so it cannot say whether the rest would pass). The
# client matrix (docs/strictness.md) showed each client taking at least one such staple:
# - cert-id-not-sha1: mozpkix matches SHA-2 CertIDs (MatchCertID, since bug 1745600) and
#   GnuTLS hashes with the entry's own algorithm (gnutls_ocsp_resp_check_crt).
# - not-first-response: mozpkix reads every entry, OpenSSL's OCSP_resp_find searches them all.
# - mixed-issuers: mozpkix skips foreign entries, GnuTLS reads only the first, and OpenSSL
#   takes an MD5-hashed entry of our issuer that mustaple cannot place.
# - trailing-data: curl parses with d2i_OCSP_RESPONSE, which ignores what follows.
# - malformed: explicit defaults and BER lengths pass OpenSSL's and GnuTLS's BER parsers, and
#   a NULL in ecdsa-with-SHA256 passes all three.
# - unknown-critical-extension, unsupported-version, delegate-is-ca: only mozpkix checks them.
# - weak-algorithm: curl verifies an MD5 signature; unsupported-algorithm: GnuTLS and curl
#   verify Ed25519, curl RSA-PSS with any parameters, mozpkix PSS with SHA-384 and SHA-512.
# - signer-unknown: GnuTLS tries the issuer whatever the ResponderID says; curl and OpenSSL
#   compare names as parsed, not as bytes.
# - wrong-issuer: GnuTLS compares only the name hash when the key hash differs.
# - cert-status-unknown: GnuTLS takes status unknown; mozpkix takes a good entry after it.
# - this-update-in-future, produced-in-future, bad-validity-window: the clients' own time
#   checks allow more (mozpkix a day of slop and no order check; GnuTLS no thisUpdate check).
_SOME_CLIENTS_TAKE: dict[Reason, frozenset[Client]] = {
    Reason.CERT_ID_NOT_SHA1: frozenset({Client.FIREFOX, Client.GNUTLS}),
    Reason.NOT_FIRST_RESPONSE: frozenset({Client.FIREFOX, Client.CURL}),
    Reason.MIXED_ISSUERS: frozenset(Client),
    Reason.TRAILING_DATA: frozenset({Client.CURL}),
    Reason.MALFORMED: frozenset(Client),
    Reason.UNKNOWN_CRITICAL_EXTENSION: frozenset({Client.GNUTLS, Client.CURL}),
    Reason.UNSUPPORTED_VERSION: frozenset({Client.GNUTLS, Client.CURL}),
    Reason.DELEGATE_IS_CA: frozenset({Client.GNUTLS, Client.CURL}),
    Reason.WEAK_ALGORITHM: frozenset({Client.CURL}),
    Reason.UNSUPPORTED_ALGORITHM: frozenset(Client),
    Reason.SIGNER_UNKNOWN: frozenset({Client.GNUTLS, Client.CURL}),
    Reason.WRONG_ISSUER: frozenset({Client.GNUTLS}),
    Reason.CERT_STATUS_UNKNOWN: frozenset({Client.FIREFOX, Client.GNUTLS}),
    Reason.THIS_UPDATE_IN_FUTURE: frozenset({Client.FIREFOX, Client.GNUTLS}),
    Reason.PRODUCED_IN_FUTURE: frozenset(Client),
    Reason.BAD_VALIDITY_WINDOW: frozenset({Client.FIREFOX}),
}
# A revoked entry (or one past its life or from the future) after a good one for the same
# certificate: GnuTLS reads the first entry, curl (OCSP_resp_find_status) the first that
# matches, so they may see `good`.
_FIRST_ENTRY_READERS = frozenset({Client.GNUTLS, Client.CURL})


def client_states(
    staple: bytes, outcome: Staple | Rejection, target: Target, now: datetime
) -> dict[Client, StapleState]:
    """How each client sees a staple, where that may differ from mustaple.

    A staple past its life (or without nextUpdate) is judged again with each client's time
    rules; a rejection some clients take anyway is `UNVALIDATED` (cannot tell) for them; so is
    a revoked or expired entry of ours behind another for the clients that read one entry.
    """
    if isinstance(outcome, Staple):
        several = not outcome.good and Note.SEVERAL_RESPONSES in outcome.notes
        return dict.fromkeys(_FIRST_ENTRY_READERS if several else (), StapleState.UNVALIDATED)
    if outcome.reason in _TIME_REASONS:
        states = {
            client: _state(staple, verify(staple, target, now - grace, _shifted(policy, grace)))
            for client, (grace, policy) in _CLIENT_TIMES.items()
        }
        return states | _first_entry_readers(staple)
    if outcome.reason is Reason.THIS_UPDATE_IN_FUTURE:
        return _some_clients_take(outcome.reason) | _first_entry_readers(staple)
    if outcome.reason is Reason.MALFORMED and not staple.startswith(b"\x30"):
        return {}  # not even a SEQUENCE: no parser takes it
    return _some_clients_take(outcome.reason)


def _some_clients_take(reason: Reason) -> dict[Client, StapleState]:
    return dict.fromkeys(_SOME_CLIENTS_TAKE.get(reason, ()), StapleState.UNVALIDATED)


def _first_entry_readers(staple: bytes) -> dict[Client, StapleState]:
    """Cannot tell for GnuTLS and curl when the staple has several entries."""
    several = _entries(staple) > 1
    return dict.fromkeys(_FIRST_ENTRY_READERS if several else (), StapleState.UNVALIDATED)


def _entries(staple: bytes) -> int:
    """How many SingleResponses a (well-formed) staple carries."""
    try:
        return len(list(ocsp.load_der_ocsp_response(staple).responses))
    except ValueError:
        return 0


def _shifted(policy: Policy, grace: timedelta) -> Policy:
    """`policy` for judging at `now - grace`: nothing signed up to `now` is in the future."""
    return Policy(
        clock_skew=DEFAULT_POLICY.clock_skew + grace,
        max_lifetime=policy.max_lifetime,
        allow_missing_next_update=policy.allow_missing_next_update,
        missing_next_update_lifetime=policy.missing_next_update_lifetime,
    )


@dataclass(frozen=True)
class Issuer:
    """The certificate that signed the leaf, and where it came from; or why there is none."""

    cert: x509.Certificate | None
    source: str | None  # "chain", "file", "aia", "bundle-or-aia"; None when not found
    problem: str = ""  # why none was found


@dataclass(frozen=True)
class Connection:
    """One handshake and what it is worth."""

    number: int  # 1 for the first
    staple: bytes | None = field(repr=False)
    tls_version: str
    handshake_completed: bool  # False: our TLS library refused the staple
    chain_verified: bool | None  # against --cafile; None without one
    outcome: Staple | Rejection | None  # the validator's judgement; None: no staple or issuer
    state: StapleState
    level: Level
    why: str
    seen_by: Mapping[Client, StapleState] = field(default_factory=dict)  # see client_states

    def accepted_by(self, client: Client, must_staple: bool) -> bool | None:
        """The client model for this handshake; a chain that does not verify fails all."""
        if self.chain_verified is False:
            return False
        return client_accepts(client, must_staple, self.seen_by.get(client, self.state))


@dataclass(frozen=True)
class CheckReport:
    """Everything `mustaple check` found and concluded; rendered by `report_lines`/`_json`."""

    level: Level
    verdict: str  # one sentence: safe for must-staple or not, and why
    now: datetime
    name: str
    serial: int
    must_staple: bool
    issuer: Issuer
    stapled: bool  # every connection carried a staple; --cert: the responder gave a valid one
    outcome: Staple | Rejection | None  # the first staple's judgement
    past_refresh_point: bool | None  # of the first staple, when it is valid
    server: str | None = None  # "host:port", None with --cert
    connections: tuple[Connection, ...] = ()  # empty with --cert
    responder_url: str | None = None  # with --cert: the URL answered (or last tried)

    @property
    def staple(self) -> Staple | None:
        return self.outcome if isinstance(self.outcome, Staple) else None

    @property
    def same_staple(self) -> bool | None:
        """Whether every stapled connection carried the same bytes (None: under two)."""
        staples = [c.staple for c in self.connections if c.staple is not None]
        return len(set(staples)) == 1 if len(staples) > 1 else None

    def clients(self) -> dict[Client, bool | None] | None:
        """Each client's verdict over every connection (None with --cert: no handshake)."""
        if not self.connections:
            return None
        return {client: self._accepts_all(client) for client in Client}

    def _accepts_all(self, client: Client) -> bool | None:
        verdicts = [c.accepted_by(client, self.must_staple) for c in self.connections]
        if False in verdicts:
            return False
        return None if None in verdicts else True


# --- Judging (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    """What every staple is judged against."""

    must_staple: bool
    now: datetime
    schedule_policy: SchedulePolicy
    issuer: Issuer


def judge(
    results: Sequence[ProbeResult],
    issuer: Issuer,
    now: datetime,
    *,
    server: str,
    verify_policy: Policy = DEFAULT_POLICY,
    schedule_policy: SchedulePolicy = DEFAULT_SCHEDULE,
) -> CheckReport:
    """The report for `results` (one per connection, in order) from `server` at `now`.

    The leaf is the first certificate of the first connection; every staple is validated
    against it and `issuer`.
    """
    if not results:
        raise ValueError("judge needs the result of at least one connection")
    if now.tzinfo is None:
        raise ValueError("now must be an aware UTC datetime")
    leaf = results[0].leaf
    must_staple = is_must_staple(leaf)
    target = Target(leaf, issuer.cert) if issuer.cert is not None else None
    judged: dict[bytes, Staple | Rejection] = {}

    def validate(staple: bytes) -> Staple | Rejection | None:
        if target is None:
            return None
        if staple not in judged:
            judged[staple] = verify(staple, target, now, verify_policy)
        return judged[staple]

    def seen_by(staple: bytes, outcome: Staple | Rejection) -> dict[Client, StapleState]:
        assert target is not None  # an outcome was found, so there is a target
        return client_states(staple, outcome, target, now)

    facts = _Facts(must_staple, now, schedule_policy, issuer)
    connections = [
        _connection(number, result, validate, facts, seen_by)
        for number, result in enumerate(results, start=1)
    ]
    first = next((c for c in connections if c.staple is not None), None)
    level, verdict = _overall(connections)
    return CheckReport(
        level=level,
        verdict=verdict,
        now=now,
        name=display_name(leaf),
        serial=leaf.serial_number,
        must_staple=must_staple,
        issuer=issuer,
        stapled=all(c.staple is not None for c in connections),
        outcome=first.outcome if first else None,
        past_refresh_point=_past_refresh_point(first.outcome if first else None, facts),
        server=server,
        connections=tuple(connections),
    )


def _connection(
    number: int,
    result: ProbeResult,
    validate: Callable[[bytes], Staple | Rejection | None],
    facts: _Facts,
    seen_by: Callable[[bytes, Staple | Rejection], dict[Client, StapleState]],
) -> Connection:
    outcome = validate(result.staple) if result.staple is not None else None
    state = _state(result.staple, outcome)
    clients = seen_by(result.staple, outcome) if result.staple and outcome else {}
    level, why = _assess(state, outcome, facts)
    if result.verified is False:
        level, why = Level.CRITICAL, "the chain does not verify against the CA file"
    return Connection(
        number=number,
        staple=result.staple,
        tls_version=result.tls_version,
        handshake_completed=result.handshake_completed,
        chain_verified=result.verified,
        outcome=outcome,
        state=state,
        level=level,
        why=why,
        seen_by=clients,
    )


def judge_responder(
    target: Target,
    fetched: FetchResult,
    now: datetime,
    *,
    issuer_source: str = "bundle-or-aia",
    schedule_policy: SchedulePolicy = DEFAULT_SCHEDULE,
) -> CheckReport:
    """The report for what the certificate's responder answered (`check --cert`).

    No server is involved: a valid good response is what a server could staple. Anything
    else is CRITICAL for a must-staple certificate (nothing to staple) and a WARNING
    otherwise; a revoked certificate is CRITICAL.
    """
    outcome: Staple | Rejection | None = fetched.staple or fetched.rejection
    issuer = Issuer(target.issuer, issuer_source)
    facts = _Facts(target.must_staple, now, schedule_policy, issuer)
    if isinstance(outcome, Staple):
        state = _state(outcome.der, outcome)
        level, why = _assess(state, outcome, facts)
    else:
        message = outcome.message if outcome else "no answer"
        state = StapleState.NONE
        level = Level.CRITICAL if target.must_staple else Level.WARNING
        why = f"the responder gives nothing a server could staple ({message})"
    return CheckReport(
        level=level,
        verdict=_sentence(level, state, why),
        now=now,
        name=target.name,
        serial=target.serial,
        must_staple=target.must_staple,
        issuer=issuer,
        stapled=fetched.staple is not None,
        outcome=outcome,
        past_refresh_point=_past_refresh_point(outcome, facts),
        responder_url=fetched.url,
    )


def _state(staple: bytes | None, outcome: Staple | Rejection | None) -> StapleState:
    if staple is None:
        return StapleState.NONE
    if outcome is None:
        return StapleState.UNVALIDATED
    if isinstance(outcome, Rejection):
        expired = outcome.reason is Reason.EXPIRED
        return StapleState.EXPIRED if expired else StapleState.INVALID
    return StapleState.GOOD if outcome.good else StapleState.REVOKED


def _assess(
    state: StapleState, outcome: Staple | Rejection | None, facts: _Facts
) -> tuple[Level, str]:
    """The level of one handshake (or one responder answer) and why, in a few words."""
    now = facts.now
    if state is StapleState.NONE:
        if facts.must_staple:
            return Level.CRITICAL, "no staple on a must-staple certificate, so clients refuse it"
        return Level.WARNING, "no staple; fine for this certificate, which is not must-staple"
    if state is StapleState.UNVALIDATED:
        return Level.UNKNOWN, f"a staple was sent but cannot be validated: {facts.issuer.problem}"
    if isinstance(outcome, Rejection):
        return Level.CRITICAL, f"invalid staple [{outcome.code}] {outcome.message}"
    assert isinstance(outcome, Staple)
    if not outcome.good:
        return Level.CRITICAL, "the staple says the certificate is REVOKED"
    if _past_refresh_point(outcome, facts):
        left = f"{outcome.fraction_left(now):.0%} of its window left"
        return Level.WARNING, f"the staple is past its refresh point, {left}"
    return Level.OK, f"a valid good staple, {human_duration(outcome.seconds_left(now))} left"


def _past_refresh_point(outcome: Staple | Rejection | None, facts: _Facts) -> bool | None:
    if not isinstance(outcome, Staple):
        return None
    return facts.now >= refresh_point(outcome, facts.schedule_policy)


def _overall(connections: Sequence[Connection]) -> tuple[Level, str]:
    """The worst connection decides; the verdict says which connections it concerns."""
    worst = max(connections, key=lambda c: _SEVERITY[c.level])
    numbers = [c.number for c in connections if (c.level, c.state) == (worst.level, worst.state)]
    why = worst.why
    if len(connections) > 1:
        why += f" ({_which(numbers, len(connections))})"
    return worst.level, _sentence(worst.level, worst.state, why)


def _sentence(level: Level, state: StapleState | None, why: str) -> str:
    if level is Level.OK:
        return f"safe for must-staple: {why}"
    if level is Level.UNKNOWN:
        return f"cannot tell: {why}"
    if level is Level.WARNING and state is StapleState.GOOD:
        return f"safe for must-staple for now, but {why}"
    return f"not safe for must-staple: {why}"


def _which(numbers: Sequence[int], total: int) -> str:
    if len(numbers) == total:
        return "both connections" if total == 2 else f"all {total} connections"
    listed = ", ".join(str(n) for n in numbers)
    return f"connection{'s' * (len(numbers) > 1)} {listed} of {total}"


# --- Rendering (pure) ---------------------------------------------------------------------------


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
    return f"valid, REVOKED at {_time(staple.revocation_time)} ({reason})"


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else "unknown"


def _time_text(report: CheckReport) -> str:
    staple = report.staple
    if staple is None:
        return "n/a (no valid staple)"
    left = human_duration(staple.seconds_left(report.now))
    fraction = staple.fraction_left(report.now)
    past = ", past its refresh point" if report.past_refresh_point else ""
    return (
        f"{left} (until {_time(staple.effective_expiry)}), {fraction:.0%} of its window left{past}"
    )


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
        "level": Level.UNKNOWN.name,
        "exit_code": int(Level.UNKNOWN),
        "verdict": message,
    }


# --- I/O ----------------------------------------------------------------------------------------


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """HOST, HOST:PORT, [V6]:PORT or a bare IPv6 address -> (host, port); ValueError if not."""
    host, port = text, str(default_port)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            host = ""
        port = rest[1:] or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST[:PORT] with a port from 1 to 65535")
    return host, int(port)


async def check_server(
    host: str,
    port: int,
    *,
    servername: str | None = None,
    tls_version: str | None = None,
    cafile: str | None = None,
    issuer_path: str | None = None,
    connections: int = 1,
    starttls: str | None = None,
) -> CheckReport:
    """Connect `connections` times, one after the other, find the issuer and judge.

    Raises ProbeError when the server cannot be probed, InputError for an unreadable file.
    """
    results = [
        await probe_async(
            host,
            port,
            servername=servername,
            tls_version=tls_version,
            cafile=cafile,
            starttls=starttls,
        )
        for _ in range(connections)
    ]
    issuer = await _server_issuer(results[0].chain, issuer_path, cafile)
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return judge(results, issuer, utc_now(), server=server)


async def _server_issuer(
    chain: Sequence[x509.Certificate], issuer_path: str | None, cafile: str | None = None
) -> Issuer:
    """The leaf's issuer: from the served chain, else `issuer_path`, else `cafile` (the
    issuing CA may be among its roots), else AIA caIssuers."""
    leaf = chain[0]
    found = find_issuer(leaf, chain[1:])
    if found is not None:
        return Issuer(found, "chain")
    if issuer_encoded_differently(leaf, chain[1:]) is not None:
        return Issuer(
            None,
            None,
            "the server sends the issuer, but the certificate names it encoded differently "
            "(Firefox and GnuTLS compare names as bytes and find no issuer; the CA must "
            "reissue it)",
        )
    if issuer_path is not None:
        found = _signer_in(issuer_path, "issuer certificate", leaf)
        if found is not None:
            return Issuer(found, "file")
        return Issuer(None, None, f"{issuer_path} did not sign {display_name(leaf)}")
    found = _signer_in(cafile, "CA file", leaf) if cafile is not None else None
    if found is not None:
        return Issuer(found, "cafile")
    return await _issuer_from_aia(leaf)


def _signer_in(path: str, what: str, leaf: x509.Certificate) -> x509.Certificate | None:
    return find_issuer(leaf, parse_certificates(read_input(path, what), source=path))


async def _issuer_from_aia(leaf: x509.Certificate) -> Issuer:
    urls = ca_issuer_urls(leaf)
    if not urls:
        return Issuer(
            None,
            None,
            "the server does not send the issuer and the certificate names no caIssuers "
            "URL; pass it with --issuer FILE",
        )
    problems = []
    for url in urls:
        try:
            found = find_issuer(leaf, await fetch_issuer(url))
        except InputError as exc:
            problems.append(str(exc))
            continue
        if found is not None:
            return Issuer(found, "aia")
        problems.append(f"the certificate at {url} did not sign {display_name(leaf)}")
    return Issuer(None, None, "no issuer over AIA: " + "; ".join(problems))


async def check_responder(
    cert_path: str, issuer_path: str | None = None, urls: Sequence[str] = ()
) -> CheckReport:
    """Ask the certificate's responder (or `urls` first) directly, and judge its answer.

    Raises InputError for an unusable certificate or issuer.
    """
    target = await load_target(cert_path, issuer_path)
    fetched = await fetch_staple(target, urls=urls)
    source = "file" if issuer_path is not None else "bundle-or-aia"
    return judge_responder(target, fetched, utc_now(), issuer_source=source)


# --- The command --------------------------------------------------------------------------------


@contextlib.contextmanager
def _usage_errors_are_unknown() -> Iterator[None]:
    """click exits 2 on a usage error, which a monitoring system reads as CRITICAL."""
    try:
        yield
    except click.UsageError as exc:
        click.echo(f"UNKNOWN usage error: {exc.format_message()} (see mustaple check --help)")
        raise click.exceptions.Exit(int(Level.UNKNOWN)) from exc


class _CheckCommand(click.Command):
    """A click command whose usage errors exit 3 (UNKNOWN) with one line on stdout."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with _usage_errors_are_unknown():
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        with _usage_errors_are_unknown():
            return super().invoke(ctx)


@click.command("check", cls=_CheckCommand)
@click.argument("address", metavar="HOST[:PORT]", required=False)
@click.option("--servername", help="SNI name to send (default: HOST unless it is an IP).")
@click.option("--tls", "tls_version", type=click.Choice(["1.2", "1.3"]), help="TLS version.")
@click.option("--cafile", help="PEM roots: also check that the served chain verifies.")
@click.option("--issuer", help="Issuer certificate file, if the server does not send it.")
@click.option(
    "--connections",
    type=click.IntRange(1, MAX_CONNECTIONS),
    default=1,
    show_default=True,
    help="Connect this many times, one after the other.",
)
@click.option(
    "--starttls",
    type=click.Choice(STARTTLS_PROTOCOLS),
    help="Speak this protocol's STARTTLS first (default port: 25 for smtp).",
)
@click.option("--cert", help="No server: ask this certificate's OCSP responder directly.")
@click.option("--url", "urls", multiple=True, help="With --cert: responder URL to try first.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def check_command(
    ctx: click.Context,
    *,
    address: str | None,
    servername: str | None,
    tls_version: str | None,
    cafile: str | None,
    issuer: str | None,
    connections: int,
    starttls: str | None,
    cert: str | None,
    urls: tuple[str, ...],
    as_json: bool,
) -> None:
    """Check that HOST[:PORT] (default port 443) staples safely for must-staple.

    Or, with --cert CERT and no HOST, check what the certificate's responder answers.
    Exit codes (monitoring-plugin convention): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    (including usage errors).
    """
    if (address is None) == (cert is None):
        raise click.UsageError("give either HOST[:PORT] or --cert CERT")
    if cert is not None:
        server_only = {
            "--servername": servername is not None,
            "--tls": tls_version is not None,
            "--cafile": cafile is not None,
            "--connections": connections != 1,
            "--starttls": starttls is not None,
        }
        given = [name for name, used in server_only.items() if used]
        if given:
            raise click.UsageError(f"{', '.join(given)}: only for checking a server")
        work = check_responder(cert, issuer, urls)
    else:
        assert address is not None
        if urls:
            raise click.UsageError("--url: only with --cert")
        host, port = _address(address, STARTTLS_PORTS.get(starttls or "", DEFAULT_PORT))
        work = check_server(
            host,
            port,
            servername=servername,
            tls_version=tls_version,
            cafile=cafile,
            issuer_path=issuer,
            connections=connections,
            starttls=starttls,
        )
    ctx.exit(int(_run(work, as_json)))


def _address(text: str, default_port: int) -> tuple[str, int]:
    try:
        return parse_address(text, default_port)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="HOST[:PORT]") from None


def _run(work: Coroutine[Any, Any, CheckReport], as_json: bool) -> Level:
    """Run the check; print the report, or one UNKNOWN line when nothing could be checked."""
    try:
        report = asyncio.run(work)
    except (ProbeError, InputError) as exc:
        if as_json:
            click.echo(json.dumps(error_json(str(exc)), indent=2))
        else:
            click.echo(f"UNKNOWN {exc}")
        return Level.UNKNOWN
    if as_json:
        click.echo(json.dumps(report_json(report), indent=2))
    else:
        click.echo("\n".join(report_lines(report)))
    return report.level
