"""Certificates: parse bundles, find the issuer, read must-staple and the OCSP URLs.

Pure: bytes in, values out; no files, no network (fetching an issuer over AIA lives in `fetch`).
A `Target` is a leaf certificate paired with the issuer that really signed it: everything the
rest of mustaple needs to ask for, check and deliver its staple.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from mustaple.core import der
from mustaple.core.errors import InputError
from mustaple.core.render import one_line

__all__ = [
    "RawExtension",
    "Target",
    "ca_issuer_urls",
    "display_name",
    "encoded_names",
    "extensions_of",
    "find_issuer",
    "is_ca",
    "is_must_staple",
    "issuer_encoded_differently",
    "make_target",
    "ocsp_urls",
    "parse_certificates",
    "raw_extensions",
]

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_PKCS7 = b"-----BEGIN PKCS7-----"


def parse_certificates(data: bytes, *, source: str = "input") -> list[x509.Certificate]:
    """Every certificate in `data`: PEM (one or many), DER, or PKCS#7 (.p7c, DER or PEM).

    Order is kept, so a fullchain.pem gives the leaf first. Raises InputError naming `source`
    when nothing usable is found.
    """
    try:
        with warnings.catch_warnings():  # cryptography warns of a PKCS#7 bundle's CRLs: not
            warnings.simplefilter("ignore", UserWarning)  # ours to say, and two lines of noise
            if _PEM_CERT in data:
                return x509.load_pem_x509_certificates(data)
            if _PEM_PKCS7 in data:
                return pkcs7.load_pem_pkcs7_certificates(data)
            if data[:1] == b"\x30":
                return _parse_der(data)
    except ValueError as exc:
        raise InputError(f"{source}: not a readable certificate ({_first_line(exc)})") from exc
    raise InputError(f"{source}: no certificate found (expected PEM, DER or PKCS#7)")


def _parse_der(data: bytes) -> list[x509.Certificate]:
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        return pkcs7.load_der_pkcs7_certificates(data)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_extensions(cert: x509.Certificate, source: str) -> None:
    """InputError naming `source` when the certificate's extensions are not valid (one
    twice, a value that is not DER): strict clients refuse such a certificate. One valid but
    unknown to cryptography (a TLS Feature listing feature 18) is not an error, nor a keyUsage
    it refuses that the clients take (see `extensions_of`)."""
    try:
        try:
            extensions_of(cert)
        except (KeyError, TypeError):  # read from the DER where needed: read them all now
            _raw_values(cert, _TLS_FEATURE, der.INTEGER)
            _raw_aia_urls(cert, AuthorityInformationAccessOID.OCSP.dotted_string)
            _raw_dns_names(cert)
    except (ValueError, IndexError, x509.DuplicateExtension) as exc:
        raise InputError(
            f"{source}: the certificate's extensions cannot be read ({_first_line(exc)}); "
            "strict clients refuse it: have it issued again"
        ) from None


def is_must_staple(cert: x509.Certificate) -> bool:
    """True when the TLS Feature extension lists status_request (RFC 7633)."""
    try:
        ext = extensions_of(cert).get_extension_for_class(x509.TLSFeature)
    except x509.ExtensionNotFound:
        return False
    except (KeyError, TypeError):  # a feature cryptography does not know, or an empty list
        return _STATUS_REQUEST in _raw_values(cert, _TLS_FEATURE, der.INTEGER)
    return x509.TLSFeatureType.status_request in ext.value


def is_ca(cert: x509.Certificate) -> bool:
    """True when basicConstraints says cA; False when it does not, or cannot be read."""
    try:
        ext = extensions_of(cert).get_extension_for_class(x509.BasicConstraints)
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return False
    return bool(ext.value.ca)


def _aia_urls(cert: x509.Certificate, method: x509.ObjectIdentifier) -> list[str]:
    try:
        aia = extensions_of(cert).get_extension_for_class(x509.AuthorityInformationAccess)
    except x509.ExtensionNotFound:
        return []
    except (KeyError, TypeError):  # another extension cryptography cannot read
        return _raw_aia_urls(cert, method.dotted_string)
    return [
        desc.access_location.value
        for desc in aia.value
        if desc.access_method == method
        and isinstance(desc.access_location, x509.UniformResourceIdentifier)
    ]


# Where cryptography cannot read an extension that is valid X.509 (a TLS Feature listing a
# feature it does not know, such as 18; an empty one), every `cert.extensions` raises: the
# few extensions mustaple needs are then read from the DER here.
_TLS_FEATURE = "1.3.6.1.5.5.7.1.24"
_AIA = "1.3.6.1.5.5.7.1.1"
_SAN = "2.5.29.17"
_STATUS_REQUEST = 5
_URI, _DNS_NAME = 0x86, 0x82  # GeneralName [6] and [2], IMPLICIT IA5String


class RawExtension(NamedTuple):
    """A certificate extension as encoded: its OID, criticality and extnValue's contents."""

    oid: str
    critical: bool
    value: bytes


