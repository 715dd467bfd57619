"""The validator judges as strictly as the strict clients, class by class (issue 13).

Each table row is one hand-built response and the verdict `verify` must give: a reason code, or
the status of the staple. The rules come from the clients' sources, cited per table:

- mozpkix (Firefox): security/nss/lib/mozpkix/lib/pkixocsp.cpp (VerifyEncodedOCSPResponse,
  ResponseData, SingleResponse, MatchCertID, MatchResponderID, ExtensionNotUnderstood,
  RememberSingleExtension, CheckOCSPResponseSignerCert) and pkixder.cpp
  (SignatureAlgorithmIdentifierValue, OptionalVersion, OptionalBoolean).
- GnuTLS: lib/cert-session.c (check_ocsp_response: only SingleResponse 0 is read) and
  lib/x509/ocsp.c (gnutls_ocsp_resp_check_crt, gnutls_ocsp_resp_verify_direct).
- curl: lib/vtls/openssl.c (verifystatus: OCSP_cert_to_id(NULL, ...) is a SHA-1 CertID,
  OCSP_basic_verify(..., 0), OCSP_resp_find_status, OCSP_check_validity(..., 300L, -1L)).
- OpenSSL: crypto/ocsp/ocsp_lib.c (OCSP_id_issuer_cmp compares the hash algorithm),
  crypto/ocsp/ocsp_vfy.c (ocsp_check_ids, ocsp_check_issuer), crypto/x509/v3_purp.c
  (X509_supported_extension: "unhandled critical extension").

Every row marked `old` was judged otherwise before this change (see the report of issue 13).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from conftest import Handler, LoopbackServer, ocsp_reply
from mustaple.adapters.config import WATCH_TIMEOUT
from mustaple.adapters.loader import load_target
from mustaple.check import (
    Client,
    Severity,
    StapleState,
    check_server,
    client_accepts,
    client_states,
)
from mustaple.cli import main
from mustaple.core.certs import Target, make_target
from mustaple.core.errors import InputError
from mustaple.core.reasons import Note, Reason, Rejection
from mustaple.core.report import ExitCode
from mustaple.core.request import make_cert_id
from mustaple.core.verify import Staple, verify
from mustaple.testing import (
    CA,
    ExtensionSpec,
    Identity,
    Leaf,
    ResponseSpec,
    SignatureAlgorithm,
    SingleSpec,
    StaplingServer,
    craft_response,
    good_single,
    good_spec,
    unsuccessful,
)
from mustaple.testing.craft import key_hash, octet_string
from mustaple.testing.matrix import Node, copy_of, false_spelled_out, with_certificates

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
GOOD = ocsp.OCSPCertStatus.GOOD
REVOKED = ocsp.OCSPCertStatus.REVOKED
NONCE = "1.3.6.1.5.5.7.48.1.2"
SCT_LIST = "1.3.6.1.4.1.11129.2.4.5"
UNKNOWN_OID = "1.3.6.1.4.1.55555.1"


@dataclass(frozen=True)
class Pki:
    ca: CA
    leaf: Leaf
    target: Target
    other: CA  # another issuer, for foreign SingleResponses


def make_pki(key_type: str) -> Pki:
    ca = CA(key_type=key_type, now=NOW - timedelta(hours=2))  # type: ignore[arg-type]
    leaf = ca.issue(f"{key_type}.strict.test")
    other = CA(key_type="ec", name="another root", now=NOW - timedelta(hours=2))
    return Pki(ca, leaf, make_target(leaf.cert, leaf.issuer), other)


@pytest.fixture(scope="module")
def ec() -> Pki:
    return make_pki("ec")


@pytest.fixture(scope="module")
def rsa() -> Pki:
    return make_pki("rsa")


Maker = Callable[[Pki], bytes | ResponseSpec]
Verdict = Reason | ocsp.OCSPCertStatus


def judged(pki: Pki, make: Maker) -> Staple | Rejection:
    made = make(pki)
    data = craft_response(made) if isinstance(made, ResponseSpec) else made
    return verify(data, pki.target, NOW)


def verdict(result: Staple | Rejection) -> Verdict:
    return result.reason if isinstance(result, Rejection) else result.status


def spec(pki: Pki, **changes: object) -> ResponseSpec:
    return good_spec(pki.leaf, pki.ca.issuing, NOW, **changes)  # type: ignore[arg-type]


def ours(pki: Pki, hash_name: str = "sha1", **changes: Any) -> SingleSpec:
    cert_id = make_cert_id(pki.leaf.issuer, pki.leaf.cert.serial_number, hash_name)
    return good_single(cert_id, NOW, **changes)


def other_serial(pki: Pki) -> SingleSpec:
    return good_single(make_cert_id(pki.leaf.issuer, pki.leaf.cert.serial_number + 1), NOW)


def other_issuer(pki: Pki) -> SingleSpec:
    return good_single(make_cert_id(pki.other.cert, pki.leaf.cert.serial_number + 2), NOW)


def singles(*makers: Callable[[Pki], SingleSpec]) -> Maker:
    return lambda p: spec(p, singles=[make(p) for make in makers])


def check_table(pki: Pki, make: Maker, expected: Verdict) -> None:
    result = judged(pki, make)
    assert verdict(result) == expected, result


# --- 1. The CertID hash ---------------------------------------------------------------------

CERT_IDS: dict[str, tuple[Maker, Verdict]] = {
    "sha1": (singles(ours), GOOD),
    "sha256 (old: good)": (singles(lambda p: ours(p, "sha256")), Reason.CERT_ID_NOT_SHA1),
    "sha384 (old: good)": (singles(lambda p: ours(p, "sha384")), Reason.CERT_ID_NOT_SHA1),
    "sha512 (old: good)": (singles(lambda p: ours(p, "sha512")), Reason.CERT_ID_NOT_SHA1),
    "sha256 then sha1, both ours": (singles(lambda p: ours(p, "sha256"), ours), GOOD),
}


@pytest.mark.parametrize("case", CERT_IDS)
def test_cert_id_hash(case: str, ec: Pki) -> None:
    """curl finds our entry by a SHA-1 CertID and OpenSSL compares the hash algorithm too.

    (mozpkix takes SHA-2 CertIDs since bug 1745600; curl and OpenSSL decide here.)
    """
    check_table(ec, *CERT_IDS[case])


# --- 2. Several SingleResponses -------------------------------------------------------------


def revoked_ours(pki: Pki) -> SingleSpec:
    return ours(pki, status=REVOKED, revocation_time=NOW - DAY)


def expired_ours(pki: Pki) -> SingleSpec:
    return ours(pki, this_update=NOW - 5 * DAY, next_update=NOW - 4 * DAY)


def future_ours(pki: Pki) -> SingleSpec:
    return ours(pki, this_update=NOW + timedelta(hours=1))


def critical_ours(pki: Pki) -> SingleSpec:
    return ours(pki, extensions=[ExtensionSpec(oid=UNKNOWN_OID, critical=True)])


def unknown_ours(pki: Pki) -> SingleSpec:
    return ours(pki, status=ocsp.OCSPCertStatus.UNKNOWN)


SEVERAL: dict[str, tuple[Maker, Verdict]] = {
    "ours then another serial": (singles(ours, other_serial), GOOD),
    "another serial then ours (old: good)": (
        singles(other_serial, ours),
        Reason.NOT_FIRST_RESPONSE,
    ),
    "ours then another issuer's (old: good)": (singles(ours, other_issuer), Reason.MIXED_ISSUERS),
    "good then revoked, both ours (old: good)": (singles(ours, revoked_ours), REVOKED),
    "revoked then good, both ours": (singles(revoked_ours, ours), REVOKED),
    "good then expired, both ours (old: good)": (singles(ours, expired_ours), Reason.EXPIRED),
    "good then from the future, both ours (old: good)": (
        singles(ours, future_ours),
        Reason.THIS_UPDATE_IN_FUTURE,
    ),
    "good then a critical extension, both ours (old: good)": (
        singles(ours, critical_ours),
        Reason.UNKNOWN_CRITICAL_EXTENSION,
    ),
    "good then unknown, both ours": (singles(ours, unknown_ours), GOOD),
    "unknown then good, both ours": (singles(unknown_ours, ours), Reason.CERT_STATUS_UNKNOWN),
}


@pytest.mark.parametrize("case", SEVERAL)
def test_several_single_responses(case: str, ec: Pki) -> None:
    """GnuTLS reads entry 0 only; OpenSSL wants one issuer (ocsp_check_ids); mozpkix judges
    every matching entry: revoked overrides good and unknown, good overrides unknown, and one
    old or future entry fails the whole response (pkixocsp.cpp, SingleResponse)."""
    check_table(ec, *SEVERAL[case])


def test_several_keeps_the_note_and_the_earliest_expiry(ec: Pki) -> None:
    short = ours(ec, next_update=NOW + DAY)
    result = judged(ec, singles(ours, other_serial, lambda p: short))
    assert isinstance(result, Staple), result
    assert result.effective_expiry == NOW + DAY
    assert Note.SEVERAL_RESPONSES in result.notes


# --- 3. Extensions ----------------------------------------------------------------------------


def with_extension(where: str, oid: str, *, critical: bool, **more: bool) -> Maker:
    extension = ExtensionSpec(oid=oid, value=octet_string(bytes(16)), critical=critical, **more)
    if where == "response":
        return lambda p: spec(p, extensions=[extension])
    return lambda p: spec(p, singles=[ours(p, extensions=[extension])])


EXTENSIONS: dict[str, tuple[Maker, Verdict]] = {
    "critical nonce (old: good)": (
        with_extension("response", NONCE, critical=True),
        Reason.UNKNOWN_CRITICAL_EXTENSION,
    ),
    "non-critical nonce": (with_extension("response", NONCE, critical=False), GOOD),
    "critical unknown response extension": (
        with_extension("response", UNKNOWN_OID, critical=True),
        Reason.UNKNOWN_CRITICAL_EXTENSION,
    ),
    "critical SCT list in our single (old: unknown-critical-extension)": (
        with_extension("single", SCT_LIST, critical=True),
        GOOD,
    ),
    "critical unknown single extension": (
        with_extension("single", UNKNOWN_OID, critical=True),
        Reason.UNKNOWN_CRITICAL_EXTENSION,
    ),
}


@pytest.mark.parametrize("case", EXTENSIONS)
def test_extensions(case: str, ec: Pki) -> None:
    """mozpkix understands no response extension (ExtensionNotUnderstood) and, in a
    SingleResponse, only the SCT list (RememberSingleExtension)."""
    check_table(ec, *EXTENSIONS[case])


def with_sct_lists(*values: bytes, critical: bool = False, entries: int = 1) -> Maker:
    """Our SingleResponse (`entries` times), each with SCT lists whose extnValues are `values`."""
    extensions = [ExtensionSpec(oid=SCT_LIST, value=v, critical=critical) for v in values]
    return lambda p: spec(p, singles=[ours(p, extensions=extensions)] * entries)


EMPTY_SCT_LIST = octet_string(b"\x00\x00")
SCT_LISTS: dict[str, tuple[Maker, Verdict]] = {
    "an empty list": (with_sct_lists(EMPTY_SCT_LIST), GOOD),
    "an empty OCTET STRING": (with_sct_lists(octet_string(b"")), GOOD),
    "garbage inside the OCTET STRING": (with_sct_lists(octet_string(b"\x01")), GOOD),
    "another serial's entry with two": (
        lambda p: spec(
            p,
            singles=[
                ours(p),
                replace(
                    other_serial(p),
                    extensions=[ExtensionSpec(oid=SCT_LIST, value=EMPTY_SCT_LIST)] * 2,
                ),
            ],
        ),
        GOOD,
    ),
    "an empty extnValue (old: good)": (with_sct_lists(b""), Reason.BAD_SCT_LIST),
    "critical, an empty extnValue (old: good)": (
        with_sct_lists(b"", critical=True),
        Reason.BAD_SCT_LIST,
    ),
    "twice (old: good)": (with_sct_lists(EMPTY_SCT_LIST, EMPTY_SCT_LIST), Reason.BAD_SCT_LIST),
    "once in each of two of ours (old: good)": (
        with_sct_lists(EMPTY_SCT_LIST, entries=2),
        Reason.BAD_SCT_LIST,
    ),
    "not an OCTET STRING (old: good)": (with_sct_lists(b"\x01"), Reason.BAD_SCT_LIST),
    "an OCTET STRING and a NULL (old: good)": (
        with_sct_lists(EMPTY_SCT_LIST + b"\x05\x00"),
        Reason.BAD_SCT_LIST,
    ),
    "a constructed OCTET STRING (old: good)": (
        with_sct_lists(b"\x24\x04" + EMPTY_SCT_LIST),
        Reason.BAD_SCT_LIST,
    ),
    "a long-form length (old: good)": (
        with_sct_lists(b"\x04\x81\x02\x00\x00"),
        Reason.BAD_SCT_LIST,
    ),
    "not an OCTET STRING, revoked": (
        lambda p: spec(p, singles=[replace(revoked_ours(p), extensions=[_sct(b"\x01")])]),
        REVOKED,
    ),
}


def _sct(value: bytes) -> ExtensionSpec:
    return ExtensionSpec(oid=SCT_LIST, value=value)


@pytest.mark.parametrize("case", SCT_LISTS)
def test_sct_lists(case: str, ec: Pki) -> None:
    """mozpkix keeps one SCT list across our SingleResponses, with a non-empty extnValue
    (RememberSingleExtension), and reads a good response's as one DER OCTET STRING
    (VerifyEncodedOCSPResponse); a revoked response is refused as revoked first."""
    check_table(ec, *SCT_LISTS[case])


# --- 4. Signature algorithms -------------------------------------------------------------------


def signed_with(algorithm: SignatureAlgorithm) -> Maker:
    return lambda p: spec(p, algorithm=algorithm)


A = SignatureAlgorithm
RSA_ALGORITHMS: dict[str, tuple[Maker, Verdict]] = {
    "PKCS#1 v1.5 SHA-256": (signed_with(A.RSA_SHA256), GOOD),
    "PSS SHA-256 salt 32": (signed_with(A.RSA_PSS_SHA256), GOOD),
    "PSS SHA-384 salt 48 (old: good)": (
        signed_with(A.RSA_PSS_SHA384),
        Reason.UNSUPPORTED_ALGORITHM,
    ),
    "PSS SHA-512 salt 64 (old: good)": (
        signed_with(A.RSA_PSS_SHA512),
        Reason.UNSUPPORTED_ALGORITHM,
    ),
    "PSS SHA-1 defaults (old: good)": (
        signed_with(A.RSA_PSS_DEFAULTS),
        Reason.UNSUPPORTED_ALGORITHM,
    ),
    "PSS SHA-256 salt 64 (old: good)": (
        signed_with(A.RSA_PSS_SHA256_SALT64),
        Reason.UNSUPPORTED_ALGORITHM,
    ),
    "MD5": (signed_with(A.RSA_MD5), Reason.WEAK_ALGORITHM),
}


@pytest.mark.parametrize("case", RSA_ALGORITHMS)
def test_rsa_signature_algorithms(case: str, rsa: Pki) -> None:
    """mozpkix takes PSS only with the three CA/Browser Forum encodings (pkixder.cpp,
    SignatureAlgorithmIdentifierValue: rsaPSSWithSHA256MGF1WithSHA256Salt32 and the others);
    GnuTLS reads only the OID (lib/x509/ocsp.c, gnutls_ocsp_resp_get_signature_algorithm),
    which it takes for PSS with SHA-256: gnutls-cli 3.7.9 here says "The received OCSP status
    response is invalid" for the SHA-384 and SHA-512 sets."""
    check_table(rsa, *RSA_ALGORITHMS[case])


