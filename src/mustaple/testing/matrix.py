"""The client matrix's case catalogue: many hand-made staples, each for its own certificate.

`build_cases(now)` makes a small PKI (an RSA root and an EC root that issue leaves directly,
plus a foreign CA nobody trusts) and well over a hundred OCSP responses across the axes a
strict client cares about: CertID hash, SingleResponse count and order, statuses, extensions
and criticality, signature algorithms and RSA-PSS parameters, signer kinds, ResponderID, name
encodings, time relations, explicit DER defaults, BER and trailing data. Every case gets its
own leaf (its own serial), because Firefox caches OCSP results per certificate.

`mustaple.testing.strictness` serves each case to the real clients and writes
docs/strictness.md. Responses that `craft` cannot make directly (other signature algorithms,
explicit defaults, re-encoded names) are made by editing a crafted response's DER tree here
and signing its tbsResponseData again (`resign`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mustaple.core import der
from mustaple.core.request import CertId, issuer_key_bits, make_cert_id
from mustaple.testing.craft import (
    ExtensionSpec,
    ResponseSpec,
    SignatureAlgorithm,
    SingleSpec,
    bit_string,
    craft_response,
    explicit,
    good_single,
    good_spec,
    integer,
    key_hash,
    null,
    octet_string,
    oid,
    seq,
    tlv,
    unsuccessful,
)
from mustaple.testing.pki import CA, Identity, Leaf

__all__ = [
    "HOSTNAME",
    "OCSP_URL",
    "Case",
    "Node",
    "Pki",
    "build_cases",
    "copy_of",
    "false_spelled_out",
    "resign",
    "roots_of",
    "with_certificates",
]

HOSTNAME = "localhost"  # every leaf's name: the clients connect to localhost:<port>
OCSP_URL = "http://127.0.0.1:9/"  # the leaves' AIA: a closed port, so a live fetch fails fast
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_NONCE = "1.3.6.1.5.5.7.48.1.2"
_CRL_ID = "1.3.6.1.5.5.7.48.1.3"
_ARCHIVE_CUTOFF = "1.3.6.1.5.5.7.48.1.6"
_EXTENDED_REVOKE = "1.3.6.1.5.5.7.48.1.9"
_UNKNOWN_EXTENSION = "1.3.6.1.4.1.55555.1"
_SCT_LIST = "1.3.6.1.4.1.11129.2.4.5"
_RSA_PKCS1_OIDS = {
    "md5": "1.2.840.113549.1.1.4",
    "sha1": "1.2.840.113549.1.1.5",
    "sha224": "1.2.840.113549.1.1.14",
    "sha256": "1.2.840.113549.1.1.11",
    "sha384": "1.2.840.113549.1.1.12",
    "sha512": "1.2.840.113549.1.1.13",
}
_ECDSA_OIDS = {
    "sha1": "1.2.840.10045.4.1",
    "sha224": "1.2.840.10045.4.3.1",
    "sha256": "1.2.840.10045.4.3.2",
    "sha384": "1.2.840.10045.4.3.3",
    "sha512": "1.2.840.10045.4.3.4",
}
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "md5": hashes.MD5(),
    "sha1": hashes.SHA1(),
    "sha224": hashes.SHA224(),
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}
_HASH_OIDS = {
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
_RSA_PSS = "1.2.840.113549.1.1.10"
_MGF1 = "1.2.840.113549.1.1.8"
_PRINTABLE_STRING = 0x13
# a subjectAltName whose SEQUENCE runs past the end of its extnValue
_NOT_DER_SAN = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.17"), b"\x30\x03\x82\x01")


@dataclass(frozen=True)
class Case:
    """One staple to judge: its name ("axis/what"), a line saying what it is, leaf and bytes."""

    name: str
    what: str
    leaf: Leaf
    staple: bytes

    @property
    def axis(self) -> str:
        return self.name.split("/", 1)[0]


# --- A DER tree to edit crafted responses ------------------------------------------------------


@dataclass
class Node:
    """One DER element; constructed ones hold their children (OCTET STRINGs stay bytes)."""

    tag: int
    value: bytes | list[Node]

    @classmethod
    def parse(cls, data: bytes) -> Node:
        return cls._from(der.read_single(data))

    @classmethod
    def _from(cls, element: der.Tlv) -> Node:
        if element.tag & 0x20:
            return cls(element.tag, [cls._from(child) for child in der.children(element)])
        return cls(element.tag, element.content)

    @property
    def items(self) -> list[Node]:
        if isinstance(self.value, bytes):
            raise TypeError(f"element 0x{self.tag:02x} is not constructed")
        return self.value

    def encode(self) -> bytes:
        if isinstance(self.value, bytes):
            return tlv(self.tag, self.value)
        return tlv(self.tag, b"".join(child.encode() for child in self.value))


@dataclass(frozen=True)
class Signing:
    """How to sign a tbsResponseData: the AlgorithmIdentifier DER and the signing function."""

    identifier: bytes
    sign: Callable[[bytes], bytes]


def _rsa(key: CertificateIssuerPrivateKeyTypes) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("this signature algorithm needs an RSA key")
    return key


def pkcs1(
    key: CertificateIssuerPrivateKeyTypes, hash_name: str, *, params: bytes = b"\x05\x00"
) -> Signing:
    """RSA PKCS#1 v1.5 with `hash_name`; `params` b"" leaves the NULL parameters out."""
    signer = _rsa(key)
    return Signing(
        seq(oid(_RSA_PKCS1_OIDS[hash_name]), params),
        lambda data: signer.sign(data, padding.PKCS1v15(), _HASHES[hash_name]),
    )


def pss(
    key: CertificateIssuerPrivateKeyTypes,
    hash_name: str,
    salt: int,
    *,
    mgf_hash: str | None = None,
    params: bytes | None = None,
) -> Signing:
    """RSASSA-PSS in DER (fields equal to their SHA-1 defaults left out); `params` replaces
    the encoded RSASSA-PSS-params."""
    signer = _rsa(key)
    mgf = mgf_hash or hash_name
    if params is None:
        params = seq(*_pss_fields(hash_name, mgf, salt))
    scheme = padding.PSS(mgf=padding.MGF1(_HASHES[mgf]), salt_length=salt)
    return Signing(
        seq(oid(_RSA_PSS), params), lambda data: signer.sign(data, scheme, _HASHES[hash_name])
    )


def _pss_fields(hash_name: str, mgf: str, salt: int, *, spell_out: bool = False) -> list[bytes]:
    fields = []
    if spell_out or hash_name != "sha1":
        fields.append(explicit(0, seq(oid(_HASH_OIDS[hash_name]), null())))
    if spell_out or mgf != "sha1":
        fields.append(explicit(1, seq(oid(_MGF1), seq(oid(_HASH_OIDS[mgf]), null()))))
    if spell_out or salt != 20:
        fields.append(explicit(2, integer(salt)))
    return fields


def ecdsa(key: CertificateIssuerPrivateKeyTypes, hash_name: str, *, params: bytes = b"") -> Signing:
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("ECDSA needs an EC key")
    signer = key
    algorithm = ec.ECDSA(_HASHES[hash_name])
    return Signing(
        seq(oid(_ECDSA_OIDS[hash_name]), params), lambda data: signer.sign(data, algorithm)
    )


def eddsa(key: CertificateIssuerPrivateKeyTypes) -> Signing:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return Signing(seq(oid("1.3.101.112")), key.sign)
    if isinstance(key, ed448.Ed448PrivateKey):
        return Signing(seq(oid("1.3.101.113")), key.sign)
    raise TypeError("EdDSA needs an Ed25519 or Ed448 key")


