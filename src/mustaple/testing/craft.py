"""Hand-made OCSP responses: every field under the test's control, however wrong.

cryptography's `OCSPResponseBuilder` only makes well-formed responses. Tests of a strict
validator need the others too: several SingleResponses, version 2, unknown critical
extensions, MD5 or RSA-PSS signatures, foreign response types, broken signatures. So this
module has a small DER *encoder* and builds a response from a frozen `ResponseSpec`:

    spec = good_spec(leaf, ca.issuing, now, version=1)   # a correct response, then one change
    der = craft_response(spec)
    der = unsuccessful(3)                                 # tryLater

Nothing here checks that the result makes sense: that is the validator's job.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509 import ocsp

from mustaple.core import der
from mustaple.core.request import CertId, make_cert_id
from mustaple.testing.pki import Identity, Leaf

__all__ = [
    "BASIC_RESPONSE",
    "DEFAULT_VALIDITY",
    "ExtensionSpec",
    "ResponseSpec",
    "SignatureAlgorithm",
    "SingleSpec",
    "bit_string",
    "boolean",
    "craft_response",
    "enumerated",
    "explicit",
    "generalized_time",
    "good_single",
    "good_spec",
    "integer",
    "key_hash",
    "null",
    "octet_string",
    "oid",
    "seq",
    "tlv",
    "unsuccessful",
]

BASIC_RESPONSE = "1.3.6.1.5.5.7.48.1.1"  # id-pkix-ocsp-basic
DEFAULT_VALIDITY = timedelta(days=4)
_HASH_OIDS = {
    "md5": "1.2.840.113549.2.5",
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
_MGF1 = "1.2.840.113549.1.1.8"
_CRL_REASONS = {
    x509.ReasonFlags.unspecified: 0,
    x509.ReasonFlags.key_compromise: 1,
    x509.ReasonFlags.ca_compromise: 2,
    x509.ReasonFlags.affiliation_changed: 3,
    x509.ReasonFlags.superseded: 4,
    x509.ReasonFlags.cessation_of_operation: 5,
    x509.ReasonFlags.certificate_hold: 6,
    x509.ReasonFlags.remove_from_crl: 8,
    x509.ReasonFlags.privilege_withdrawn: 9,
    x509.ReasonFlags.aa_compromise: 10,
}


# --- A small DER encoder ------------------------------------------------------------------------


def tlv(tag: int, content: bytes) -> bytes:
    """One element: the tag byte, the DER length, the content."""
    if not 0 <= tag <= 0xFF or tag & 0x1F == 0x1F:
        raise ValueError(f"tag must be a low-number tag byte, not {tag!r}")
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def seq(*items: bytes) -> bytes:
    """A SEQUENCE of already encoded elements."""
    return tlv(der.SEQUENCE, b"".join(items))


def _twos_complement(value: int) -> bytes:
    size = (value + (value < 0)).bit_length() // 8 + 1
    return value.to_bytes(size, "big", signed=True)


def integer(value: int) -> bytes:
    """A minimal two's-complement INTEGER."""
    return tlv(der.INTEGER, _twos_complement(value))


def enumerated(value: int) -> bytes:
    return tlv(der.ENUMERATED, _twos_complement(value))


def boolean(value: bool) -> bytes:
    """DER BOOLEAN: 0xFF for true, 0x00 for false."""
    return tlv(0x01, b"\xff" if value else b"\x00")


def null() -> bytes:
    return tlv(der.NULL, b"")


def octet_string(value: bytes) -> bytes:
    return tlv(der.OCTET_STRING, value)


def bit_string(value: bytes) -> bytes:
    """A BIT STRING of whole bytes (no unused bits)."""
    return tlv(der.BIT_STRING, b"\x00" + value)


def oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER from its dotted form."""
    arcs = [int(arc) for arc in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise ValueError(f"not an object identifier: {dotted!r}")
    body = b"".join(_base128(arc) for arc in [40 * arcs[0] + arcs[1], *arcs[2:]])
    return tlv(der.OID, body)


def _base128(value: int) -> bytes:
    if value < 0:
        raise ValueError("object identifier arcs are not negative")
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(groups))


def generalized_time(when: datetime) -> bytes:
    """GeneralizedTime in UTC to the second, as RFC 5280 profiles it (YYYYMMDDHHMMSSZ)."""
    return tlv(0x18, f"{_utc(when):%Y%m%d%H%M%S}Z".encode("ascii"))


def explicit(number: int, content: bytes) -> bytes:
    """[number] EXPLICIT around an already encoded element (context-specific, constructed)."""
    if not 0 <= number < 0x1F:
        raise ValueError(f"tag number must be 0..30, not {number}")
    return tlv(0xA0 | number, content)


def _utc(when: datetime) -> datetime:
    offset = when.utcoffset()
    if offset is None:
        raise ValueError(f"times must be aware UTC datetimes, not naive {when}")
    return when - offset


# --- What a response says -----------------------------------------------------------------------


class SignatureAlgorithm(enum.Enum):
    """How the response is signed; each needs a key of the matching type."""

    RSA_SHA256 = "rsa-sha256"  # sha256WithRSAEncryption, PKCS#1 v1.5
    RSA_PSS_SHA256 = "rsa-pss-sha256"  # RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32
    RSA_PSS_SHA384 = "rsa-pss-sha384"  # RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48
    RSA_PSS_SHA512 = "rsa-pss-sha512"  # RSASSA-PSS, SHA-512, MGF1-SHA-512, salt 64
    RSA_PSS_DEFAULTS = "rsa-pss-defaults"  # RSASSA-PSS, empty parameters: SHA-1, salt 20
    RSA_PSS_SHA256_SALT64 = "rsa-pss-sha256-salt64"  # SHA-256 with a salt of 64, not 32
    RSA_MD5 = "rsa-md5"  # md5WithRSAEncryption: broken, for testing refusal
    RSA_SHA1 = "rsa-sha1"  # sha1WithRSAEncryption, PKCS#1 v1.5
    ECDSA_SHA256 = "ecdsa-sha256"
    ECDSA_SHA1 = "ecdsa-sha1"
    ED25519 = "ed25519"
    ED448 = "ed448"


@dataclass(frozen=True, kw_only=True)
class ExtensionSpec:
    """An extension: its OID, criticality and the DER that goes inside extnValue.

    `encode_default` writes `critical FALSE` explicitly (DER omits a DEFAULT value).
    """

    oid: str
    value: bytes = field(default_factory=null)
    critical: bool = False
    encode_default: bool = False


@dataclass(frozen=True, kw_only=True)
class SingleSpec:
    """One SingleResponse. `revocation_time` is required for, and only for, REVOKED."""

    cert_id: CertId
    this_update: datetime
    next_update: datetime | None
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD
    revocation_time: datetime | None = None
    revocation_reason: x509.ReasonFlags | None = None
    extensions: Sequence[ExtensionSpec] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extensions", tuple(self.extensions))
        revoked = self.status == ocsp.OCSPCertStatus.REVOKED
        if revoked != (self.revocation_time is not None):
            raise ValueError("revocation_time is required for REVOKED and only for REVOKED")
        if self.revocation_reason is not None and not revoked:
            raise ValueError("revocation_reason only goes with REVOKED")
        if self.cert_id.hash_name not in _HASH_OIDS:
            raise ValueError(f"no OID known for CertID hash {self.cert_id.hash_name!r}")
        for when in (self.this_update, self.next_update, self.revocation_time):
            if when is not None:
                _utc(when)


@dataclass(frozen=True, kw_only=True)
class ResponseSpec:
    """Everything in an OCSPResponse. The defaults give a well-formed v1 basic response.

    `responder_id` is a Name (byName) or a SHA-1 key hash (byKey, see `key_hash`).
    `version` is the RFC value: 0 is v1; `explicit_version` writes it even when it is the
    DEFAULT v1. `algorithm` None picks the natural one for `key`.
    With a `response_status` other than 0 the responseBytes are still included; use
    `unsuccessful` for the usual bare form.
    """

    key: CertificateIssuerPrivateKeyTypes
    responder_id: x509.Name | bytes
    produced_at: datetime
    singles: Sequence[SingleSpec] = ()
    response_status: int = 0
    response_type: str = BASIC_RESPONSE
    version: int = 0
    extensions: Sequence[ExtensionSpec] = ()
    algorithm: SignatureAlgorithm | None = None
    certificates: Sequence[x509.Certificate] = ()
    corrupt_signature: bool = False
    explicit_version: bool = False

    def __post_init__(self) -> None:
        for name in ("singles", "extensions", "certificates"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not _fits(self.signature_algorithm, self.key):
            raise ValueError(
                f"{self.signature_algorithm.value} cannot sign with a {_key_kind(self.key)}"
            )
        _utc(self.produced_at)

    @property
    def signature_algorithm(self) -> SignatureAlgorithm:
        """`algorithm`, or the natural one for `key` when that is None."""
        return self.algorithm or _natural_algorithm(self.key)


def _key_kind(key: CertificateIssuerPrivateKeyTypes) -> str:
    return type(key).__name__.lstrip("_")


def _natural_algorithm(key: CertificateIssuerPrivateKeyTypes) -> SignatureAlgorithm:
    if isinstance(key, rsa.RSAPrivateKey):
        return SignatureAlgorithm.RSA_SHA256
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return SignatureAlgorithm.ECDSA_SHA256
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return SignatureAlgorithm.ED25519
    if isinstance(key, ed448.Ed448PrivateKey):
        return SignatureAlgorithm.ED448
    raise TypeError(f"key must be an RSA, EC, Ed25519 or Ed448 private key, not {_key_kind(key)}")


def _fits(algorithm: SignatureAlgorithm, key: CertificateIssuerPrivateKeyTypes) -> bool:
    natural = _natural_algorithm(key)
    if natural in (SignatureAlgorithm.RSA_SHA256, SignatureAlgorithm.ECDSA_SHA256):
        family: str = natural.value.split("-")[0]
        return algorithm.value.startswith(family + "-")
    return algorithm == natural


# --- Building the DER ---------------------------------------------------------------------------


def unsuccessful(status: int) -> bytes:
    """An OCSPResponse with a non-successful responseStatus and no responseBytes.

    1 malformedRequest, 2 internalError, 3 tryLater, 5 sigRequired, 6 unauthorized (4 is
    unused by RFC 6960, which makes it a good malformed case).
    """
    if status == 0:
        raise ValueError("status 0 is successful; build those with craft_response")
    return seq(enumerated(status))


def craft_response(spec: ResponseSpec) -> bytes:
    """The DER OCSPResponse that `spec` describes, signed over its tbsResponseData."""
    tbs = _response_data(spec)
    signature = _sign(spec, tbs)
    algorithm = _algorithm_identifier(spec.signature_algorithm)
    basic_parts = [tbs, algorithm, bit_string(signature)]
    if spec.certificates:
        certs = [c.public_bytes(serialization.Encoding.DER) for c in spec.certificates]
        basic_parts.append(explicit(0, seq(*certs)))
    response_bytes = seq(oid(spec.response_type), octet_string(seq(*basic_parts)))
    return seq(enumerated(spec.response_status), explicit(0, response_bytes))


def _response_data(spec: ResponseSpec) -> bytes:
    written = spec.version != 0 or spec.explicit_version
    parts = [explicit(0, integer(spec.version))] if written else []
    if isinstance(spec.responder_id, x509.Name):
        parts.append(explicit(1, spec.responder_id.public_bytes()))
    else:
        parts.append(explicit(2, octet_string(spec.responder_id)))
    parts.append(generalized_time(spec.produced_at))
    parts.append(seq(*(_single(s) for s in spec.singles)))
    if spec.extensions:
        parts.append(explicit(1, _extensions(spec.extensions)))
    return seq(*parts)


def _single(single: SingleSpec) -> bytes:
    parts = [_cert_id(single.cert_id), _status(single), generalized_time(single.this_update)]
    if single.next_update is not None:
        parts.append(explicit(0, generalized_time(single.next_update)))
    if single.extensions:
        parts.append(explicit(1, _extensions(single.extensions)))
    return seq(*parts)


def _cert_id(cert_id: CertId) -> bytes:
    return seq(
        _hash_identifier(cert_id.hash_name),
        octet_string(cert_id.issuer_name_hash),
        octet_string(cert_id.issuer_key_hash),
        integer(cert_id.serial),
    )


def _hash_identifier(name: str) -> bytes:
    return seq(oid(_HASH_OIDS[name]), null())


def _status(single: SingleSpec) -> bytes:
    if single.status == ocsp.OCSPCertStatus.GOOD:
        return tlv(0x80, b"")  # good [0] IMPLICIT NULL
    if single.status == ocsp.OCSPCertStatus.UNKNOWN:
        return tlv(0x82, b"")  # unknown [2] IMPLICIT NULL
    assert single.revocation_time is not None  # checked by SingleSpec
    info = generalized_time(single.revocation_time)
    if single.revocation_reason is not None:
        info += explicit(0, enumerated(_CRL_REASONS[single.revocation_reason]))
    return tlv(0xA1, info)  # revoked [1] IMPLICIT RevokedInfo


def _extensions(extensions: Sequence[ExtensionSpec]) -> bytes:
    return seq(*(_extension(e) for e in extensions))


def _extension(extension: ExtensionSpec) -> bytes:
    written = extension.critical or extension.encode_default  # DER omits DEFAULT FALSE
    critical = boolean(extension.critical) if written else b""
    return seq(oid(extension.oid), critical, octet_string(extension.value))


def _algorithm_identifier(algorithm: SignatureAlgorithm) -> bytes:
    if algorithm == SignatureAlgorithm.RSA_SHA256:
        return seq(oid("1.2.840.113549.1.1.11"), null())
    if algorithm == SignatureAlgorithm.RSA_MD5:
        return seq(oid("1.2.840.113549.1.1.4"), null())
    if algorithm == SignatureAlgorithm.RSA_SHA1:
        return seq(oid("1.2.840.113549.1.1.5"), null())
    if algorithm == SignatureAlgorithm.ECDSA_SHA1:
        return seq(oid("1.2.840.10045.4.1"))
    if algorithm in _PSS:
        return seq(oid("1.2.840.113549.1.1.10"), _pss_params(*_PSS[algorithm]))
    if algorithm == SignatureAlgorithm.ECDSA_SHA256:
        return seq(oid("1.2.840.10045.4.3.2"))
    if algorithm == SignatureAlgorithm.ED448:
        return seq(oid("1.3.101.113"))
    return seq(oid("1.3.101.112"))  # Ed25519


# RSASSA-PSS variants: the hash (for the digest and MGF1) and the salt length
_PSS = {
    SignatureAlgorithm.RSA_PSS_SHA256: ("sha256", 32),
    SignatureAlgorithm.RSA_PSS_SHA384: ("sha384", 48),
    SignatureAlgorithm.RSA_PSS_SHA512: ("sha512", 64),
    SignatureAlgorithm.RSA_PSS_DEFAULTS: ("sha1", 20),
    SignatureAlgorithm.RSA_PSS_SHA256_SALT64: ("sha256", 64),
}
_HASHES = {
    "sha1": hashes.SHA1(),
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


def _pss_params(hash_name: str, salt: int) -> bytes:
    """RSASSA-PSS-params with every field explicit (empty for the SHA-1 defaults)."""
    if hash_name == "sha1" and salt == 20:
        return seq()  # every field DEFAULT: SHA-1, MGF1 with SHA-1, salt 20
    digest = _hash_identifier(hash_name)
    mgf1 = seq(oid(_MGF1), digest)
    return seq(explicit(0, digest), explicit(1, mgf1), explicit(2, integer(salt)))


def _sign(spec: ResponseSpec, data: bytes) -> bytes:
    signature = _signature(spec.key, spec.signature_algorithm, data)
    if spec.corrupt_signature:
        signature = signature[:-1] + bytes([signature[-1] ^ 0x01])
    return signature


def _signature(
    key: CertificateIssuerPrivateKeyTypes, algorithm: SignatureAlgorithm, data: bytes
) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        if algorithm in _PSS:
            hash_name, salt = _PSS[algorithm]
            digest = _HASHES[hash_name]
            pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=salt)
            return key.sign(data, pss, digest)
        pkcs1 = {
            SignatureAlgorithm.RSA_MD5: hashes.MD5(),
            SignatureAlgorithm.RSA_SHA1: _HASHES["sha1"],
        }
        return key.sign(data, padding.PKCS1v15(), pkcs1.get(algorithm, hashes.SHA256()))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        sha1 = algorithm == SignatureAlgorithm.ECDSA_SHA1
        return key.sign(data, ec.ECDSA(_HASHES["sha1"] if sha1 else hashes.SHA256()))
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return key.sign(data)
    raise TypeError(f"cannot sign with a {_key_kind(key)}")


# --- Shortcuts ----------------------------------------------------------------------------------


def key_hash(public_key: PublicKeyTypes) -> bytes:
    """SHA-1 of the subjectPublicKey bits: what ResponderID byKey carries."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bits = der.children(der.read_single(spki))[1].content[1:]  # drop the unused-bits byte
    digest = hashes.Hash(hashes.SHA1())
    digest.update(bits)
    return digest.finalize()


def good_single(
    cert_id: CertId, now: datetime, *, validity: timedelta = DEFAULT_VALIDITY, **changes: Any
) -> SingleSpec:
    """A `good` SingleResponse valid from `now` for `validity`, then `changes`."""
    single = SingleSpec(cert_id=cert_id, this_update=now, next_update=now + validity)
    return replace(single, **changes)


def good_spec(
    leaf: Leaf,
    signer: Identity,
    now: datetime,
    *,
    cert_id: CertId | None = None,
    validity: timedelta = DEFAULT_VALIDITY,
    **changes: Any,
) -> ResponseSpec:
    """A correct response about `leaf` signed by `signer` at `now`, then `changes`.

    `signer` is the issuer or a delegated responder; a delegate's certificate is included.
    `cert_id` defaults to the SHA-1 CertID of `leaf`.
    """
    single = good_single(
        cert_id or make_cert_id(leaf.issuer, leaf.cert.serial_number), now, validity=validity
    )
    delegated = signer.cert != leaf.issuer
    spec = ResponseSpec(
        key=signer.key,
        responder_id=signer.cert.subject,
        produced_at=now,
        singles=(single,),
        certificates=(signer.cert,) if delegated else (),
    )
    return replace(spec, **changes)