@pytest.mark.parametrize("key_type", ["ed25519", "ed448"])
def test_eddsa_signers_are_refused(key_type: str) -> None:
    """mozpkix's SignatureAlgorithmIdentifierValue knows no EdDSA (old: good)."""
    pki = make_pki(key_type)
    check_table(pki, spec, Reason.UNSUPPORTED_ALGORITHM)


# --- 5. The responder's name, compared as bytes ----------------------------------------------


def printable(name: x509.Name) -> x509.Name:
    """The same name with PrintableString values: equal for cryptography, not for clients."""
    return x509.Name(
        [x509.NameAttribute(a.oid, str(a.value), _type=_ASN1Type.PrintableString) for a in name]
    )


def by_loose_name(pki: Pki) -> ResponseSpec:
    name = printable(pki.ca.cert.subject)
    assert name == pki.ca.cert.subject
    return spec(pki, responder_id=name)


def delegate_by_loose_name(pki: Pki) -> ResponseSpec:
    signer = pki.ca.delegated_signer()
    made = good_spec(pki.leaf, signer, NOW)
    return replace(made, responder_id=printable(signer.cert.subject))


NAMES: dict[str, tuple[Maker, Verdict]] = {
    "issuer by name": (lambda p: spec(p, responder_id=p.ca.cert.subject), GOOD),
    "issuer by a re-encoded name (old: good)": (by_loose_name, Reason.SIGNER_UNKNOWN),
    "delegate by a re-encoded name (old: good)": (delegate_by_loose_name, Reason.SIGNER_UNKNOWN),
}