def resign(
    response: bytes,
    signing: Signing,
    *,
    edit: Callable[[Node], None] | None = None,
    tbs_bytes: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """`response` with its tbsResponseData edited (`edit` on the tree, then `tbs_bytes` on
    its encoding) and signed again with `signing`; the certificates are kept."""
    outer = Node.parse(response)
    response_bytes = outer.items[1].items[0]
    basic = Node.parse(_bytes(response_bytes.items[1]))
    tbs = basic.items[0]
    if edit is not None:
        edit(tbs)
    tbs_der = tbs.encode()
    if tbs_bytes is not None:
        tbs_der = tbs_bytes(tbs_der)
    rest = b"".join(child.encode() for child in basic.items[3:])
    new_basic = tlv(0x30, tbs_der + signing.identifier + bit_string(signing.sign(tbs_der)) + rest)
    response_bytes.items[1] = Node(der.OCTET_STRING, new_basic)
    return outer.encode()


def _bytes(node: Node) -> bytes:
    if not isinstance(node.value, bytes):
        raise TypeError("expected a primitive element")
    return node.value


def edit_basic(response: bytes, edit: Callable[[bytes], bytes]) -> bytes:
    """`response` with the bytes inside responseBytes.response replaced by `edit` of them."""
    outer = Node.parse(response)
    response_bytes = outer.items[1].items[0]
    response_bytes.items[1] = Node(der.OCTET_STRING, edit(_bytes(response_bytes.items[1])))
    return outer.encode()


# --- The PKI ---------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mustaple testing"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def retype_strings(name: Node, tag: int) -> None:
    """Give every attribute value of the Name `name` the string type `tag`."""
    for rdn in name.items:
        for attribute in rdn.items:
            attribute.items[1].tag = tag


class Pki:
    """The roots, signers and leaves the cases use; each `leaf()` is a new certificate."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.rsa = CA(key_type="rsa", name="mustaple matrix RSA root", now=now)
        self.ec = CA(key_type="ec", name="mustaple matrix EC root", now=now)
        self.foreign = CA(key_type="rsa", name="mustaple matrix foreign root", now=now)

    def leaf(
        self, ca: CA | None = None, *, extensions: Sequence[tuple[x509.ExtensionType, bool]] = ()
    ) -> Leaf:
        return (ca or self.rsa).issue(
            HOSTNAME, key_type="ec", ocsp_urls=[OCSP_URL], extensions=extensions
        )

    def delegate(
        self,
        ca: CA | None = None,
        *,
        key: CertificateIssuerPrivateKeyTypes | None = None,
        usages: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.OCSP_SIGNING,),
        is_ca: bool = False,
        not_before: timedelta = -_DAY,
        not_after: timedelta = 30 * _DAY,
        extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
        sign_hash: hashes.SHA224 | hashes.SHA256 | None = None,
    ) -> Identity:
        """A responder certificate issued by `ca` (signed with `sign_hash`, SHA-256 by
        default), valid from now + `not_before` until now + `not_after`."""
        issuer = (ca or self.rsa).issuing
        key = key or ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("mustaple matrix OCSP signer"))
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now + not_before)
            .not_valid_after(self.now + not_after)
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return Identity(builder.sign(issuer.key, sign_hash or hashes.SHA256()), key)


# --- The catalogue ---------------------------------------------------------------------------


class _Catalogue:
    """Collects cases; the helpers make the common response shapes about a fresh leaf."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.pki = Pki(now)
        self.cases: list[Case] = []

    def add(self, name: str, what: str, leaf: Leaf, staple: bytes) -> None:
        self.cases.append(Case(name, what, leaf, staple))

    def signer(self, leaf: Leaf) -> Identity:
        """The CA that issued `leaf`."""
        ca = self.pki.ec if leaf.issuer == self.pki.ec.cert else self.pki.rsa
        return ca.issuing

    def spec(self, leaf: Leaf, signer: Identity | None = None, **changes: Any) -> ResponseSpec:
        """A correct response about `leaf`: thisUpdate an hour ago, valid for four days."""
        return good_spec(leaf, signer or self.signer(leaf), self.now - _HOUR, **changes)

    def single(
        self,
        leaf: Leaf,
        hash_name: str = "sha1",
        *,
        cert_id: CertId | None = None,
        **changes: Any,
    ) -> SingleSpec:
        """Ours, good, thisUpdate an hour ago; `cert_id` replaces our CertID."""
        cert_id = cert_id or make_cert_id(leaf.issuer, leaf.cert.serial_number, hash_name)
        return good_single(cert_id, self.now - _HOUR, **changes)

    def with_singles(
        self, name: str, what: str, make: Callable[[Leaf], Sequence[SingleSpec]]
    ) -> None:
        leaf = self.pki.leaf()
        self.add(name, what, leaf, craft_response(self.spec(leaf, singles=make(leaf))))

    def with_spec(self, name: str, what: str, ca: CA | None = None, **changes: Any) -> None:
        leaf = self.pki.leaf(ca)
        self.add(name, what, leaf, craft_response(self.spec(leaf, **changes)))

    def resigned(
        self,
        name: str,
        what: str,
        signing: Callable[[Identity], Signing] | None = None,
        *,
        edit: Callable[[Node], None] | None = None,
        tbs_bytes: Callable[[bytes], bytes] | None = None,
        ca: CA | None = None,
        single_extensions: Sequence[ExtensionSpec] = (),
        **changes: Any,
    ) -> None:
        """A correct response about a new leaf, edited and signed again (by the issuer)."""
        leaf = self.pki.leaf(ca)
        issuer = self.signer(leaf)
        signing = signing or (lambda who: _natural(who.key))
        spec = self.spec(leaf, **changes)
        if single_extensions:
            spec = replace(spec, singles=[replace(spec.singles[0], extensions=single_extensions)])
        crafted = craft_response(spec)
        self.add(name, what, leaf, resign(crafted, signing(issuer), edit=edit, tbs_bytes=tbs_bytes))

    def delegated(
        self,
        name: str,
        what: str,
        delegate: Identity,
        signing: Signing | None = None,
        *,
        responder_id: x509.Name | bytes | None = None,
        certificates: Sequence[x509.Certificate] | None = None,
    ) -> None:
        """A response about a new RSA leaf signed by `delegate` (its certificate included)."""
        leaf = self.pki.leaf()
        spec = self.spec(
            leaf,
            responder_id=delegate.cert.subject if responder_id is None else responder_id,
            certificates=(delegate.cert,) if certificates is None else certificates,
        )
        crafted = craft_response(spec)
        self.add(name, what, leaf, resign(crafted, signing or _natural(delegate.key)))

    def revoked(self, leaf: Leaf, **changes: Any) -> SingleSpec:
        """Ours, revoked a day ago unless `changes` say otherwise."""
        fields: dict[str, Any] = {
            "status": ocsp.OCSPCertStatus.REVOKED,
            "revocation_time": self.now - _DAY,
        }
        return self.single(leaf, **(fields | changes))

    def other_single(self, leaf: Leaf, **changes: Any) -> SingleSpec:
        """A SingleResponse for another certificate of the same issuer."""
        cert_id = make_cert_id(leaf.issuer, leaf.cert.serial_number + 100_000)
        return good_single(cert_id, self.now - _HOUR, **changes)


def _ours(c: _Catalogue, **fields: Any) -> Callable[[Leaf], list[SingleSpec]]:
    """SingleResponses for a leaf: ours alone, with `fields` changed."""
    return lambda leaf: [c.single(leaf, **fields)]


def _signed(
    make: Callable[..., Signing], *args: Any, **kwargs: Any
) -> Callable[[Identity], Signing]:
    """A signing by the signer's key: `make(key, *args, **kwargs)`."""
    return lambda who: make(who.key, *args, **kwargs)


def _natural(key: CertificateIssuerPrivateKeyTypes) -> Signing:
    if isinstance(key, rsa.RSAPrivateKey):
        return pkcs1(key, "sha256")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ecdsa(key, "sha256")
    return eddsa(key)


def roots_of(cases: Sequence[Case]) -> list[x509.Certificate]:
    """The roots the clients must trust to judge `cases` (each once, in a stable order)."""
    return sorted({case.leaf.root for case in cases}, key=lambda root: root.serial_number)


def build_cases(now: datetime) -> list[Case]:
    """Every case of the matrix, crafted to be judged at (or within minutes after) `now`."""
    catalogue = _Catalogue(now)
    for axis in _AXES:
        axis(catalogue)
    return catalogue.cases


def _baseline(c: _Catalogue) -> None:
    c.with_spec("baseline/good-rsa", "correct response signed by the RSA issuer")
    c.with_spec("baseline/good-ec", "correct response signed by the EC issuer", ca=c.pki.ec)
    c.with_spec(
        "baseline/good-rsa-pss",
        "signed by the RSA issuer with RSA-PSS, SHA-256, salt 32",
        algorithm=SignatureAlgorithm.RSA_PSS_SHA256,
    )


def _statuses(c: _Catalogue) -> None:
    c.with_singles("status/revoked", "revoked a day ago, no reason", lambda leaf: [c.revoked(leaf)])
    c.with_singles(
        "status/revoked-key-compromise",
        "revoked with reason keyCompromise",
        lambda leaf: [c.revoked(leaf, revocation_reason=x509.ReasonFlags.key_compromise)],
    )
    c.with_singles(
        "status/revoked-hold",
        "revoked with reason certificateHold",
        lambda leaf: [c.revoked(leaf, revocation_reason=x509.ReasonFlags.certificate_hold)],
    )
    c.with_singles(
        "status/revoked-in-future",
        "revoked, revocationTime a day from now",
        lambda leaf: [c.revoked(leaf, revocation_time=c.now + _DAY)],
    )
    c.with_singles(
        "status/unknown",
        "status unknown",
        lambda leaf: [c.single(leaf, status=ocsp.OCSPCertStatus.UNKNOWN)],
    )


def _cert_ids(c: _Catalogue) -> None:
    for hash_name in ("sha256", "sha384", "sha512"):
        c.with_singles(
            f"certid/{hash_name}",
            f"CertID hashed with {hash_name.upper()}",
            _ours(c, hash_name=hash_name),
        )
    c.with_singles(
        "certid/other-serial",
        "a response about another serial",
        lambda leaf: [c.other_single(leaf)],
    )

    def changed(leaf: Leaf, **fields: Any) -> list[SingleSpec]:
        cert_id = make_cert_id(leaf.issuer, leaf.cert.serial_number)
        return [c.single(leaf, cert_id=replace(cert_id, **fields))]

    c.with_singles(
        "certid/wrong-name-hash",
        "our serial, issuerNameHash of another name",
        lambda leaf: changed(leaf, issuer_name_hash=bytes(20)),
    )
    c.with_singles(
        "certid/wrong-key-hash",
        "our serial, issuerKeyHash of another key",
        lambda leaf: changed(leaf, issuer_key_hash=bytes(20)),
    )
    c.with_singles(
        "certid/name-hash-printable",
        "issuerNameHash over the issuer name re-encoded as PrintableString",
        lambda leaf: changed(leaf, issuer_name_hash=_printable_name_hash(leaf.issuer)),
    )
    c.with_singles(
        "certid/foreign-issuer",
        "our serial under the foreign CA's name and key",
        lambda leaf: [
            c.single(leaf, cert_id=make_cert_id(c.pki.foreign.cert, leaf.cert.serial_number))
        ],
    )
    c.resigned(
        "certid/sha1-no-null",
        "SHA-1 CertID whose AlgorithmIdentifier leaves out the NULL parameters",
        edit=lambda tbs: _drop_last(_first_cert_id(tbs).items[0]),
    )
    c.resigned(
        "certid/serial-padded",
        "CertID serial with a needless leading zero byte (BER integer)",
        edit=lambda tbs: _pad_serial(_first_cert_id(tbs)),
    )


def _md5_cert_id(leaf: Leaf) -> CertId:
    """A CertID for another serial of `leaf`'s issuer, hashed with MD5."""
    name, key = hashes.Hash(hashes.MD5()), hashes.Hash(hashes.MD5())
    name.update(leaf.issuer.subject.public_bytes())
    key.update(issuer_key_bits(leaf.issuer))
    return CertId("md5", name.finalize(), key.finalize(), leaf.cert.serial_number + 7)


def _printable_name_hash(issuer: x509.Certificate) -> bytes:
    name = Node.parse(issuer.subject.public_bytes())
    retype_strings(name, _PRINTABLE_STRING)
    digest = hashes.Hash(hashes.SHA1())
    digest.update(name.encode())
    return digest.finalize()


def _responses(tbs: Node) -> Node:
    return next(item for item in tbs.items if item.tag == 0x30 and isinstance(item.value, list))


def _first_cert_id(tbs: Node) -> Node:
    return _responses(tbs).items[0].items[0]


def _drop_last(node: Node) -> None:
    node.items.pop()


def _pad_serial(cert_id: Node) -> None:
    serial = cert_id.items[3]
    serial.value = b"\x00" + _bytes(serial)


def _singles(c: _Catalogue) -> None:
    ours, other, revoked = c.single, c.other_single, c.revoked

    def expired(leaf: Leaf) -> SingleSpec:
        return ours(leaf, this_update=c.now - 5 * _DAY, next_update=c.now - _DAY)

    def unknown(leaf: Leaf) -> SingleSpec:
        return ours(leaf, status=ocsp.OCSPCertStatus.UNKNOWN)

    def foreign(leaf: Leaf) -> SingleSpec:
        return ours(leaf, cert_id=make_cert_id(c.pki.foreign.cert, 0x77))

    def others(leaf: Leaf, count: int) -> list[SingleSpec]:
        return [other(leaf) for _ in range(count)]

    def other_id(leaf: Leaf) -> CertId:
        return other(leaf).cert_id

    def sha256_id(leaf: Leaf) -> CertId:
        return ours(leaf, "sha256").cert_id

    Make = Callable[[Leaf], Sequence[SingleSpec]]
    # fmt: off
    table: list[tuple[str, str, Make]] = [
        ("ours-then-other", "ours first, then one for another serial",
         lambda leaf: [ours(leaf), other(leaf)]),
        ("other-then-ours", "another serial first, ours second",
         lambda leaf: [other(leaf), ours(leaf)]),
        ("ours-in-middle", "three SingleResponses, ours in the middle",
         lambda leaf: [other(leaf), ours(leaf), other(leaf, next_update=None)]),
        ("none", "an empty list of SingleResponses", lambda leaf: []),
        ("ours-twice", "ours twice, both good", lambda leaf: [ours(leaf)] * 2),
        ("good-then-revoked", "ours good, then ours revoked",
         lambda leaf: [ours(leaf), revoked(leaf)]),
        ("revoked-then-good", "ours revoked, then ours good",
         lambda leaf: [revoked(leaf), ours(leaf)]),
        ("good-then-unknown", "ours good, then ours unknown",
         lambda leaf: [ours(leaf), unknown(leaf)]),
        ("unknown-then-good", "ours unknown, then ours good",
         lambda leaf: [unknown(leaf), ours(leaf)]),
        ("good-then-expired", "ours good, then ours expired a day ago",
         lambda leaf: [ours(leaf), expired(leaf)]),
        ("expired-then-good", "ours expired a day ago, then ours good",
         lambda leaf: [expired(leaf), ours(leaf)]),
        ("ours-then-other-revoked", "ours good, then another serial revoked",
         lambda leaf: [ours(leaf), revoked(leaf, cert_id=other_id(leaf))]),
        ("ours-then-other-expired", "ours good, then another serial expired",
         lambda leaf: [ours(leaf), replace(expired(leaf), cert_id=other_id(leaf))]),
        ("sha256-then-sha1", "ours by a SHA-256 CertID, then ours by SHA-1",
         lambda leaf: [ours(leaf, "sha256"), ours(leaf)]),
        ("sha1-then-sha256-revoked", "ours by SHA-1 good, then ours by SHA-256 revoked",
         lambda leaf: [ours(leaf), revoked(leaf, cert_id=sha256_id(leaf))]),
        ("many-others", "ours last after 20 SingleResponses for other serials",
         lambda leaf: [*others(leaf, 20), ours(leaf)]),
        ("ours-then-foreign-issuer", "ours first, then one for a certificate of the foreign CA",
         lambda leaf: [ours(leaf), foreign(leaf)]),
        ("ours-then-md5-entry", "ours first, then one for another serial with an MD5 CertID",
         lambda leaf: [ours(leaf), ours(leaf, cert_id=_md5_cert_id(leaf))]),
        ("good-then-expired-hour", "ours good, then ours expired an hour ago",
         lambda leaf: [ours(leaf), ours(leaf, this_update=c.now - 4 * _DAY,
                                       next_update=c.now - _HOUR)]),
        ("good-then-from-future", "ours good, then ours with thisUpdate an hour ahead",
         lambda leaf: [ours(leaf), ours(leaf, this_update=c.now + _HOUR)]),
    ]
    # fmt: on
    for slug, what, make in table:
        c.with_singles(f"singles/{slug}", what, make)


def _ext(oid_text: str, critical: bool = False, value: bytes | None = None) -> ExtensionSpec:
    return ExtensionSpec(oid=oid_text, critical=critical, value=null() if value is None else value)


def _extensions(c: _Catalogue) -> None:
    nonce = octet_string(bytes(range(16)))
    kinds = [
        ("nonce", _NONCE, nonce),
        ("unknown", _UNKNOWN_EXTENSION, null()),
        ("extended-revoke", _EXTENDED_REVOKE, null()),
    ]
    for label, number, value in kinds:
        for critical in (False, True):
            flag = "critical" if critical else "non-critical"
            c.with_spec(
                f"extensions/response-{label}-{flag}",
                f"responseExtensions: {flag} {label}",
                extensions=[_ext(number, critical, value)],
            )
    single_kinds = [
        ("unknown", _UNKNOWN_EXTENSION, null()),
        ("crl-id", _CRL_ID, seq(explicit(1, integer(7)))),
        ("archive-cutoff", _ARCHIVE_CUTOFF, tlv(0x18, b"20200101000000Z")),
        ("nonce", _NONCE, nonce),
    ]
    for label, number, value in single_kinds:
        for critical in (False, True):
            flag = "critical" if critical else "non-critical"
            c.with_singles(
                f"extensions/single-{label}-{flag}",
                f"singleExtensions of ours: {flag} {label}",
                _ours(c, extensions=[_ext(number, critical, value)]),
            )
    c.with_singles(
        "extensions/other-single-unknown-critical",
        "ours plain, another serial's SingleResponse with a critical unknown extension",
        lambda leaf: [
            c.single(leaf),
            c.other_single(leaf, extensions=[_ext(_UNKNOWN_EXTENSION, True)]),
        ],
    )
    c.with_spec(
        "extensions/response-duplicate-nonce",
        "the nonce extension twice",
        extensions=[_ext(_NONCE, False, nonce), _ext(_NONCE, False, nonce)],
    )
    c.resigned(
        "extensions/response-empty-list",
        "responseExtensions present but empty (SIZE(1..MAX) violated)",
        edit=lambda tbs: tbs.items.append(Node(0xA1, [Node(0x30, [])])),
    )
    c.resigned(
        "extensions/response-nonce-garbled-value",
        "a nonce whose extnValue is not DER",
        extensions=[_ext(_NONCE, False, b"\x04\x05ab")],
    )


def _sct_lists(c: _Catalogue) -> None:
    """The SCT list, the one single extension mozpkix reads (RememberSingleExtension)."""
    empty_list = octet_string(b"\x00\x00")  # a SignedCertificateTimestampList of no SCT
    sct = _ext(_SCT_LIST, False, empty_list)
    # fmt: off
    ours: list[tuple[str, str, list[ExtensionSpec]]] = [
        ("critical", "critical, an empty list", [_ext(_SCT_LIST, True, empty_list)]),
        ("empty-octets", "an empty OCTET STRING", [_ext(_SCT_LIST, False, octet_string(b""))]),
        ("empty-value", "an empty extnValue", [_ext(_SCT_LIST, False, b"")]),
        ("not-octet-string", "an extnValue that is no OCTET STRING",
         [_ext(_SCT_LIST, False, b"\x01")]),
        ("trailing", "an OCTET STRING followed by a NULL",
         [_ext(_SCT_LIST, False, empty_list + null())]),
        ("twice", "the SCT list twice", [sct, sct]),
    ]
    # fmt: on
    for slug, what, extensions in ours:
        c.with_singles(
            f"extensions/single-sct-{slug}",
            f"our SCT list: {what}",
            _ours(c, extensions=extensions),
        )
    c.with_singles(
        "extensions/sct-in-two-of-ours",
        "ours twice, each with an SCT list",
        lambda leaf: [c.single(leaf, extensions=[sct]), c.single(leaf, extensions=[sct])],
    )
    c.with_singles(
        "extensions/other-single-sct-twice",
        "ours plain, another serial's SingleResponse with the SCT list twice",
        lambda leaf: [c.single(leaf), c.other_single(leaf, extensions=[sct, sct])],
    )


def _unused_bit(c: _Catalogue) -> None:
    """A correct RSA signature whose BIT STRING declares 1 unused bit: a signature whose last
    bit is 0 (one leaf in two), so the padding bit is 0 as DER wants."""
    for _ in range(64):
        leaf = c.pki.leaf()
        response = craft_response(c.spec(leaf))
        basic = Node.parse(_bytes(Node.parse(response).items[1].items[0].items[1]))
        signature = _bytes(basic.items[2])
        if signature[0] == 0 and signature[-1] & 1 == 0:
            basic.items[2] = Node(basic.items[2].tag, b"\x01" + signature[1:])
            staple = edit_basic(response, functools.partial(_replaced, basic.encode()))
            what = "a correct signature whose BIT STRING declares 1 unused bit (a 0)"
            c.add("signature/bit-string-unused-bit", what, leaf, staple)
            return
    raise RuntimeError("no RSA signature ending with a 0 bit in 64 leaves")


def _replaced(new: bytes, _old: bytes) -> bytes:
    return new


def _signatures(c: _Catalogue) -> None:
    for hash_name in ("sha1", "sha224", "sha384", "sha512", "md5"):
        c.resigned(
            f"signature/rsa-{hash_name}",
            f"RSA PKCS#1 v1.5 with {hash_name.upper()}",
            _signed(pkcs1, hash_name),
        )
    c.resigned(
        "signature/rsa-sha256-no-null",
        "sha256WithRSAEncryption without the NULL parameters",
        lambda who: pkcs1(who.key, "sha256", params=b""),
    )
    pss_cases = [
        ("pss-sha256-salt32", "SHA-256, MGF1-SHA-256, salt 32", "sha256", 32, None),
        ("pss-sha256-salt20", "SHA-256, salt 20", "sha256", 20, None),
        ("pss-sha256-salt0", "SHA-256, salt 0", "sha256", 0, None),
        ("pss-sha256-salt64", "SHA-256, salt 64", "sha256", 64, None),
        ("pss-sha384-salt48", "SHA-384, salt 48", "sha384", 48, None),
        ("pss-sha512-salt64", "SHA-512, salt 64", "sha512", 64, None),
        ("pss-sha256-mgf1-sha1", "SHA-256 with MGF1-SHA-1, salt 32", "sha256", 32, "sha1"),
        ("pss-sha1-salt32", "SHA-1, MGF1-SHA-1, salt 32", "sha1", 32, None),
    ]
    for slug, what, hash_name, salt, mgf in pss_cases:
        c.resigned(
            f"signature/{slug}",
            f"RSASSA-PSS: {what}",
            _signed(pss, hash_name, salt, mgf_hash=mgf),
        )
    c.resigned(
        "signature/pss-sha1-defaults",
        "RSASSA-PSS with empty parameters (the SHA-1 defaults)",
        lambda who: pss(who.key, "sha1", 20, params=seq()),
    )
    c.resigned(
        "der/pss-defaults-spelled-out",
        "RSASSA-PSS with SHA-1, MGF1-SHA-1 and salt 20 spelled out (DER omits defaults)",
        lambda who: pss(
            who.key, "sha1", 20, params=seq(*_pss_fields("sha1", "sha1", 20, spell_out=True))
        ),
    )
    c.resigned(
        "signature/pss-no-params",
        "RSASSA-PSS with the parameters left out",
        lambda who: pss(who.key, "sha256", 32, params=b""),
    )
    c.resigned(
        "signature/pss-explicit-trailer",
        "RSASSA-PSS SHA-256 salt 32 with trailerField 1 spelled out",
        lambda who: pss(who.key, "sha256", 32, params=_pss_params_with_trailer()),
    )
    c.resigned(
        "signature/rsa-label-mismatch",
        "says sha256WithRSAEncryption, signed with SHA-1",
        lambda who: Signing(pkcs1(who.key, "sha256").identifier, pkcs1(who.key, "sha1").sign),
    )
    c.with_spec("signature/corrupt", "one bit of the signature flipped", corrupt_signature=True)
    for hash_name in ("sha1", "sha224", "sha384", "sha512"):
        c.resigned(
            f"signature/ecdsa-{hash_name}",
            f"ECDSA with {hash_name.upper()} by the EC issuer",
            _signed(ecdsa, hash_name),
            ca=c.pki.ec,
        )
    c.resigned(
        "signature/ecdsa-with-null",
        "ecdsa-with-SHA256 with NULL parameters",
        lambda who: ecdsa(who.key, "sha256", params=null()),
        ca=c.pki.ec,
    )
    _delegated_signatures(c)


def _pss_params_with_trailer() -> bytes:
    sha256 = seq(oid(_HASH_OIDS["sha256"]), null())
    return seq(
        explicit(0, sha256),
        explicit(1, seq(oid(_MGF1), sha256)),
        explicit(2, integer(32)),
        explicit(3, integer(1)),
    )


def _delegated_signatures(c: _Catalogue) -> None:
    keys: list[tuple[str, str, CertificateIssuerPrivateKeyTypes]] = [
        ("ed25519", "Ed25519", ed25519.Ed25519PrivateKey.generate()),
        ("ed448", "Ed448", ed448.Ed448PrivateKey.generate()),
        ("p384", "ECDSA P-384 with SHA-384", ec.generate_private_key(ec.SECP384R1())),
        ("p521", "ECDSA P-521 with SHA-512", ec.generate_private_key(ec.SECP521R1())),
        ("rsa3072", "RSA-3072 with SHA-256", rsa.generate_private_key(65537, 3072)),
    ]
    for slug, what, key in keys:
        delegate = c.pki.delegate(key=key)
        signing = eddsa(key) if slug.startswith("ed") else _delegate_signing(key)
        c.delegated(
            f"signature/delegate-{slug}",
            f"a delegated responder signs with {what}",
            delegate,
            signing,
        )


def _delegate_signing(key: CertificateIssuerPrivateKeyTypes) -> Signing:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ecdsa(key, "sha512" if key.curve.key_size > 384 else "sha384")
    return pkcs1(key, "sha256")


def _signers(c: _Catalogue) -> None:
    pki, ocsp_signing = c.pki, ExtendedKeyUsageOID.OCSP_SIGNING
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier(_UNKNOWN_EXTENSION), b"\x05\x00")
    # fmt: off
    delegates: list[tuple[str, str, dict[str, Any]]] = [
        ("delegate", "a delegated responder with id-kp-OCSPSigning", {}),
        ("delegate-rsa-key", "a delegated responder with an RSA key",
         {"key": rsa.generate_private_key(65537, 2048)}),
        ("delegate-no-eku", "a delegate without any extendedKeyUsage", {"usages": ()}),
        ("delegate-server-auth-only", "a delegate with only id-kp-serverAuth",
         {"usages": (ExtendedKeyUsageOID.SERVER_AUTH,)}),
        ("delegate-any-eku", "a delegate with only anyExtendedKeyUsage",
         {"usages": (ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,)}),
        ("delegate-ocsp-and-any-eku", "a delegate with id-kp-OCSPSigning and anyExtendedKeyUsage",
         {"usages": (ocsp_signing, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)}),
        ("delegate-expired", "a delegate that expired a day ago",
         {"not_before": -30 * _DAY, "not_after": -_DAY}),
        ("delegate-not-yet-valid-minutes", "a delegate valid from 4 minutes from now",
         {"not_before": timedelta(minutes=4)}),
        ("delegate-not-yet-valid-day", "a delegate valid from tomorrow", {"not_before": _DAY}),
        ("delegate-expires-before-next-update",
         "a delegate that expires in 2 days, nextUpdate in 3", {"not_after": 2 * _DAY}),
        ("delegate-is-ca", "a delegate with basicConstraints cA TRUE", {"is_ca": True}),
        ("delegate-of-foreign-ca", "a delegate issued by the foreign CA", {"ca": pki.foreign}),
        ("delegate-unknown-critical-extension", "a delegate with an unknown critical extension",
         {"extensions": [(unknown, True)]}),
        ("delegate-unknown-extension", "a delegate with an unknown non-critical extension",
         {"extensions": [(unknown, False)]}),
        ("delegate-ocsp-nocheck", "a delegate with id-pkix-ocsp-nocheck",
         {"extensions": [(x509.OCSPNoCheck(), False)]}),
        ("delegate-key-usage-no-signature", "a delegate whose critical keyUsage lacks "
         "digitalSignature", {"extensions": [(_key_usage(signature=False), True)]}),
        ("delegate-key-usage-signature", "a delegate whose critical keyUsage has "
         "digitalSignature", {"extensions": [(_key_usage(signature=True), True)]}),
        ("delegate-key-usage-cert-sign-only", "a delegate (not a CA) whose critical keyUsage "
         "is keyCertSign only", {"extensions": [(_raw_key_usage("03020204"), True)]}),
        ("delegate-key-usage-empty", "a delegate whose keyUsage is an empty BIT STRING",
         {"extensions": [(_raw_key_usage("030100"), False)]}),
        ("delegate-key-usage-no-bits", "a delegate whose keyUsage has one byte, no bit set",
         {"extensions": [(_raw_key_usage("03020700"), False)]}),
        ("delegate-key-usage-third-byte", "a delegate whose keyUsage sets a bit of its third "
         "byte only", {"extensions": [(_raw_key_usage("030407000080"), False)]}),
        ("delegate-key-usage-padding-set", "a delegate whose keyUsage sets an unused bit",
         {"extensions": [(_raw_key_usage("03020781"), False)]}),
        ("delegate-key-usage-trailing", "a delegate whose keyUsage BIT STRING is followed by a "
         "NULL", {"extensions": [(_raw_key_usage("030207800500"), False)]}),
        ("delegate-key-usage-decipher-only", "a delegate whose critical keyUsage is "
         "decipherOnly alone (no keyAgreement)",
         {"extensions": [(_raw_key_usage("0303070080"), True)]}),
        ("delegate-key-usage-signature-encipher-only", "a delegate whose critical keyUsage is "
         "digitalSignature and encipherOnly (no keyAgreement)",
         {"extensions": [(_raw_key_usage("03020081"), True)]}),
        ("delegate-key-usage-decipher-only-bad-san", "a delegate whose keyUsage is decipherOnly "
         "alone and whose subjectAltName is not DER",
         {"extensions": [(_raw_key_usage("0303070080"), True), (_NOT_DER_SAN, False)]}),
        ("delegate-cert-sha224", "a delegate whose certificate the CA signed with "
         "sha224WithRSA", {"sign_hash": hashes.SHA224()}),
        ("delegate-secp256k1", "a delegate with a key on secp256k1",
         {"key": ec.generate_private_key(ec.SECP256K1())}),
        ("delegate-p224", "a delegate with a key on P-224",
         {"key": ec.generate_private_key(ec.SECP224R1())}),
    ]
    # fmt: on
    for slug, what, options in delegates:
        c.delegated(f"signer/{slug}", what, pki.delegate(**options))
    _delegate_extensions(c)
    c.delegated(
        "signer/delegate-not-included",
        "a delegate signs but its certificate is not included",
        pki.delegate(),
        certificates=(),
    )
    delegate = pki.delegate()
    c.delegated(
        "signer/delegate-with-issuer-cert",
        "a delegate, with the issuer certificate included too",
        delegate,
        certificates=(delegate.cert, pki.rsa.cert),
    )
    c.delegated(
        "signer/foreign-ca",
        "signed by the foreign CA itself, its certificate included",
        pki.foreign.issuing,
    )
    c.delegated(
        "signer/leaf-key",
        "signed by another leaf's own key, that leaf included",
        _leaf_identity(pki.leaf()),
    )
    c.with_spec(
        "signer/issuer-with-extra-cert",
        "issuer-signed, an unrelated certificate included",
        certificates=(pki.foreign.cert,),
    )
    c.with_spec(
        "signer/issuer-with-own-cert",
        "issuer-signed, the issuer's certificate included",
        certificates=(pki.rsa.cert,),
    )
    _issuer_copies(c)
    for count in (8, 9):  # mozpkix holds 8 certificates at most
        c.with_spec(
            f"signer/issuer-with-{count}-extra-certs",
            f"issuer-signed, {count} unrelated certificates included",
            certificates=(pki.foreign.cert,) * count,
        )


