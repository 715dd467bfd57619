"""Stable reason codes: why a response was rejected, and notes on an accepted one.

A reason is data: a stable code (used in logs, JSON, metrics and hooks), a short sentence a
person understands, and whether trying again later may help. `docs/reasons.md` lists every code;
a test keeps the two in step. Codes never change meaning once published.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Note", "Reason", "Rejection"]


class Reason(enum.Enum):
    """Why no usable staple came out of an attempt."""

    def __init__(self, code: str, summary: str, retryable: bool) -> None:
        self.code = code
        self.summary = summary
        self.retryable = retryable

    # Transport and HTTP
    TIMEOUT = ("timeout", "the responder did not answer in time", True)
    CONNECTION_FAILED = ("connection-failed", "could not talk to the responder", True)
    HTTP_SERVER_ERROR = ("http-server-error", "the responder answered with an HTTP error", True)
    HTTP_CLIENT_ERROR = ("http-client-error", "the responder refused the HTTP request", False)
    TOO_MANY_REDIRECTS = ("too-many-redirects", "the responder redirected too often", False)
    CONTENT_TYPE = (
        "content-type",
        "the answer is not application/ocsp-response (an error page?)",
        True,
    )
    EMPTY_BODY = ("empty-body", "the responder sent an empty body", True)
    TOO_LARGE = ("too-large", "the answer is larger than the size cap", False)
    # The outbound HTTP proxy (the responder was not reached, or we cannot tell)
    PROXY_UNREACHABLE = ("proxy-unreachable", "could not connect to the HTTP proxy", True)
    PROXY_REFUSED = ("proxy-refused", "the HTTP proxy refused to forward the request", False)
    PROXY_ERROR = (
        "proxy-error",
        "the HTTP proxy answered with its own error page (it could not reach the responder?)",
        True,
    )
    PROXY_INVALID = (
        "proxy-invalid",
        "the proxy setting is not a usable http:// proxy URL",
        False,
    )
    # Structure
    MALFORMED = ("malformed", "the answer is not a well-formed DER OCSP response", True)
    TRAILING_DATA = ("trailing-data", "the OCSP response is followed by extra bytes", True)
    NOT_BASIC = ("not-basic", "the response type is not id-pkix-ocsp-basic", False)
    UNSUPPORTED_VERSION = ("unsupported-version", "the response is not version 1", False)
    UNKNOWN_CRITICAL_EXTENSION = (
        "unknown-critical-extension",
        "the response carries a critical extension Firefox does not understand",
        False,
    )
    BAD_SCT_LIST = (
        "bad-sct-list",
        "the SCT list of our SingleResponse is empty, repeated or not an OCTET STRING",
        False,
    )
    # responseStatus other than successful
    MALFORMED_REQUEST = ("malformed-request", "the responder says our request is malformed", False)
    INTERNAL_ERROR = ("internal-error", "the responder reports an internal error", True)
    TRY_LATER = ("try-later", "the responder asks us to try later", True)
    SIG_REQUIRED = ("sig-required", "the responder wants signed requests", False)
    UNAUTHORIZED = (
        "unauthorized",
        "the responder is not authoritative for this certificate",
        False,
    )
    # Which certificate the answer is about
    CERT_NOT_IN_RESPONSE = (
        "cert-not-in-response",
        "the response is about another certificate (serial mismatch)",
        True,
    )
    WRONG_ISSUER = (
        "wrong-issuer",
        "the response names our serial under another issuer (name or key hash mismatch)",
        False,
    )
    UNSUPPORTED_HASH = ("unsupported-hash", "the CertID uses an unsupported hash", False)
    CERT_ID_NOT_SHA1 = (
        "cert-id-not-sha1",
        "the CertID is not hashed with SHA-1, the only one curl and OpenSSL look for",
        False,
    )
    NOT_FIRST_RESPONSE = (
        "not-first-response",
        "the first SingleResponse is about another certificate (GnuTLS reads only the first)",
        False,
    )
    MIXED_ISSUERS = (
        "mixed-issuers",
        "the response also covers certificates of another issuer (OpenSSL refuses that)",
        False,
    )
    # Who signed it
    SIGNER_UNKNOWN = (
        "signer-unknown",
        "the signer is neither the issuer nor a certificate included in the response",
        False,
    )
    AMBIGUOUS_SIGNER = (
        "ambiguous-signer",
        "another certificate in the response matches the ResponderID first (GnuTLS takes it "
        "for the signer)",
        False,
    )
    BAD_SIGNATURE = ("bad-signature", "the response signature does not verify", False)
    WEAK_ALGORITHM = ("weak-algorithm", "the response is signed with a broken algorithm", False)
    UNSUPPORTED_ALGORITHM = (
        "unsupported-algorithm",
        "the response is signed with an unsupported algorithm",
        False,
    )
    DELEGATE_NOT_ISSUED_BY_ISSUER = (
        "delegate-not-issued-by-issuer",
        "the delegated responder certificate was not issued by the certificate's issuer",
        False,
    )
    DELEGATE_NO_OCSP_SIGNING = (
        "delegate-no-ocsp-signing",
        "the delegated responder certificate lacks the id-kp-OCSPSigning usage",
        False,
    )
    DELEGATE_EXPIRED = (
        "delegate-expired",
        "the delegated responder certificate has expired",
        False,
    )
    DELEGATE_NOT_YET_VALID = (
        "delegate-not-yet-valid",
        "the delegated responder certificate is not valid yet",
        True,
    )
    DELEGATE_IS_CA = ("delegate-is-ca", "the delegated responder certificate is a CA", False)
    DELEGATE_CRITICAL_EXTENSION = (
        "delegate-critical-extension",
        "the delegated responder certificate has a critical extension clients do not handle",
        False,
    )
    DELEGATE_BAD_KEY_USAGE = (
        "delegate-bad-key-usage",
        "the delegated responder certificate's keyUsage is empty or not well-formed",
        False,
    )
    # Time
    PRODUCED_IN_FUTURE = ("produced-in-future", "producedAt is in the future", True)
    THIS_UPDATE_IN_FUTURE = ("this-update-in-future", "thisUpdate is in the future", True)
    NO_NEXT_UPDATE = ("no-next-update", "the response has no nextUpdate", False)
    BAD_VALIDITY_WINDOW = (
        "bad-validity-window",
        "nextUpdate is not after thisUpdate",
        True,
    )
    EXPIRED = ("expired", "the response has expired", True)
    # The answer itself
    CERT_STATUS_UNKNOWN = (
        "cert-status-unknown",
        "the responder does not know this certificate (status unknown)",
        True,
    )
    # Compared with the staple in hand
    OLDER_THAN_CURRENT = (
        "older-than-current",
        "the response is older than the staple already held",
        True,
    )
    EXPIRES_SOONER = (
        "expires-sooner",
        "the response expires before the staple already held",
        True,
    )
    # About the certificate rather than the response
    NO_OCSP_URL = ("no-ocsp-url", "the certificate names no OCSP responder", False)
    CERT_UNUSABLE = (
        "cert-unusable",
        "the certificate file cannot be used (unreadable, or its issuer is not found)",
        False,
    )
    CERT_EXPIRED = (
        "cert-expired",
        "the certificate itself has expired: no staple makes it valid, so none is fetched",
        False,
    )
    KEEPER_FAULT = (
        "keeper-fault",
        "mustaple met an unexpected error with this certificate; the others go on",
        False,
    )
    BAD_URL = ("bad-url", "the responder URL is malformed; nothing was sent", False)

    @property
    def hint(self) -> str:
        """What a person can do about it."""
        return _HINTS.get(self, _RETRY_HINT if self.retryable else "report it to the CA")

    @classmethod
    def from_code(cls, code: str) -> Reason:
        for reason in cls:
            if reason.code == code:
                return reason
        raise ValueError(f"unknown reason code {code!r}")


class Note(enum.Enum):
    """Something worth an operator's attention about a response that was accepted."""

    def __init__(self, code: str, summary: str) -> None:
        self.code = code
        self.summary = summary

    LONG_WINDOW = (
        "long-window",
        "the validity window is over the clients' maximum; the staple is treated as expiring "
        "at thisUpdate plus that maximum",
    )
    BEYOND_CERT_EXPIRY = (
        "beyond-cert-expiry",
        "nextUpdate is after the certificate's own notAfter",
    )
    NEXT_UPDATE_MISSING = (
        "next-update-missing",
        "no nextUpdate (accepted by the lenient option); treated as valid for one day",
    )
    SEVERAL_RESPONSES = (
        "several-responses",
        "the response carries SingleResponses for other certificates too (HAProxy refuses those)",
    )
    DELEGATED_SIGNER_EXPIRES_FIRST = (
        "delegated-signer-expires-first",
        "the delegated responder certificate expires before nextUpdate",
    )


