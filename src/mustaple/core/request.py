"""OCSP requests: the CertID, the request DER, and how to send it (GET or POST).

Pure. SHA-1 CertIDs by default, because HAProxy and most responders (and every pre-produced
response) key on them; SHA-256 on request. No nonce by default: responders that pre-produce
their answers (RFC 5019) cannot echo one. GET is used when the whole URL fits in 255 bytes
(RFC 5019 section 5), POST otherwise, and POST is the fallback when GET fails.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from mustaple.core import der
from mustaple.core.certs import Target

__all__ = [
    "HASHES",
    "CertId",
    "HttpRequest",
    "encode_request",
    "get_url",
    "issuer_key_bits",
    "make_cert_id",
    "plan_requests",
]

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
GET_URL_LIMIT = 255


@dataclass(frozen=True, slots=True)
class CertId:
    """Which certificate a request or SingleResponse is about (RFC 6960 section 4.1.1)."""

    hash_name: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int


def _digest(name: str, data: bytes) -> bytes:
    h = hashes.Hash(HASHES[name]())
    h.update(data)
    return h.finalize()


def issuer_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents (what issuerKeyHash and byKey hash)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bits = der.children(der.read_single(spki))[1]
    return bits.content[1:]  # drop the unused-bits byte


def make_cert_id(issuer: x509.Certificate, serial: int, hash_name: str = "sha1") -> CertId:
    """The CertID of certificate `serial` issued by `issuer`, hashed with `hash_name`."""
    if hash_name not in HASHES:
        raise ValueError(f"unsupported CertID hash {hash_name!r}; use one of {sorted(HASHES)}")
    return CertId(hash_name, *_issuer_hashes(issuer, hash_name), serial)


@functools.lru_cache(maxsize=64)
def _issuer_hashes(issuer: x509.Certificate, hash_name: str) -> tuple[bytes, bytes]:
    """issuerNameHash and issuerKeyHash, worked out once per issuer (about 25 µs each time
    otherwise, for every certificate it signed)."""
    return (
        _digest(hash_name, issuer.subject.public_bytes()),
        _digest(hash_name, issuer_key_bits(issuer)),
    )


def encode_request(cert_id: CertId, *, nonce: bytes | None = None) -> bytes:
    """The DER OCSPRequest for one CertID, with a nonce only when one is given."""
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        cert_id.issuer_name_hash,
        cert_id.issuer_key_hash,
        cert_id.serial,
        HASHES[cert_id.hash_name](),
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def get_url(base_url: str, request_der: bytes) -> str:
    """The GET URL: base URL, one slash, then the base64 request with +, / and = escaped."""
    encoded = base64.b64encode(request_der).decode("ascii").translate(_ESCAPED)
    return f"{base_url.rstrip('/')}/{encoded}"


# The only characters of base64 that a URL path must escape (what `quote(safe="")` does to
# base64, without its look-up per character).
_ESCAPED = str.maketrans({"+": "%2B", "/": "%2F", "=": "%3D"})


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One way of sending a request to a responder URL."""

    method: Literal["GET", "POST"]
    url: str  # for GET, the full URL with the encoded request
    body: bytes | None = None


def plan_requests(base_url: str, request_der: bytes) -> list[HttpRequest]:
    """GET then POST when the GET URL is short enough (RFC 5019), else POST alone."""
    post = HttpRequest("POST", base_url, request_der)
    url = get_url(base_url, request_der)
    if len(url.encode()) <= GET_URL_LIMIT:
        return [HttpRequest("GET", url), post]
    return [post]


def cert_id_for(target: Target, hash_name: str = "sha1") -> CertId:
    """The CertID of a target's leaf."""
    return make_cert_id(target.issuer, target.serial, hash_name)