def raw_extensions(cert: x509.Certificate) -> list[RawExtension]:
    """`cert`'s extensions as encoded, whatever cryptography makes of their values; DerError
    when they are not DER."""
    tbs = der.read_single(cert.tbs_certificate_bytes, der.SEQUENCE)
    wrapper = next((f for f in der.children(tbs) if f.tag == 0xA3), None)
    if wrapper is None:
        return []
    (extensions,) = _exactly(der.children(wrapper), 1)
    found = []
    for extension in der.children(extensions):
        parts = der.children(extension)
        if len(parts) not in (2, 3):
            raise der.DerError("an extension that is not (OID, [critical], value)")
        critical = len(parts) == 3 and parts[1].content != b"\x00"
        found.append(RawExtension(der.decode_oid(parts[0]), critical, parts[-1].content))
    return found


def _raw_extension(cert: x509.Certificate, oid: str) -> der.Tlv | None:
    """The extnValue content (the extension's own DER) of `oid`, or None; DerError when
    the certificate's extensions are not DER."""
    value = next((ext.value for ext in raw_extensions(cert) if ext.oid == oid), None)
    return None if value is None else der.read_single(value)


def _exactly(items: list[der.Tlv], count: int) -> list[der.Tlv]:
    if len(items) != count:
        raise der.DerError(f"{len(items)} elements where {count} belong")
    return items


def _raw_values(cert: x509.Certificate, oid: str, tag: int) -> list[int]:
    value = _raw_extension(cert, oid)
    if value is None:
        return []
    return [der.decode_integer(item) for item in der.children(value) if item.tag == tag]


def _raw_aia_urls(cert: x509.Certificate, method: str) -> list[str]:
    value = _raw_extension(cert, _AIA)
    if value is None:
        return []
    urls = []
    for description in der.children(value):
        kind, location = _exactly(der.children(description), 2)
        if der.decode_oid(kind) == method and location.tag == _URI:
            urls.append(location.content.decode("ascii", "replace"))
    return urls


def _raw_dns_names(cert: x509.Certificate) -> list[str]:
    value = _raw_extension(cert, _SAN)
    if value is None:
        return []
    names = (item.content for item in der.children(value) if item.tag == _DNS_NAME)
    return [name.decode("ascii", "replace") for name in names]


def extensions_of(cert: x509.Certificate) -> x509.Extensions:
    """`cert.extensions`, with one leniency: a keyUsage that sets encipherOnly or decipherOnly
    without keyAgreement is read without those two bits.

    cryptography refuses such a keyUsage, and with it every extension of the certificate; RFC
    5280 (4.2.1.3) leaves the two bits undefined without keyAgreement, and every strict client
    takes the certificate (docs/strictness.md). The other extensions are then read from a
    stand-in (`_stand_in`): whatever cryptography refuses in them is raised as it would be.
    A keyUsage that is not one DER BIT STRING, or sets an unused bit, is left refused.
    """
    try:
        return cert.extensions
    except ValueError:
        stand_in = _stand_in(cert)
        if stand_in is None:
            raise
    return stand_in.extensions


