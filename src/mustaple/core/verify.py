"""Validation of OCSP responses: bytes + target + now -> Staple or Rejection. Pure.

As strict as the strictest client (Firefox's mozpkix, GnuTLS, curl --cert-status) and a bit
more: strict DER, a basic v1 response, no critical extension, the SingleResponse for exactly
our CertID (issuer name hash, issuer key hash and serial) first, a signature by the issuer or
by a delegated responder it authorised, and times that make sense at `now`. Each rule that a
client imposes names the client's source in a comment; where mustaple is stricter than every
client, docs/reasons.md ("Deliberate choices") says so and why.

Nothing here reads the clock, a file or the network: `now` is an argument, so a test can walk
a response through its whole life in microseconds. Bad data never raises: every problem is a
`Rejection` with a stable reason code (see `reasons` and docs/reasons.md).

Speed (docs/performance.md): cryptography's parser is strict DER too, so our own DER walk
(`mustaple.core.der`) runs only where it adds something (see `_parse`); what a validation needs to
know about its Target and issuer is worked out once and cached (`_target_facts`).
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from mustaple.core import der
from mustaple.core.certs import (
    Target,
    encoded_names,
    extensions_of,
    raw_extensions,
    signed_by,
)
from mustaple.core.reasons import Note, Reason, Rejection
from mustaple.core.render import human_time
from mustaple.core.request import HASHES, issuer_key_bits, make_cert_id

__all__ = [
    "Dated",
    "HttpAnswer",
    "Policy",
    "Staple",
    "check_http",
    "compare",
    "declares_unused_bits",
    "judge",
    "may_replace",
    "strictly_newer",
    "verify",
]

OCSP_CONTENT_TYPE = "application/ocsp-response"
_BASIC = "1.3.6.1.5.5.7.48.1.1"
_STATUS_REASONS = {
    1: Reason.MALFORMED_REQUEST,
    2: Reason.INTERNAL_ERROR,
    3: Reason.TRY_LATER,
    5: Reason.SIG_REQUIRED,
    6: Reason.UNAUTHORIZED,
}
_WEAK_SIGNATURES = {
    "1.2.840.113549.1.1.2": "md2WithRSAEncryption",
    "1.2.840.113549.1.1.3": "md4WithRSAEncryption",
    "1.2.840.113549.1.1.4": "md5WithRSAEncryption",
}
_RSA_PKCS1: dict[str, hashes.HashAlgorithm] = {
    "1.2.840.113549.1.1.5": hashes.SHA1(),
    "1.2.840.113549.1.1.11": hashes.SHA256(),
    "1.2.840.113549.1.1.12": hashes.SHA384(),
    "1.2.840.113549.1.1.13": hashes.SHA512(),
}
_ECDSA: dict[str, ec.ECDSA] = {
    "1.2.840.10045.4.1": ec.ECDSA(hashes.SHA1()),
    "1.2.840.10045.4.3.2": ec.ECDSA(hashes.SHA256()),
    "1.2.840.10045.4.3.3": ec.ECDSA(hashes.SHA384()),
    "1.2.840.10045.4.3.4": ec.ECDSA(hashes.SHA512()),
}
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()
_RSA_PSS = "1.2.840.113549.1.1.10"
# The only RSASSA-PSS parameters all strict clients take. mozpkix takes three sets (pkixder.cpp,
# SignatureAlgorithmIdentifierValue), encoded as the CA/Browser Forum Baseline Requirements
# (7.1.3.2.1) say: SHA-256/384/512, MGF1 with the same hash, a salt as long as the hash.
# GnuTLS reads only the OID (lib/x509/ocsp.c, gnutls_ocsp_resp_get_signature_algorithm:
# gnutls_oid_to_sign of "signatureAlgorithm.algorithm"), which it takes for RSA-PSS with
# SHA-256 and a 32-byte salt: of the three, only that one verifies there.
_PSS_SHA256 = bytes.fromhex(
    "3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d0609"
    "6086480165030402010500a203020120"
)
# EdDSA signers: cryptography verifies them, but mozpkix refuses any algorithm outside its list
# (pkixder.cpp, SignatureAlgorithmIdentifierValue: ERROR_CERT_SIGNATURE_ALGORITHM_DISABLED).
_EDDSA = {"1.3.101.112": "Ed25519", "1.3.101.113": "Ed448"}
_SIGNATURE_ALGORITHMS = {*_RSA_PKCS1, _RSA_PSS, *_ECDSA}
# How a delegated responder's own certificate may be signed, and on which curves its key may
# be, for mozpkix (pkixcheck.cpp CheckSignatureAlgorithm, CheckPublicKey: SHA-256/384/512 with
# RSA or ECDSA, RSASSA-PSS, and the NIST curves P-256/P-384/P-521); GnuTLS refuses secp256k1.
_DELEGATE_SIGNATURES = {
    "1.2.840.113549.1.1.11", "1.2.840.113549.1.1.12", "1.2.840.113549.1.1.13", _RSA_PSS,
    "1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4",
}  # fmt: skip
_DELEGATE_CURVES = ("secp256r1", "secp384r1", "secp521r1")
# mozpkix keeps the certificates of a response in an array of 8 (pkixutil.h,
# NonOwningDERArray::MAX_LENGTH) and refuses a response with more
_MAX_CERTS = 8
_NULL = bytes([der.NULL, 0])
# Signature algorithms whose parameters cryptography's parser pins down (absent, or a NULL for
# the RSA ones): for these our DER walk would find nothing cryptography has not already
# refused, so a response signed with one of them is not walked (see `_parse`). Not in the set:
# RSASSA-PSS (we read its parameters ourselves), the broken ones (refused by name below) and
# ecdsa-with-SHA1, which cryptography parses as an unknown algorithm with any parameters.
_PLAIN_ALGORITHMS = {
    x509.ObjectIdentifier(oid): oid for oid in [*_RSA_PKCS1, *_ECDSA] if oid != "1.2.840.10045.4.1"
}  # keyed by cryptography's ObjectIdentifier: a lookup costs half of `.dotted_string`
# The one single extension mozpkix understands, so may be critical (pkixocsp.cpp,
# RememberSingleExtension): the SCT list of RFC 6962. It understands no response extension
# at all (ExtensionNotUnderstood), a nonce included.
_SCT_LIST = "1.3.6.1.4.1.11129.2.4.5"
_SUBJECT_KEY_ID = "2.5.29.14"
_KEY_USAGE = "2.5.29.15"
# Certificate extensions that mozpkix (pkixcert.cpp, BackCert::RememberExtension), OpenSSL
# (v3_purp.c, X509_supported_extension) and GnuTLS (lib/x509/supported_exts.gperf, read by
# verify.c check_for_unknown_exts) all handle: any other one marked critical in a delegated
# responder's certificate makes one of them refuse it. Not policyConstraints (2.5.29.36):
# GnuTLS 3.7.9 does not handle it ("OCSP response invalid" when it is critical).
_HANDLED_CERT_EXTENSIONS = {
    "2.5.29.15",  # keyUsage
    "2.5.29.17",  # subjectAltName
    "2.5.29.19",  # basicConstraints
    "2.5.29.30",  # nameConstraints
    "2.5.29.32",  # certificatePolicies
    "2.5.29.37",  # extKeyUsage
    "2.5.29.54",  # inhibitAnyPolicy
}
_SUCCESSFUL = ocsp.OCSPResponseStatus.SUCCESSFUL
_REVOKED = ocsp.OCSPCertStatus.REVOKED
_UNKNOWN = ocsp.OCSPCertStatus.UNKNOWN
# What cryptography raises on first use of a garbled name, extension or embedded certificate
_GARBLED = (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension)
_E = TypeVar("_E", bound=x509.ExtensionType)


@dataclass(frozen=True, slots=True)
class Policy:
    """How strict to be. The defaults match what the strictest clients accept."""

    clock_skew: timedelta = timedelta(minutes=5)
    max_lifetime: timedelta = timedelta(days=10)  # Firefox's cap on a response's lifetime
    allow_missing_next_update: bool = False
    # how long a response without nextUpdate lasts, when allowed: Firefox's day (pkixocsp.cpp,
    # SingleResponse: "NSS requires all OCSP responses without a nextUpdate to be recent")
    missing_next_update_lifetime: timedelta = timedelta(days=1)


DEFAULT_POLICY = Policy()


class Signer(enum.Enum):
    ISSUER = "issuer"
    DELEGATED = "delegated"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """What came back over HTTP, as far as validation cares."""

    status: int
    content_type: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class Staple:
    """A response that passed every check: the DER to staple and what it says."""

    der: bytes = field(repr=False)
    serial: int
    status: ocsp.OCSPCertStatus
    produced_at: datetime
    this_update: datetime
    next_update: datetime | None
    effective_expiry: datetime
    signer: Signer
    signer_name: str
    hash_name: str
    revocation_time: datetime | None = None
    revocation_reason: x509.ReasonFlags | None = None
    notes: tuple[Note, ...] = ()

    @property
    def good(self) -> bool:
        """Whether this response may be stapled (status good)."""
        return self.status == ocsp.OCSPCertStatus.GOOD

    def seconds_left(self, now: datetime) -> float:
        return (self.effective_expiry - now).total_seconds()

    @property
    def window(self) -> timedelta:
        """From thisUpdate to the effective expiry: how long the answer lives."""
        return self.effective_expiry - self.this_update

    def fraction_left(self, now: datetime) -> float:
        """How much of the validity window remains, from 1.0 (fresh) to 0.0 (expired)."""
        window = self.window.total_seconds()
        left = self.seconds_left(now)
        return max(0.0, min(1.0, left / window)) if window > 0 else 0.0


class _Fail(Exception):
    """Internal short-cut: carries a Rejection out of a nested check."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(reason.code)
        self.rejection = Rejection(reason, detail)