def _delegate_extensions(c: _Catalogue) -> None:
    """A delegate with each extension all the clients handle marked critical, and
    policyConstraints, which GnuTLS does not handle."""
    policy = x509.PolicyInformation(x509.ObjectIdentifier("1.3.6.1.4.1.55555.7"), None)
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING])
    constraints = x509.PolicyConstraints(require_explicit_policy=0, inhibit_policy_mapping=None)
    # fmt: off
    kinds: list[tuple[str, x509.ExtensionType, bool]] = [
        ("critical-san", x509.SubjectAlternativeName([x509.DNSName("ocsp.example.test")]), True),
        ("critical-name-constraints", x509.NameConstraints(
            permitted_subtrees=[x509.DNSName("example.test")], excluded_subtrees=None), True),
        ("critical-certificate-policies", x509.CertificatePolicies([policy]), True),
        ("critical-inhibit-any-policy", x509.InhibitAnyPolicy(0), True),
        ("critical-policy-constraints", constraints, True),
        ("policy-constraints", constraints, False),
    ]
    # fmt: on
    for slug, extension, critical in kinds:
        flag = "critical" if critical else "non-critical"
        what = f"a delegate with a {flag} {type(extension).__name__}"
        c.delegated(
            f"signer/delegate-{slug}", what, c.pki.delegate(extensions=[(extension, critical)])
        )
    what = "a delegate whose extKeyUsage is critical"
    delegate = c.pki.delegate(usages=(), extensions=[(eku, True)])
    c.delegated("signer/delegate-critical-eku", what, delegate)