@pytest.mark.parametrize("case", NAMES)
def test_responder_names_are_compared_as_encoded(case: str, ec: Pki) -> None:
    """mozpkix: MatchResponderID compares byName with InputsAreEqual (bytes)."""
    check_table(ec, *NAMES[case])


def test_loose_name_is_explained(ec: Pki) -> None:
    result = judged(ec, by_loose_name)
    assert isinstance(result, Rejection)
    assert "encoded differently" in result.detail


# --- 6 and 7. The delegated responder ------------------------------------------------------


def by_delegate(**options: object) -> Maker:
    def make(pki: Pki) -> ResponseSpec:
        signer: Identity = pki.ca.delegated_signer(**options)  # type: ignore[arg-type]
        return good_spec(pki.leaf, signer, NOW)

    return make


UNKNOWN_EXTENSION = x509.UnrecognizedExtension(x509.ObjectIdentifier(UNKNOWN_OID), b"\x05\x00")
POLICY_CONSTRAINTS = x509.PolicyConstraints(require_explicit_policy=0, inhibit_policy_mapping=None)
DELEGATES: dict[str, tuple[Maker, Verdict]] = {
    "valid since a second": (by_delegate(not_before=NOW - timedelta(seconds=1)), GOOD),
    "valid in two minutes (old: good)": (
        by_delegate(not_before=NOW + timedelta(minutes=2)),
        Reason.DELEGATE_NOT_YET_VALID,
    ),
    "an unknown critical extension (old: good)": (
        by_delegate(extensions=[(UNKNOWN_EXTENSION, True)]),
        Reason.DELEGATE_CRITICAL_EXTENSION,
    ),
    "an unknown non-critical extension": (
        by_delegate(extensions=[(UNKNOWN_EXTENSION, False)]),
        GOOD,
    ),
    "a critical policyConstraints (old: good)": (
        by_delegate(extensions=[(POLICY_CONSTRAINTS, True)]),
        Reason.DELEGATE_CRITICAL_EXTENSION,
    ),
    "a non-critical policyConstraints": (
        by_delegate(extensions=[(POLICY_CONSTRAINTS, False)]),
        GOOD,
    ),
    "a critical inhibitAnyPolicy": (
        by_delegate(extensions=[(x509.InhibitAnyPolicy(0), True)]),
        GOOD,
    ),
    "a critical keyUsage": (
        by_delegate(
            extensions=[
                (x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
            ]
        ),
        GOOD,
    ),
}


def key_usage(value: str) -> x509.UnrecognizedExtension:
    """A keyUsage whose extnValue is the hex `value`, as it is."""
    return x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.15"), bytes.fromhex(value))


KEY_USAGES: dict[str, tuple[str, Verdict]] = {
    "digitalSignature": ("03020780", GOOD),
    "keyEncipherment only": ("03020520", GOOD),
    "keyCertSign only, not a CA": ("03020204", GOOD),
    "digitalSignature with 0 unused bits declared": ("03020080", GOOD),
    "an empty BIT STRING (old: good)": ("030100", Reason.DELEGATE_BAD_KEY_USAGE),
    "one byte, no bit set (old: good)": ("03020000", Reason.DELEGATE_BAD_KEY_USAGE),
    "a bit of the third byte only (old: good)": ("030407000080", Reason.DELEGATE_BAD_KEY_USAGE),
    "an unused bit set (old: malformed)": ("03020781", Reason.DELEGATE_BAD_KEY_USAGE),
    "8 unused bits (old: malformed)": ("03020800", Reason.DELEGATE_BAD_KEY_USAGE),
    "a NULL after the BIT STRING (old: malformed)": ("030207800500", Reason.DELEGATE_BAD_KEY_USAGE),
    "an OCTET STRING (old: malformed)": ("040180", Reason.DELEGATE_BAD_KEY_USAGE),
    "an empty extnValue (old: malformed)": ("", Reason.DELEGATE_BAD_KEY_USAGE),
    "decipherOnly alone, no keyAgreement (old: malformed)": ("0303070080", GOOD),
    "encipherOnly alone, no keyAgreement (old: malformed)": ("03020001", GOOD),
    "digitalSignature and decipherOnly (old: malformed)": ("0303078080", GOOD),
    "encipherOnly and decipherOnly, no keyAgreement (old: malformed)": ("0303070180", GOOD),
    "decipherOnly in a BIT STRING of 16 bits (old: malformed)": ("0303000080", GOOD),
}


@pytest.mark.parametrize("case", KEY_USAGES)
def test_delegate_key_usage(case: str, ec: Pki) -> None:
    """mozpkix needs no particular usage of a delegate, but a well-formed keyUsage
    (pkixcheck.cpp, CheckKeyUsage); OpenSSL one with a usage in its first two bytes
    (v3_purp.c, ossl_x509v3_cache_extensions)."""
    value, expected = KEY_USAGES[case]
    check_table(ec, by_delegate(extensions=[(key_usage(value), False)]), expected)


DECIPHER_ONLY = key_usage("0303070080")  # cryptography refuses it, every client takes it
NOT_DER_SAN = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.17"), b"\x30\x03\x82\x01")
BESIDE_DECIPHER_ONLY: dict[str, tuple[Maker, Verdict]] = {
    "an unknown critical extension (old: malformed)": (
        by_delegate(extensions=[(DECIPHER_ONLY, True), (UNKNOWN_EXTENSION, True)]),
        Reason.DELEGATE_CRITICAL_EXTENSION,
    ),
    "no id-kp-OCSPSigning (old: malformed)": (
        by_delegate(ocsp_signing=False, extensions=[(DECIPHER_ONLY, True)]),
        Reason.DELEGATE_NO_OCSP_SIGNING,
    ),
    "cA TRUE (old: malformed)": (
        by_delegate(is_ca=True, extensions=[(DECIPHER_ONLY, True)]),
        Reason.DELEGATE_IS_CA,
    ),
    "a subjectAltName that is not DER": (
        by_delegate(extensions=[(DECIPHER_ONLY, True), (NOT_DER_SAN, False)]),
        Reason.MALFORMED,
    ),
}


@pytest.mark.parametrize("case", BESIDE_DECIPHER_ONLY)
def test_the_rest_of_a_delegate_beside_a_key_usage_cryptography_refuses(case: str, ec: Pki) -> None:
    """cryptography refuses a keyUsage with decipherOnly but no keyAgreement, and with it every
    extension of the certificate: the others are read all the same (`certs.extensions_of`),
    so each fault is the one it is. One cryptography cannot read either stays `malformed`, for
    that extension (GnuTLS and OpenSSL refuse such a delegate: docs/strictness.md)."""
    make, expected = BESIDE_DECIPHER_ONLY[case]
    result = judged(ec, make)
    assert verdict(result) == expected, result
    assert isinstance(result, Rejection)
    assert "encipher_only" not in result.detail


@pytest.mark.parametrize("case", DELEGATES)
def test_delegated_responder(case: str, ec: Pki) -> None:
    """No clock-skew allowance on the delegate's notBefore: mozpkix (CheckValidity), GnuTLS
    and OpenSSL (X509_verify_cert) check it at the time itself. OpenSSL refuses an unhandled
    critical extension (v3_purp.c, X509_supported_extension), GnuTLS too (verify.c,
    check_for_unknown_exts: not policyConstraints)."""
    check_table(ec, *DELEGATES[case])


def with_certs(*make: Callable[[Pki], x509.Certificate], **changes: object) -> Maker:
    return lambda p: spec(p, certificates=tuple(m(p) for m in make), **changes)


def issuer_cert(pki: Pki) -> x509.Certificate:
    return pki.ca.cert


def valid_copy(pki: Pki) -> x509.Certificate:
    return copy_of(pki.ca.issuing, NOW - 400 * DAY, NOW + 300 * DAY)


def expired_copy(pki: Pki) -> x509.Certificate:
    return copy_of(pki.ca.issuing, NOW - 400 * DAY, NOW - 30 * DAY)


def by_issuer_key(pki: Pki) -> bytes:
    return key_hash(pki.ca.issuing.key.public_key())


def claims_issuer_key_id(pki: Pki) -> x509.Certificate:
    """A leaf of another CA whose subjectKeyIdentifier is our issuer's key hash."""
    key_id = x509.SubjectKeyIdentifier(by_issuer_key(pki))
    return pki.other.delegated_signer(name="key id claim", extensions=[(key_id, False)]).cert


def delegate_after_key_id_claim(pki: Pki) -> ResponseSpec:
    """A delegate signs byKey; before its certificate, one claiming its key hash as SKI."""
    delegate = pki.ca.delegated_signer()
    key_id = x509.SubjectKeyIdentifier(key_hash(delegate.key.public_key()))
    claim = pki.other.delegated_signer(name="key id claim", extensions=[(key_id, False)]).cert
    return replace(
        good_spec(pki.leaf, delegate, NOW),
        responder_id=key_hash(delegate.key.public_key()),
        certificates=(claim, delegate.cert),
    )


ISSUER_COPIES: dict[str, tuple[Maker, Verdict]] = {
    "the issuer's own certificate": (with_certs(issuer_cert), GOOD),
    "the issuer's own, then a copy": (with_certs(issuer_cert, valid_copy), GOOD),
    "a valid copy (old: good)": (with_certs(valid_copy), Reason.AMBIGUOUS_SIGNER),
    "a valid copy, byKey (old: good)": (
        lambda p: spec(p, certificates=(valid_copy(p),), responder_id=by_issuer_key(p)),
        Reason.AMBIGUOUS_SIGNER,
    ),
    "an expired copy (old: good)": (with_certs(expired_copy), Reason.AMBIGUOUS_SIGNER),
    "a certificate with the issuer's key hash as SKI, byKey (old: good)": (
        lambda p: spec(p, certificates=(claims_issuer_key_id(p),), responder_id=by_issuer_key(p)),
        Reason.AMBIGUOUS_SIGNER,
    ),
    "the same SKI claim, byName": (with_certs(claims_issuer_key_id), GOOD),
    "a delegate byKey after a certificate claiming its key hash (old: good)": (
        delegate_after_key_id_claim,
        Reason.AMBIGUOUS_SIGNER,
    ),
}


@pytest.mark.parametrize("case", ISSUER_COPIES)
def test_the_first_certificate_matching_the_responder_id_signs(case: str, rsa: Pki) -> None:
    """GnuTLS verifies with the first included certificate matching the ResponderID (byName,
    or byKey by key hash or subjectKeyIdentifier), as a delegated responder unless it is the
    issuer's very certificate (lib/x509/ocsp.c, find_signercert,
    gnutls_ocsp_resp_verify_direct)."""
    check_table(rsa, *ISSUER_COPIES[case])


def test_delegate_not_yet_valid_is_worth_retrying() -> None:
    assert Reason.DELEGATE_NOT_YET_VALID.retryable


# --- 8. Explicitly encoded DER defaults --------------------------------------------------------

DEFAULTS: dict[str, tuple[Maker, Verdict]] = {
    "explicit version v1 (old: malformed)": (lambda p: spec(p, explicit_version=True), GOOD),
    "critical FALSE in a response extension (old: malformed)": (
        with_extension("response", NONCE, critical=False, encode_default=True),
        GOOD,
    ),
    "critical FALSE in a single extension (old: malformed)": (
        with_extension("single", UNKNOWN_OID, critical=False, encode_default=True),
        GOOD,
    ),
    "explicit version v2": (lambda p: spec(p, version=1), Reason.UNSUPPORTED_VERSION),
}


@pytest.mark.parametrize("case", DEFAULTS)
def test_explicit_defaults(case: str, ec: Pki) -> None:
    """mozpkix reads an explicit v1 (der::OptionalVersion) and an explicit FALSE
    (der::OptionalBoolean) on purpose; OpenSSL and GnuTLS decode BER there."""
    check_table(ec, *DEFAULTS[case])


def signed_then_spelled_out(cert: x509.Certificate) -> bytes:
    """`cert` with critical FALSE spelled out after it was signed: its signature covers the
    certificate without it."""
    root = Node.parse(cert.public_bytes(serialization.Encoding.DER))
    for extension in next(i for i in root.items[0].items if i.tag == 0xA3).items[0].items:
        if len(extension.items) == 2:
            extension.items.insert(1, Node(0x01, b"\x00"))
    return root.encode()


def carrying(make_certs: Callable[[Pki, Identity], list[bytes]]) -> Maker:
    """Signed by a delegate of the issuer, carrying `make_certs(pki, delegate)` as they are."""

    def make(pki: Pki) -> bytes:
        delegate = pki.ca.delegated_signer()
        return with_certificates(
            craft_response(good_spec(pki.leaf, delegate, NOW)), make_certs(pki, delegate)
        )

    return make


def carried_by_issuer(make_certs: Callable[[Pki], list[bytes]]) -> Maker:
    return lambda p: with_certificates(craft_response(spec(p)), make_certs(p))


CERTS_SPELLING_OUT: dict[str, tuple[Maker, Verdict]] = {
    "the delegate's (old: malformed)": (
        carrying(lambda p, d: [false_spelled_out(d.cert, p.ca.issuing.key)]),
        GOOD,
    ),
    "the delegate's, signed without it (old: malformed)": (
        carrying(lambda p, d: [signed_then_spelled_out(d.cert)]),
        Reason.DELEGATE_NOT_ISSUED_BY_ISSUER,
    ),
    "an unrelated one, issuer-signed (old: malformed)": (
        carried_by_issuer(lambda p: [false_spelled_out(p.leaf.cert, p.ca.issuing.key)]),
        GOOD,
    ),
    "the issuer's own, issuer-signed (old: malformed)": (
        carried_by_issuer(lambda p: [false_spelled_out(p.ca.cert, p.ca.issuing.key)]),
        Reason.AMBIGUOUS_SIGNER,
    ),
}


@pytest.mark.parametrize("case", CERTS_SPELLING_OUT)
def test_certificates_spelling_out_critical_false(case: str, ec: Pki) -> None:
    """Every client reads a certificate with critical FALSE spelled out; its signature is
    checked over it as sent, and GnuTLS compares the issuer's certificate byte for byte."""
    check_table(ec, *CERTS_SPELLING_OUT[case])


def test_explicit_defaults_are_stapled_as_sent(ec: Pki) -> None:
    data = craft_response(spec(ec, explicit_version=True))
    staple = verify(data, ec.target, NOW)
    assert isinstance(staple, Staple)
    assert staple.der == data


def test_explicit_default_does_not_hide_a_bad_signature(ec: Pki) -> None:
    data = craft_response(spec(ec, explicit_version=True, corrupt_signature=True))
    assert verdict(verify(data, ec.target, NOW)) is Reason.BAD_SIGNATURE


# --- Issue 14 item 9: junk, then DER ------------------------------------------------------------

BODIES: dict[str, tuple[Maker, Verdict]] = {
    "an HTTP header, then a response (old: trailing-data)": (
        lambda p: b"HTTP/1.1 200 OK\r\n\r\n" + craft_response(spec(p)),
        Reason.MALFORMED,
    ),
    "a response, then a zero byte": (
        lambda p: craft_response(spec(p)) + b"\x00",
        Reason.TRAILING_DATA,
    ),
    "tryLater, then a newline": (lambda p: unsuccessful(3) + b"\n", Reason.TRAILING_DATA),
}


@pytest.mark.parametrize("case", BODIES)
def test_trailing_data_needs_a_response_first(case: str, ec: Pki) -> None:
    check_table(ec, *BODIES[case])


# --- Texts: an issuer whose subject is encoded otherwise than the leaf's issuer name ----------


def oddly_issued(pki: Pki) -> Leaf:
    """A leaf whose issuer name is the CA's subject in PrintableString: gnutls-cli 3.7.9 says
    "The certificate issuer is unknown" for it, curl (OpenSSL's X509_NAME_cmp) accepts it."""
    key = pki.leaf.key
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd.test")]))
        .issuer_name(printable(pki.ca.cert.subject))
        .public_key(key.public_key())
        .serial_number(0x5151)
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("odd.test")]), critical=False)
        .sign(pki.ca.issuing.key, pki.leaf.cert.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    return Leaf(cert, key, issuer=pki.ca.cert, chain=pki.ca.chain, root=pki.ca.root.cert)


def test_issuer_encoded_differently_is_named(ec: Pki, tmp_path: Path) -> None:
    """The issuer is in the file; only its name's encoding differs (mozpkix and GnuTLS then
    find no issuer: they match names as bytes). Old message: "is not in this file"."""
    leaf = oddly_issued(ec).cert
    bundle = tmp_path / "fullchain.pem"
    bundle.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ec.ca.cert))
    )
    with pytest.raises(InputError) as caught:
        asyncio.run(load_target(bundle, patience=WATCH_TIMEOUT))
    message = str(caught.value)
    assert "not in this file" not in message
    assert "encoded differently" in message