@dataclass(frozen=True, slots=True)
class _Envelope:
    """What the DER walk finds that cryptography does not expose."""

    basic: der.Tlv
    tbs: der.Tlv
    tbs_children: list[der.Tlv]
    signature_oid: str
    signature_params: der.Tlv | None
    # certificates as sent, by their DER without explicit DEFAULTs (those that had any)
    sent_certs: dict[bytes, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _IssuerFacts:
    """What validation needs to know about an issuer, worked out once (`_issuer_facts`)."""

    key: object  # its public key
    key_hash: bytes  # SHA-1 of its subjectPublicKey bits, as in a ResponderID byKey
    name: bytes  # its subject as encoded, as in a ResponderID byName
    text: str  # its subject in RFC 4514 form: the signer_name of the staples it signs
    hashes: dict[str, tuple[bytes, bytes]]  # issuerNameHash and issuerKeyHash, by hash name


@functools.lru_cache(maxsize=64)
def _issuer_facts(issuer: x509.Certificate) -> _IssuerFacts:
    """The facts of one issuer, cached: working them out costs 50 to 65 µs.

    Bounded at 64 issuers (a few kB each, their certificate included), keyed by certificate
    equality: every Target an issuer signed shares its entry, whatever the object.
    """
    cert_ids = {name: make_cert_id(issuer, 0, name) for name in HASHES}
    return _IssuerFacts(
        key=issuer.public_key(),
        key_hash=cert_ids["sha1"].issuer_key_hash,  # the same SHA-1 of the same key bits
        name=encoded_names(issuer)[1],
        text=issuer.subject.rfc4514_string(),
        hashes={name: (c.issuer_name_hash, c.issuer_key_hash) for name, c in cert_ids.items()},
    )


@dataclass(frozen=True, slots=True)
class _TargetFacts:
    """What validation needs to know about a Target, worked out once (`_target_facts`)."""

    serial: int
    leaf_not_after: datetime
    issuer: _IssuerFacts


class _Same:
    """A Target as a cache key, compared by identity.

    Hashing a Target hashes both its certificates (about 3 µs, a tenth of a validation);
    identity is enough, since a Target and its certificates are immutable. The key holds its
    Target, so the id cannot be reused by another object while the entry is in the cache.
    """

    __slots__ = ("target",)

    def __init__(self, target: Target) -> None:
        self.target = target

    def __hash__(self) -> int:
        return id(self.target)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.target is self.target


@functools.lru_cache(maxsize=256)
def _target_facts(key: _Same) -> _TargetFacts:
    """The facts of one Target, cached, so that a validation reads none of its certificates.

    Bounded at 256 Targets (each entry keeps its Target, two certificates, alive: a few kB).
    A miss costs about 3 µs once the issuer is known: a keeper with more certificates than
    that, or a new Target object for the same certificates, costs only that.
    """
    target = key.target
    return _TargetFacts(
        serial=target.serial,
        leaf_not_after=target.leaf.not_valid_after_utc,
        issuer=_issuer_facts(target.issuer),
    )


# --- HTTP -------------------------------------------------------------------------------------


def check_http(answer: HttpAnswer) -> Rejection | None:
    """The HTTP-level checks: status 200, the OCSP content type, a body."""
    if answer.status != 200:
        reason = Reason.HTTP_CLIENT_ERROR
        if answer.status >= 500 or answer.status in (408, 429) or answer.status < 400:
            reason = Reason.HTTP_SERVER_ERROR
        return Rejection(reason, f"HTTP {answer.status}")
    ctype = (answer.content_type or "").split(";")[0].strip().lower()
    if ctype != OCSP_CONTENT_TYPE:
        return Rejection(Reason.CONTENT_TYPE, f"Content-Type is {answer.content_type or 'missing'}")
    if not answer.body:
        return Rejection(Reason.EMPTY_BODY)
    return None


def judge(
    answer: HttpAnswer, target: Target, now: datetime, policy: Policy = DEFAULT_POLICY
) -> Staple | Rejection:
    """HTTP checks, then full validation of the body."""
    return check_http(answer) or verify(answer.body, target, now, policy)


# --- The response -------------------------------------------------------------------------------


def verify(
    data: bytes, target: Target, now: datetime, policy: Policy = DEFAULT_POLICY
) -> Staple | Rejection:
    """Validate a DER OCSPResponse for `target` at `now`; never raises for bad data."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware UTC datetime")
    if not data:
        return Rejection(Reason.EMPTY_BODY)
    try:
        return _verify(data, target, now, policy)
    except _Fail as fail:
        return fail.rejection
    except _GARBLED as exc:
        # cryptography parses names, extensions and embedded certificates lazily: garbled
        # ones fail on first use, with ValueError, TypeError (some attribute types) or its
        # own DuplicateExtension
        return Rejection(Reason.MALFORMED, f"{type(exc).__name__}: {_short(exc)}")


def _verify(data: bytes, target: Target, now: datetime, policy: Policy) -> Staple:
    resp, signature_oid, envelope, signed = _parse(data)
    try:
        certs = resp.certificates
        extensions = resp.extensions
        singles = list(resp.responses)
    except (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension) as exc:
        raise _Fail(Reason.MALFORMED, _short(exc)) from exc
    _check_critical(extensions)
    if len(certs) > _MAX_CERTS:
        said = f"{len(certs)} certificates: Firefox takes {_MAX_CERTS} at most"
        raise _Fail(Reason.MALFORMED, said)
    facts = _target_facts(_Same(target))
    by_name = _responder_name(signed) if resp.responder_key_hash is None else None
    sent_certs = envelope.sent_certs if envelope else {}
    signer_key, delegate = _find_signer(
        resp, by_name, certs, target, facts, now=now, sent_certs=sent_certs
    )
    params = envelope.signature_params if envelope else None
    _check_signature(signature_oid, params, resp.signature, signed, signer_key)
    _check_unused_bits(data, resp.signature)
    ours = _our_singles(singles, facts)
    sct_list = None
    if len(singles) > 1 or _may_have_single_extensions(resp):
        envelope = envelope or _open_envelope(data)
        sct_list = _check_single_extensions(envelope, [i for i, _, _ in ours])
    signer_name = delegate.subject.rfc4514_string() if delegate else facts.issuer.text
    staple = _build_staple(
        data,
        resp,
        ours,
        facts,
        now=now,
        policy=policy,
        several=len(singles) > 1,
        delegate=delegate,
        signer_name=signer_name,
    )
    if sct_list is not None and staple.good:
        _check_sct_octets(sct_list)
    return staple


def _short(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _parse(data: bytes) -> tuple[ocsp.OCSPResponse, str, _Envelope | None, bytes]:
    """cryptography's parse, then our DER walk only where it can add something.

    Returns the response, its signature algorithm OID, the walk's findings (if it ran) and the
    signed bytes (the original tbsResponseData). cryptography's parser (rust-asn1) is strict
    DER too: it refuses trailing bytes, non-minimal and indefinite lengths, a response type
    other than id-pkix-ocsp-basic, any explicit version, missing or extra fields and, for the
    algorithms of _PLAIN_ALGORITHMS, signature parameters other than none (or NULL for RSA).
    The walk, which names those problems precisely (`trailing-data`, `not-basic`,
    `unsupported-version`...), runs when cryptography refuses the response, when the status
    is not successful, and when the signature algorithm is not plain (PSS parameters, broken
    or unknown algorithms): so the reason codes, and their order, are those of a walk before
    every parse. A response cryptography refuses only for an explicitly encoded DEFAULT
    (`version v1`, `critical FALSE`) is accepted, as every client does: see
    `der.without_encoded_defaults`.
    """
    try:
        resp = ocsp.load_der_ocsp_response(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        envelope = _open_envelope(data)  # raises the precise reason when the walk finds one
        resp, sent_certs = _parse_canonical(data, exc)
        envelope = replace(envelope, sent_certs=sent_certs)
        return resp, envelope.signature_oid, envelope, _signed(envelope)
    if resp.response_status is not _SUCCESSFUL:  # even with responseBytes
        _open_envelope(data)  # raises the status's reason
        raise _Fail(Reason.MALFORMED, f"responseStatus {resp.response_status.name}")
    oid = _PLAIN_ALGORITHMS.get(resp.signature_algorithm_oid)
    if oid is not None:
        return resp, oid, None, resp.tbs_response_bytes
    envelope = _open_envelope(data)
    return resp, envelope.signature_oid, envelope, resp.tbs_response_bytes


def _parse_canonical(
    data: bytes, refused: Exception
) -> tuple[ocsp.OCSPResponse, dict[bytes, bytes]]:
    """The response without its explicitly encoded DEFAULTs, and the certificates it carries
    as sent, by their DER without them (those that changed); MALFORMED when that is not it."""
    try:
        canonical = der.without_encoded_defaults(data)
        if canonical is not None:
            resp = ocsp.load_der_ocsp_response(canonical)
            sent = der.embedded_certificates(data)
            pairs = zip(der.embedded_certificates(canonical), sent, strict=True)
            return resp, {cert: sent for cert, sent in pairs if cert != sent}
    except (der.DerError, ValueError, UnsupportedAlgorithm):
        pass
    raise _Fail(Reason.MALFORMED, _short(refused)) from refused


def _signed(envelope: _Envelope) -> bytes:
    return der.encoded(envelope.tbs)


def _open_envelope(data: bytes) -> _Envelope:
    """Walk the DER: status, response type, version, signature algorithm, trailing bytes."""
    try:
        outer = der.read_tlv(data)
        if outer.end != len(data):
            raise _trailing(data, outer.end)
        if outer.tag != der.SEQUENCE:
            raise der.DerError("not a SEQUENCE")
        parts = der.children(outer)
        if not parts or parts[0].tag != der.ENUMERATED:
            raise der.DerError("no responseStatus")
        status = der.decode_integer(parts[0])
        if status != 0:
            raise _unsuccessful(status)
        if len(parts) != 2 or parts[1].tag != 0xA0:
            raise der.DerError("successful response without responseBytes")
        return _open_basic(der.read_single(parts[1].content, der.SEQUENCE))
    except (der.DerError, ValueError, IndexError) as exc:  # wrong shapes, too few fields
        raise _Fail(Reason.MALFORMED, _short(exc)) from exc


def _trailing(data: bytes, end: int) -> _Fail:
    """`trailing-data` when an OCSP response comes first; junk followed by bytes is malformed."""
    try:
        _open_envelope(data[:end])
    except _Fail as fail:
        if fail.rejection.reason is Reason.MALFORMED:
            return _Fail(Reason.MALFORMED, "no OCSP response at the start of the body")
    return _Fail(Reason.TRAILING_DATA, f"{len(data) - end} bytes after the response")


def _unsuccessful(status: int) -> _Fail:
    reason = _STATUS_REASONS.get(status)
    if reason is None:
        return _Fail(Reason.MALFORMED, f"unknown responseStatus {status}")
    return _Fail(reason, f"responseStatus {status}")


def _open_basic(response_bytes: der.Tlv) -> _Envelope:
    parts = der.children(response_bytes)
    if len(parts) != 2:
        raise der.DerError("responseBytes must have exactly two fields")
    rtype, payload = parts
    if der.decode_oid(rtype) != _BASIC:
        raise _Fail(Reason.NOT_BASIC, f"response type {der.decode_oid(rtype)}")
    if payload.tag != der.OCTET_STRING:
        raise der.DerError("response is not an OCTET STRING")
    basic = der.read_single(payload.content, der.SEQUENCE)
    fields = der.children(basic)
    if len(fields) < 3:
        raise der.DerError("BasicOCSPResponse is too short")
    tbs = der.children(fields[0])
    if tbs and tbs[0].tag == 0xA0:
        version = der.decode_integer(der.read_single(tbs[0].content, der.INTEGER))
        if version != 0:
            raise _Fail(Reason.UNSUPPORTED_VERSION, f"version {version + 1}")
    algorithm = der.children(fields[1])
    params = algorithm[1] if len(algorithm) > 1 else None
    return _Envelope(basic, fields[0], tbs, der.decode_oid(algorithm[0]), params)


def _responder_name(tbs: bytes) -> bytes:
    """The ResponderID byName's Name as encoded in tbsResponseData (after the version)."""
    try:
        outer = der.read_tlv(tbs)
        responder = der.read_tlv(tbs, outer.start, outer.end)
        if responder.tag == 0xA0:  # an explicit version
            responder = der.read_tlv(tbs, responder.end, outer.end)
        return der.encoded(der.read_single(responder.content, der.SEQUENCE))
    except der.DerError as exc:
        raise _Fail(Reason.MALFORMED, "unreadable responderID") from exc


def _check_critical(extensions: x509.Extensions) -> None:
    """No critical response extension: mozpkix understands none (pkixocsp.cpp, ResponseData
    reads them with ExtensionNotUnderstood), not even the nonce RFC 6960 defines."""
    for ext in extensions:
        if ext.critical:
            raise _Fail(Reason.UNKNOWN_CRITICAL_EXTENSION, f"{ext.oid.dotted_string} in response")


def _may_have_single_extensions(resp: ocsp.OCSPResponse) -> bool:
    """Whether the only SingleResponse carries extensions (then the DER walk judges them).

    cryptography answers cheaply, but it decodes the extensions it knows: when it cannot
    (a garbled or repeated one), the answer is yes, and the walk, which reads only the
    criticality, decides.
    """
    try:
        return len(resp.single_extensions) > 0
    except Exception:  # anything cryptography cannot decode: let the walk look
        return True


def _check_single_extensions(envelope: _Envelope, indexes: list[int]) -> bytes | None:
    """Critical extensions of our SingleResponses (cryptography shows only the first's);
    returns the extnValue of their one SCT list, if they have one."""
    sct_lists: list[bytes] = []
    try:
        responses = next(t for t in envelope.tbs_children if t.tag == der.SEQUENCE)
        singles = der.children(responses)
        for index in indexes:
            # certID, certStatus, thisUpdate come first; `revoked` is also tagged [1]
            for part in der.children(singles[index])[3:]:
                if part.tag == 0xA1:
                    for ext in der.children(der.read_single(part.content, der.SEQUENCE)):
                        oid, value = _check_raw_extension(ext)
                        if oid == _SCT_LIST:
                            sct_lists.append(value)
    except (der.DerError, StopIteration, IndexError) as exc:
        raise _Fail(Reason.MALFORMED, "unreadable singleExtensions") from exc
    return _one_sct_list(sct_lists)


def _check_raw_extension(ext: der.Tlv) -> tuple[str, bytes]:
    """The extension's OID and extnValue contents, once its criticality is judged."""
    fields = der.children(ext)
    critical = len(fields) == 3 and fields[1].tag == der.BOOLEAN and fields[1].content != b"\x00"
    oid = der.decode_oid(fields[0])
    if critical and oid != _SCT_LIST:
        raise _Fail(Reason.UNKNOWN_CRITICAL_EXTENSION, f"{oid} in singleExtensions")
    return oid, fields[-1].content


def _one_sct_list(values: list[bytes]) -> bytes | None:
    """mozpkix keeps one SCT list across every SingleResponse for our CertID, and refuses an
    empty extnValue and a second list (pkixocsp.cpp, RememberSingleExtension:
    ERROR_EXTENSION_VALUE_INVALID), critical or not."""
    if len(values) > 1:
        said = f"{len(values)} SCT lists in the SingleResponses for our certificate"
        raise _Fail(Reason.BAD_SCT_LIST, said + ": Firefox takes one")
    if values and not values[0]:
        raise _Fail(Reason.BAD_SCT_LIST, "an SCT list with an empty extnValue")
    return values[0] if values else None


def _check_sct_octets(value: bytes) -> None:
    """Of a good response, mozpkix reads the SCT list's extnValue as one DER OCTET STRING
    (pkixocsp.cpp, VerifyEncodedOCSPResponse ->
    ExtractSignedCertificateTimestampListFromExtension); what it holds is not judged."""
    try:
        der.read_single(value, der.OCTET_STRING)
    except der.DerError as exc:
        said = f"the SCT list is not one DER OCTET STRING ({exc}): Firefox refuses it"
        raise _Fail(Reason.BAD_SCT_LIST, said) from exc


# --- Which certificate -------------------------------------------------------------------------


_Ours = list[tuple[int, ocsp.OCSPSingleResponse, str]]  # index, SingleResponse, hash name


def _our_singles(singles: list[ocsp.OCSPSingleResponse], facts: _TargetFacts) -> _Ours:
    """Every SingleResponse for exactly our CertID, as the strict clients need them.

    - GnuTLS reads only the first SingleResponse (lib/x509/ocsp.c, gnutls_ocsp_resp_check_crt
      with index 0, from lib/cert-session.c, check_ocsp_response): ours must be first.
    - curl asks OpenSSL for a SHA-1 CertID (lib/vtls/openssl.c, verifystatus:
      OCSP_cert_to_id(NULL, ...)), and OpenSSL's OCSP_resp_find compares the hash algorithm
      too (OCSP_id_issuer_cmp): one of ours must be SHA-1.
    - OpenSSL's OCSP_basic_verify refuses a response whose SingleResponses name different
      issuers (ocsp_vfy.c, ocsp_check_ids and ocsp_check_issuer): every entry must be about a
      certificate of our issuer.
    - mozpkix judges every entry that matches (pkixocsp.cpp, SingleResponse): see
      `_build_staple`.
    """
    ours: _Ours = []
    serial_seen = unsupported = foreign = False
    for index, single in enumerate(singles):
        name = _hash_name(single)
        same_issuer = name is not None and facts.issuer.hashes[name] == (
            single.issuer_name_hash,
            single.issuer_key_hash,
        )
        foreign = foreign or not same_issuer
        if single.serial_number != facts.serial:
            continue
        serial_seen = True
        unsupported = unsupported or name is None
        if same_issuer and name is not None:
            ours.append((index, single, name))
    if not ours:
        serials = ", ".join(f"{s.serial_number:x}" for s in singles[:3])
        if unsupported:
            raise _Fail(Reason.UNSUPPORTED_HASH)
        if serial_seen:
            raise _Fail(Reason.WRONG_ISSUER, f"serial {facts.serial:x}")
        raise _Fail(
            Reason.CERT_NOT_IN_RESPONSE, f"wanted {facts.serial:x}, got {serials or 'none'}"
        )
    if all(name != "sha1" for _, _, name in ours):
        raise _Fail(Reason.CERT_ID_NOT_SHA1, f"hashed with {ours[0][2]}")
    if ours[0][0] != 0:
        raise _Fail(Reason.NOT_FIRST_RESPONSE, f"ours is number {ours[0][0] + 1} of {len(singles)}")
    if foreign:
        raise _Fail(Reason.MIXED_ISSUERS, f"{len(singles)} SingleResponses")
    return ours


def _hash_name(single: ocsp.OCSPSingleResponse) -> str | None:
    try:
        name = single.hash_algorithm.name
    except UnsupportedAlgorithm:
        return None
    return name if name in HASHES else None


# --- Who signed it ------------------------------------------------------------------------------


def _key_hash(cert: x509.Certificate) -> bytes:
    key_hash = hashes.Hash(hashes.SHA1())
    key_hash.update(issuer_key_bits(cert))
    return key_hash.finalize()


def _is_responder(resp: ocsp.OCSPResponse, by_name: bytes | None, cert: x509.Certificate) -> bool:
    """Whether the ResponderID names `cert`: by its subject as encoded, or by its key hash.

    Names are compared as bytes, as mozpkix does (pkixocsp.cpp, MatchResponderID:
    InputsAreEqual); cryptography's `Name ==` would let a PrintableString equal a UTF8String.
    (GnuTLS's TLS client falls back to the issuer's key whatever the name; OpenSSL compares
    canonical forms.)
    """
    if by_name is not None:
        return by_name == encoded_names(cert)[1]
    return resp.responder_key_hash == _key_hash(cert)


def _find_signer(
    resp: ocsp.OCSPResponse,
    by_name: bytes | None,
    certs: list[x509.Certificate],
    target: Target,
    facts: _TargetFacts,
    *,
    now: datetime,
    sent_certs: dict[bytes, bytes],
) -> tuple[object, x509.Certificate | None]:
    """The signing key: the issuer's, or an authorised delegated responder's.

    GnuTLS verifies with the first included certificate that matches the ResponderID, as a
    delegated responder unless it is the issuer's very certificate (`_gnutls_signer`); mozpkix
    with the issuer when the ResponderID names it, else with the first matching delegate
    that passes its checks. Both must find the same signer.
    """
    issuer = facts.issuer
    gnutls_signer = _gnutls_signer(resp, by_name, certs)
    if (
        (by_name == issuer.name)
        if by_name is not None
        else (resp.responder_key_hash == issuer.key_hash)
    ):
        if gnutls_signer is not None and _as_sent(gnutls_signer, sent_certs) != _der(target.issuer):
            raise _Fail(
                Reason.AMBIGUOUS_SIGNER, _not_the_signer(gnutls_signer, "the issuer's certificate")
            )
        return issuer.key, None
    for cert in certs:
        if _is_responder(resp, by_name, cert):
            if gnutls_signer != cert and gnutls_signer is not None:
                said = _not_the_signer(gnutls_signer, cert.subject.rfc4514_string())
                raise _Fail(Reason.AMBIGUOUS_SIGNER, said)
            _check_delegate(cert, target.issuer, now, sent_certs.get(_der(cert)))
            return cert.public_key(), cert
    raise _Fail(Reason.SIGNER_UNKNOWN, _responder_text(resp, [target.issuer, *certs]))


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _as_sent(cert: x509.Certificate, sent_certs: dict[bytes, bytes]) -> bytes:
    """`cert` as encoded in the response (cryptography read it without explicit DEFAULTs)."""
    encoding = _der(cert)
    return sent_certs.get(encoding, encoding)


def _not_the_signer(cert: x509.Certificate, instead_of: str) -> str:
    return (
        f"{cert.subject.rfc4514_string()} (serial {cert.serial_number:x}) matches the "
        f"ResponderID first: GnuTLS verifies the response with it, not with {instead_of}"
    )


def _gnutls_signer(
    resp: ocsp.OCSPResponse, by_name: bytes | None, certs: list[x509.Certificate]
) -> x509.Certificate | None:
    """The first included certificate matching the ResponderID as GnuTLS matches it
    (lib/x509/ocsp.c, find_signercert): byName as encoded; byKey by key hash or by
    subjectKeyIdentifier. gnutls_ocsp_resp_verify_direct takes it for a delegated responder
    unless it is byte for byte the issuer's certificate (gnutls_x509_crt_equals)."""
    for cert in certs:
        if _is_responder(resp, by_name, cert):
            return cert
        if by_name is None and _subject_key_id(cert) == resp.responder_key_hash:
            return cert
    return None


def _subject_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        value = next((e.value for e in raw_extensions(cert) if e.oid == _SUBJECT_KEY_ID), None)
        return None if value is None else der.read_single(value, der.OCTET_STRING).content
    except der.DerError:
        return None


def _responder_text(resp: ocsp.OCSPResponse, known: list[x509.Certificate]) -> str:
    if resp.responder_name is None:
        return f"responder key hash {(resp.responder_key_hash or b'').hex()}"
    text = f"responder {resp.responder_name.rfc4514_string()}"
    if any(cert.subject == resp.responder_name for cert in known):
        text += " (a certificate has this name, encoded differently: strict clients compare bytes)"
    return text


def _check_delegate(
    cert: x509.Certificate, issuer: x509.Certificate, now: datetime, sent: bytes | None = None
) -> None:
    """RFC 6960 section 4.2.2.2: issued by our issuer, id-kp-OCSPSigning, valid, not a CA.

    Valid means valid at `now` with no allowance: mozpkix (CheckOCSPResponseSignerCert ->
    CheckIssuerIndependentProperties -> CheckValidity), GnuTLS (gnutls_ocsp_resp_verify_direct
    verifies the signer certificate) and OpenSSL (OCSP_basic_verify -> X509_verify_cert)
    check the time as it is. OpenSSL and GnuTLS also refuse an unhandled critical extension.
    `sent`: the certificate as encoded in the response, when cryptography read it without its
    explicit DEFAULTs; the issuer's signature covers those bytes.
    """
    name = cert.subject.rfc4514_string()
    algorithm = cert.signature_algorithm_oid.dotted_string
    if algorithm not in _DELEGATE_SIGNATURES:
        said = f"{name} is signed with {cert.signature_algorithm_oid._name}: Firefox refuses it"
        raise _Fail(Reason.UNSUPPORTED_ALGORITHM, said)
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in _DELEGATE_CURVES:
        said = f"{name} has a key on {key.curve.name}: Firefox takes P-256, P-384 and P-521"
        raise _Fail(Reason.UNSUPPORTED_ALGORITHM, said)
    if not (signed_by(cert, issuer) if sent is None else _signed_as_sent(cert, sent, issuer)):
        raise _Fail(Reason.DELEGATE_NOT_ISSUED_BY_ISSUER, name)
    _check_key_usage(cert, name)
    eku = _extension(cert, x509.ExtendedKeyUsage)
    basic = _extension(cert, x509.BasicConstraints)
    if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise _Fail(Reason.DELEGATE_NO_OCSP_SIGNING, name)
    if basic is not None and basic.ca:
        raise _Fail(Reason.DELEGATE_IS_CA, name)
    unhandled = [
        ext.oid.dotted_string
        for ext in extensions_of(cert)
        if ext.critical and ext.oid.dotted_string not in _HANDLED_CERT_EXTENSIONS
    ]
    if unhandled:
        raise _Fail(Reason.DELEGATE_CRITICAL_EXTENSION, f"{name}: {', '.join(unhandled)}")
    if cert.not_valid_before_utc > now:
        raise _Fail(Reason.DELEGATE_NOT_YET_VALID, f"{name} from {cert.not_valid_before_utc}")
    if cert.not_valid_after_utc <= now:
        raise _Fail(Reason.DELEGATE_EXPIRED, f"{name} until {cert.not_valid_after_utc}")


def _signed_as_sent(cert: x509.Certificate, sent: bytes, issuer: x509.Certificate) -> bool:
    """`signed_by`, over the TBSCertificate as sent: `cert` is it without explicit DEFAULTs.
    (A delegate's signature algorithm is RSA or ECDSA: see `_DELEGATE_SIGNATURES`.)"""
    tbs = der.encoded(der.children(der.read_single(sent))[0])
    key, params = issuer.public_key(), cert.signature_algorithm_parameters
    digest = cert.signature_hash_algorithm
    try:
        if cert.issuer != issuer.subject or digest is None:
            return False
        if isinstance(key, rsa.RSAPublicKey) and isinstance(params, padding.AsymmetricPadding):
            key.verify(cert.signature, tbs, params, digest)
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
            key.verify(cert.signature, tbs, params)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _check_key_usage(cert: x509.Certificate, name: str) -> None:
    """A delegate's keyUsage, when present, needs no particular usage, but must be one DER
    BIT STRING of at least one byte, at most 7 unused bits and those zero (mozpkix,
    pkixcheck.cpp CheckKeyUsage: ERROR_INADEQUATE_KEY_USAGE) with a usage among its first 16
    bits (OpenSSL, v3_purp.c ossl_x509v3_cache_extensions: an empty keyUsage makes the
    certificate invalid)."""
    value = next((e.value for e in raw_extensions(cert) if e.oid == _KEY_USAGE), None)
    problem = None if value is None else _key_usage_problem(value)
    if problem is not None:
        raise _Fail(Reason.DELEGATE_BAD_KEY_USAGE, f"{name}: {problem}")


def _key_usage_problem(value: bytes) -> str | None:
    try:
        bits = der.read_single(value, der.BIT_STRING).content
    except der.DerError as exc:
        return f"not one DER BIT STRING ({exc}): Firefox refuses it"
    if not bits or bits[0] > 7:
        return "a BIT STRING without a valid unused-bit count: Firefox refuses it"
    if len(bits) == 1:
        return "an empty BIT STRING: Firefox and OpenSSL refuse it"
    if bits[-1] & ((1 << bits[0]) - 1):
        return "unused bits set: Firefox refuses it"
    if not any(bits[1:3]):
        return "no usage set in its first 16 bits: OpenSSL refuses it"
    return None


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return extensions_of(cert).get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension) as exc:
        raise _Fail(Reason.MALFORMED, f"responder certificate: {_short(exc)}") from exc


