"""The judge of `mustaple check`: what was served, the issuer and `now` in, a `CheckReport` out.

Pure: `judge` (probe results of a live server) and `judge_responder` (what a certificate's
responder answered) read no clock, file or socket, so every verdict is tested in microseconds.
The client model (`client_accepts`, `client_states`) says whether Firefox, GnuTLS and
`curl --cert-status` would accept each handshake; docs/check.md explains it and its limits.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509 import ocsp

from mustaple.core.certs import Target, display_name, is_must_staple
from mustaple.core.reasons import Note, Reason, Rejection
from mustaple.core.render import human_duration
from mustaple.core.schedule import DEFAULT_SCHEDULE, SchedulePolicy, refresh_point
from mustaple.core.severity import Severity
from mustaple.core.verify import DEFAULT_POLICY, Policy, Staple, declares_unused_bits, verify

if TYPE_CHECKING:
    from mustaple.adapters.probe import ProbeResult
    from mustaple.core.fetchtypes import FetchResult

__all__ = [
    "CheckReport",
    "Client",
    "Connection",
    "Issuer",
    "StapleState",
    "client_accepts",
    "client_states",
    "judge",
    "judge_responder",
]


# How bad each severity is when several connections disagree: CRITICAL wins, then UNKNOWN.
# A verdict's severity is also the exit code of `mustaple check` (docs/check.md).
_RANK = {Severity.OK: 0, Severity.WARNING: 1, Severity.UNKNOWN: 2, Severity.CRITICAL: 3}


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
# - unknown-critical-extension, unsupported-version, delegate-is-ca, bad-sct-list: only
#   mozpkix checks them.
# - delegate-critical-extension: Firefox and curl handle a critical policyConstraints, GnuTLS
#   does not.
# - delegate-bad-key-usage: GnuTLS reads no delegate's keyUsage; mozpkix takes one with no
#   bit set, OpenSSL unused bits set and bytes after the BIT STRING.
# - ambiguous-signer: only GnuTLS verifies with the first certificate matching the
#   ResponderID; mozpkix and OpenSSL take the issuer (or search on).
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
    Reason.BAD_SCT_LIST: frozenset({Client.GNUTLS, Client.CURL}),
    Reason.AMBIGUOUS_SIGNER: frozenset({Client.FIREFOX, Client.CURL}),
    Reason.DELEGATE_CRITICAL_EXTENSION: frozenset({Client.FIREFOX, Client.CURL}),
    Reason.DELEGATE_BAD_KEY_USAGE: frozenset(Client),
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
    if outcome.reason is Reason.BAD_SIGNATURE and _unused_bits(staple):
        return {Client.GNUTLS: StapleState.UNVALIDATED}  # GnuTLS reads past the count
    return _some_clients_take(outcome.reason)


def _unused_bits(staple: bytes) -> bool:
    """Whether a staple's signature BIT STRING declares unused bits."""
    try:
        signature = ocsp.load_der_ocsp_response(staple).signature
    except ValueError:
        return False
    return declares_unused_bits(staple, signature)


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
    level: Severity
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

    level: Severity
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
        level, why = Severity.CRITICAL, "the chain does not verify against the CA file"
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
        level = Severity.CRITICAL if target.must_staple else Severity.WARNING
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
) -> tuple[Severity, str]:
    """The level of one handshake (or one responder answer) and why, in a few words."""
    now = facts.now
    if state is StapleState.NONE:
        if facts.must_staple:
            return Severity.CRITICAL, "no staple on a must-staple certificate, so clients refuse it"
        return Severity.WARNING, "no staple; fine for this certificate, which is not must-staple"
    if state is StapleState.UNVALIDATED:
        return (
            Severity.UNKNOWN,
            f"a staple was sent but cannot be validated: {facts.issuer.problem}",
        )
    if isinstance(outcome, Rejection):
        return Severity.CRITICAL, f"invalid staple [{outcome.code}] {outcome.message}"
    assert isinstance(outcome, Staple)
    if not outcome.good:
        return Severity.CRITICAL, "the staple says the certificate is REVOKED"
    if _past_refresh_point(outcome, facts):
        left = f"{outcome.fraction_left(now):.0%} of its window left"
        return Severity.WARNING, f"the staple is past its refresh point, {left}"
    return Severity.OK, f"a valid good staple, {human_duration(outcome.seconds_left(now))} left"


def _past_refresh_point(outcome: Staple | Rejection | None, facts: _Facts) -> bool | None:
    if not isinstance(outcome, Staple):
        return None
    return facts.now >= refresh_point(outcome, facts.schedule_policy)


def _overall(connections: Sequence[Connection]) -> tuple[Severity, str]:
    """The worst connection decides; the verdict says which connections it concerns."""
    worst = max(connections, key=lambda c: _RANK[c.level])
    numbers = [c.number for c in connections if (c.level, c.state) == (worst.level, worst.state)]
    why = worst.why
    if len(connections) > 1:
        why += f" ({_which(numbers, len(connections))})"
    return worst.level, _sentence(worst.level, worst.state, why)


def _sentence(level: Severity, state: StapleState | None, why: str) -> str:
    if level is Severity.OK:
        return f"safe for must-staple: {why}"
    if level is Severity.UNKNOWN:
        return f"cannot tell: {why}"
    if level is Severity.WARNING and state is StapleState.GOOD:
        return f"safe for must-staple for now, but {why}"
    return f"not safe for must-staple: {why}"


def _which(numbers: Sequence[int], total: int) -> str:
    if len(numbers) == total:
        return "both connections" if total == 2 else f"all {total} connections"
    listed = ", ".join(str(n) for n in numbers)
    return f"connection{'s' * (len(numbers) > 1)} {listed} of {total}"