_RETRY_HINT = "worth retrying later; a staple in hand stays valid until it expires"
_HINTS = {
    Reason.HTTP_CLIENT_ERROR: "check the responder URL (override it with --url)",
    Reason.TOO_MANY_REDIRECTS: "check the responder URL; point --url at the final address",
    Reason.TOO_LARGE: "the responder sends too much; check the URL or raise the size cap",
    Reason.PROXY_UNREACHABLE: "start the proxy or fix the proxy setting (the proxy key, "
    "HTTP_PROXY/HTTPS_PROXY); the CA was not asked",
    Reason.PROXY_REFUSED: "let this host through the proxy (its ACL, filter or credentials), "
    "or add the responder to NO_PROXY; the CA was not asked",
    Reason.PROXY_ERROR: "look in the proxy's log: it could not reach the responder; " + _RETRY_HINT,
    Reason.PROXY_INVALID: "fix the proxy key, or HTTP_PROXY/HTTPS_PROXY/ALL_PROXY, "
    'to http://HOST:PORT; proxy = "" turns the proxy off',
    Reason.NOT_BASIC: "the responder speaks a response type no TLS client accepts; ask the CA",
    Reason.UNSUPPORTED_VERSION: "no TLS client accepts this response; ask the CA",
    Reason.UNKNOWN_CRITICAL_EXTENSION: "Firefox refuses this response; the CA must drop the "
    "critical flag (a critical nonce included)",
    Reason.BAD_SCT_LIST: "Firefox refuses this response; report it to the CA",
    Reason.MALFORMED: "often a truncated answer or a proxy, so worth retrying later (a staple "
    "in hand stays valid until it expires); if it lasts, report it to the CA",
    Reason.TRAILING_DATA: "often a proxy, so worth retrying later (a staple in hand stays "
    "valid until it expires); if it lasts, report it to the CA: Firefox refuses it",
    Reason.BAD_VALIDITY_WINDOW: "worth retrying later (a staple in hand stays valid until it "
    "expires); if it lasts, the responder signs impossible times: report it to the CA",
    Reason.MALFORMED_REQUEST: "try --hash sha1 (the default) or another responder URL",
    Reason.SIG_REQUIRED: "this responder wants signed requests, which TLS servers never send",
    Reason.UNAUTHORIZED: "the URL or issuer is wrong for this certificate; check --url and "
    "--issuer",
    Reason.WRONG_ISSUER: "the issuer given is not the one the responder knows; check --issuer",
    Reason.UNSUPPORTED_HASH: "the responder answers with a CertID hash no client matches; the "
    "CA must answer with SHA-1",
    Reason.CERT_ID_NOT_SHA1: "fetch with --hash sha1 (the default); if the responder answers "
    "so anyway, the CA must change it",
    Reason.NOT_FIRST_RESPONSE: "GnuTLS clients refuse it; the CA must put the certificate's "
    "own SingleResponse first",
    Reason.MIXED_ISSUERS: "curl and OpenSSL clients refuse it; the CA must answer for this "
    "issuer's certificates only",
    Reason.SIGNER_UNKNOWN: "check --issuer; otherwise the responder is misconfigured",
    Reason.AMBIGUOUS_SIGNER: "GnuTLS clients refuse it; the CA must include no other "
    "certificate with the signer's name or key (a re-issued, cross-signed or old copy of the "
    "issuer's)",
    Reason.BAD_SIGNATURE: "do not staple this; check --issuer, otherwise report it to the CA",
    Reason.WEAK_ALGORITHM: "no client accepts this signature; ask the CA",
    Reason.UNSUPPORTED_ALGORITHM: "a strict client refuses this signature algorithm; the CA "
    "must sign with RSA (PKCS#1 v1.5, or PSS with SHA-256 and a 32-byte salt) or ECDSA",
    Reason.DELEGATE_NOT_ISSUED_BY_ISSUER: "the responder is misconfigured; report it to the CA",
    Reason.DELEGATE_NO_OCSP_SIGNING: "the responder is misconfigured; report it to the CA",
    Reason.DELEGATE_EXPIRED: "the CA let its OCSP signing certificate expire; report it",
    Reason.DELEGATE_NOT_YET_VALID: "check this machine's clock (NTP); a responder certificate "
    "the CA just issued becomes valid soon: " + _RETRY_HINT,
    Reason.DELEGATE_CRITICAL_EXTENSION: "a strict client (OpenSSL, GnuTLS or Firefox) "
    "refuses this responder certificate; report it to the CA",
    Reason.DELEGATE_BAD_KEY_USAGE: "Firefox or OpenSSL refuses this responder certificate; "
    "report it to the CA",
    Reason.DELEGATE_IS_CA: "the responder is misconfigured; report it to the CA",
    Reason.NO_NEXT_UPDATE: "clients accept it (Firefox for a day after thisUpdate); allow it "
    "with --allow-missing-next-update (keeper: policy.allow_missing_next_update = true), or "
    "ask the CA to set nextUpdate",
    Reason.NO_OCSP_URL: "use a CA that runs OCSP, or give a responder with --url (`urls` in "
    "the [[certificates]] entry)",
    Reason.CERT_UNUSABLE: "fix the file, or name the issuer with --issuer (`issuer` in the "
    "[[certificates]] entry)",
    Reason.CERT_EXPIRED: "renew the certificate: the keeper takes the renewed file at its next "
    "pass",
    Reason.KEEPER_FAULT: "report it with the log line; a refresh that met it is retried with the "
    "back-off (the staple in hand kept); a file whose load met it, when the file changes or at "
    "a reload",
    Reason.BAD_URL: "fix the URL in `urls` (or --url); if it is the certificate's AIA OCSP "
    "URL, give a working responder in `urls` or --url, or reissue the certificate",
    Reason.PRODUCED_IN_FUTURE: "check this machine's clock (NTP); " + _RETRY_HINT,
    Reason.THIS_UPDATE_IN_FUTURE: "check this machine's clock (NTP); " + _RETRY_HINT,
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an attempt gave no usable staple: a stable reason plus the specifics."""

    reason: Reason
    detail: str = ""

    @property
    def code(self) -> str:
        return self.reason.code

    @property
    def retryable(self) -> bool:
        return self.reason.retryable

    @property
    def hint(self) -> str:
        """What a person can do about it."""
        return self.reason.hint

    @property
    def message(self) -> str:
        """One line for a person: the reason, then the specifics when there are any."""
        return f"{self.reason.summary}: {self.detail}" if self.detail else self.reason.summary

    @classmethod
    def read(cls, code: str, message: str) -> Rejection:
        """The rejection whose `code` and `message` were written down (a status row), so
        that its `message` reads as written; ValueError for a code this version does not
        know."""
        reason = Reason.from_code(code)
        head = f"{reason.summary}: "
        if message.startswith(head):
            return cls(reason, message[len(head) :])
        return cls(reason, "" if message == reason.summary else message)


def markdown_tables() -> str:
    """The reason and note tables of docs/reasons.md (tests/test_docs.py checks them)."""
    rows = [
        "| code | retry helps | meaning | what to do |",
        "| --- | --- | --- | --- |",
        *(
            f"| `{r.code}` | {'yes' if r.retryable else 'no'} | {r.summary} | {r.hint} |"
            for r in Reason
        ),
        "",
        "| note | meaning |",
        "| --- | --- |",
        *(f"| `{n.code}` | {n.summary} |" for n in Note),
    ]
    return "\n".join(rows) + "\n"