def _check_signature(
    oid: str, params: der.Tlv | None, signature: bytes, signed: bytes, key: object
) -> None:
    if oid in _WEAK_SIGNATURES:
        raise _Fail(Reason.WEAK_ALGORITHM, _WEAK_SIGNATURES[oid])
    if oid in _EDDSA:
        raise _Fail(Reason.UNSUPPORTED_ALGORITHM, f"{_EDDSA[oid]}: Firefox takes no EdDSA")
    try:
        _verify_with(oid, params, key, signature, signed)
    except InvalidSignature as exc:
        raise _Fail(Reason.BAD_SIGNATURE) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _Fail(Reason.BAD_SIGNATURE, _short(exc)) from exc


def _check_unused_bits(data: bytes, signature: bytes) -> None:
    """The signature BIT STRING says 0 unused bits: Firefox and OpenSSL refuse any other count
    (cryptography reads past it)."""
    if declares_unused_bits(data, signature):
        raise _Fail(Reason.BAD_SIGNATURE, "the signature BIT STRING declares unused bits")


def declares_unused_bits(data: bytes, signature: bytes) -> bool:
    """Whether the BIT STRING of `signature` in the response `data` declares unused bits (in
    the DER, the count is the byte before the bits)."""
    at = data.rfind(signature)
    return at < 1 or data[at - 1] != 0


