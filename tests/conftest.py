"""Shared fixtures: a test PKI, responses made with cryptography's builder, a loopback server.

Module files that need more control (misbehaving responders, OpenSSL) build their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from mustaple.core.certs import Target, make_target
from mustaple.testing import CA, Identity, Leaf, ManualClock
from servers import RedisServer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


Clock = ManualClock  # the name the tests use


@pytest.fixture
def now() -> datetime:
    """The test's idea of now (responses built by cryptography carry the real producedAt)."""
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server per test process; tests keep apart by key prefix."""
    directory: Path = tmp_path_factory.mktemp("redis")
    with RedisServer(directory) as server:
        yield server


@pytest.fixture(scope="session")
def ca() -> CA:
    return CA(key_type="ec", ocsp_url="http://127.0.0.1:9/")


@pytest.fixture(scope="session")
def leaf(ca: CA) -> Leaf:
    return ca.issue("www.example.test")


@pytest.fixture(scope="session")
def target(leaf: Leaf) -> Target:
    return make_target(leaf.cert, leaf.issuer)


def fake_staple(label: bytes) -> bytes:
    """Bytes that begin as a DER OCSP response does (a sink replaces or removes only a
    staple), then `label`: for tests of what a sink writes, not of what clients accept."""
    return b"\x30\x03\x0a\x01\x00" + label


def build_response(
    leaf: Leaf,
    signer: Identity,
    *,
    this_update: datetime,
    next_update: datetime | None,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    cert_id_hash: hashes.HashAlgorithm | None = None,
    by_name: bool = False,
    include_signer: bool = False,
    revoked_at: datetime | None = None,
) -> bytes:
    """A DER response made by cryptography's builder (the well-behaved cases)."""
    reason = x509.ReasonFlags.key_compromise if status == ocsp.OCSPCertStatus.REVOKED else None
    builder = ocsp.OCSPResponseBuilder().add_response(
        leaf.cert,
        leaf.issuer,
        cert_id_hash or hashes.SHA1(),
        status,
        this_update,
        next_update,
        revoked_at or (this_update if reason else None),
        reason,
    )
    encoding = ocsp.OCSPResponderEncoding.NAME if by_name else ocsp.OCSPResponderEncoding.HASH
    builder = builder.responder_id(encoding, signer.cert)
    if include_signer:
        builder = builder.certificates([signer.cert])
    algorithm = hashes.SHA256() if not _is_ed(signer) else None
    response = builder.sign(signer.key, algorithm)
    return response.public_bytes(serialization.Encoding.DER)


def _is_ed(identity: Identity) -> bool:
    return identity.cert.signature_hash_algorithm is None


@dataclass
class LoopbackServer:
    """An aiohttp app on 127.0.0.1 in its own thread, for code that makes real HTTP calls."""

    handler: Handler
    hits: list[str] = field(default_factory=list)
    url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    def start(self) -> None:
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._setup())
        ready.set()
        self._loop.run_forever()

    async def _setup(self) -> None:
        async def record(request: web.Request) -> web.StreamResponse:
            self.hits.append(f"{request.method} {request.path_qs}")
            return await self.handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/"

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is None or runner is None:
            return
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], LoopbackServer]]:
    """Start loopback servers with the given handlers; all are stopped after the test."""
    servers: list[LoopbackServer] = []

    def start(handler: Handler) -> LoopbackServer:
        server = LoopbackServer(handler)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class Crowded:
    """A handler answering 503 after 50 ms that counts the requests in flight at once: `peak`
    is the most there were (what the limits on fetches promise a responder). With `gather`,
    the first requests are held until that many are in flight (at most GATHER_WAIT s): the
    requests the limits let out at once are then there at once, however late one sender
    starts (a worker process still importing on a loaded machine)."""

    GATHER_WAIT = 5.0

    def __init__(self, gather: int = 0) -> None:
        self.active = self.peak = 0
        self.gather = gather
        self._gathered: asyncio.Event | None = None

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        self.peak = max(self.peak, self.active)
        if self.gather:
            await self._until_gathered()
        await asyncio.sleep(0.05)
        self.active -= 1
        return web.Response(status=503)

    async def _until_gathered(self) -> None:
        if self._gathered is None:
            self._gathered = asyncio.Event()
        if self.active >= self.gather:
            self._gathered.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gathered.wait(), self.GATHER_WAIT)


def ocsp_reply(body: bytes, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        body=body, status=status, content_type="application/ocsp-response", headers=headers
    )