def _issuer_copies(c: _Catalogue) -> None:
    """Issuer-signed, with another certificate matching the ResponderID included: GnuTLS
    verifies with the first match as a delegated responder (find_signercert)."""
    pki, issuer = c.pki, c.pki.rsa.issuing
    copy = copy_of(issuer, c.now - _DAY, c.now + 300 * _DAY)
    old = copy_of(issuer, c.now - 400 * _DAY, c.now - 30 * _DAY)
    by_key = key_hash(issuer.key.public_key())
    # fmt: off
    copies: list[tuple[str, str, tuple[x509.Certificate, ...], dict[str, Any]]] = [
        ("issuer-with-copy", "issuer-signed, another valid certificate of the issuer included "
         "(same name and key)", (copy,), {}),
        ("issuer-by-key-with-copy", "issuer-signed byKey, another valid certificate of the "
         "issuer included", (copy,), {"responder_id": by_key}),
        ("issuer-with-expired-copy", "issuer-signed, an expired earlier certificate of the "
         "issuer included", (old,), {}),
        ("issuer-with-own-cert-then-copy", "issuer-signed, the issuer's certificate included, "
         "then another one of the issuer", (pki.rsa.cert, copy), {}),
        ("issuer-by-key-with-its-key-id", "issuer-signed byKey, an unrelated certificate whose "
         "subjectKeyIdentifier is the issuer's key hash included",
         (_with_key_id(pki.foreign.issuing, by_key),), {"responder_id": by_key}),
    ]
    # fmt: on
    for slug, what, certificates, changes in copies:
        c.with_spec(f"signer/{slug}", what, certificates=certificates, **changes)


