"""A strict, minimal DER reader: just enough to look inside OCSP structures.

`cryptography` parses OCSP responses for us (strictly: its parser is DER-only too), but it does
not expose a few things a strict validator needs (the RSASSA-PSS signature parameters, the
extensions of a SingleResponse other than the first) and it refuses a bad response with one
generic error where we want a precise reason (trailing bytes, a foreign response type, a
version 2). This module reads tag-length-value triples and rejects anything that is not
canonical DER (indefinite lengths, non-minimal lengths, high tag numbers we never need). Pure:
bytes in, values out.

One leniency, on purpose: `without_encoded_defaults` rewrites a response whose only fault is
an explicitly encoded DEFAULT (`version v1`, `critical FALSE`, in the response or in a
certificate it carries), which every TLS client accepts (mozpkix's `der::OptionalVersion` and
`OptionalBoolean` say so in their comments) but cryptography's parser refuses. Every signature
is still checked over the original bytes. `edit_certificate_extensions` serves a second one in
`mustaple.core.certs`: a keyUsage cryptography refuses and every client takes.

Every failure raises `DerError`; callers turn it into a `malformed` rejection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

__all__ = [
    "DerError",
    "Tlv",
    "children",
    "decode_integer",
    "decode_oid",
    "edit_certificate_extensions",
    "embedded_certificates",
    "encode",
    "encoded",
    "looks_like_ocsp_response",
    "read_single",
    "read_tlv",
    "without_encoded_defaults",
]

SEQUENCE = 0x30
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
ENUMERATED = 0x0A
BOOLEAN = 0x01
_EXPLICIT_V1 = bytes([INTEGER, 1, 0])  # [0] EXPLICIT Version holding v1, the DEFAULT
_FALSE = b"\x00"
RESPONSE_HEAD = 16  # bytes of a file enough for `looks_like_ocsp_response`


def looks_like_ocsp_response(head: bytes) -> bool:
    """Whether `head`, the first bytes of a file (RESPONSE_HEAD are enough), can begin a DER
    OCSPResponse: a SEQUENCE whose first element is the one-byte ENUMERATED responseStatus.
    A certificate or key (PEM or DER), a database, a configuration file cannot."""
    if len(head) < 2 or head[0] != SEQUENCE:
        return False
    first = head[1]
    at = 2 if first < 0x80 else 2 + (first & 0x7F)
    return head[at : at + 2] == bytes([ENUMERATED, 1])


class DerError(ValueError):
    """The bytes are not valid DER for what was expected."""


class Tlv(NamedTuple):
    """One element: its tag byte and where its content lies in the buffer.

    A named tuple rather than a frozen dataclass: it is made in half the time, which halves
    the cost of walking a response with many SingleResponses.
    """

    tag: int
    data: bytes
    start: int  # first content byte
    end: int  # one past the last content byte

    @property
    def content(self) -> bytes:
        return self.data[self.start : self.end]


# What `edit_certificate_extensions` does to one Extension: its fields (extnID, critical if
# encoded, extnValue) in, the encoded fields to put in their place out
ExtensionEdit = Callable[[list[Tlv]], list[bytes]]


def read_tlv(data: bytes, offset: int = 0, limit: int | None = None) -> Tlv:
    """Read the element starting at `offset`; raise DerError if it is not canonical DER.

    The element must end by `limit` (by default, the end of `data`).
    """
    if limit is None:
        limit = len(data)
    if offset + 2 > limit:
        raise DerError("truncated element header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError("high tag numbers are not used in OCSP")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError("indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > 4 or pos + count > limit:
            raise DerError("bad length field")
        raw = data[pos : pos + count]
        if raw[0] == 0:
            raise DerError("non-minimal length")
        length = int.from_bytes(raw, "big")
        if length < 0x80:
            raise DerError("non-minimal length")
        pos += count
    if pos + length > limit:
        raise DerError("element runs past the end of the data")
    return Tlv(tag, data, pos, pos + length)


def read_single(data: bytes, expected_tag: int | None = None) -> Tlv:
    """Read exactly one element that spans all of `data` (no trailing bytes)."""
    tlv = read_tlv(data)
    if tlv.end != len(data):
        raise DerError(f"{len(data) - tlv.end} trailing bytes after the DER element")
    if expected_tag is not None and tlv.tag != expected_tag:
        raise DerError(f"expected tag 0x{expected_tag:02x}, found 0x{tlv.tag:02x}")
    return tlv


def children(parent: Tlv) -> list[Tlv]:
    """The elements inside a constructed element, in order."""
    if not parent.tag & 0x20:
        raise DerError("element is not constructed")
    items = []
    pos = parent.start
    while pos < parent.end:
        item = read_tlv(parent.data, pos, parent.end)  # no copy of the buffer
        items.append(item)
        pos = item.end
    return items


def decode_integer(tlv: Tlv) -> int:
    """A minimal two's-complement INTEGER or ENUMERATED value."""
    raw = tlv.content
    if not raw:
        raise DerError("empty integer")
    padded_positive = raw[0] == 0 and raw[1:2] < b"\x80"
    padded_negative = raw[0] == 0xFF and raw[1:2] >= b"\x80"
    if len(raw) > 1 and (padded_positive or padded_negative):
        raise DerError("non-minimal integer")
    return int.from_bytes(raw, "big", signed=True)


