"""Interoperability with OpenSSL: its CA tooling, its OCSP responder, and mustaple.

Certificates and responses here are made by the `openssl` command line alone (see
`openssl_pki`), for RSA-2048 and ECDSA P-256, signed by the issuer and by a delegated
responder, for good, revoked, on-hold and unknown certificates. mustaple asks, fetches (from
`openssl ocsp` running as a server on loopback) and validates; in the other direction, OpenSSL
reads and answers the requests mustaple builds, over GET, over POST and from a file.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import CRLEntryExtensionOID, ExtendedKeyUsageOID

from mustaple.adapters.fetch import FetchPolicy, FetchResult, fetch_staple
from mustaple.core.certs import Target, make_target, parse_certificates
from mustaple.core.reasons import Note, Reason, Rejection
from mustaple.core.request import encode_request, make_cert_id, plan_requests
from mustaple.core.verify import HttpAnswer, Signer, Staple, judge, verify
from openssl_pki import (
    KEY_TYPES,
    LEAVES,
    NEXT_UPDATE_MINUTES,
    SIGNERS,
    VALIDITY,
    Pki,
    Responder,
    request_text,
    respond,
    serve_new_pki,
    start_responder,
)

HASH_NAMES = ("sha1", "sha256")
EXPECTED: dict[str, tuple[ocsp.OCSPCertStatus, x509.ReasonFlags | None]] = {
    "good": (ocsp.OCSPCertStatus.GOOD, None),
    "revoked": (ocsp.OCSPCertStatus.REVOKED, x509.ReasonFlags.key_compromise),
    "held": (ocsp.OCSPCertStatus.REVOKED, x509.ReasonFlags.certificate_hold),
}
KEY_KINDS = {"rsa": "rsa-2048", "ec": "ec-secp256r1"}
HOLD_INSTRUCTION_CODE = x509.ObjectIdentifier("2.5.29.23")
ONE_TRY = FetchPolicy(connect_timeout=2.0, total_timeout=5.0, attempts_per_url=1)


def key_kind(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ec-{key.curve.name}"
    return type(key).__name__


def read_cert(path: Path) -> x509.Certificate:
    (cert,) = parse_certificates(path.read_bytes(), source=str(path))
    return cert


@dataclass(frozen=True)
class Lab:
    """One key type's PKI, with an OpenSSL responder per signer running on it."""

    pki: Pki
    responders: dict[str, Responder]

    def target(self, leaf: str) -> Target:
        return make_target(read_cert(self.pki.leaf(leaf)), read_cert(self.pki.ca))

    def signer_subject(self, signer: str) -> str:
        return read_cert(self.pki.signer_files(signer)[0]).subject.rfc4514_string()


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Lab]]:
    """Both PKIs and their four responders, made once per module (and per xdist worker)."""
    running: list[Responder] = []
    try:
        labs = {}
        for key_type in KEY_TYPES:
            directory = tmp_path_factory.mktemp(f"openssl-{key_type}")
            pki, by_issuer = serve_new_pki(directory, key_type)
            running.append(by_issuer)
            delegated = start_responder(pki, "delegated")
            running.append(delegated)
            labs[key_type] = Lab(pki, {"issuer": by_issuer, "delegated": delegated})
        yield labs
    finally:
        for responder in running:
            responder.stop()


def fetch(target: Target, urls: tuple[str, ...] = (), hash_name: str = "sha1") -> FetchResult:
    """mustaple's real fetch, one round per URL (no backoff, so `unknown` stays quick)."""
    return asyncio.run(fetch_staple(target, urls=urls, hash_name=hash_name, policy=ONE_TRY))


def request_for(target: Target, hash_name: str = "sha1", nonce: bytes | None = None) -> bytes:
    return encode_request(make_cert_id(target.issuer, target.serial, hash_name), nonce=nonce)


def now() -> datetime:
    return datetime.now(UTC)


def assert_staple(outcome: Staple | Rejection | None, lab: Lab, leaf: str, signer: str) -> Staple:
    """What OpenSSL said about `leaf`, signed as `signer`, read back exactly."""
    assert isinstance(outcome, Staple), outcome
    status, reason = EXPECTED[leaf]
    assert (outcome.status, outcome.revocation_reason) == (status, reason)
    assert outcome.serial == lab.pki.serial(leaf)
    assert outcome.signer is Signer(signer)
    assert outcome.signer_name == lab.signer_subject(signer)
    assert outcome.next_update is not None
    assert outcome.next_update - outcome.this_update == timedelta(minutes=NEXT_UPDATE_MINUTES)
    assert outcome.notes == ()
    if status is ocsp.OCSPCertStatus.REVOKED:
        assert outcome.revocation_time is not None
        assert lab.pki.created <= outcome.revocation_time <= now()
    else:
        assert outcome.revocation_time is None
    return outcome


