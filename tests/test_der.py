"""The strict DER reader rejects everything that is not canonical DER."""

from __future__ import annotations

import pytest

from mustaple.core import der


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
