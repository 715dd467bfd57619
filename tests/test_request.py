"""CertIDs, request DER, and the GET/POST plan."""

from __future__ import annotations

import base64
from urllib.parse import quote, unquote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from mustaple.core.request import (
    GET_URL_LIMIT,
    encode_request,
    get_url,
    make_cert_id,
    plan_requests,
)
from mustaple.testing import Leaf


@pytest.mark.parametrize(
    ("name", "algorithm"), [("sha1", hashes.SHA1()), ("sha256", hashes.SHA256())]
)
def test_cert_id_matches_cryptography(
    leaf: Leaf, name: str, algorithm: hashes.HashAlgorithm
) -> None:
    reference = ocsp.OCSPRequestBuilder().add_certificate(leaf.cert, leaf.issuer, algorithm).build()
    ours = make_cert_id(leaf.issuer, leaf.cert.serial_number, name)
    assert ours.issuer_name_hash == reference.issuer_name_hash
    assert ours.issuer_key_hash == reference.issuer_key_hash
    assert ours.serial == reference.serial_number


def test_unsupported_hash_is_our_misuse(leaf: Leaf) -> None:
    with pytest.raises(ValueError, match="unsupported CertID hash"):
        make_cert_id(leaf.issuer, 1, "md5")


def test_request_has_no_nonce_unless_asked(leaf: Leaf) -> None:
    cert_id = make_cert_id(leaf.issuer, leaf.cert.serial_number)
    plain = ocsp.load_der_ocsp_request(encode_request(cert_id))
    assert len(plain.extensions) == 0
    assert isinstance(plain.hash_algorithm, hashes.SHA1)
    with_nonce = ocsp.load_der_ocsp_request(encode_request(cert_id, nonce=b"n" * 16))
    assert with_nonce.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16


@pytest.mark.parametrize("base", ["http://ocsp.test", "http://ocsp.test/"])
def test_get_url_joins_with_exactly_one_slash(base: str) -> None:
    assert get_url(base, b"\x30\x00") == "http://ocsp.test/MAA%3D"


def test_get_url_escapes_base64_specials() -> None:
    data = bytes([0xFB, 0xEF, 0xFF, 0x3E])  # base64 "++//Pg==": all three specials
    url = get_url("http://ocsp.test/path/", data)
    assert url == "http://ocsp.test/path/%2B%2B%2F%2FPg%3D%3D"
    assert base64.b64decode(unquote(url.rsplit("/", 1)[1])) == data


def test_get_url_escapes_as_quote_does_for_every_length_and_byte() -> None:
    for size in range(1, 120):
        data = bytes((size * 37 + i * 101) % 256 for i in range(size))
        encoded = quote(base64.b64encode(data).decode("ascii"), safe="")
        assert get_url("http://ocsp.test/", data) == f"http://ocsp.test/{encoded}"


def test_short_requests_use_get_then_post(leaf: Leaf) -> None:
    request = encode_request(make_cert_id(leaf.issuer, leaf.cert.serial_number))
    plan = plan_requests("http://ocsp.test/", request)
    assert [p.method for p in plan] == ["GET", "POST"]
    assert plan[0].body is None
    assert plan[1].body == request
    assert plan[1].url == "http://ocsp.test/"


def test_long_urls_use_post_only(leaf: Leaf) -> None:
    request = encode_request(make_cert_id(leaf.issuer, leaf.cert.serial_number))
    base = "http://ocsp.test/" + "p" * 200 + "/"
    assert len(get_url(base, request)) > GET_URL_LIMIT
    assert [p.method for p in plan_requests(base, request)] == ["POST"]


def test_limit_is_inclusive() -> None:
    request = b"\x30" * 3  # base64 "MDAw": 4 characters
    base = "http://o.test/" + "x" * (GET_URL_LIMIT - len("http://o.test/") - 5) + "/"
    assert len(get_url(base, request)) == GET_URL_LIMIT
    assert plan_requests(base, request)[0].method == "GET"
