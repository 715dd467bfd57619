"""The strict DER reader rejects everything that is not canonical DER."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import build_response
from mustaple.core import der
from mustaple.core.der import RESPONSE_HEAD, looks_like_ocsp_response
from mustaple.testing.craft import craft_response, good_spec
from mustaple.testing.matrix import false_spelled_out, with_certificates
from mustaple.testing.pki import CA


def test_reads_short_and_long_lengths() -> None:
    short = der.read_single(b"\x04\x02ab", der.OCTET_STRING)
    assert short.content == b"ab"
    long = der.read_single(b"\x04\x81\x80" + b"x" * 128)
    assert len(long.content) == 128


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x30\x80\x00\x00", "indefinite"),
        (b"\x04\x81\x05abcde", "non-minimal length"),
        (b"\x04\x82\x00\x05abcde", "non-minimal length"),
        (b"\x04\x05abc", "past the end"),
        (b"\x04", "truncated"),
        (b"\x1f\x01\x00", "high tag"),
        (b"\x04\x01ab", "trailing"),
    ],
)
def test_rejects_non_der(data: bytes, problem: str) -> None:
    with pytest.raises(der.DerError, match=problem):
        der.read_single(data)


def test_children_of_a_sequence() -> None:
    seq = der.read_single(b"\x30\x06\x02\x01\x05\x04\x01z")
    first, second = der.children(seq)
    assert der.decode_integer(first) == 5
    assert second.content == b"z"


def test_children_of_a_primitive_is_an_error() -> None:
    with pytest.raises(der.DerError):
        der.children(der.read_single(b"\x04\x00"))


@pytest.mark.parametrize(
    ("raw", "value"), [(b"\x00", 0), (b"\x7f", 127), (b"\x00\x80", 128), (b"\xff", -1)]
)
def test_integers(raw: bytes, value: int) -> None:
    assert der.decode_integer(der.read_single(bytes([2, len(raw)]) + raw)) == value


@pytest.mark.parametrize("raw", [b"", b"\x00\x05", b"\xff\x80"])
def test_non_minimal_integers(raw: bytes) -> None:
    with pytest.raises(der.DerError):
        der.decode_integer(der.read_single(bytes([2, len(raw)]) + raw))


def test_oids() -> None:
    basic = der.read_single(bytes.fromhex("06092b0601050507300101"))
    assert der.decode_oid(basic) == "1.3.6.1.5.5.7.48.1.1"
    assert der.decode_oid(der.read_single(bytes.fromhex("0603550403"))) == "2.5.4.3"


@pytest.mark.parametrize("raw", ["0600", "06022b86", "0603558003"])
def test_bad_oids(raw: str) -> None:
    with pytest.raises(der.DerError):
        der.decode_oid(der.read_single(bytes.fromhex(raw)))


def test_what_can_begin_an_ocsp_response() -> None:
    """The files a sink may replace: a response (long or short length form), not a
    certificate in DER or PEM, a database, text."""
    ca = CA(key_type="ec")
    leaf = ca.issue("www.example.test")
    now = datetime.now(UTC)
    response = build_response(leaf, ca.issuing, this_update=now, next_update=now)
    assert looks_like_ocsp_response(response[:RESPONSE_HEAD])
    assert looks_like_ocsp_response(b"\x30\x03\x0a\x01\x03")  # tryLater
    certificate = leaf.cert.public_bytes(serialization.Encoding.DER)
    for other in (certificate, leaf.fullchain_pem, b"SQLite format 3\x00", b"state_dir = 1", b"0"):
        assert not looks_like_ocsp_response(other[:RESPONSE_HEAD]), other[:20]
    assert not looks_like_ocsp_response(b"")


def test_certificates_lose_their_spelled_out_false_and_are_listed_as_sent() -> None:
    ca = CA(key_type="ec")
    leaf = ca.issue("der.test")
    sent_cert = false_spelled_out(leaf.cert, ca.issuing.key)
    spec = good_spec(leaf, ca.issuing, datetime.now(UTC))
    sent = with_certificates(craft_response(spec), [sent_cert])
    canonical = der.without_encoded_defaults(sent)
    assert canonical is not None
    assert der.embedded_certificates(sent) == [sent_cert]
    (cert,) = der.embedded_certificates(canonical)
    assert cert != sent_cert
    assert x509.load_der_x509_certificate(cert).extensions  # cryptography reads it now
