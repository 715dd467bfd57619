"""A misbehaving OCSP responder on loopback: every way a real one fails, on demand.

    async with OCSPResponder(ca) as responder:          # or ResponderThread(ca) from sync code
        responder.add(leaf)
        responder.set_behaviour(Behaviour.TRY_LATER)            # for every certificate
        responder.set_behaviour(Behaviour.REVOKED, serial=leaf.cert.serial_number)
        ...fetch from responder.url...

It reads requests like a real responder (GET `/<base64 url-escaped DER>` under any path
prefix, or POST), answers certificates registered with `add` and says `unauthorized` for any
other. The `good` answer is cached per CertID for `cache_for`, like a CA's pre-produced
responses, so repeated fetches get the same bytes. Every request is recorded in `requests`.

`hold()` keeps the requests that come from then on waiting, unanswered, and `release(b)`
answers the one that has waited longest as behaviour `b`: a test orders what several
processes fetching at once get, and when, without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import enum
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import unquote

from aiohttp import web
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import ReasonFlags, ocsp

from mustaple.core.request import HASHES, CertId, get_url, make_cert_id
from mustaple.testing.craft import (
    DEFAULT_VALIDITY,
    ExtensionSpec,
    ResponseSpec,
    SignatureAlgorithm,
    craft_response,
    good_spec,
    key_hash,
    unsuccessful,
)
from mustaple.testing.pki import CA, Identity, Leaf, new_key

__all__ = ["Behaviour", "OCSPResponder", "ResponderThread", "Served"]

OCSP_RESPONSE = "application/ocsp-response"
_HANG_SECONDS = 3600.0
_DRIP_SECONDS = 0.25  # per byte: a few hundred bytes take well over a minute
_OVERSIZED_BYTES = 4 * 1024 * 1024
_EXAMPLE_ARC = "1.3.6.1.4.1.32473"  # the IANA example enterprise number (RFC 5612)
_T = TypeVar("_T")


class Behaviour(enum.Enum):
    """How the responder answers. Each value is the name used in logs and on the CLI."""

    # Answers
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN_STATUS = "unknown-status"
    DELEGATED = "delegated"  # correct, signed by a proper delegated responder
    SEVERAL_RESPONSES = "several-responses"  # ours first, then two for other serials
    PSS_SIGNATURE = "pss-signature"  # correct, RSASSA-PSS (needs an RSA CA)
    # Transport and HTTP
    HANG = "hang"
    RESET = "reset"
    SLOW_DRIP = "slow-drip"
    HTTP_500 = "http-500"
    HTTP_503 = "http-503"  # with Retry-After: 1
    HTML_200 = "html-200"
    WRONG_CONTENT_TYPE = "wrong-content-type"
    EMPTY_BODY = "empty-body"
    OVERSIZED = "oversized"
    REDIRECT_LOOP = "redirect-loop"
    # Structure
    TRUNCATED = "truncated"
    TRAILING_GARBAGE = "trailing-garbage"
    VERSION_2 = "version-2"
    CRITICAL_EXTENSION = "critical-extension"
    NOT_BASIC = "not-basic"
    # Unsuccessful responseStatus
    MALFORMED_REQUEST = "malformed-request"
    INTERNAL_ERROR = "internal-error"
    TRY_LATER = "try-later"
    SIG_REQUIRED = "sig-required"
    UNAUTHORIZED = "unauthorized"
    # Which certificate
    WRONG_SERIAL = "wrong-serial"
    WRONG_ISSUER_KEY_HASH = "wrong-issuer-key-hash"
    # Who signed it
    BAD_SIGNATURE = "bad-signature"
    MD5_SIGNATURE = "md5-signature"  # needs an RSA CA
    UNRELATED_SIGNER = "unrelated-signer"
    DELEGATE_NO_EKU = "delegate-no-eku"
    DELEGATE_EXPIRED = "delegate-expired"
    DELEGATE_OTHER_CA = "delegate-other-ca"
    DELEGATE_IS_CA = "delegate-is-ca"
    # Time
    EXPIRED = "expired"
    FUTURE_THIS_UPDATE = "future-this-update"
    FUTURE_PRODUCED_AT = "future-produced-at"
    NO_NEXT_UPDATE = "no-next-update"
    STALE = "stale"  # correct, but older than the last answer served for the certificate


_UNSUCCESSFUL = {
    Behaviour.MALFORMED_REQUEST: 1,
    Behaviour.INTERNAL_ERROR: 2,
    Behaviour.TRY_LATER: 3,
    Behaviour.SIG_REQUIRED: 5,
    Behaviour.UNAUTHORIZED: 6,
}
_NEEDS_RSA = {Behaviour.MD5_SIGNATURE, Behaviour.PSS_SIGNATURE}
_HTML = "<html><head><title>Error</title></head><body><h1>Service unavailable</h1></body></html>"


@dataclass(frozen=True, slots=True)
class Served:
    """One request the responder answered: when, how, for which serial, and how it behaved.

    `serial` is None when the request could not be read (it was answered malformedRequest).
    """

    time: datetime
    method: str
    serial: int | None
    behaviour: Behaviour
    peer: tuple[str, int] | None = None  # the client's address and port


@dataclass(frozen=True, slots=True)
class _Question:
    """A readable request about a registered certificate."""

    der: bytes
    cert_id: CertId
    leaf: Leaf


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- The OCSP answers ---------------------------------------------------------------------------


def _shift(spec: ResponseSpec, delta: timedelta, *, produced: bool = True) -> ResponseSpec:
    """Move every time in `spec` by `delta` (producedAt too, unless told not to)."""
    singles = [
        replace(
            s,
            this_update=s.this_update + delta,
            next_update=s.next_update + delta if s.next_update else None,
        )
        for s in spec.singles
    ]
    produced_at = spec.produced_at + delta if produced else spec.produced_at
    return replace(spec, singles=singles, produced_at=produced_at)


def _with_single(spec: ResponseSpec, **changes: Any) -> ResponseSpec:
    """`spec` with its first SingleResponse changed."""
    first, *rest = spec.singles
    return replace(spec, singles=[replace(first, **changes), *rest])


def _several(spec: ResponseSpec) -> ResponseSpec:
    ours = spec.singles[0]
    others = [
        replace(ours, cert_id=replace(ours.cert_id, serial=ours.cert_id.serial + n)) for n in (1, 2)
    ]
    return replace(spec, singles=[ours, *others])


def _wrong_key_hash(spec: ResponseSpec) -> ResponseSpec:
    cert_id = spec.singles[0].cert_id
    flipped = bytes(b ^ 0xFF for b in cert_id.issuer_key_hash)
    return _with_single(spec, cert_id=replace(cert_id, issuer_key_hash=flipped))


def _validity(spec: ResponseSpec) -> timedelta:
    single = spec.singles[0]
    return (single.next_update or single.this_update) - single.this_update


_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
# Behaviours that are one change away from the good answer.
_CHANGES: dict[Behaviour, Callable[[ResponseSpec], ResponseSpec]] = {
    Behaviour.UNKNOWN_STATUS: lambda s: _with_single(s, status=ocsp.OCSPCertStatus.UNKNOWN),
    Behaviour.REVOKED: lambda s: _with_single(
        s,
        status=ocsp.OCSPCertStatus.REVOKED,
        revocation_time=s.produced_at - _HOUR,
        revocation_reason=ReasonFlags.key_compromise,
    ),
    Behaviour.EXPIRED: lambda s: _shift(s, -_validity(s) - _HOUR),
    Behaviour.FUTURE_THIS_UPDATE: lambda s: _shift(s, _DAY, produced=False),
    Behaviour.FUTURE_PRODUCED_AT: lambda s: replace(s, produced_at=s.produced_at + _DAY),
    Behaviour.NO_NEXT_UPDATE: lambda s: _with_single(s, next_update=None),
    Behaviour.WRONG_SERIAL: lambda s: _with_single(
        s, cert_id=replace(s.singles[0].cert_id, serial=s.singles[0].cert_id.serial + 1)
    ),
    Behaviour.WRONG_ISSUER_KEY_HASH: _wrong_key_hash,
    Behaviour.BAD_SIGNATURE: lambda s: replace(s, corrupt_signature=True),
    Behaviour.SEVERAL_RESPONSES: _several,
    Behaviour.VERSION_2: lambda s: replace(s, version=1),
    Behaviour.CRITICAL_EXTENSION: lambda s: replace(
        s, extensions=[ExtensionSpec(oid=f"{_EXAMPLE_ARC}.1", critical=True)]
    ),
    Behaviour.MD5_SIGNATURE: lambda s: replace(s, algorithm=SignatureAlgorithm.RSA_MD5),
    Behaviour.PSS_SIGNATURE: lambda s: replace(s, algorithm=SignatureAlgorithm.RSA_PSS_SHA256),
    Behaviour.NOT_BASIC: lambda s: replace(s, response_type=f"{_EXAMPLE_ARC}.2"),
}


class _Answers:
    """Builds the DER for the OCSP-level behaviours and remembers what it served."""

    def __init__(self, ca: CA, signer: Identity, validity: timedelta, cache_for: timedelta) -> None:
        self.ca = ca
        self.signer = signer
        self.validity = validity
        self.cache_for = cache_for
        self._good: dict[CertId, tuple[datetime, bytes]] = {}
        self._last_this_update: dict[int, datetime] = {}
        self._delegates: dict[Behaviour, Identity] = {}
        self._unrelated_key: CertificateIssuerPrivateKeyTypes | None = None

    def der(self, behaviour: Behaviour, leaf: Leaf, cert_id: CertId, now: datetime) -> bytes:
        """The OCSPResponse for `behaviour` (an OCSP-level one) about `cert_id` at `now`."""
        if behaviour in _UNSUCCESSFUL:
            return unsuccessful(_UNSUCCESSFUL[behaviour])
        if behaviour == Behaviour.GOOD:
            return self.good(leaf, cert_id, now)
        spec = self._spec(behaviour, leaf, cert_id, now)
        self._remember(spec, cert_id.serial)
        return craft_response(spec)

    def good(self, leaf: Leaf, cert_id: CertId, now: datetime) -> bytes:
        """The correct answer, made afresh only once the cached one is `cache_for` old."""
        cached = self._good.get(cert_id)
        if cached is not None and now - cached[0] < self.cache_for:
            return cached[1]
        spec = good_spec(leaf, self.signer, now, cert_id=cert_id, validity=self.validity)
        self._remember(spec, cert_id.serial)
        data = craft_response(spec)
        self._good[cert_id] = (now, data)
        return data

    def _spec(
        self, behaviour: Behaviour, leaf: Leaf, cert_id: CertId, now: datetime
    ) -> ResponseSpec:
        signer = self._signer(behaviour, now)
        spec = good_spec(leaf, signer, now, cert_id=cert_id, validity=self.validity)
        if behaviour == Behaviour.UNRELATED_SIGNER:
            key = self._unrelated()
            return replace(spec, key=key, responder_id=key_hash(key.public_key()))
        if behaviour == Behaviour.STALE:
            before = self._last_this_update.get(cert_id.serial, now)
            return _shift(spec, before - now - _HOUR)
        change = _CHANGES.get(behaviour)
        return change(spec) if change else spec

    def _remember(self, spec: ResponseSpec, serial: int) -> None:
        for single in spec.singles:
            if single.cert_id.serial == serial:
                self._last_this_update[serial] = single.this_update

    def _signer(self, behaviour: Behaviour, now: datetime) -> Identity:
        """The identity that signs `behaviour`'s answer, made the first time it is needed."""
        if behaviour == Behaviour.DELEGATED and self.signer.cert != self.ca.cert:
            return self.signer
        if behaviour not in _DELEGATES:
            return self.signer
        if behaviour not in self._delegates:
            self._delegates[behaviour] = _DELEGATES[behaviour](self.ca, now)
        return self._delegates[behaviour]

    def _unrelated(self) -> CertificateIssuerPrivateKeyTypes:
        if self._unrelated_key is None:
            self._unrelated_key = new_key(self.ca.key_type)
        return self._unrelated_key


