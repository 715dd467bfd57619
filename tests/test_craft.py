"""The hand-made OCSP responses of mustaple.testing.craft, and what the validator makes of them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa
from cryptography.x509 import ocsp

from mustaple.core import der
from mustaple.core.certs import Target, make_target
from mustaple.core.reasons import Note, Reason, Rejection
from mustaple.core.request import CertId, issuer_key_bits, make_cert_id
from mustaple.core.verify import Signer, Staple, verify
from mustaple.testing import (
    CA,
    ExtensionSpec,
    KeyType,
    Leaf,
    SignatureAlgorithm,
    SingleSpec,
    craft_response,
    good_single,
    good_spec,
    key_hash,
    unsuccessful,
)
from mustaple.testing.craft import (
    DEFAULT_VALIDITY,
    boolean,
    explicit,
    generalized_time,
    integer,
    null,
    octet_string,
    oid,
    tlv,
)

NONCE = "1.3.6.1.5.5.7.48.1.2"
EXAMPLE_OID = "1.3.6.1.4.1.32473.7"


@dataclass(frozen=True)
class Pki:
    ca: CA
    leaf: Leaf
    target: Target


def make_pki(key_type: KeyType) -> Pki:
    ca = CA(key_type=key_type)
    leaf = ca.issue("craft.example.test", key_type="ec")
    return Pki(ca, leaf, make_target(leaf.cert, leaf.issuer))


@pytest.fixture(scope="module")
def ec() -> Pki:
    return make_pki("ec")


@pytest.fixture(scope="module")
def rsa() -> Pki:
    return make_pki("rsa")


@pytest.fixture(scope="module")
def ed25519() -> Pki:
    return make_pki("ed25519")


def staple(data: bytes, pki: Pki, now: datetime) -> Staple:
    result = verify(data, pki.target, now)
    assert isinstance(result, Staple), result
    return result


def reason(data: bytes, pki: Pki, now: datetime) -> Reason:
    result = verify(data, pki.target, now)
    assert isinstance(result, Rejection), result
    return result.reason


# --- The DER encoder ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "020100"),
        (127, "02017f"),
        (128, "02020080"),
        (256, "02020100"),
        (-1, "0201ff"),
        (-128, "020180"),
        (-129, "0202ff7f"),
    ],
)
def test_integers_are_minimal_twos_complement(value: int, encoded: str) -> None:
    assert integer(value).hex() == encoded
    assert der.decode_integer(der.read_single(integer(value))) == value


@pytest.mark.parametrize("size", [0, 127, 128, 255, 256, 70000])
def test_lengths_are_minimal(size: int) -> None:
    element = der.read_single(octet_string(bytes(size)), der.OCTET_STRING)
    assert len(element.content) == size


@pytest.mark.parametrize(
    "dotted", ["1.3.6.1.5.5.7.48.1.1", "1.2.840.113549.1.1.10", "2.999.3", "0.9.2342.19200300"]
)
def test_object_identifiers_round_trip(dotted: str) -> None:
    assert der.decode_oid(der.read_single(oid(dotted))) == dotted


@pytest.mark.parametrize("dotted", ["1", "3.1", "1.40", "1.2.-3"])
def test_object_identifiers_are_checked(dotted: str) -> None:
    with pytest.raises(ValueError, match="object identifier"):
        oid(dotted)


def test_generalized_time_is_utc_to_the_second() -> None:
    paris = timezone(timedelta(hours=1))
    assert generalized_time(datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)) == (
        b"\x18\x0f20260102030405Z"
    )
    assert generalized_time(datetime(2026, 1, 2, 4, 4, 5, tzinfo=paris)) == (
        b"\x18\x0f20260102030405Z"
    )


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        generalized_time(datetime(2026, 1, 2))


def test_small_encoders() -> None:
    assert boolean(True).hex() == "0101ff"
    assert boolean(False).hex() == "010100"
    assert explicit(2, null()).hex() == "a2020500"
    with pytest.raises(ValueError, match="low-number tag"):
        tlv(0x1F, b"")


# --- Well-formed responses ----------------------------------------------------------------------


def test_good_response_is_what_cryptography_builds(ec: Pki) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    reference = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            ec.leaf.cert,
            ec.leaf.issuer,
            hashes.SHA1(),
            ocsp.OCSPCertStatus.GOOD,
            now,
            now + DEFAULT_VALIDITY,
            None,
            None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.NAME, ec.ca.cert)
        .sign(ec.ca.issuing.key, hashes.SHA256())
    )
    ours = ocsp.load_der_ocsp_response(craft_response(good_spec(ec.leaf, ec.ca.issuing, now)))
    assert ours.tbs_response_bytes == reference.tbs_response_bytes


@pytest.mark.parametrize("pki_name", ["ec", "rsa"])
def test_good_response_verifies(pki_name: str, request: pytest.FixtureRequest) -> None:
    pki: Pki = request.getfixturevalue(pki_name)
    now = datetime.now(UTC)
    data = craft_response(good_spec(pki.leaf, pki.ca.issuing, now))
    assert ocsp.load_der_ocsp_response(data).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    result = staple(data, pki, now)
    assert result.good
    assert result.signer == Signer.ISSUER
    assert result.notes == ()


def test_delegated_signer_certificate_is_included(ec: Pki) -> None:
    now = datetime.now(UTC)
    signer = ec.ca.delegated_signer()
    data = craft_response(good_spec(ec.leaf, signer, now))
    assert ocsp.load_der_ocsp_response(data).certificates == [signer.cert]
    assert staple(data, ec, now).signer == Signer.DELEGATED


def test_responder_by_key_hash(ec: Pki) -> None:
    now = datetime.now(UTC)
    responder_id = key_hash(ec.ca.cert.public_key())
    data = craft_response(good_spec(ec.leaf, ec.ca.issuing, now, responder_id=responder_id))
    assert ocsp.load_der_ocsp_response(data).responder_key_hash == responder_id
    assert staple(data, ec, now).good


@pytest.mark.parametrize(
    ("algorithm", "oid_text"),
    [
        (SignatureAlgorithm.RSA_SHA256, "1.2.840.113549.1.1.11"),
        (SignatureAlgorithm.RSA_PSS_SHA256, "1.2.840.113549.1.1.10"),
    ],
)
def test_rsa_signatures_verify(algorithm: SignatureAlgorithm, oid_text: str, rsa: Pki) -> None:
    now = datetime.now(UTC)
    data = craft_response(good_spec(rsa.leaf, rsa.ca.issuing, now, algorithm=algorithm))
    assert ocsp.load_der_ocsp_response(data).signature_algorithm_oid.dotted_string == oid_text
    assert staple(data, rsa, now).good


def test_md5_signature_is_weak(rsa: Pki) -> None:
    now = datetime.now(UTC)
    spec = good_spec(rsa.leaf, rsa.ca.issuing, now, algorithm=SignatureAlgorithm.RSA_MD5)
    assert reason(craft_response(spec), rsa, now) == Reason.WEAK_ALGORITHM


@pytest.mark.parametrize(
    "algorithm", [SignatureAlgorithm.RSA_PSS_SHA256, SignatureAlgorithm.ED25519]
)
def test_algorithm_must_fit_the_key(algorithm: SignatureAlgorithm, ec: Pki) -> None:
    with pytest.raises(ValueError, match="cannot sign"):
        good_spec(ec.leaf, ec.ca.issuing, datetime.now(UTC), algorithm=algorithm)


def test_unsupported_key_type_is_a_type_error(ec: Pki) -> None:
    key = dsa.generate_private_key(key_size=1024)
    with pytest.raises(TypeError, match="RSA, EC, Ed25519 or Ed448"):
        good_spec(ec.leaf, ec.ca.issuing, datetime.now(UTC), key=key)


def test_ed25519_response_is_crafted_but_not_stapleable(ed25519: Pki) -> None:
    """mozpkix takes no EdDSA signature (pkixder.cpp, SignatureAlgorithmIdentifierValue)."""
    now = datetime.now(UTC)
    data = craft_response(good_spec(ed25519.leaf, ed25519.ca.issuing, now))
    assert ocsp.load_der_ocsp_response(data).signature_algorithm_oid.dotted_string == "1.3.101.112"
    assert reason(data, ed25519, now) == Reason.UNSUPPORTED_ALGORITHM


@pytest.mark.parametrize("pki_name", ["ec", "rsa"])
def test_corrupt_signature_does_not_verify(pki_name: str, request: pytest.FixtureRequest) -> None:
    pki: Pki = request.getfixturevalue(pki_name)
    now = datetime.now(UTC)
    spec = good_spec(pki.leaf, pki.ca.issuing, now, corrupt_signature=True)
    assert reason(craft_response(spec), pki, now) == Reason.BAD_SIGNATURE


# --- Singles and extensions ---------------------------------------------------------------------


def our_id(pki: Pki, hash_name: str = "sha1") -> CertId:
    return make_cert_id(pki.leaf.issuer, pki.leaf.cert.serial_number, hash_name)


def other_id(pki: Pki, offset: int) -> CertId:
    return make_cert_id(pki.leaf.issuer, pki.leaf.cert.serial_number + offset)


def test_revoked_with_time_and_reason(ec: Pki) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    single = good_single(
        our_id(ec),
        now,
        status=ocsp.OCSPCertStatus.REVOKED,
        revocation_time=now - timedelta(days=2),
        revocation_reason=x509.ReasonFlags.superseded,
    )
    result = staple(
        craft_response(good_spec(ec.leaf, ec.ca.issuing, now, singles=[single])), ec, now
    )
    assert result.status == ocsp.OCSPCertStatus.REVOKED
    assert result.revocation_time == now - timedelta(days=2)
    assert result.revocation_reason == x509.ReasonFlags.superseded


def test_revocation_time_goes_with_revoked_only(ec: Pki) -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="revocation_time"):
        good_single(our_id(ec), now, status=ocsp.OCSPCertStatus.REVOKED)
    with pytest.raises(ValueError, match="revocation_time"):
        good_single(our_id(ec), now, revocation_time=now)


def test_ours_among_several_singles(ec: Pki) -> None:
    now = datetime.now(UTC)
    singles = [good_single(our_id(ec), now), good_single(other_id(ec, 1), now)]
    spec = good_spec(ec.leaf, ec.ca.issuing, now, singles=singles)
    assert isinstance(spec.singles, tuple)
    assert staple(craft_response(spec), ec, now).notes == (Note.SEVERAL_RESPONSES,)
    second = replace(spec, singles=singles[::-1])
    assert reason(craft_response(second), ec, now) == Reason.NOT_FIRST_RESPONSE


def test_critical_extension_in_our_single_among_several(ec: Pki) -> None:
    now = datetime.now(UTC)
    critical = ExtensionSpec(oid=EXAMPLE_OID, critical=True)
    singles = [
        good_single(our_id(ec), now, extensions=[critical]),
        good_single(other_id(ec, 1), now),
    ]
    data = craft_response(good_spec(ec.leaf, ec.ca.issuing, now, singles=singles))
    assert reason(data, ec, now) == Reason.UNKNOWN_CRITICAL_EXTENSION


def test_non_critical_single_extension_is_ignored(ec: Pki) -> None:
    now = datetime.now(UTC)
    single = good_single(our_id(ec), now, extensions=[ExtensionSpec(oid=EXAMPLE_OID)])
    data = craft_response(good_spec(ec.leaf, ec.ca.issuing, now, singles=[single]))
    assert staple(data, ec, now).good


def test_critical_nonce_is_refused(ec: Pki) -> None:
    """mozpkix understands no response extension (pkixocsp.cpp, ExtensionNotUnderstood)."""
    now = datetime.now(UTC)
    nonce = ExtensionSpec(oid=NONCE, value=octet_string(bytes(16)), critical=True)
    data = craft_response(good_spec(ec.leaf, ec.ca.issuing, now, extensions=[nonce]))
    assert (
        ocsp.load_der_ocsp_response(data)
        .extensions.get_extension_for_oid(x509.ObjectIdentifier(NONCE))
        .critical
    )
    assert reason(data, ec, now) == Reason.UNKNOWN_CRITICAL_EXTENSION


def test_sha256_cert_id(ec: Pki) -> None:
    now = datetime.now(UTC)
    single = good_single(our_id(ec, "sha256"), now)
    data = craft_response(good_spec(ec.leaf, ec.ca.issuing, now, singles=[single]))
    hash_algorithm = ocsp.load_der_ocsp_response(data).hash_algorithm
    assert isinstance(hash_algorithm, hashes.SHA256)
    assert reason(data, ec, now) == Reason.CERT_ID_NOT_SHA1


def test_md5_cert_id_is_unsupported(ec: Pki) -> None:
    now = datetime.now(UTC)
    issuer = ec.leaf.issuer
    cert_id = CertId(
        "md5",
        hashlib.md5(issuer.subject.public_bytes()).digest(),
        hashlib.md5(issuer_key_bits(issuer)).digest(),
        ec.leaf.cert.serial_number,
    )
    single = good_single(cert_id, now)
    data = craft_response(good_spec(ec.leaf, ec.ca.issuing, now, singles=[single]))
    assert reason(data, ec, now) == Reason.UNSUPPORTED_HASH


def test_empty_validity_window(ec: Pki) -> None:
    now = datetime.now(UTC)
    single = good_single(our_id(ec), now - timedelta(hours=1), validity=timedelta(0))
    data = craft_response(good_spec(ec.leaf, ec.ca.issuing, now, singles=[single]))
    assert reason(data, ec, now) == Reason.BAD_VALIDITY_WINDOW


def test_spec_is_frozen_and_checks_times(ec: Pki) -> None:
    spec = good_spec(ec.leaf, ec.ca.issuing, datetime.now(UTC))
    with pytest.raises(AttributeError):
        spec.version = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="aware"):
        good_spec(ec.leaf, ec.ca.issuing, datetime(2026, 1, 1))


# --- responseStatus -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (1, Reason.MALFORMED_REQUEST),
        (2, Reason.INTERNAL_ERROR),
        (3, Reason.TRY_LATER),
        (5, Reason.SIG_REQUIRED),
        (6, Reason.UNAUTHORIZED),
        (4, Reason.MALFORMED),
    ],
)
def test_unsuccessful(status: int, expected: Reason, ec: Pki) -> None:
    assert reason(unsuccessful(status), ec, datetime.now(UTC)) == expected


def test_unsuccessful_parses_with_cryptography() -> None:
    response = ocsp.load_der_ocsp_response(unsuccessful(3))
    assert response.response_status == ocsp.OCSPResponseStatus.TRY_LATER


def test_unsuccessful_zero_is_misuse() -> None:
    with pytest.raises(ValueError, match="successful"):
        unsuccessful(0)


def test_status_wins_over_response_bytes(ec: Pki) -> None:
    now = datetime.now(UTC)
    data = craft_response(good_spec(ec.leaf, ec.ca.issuing, now, response_status=3))
    assert reason(data, ec, now) == Reason.TRY_LATER


def test_single_spec_checks_its_hash(ec: Pki) -> None:
    with pytest.raises(ValueError, match="no OID known"):
        SingleSpec(
            cert_id=CertId("whirlpool", b"", b"", 1),
            this_update=datetime.now(UTC),
            next_update=None,
        )


def test_included_certificates_are_der(ec: Pki) -> None:
    now = datetime.now(UTC)
    extra = [ec.ca.root.cert, ec.leaf.cert]
    data = craft_response(good_spec(ec.leaf, ec.ca.issuing, now, certificates=extra))
    parsed = ocsp.load_der_ocsp_response(data).certificates
    assert [c.public_bytes(serialization.Encoding.DER) for c in parsed] == [
        c.public_bytes(serialization.Encoding.DER) for c in extra
    ]