def _verify_with(
    oid: str, params: der.Tlv | None, key: object, signature: bytes, data: bytes
) -> None:
    """Verify `signature` over `data`; raise InvalidSignature or _Fail."""
    if oid == _RSA_PSS:
        digest = _pss_hash(params)
    elif params is not None and der.encoded(params) != _NULL:
        # mozpkix: "for non-RSA-PSS algorithms, the params are NULL or omitted"
        raise _Fail(Reason.UNSUPPORTED_ALGORITHM, f"{oid} with parameters")
    if oid in _RSA_PKCS1 and isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, _PKCS1V15, _RSA_PKCS1[oid])
    elif oid == _RSA_PSS and isinstance(key, rsa.RSAPublicKey):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        key.verify(signature, data, pss, digest)
    elif oid in _ECDSA and isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, _ECDSA[oid])
    elif oid in _SIGNATURE_ALGORITHMS:
        raise _Fail(Reason.BAD_SIGNATURE, f"algorithm {oid} does not fit the signer's key")
    else:
        raise _Fail(Reason.UNSUPPORTED_ALGORITHM, oid)


def _pss_hash(params: der.Tlv | None) -> hashes.HashAlgorithm:
    """The hash of the one RSASSA-PSS parameter set all clients take (see _PSS_SHA256)."""
    if params is None or der.encoded(params) != _PSS_SHA256:
        raise _Fail(
            Reason.UNSUPPORTED_ALGORITHM,
            "RSASSA-PSS other than SHA-256 with MGF1-SHA-256 and a 32-byte salt (Firefox takes "
            "no other, GnuTLS reads every PSS signature as that one)",
        )
    return _SHA256