def test_check_names_an_issuer_encoded_differently(ec: Pki) -> None:
    """`mustaple check` against a real TLS server sending such a leaf and its issuer."""
    with StaplingServer(oddly_issued(ec)) as server:
        server.set_staple(craft_response(spec(ec)))
        report = asyncio.run(check_server("127.0.0.1", server.port, servername="odd.test"))
    assert report.level is Severity.UNKNOWN
    assert "encoded differently" in report.verdict


# --- Texts: what `mustaple check` says each client does with a staple past its life -----------


def expired_by(pki: Pki, late: timedelta, window: timedelta = 4 * DAY) -> bytes:
    this_update = NOW - late - window
    single = ours(pki, this_update=this_update, next_update=this_update + window)
    return craft_response(spec(pki, produced_at=this_update, singles=[single]))


def without_next_update(pki: Pki, age: timedelta) -> bytes:
    single = ours(pki, this_update=NOW - age, next_update=None)
    return craft_response(spec(pki, produced_at=NOW - age, singles=[single]))


# what each client does with a must-staple certificate: Firefox, GnuTLS, curl
LATE: dict[str, tuple[Callable[[Pki], bytes], tuple[bool | None, ...]]] = {
    "expired 2 minutes ago (old: curl refuses)": (
        lambda p: expired_by(p, timedelta(minutes=2)),
        (True, False, True),
    ),
    "expired 2 hours ago": (lambda p: expired_by(p, timedelta(hours=2)), (True, False, False)),
    "expired 2 days ago": (lambda p: expired_by(p, 2 * DAY), (False, False, False)),
    "20-day window, 12 days in": (
        lambda p: expired_by(p, -8 * DAY, window=20 * DAY),
        (False, True, True),
    ),
    "no nextUpdate, 2 hours old": (
        lambda p: without_next_update(p, timedelta(hours=2)),
        (True,) * 3,
    ),
    "no nextUpdate, 3 days old": (lambda p: without_next_update(p, 3 * DAY), (False, True, True)),
    "no nextUpdate, 20 days old": (
        lambda p: without_next_update(p, 20 * DAY),
        (False, False, True),
    ),
    "cert-id-not-sha1": (
        lambda p: craft_response(spec(p, singles=[ours(p, "sha256")])),
        (None, None, False),
    ),
}