_DELEGATES: dict[Behaviour, Callable[[CA, datetime], Identity]] = {
    Behaviour.DELEGATED: lambda ca, now: ca.delegated_signer(),
    Behaviour.DELEGATE_NO_EKU: lambda ca, now: ca.delegated_signer(ocsp_signing=False),
    Behaviour.DELEGATE_IS_CA: lambda ca, now: ca.delegated_signer(is_ca=True),
    Behaviour.DELEGATE_EXPIRED: lambda ca, now: ca.delegated_signer(
        not_before=now - timedelta(days=30), not_after=now - _DAY
    ),
    Behaviour.DELEGATE_OTHER_CA: lambda ca, now: CA(
        key_type=ca.key_type, name="mustaple unrelated CA", now=now
    ).delegated_signer(),
}


# --- Reading requests ---------------------------------------------------------------------------


def _cert_id(request_der: bytes) -> CertId | None:
    """The CertID of a one-certificate OCSP request, or None when it cannot be read."""
    try:
        request = ocsp.load_der_ocsp_request(request_der)
        hash_name = request.hash_algorithm.name
    except (ValueError, UnsupportedAlgorithm):
        return None
    if hash_name not in HASHES:
        return None
    return CertId(
        hash_name, request.issuer_name_hash, request.issuer_key_hash, request.serial_number
    )