# --- Times and status ---------------------------------------------------------------------------


def _build_staple(
    data: bytes,
    resp: ocsp.OCSPResponse,
    ours: _Ours,
    facts: _TargetFacts,
    *,
    now: datetime,
    policy: Policy,
    several: bool,
    delegate: x509.Certificate | None,
    signer_name: str,
) -> Staple:
    """The staple, judged as mozpkix judges every SingleResponse for our CertID.

    pkixocsp.cpp, SingleResponse: each matching entry's times are checked (one expired makes
    the whole response old) and revoked overrides good and unknown. The status each other
    client reads (GnuTLS the first entry, curl the first SHA-1 one) must not be unknown.
    """
    produced_at = resp.produced_at_utc
    times = [(single.this_update_utc, single.next_update_utc) for _, single, _ in ours]
    expiries: list[datetime] = []
    notes: list[Note] = []
    for this_update, next_update in times:
        single_expiry, single_notes = _check_times(
            now,
            policy,
            facts,
            produced_at=produced_at,
            this_update=this_update,
            next_update=next_update,
            delegate=delegate,
        )
        expiries.append(single_expiry)
        notes += [note for note in single_notes if note not in notes]
    statuses = [single.certificate_status for _, single, _ in ours]
    revoked = next((n for n, status in enumerate(statuses) if status == _REVOKED), None)
    sha1 = next(n for n, (_, _, name) in enumerate(ours) if name == "sha1")
    if revoked is None and _UNKNOWN in (statuses[0], statuses[sha1]):
        raise _Fail(Reason.CERT_STATUS_UNKNOWN, f"serial {facts.serial:x}")
    if several:
        notes.append(Note.SEVERAL_RESPONSES)
    chosen = ours[revoked][1] if revoked is not None else None
    return Staple(
        der=data,
        serial=facts.serial,
        status=statuses[revoked or 0],
        produced_at=produced_at,
        this_update=times[0][0],
        next_update=times[0][1],
        effective_expiry=min(expiries),
        signer=Signer.DELEGATED if delegate else Signer.ISSUER,
        signer_name=signer_name,
        hash_name=ours[0][2],
        revocation_time=chosen.revocation_time_utc if chosen else None,
        revocation_reason=chosen.revocation_reason if chosen else None,
        notes=tuple(notes),
    )