@pytest.mark.parametrize("case", LATE)
def test_check_client_model_follows_the_clients_times(case: str, ec: Pki) -> None:
    """Firefox: one day of slop after min(nextUpdate, thisUpdate + 10 days), or after
    thisUpdate + 1 day without nextUpdate (pkixocsp.cpp, SingleResponse). curl: 300 s
    (lib/vtls/openssl.c, verifystatus). GnuTLS: none, 15 days without nextUpdate
    (lib/cert-session.c, check_ocsp_response)."""
    make, expected = LATE[case]
    data = make(ec)
    outcome = verify(data, ec.target, NOW)
    assert isinstance(outcome, Rejection), outcome
    seen = client_states(data, outcome, ec.target, NOW)
    verdicts = tuple(
        client_accepts(client, True, seen.get(client, StapleState.INVALID))
        for client in (Client.FIREFOX, Client.GNUTLS, Client.CURL)
    )
    assert verdicts == expected


# --- `fetch --hash sha256` says what it got, and writes no staple ------------------------------


def test_fetch_with_sha256_is_honest(
    serve: Callable[[Handler], LoopbackServer],
    ec: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = craft_response(spec(ec, singles=[ours(ec, "sha256")]))

    async def answer(request: web.Request) -> web.StreamResponse:
        return ocsp_reply(body)

    server = serve(answer)
    files = ec.leaf.write(tmp_path / "cert")
    out_file = tmp_path / "staple.der"
    argv = ["fetch", str(files.fullchain), "--url", server.url, "--hash", "sha256"]
    code = main([*argv, "--out", str(out_file), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == ExitCode.NO_STAPLE
    assert report["reason"] == "cert-id-not-sha1"
    assert not out_file.exists()
    assert main(argv) == ExitCode.NO_STAPLE
    assert "SHA-1" in capsys.readouterr().out