def copy_of(who: Identity, not_before: datetime, not_after: datetime) -> x509.Certificate:
    """Another self-signed certificate of the root `who` (a re-issued or expired copy of an
    issuer): its name and key, a new serial; the matrix and tests/test_strict_rules.py share
    it."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(who.cert.subject)
        .issuer_name(who.cert.subject)
        .public_key(who.cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    return builder.sign(who.key, hashes.SHA256())


def _with_key_id(issuer: Identity, key_id: bytes) -> x509.Certificate:
    """A certificate `issuer` issues, whose subjectKeyIdentifier is `key_id`."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("mustaple matrix key id"))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issuer.cert.not_valid_before_utc)
        .not_valid_after(issuer.cert.not_valid_after_utc)
        .add_extension(x509.SubjectKeyIdentifier(key_id), critical=False)
    )
    return builder.sign(issuer.key, hashes.SHA256())


def _leaf_identity(leaf: Leaf) -> Identity:
    return Identity(leaf.cert, leaf.key)


def _leaves(c: _Catalogue) -> None:
    """A leaf whose own extensions cryptography refuses to read, though every client takes it:
    a keyUsage with decipherOnly but no keyAgreement (`certs.extensions_of`)."""
    usage = _raw_key_usage("0303078080")  # digitalSignature, decipherOnly
    leaf = c.pki.leaf(extensions=[(usage, True)])
    what = "a leaf whose critical keyUsage is digitalSignature and decipherOnly (no keyAgreement)"
    c.add("leaf/key-usage-signature-decipher-only", what, leaf, craft_response(c.spec(leaf)))