def _der_from_path(raw_path: str) -> bytes:
    """The request in a GET path: the longest tail that decodes, so any prefix works and a
    base64 '/' may be escaped or not."""
    segments = raw_path.split("?", maxsplit=1)[0].split("/")
    for start in range(1, len(segments)):
        text = unquote("/".join(segments[start:]))
        try:
            candidate = base64.b64decode(text, validate=True)
        except binascii.Error:
            continue
        if _cert_id(candidate) is not None:
            return candidate
    return b""


async def _read_request(request: web.Request) -> bytes:
    """The OCSP request DER from a POST body or a GET path (empty when there is none)."""
    if request.method == "POST":
        return await request.read()
    return _der_from_path(request.raw_path)


def _same_request(request: web.Request, request_der: bytes) -> str:
    """Where a redirect to "the same request" points: itself for GET, its GET form for POST
    (a client turns a POST into a GET when it follows a 302)."""
    if request.method == "POST":
        return get_url(request.path, request_der)
    return request.raw_path


def _ocsp(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=OCSP_RESPONSE)


def _reset(request: web.Request) -> web.Response:
    """Abort the TCP connection with a RST; the returned response is never sent."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response()


# --- The server ---------------------------------------------------------------------------------


class OCSPResponder:
    """An OCSP responder for `ca` on loopback whose behaviour tests choose.

    `signer` signs the normal answers (default: the CA's issuing certificate; give a
    delegated signer to act like a CA that delegates). `validity` is the nextUpdate -
    thisUpdate window, `cache_for` how long a `good` answer is served unchanged, `clock`
    where the responder reads the time.
    """

    def __init__(
        self,
        ca: CA,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        validity: timedelta = DEFAULT_VALIDITY,
        signer: Identity | None = None,
        cache_for: timedelta = timedelta(minutes=1),
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not isinstance(ca, CA):
            raise TypeError(f"ca must be a mustaple.testing.CA, not {type(ca).__name__}")
        if signer is not None and not isinstance(signer, Identity):
            raise TypeError(f"signer must be an Identity, not {type(signer).__name__}")
        if validity <= _HOUR:
            raise ValueError("validity must be over an hour (stale answers go back an hour)")
        self.ca = ca
        self.host = host
        self.port = port
        self.clock = clock
        self.requests: list[Served] = []
        self._answers = _Answers(ca, signer or ca.issuing, validity, cache_for)
        self._leaves: dict[int, Leaf] = {}
        self._behaviours: dict[int | None, Behaviour] = {None: Behaviour.GOOD}
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._holding = False
        self._held: deque[asyncio.Future[Behaviour]] = deque()

    @property
    def url(self) -> str:
        """The base URL, "http://HOST:PORT/" (once started)."""
        if self._runner is None:
            raise RuntimeError("the responder is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._runner.addresses[0][1]}/"

    def add(self, leaf: Leaf) -> None:
        """Answer for `leaf` (it must have been issued by this responder's CA)."""
        if leaf.issuer != self.ca.cert:
            raise ValueError("the leaf was not issued by this responder's CA")
        self._leaves[leaf.cert.serial_number] = leaf

    def set_behaviour(self, behaviour: Behaviour, serial: int | None = None) -> None:
        """Behave so for certificate `serial`, or by default when `serial` is None."""
        if not isinstance(behaviour, Behaviour):
            raise TypeError(f"behaviour must be a Behaviour, not {type(behaviour).__name__}")
        if behaviour in _NEEDS_RSA and not isinstance(self._answers.signer.key, rsa.RSAPrivateKey):
            raise ValueError(f"{behaviour.value} needs an RSA signer: use CA(key_type='rsa')")
        self._behaviours[serial] = behaviour

    def behaviour_for(self, serial: int) -> Behaviour:
        return self._behaviours.get(serial, self._behaviours[None])

    def hold(self, holding: bool = True) -> None:
        """Keep each request from now on waiting until `release` (with False: answer those
        to come at once again; those waiting still wait for `release`)."""
        self._holding = holding

    @property
    def held(self) -> int:
        """How many requests are waiting for `release` (one whose client went away, a fetch
        cut short, no longer waits)."""
        return len(self._held)

    def release(self, behaviour: Behaviour) -> None:
        """Answer the request that has waited longest as `behaviour`; ValueError when none
        waits."""
        if not isinstance(behaviour, Behaviour):
            raise TypeError(f"behaviour must be a Behaviour, not {type(behaviour).__name__}")
        if not self._held:
            raise ValueError("no request is held")
        self._held.popleft().set_result(behaviour)

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the responder is already started")
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        app.router.add_post("/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._closing.clear()
        self._runner = runner

    async def stop(self) -> None:
        """Stop serving; answers still hanging or dripping end at once."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._closing.set()
            await runner.cleanup()

    async def __aenter__(self) -> OCSPResponder:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        data = await _read_request(request)
        cert_id = _cert_id(data)
        leaf = self._leaf_for(cert_id)
        behaviour = self._choose(cert_id, leaf)
        if self._holding and leaf is not None:  # a request it can answer
            waiting = asyncio.get_running_loop().create_future()
            self._held.append(waiting)
            try:
                behaviour = await waiting
            except asyncio.CancelledError:  # the client went away: nothing to release
                with contextlib.suppress(ValueError):
                    self._held.remove(waiting)
                raise
        serial = cert_id.serial if cert_id else None
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(
            Served(self.clock(), request.method, serial, behaviour, peer and tuple(peer[:2]))
        )
        if cert_id is None or leaf is None:
            return _ocsp(unsuccessful(_UNSUCCESSFUL[behaviour]))
        return await self._reply(behaviour, request, _Question(data, cert_id, leaf))

    def _leaf_for(self, cert_id: CertId | None) -> Leaf | None:
        """The registered leaf that `cert_id` names, issuer hashes included."""
        if cert_id is None:
            return None
        ours = make_cert_id(self.ca.cert, cert_id.serial, cert_id.hash_name)
        return self._leaves.get(cert_id.serial) if ours == cert_id else None

    def _choose(self, cert_id: CertId | None, leaf: Leaf | None) -> Behaviour:
        if cert_id is None:
            return Behaviour.MALFORMED_REQUEST
        if leaf is None:
            return Behaviour.UNAUTHORIZED
        return self.behaviour_for(cert_id.serial)

    async def _reply(
        self, behaviour: Behaviour, request: web.Request, question: _Question
    ) -> web.StreamResponse:
        now = self.clock().replace(microsecond=0)

        def good() -> bytes:
            return self._answers.good(question.leaf, question.cert_id, now)

        match behaviour:
            case Behaviour.HANG:
                await self._pause(_HANG_SECONDS)
                return _reset(request)
            case Behaviour.RESET:
                return _reset(request)
            case Behaviour.SLOW_DRIP:
                return await self._drip(request, good())
            case Behaviour.HTTP_500:
                return web.Response(status=500, text="internal server error")
            case Behaviour.HTTP_503:
                return web.Response(status=503, text="busy", headers={"Retry-After": "1"})
            case Behaviour.HTML_200:
                return web.Response(text=_HTML, content_type="text/html")
            case Behaviour.WRONG_CONTENT_TYPE:
                return web.Response(body=good(), content_type="application/octet-stream")
            case Behaviour.EMPTY_BODY:
                return _ocsp(b"")
            case Behaviour.OVERSIZED:
                return await self._flood(request, good())
            case Behaviour.REDIRECT_LOOP:
                raise web.HTTPFound(_same_request(request, question.der))
            case Behaviour.TRUNCATED:
                data = good()
                return _ocsp(data[: len(data) // 2])
            case Behaviour.TRAILING_GARBAGE:
                return _ocsp(good() + b"garbage")
        return _ocsp(self._answers.der(behaviour, question.leaf, question.cert_id, now))

    async def _pause(self, seconds: float) -> bool:
        """Sleep `seconds`; False when cut short because the responder is stopping."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def _drip(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Headers at once, then the body one byte at a time."""
        response = web.StreamResponse(headers={"Content-Type": OCSP_RESPONSE})
        response.content_length = len(body)
        await response.prepare(request)
        for index in range(len(body)):
            if not await self._pause(_DRIP_SECONDS):
                break
            await response.write(body[index : index + 1])
        return response

    async def _flood(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """A multi-megabyte body sent chunked, so only counting the bytes reveals its size."""
        response = web.StreamResponse(headers={"Content-Type": OCSP_RESPONSE})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(body)
        chunk = bytes(64 * 1024)
        try:
            for _ in range(_OVERSIZED_BYTES // len(chunk)):
                await response.write(chunk)
        except ConnectionResetError:
            return response  # the client stopped reading, as it should
        return response


# --- From synchronous code ----------------------------------------------------------------------


class ResponderThread:
    """An `OCSPResponder` running its own event loop in a daemon thread.

    For synchronous tests, tests that run the CLI in a subprocess, and the demo. The methods
    are safe to call from any thread.
    """

    def __init__(
        self,
        ca: CA,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        validity: timedelta = DEFAULT_VALIDITY,
        signer: Identity | None = None,
        cache_for: timedelta = timedelta(minutes=1),
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.responder = OCSPResponder(
            ca,
            host=host,
            port=port,
            validity=validity,
            signer=signer,
            cache_for=cache_for,
            clock=clock,
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._url = ""

    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError("the responder is not started")
        return self._url

    @property
    def requests(self) -> list[Served]:
        """A copy of the requests served so far."""
        return self._call(list, self.responder.requests)

    def add(self, leaf: Leaf) -> None:
        self._call(self.responder.add, leaf)

    def set_behaviour(self, behaviour: Behaviour, serial: int | None = None) -> None:
        self._call(self.responder.set_behaviour, behaviour, serial)

    def hold(self, holding: bool = True) -> None:
        self._call(self.responder.hold, holding)

    @property
    def held(self) -> int:
        return self._call(lambda: self.responder.held)

    def release(self, behaviour: Behaviour) -> None:
        self._call(self.responder.release, behaviour)

    def start(self) -> None:
        """Start serving; returns once the port is open (raises what starting raised)."""
        if self._thread is not None:
            raise RuntimeError("the responder thread is already started")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(started),), name="ocsp-responder", daemon=True
        )
        self._thread.start()
        started.result(timeout=30)

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=30)
        self._thread = self._loop = self._stopping = None
        self._url = ""

    def __enter__(self) -> ResponderThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def _serve(self, started: concurrent.futures.Future[None]) -> None:
        stopping = asyncio.Event()
        try:
            await self.responder.start()
        except BaseException as exc:
            started.set_exception(exc)
            return
        self._loop, self._stopping, self._url = (
            asyncio.get_running_loop(),
            stopping,
            self.responder.url,
        )
        started.set_result(None)
        try:
            await stopping.wait()
        finally:
            await self.responder.stop()

    def _call(self, function: Callable[..., _T], *args: object) -> _T:
        """Run `function(*args)` on the responder's loop and return (or raise) its result."""
        loop = self._loop
        if loop is None:
            return function(*args)
        result: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(function(*args))
            except Exception as exc:
                result.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return result.result(timeout=30)