_KEY_USAGE = "2.5.29.15"
_ENCIPHER_ONLY, _KEY_AGREEMENT = 0x01, 0x08  # in the first byte of a keyUsage's bits
_DECIPHER_ONLY = 0x80  # in the second byte


@functools.lru_cache(maxsize=32)
def _stand_in(cert: x509.Certificate) -> x509.Certificate | None:
    """`cert` with encipherOnly and decipherOnly left out of a keyUsage that sets them without
    keyAgreement, or None when none does (or its extensions are not DER). Its signature does
    not cover it: it is only read, never verified. Cached: every reader of a Target's or a
    delegate's extensions comes here, and certificates equal by their DER share one entry."""
    try:
        usages = [ext.value for ext in raw_extensions(cert) if ext.oid == _KEY_USAGE]
        if not any(_cleared_key_usage(value) is not None for value in usages):
            return None
        edited = der.edit_certificate_extensions(
            cert.public_bytes(serialization.Encoding.DER), _with_cleared_key_usage
        )
        return x509.load_der_x509_certificate(edited)
    except (der.DerError, ValueError):
        return None


def _cleared_key_usage(value: bytes) -> bytes | None:
    """The keyUsage extnValue `value` without encipherOnly and decipherOnly, when it sets one
    of them without keyAgreement; else None (a shape cryptography has no quarrel with, or one
    it rightly refuses: not one DER BIT STRING, unused bits set)."""
    try:
        bits = bytearray(der.read_single(value, der.BIT_STRING).content)
    except der.DerError:
        return None
    if len(bits) < 2 or bits[0] > 7 or bits[-1] & ((1 << bits[0]) - 1):
        return None
    first, second = bits[1], bits[2] if len(bits) > 2 else 0
    if first & _KEY_AGREEMENT or not (first & _ENCIPHER_ONLY or second & _DECIPHER_ONLY):
        return None
    bits[1] &= ~_ENCIPHER_ONLY
    if len(bits) > 2:
        bits[2] &= ~_DECIPHER_ONLY
    return der.encode(der.BIT_STRING, bytes(bits))


def _with_cleared_key_usage(fields: list[der.Tlv]) -> list[bytes]:
    """An Extension's fields, encoded as they are; a keyUsage's value without encipherOnly
    and decipherOnly when it sets them without keyAgreement (`_cleared_key_usage`)."""
    encoded = [der.encoded(field) for field in fields]
    if der.decode_oid(fields[0]) != _KEY_USAGE:
        return encoded
    cleared = _cleared_key_usage(fields[-1].content)
    if cleared is not None:
        encoded[-1] = der.encode(der.OCTET_STRING, cleared)
    return encoded


def ocsp_urls(cert: x509.Certificate) -> list[str]:
    """The AIA OCSP responder URLs, in the certificate's order."""
    return _aia_urls(cert, AuthorityInformationAccessOID.OCSP)