def assert_outcome(outcome: Staple | Rejection | None, lab: Lab, leaf: str, signer: str) -> None:
    if leaf == "unknown":
        assert isinstance(outcome, Rejection), outcome
        assert outcome.reason is Reason.CERT_STATUS_UNKNOWN
    else:
        assert_staple(outcome, lab, leaf, signer)


def assert_judged(
    outcome: Staple | Rejection | None, lab: Lab, leaf: str, signer: str, hash_name: str
) -> None:
    """OpenSSL answers a SHA-256 CertID with one: read, but no staple curl would find."""
    if hash_name == "sha1":
        assert_outcome(outcome, lab, leaf, signer)
    else:
        assert isinstance(outcome, Rejection), outcome
        assert outcome.reason is Reason.CERT_ID_NOT_SHA1


# --- The PKI is what the issue asks for ---------------------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_openssl_leaves_are_must_staple_with_the_responder_url(
    labs: dict[str, Lab], key_type: str
) -> None:
    lab = labs[key_type]
    for leaf in LEAVES:
        target = lab.target(leaf)
        assert target.must_staple
        assert target.ocsp_urls == (lab.pki.ocsp_url,)
        assert target.name == lab.pki.host(leaf)
        assert target.serial == lab.pki.serial(leaf)
    assert lab.responders["issuer"].url == lab.pki.ocsp_url


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_openssl_keys_and_delegated_signer(labs: dict[str, Lab], key_type: str) -> None:
    """RSA-2048 or ECDSA P-256 throughout; the delegate is an OCSP signer and not a CA."""
    lab = labs[key_type]
    delegate = read_cert(lab.pki.signer_files("delegated")[0])
    certs = (lab.target("good").leaf, lab.target("good").issuer, delegate)
    assert {key_kind(cert) for cert in certs} == {KEY_KINDS[key_type]}
    usage = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert not delegate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert delegate.issuer == lab.target("good").issuer.subject


# --- Over HTTP, from `openssl ocsp` running as a server ------------------------------------------


@pytest.mark.parametrize("leaf", LEAVES)
@pytest.mark.parametrize("signer", SIGNERS)
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_fetch_from_openssl_responder(
    labs: dict[str, Lab], key_type: str, signer: str, leaf: str
) -> None:
    """The responder given first answers; `unknown` goes on to the certificate's own URL."""
    lab = labs[key_type]
    url = lab.responders[signer].url
    result = fetch(lab.target(leaf), urls=(url,))
    assert_outcome(result.staple or result.rejection, lab, leaf, signer)
    tried = [url] if leaf != "unknown" else list(dict.fromkeys([url, lab.pki.ocsp_url]))
    assert result.url == tried[-1]
    assert len(result.attempts) == len(tried)
    for attempt, base in zip(result.attempts, tried, strict=True):
        assert attempt.url.startswith(base)
        assert (attempt.method, attempt.http_status) == ("GET", 200)
        assert attempt.reason == (Reason.CERT_STATUS_UNKNOWN.code if leaf == "unknown" else None)


@pytest.mark.parametrize("signer", SIGNERS)
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_fetch_with_sha256_cert_id(labs: dict[str, Lab], key_type: str, signer: str) -> None:
    lab = labs[key_type]
    result = fetch(lab.target("good"), urls=(lab.responders[signer].url,), hash_name="sha256")
    assert result.staple is None
    assert_judged(result.rejection, lab, "good", signer, "sha256")
    # not worth a POST nor a retry; the certificate's own URL is asked too when it differs
    answers = {(a.method, a.http_status, a.reason) for a in result.attempts}
    assert answers == {("GET", 200, "cert-id-not-sha1")}


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_fetch_follows_the_certificates_own_ocsp_url(labs: dict[str, Lab], key_type: str) -> None:
    lab = labs[key_type]
    result = fetch(lab.target("revoked"))
    assert result.url == lab.pki.ocsp_url
    assert_staple(result.staple, lab, "revoked", "issuer")