def _check_times(
    now: datetime,
    policy: Policy,
    facts: _TargetFacts,
    *,
    produced_at: datetime,
    this_update: datetime,
    next_update: datetime | None,
    delegate: x509.Certificate | None,
) -> tuple[datetime, list[Note]]:
    """Reject impossible or stale times; return the effective expiry and any notes."""
    latest = now + policy.clock_skew
    if produced_at > latest:
        raise _Fail(Reason.PRODUCED_IN_FUTURE, f"producedAt {human_time(produced_at)}")
    if this_update > latest:
        raise _Fail(Reason.THIS_UPDATE_IN_FUTURE, f"thisUpdate {human_time(this_update)}")
    notes: list[Note] = []
    if next_update is None:
        if not policy.allow_missing_next_update:
            raise _Fail(Reason.NO_NEXT_UPDATE)
        notes.append(Note.NEXT_UPDATE_MISSING)
        expiry = this_update + policy.missing_next_update_lifetime
    elif next_update <= this_update:
        raise _Fail(Reason.BAD_VALIDITY_WINDOW, f"{this_update} .. {next_update}")
    elif next_update - this_update > policy.max_lifetime:
        notes.append(Note.LONG_WINDOW)
        expiry = this_update + policy.max_lifetime
    else:
        expiry = next_update
    if next_update is not None and next_update > facts.leaf_not_after:
        notes.append(Note.BEYOND_CERT_EXPIRY)
    if delegate is not None and delegate.not_valid_after_utc < expiry:
        notes.append(Note.DELEGATED_SIGNER_EXPIRES_FIRST)
        expiry = delegate.not_valid_after_utc
    if expiry <= now:
        raise _Fail(Reason.EXPIRED, f"valid until {human_time(expiry)}")
    return expiry, notes


