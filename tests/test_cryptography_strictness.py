"""What cryptography's parser refuses by itself, so that `verify` need not walk the DER first.

`mustaple.core.verify` parses with cryptography first and runs its own strict DER walk only when
cryptography refuses a response (to name the precise reason), when the status is not
successful, or when the signature algorithm's parameters are not pinned down by cryptography.
That is sound only while cryptography's parser (rust-asn1) refuses every non-DER shape the walk
refuses: these tests say so, case by case, and check the reason `verify` then gives. If a
cryptography upgrade makes one of them accept, `verify` must walk the DER for that shape again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.x509 import ocsp

from mustaple.core import der
from mustaple.core.certs import Target, make_target
from mustaple.core.reasons import Reason, Rejection
from mustaple.core.verify import Staple, verify
from mustaple.testing import CA, KeyType, Leaf, craft_response, good_spec
from mustaple.testing.craft import (
    BASIC_RESPONSE,
    enumerated,
    explicit,
    integer,
    null,
    octet_string,
    oid,
    seq,
    tlv,
)

NOW = datetime.now(UTC).replace(microsecond=0)
CHECK_AT = NOW + timedelta(minutes=1)
ECDSA_SHA256 = "1.2.840.10045.4.3.2"
RSA_SHA256 = "1.2.840.113549.1.1.11"
ED25519 = "1.3.101.112"
ECDSA_SHA1 = "1.2.840.10045.4.1"


@dataclass(frozen=True)
class Parts:
    """A good response cut into the encoded pieces the cases put back together."""

    der: bytes
    target: Target
    tbs: bytes
    algorithm: bytes
    signature: bytes
    basic: bytes
    response_bytes: bytes


def _encoded(tlv_: der.Tlv) -> bytes:
    """The whole encoding (header included) of an element read from a canonical buffer."""
    for header in range(2, 7):
        start = tlv_.start - header
        try:
            again = der.read_tlv(tlv_.data, max(start, 0))
        except der.DerError:
            continue
        if start >= 0 and (again.start, again.end) == (tlv_.start, tlv_.end):
            return tlv_.data[start : tlv_.end]
    raise AssertionError("no header found")


def _parts(key_type: KeyType) -> Parts:
    ca = CA(key_type=key_type)
    leaf: Leaf = ca.issue(f"{key_type}.strict.example.test")
    data = craft_response(good_spec(leaf, ca.issuing, NOW))
    outer = der.children(der.read_single(data))
    response_bytes = der.read_single(outer[1].content)
    payload = der.children(response_bytes)[1]
    basic = der.read_single(payload.content)
    tbs, algorithm, signature = der.children(basic)[:3]
    return Parts(
        der=data,
        target=make_target(leaf.cert, leaf.issuer),
        tbs=_encoded(tbs),
        algorithm=_encoded(algorithm),
        signature=_encoded(signature),
        basic=_encoded(basic),
        response_bytes=_encoded(response_bytes),
    )


@pytest.fixture(scope="module")
def ec() -> Parts:
    return _parts("ec")


def wrap_basic(basic: bytes) -> bytes:
    return seq(enumerated(0), explicit(0, seq(oid(BASIC_RESPONSE), octet_string(basic))))


def with_algorithm(parts: Parts, algorithm: bytes) -> bytes:
    return wrap_basic(seq(parts.tbs, algorithm, parts.signature))


def long_form(data: bytes) -> bytes:
    """The same element with its length in a needlessly long form."""
    header = 2 + (data[1] & 0x7F if data[1] & 0x80 else 0)
    body = data[header:]
    return bytes([data[0], 0x83]) + len(body).to_bytes(3, "big") + body


Maker = Callable[[Parts], bytes]
# case: how to make it from a good response, what cryptography says, the reason verify gives
REFUSED: dict[str, tuple[Maker, str, Reason]] = {
    "trailing byte": (lambda p: p.der + b"\x00", "ExtraData", Reason.TRAILING_DATA),
    "non-minimal outer length": (lambda p: long_form(p.der), "InvalidLength", Reason.MALFORMED),
    "indefinite outer length": (
        lambda p: b"\x30\x80" + p.der[2 + (p.der[1] & 0x7F) :] + b"\x00\x00",
        "InvalidLength",
        Reason.MALFORMED,
    ),
    "non-minimal length in tbsResponseData": (
        lambda p: wrap_basic(seq(long_form(p.tbs), p.algorithm, p.signature)),
        "InvalidLength",
        Reason.MALFORMED,
    ),
    "extra field in OCSPResponse": (
        lambda p: seq(enumerated(0), explicit(0, p.response_bytes), null()),
        "ExtraData",
        Reason.MALFORMED,
    ),
    "extra field in responseBytes": (
        lambda p: seq(
            enumerated(0), explicit(0, seq(oid(BASIC_RESPONSE), octet_string(p.basic), null()))
        ),
        "ExtraData",
        Reason.MALFORMED,
    ),
    "trailing bytes in the OCTET STRING": (
        lambda p: wrap_basic(p.basic + null()),
        "ExtraData",
        Reason.MALFORMED,
    ),
    "extra field in BasicOCSPResponse": (
        lambda p: wrap_basic(seq(p.tbs, p.algorithm, p.signature, explicit(0, seq()), null())),
        "ExtraData",
        Reason.MALFORMED,
    ),
    "foreign response type": (
        lambda p: seq(
            enumerated(0),
            explicit(0, seq(oid("1.3.6.1.5.5.7.48.1.9"), octet_string(p.basic))),
        ),
        "UnknownDefinedBy",
        Reason.NOT_BASIC,
    ),
    "successful without responseBytes": (
        lambda p: seq(enumerated(0)),
        "does not contain a BasicResponse",
        Reason.MALFORMED,
    ),
    "unknown responseStatus": (
        lambda p: seq(enumerated(4)),
        "unknown status code",
        Reason.MALFORMED,
    ),
    "non-minimal responseStatus": (
        lambda p: seq(tlv(0x0A, b"\x00\x00"), explicit(0, p.response_bytes)),
        "InvalidValue",
        Reason.MALFORMED,
    ),
    "ECDSA with NULL parameters": (
        lambda p: with_algorithm(p, seq(oid(ECDSA_SHA256), null())),
        "ExtraData",
        Reason.MALFORMED,
    ),
    "RSA with INTEGER parameters": (
        lambda p: with_algorithm(p, seq(oid(RSA_SHA256), integer(1))),
        "ExtraData",
        Reason.MALFORMED,
    ),
    "Ed25519 with NULL parameters": (
        lambda p: with_algorithm(p, seq(oid(ED25519), null())),
        "ExtraData",
        Reason.MALFORMED,
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_cryptography_refuses_and_verify_names_the_reason(case: str, ec: Parts) -> None:
    make, message, expected = REFUSED[case]
    data = make(ec)
    with pytest.raises(ValueError, match=message):
        ocsp.load_der_ocsp_response(data)
    result = verify(data, ec.target, CHECK_AT)
    assert isinstance(result, Rejection), result
    assert result.reason == expected, result


@pytest.mark.parametrize("version", [1, 2, 255])
def test_any_explicit_version_is_refused(version: int) -> None:
    ca = CA(key_type="ec")
    leaf = ca.issue("version.strict.example.test")
    spec = good_spec(leaf, ca.issuing, NOW)
    data = craft_response(replace(spec, version=version))
    with pytest.raises(ValueError, match="is not a valid OCSP response version"):
        ocsp.load_der_ocsp_response(data)
    target = make_target(leaf.cert, leaf.issuer)
    result = verify(data, target, CHECK_AT)
    assert isinstance(result, Rejection), result
    assert result.reason == Reason.UNSUPPORTED_VERSION, result


def test_explicit_default_version_is_refused(ec: Parts) -> None:
    """cryptography refuses an explicit v1; `verify` reads it anyway (every client does, see
    tests/test_strict_rules.py) and checks the signature over the bytes as sent: these were
    signed without the version, so the signature fails."""
    tbs = der.read_single(ec.tbs)
    fields = b"".join(_encoded(t) for t in der.children(tbs))
    data = wrap_basic(seq(seq(explicit(0, integer(0)), fields), ec.algorithm, ec.signature))
    with pytest.raises(ValueError, match="EncodedDefault"):
        ocsp.load_der_ocsp_response(data)
    result = verify(data, ec.target, CHECK_AT)
    assert isinstance(result, Rejection), result
    assert result.reason == Reason.BAD_SIGNATURE, result


# What cryptography accepts and `verify` must judge by itself (so these take the DER walk)


def test_unsuccessful_status_with_response_bytes_is_parsed(ec: Parts) -> None:
    data = seq(enumerated(3), explicit(0, ec.response_bytes))
    assert ocsp.load_der_ocsp_response(data).response_status == ocsp.OCSPResponseStatus.TRY_LATER
    result = verify(data, ec.target, CHECK_AT)
    assert isinstance(result, Rejection), result
    assert result.reason == Reason.TRY_LATER, result


@pytest.mark.parametrize("algorithm", [ECDSA_SHA1, "1.2.3.4"])
def test_unknown_to_cryptography_any_parameters_pass(algorithm: str, ec: Parts) -> None:
    data = with_algorithm(ec, seq(oid(algorithm), b"\x1f\x20\x00"))  # a high tag number
    ocsp.load_der_ocsp_response(data)  # accepted: parameters of an algorithm it does not know
    result = verify(data, ec.target, CHECK_AT)
    assert isinstance(result, Rejection), result
    assert result.reason == Reason.MALFORMED, result


def test_the_good_response_is_a_staple(ec: Parts) -> None:
    assert isinstance(verify(ec.der, ec.target, CHECK_AT), Staple)