@pytest.mark.parametrize("hash_name", HASH_NAMES)
@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_openssl_server_answers_mustaple_requests(
    labs: dict[str, Lab], key_type: str, method: str, hash_name: str
) -> None:
    """mustaple's GET URL and POST body, sent by plain urllib, are answered `successful`."""
    lab = labs[key_type]
    target = lab.target("good")
    plan = plan_requests(lab.responders["delegated"].url, request_for(target, hash_name))
    (http,) = (request for request in plan if request.method == method)
    sent = urllib.request.Request(http.url, data=http.body, method=http.method)
    if http.body is not None:
        sent.add_header("Content-Type", "application/ocsp-request")
    with urllib.request.urlopen(sent, timeout=5) as reply:
        answer = HttpAnswer(reply.status, reply.headers.get("Content-Type"), reply.read())
    assert ocsp.load_der_ocsp_response(answer.body).response_status is (
        ocsp.OCSPResponseStatus.SUCCESSFUL
    )
    assert_judged(judge(answer, target, now()), lab, "good", "delegated", hash_name)


# --- From a file, with `openssl ocsp -reqin ... -respout ...` -----------------------------------


@pytest.mark.parametrize("hash_name", HASH_NAMES)
@pytest.mark.parametrize("leaf", LEAVES)
@pytest.mark.parametrize("signer", SIGNERS)
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_offline_openssl_response(
    labs: dict[str, Lab], key_type: str, signer: str, leaf: str, hash_name: str
) -> None:
    lab = labs[key_type]
    target = lab.target(leaf)
    response = respond(lab.pki, request_for(target, hash_name), signer)
    outcome = verify(response, target, now())
    assert_judged(outcome, lab, leaf, signer, hash_name)
    if isinstance(outcome, Staple):
        assert outcome.hash_name == hash_name


@pytest.mark.parametrize("hash_name", HASH_NAMES)
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_openssl_reads_mustaple_request(
    labs: dict[str, Lab], key_type: str, hash_name: str
) -> None:
    lab = labs[key_type]
    target = lab.target("good")
    cert_id = make_cert_id(target.issuer, target.serial, hash_name)
    text = request_text(lab.pki, encode_request(cert_id))
    assert f"Hash Algorithm: {hash_name}" in text
    assert f"Issuer Name Hash: {cert_id.issuer_name_hash.hex().upper()}" in text
    assert f"Issuer Key Hash: {cert_id.issuer_key_hash.hex().upper()}" in text
    assert f"Serial Number: {target.serial:X}" in text
    assert "Nonce" not in text


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_nonce_is_echoed_by_openssl_and_accepted(labs: dict[str, Lab], key_type: str) -> None:
    lab = labs[key_type]
    target = lab.target("good")
    nonce = bytes(range(16))
    response = respond(lab.pki, request_for(target, nonce=nonce), "issuer")
    staple = assert_staple(verify(response, target, now()), lab, "good", "issuer")
    echoed = ocsp.load_der_ocsp_response(staple.der).extensions.get_extension_for_class(
        x509.OCSPNonce
    )
    assert echoed.value.nonce == nonce


def _signing_variants() -> Iterator[pytest.ParameterSet]:
    for key_type in KEY_TYPES:
        yield pytest.param(
            key_type, "issuer", ("-resp_no_certs",), id=f"{key_type}-issuer-no-certs"
        )
        for signer in SIGNERS:
            for label, options in [
                ("by-key-hash", ("-resp_key_id",)),
                ("sha384", ("-rmd", "sha384")),
                ("sha512", ("-rmd", "sha512")),
            ]:
                yield pytest.param(key_type, signer, options, id=f"{key_type}-{signer}-{label}")
    for signer in SIGNERS:
        for label, options in [
            ("sha256-digest-salt", ("-rsigopt", "rsa_pss_saltlen:digest")),
        ]:
            pss = ("-rsigopt", "rsa_padding_mode:pss", *options)
            yield pytest.param("rsa", signer, pss, id=f"rsa-{signer}-pss-{label}")


@pytest.mark.parametrize(("key_type", "signer", "options"), list(_signing_variants()))
def test_openssl_signing_variants_are_accepted(
    labs: dict[str, Lab], key_type: str, signer: str, options: tuple[str, ...]
) -> None:
    """Responder ID by key hash, no certificates, SHA-384/512, RSASSA-PSS with parameters."""
    lab = labs[key_type]
    target = lab.target("good")
    response = respond(lab.pki, request_for(target), signer, (*VALIDITY, *options))
    assert_staple(verify(response, target, now()), lab, "good", signer)