# --- Compared with the staple in hand -----------------------------------------------------------


def compare(candidate: Staple, current: Staple | None) -> Rejection | None:
    """None when `candidate` may replace `current`; else why not (see `may_replace`)."""
    if current is None:
        return None
    return may_replace(candidate, current)


class Dated(Protocol):
    """What the rule for "newer" reads: a `Staple`, or a stored one."""

    @property
    def this_update(self) -> datetime: ...

    @property
    def effective_expiry(self) -> datetime: ...

    @property
    def good(self) -> bool: ...


def may_replace(candidate: Dated, current: Dated) -> Rejection | None:
    """The one rule for "newer", used by the keeper, the stores and the fleet.

    Never an older thisUpdate, never an earlier effective expiry; and a good answer replaces a
    revoked one only when strictly newer (a revocation is never undone by an answer of the
    same age). (A `good` staple is never replaced by `unknown`: `unknown` is never a Staple.)
    """
    if candidate.good and not current.good and candidate.this_update <= current.this_update:
        return Rejection(
            Reason.OLDER_THAN_CURRENT,
            f"a good answer of {human_time(candidate.this_update)} is not newer than "
            f"the revoked answer of {human_time(current.this_update)}",
        )
    if candidate.this_update < current.this_update:
        return Rejection(
            Reason.OLDER_THAN_CURRENT,
            f"thisUpdate {human_time(candidate.this_update)} < {human_time(current.this_update)}",
        )
    if candidate.effective_expiry < current.effective_expiry:
        return Rejection(
            Reason.EXPIRES_SOONER,
            f"{human_time(candidate.effective_expiry)} < {human_time(current.effective_expiry)}",
        )
    return None


def strictly_newer(candidate: Dated, current: Dated) -> bool:
    """Whether `candidate` may replace `current` and not the other way round (`may_replace`
    both ways: the same answer, or one of the same age, is not newer)."""
    return may_replace(candidate, current) is None and may_replace(current, candidate) is not None
