"""Parsing bundles, finding the issuer, must-staple and OCSP URLs."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from mustaple.core.certs import (
    ca_issuer_urls,
    check_extensions,
    display_name,
    extensions_of,
    find_issuer,
    is_must_staple,
    make_target,
    ocsp_urls,
    parse_certificates,
)
from mustaple.core.errors import InputError
from mustaple.testing import CA, Leaf

OCSP = x509.oid.AuthorityInformationAccessOID.OCSP
ISSUERS = x509.oid.AuthorityInformationAccessOID.CA_ISSUERS
AIA_OID = x509.oid.ExtensionOID.AUTHORITY_INFORMATION_ACCESS
KEY_USAGE_OID = x509.oid.ExtensionOID.KEY_USAGE

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


def test_fullchain_keeps_order(leaf: Leaf) -> None:
    certs = parse_certificates(leaf.fullchain_pem)
    assert certs == [leaf.cert, leaf.issuer]


def test_der_and_pkcs7(leaf: Leaf) -> None:
    assert parse_certificates(leaf.cert.public_bytes(DER)) == [leaf.cert]
    bundle = [leaf.issuer, leaf.root]
    assert parse_certificates(pkcs7.serialize_certificates(bundle, DER)) == bundle
    assert parse_certificates(pkcs7.serialize_certificates(bundle, PEM)) == bundle


@pytest.mark.parametrize(
    "data", [b"", b"hello", b"\x30\x03abc", b"-----BEGIN CERTIFICATE-----\nAAAA\n"]
)
def test_garbage_is_an_input_error_naming_the_source(data: bytes) -> None:
    with pytest.raises(InputError, match=r"^cert\.pem: "):
        parse_certificates(data, source="cert.pem")


def test_must_staple_and_urls(ca: CA) -> None:
    plain = ca.issue("plain.test", must_staple=False, ocsp_urls=[])
    assert not is_must_staple(plain.cert)
    assert ocsp_urls(plain.cert) == []
    both = ca.issue(
        "both.test", ocsp_urls=["http://a.test/", "http://b.test/"], ca_issuer_urls=["http://c/"]
    )
    assert is_must_staple(both.cert)
    assert ocsp_urls(both.cert) == ["http://a.test/", "http://b.test/"]
    assert ca_issuer_urls(both.cert) == ["http://c/"]


def _with_tls_feature(
    ca: CA, value: bytes, *, twice: bool = False, aia: bytes | None = None
) -> x509.Certificate:
    """A leaf whose TLS Feature extension holds `value` (DER), as given (once or twice),
    and, when given, `aia` as its AIA extension's DER."""
    leaf = ca.issue("odd.test", must_staple=False)
    feature = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.24")
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.cert.subject)
        .issuer_name(leaf.cert.issuer)
        .public_key(leaf.key.public_key())
        .serial_number(leaf.cert.serial_number)
        .not_valid_before(leaf.cert.not_valid_before_utc)
        .not_valid_after(leaf.cert.not_valid_after_utc)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("odd.test")]), False)
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(OCSP, x509.UniformResourceIdentifier("http://o/")),
                    x509.AccessDescription(ISSUERS, x509.UniformResourceIdentifier("http://c/")),
                ]
            )
            if aia is None
            else x509.UnrecognizedExtension(AIA_OID, aia),
            False,
        )
        .add_extension(x509.UnrecognizedExtension(feature, value), False)
    )
    if twice:  # the builder refuses the same OID twice: a stand-in, renamed in the DER
        stand_in = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.99")
        builder = builder.add_extension(x509.UnrecognizedExtension(stand_in, value), False)
    der = builder.sign(ca.issuing.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    renamed = der.replace(
        bytes.fromhex("06082b06010505070163"), bytes.fromhex("06082b06010505070118")
    )
    return x509.load_der_x509_certificate(renamed)


def test_a_tls_feature_cryptography_cannot_read_is_read_from_the_der(ca: CA) -> None:
    """RFC 7633 allows any TLS extension number in the TLS Feature; cryptography knows only
    5 and 17 (and refuses an empty list), and then reads no extension at all: must-staple,
    the name and the URLs come from the DER. Two TLS Features are not valid: one line."""
    feature_5_and_18 = _with_tls_feature(ca, bytes.fromhex("3006020105020112"))
    assert is_must_staple(feature_5_and_18)
    assert display_name(feature_5_and_18) == "odd.test"
    assert (ocsp_urls(feature_5_and_18), ca_issuer_urls(feature_5_and_18)) == (
        ["http://o/"],
        ["http://c/"],
    )
    check_extensions(feature_5_and_18, "odd.pem")
    assert not is_must_staple(_with_tls_feature(ca, bytes.fromhex("3000")))
    twice = _with_tls_feature(ca, bytes.fromhex("3003020105"), twice=True)
    with pytest.raises(InputError, match=r"^odd.pem: the certificate's extensions cannot be read"):
        check_extensions(twice, "odd.pem")
    for aia in ("30023000", "0400"):  # an empty AccessDescription; not a SEQUENCE at all
        bad = _with_tls_feature(ca, bytes.fromhex("3006020105020112"), aia=bytes.fromhex(aia))
        with pytest.raises(InputError, match=r"extensions cannot be read"):
            check_extensions(bad, "odd.pem")


def _with_key_usages(ca: CA, *values: str) -> x509.Certificate:
    """A leaf whose keyUsage extnValues are the hex `values` (more than one: renamed in the DER
    from a stand-in OID, which the builder takes twice)."""
    stand_in = x509.ObjectIdentifier("2.5.29.99")  # encoded as long as keyUsage's 2.5.29.15
    first, *more = (bytes.fromhex(value) for value in values)
    extensions = [(x509.UnrecognizedExtension(KEY_USAGE_OID, first), True)]
    extensions += [(x509.UnrecognizedExtension(stand_in, value), True) for value in more]
    cert = ca.issue("odd.test", ocsp_urls=["http://o/"], extensions=extensions).cert
    renamed = cert.public_bytes(DER).replace(
        bytes.fromhex("0603551d63"), bytes.fromhex("0603551d0f")
    )
    return x509.load_der_x509_certificate(renamed)


def test_a_key_usage_cryptography_refuses_is_read_with_the_rest(ca: CA) -> None:
    """encipherOnly or decipherOnly without keyAgreement: cryptography refuses the keyUsage,
    and with it every extension, though every client takes such a leaf beside
    digitalSignature (docs/strictness.md). Must-staple, the name and the URLs are read all the
    same, the keyUsage without the two bits (RFC 5280 leaves them undefined then); two
    keyUsages are still an error of their own."""
    for value in ("0303078080", "03020081", "0303078180"):
        cert = _with_key_usages(ca, value)
        with pytest.raises(ValueError, match="decipher_only can only be true"):
            cert.extensions  # noqa: B018 (cryptography's refusal, the reason for extensions_of)
        check_extensions(cert, "odd.pem")
        assert (is_must_staple(cert), display_name(cert), ocsp_urls(cert)) == (
            True,
            "odd.test",
            ["http://o/"],
        )
        usage = extensions_of(cert).get_extension_for_class(x509.KeyUsage).value
        assert (usage.digital_signature, usage.key_agreement) == (True, False)
    twice = _with_key_usages(ca, "0303078080", "0303078080")
    with pytest.raises(InputError, match=r"^odd.pem: .* \(Duplicate 2\.5\.29\.15 extension"):
        check_extensions(twice, "odd.pem")
    unused_bit_set = _with_key_usages(ca, "0303078081")
    with pytest.raises(InputError, match=r"^odd.pem: the certificate's extensions cannot be"):
        check_extensions(unused_bit_set, "odd.pem")


def test_find_issuer_checks_the_signature_not_just_the_name(ca: CA, leaf: Leaf) -> None:
    impostor = CA(name="mustaple test root")  # same subject, other key
    assert impostor.cert.subject == leaf.issuer.subject
    assert find_issuer(leaf.cert, [impostor.cert, leaf.issuer]) == leaf.issuer
    assert find_issuer(leaf.cert, [impostor.cert]) is None
    with pytest.raises(InputError, match="did not sign"):
        make_target(leaf.cert, impostor.cert)


def test_intermediate_issues(leaf: Leaf) -> None:
    ca = CA(key_type="rsa", intermediate=True)
    child = ca.issue("deep.test")
    certs = parse_certificates(child.fullchain_pem)
    assert find_issuer(certs[0], certs[1:]) == ca.cert != ca.root.cert


def test_target_fields(ca: CA) -> None:
    leaf = ca.issue("a.test", "b.test", ocsp_urls=[])
    target = make_target(leaf.cert, leaf.issuer)
    assert (target.name, target.must_staple, target.ocsp_urls) == ("a.test", True, ())
    assert "can never be served correctly" in target.no_url_message()
    plain = ca.issue("c.test", ocsp_urls=[], must_staple=False)
    assert "nothing to staple" in make_target(plain.cert, plain.issuer).no_url_message()


def test_display_name_falls_back_to_common_name_then_serial(ca: CA) -> None:
    assert display_name(ca.cert) == "mustaple test root"


def test_a_control_character_in_a_name_is_shown_escaped(ca: CA) -> None:
    """A name goes into log lines, command output and file names: a newline or an escape in
    it cannot start a forged line or drive a terminal."""
    odd = ca.issue("e\n2026 OK www.bank.test: good\x1b[2J")
    assert display_name(odd.cert) == "e\\n2026 OK www.bank.test: good\\x1b[2J"