def ca_issuer_urls(cert: x509.Certificate) -> list[str]:
    """The AIA caIssuers URLs, where the issuer certificate can be downloaded."""
    return _aia_urls(cert, AuthorityInformationAccessOID.CA_ISSUERS)


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer`'s subject is `cert`'s issuer and its key verifies `cert`."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def find_issuer(
    leaf: x509.Certificate,
    candidates: Iterable[x509.Certificate],
    signed: Callable[[x509.Certificate, x509.Certificate], bool] = signed_by,
) -> x509.Certificate | None:
    """The first candidate that really signed `leaf` (asked of `signed`), or None."""
    return next((c for c in candidates if signed(leaf, c)), None)


def encoded_names(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """`cert`'s issuer and subject Names exactly as encoded in it, tags included.

    mozpkix and GnuTLS compare names as bytes; cryptography's `Name ==` does not (it ignores
    the string type: PrintableString equals UTF8String).
    """
    tbs = der.children(der.read_single(cert.public_bytes(serialization.Encoding.DER)))[0]
    fields = der.children(tbs)
    if fields[0].tag == 0xA0:  # version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject
    return der.encoded(fields[2]), der.encoded(fields[4])


def issuer_encoded_differently(
    leaf: x509.Certificate, candidates: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    """A candidate whose subject is `leaf`'s issuer name only when compared loosely, or None.

    Such an issuer did not sign `leaf` as far as Firefox, GnuTLS and cryptography are
    concerned (the encoded names differ, for example PrintableString and UTF8String).
    """
    wanted = encoded_names(leaf)[0]
    for candidate in candidates:
        if candidate.subject == leaf.issuer and encoded_names(candidate)[1] != wanted:
            return candidate
    return None


def display_name(cert: x509.Certificate) -> str:
    """A short human name: the first DNS name, else the common name, else the serial; a
    control character in it (a newline, an escape) written as an escape: the name goes into
    log lines, command output and file names."""
    return one_line(_name_of(cert))


def _name_of(cert: x509.Certificate) -> str:
    try:
        san = extensions_of(cert).get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    except (KeyError, TypeError):  # another extension cryptography cannot read
        names = _raw_dns_names(cert)
    names = [name for name in names if name]
    if names:
        return names[0]
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns and isinstance(cns[0].value, str):
        return cns[0].value
    return f"serial {cert.serial_number:x}"


@dataclass(frozen=True)
class Target:
    """A leaf certificate with its verified issuer, and what we know about its stapling."""

    leaf: x509.Certificate
    issuer: x509.Certificate
    name: str = field(init=False)
    must_staple: bool = field(init=False)
    ocsp_urls: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", display_name(self.leaf))
        object.__setattr__(self, "must_staple", is_must_staple(self.leaf))
        object.__setattr__(self, "ocsp_urls", tuple(ocsp_urls(self.leaf)))

    @classmethod
    def known(
        cls,
        leaf: x509.Certificate,
        issuer: x509.Certificate,
        facts: tuple[str, bool, tuple[str, ...]],
    ) -> Target:
        """A Target whose (name, must_staple, ocsp_urls) were read from these very
        certificates elsewhere (a worker process), so they are not read again."""
        target = object.__new__(cls)
        values: dict[str, object] = {"leaf": leaf, "issuer": issuer}
        values.update(zip(("name", "must_staple", "ocsp_urls"), facts, strict=True))
        for name, value in values.items():
            object.__setattr__(target, name, value)
        return target

    @property
    def facts(self) -> tuple[str, bool, tuple[str, ...]]:
        """What `known` takes: the name, the must-staple flag and the OCSP URLs."""
        return self.name, self.must_staple, self.ocsp_urls

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    @functools.cached_property
    def not_after(self) -> datetime:
        """The leaf's notAfter, read once (each pass asks it of every certificate)."""
        return self.leaf.not_valid_after_utc

    def no_url_message(self) -> str:
        """What to tell a person when the certificate has no OCSP URL."""
        if self.must_staple:
            return (
                "must-staple certificate without an OCSP URL: it can never be served "
                "correctly; reissue it without must-staple or from a CA that runs OCSP"
            )
        return "the certificate has no OCSP URL, so there is nothing to staple"


def make_target(leaf: x509.Certificate, issuer: x509.Certificate) -> Target:
    """Pair `leaf` with `issuer`, raising InputError if `issuer` did not sign it."""
    if not signed_by(leaf, issuer):
        raise InputError(
            f"{display_name(leaf)}: the issuer certificate given "
            f"({issuer.subject.rfc4514_string()}) did not sign this certificate; "
            "give the right one: --issuer, or the `issuer` key of its [[certificates]] entry"
        )
    return Target(leaf, issuer)