def _raw_key_usage(value: str) -> x509.UnrecognizedExtension:
    """A keyUsage extension whose extnValue holds the bytes `value` (hex), as they are."""
    return x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.15"), bytes.fromhex(value))


def _key_usage(*, signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(signature, False, not signature, False, False, False, False, False, False)


def _responder_ids(c: _Catalogue) -> None:
    pki = c.pki
    c.with_spec(
        "responder-id/issuer-by-key",
        "ResponderID byKey of the issuer",
        responder_id=key_hash(pki.rsa.issuing.key.public_key()),
    )
    delegate = pki.delegate()
    c.delegated(
        "responder-id/delegate-by-key",
        "a delegate named byKey",
        delegate,
        responder_id=key_hash(delegate.key.public_key()),
    )
    c.with_spec(
        "responder-id/wrong-key-hash", "byKey with a hash of no key", responder_id=bytes(20)
    )
    c.with_spec(
        "responder-id/wrong-name",
        "byName naming the foreign CA",
        responder_id=pki.foreign.cert.subject,
    )
    c.with_spec(
        "responder-id/key-hash-32-bytes",
        "byKey with a 32-byte value",
        responder_id=key_hash(pki.rsa.issuing.key.public_key()) + bytes(12),
    )
    delegate = pki.delegate()
    c.delegated(
        "responder-id/delegate-named-issuer",
        "a delegate signs, the ResponderID names the issuer",
        delegate,
        responder_id=pki.rsa.cert.subject,
    )
    c.delegated(
        "responder-id/issuer-key-delegate-signs",
        "a delegate signs, byKey of the issuer",
        pki.delegate(),
        responder_id=key_hash(pki.rsa.issuing.key.public_key()),
    )


def _responder_name(tbs: Node) -> Node:
    return tbs.items[0].items[0] if tbs.items[0].tag == 0xA1 else tbs.items[1].items[0]


def _names(c: _Catalogue) -> None:
    c.resigned(
        "names/responder-printable",
        "byName with the issuer name re-encoded as PrintableString",
        edit=lambda tbs: retype_strings(_responder_name(tbs), _PRINTABLE_STRING),
    )
    c.resigned(
        "names/responder-upper-case",
        "byName with the issuer's common name in upper case",
        responder_id=_name("MUSTAPLE MATRIX RSA ROOT"),
    )
    c.resigned(
        "names/responder-extra-attribute",
        "byName with an extra country attribute",
        responder_id=x509.Name(
            [x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"), *c.pki.rsa.cert.subject]
        ),
    )
    c.resigned(
        "names/responder-reordered",
        "byName with the attributes in reverse order",
        responder_id=x509.Name(list(reversed(list(c.pki.rsa.cert.subject)))),
    )
    delegate = c.pki.delegate()
    leaf = c.pki.leaf()
    crafted = craft_response(
        c.spec(leaf, responder_id=delegate.cert.subject, certificates=(delegate.cert,))
    )
    edited = resign(
        crafted,
        _natural(delegate.key),
        edit=lambda tbs: retype_strings(_responder_name(tbs), _PRINTABLE_STRING),
    )
    c.add(
        "names/delegate-printable",
        "a delegate named byName re-encoded as PrintableString",
        leaf,
        edited,
    )


def _times(c: _Catalogue) -> None:
    now = c.now
    hour, day, minute = _HOUR, _DAY, timedelta(minutes=1)
    # fmt: off
    relations: list[tuple[str, str, timedelta, timedelta | None, timedelta]] = [
        # name, what, then thisUpdate, nextUpdate and producedAt relative to now
        ("this-update-3min-ahead", "thisUpdate 3 minutes ahead", 3 * minute, 4 * day, 0 * day),
        ("this-update-hour-ahead", "thisUpdate an hour ahead", hour, 4 * day, 0 * day),
        ("this-update-2-days-ahead", "thisUpdate 2 days ahead", 2 * day, 6 * day, 0 * day),
        ("produced-hour-ahead", "producedAt an hour ahead", -hour, 3 * day, hour),
        ("produced-2-days-ahead", "producedAt 2 days ahead", -hour, 3 * day, 2 * day),
        ("produced-before-this-update", "producedAt an hour before thisUpdate",
         -hour, 3 * day, -2 * hour),
        ("expired-1min", "nextUpdate a minute ago", -4 * day, -minute, -4 * day),
        ("expired-hour", "nextUpdate an hour ago", -4 * day, -hour, -4 * day),
        ("expired-2-days", "nextUpdate 2 days ago", -6 * day, -2 * day, -6 * day),
        ("no-next-update", "no nextUpdate, thisUpdate an hour ago", -hour, None, -hour),
        ("no-next-update-20h", "no nextUpdate, thisUpdate 20 hours ago",
         -20 * hour, None, -20 * hour),
        ("no-next-update-2-days", "no nextUpdate, thisUpdate 2 days ago",
         -2 * day, None, -2 * day),
        ("next-equals-this", "nextUpdate equal to thisUpdate (an hour ago)", -hour, -hour, -hour),
        ("next-before-this", "nextUpdate before thisUpdate, both ahead",
         hour, 30 * minute, 0 * day),
        ("short-window", "thisUpdate an hour ago, nextUpdate in 10 minutes",
         -hour, 10 * minute, -hour),
        ("window-9-days", "a 9-day window, nextUpdate in an hour",
         hour - 9 * day, hour, hour - 9 * day),
        ("window-10-days", "a 10-day window from an hour ago", -hour, 10 * day - hour, -hour),
        ("window-11-days", "an 11-day window from an hour ago", -hour, 11 * day - hour, -hour),
        ("window-30-days", "a 30-day window from an hour ago", -hour, 30 * day, -hour),
        ("window-30-days-old", "a 30-day window from 11 days ago",
         -11 * day, 19 * day, -11 * day),
    ]
    # fmt: on
    for slug, what, this_update, next_update, produced_at in relations:
        until = None if next_update is None else now + next_update
        c.with_singles(
            f"time/{slug}", what, _ours(c, this_update=now + this_update, next_update=until)
        )
        c.cases[-1] = _reproduced(c, c.cases[-1], now + produced_at)
    short = c.pki.rsa.issue(HOSTNAME, key_type="ec", ocsp_urls=[OCSP_URL], not_after=now + 2 * _DAY)
    c.add(
        "time/beyond-leaf-expiry",
        "nextUpdate after the leaf's notAfter",
        short,
        craft_response(c.spec(short)),
    )


def _reproduced(c: _Catalogue, case: Case, produced_at: datetime) -> Case:
    """`case` with its response's producedAt changed (and signed again)."""

    def edit(tbs: Node) -> None:
        index = next(i for i, item in enumerate(tbs.items) if item.tag == 0x18)
        tbs.items[index] = Node.parse(_generalized(produced_at))

    return replace(case, staple=resign(case.staple, _natural(c.pki.rsa.issuing.key), edit=edit))


def _generalized(when: datetime, suffix: str = "Z") -> bytes:
    return tlv(0x18, f"{when:%Y%m%d%H%M%S}{suffix}".encode("ascii"))


def _insert_false(extension: Node, *, times: int = 1) -> None:
    for _ in range(times):
        extension.items.insert(1, Node(0x01, b"\x00"))


def _produced_at(tbs: Node) -> Node:
    return next(item for item in tbs.items if item.tag == 0x18)


def _der_defaults(c: _Catalogue) -> None:
    nonce = [_ext(_NONCE, False, octet_string(bytes(8)))]
    c.resigned(
        "der/critical-false-after-value",
        "a response nonce with a BOOLEAN FALSE after its value (not where critical goes)",
        edit=lambda tbs: tbs.items[-1].items[0].items[0].items.append(Node(0x01, b"\x00")),
        extensions=nonce,
    )
    c.resigned(
        "der/critical-false-twice",
        "a response nonce with critical FALSE spelled out twice",
        edit=lambda tbs: _insert_false(tbs.items[-1].items[0].items[0], times=2),
        extensions=nonce,
    )
    c.resigned(
        "der/explicit-version-v1",
        "version v1 spelled out ([0] INTEGER 0)",
        edit=lambda tbs: tbs.items.insert(0, Node(0xA0, [Node(0x02, b"\x00")])),
    )
    c.resigned(
        "der/explicit-critical-false-response",
        "a response nonce with critical FALSE spelled out",
        edit=lambda tbs: _insert_false(tbs.items[-1].items[0].items[0]),
        extensions=nonce,
    )
    c.resigned(
        "der/explicit-critical-false-single",
        "a single extension with critical FALSE spelled out",
        edit=lambda tbs: _insert_false(_responses(tbs).items[0].items[-1].items[0].items[0]),
        single_extensions=[_ext(_UNKNOWN_EXTENSION)],
    )
    _spelled_out_in_certs(c)
    c.resigned(
        "der/boolean-true-01",
        "a critical unknown single extension with TRUE encoded as 0x01",
        edit=lambda tbs: _set_boolean(_responses(tbs).items[0].items[-1].items[0].items[0]),
        single_extensions=[_ext(_UNKNOWN_EXTENSION, True)],
    )
    times = [
        ("time-fraction", "producedAt with a fraction of a second (.5Z)", ".5Z"),
        ("time-fraction-trailing-zero", "producedAt with .50Z (trailing zero, not DER)", ".50Z"),
        ("time-local", "producedAt without the Z (local time)", ""),
        ("time-offset", "producedAt with a +0000 offset", "+0000"),
    ]
    for slug, what, suffix in times:
        c.resigned(
            f"der/{slug}",
            what,
            edit=functools.partial(_replace_produced, when=c.now - _HOUR, suffix=suffix),
        )
    c.resigned(
        "der/time-utctime",
        "producedAt as UTCTime",
        edit=lambda tbs: _set_node(
            _produced_at(tbs), Node(0x17, f"{c.now - _HOUR:%y%m%d%H%M%S}Z".encode())
        ),
    )
    c.resigned(
        "der/certs-empty",
        "the certs field present with no certificate",
    )
    c.cases[-1] = replace(
        c.cases[-1],
        staple=edit_basic(c.cases[-1].staple, lambda basic: _append(basic, explicit(0, seq()))),
    )


def _spelled_out_in_certs(c: _Catalogue) -> None:
    """Certificates in the response with critical FALSE spelled out, signed over that."""
    pki, issuer = c.pki, c.pki.rsa.issuing
    delegate = pki.delegate()
    leaf = pki.leaf()
    spec = c.spec(leaf, responder_id=delegate.cert.subject, certificates=(delegate.cert,))
    crafted = resign(craft_response(spec), _natural(delegate.key))
    c.add(
        "der/explicit-critical-false-delegate",
        "a delegate whose certificate spells out critical FALSE",
        leaf,
        with_certificates(crafted, [false_spelled_out(delegate.cert, issuer.key)]),
    )
    extra = pki.foreign.issue("extra.test")
    leaf = pki.leaf()
    c.add(
        "der/explicit-critical-false-extra-cert",
        "issuer-signed, an unrelated certificate spelling out critical FALSE included",
        leaf,
        with_certificates(
            craft_response(c.spec(leaf)), [false_spelled_out(extra.cert, pki.foreign.issuing.key)]
        ),
    )


def false_spelled_out(cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """`cert` with critical FALSE spelled out in its non-critical extensions, signed again
    by `key` with the algorithm it had (SHA-256)."""
    root = Node.parse(cert.public_bytes(serialization.Encoding.DER))
    tbs = root.items[0]
    extensions = next(item for item in tbs.items if item.tag == 0xA3).items[0]
    for extension in extensions.items:
        if len(extension.items) == 2:
            _insert_false(extension)
    tbs_der = tbs.encode()
    return seq(tbs_der, root.items[1].encode(), bit_string(_natural(key).sign(tbs_der)))


def with_certificates(staple: bytes, certs: list[bytes]) -> bytes:
    """`staple` carrying `certs` (as they are) instead of its own certificates."""

    def replaced(basic: bytes) -> bytes:
        signed = b"".join(item.encode() for item in Node.parse(basic).items[:3])
        return tlv(0x30, signed + explicit(0, seq(*certs)))

    return edit_basic(staple, replaced)


def _set_boolean(extension: Node) -> None:
    extension.items[1].value = b"\x01"


def _set_node(target: Node, new: Node) -> None:
    target.tag, target.value = new.tag, new.value


def _replace_produced(tbs: Node, when: datetime, suffix: str) -> None:
    _set_node(_produced_at(tbs), Node.parse(_generalized(when, suffix)))


def _append(element: bytes, extra: bytes) -> bytes:
    node = der.read_single(element)
    return tlv(node.tag, node.content + extra)


def _long_length(element: bytes) -> bytes:
    """`element` with its length in a needlessly long form (BER, not DER)."""
    node = der.read_tlv(element)
    return bytes([node.tag, 0x84]) + len(node.content).to_bytes(4, "big") + node.content


def _indefinite(element: bytes) -> bytes:
    """`element` (constructed) with an indefinite length and end-of-contents (BER)."""
    node = der.read_tlv(element)
    return bytes([node.tag, 0x80]) + node.content + b"\x00\x00"


def _ber(c: _Catalogue) -> None:
    c.with_spec("ber/outer-long-length", "the outer SEQUENCE with a non-minimal length")
    _restaple(c, _long_length)
    c.with_spec("ber/outer-indefinite", "the outer SEQUENCE with an indefinite length")
    _restaple(c, _indefinite)
    c.resigned(
        "ber/tbs-long-length",
        "tbsResponseData with a non-minimal length (signed so)",
        tbs_bytes=_long_length,
    )
    c.resigned(
        "ber/tbs-indefinite",
        "tbsResponseData with an indefinite length (signed so)",
        tbs_bytes=_indefinite,
    )
    c.with_spec("ber/basic-long-length", "BasicOCSPResponse with a non-minimal length")
    _restaple(c, lambda staple: edit_basic(staple, _long_length))
    c.with_spec(
        "ber/response-octets-constructed", "responseBytes.response as a constructed OCTET STRING"
    )
    _restaple(c, _constructed_octets)
    c.with_spec("ber/status-padded", "responseStatus ENUMERATED with a leading zero byte")
    _restaple(c, _padded_status)


def _padded_status(staple: bytes) -> bytes:
    outer = Node.parse(staple)
    outer.items[0].value = b"\x00\x00"
    return outer.encode()


def _restaple(c: _Catalogue, change: Callable[[bytes], bytes]) -> None:
    """Replace the last case's bytes with `change` of them."""
    last = c.cases[-1]
    c.cases[-1] = replace(last, staple=change(last.staple))


def _constructed_octets(staple: bytes) -> bytes:
    outer = Node.parse(staple)
    response_bytes = outer.items[1].items[0]
    basic = _bytes(response_bytes.items[1])
    half = len(basic) // 2
    response_bytes.items[1] = Node(0x24, [Node(0x04, basic[:half]), Node(0x04, basic[half:])])
    return outer.encode()


def _trailing(c: _Catalogue) -> None:
    c.with_spec("trailing/zero-byte", "one zero byte after the response")
    _restaple(c, lambda staple: staple + b"\x00")
    c.with_spec("trailing/junk", "64 bytes of junk after the response")
    _restaple(c, lambda staple: staple + bytes(range(64)))
    c.with_spec("trailing/second-response", "the response twice, back to back")
    _restaple(c, lambda staple: staple + staple)
    c.with_spec(
        "trailing/in-octet-string", "bytes after the BasicOCSPResponse inside its OCTET STRING"
    )
    _restaple(c, lambda staple: edit_basic(staple, lambda basic: basic + b"\x05\x00"))
    c.with_spec("trailing/in-basic", "an extra element at the end of BasicOCSPResponse")
    _restaple(c, lambda staple: edit_basic(staple, lambda basic: _append(basic, null())))
    c.with_spec("trailing/in-response-bytes", "an extra element at the end of ResponseBytes")
    _restaple(c, _extra_in_response_bytes)
    c.resigned(
        "trailing/in-tbs",
        "an extra element at the end of tbsResponseData (signed)",
        edit=lambda tbs: tbs.items.append(Node(0x05, b"")),
    )
    c.resigned(
        "trailing/in-single",
        "an extra element at the end of our SingleResponse (signed)",
        edit=lambda tbs: _responses(tbs).items[0].items.append(Node(0x05, b"")),
    )


def _extra_in_response_bytes(staple: bytes) -> bytes:
    outer = Node.parse(staple)
    outer.items[1].items[0].items.append(Node(0x05, b""))
    return outer.encode()


def _envelopes(c: _Catalogue) -> None:
    statuses = [
        (1, "malformed-request"),
        (2, "internal-error"),
        (3, "try-later"),
        (4, "status-4"),
        (5, "sig-required"),
        (6, "unauthorized"),
    ]
    for status, slug in statuses:
        c.add(
            f"envelope/{slug}",
            f"responseStatus {status}, no responseBytes",
            c.pki.leaf(),
            unsuccessful(status),
        )
    c.add(
        "envelope/successful-no-bytes",
        "responseStatus successful without responseBytes",
        c.pki.leaf(),
        seq(b"\x0a\x01\x00"),
    )
    c.with_spec(
        "envelope/try-later-with-bytes",
        "responseStatus tryLater with a good response attached",
        response_status=3,
    )
    c.with_spec(
        "envelope/not-basic",
        "a response type other than id-pkix-ocsp-basic",
        response_type="1.3.6.1.5.5.7.48.1.99",
    )
    c.with_spec("envelope/version-2", "tbsResponseData version v2", version=1)
    c.add("envelope/garbage", "not DER at all", c.pki.leaf(), b"this is not an OCSP response")
    c.with_spec("envelope/truncated", "a correct response cut 10 bytes short")
    _restaple(c, lambda staple: staple[:-10])


_AXES: tuple[Callable[[_Catalogue], None], ...] = (
    _baseline,
    _statuses,
    _cert_ids,
    _singles,
    _extensions,
    _sct_lists,
    _signatures,
    _unused_bit,
    _signers,
    _leaves,
    _responder_ids,
    _names,
    _times,
    _der_defaults,
    _ber,
    _trailing,
    _envelopes,
)
