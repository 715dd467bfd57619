"""The validator's decisions on well-formed responses: times, signers, notes, comparison.

The misbehaving responder's catalogue (tests/test_behaviours.py) covers the broken answers;
here are the rules that need exact times and signers.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from conftest import build_response
from mustaple.core.certs import Target, make_target
from mustaple.core.reasons import Note, Reason, Rejection
from mustaple.core.request import make_cert_id
from mustaple.core.verify import HttpAnswer, Policy, Signer, Staple, check_http, compare, verify
from mustaple.testing import CA, Leaf

DAY = timedelta(days=1)


def staple_of(result: Staple | Rejection) -> Staple:
    assert isinstance(result, Staple), result
    return result


def reason_of(result: Staple | Rejection) -> Reason:
    assert isinstance(result, Rejection), result
    return result.reason


def good(ca: CA, leaf: Leaf, now: datetime, **changes: object) -> bytes:
    times: dict[str, object] = {
        "this_update": now - timedelta(hours=1),
        "next_update": now + 3 * DAY,
    }
    return build_response(leaf, ca.issuing, **{**times, **changes})  # type: ignore[arg-type]


def test_good_response(ca: CA, leaf: Leaf, target: Target, now: datetime) -> None:
    staple = staple_of(verify(good(ca, leaf, now), target, now))
    assert staple.good
    assert staple.status == ocsp.OCSPCertStatus.GOOD
    assert staple.signer is Signer.ISSUER
    assert staple.effective_expiry == staple.next_update == now + 3 * DAY
    assert staple.hash_name == "sha1"
    assert staple.notes == ()
    assert staple.fraction_left(now) == pytest.approx(72 / 73)


def test_now_must_be_aware(ca: CA, leaf: Leaf, target: Target, now: datetime) -> None:
    with pytest.raises(ValueError, match="aware"):
        verify(good(ca, leaf, now), target, now.replace(tzinfo=None))


def test_expires_exactly_at_next_update(ca: CA, leaf: Leaf, target: Target, now: datetime) -> None:
    data = good(ca, leaf, now)
    assert isinstance(verify(data, target, now + 3 * DAY - timedelta(seconds=1)), Staple)
    assert reason_of(verify(data, target, now + 3 * DAY)) is Reason.EXPIRED


def test_clock_skew_allowance(ca: CA, leaf: Leaf, target: Target, now: datetime) -> None:
    soon = good(ca, leaf, now, this_update=now + timedelta(minutes=4))
    assert isinstance(verify(soon, target, now), Staple)
    later = good(ca, leaf, now, this_update=now + timedelta(minutes=6))
    assert reason_of(verify(later, target, now)) is Reason.THIS_UPDATE_IN_FUTURE
    strict = Policy(clock_skew=timedelta(0))
    assert reason_of(verify(soon, target, now, strict)) is Reason.THIS_UPDATE_IN_FUTURE
    signed_now = good(ca, leaf, now, this_update=now - timedelta(seconds=5))
    assert reason_of(verify(signed_now, target, now - timedelta(minutes=6))) is (
        Reason.PRODUCED_IN_FUTURE
    )


def test_long_window_is_capped_at_the_client_maximum(
    ca: CA, leaf: Leaf, target: Target, now: datetime
) -> None:
    this_update = now - DAY
    data = good(ca, leaf, now, this_update=this_update, next_update=now + 20 * DAY)
    staple = staple_of(verify(data, target, now))
    assert Note.LONG_WINDOW in staple.notes
    assert staple.effective_expiry == this_update + timedelta(days=10)
    assert reason_of(verify(data, target, this_update + timedelta(days=10))) is Reason.EXPIRED


def test_next_update_after_the_certificate_expires(ca: CA, target: Target, now: datetime) -> None:
    short = ca.issue("short.test", not_after=now + DAY)
    data = good(ca, short, now)
    staple = staple_of(verify(data, make_target(short.cert, short.issuer), now))
    assert Note.BEYOND_CERT_EXPIRY in staple.notes


def test_missing_next_update(ca: CA, leaf: Leaf, target: Target, now: datetime) -> None:
    data = good(ca, leaf, now, next_update=None)
    assert reason_of(verify(data, target, now)) is Reason.NO_NEXT_UPDATE
    lenient = Policy(allow_missing_next_update=True)
    staple = staple_of(verify(data, target, now, lenient))
    assert Note.NEXT_UPDATE_MISSING in staple.notes
    assert staple.effective_expiry == staple.this_update + DAY


def test_next_update_not_after_this_update(
    ca: CA, leaf: Leaf, target: Target, now: datetime
) -> None:
    data = good(ca, leaf, now, this_update=now, next_update=now)
    assert reason_of(verify(data, target, now)) is Reason.BAD_VALIDITY_WINDOW


def test_responder_by_name(ca: CA, leaf: Leaf, target: Target, now: datetime) -> None:
    staple = staple_of(verify(good(ca, leaf, now, by_name=True), target, now))
    assert staple.hash_name == "sha1"


def test_sha256_cert_id_is_not_stapleable(
    ca: CA, leaf: Leaf, target: Target, now: datetime
) -> None:
    """curl asks OpenSSL for a SHA-1 CertID (lib/vtls/openssl.c, verifystatus) and
    OCSP_resp_find compares the hash algorithm (crypto/ocsp/ocsp_lib.c, OCSP_id_issuer_cmp)."""
    data = good(ca, leaf, now, by_name=True, cert_id_hash=hashes.SHA256())
    rejection = verify(data, target, now)
    assert reason_of(rejection) is Reason.CERT_ID_NOT_SHA1
    assert isinstance(rejection, Rejection)
    assert not rejection.retryable


def test_delegated_signer_expiring_first_caps_the_expiry(
    ca: CA, leaf: Leaf, target: Target, now: datetime
) -> None:
    signer = ca.delegated_signer(not_after=now + DAY)
    data = build_response(
        leaf, signer, this_update=now, next_update=now + 3 * DAY, include_signer=True
    )
    staple = staple_of(verify(data, target, now))
    assert staple.signer is Signer.DELEGATED
    assert "OCSP signer" in staple.signer_name
    assert Note.DELEGATED_SIGNER_EXPIRES_FIRST in staple.notes
    assert staple.effective_expiry == signer.cert.not_valid_after_utc
    assert reason_of(verify(data, target, now + DAY)) is Reason.DELEGATE_EXPIRED


def test_delegate_not_included_is_unknown_signer(
    ca: CA, leaf: Leaf, target: Target, now: datetime
) -> None:
    signer = ca.delegated_signer()
    data = build_response(leaf, signer, this_update=now, next_update=now + DAY)
    assert reason_of(verify(data, target, now)) is Reason.SIGNER_UNKNOWN


@pytest.mark.parametrize("key_type", ["rsa"])
def test_other_key_types(key_type: str, now: datetime) -> None:
    ca = CA(key_type=key_type, intermediate=True)  # type: ignore[arg-type]
    leaf = ca.issue("k.test")
    data = good(ca, leaf, now)
    staple_of(verify(data, make_target(leaf.cert, leaf.issuer), now))
    signer = ca.delegated_signer()
    delegated = build_response(
        leaf, signer, this_update=now, next_update=now + DAY, include_signer=True
    )
    staple_of(verify(delegated, make_target(leaf.cert, leaf.issuer), now))


def test_revoked_is_a_valid_answer_never_good(
    ca: CA, leaf: Leaf, target: Target, now: datetime
) -> None:
    revoked_at = now - DAY
    data = good(ca, leaf, now, status=ocsp.OCSPCertStatus.REVOKED, revoked_at=revoked_at)
    staple = staple_of(verify(data, target, now))
    assert not staple.good
    assert staple.revocation_time == revoked_at
    assert staple.revocation_reason is not None


def test_unknown_status_is_rejected(ca: CA, leaf: Leaf, target: Target, now: datetime) -> None:
    data = good(ca, leaf, now, status=ocsp.OCSPCertStatus.UNKNOWN)
    rejection = verify(data, target, now)
    assert reason_of(rejection) is Reason.CERT_STATUS_UNKNOWN
    assert isinstance(rejection, Rejection)
    assert rejection.retryable


def test_our_serial_under_another_issuer_is_wrong_issuer(
    ca: CA, leaf: Leaf, target: Target, now: datetime
) -> None:
    ours = make_cert_id(leaf.issuer, leaf.cert.serial_number)
    response = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            ours.issuer_name_hash,
            b"\x00" * 20,
            ours.serial,
            hashes.SHA1(),
            ocsp.OCSPCertStatus.GOOD,
            now,
            now + DAY,
            None,
            None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, ca.cert)
        .sign(ca.issuing.key, hashes.SHA256())
    )
    data = response.public_bytes(serialization.Encoding.DER)
    assert reason_of(verify(data, target, now)) is Reason.WRONG_ISSUER


class TestCheckHttp:
    def test_statuses(self) -> None:
        body = b"\x30\x03\x0a\x01\x00"
        cases = {
            404: Reason.HTTP_CLIENT_ERROR,
            405: Reason.HTTP_CLIENT_ERROR,
            500: Reason.HTTP_SERVER_ERROR,
            503: Reason.HTTP_SERVER_ERROR,
            429: Reason.HTTP_SERVER_ERROR,
        }
        for status, reason in cases.items():
            rejection = check_http(HttpAnswer(status, "application/ocsp-response", body))
            assert rejection is not None
            assert rejection.reason is reason, status

    @pytest.mark.parametrize("ctype", ["text/html", None, "application/octet-stream"])
    def test_content_type(self, ctype: str | None) -> None:
        rejection = check_http(HttpAnswer(200, ctype, b"\x30\x00"))
        assert rejection is not None
        assert rejection.reason is Reason.CONTENT_TYPE

    def test_content_type_parameters_and_case_are_fine(self) -> None:
        answer = HttpAnswer(200, "Application/OCSP-Response; charset=binary", b"\x30\x00")
        assert check_http(answer) is None

    def test_empty_body(self) -> None:
        rejection = check_http(HttpAnswer(200, "application/ocsp-response", b""))
        assert rejection is not None
        assert rejection.reason is Reason.EMPTY_BODY


class TestCompare:
    def test_rules(self, ca: CA, leaf: Leaf, target: Target, now: datetime) -> None:
        old = staple_of(verify(good(ca, leaf, now, this_update=now - DAY), target, now))
        new = staple_of(verify(good(ca, leaf, now), target, now))
        assert compare(new, None) is None
        assert compare(new, old) is None
        assert compare(new, new) is None
        older = compare(old, new)
        assert older is not None
        assert older.reason is Reason.OLDER_THAN_CURRENT
        sooner = staple_of(verify(good(ca, leaf, now, next_update=now + DAY), target, now))
        rejection = compare(sooner, new)
        assert rejection is not None
        assert rejection.reason is Reason.EXPIRES_SOONER
