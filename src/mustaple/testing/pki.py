"""A throwaway PKI for tests and the demo: CAs, must-staple leaves, delegated OCSP signers.

In the spirit of trustme: a tiny API with keyword-only options and immediate errors.

    ca = CA(key_type="rsa", intermediate=True, ocsp_url="http://127.0.0.1:8080/")
    leaf = ca.issue("www.example.test")                 # must-staple by default
    signer = ca.delegated_signer()                      # id-kp-OCSPSigning, issued by ca
    paths = leaf.write(tmp_path)                        # fullchain.pem, cert.pem, issuer.pem ...

Nothing here is fit for production: keys live in memory and are written unencrypted.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "Identity", "KeyType", "Leaf", "LeafFiles", "new_key"]

KeyType = Literal["ec", "rsa", "ed25519", "ed448"]
_KEY_TYPES = ("ec", "rsa", "ed25519", "ed448")
_serials = itertools.count(0x1000)


def new_key(key_type: KeyType) -> CertificateIssuerPrivateKeyTypes:
    """A fresh private key: P-256, RSA-2048, Ed25519 or Ed448."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "ed448":
        return ed448.Ed448PrivateKey.generate()
    raise ValueError(f"key_type must be one of {_KEY_TYPES}, not {key_type!r}")


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    eddsa = isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    return None if eddsa else hashes.SHA256()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mustaple testing"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class LeafFiles:
    """Where `Leaf.write` put things."""

    fullchain: Path  # leaf then the issuing CA, as certbot's fullchain.pem
    cert: Path  # the leaf alone
    chain: Path  # the issuing CA
    issuer: Path  # the certificate that signed the leaf
    key: Path
    root: Path


@dataclass(frozen=True)
class Leaf(Identity):
    """An end-entity certificate with its issuer and the chain a server would send."""

    issuer: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # the issuing CA, as a server sends it
    root: x509.Certificate

    @property
    def fullchain_pem(self) -> bytes:
        return self.cert_pem + b"".join(_pem(c) for c in self.chain)

    def write(self, directory: Path) -> LeafFiles:
        """Write PEM files into `directory` (created if needed)."""
        directory.mkdir(parents=True, exist_ok=True)
        files = LeafFiles(
            fullchain=directory / "fullchain.pem",
            cert=directory / "cert.pem",
            chain=directory / "chain.pem",
            issuer=directory / "issuer.pem",
            key=directory / "privkey.pem",
            root=directory / "root.pem",
        )
        files.fullchain.write_bytes(self.fullchain_pem)
        files.cert.write_bytes(self.cert_pem)
        files.chain.write_bytes(b"".join(_pem(c) for c in self.chain))
        files.issuer.write_bytes(_pem(self.issuer))
        files.key.write_bytes(self.key_pem)
        files.root.write_bytes(_pem(self.root))
        return files


class CA:
    """A root CA, optionally with one intermediate that then issues everything."""

    def __init__(
        self,
        *,
        key_type: KeyType = "ec",
        name: str = "mustaple test root",
        intermediate: bool = False,
        ocsp_url: str | None = None,
        now: datetime | None = None,
    ) -> None:
        self.key_type = key_type
        self.ocsp_url = ocsp_url
        self.now = now or datetime.now(UTC)
        root_key = new_key(key_type)
        self.root = Identity(self._build_ca(_name(name), root_key, root_key, None), root_key)
        self.issuing = self.root
        if intermediate:
            key = new_key(key_type)
            cert = self._build_ca(_name(f"{name} intermediate"), key, root_key, self.root.cert)
            self.issuing = Identity(cert, key)

    @property
    def cert(self) -> x509.Certificate:
        """The certificate that signs leaves (the intermediate when there is one)."""
        return self.issuing.cert

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """What a server sends after the leaf: the issuing CA (the root itself when alone)."""
        return (self.issuing.cert,)

    def _builder(
        self, subject: x509.Name, public_key: object, not_before: datetime, not_after: datetime
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(next(_serials))
            .not_valid_before(not_before)
            .not_valid_after(not_after)
        )

    def _build_ca(
        self,
        subject: x509.Name,
        key: CertificateIssuerPrivateKeyTypes,
        signer: CertificateIssuerPrivateKeyTypes,
        parent: x509.Certificate | None,
    ) -> x509.Certificate:
        builder = (
            self._builder(
                subject,
                key.public_key(),
                self.now - timedelta(days=1),
                self.now + timedelta(days=3650),
            )
            .issuer_name(parent.subject if parent else subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        return builder.sign(signer, _hash_for(signer))

    def _sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        key = self.issuing.key
        return builder.issuer_name(self.cert.subject).sign(key, _hash_for(key))

    def issue(
        self,
        hostname: str = "www.example.test",
        *more_hostnames: str,
        must_staple: bool = True,
        ocsp_urls: Sequence[str] | None = None,
        ca_issuer_urls: Sequence[str] = (),
        key_type: KeyType | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ) -> Leaf:
        """A leaf for `hostname`; OCSP URLs default to the CA's `ocsp_url`.

        `extensions`: more (extension, critical) pairs, such as a keyUsage.
        """
        if isinstance(ocsp_urls, str):
            raise TypeError("ocsp_urls takes a sequence of URLs, not one string")
        urls = list(ocsp_urls) if ocsp_urls is not None else [u for u in [self.ocsp_url] if u]
        key = new_key(key_type or self.key_type)
        builder = self._builder(
            _name(hostname),
            key.public_key(),
            not_before or self.now - timedelta(hours=1),
            not_after or self.now + timedelta(days=90),
        )
        names = [x509.DNSName(h) for h in (hostname, *more_hostnames)]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        aia = AuthorityInformationAccessOID
        access = [_access(aia.OCSP, u) for u in urls]
        access += [_access(aia.CA_ISSUERS, u) for u in ca_issuer_urls]
        if access:
            builder = builder.add_extension(x509.AuthorityInformationAccess(access), False)
        if must_staple:
            builder = builder.add_extension(
                x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False
            )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        cert = self._sign(builder)
        return Leaf(cert, key, issuer=self.cert, chain=self.chain, root=self.root.cert)

    def delegated_signer(
        self,
        *,
        ocsp_signing: bool = True,
        is_ca: bool = False,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        key_type: KeyType | None = None,
        name: str = "mustaple test OCSP signer",
        extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ) -> Identity:
        """A delegated OCSP responder certificate issued by this CA (RFC 6960 4.2.2.2).

        `extensions`: more (extension, critical) pairs, such as an unknown critical one.
        """
        key = new_key(key_type or self.key_type)
        builder = self._builder(
            _name(name),
            key.public_key(),
            not_before or self.now - timedelta(hours=1),
            not_after or self.now + timedelta(days=30),
        ).add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        usages = [ExtendedKeyUsageOID.OCSP_SIGNING] if ocsp_signing else []
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return Identity(self._sign(builder), key)


def _access(method: x509.ObjectIdentifier, url: str) -> x509.AccessDescription:
    return x509.AccessDescription(method, x509.UniformResourceIdentifier(url))