def decode_oid(tlv: Tlv) -> str:
    """Dotted string form of an OBJECT IDENTIFIER."""
    if tlv.tag != OID:
        raise DerError("expected an object identifier")
    raw = tlv.content
    if not raw or raw[-1] & 0x80:
        raise DerError("bad object identifier")
    arcs: list[int] = []
    value = 0
    for i, byte in enumerate(raw):
        if value == 0 and byte == 0x80 and (i == 0 or not raw[i - 1] & 0x80):
            raise DerError("non-minimal object identifier arc")
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def encode_length(length: int) -> bytes:
    """The minimal DER length field for `length`."""
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def encode(tag: int, content: bytes) -> bytes:
    """One element: the tag byte, the DER length, the content."""
    return bytes([tag]) + encode_length(len(content)) + content


def encoded(tlv: Tlv) -> bytes:
    """The whole encoding of an element read by this module (its header included).

    Lengths read here are minimal, so the header's size follows from the content's.
    """
    header = 1 + len(encode_length(tlv.end - tlv.start))
    return tlv.data[tlv.start - header : tlv.end]


def without_encoded_defaults(data: bytes) -> bytes | None:
    """The OCSPResponse `data` with explicitly encoded DEFAULTs dropped; None if it has none.

    Looks at the ResponseData's version (an explicit v1) and at every Extension of the
    response, of its SingleResponses and of the certificates it carries (an explicit
    `critical FALSE`); a certificate's own signature then no longer covers it (see
    `embedded_certificates`). Raises DerError when `data` is not shaped like a basic response.
    """
    status, wrapper = children(read_single(data, SEQUENCE))
    response_type, payload = children(read_single(wrapper.content, SEQUENCE))
    tbs, *rest = children(read_single(payload.content, SEQUENCE))
    parts = [_tbs_without_defaults(tbs)]
    parts += [_certs_without_defaults(p) if p.tag == 0xA0 else encoded(p) for p in rest]
    if b"".join(parts) == b"".join(map(encoded, [tbs, *rest])):
        return None
    basic = encode(SEQUENCE, b"".join(parts))
    response_bytes = encode(SEQUENCE, encoded(response_type) + encode(OCTET_STRING, basic))
    return encode(SEQUENCE, encoded(status) + encode(wrapper.tag, response_bytes))


def embedded_certificates(data: bytes) -> list[bytes]:
    """The certificates a basic OCSPResponse `data` carries, each as encoded there."""
    _, wrapper = children(read_single(data, SEQUENCE))
    _, payload = children(read_single(wrapper.content, SEQUENCE))
    certs = [p for p in children(read_single(payload.content, SEQUENCE)) if p.tag == 0xA0]
    if not certs:
        return []
    return [encoded(cert) for cert in children(read_single(certs[0].content, SEQUENCE))]


def edit_certificate_extensions(certificate: bytes, edit: ExtensionEdit) -> bytes:
    """The DER `certificate` with the fields of each of its Extensions replaced by `edit` of
    them. Its signature is kept as it was, so no longer covers it: the result is for reading
    what the certificate says, never for checking who signed it."""
    return _cert_edited(read_single(certificate, SEQUENCE), edit)


def _certs_without_defaults(certs: Tlv) -> bytes:
    inner = [_cert_edited(cert, _without_false) for cert in children(read_single(certs.content))]
    return encode(certs.tag, encode(SEQUENCE, b"".join(inner)))


def _cert_edited(cert: Tlv, edit: ExtensionEdit) -> bytes:
    tbs, *rest = children(cert)
    # extensions are [3] in a TBSCertificate
    parts = [
        _extensions_edited(part, edit) if part.tag == 0xA3 else encoded(part)
        for part in children(tbs)
    ]
    return encode(cert.tag, encode(tbs.tag, b"".join(parts)) + b"".join(map(encoded, rest)))


def _tbs_without_defaults(tbs: Tlv) -> bytes:
    parts: list[bytes] = []
    seen_responses = False
    for index, part in enumerate(children(tbs)):
        if index == 0 and part.tag == 0xA0 and part.content == _EXPLICIT_V1:
            continue
        if part.tag == SEQUENCE and not seen_responses:  # responses
            seen_responses = True
            singles = [_single_without_defaults(single) for single in children(part)]
            parts.append(encode(SEQUENCE, b"".join(singles)))
        elif part.tag == 0xA1 and seen_responses:  # responseExtensions
            parts.append(_extensions_edited(part, _without_false))
        else:
            parts.append(encoded(part))
    return encode(tbs.tag, b"".join(parts))


def _single_without_defaults(single: Tlv) -> bytes:
    # certID, certStatus (`revoked` is also tagged [1]), thisUpdate, then the optional fields
    parts = [
        _extensions_edited(part, _without_false)
        if index >= 3 and part.tag == 0xA1
        else encoded(part)
        for index, part in enumerate(children(single))
    ]
    return encode(single.tag, b"".join(parts))


def _extensions_edited(wrapper: Tlv, edit: ExtensionEdit) -> bytes:
    extensions = [
        encode(extension.tag, b"".join(edit(children(extension))))
        for extension in children(read_single(wrapper.content, SEQUENCE))
    ]
    return encode(wrapper.tag, encode(SEQUENCE, b"".join(extensions)))


def _without_false(fields: list[Tlv]) -> list[bytes]:
    # extnID, critical (DEFAULT FALSE: only there, and once), extnValue; any other shape
    # is kept as it is, for the parser to refuse
    if len(fields) == 3 and fields[1].tag == BOOLEAN and fields[1].content == _FALSE:
        fields = [fields[0], fields[2]]
    return [encoded(field) for field in fields]