@pytest.mark.parametrize(
    "pss",
    [(), ("-rmd", "sha384", "-rsigopt", "rsa_pss_saltlen:digest")],
    ids=["sha256-max-salt", "sha384-digest-salt"],
)
@pytest.mark.parametrize("signer", SIGNERS)
def test_openssl_pss_variants_are_refused(
    labs: dict[str, Lab], signer: str, pss: tuple[str, ...]
) -> None:
    """OpenSSL signs PSS with the longest salt by default; mozpkix takes only a salt as long
    as the hash (pkixder.cpp, SignatureAlgorithmIdentifierValue), and GnuTLS only SHA-256
    (lib/x509/ocsp.c, gnutls_ocsp_resp_get_signature_algorithm reads the OID alone)."""
    lab = labs["rsa"]
    target = lab.target("good")
    options = (*VALIDITY, "-rsigopt", "rsa_padding_mode:pss", *pss)
    outcome = verify(respond(lab.pki, request_for(target), signer, options), target, now())
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason is Reason.UNSUPPORTED_ALGORITHM


@pytest.mark.parametrize(
    ("leaf", "oid"),
    [("revoked", CRLEntryExtensionOID.INVALIDITY_DATE), ("held", HOLD_INSTRUCTION_CODE)],
)
@pytest.mark.parametrize("signer", SIGNERS)
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_revocation_single_extensions_are_accepted(
    labs: dict[str, Lab], key_type: str, signer: str, leaf: str, oid: x509.ObjectIdentifier
) -> None:
    """OpenSSL sends the invalidity date and hold instruction as non-critical singleExtensions."""
    lab = labs[key_type]
    target = lab.target(leaf)
    response = respond(lab.pki, request_for(target), signer)
    staple = assert_staple(verify(response, target, now()), lab, leaf, signer)
    extensions = ocsp.load_der_ocsp_response(staple.der).single_extensions
    assert not extensions.get_extension_for_oid(oid).critical


# --- OpenSSL responses mustaple must refuse ---------------------------------------------------


REFUSALS = [
    pytest.param("issuer", (), Reason.NO_NEXT_UPDATE, id="no-nmin-no-next-update"),
    pytest.param("issuer", (*VALIDITY, "-badsig"), Reason.BAD_SIGNATURE, id="badsig"),
    pytest.param("delegated", (*VALIDITY, "-badsig"), Reason.BAD_SIGNATURE, id="delegated-badsig"),
    pytest.param(
        "delegated", (*VALIDITY, "-resp_no_certs"), Reason.SIGNER_UNKNOWN, id="delegate-not-sent"
    ),
    pytest.param(
        "tls-leaf", VALIDITY, Reason.DELEGATE_NO_OCSP_SIGNING, id="signed-by-a-tls-certificate"
    ),
]


@pytest.mark.parametrize(("signer", "options", "reason"), REFUSALS)
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_openssl_responses_that_are_refused(
    labs: dict[str, Lab], key_type: str, signer: str, options: tuple[str, ...], reason: Reason
) -> None:
    lab = labs[key_type]
    target = lab.target("good")
    outcome = verify(respond(lab.pki, request_for(target), signer, options), target, now())
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason is reason


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_response_from_another_cas_responder_is_refused(
    labs: dict[str, Lab], key_type: str
) -> None:
    """The other CA's responder says `unknown`, signed by a CA that is not our issuer."""
    other = next(labs[k] for k in KEY_TYPES if k != key_type)
    target = labs[key_type].target("good")
    outcome = verify(respond(other.pki, request_for(target), "issuer"), target, now())
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason is Reason.DELEGATE_NOT_ISSUED_BY_ISSUER


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_openssl_response_expires_at_its_next_update(labs: dict[str, Lab], key_type: str) -> None:
    lab = labs[key_type]
    target = lab.target("good")
    response = respond(lab.pki, request_for(target), "delegated")
    staple = assert_staple(verify(response, target, now()), lab, "good", "delegated")
    assert staple.next_update is not None
    assert isinstance(verify(response, target, staple.next_update - timedelta(seconds=1)), Staple)
    expired = verify(response, target, staple.next_update)
    assert isinstance(expired, Rejection), expired
    assert expired.reason is Reason.EXPIRED


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_long_openssl_window_is_capped(labs: dict[str, Lab], key_type: str) -> None:
    """`-ndays 30` is over the 10 days clients accept: kept, but treated as expiring sooner."""
    lab = labs[key_type]
    target = lab.target("good")
    response = respond(lab.pki, request_for(target), "issuer", ("-ndays", "30"))
    staple = verify(response, target, now())
    assert isinstance(staple, Staple), staple
    assert Note.LONG_WINDOW in staple.notes
    assert staple.next_update == staple.this_update + timedelta(days=30)
    assert staple.effective_expiry == staple.this_update + timedelta(days=10)
