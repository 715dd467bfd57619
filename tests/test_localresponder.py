"""The local OCSP responder: over real HTTP on loopback, then with real Apache and nginx.

The keeper is driven as in test_keeper.py (the misbehaving responder plays the CA, a fake
clock, `scan` + `tick`); the requests are sent byte for byte over a socket, as a server would
send them (HTTP/1.0, like nginx and Apache's mod_ssl).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from mustaple.adapters.config import Config
from mustaple.adapters.fetch import FetchPolicy
from mustaple.adapters.store import SqliteStore
from mustaple.core.clock import timestamps, utc_now
from mustaple.core.request import CertId, encode_request, get_url, make_cert_id
from mustaple.core.schedule import refresh_point
from mustaple.core.verify import Staple
from mustaple.keeper.keeper import Keeper, Managed
from mustaple.serve.localresponder import (
    MALFORMED_REQUEST,
    UNAUTHORIZED,
    add_routes,
    read_cert_id,
    served_counts,
)
from mustaple.testing import (
    CA,
    Behaviour,
    Leaf,
    ManualClock,
    OCSPResponder,
    ResponseSpec,
    keeper_config,
    keeper_world,
)
from mustaple.testing import World as KeeperWorld
from mustaple.testing import responder as testing_responder
from servers import ApacheServer, NginxServer, Server, staple_from

DAY = timedelta(days=1)
NAME = "www.example.test"
QUICK = FetchPolicy(total_timeout=1.0, connect_timeout=1.0, attempts_per_url=1)
LIMIT = 1000  # max_request_size in these tests
WAIT = 10.0  # seconds a real server may take to staple
_T = TypeVar("_T")


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


async def exchange(port: int, head: str, body: bytes = b"") -> Reply:
    """Send `head` (request line and header lines) and `body`; read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    data = await reader.read()
    writer.close()
    top, _, content = data.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return Reply(int(status_line.split()[1]), headers, content)


def config(tmp: Path, fetch: FetchPolicy) -> Config:
    return keeper_config(tmp, sinks={}, fetch=fetch)


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """Serve `app` on a free port of 127.0.0.1; yield the port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def keeping(
    tmp: Path, clock: Callable[[], datetime], fetch: FetchPolicy
) -> AsyncIterator[Keeper]:
    """A keeper of the certificates under `tmp/live`, with no sinks."""
    store = SqliteStore(tmp / "state" / "state.db")
    try:
        async with Keeper(config(tmp, fetch), store=store, sinks={}, clock=clock) as keeper:
            yield keeper
    finally:
        store.close()


@dataclass
class World(KeeperWorld):
    """The keeper's world (`mustaple.testing.keeper_world`) and the local responder on `port`;
    `served` counts what it answered, by result."""

    port: int = 0
    served: dict[str, int] = field(default_factory=served_counts)

    def counted(self) -> dict[str, int]:
        """The results counted so far, those with a count only."""
        return {result: count for result, count in self.served.items() if count}

    async def stapled(self, name: str = NAME) -> tuple[Leaf, Managed, Staple]:
        return await super().stapled(name)

    async def get(self, path: str, *headers: str) -> Reply:
        return await exchange(self.port, "\n".join([f"GET {path} HTTP/1.0", *headers, ""]))

    async def post(self, body: bytes, path: str = "/ocsp") -> Reply:
        head = f"POST {path} HTTP/1.0\nContent-Type: application/ocsp-request\n"
        return await exchange(self.port, f"{head}Content-Length: {len(body)}\n", body)


@asynccontextmanager
async def world(tmp: Path, fetch: FetchPolicy) -> AsyncIterator[World]:
    async with keeper_world(tmp, config(tmp, fetch), sinks={}) as base:
        served = served_counts()
        app = web.Application()
        add_routes(app, base.keeper, max_request_size=LIMIT, clock=base.clock, served=served)
        async with serving(app) as port:
            yield World(**vars(base), port=port, served=served)


def run(
    scenario: Callable[[World], Awaitable[None]], tmp: Path, fetch: FetchPolicy = QUICK
) -> None:
    async def main() -> None:
        async with world(tmp, fetch) as w:
            await scenario(w)

    asyncio.run(main())


def request_of(leaf: Leaf, hash_name: str = "sha1") -> bytes:
    return encode_request(make_cert_id(leaf.issuer, leaf.cert.serial_number, hash_name))


def path_of(request_der: bytes) -> str:
    """The GET path as nginx sends it: base64 with '+', '/' and '=' escaped."""
    return get_url("/ocsp", request_der)


def awkward_request(cert_id: CertId) -> bytes:
    """A request (with a nonce) whose base64 holds a '+', a '/' and padding."""
    for n in range(1000):
        nonce = hashlib.sha256(bytes([n % 256, n // 256])).digest()[: 16 + n % 3]
        der = encode_request(cert_id, nonce=nonce)
        text = base64.b64encode(der).decode()
        if "+" in text and "/" in text and text.endswith("="):
            return der
    raise AssertionError("no such request in a thousand nonces")


def http_date(when: datetime) -> str:
    return format_datetime(when, usegmt=True)


# --- Over HTTP ------------------------------------------------------------------------------


def test_get_and_post_give_the_held_staple_byte_for_byte(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        leaf, _, held = await w.stapled()
        asked = len(w.responder.requests)
        request = request_of(leaf)
        cert_id = make_cert_id(leaf.issuer, leaf.cert.serial_number)
        big = encode_request(cert_id, nonce=bytes(600))  # too big to be remembered: read again
        replies = [
            await w.get(path_of(request)),
            await w.post(request),
            await w.post(request, "/ocsp/"),
            await w.post(big),
            await w.post(big),
        ]
        for reply in replies:
            assert (reply.status, reply.body) == (200, held.der)
            assert reply.headers["content-type"] == "application/ocsp-response"
        # the staple names the certificate by its SHA-1 CertID only: a client asking with
        # another hash would not find its answer in it
        for hash_name in ("sha256", "sha384", "sha512"):
            other = request_of(leaf, hash_name)
            for reply in (await w.get(path_of(other)), await w.post(other)):
                assert (reply.status, reply.body) == (200, UNAUTHORIZED)
        assert w.counted() == {"good": 5, "unauthorized": 6}
        assert len(w.responder.requests) == asked  # the CA was never asked

    run(scenario, tmp_path)


def test_a_staple_that_answers_a_sha256_cert_id_too_is_given_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CA answer holding the certificate's SHA-1 and SHA-256 CertIDs answers both."""
    issuers: list[x509.Certificate] = []

    def both(spec: ResponseSpec) -> ResponseSpec:
        ours = spec.singles[0]
        sha256 = make_cert_id(issuers[0], ours.cert_id.serial, "sha256")
        return replace(spec, singles=[ours, replace(ours, cert_id=sha256)])

    monkeypatch.setitem(testing_responder._CHANGES, Behaviour.SEVERAL_RESPONSES, both)

    async def scenario(w: World) -> None:
        issuers.append(w.ca.cert)
        w.responder.set_behaviour(Behaviour.SEVERAL_RESPONSES)
        leaf, _, held = await w.stapled()
        for hash_name, body in (("sha1", held.der), ("sha256", held.der), ("sha384", UNAUTHORIZED)):
            assert (await w.get(path_of(request_of(leaf, hash_name)))).body == body
        assert w.counted() == {"good": 2, "unauthorized": 1}

    run(scenario, tmp_path)


def test_the_cert_id_index_follows_files_that_come_go_and_are_renewed(tmp_path: Path) -> None:
    """The index of CertIDs a first look-up built is kept as files change, not built again:
    a renewed leaf is found and its old one no more, a leaf in two files is found while one
    of them is left, and a removed file's leaf is found no more."""

    async def scenario(w: World) -> None:
        old, _, _ = await w.stapled("a.test")
        first = await w.get(path_of(request_of(old)))  # builds the SHA-1 index
        assert first.status == 200
        renewed = w.issue("a.test")  # a new leaf in the same file
        copy = w.tmp / "live" / "copy"  # and a second file of it
        copy.mkdir()
        (copy / "fullchain.pem").write_bytes(renewed.fullchain_pem)
        await w.keeper.scan()
        await w.keeper.tick()
        held = w.managed("a.test").held
        assert held is not None
        assert held.serial == renewed.cert.serial_number
        found = await w.get(path_of(request_of(renewed)))
        assert (found.status, found.body) == (200, held.der)
        assert (await w.get(path_of(request_of(old)))).body == UNAUTHORIZED
        (w.tmp / "live" / "a.test" / "fullchain.pem").unlink()
        await w.keeper.scan()
        assert (await w.get(path_of(request_of(renewed)))).body == held.der  # the copy holds it
        (copy / "fullchain.pem").unlink()
        await w.keeper.scan()
        assert (await w.get(path_of(request_of(renewed)))).body == UNAUTHORIZED
        assert w.keeper.find(make_cert_id(renewed.issuer, renewed.cert.serial_number)) is None

    run(scenario, tmp_path)


def test_get_paths_escaped_or_not(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        leaf, managed, held = await w.stapled()
        request = awkward_request(make_cert_id(leaf.issuer, managed.target.serial))
        escaped = path_of(request)
        assert all(escape in escaped for escape in ("%2B", "%2F", "%3D"))
        raw = "/ocsp/" + base64.b64encode(request).decode()
        for path in (escaped, raw, f"{escaped}?ignored=1"):
            reply = await w.get(path)
            assert (reply.status, reply.body) == (200, held.der), path

    run(scenario, tmp_path)


def test_caching_headers_follow_the_refresh_point(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        leaf, _, held = await w.stapled()
        path = path_of(request_of(leaf))
        reply = await w.get(path)
        max_age = int((refresh_point(held) - w.clock.now).total_seconds())
        assert max_age > 3600
        assert reply.headers["cache-control"] == (
            f"max-age={max_age}, public, no-transform, must-revalidate"
        )
        assert reply.headers["last-modified"] == http_date(held.this_update)
        assert reply.headers["expires"] == http_date(held.effective_expiry)
        etag = reply.headers["etag"]
        assert etag[0] == etag[-1] == '"'
        w.clock.now = refresh_point(held) + timedelta(seconds=1)
        late = await w.get(path)
        assert late.headers["cache-control"].startswith("max-age=0,")
        assert (late.body, late.headers["etag"]) == (held.der, etag)

    run(scenario, tmp_path)


def test_last_modified_is_never_later_than_now(tmp_path: Path) -> None:
    """RFC 9110 8.8.2.1: a CA's clock a little ahead (within the skew the keeper accepts)
    puts thisUpdate after now; Last-Modified says now then, until thisUpdate comes."""

    async def scenario(w: World) -> None:
        leaf, _, held = await w.stapled()
        path = path_of(request_of(leaf))
        w.clock.now = held.this_update - timedelta(seconds=30, microseconds=500)
        for reply in (await w.get(path), await w.post(request_of(leaf))):
            assert reply.headers["last-modified"] == http_date(w.clock.now)
            date = parsedate_to_datetime(reply.headers["date"])
            assert parsedate_to_datetime(reply.headers["last-modified"]) <= date
        w.clock.now += timedelta(seconds=1)  # a second later: not the answer of before
        assert (await w.get(path)).headers["last-modified"] == http_date(w.clock.now)
        w.clock.now = held.this_update + timedelta(seconds=5)
        assert (await w.get(path)).headers["last-modified"] == http_date(held.this_update)

    run(scenario, tmp_path)


def test_if_none_match_gets_304(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        leaf, _, held = await w.stapled()
        path = path_of(request_of(leaf))
        etag = (await w.get(path)).headers["etag"]
        for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            reply = await w.get(path, f"If-None-Match: {tag}")
            assert (reply.status, reply.body, reply.headers["etag"]) == (304, b"", etag)
            assert reply.headers["cache-control"].startswith("max-age=")
        other = await w.get(path, 'If-None-Match: "other"')
        assert (other.status, other.body) == (200, held.der)
        # a POST: ignored (RFC 9110 13.1.2 allows a 304 for GET and HEAD only)
        head = "POST /ocsp HTTP/1.0\nContent-Type: application/ocsp-request\n"
        head += f"If-None-Match: {etag}\nContent-Length: {len(request_of(leaf))}\n"
        posted = await exchange(w.port, head, request_of(leaf))
        assert (posted.status, posted.body) == (200, held.der)
        assert w.counted() == {"good": 3, "not-modified": 4}

    run(scenario, tmp_path)


def test_certificates_without_a_valid_good_staple_get_unauthorized(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        leaf, _, held = await w.stapled()
        unmanaged = w.ca.issue("other.test")  # same CA, never configured
        stranger = CA().issue(NAME)  # another CA
        for request in (request_of(unmanaged), request_of(stranger)):
            for reply in (await w.get(path_of(request)), await w.post(request)):
                assert (reply.status, reply.body) == (200, UNAUTHORIZED)
                assert reply.headers["cache-control"] == "no-store"
        w.clock.now = held.effective_expiry  # the keeper has not ticked: held, but expired
        assert (await w.get(path_of(request_of(leaf)))).body == UNAUTHORIZED
        assert w.counted() == {"unauthorized": 5}

    run(scenario, tmp_path)


def test_a_revoked_certificate_gets_the_cas_revoked_answer_while_valid(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        leaf, managed, _ = await w.stapled()
        w.responder.set_behaviour(Behaviour.REVOKED, serial=leaf.cert.serial_number)
        w.clock.now = managed.next_due or w.clock.now
        await w.keeper.tick()
        assert managed.held is None
        assert managed.revoked is not None
        reply = await w.get(path_of(request_of(leaf)))
        assert (reply.status, reply.body) == (200, managed.revoked.der)
        answer = ocsp.load_der_ocsp_response(reply.body)
        assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
        w.clock.now = managed.revoked.effective_expiry
        assert (await w.get(path_of(request_of(leaf)))).body == UNAUTHORIZED
        assert w.counted() == {"revoked": 1, "unauthorized": 1}

    run(scenario, tmp_path)


def test_the_memo_reads_the_clock_as_seconds() -> None:
    """The real clock is read with no datetime made; any other clock through its datetime."""
    assert timestamps(utc_now) is time.time
    clock = ManualClock(datetime(2026, 12, 5, 17, 0, 0, 123456, tzinfo=UTC))
    seconds = timestamps(clock)
    assert seconds() == clock.now.timestamp()
    clock.now += timedelta(microseconds=1)
    assert seconds() == clock.now.timestamp()


def test_an_answer_asked_again_follows_the_clock_and_the_keeper(tmp_path: Path) -> None:
    """The same path asked again gets the answer of that moment: a second later, the clock
    set back, a revocation learned at the same moment, the answer expired, the file gone."""

    async def scenario(w: World) -> None:
        leaf, managed, _ = await w.stapled()
        path = path_of(request_of(leaf))

        async def max_age() -> int:
            reply = await w.get(path)
            assert managed.held is not None
            assert (reply.status, reply.body) == (200, managed.held.der)
            return int(reply.headers["cache-control"].split(",")[0].removeprefix("max-age="))

        first = await max_age()
        assert await max_age() == first
        w.clock.now += timedelta(seconds=1)
        assert await max_age() == first - 1
        w.clock.now -= timedelta(seconds=30)
        assert await max_age() == first + 29
        w.clock.now += timedelta(seconds=60)
        assert await max_age() == first - 31
        w.responder.set_behaviour(Behaviour.REVOKED, serial=leaf.cert.serial_number)
        await w.keeper.refresh(managed)  # at the same moment
        assert managed.revoked is not None
        assert (await w.get(path)).body == managed.revoked.der
        w.clock.now = managed.revoked.effective_expiry - timedelta(microseconds=1)
        assert (await w.get(path)).body == managed.revoked.der
        w.clock.now += timedelta(microseconds=1)
        assert (await w.get(path)).body == UNAUTHORIZED
        w.clock.now -= timedelta(seconds=1)
        assert (await w.get(path)).body == managed.revoked.der
        for name in (tmp_path / "live" / NAME).iterdir():
            name.unlink()
        await w.keeper.scan()
        assert (await w.get(path)).body == UNAUTHORIZED
        assert w.counted() == {"good": 5, "revoked": 3, "unauthorized": 2}

    run(scenario, tmp_path)


def sequence(content: bytes) -> bytes:
    """A DER SEQUENCE of `content` (under 256 bytes)."""
    length = bytes([len(content)]) if len(content) < 0x80 else bytes([0x81, len(content)])
    return b"\x30" + length + content


def two_cert_ids(leaf: Leaf) -> bytes:
    """A request for two certificates (its one Request element twice), in DER made by hand."""
    one = request_of(leaf)
    # OCSPRequest, TBSRequest, requestList: three SEQUENCE headers of two bytes each
    assert (one[0:6:2], max(one[1:6:2]) < 0x80) == (b"\x30\x30\x30", True)
    request = one[6:]
    return sequence(sequence(sequence(request + request)))


def test_malformed_requests_get_malformed_request(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        leaf, _, _ = await w.stapled()
        good = request_of(leaf)
        sha224 = ocsp.OCSPRequestBuilder().add_certificate(leaf.cert, leaf.issuer, hashes.SHA224())
        bodies = [
            b"",
            b"not DER",
            good + b"\x00",
            good[:-1],
            two_cert_ids(leaf),
            sha224.build().public_bytes(serialization.Encoding.DER),
        ]
        paths = ["/ocsp/", "/ocsp/not%20base64!", "/ocsp/%C3%A9", *map(path_of, bodies)]
        replies = [await w.post(body) for body in bodies] + [await w.get(p) for p in paths]
        for reply in replies:
            assert (reply.status, reply.body) == (200, MALFORMED_REQUEST)
        assert w.counted() == {"malformed": len(replies)}

    run(scenario, tmp_path)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_that_does_not_decode_gets_400_counted_as_malformed(
    tmp_path: Path, encoding: str
) -> None:
    async def scenario(w: World) -> None:
        leaf, _, held = await w.stapled()
        request = request_of(leaf)
        head = "POST /ocsp HTTP/1.0\nContent-Type: application/ocsp-request\n"
        head += f"Content-Encoding: {encoding}\n"
        packed = gzip.compress(request) if encoding == "gzip" else zlib.compress(request)
        for body, status in ((packed, 200), (request, 400), (b"not compressed", 400)):
            reply = await exchange(w.port, f"{head}Content-Length: {len(body)}\n", body)
            assert reply.status == status, reply
            assert reply.body == (held.der if status == 200 else b"OCSP request does not decode\n")
        assert w.counted() == {"good": 1, "malformed": 2}

    run(scenario, tmp_path)


def test_requests_over_the_size_limit_are_refused_unread(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        leaf, _, held = await w.stapled()
        assert (await w.post(request_of(leaf) + bytes(LIMIT))).status == 413
        # announced far over the limit, and never sent: answered without waiting for it
        # (and the connection closed at once, where aiohttp would wait 10 s for the rest)
        head = "POST /ocsp HTTP/1.0\nContent-Length: 100000000\n"
        announced = await asyncio.wait_for(exchange(w.port, head, b"0" * 100), 5)
        # chunked, no length announced: read up to the limit only, the end never sent
        chunked = "POST /ocsp HTTP/1.1\nHost: 127.0.0.1\nTransfer-Encoding: chunked\n"
        chunk = b"%x\r\n%s\r\n" % (LIMIT // 2, bytes(LIMIT // 2))
        unending = await asyncio.wait_for(exchange(w.port, chunked, chunk * 3), 5)
        assert announced.status == unending.status == 413
        long_path = "/ocsp/" + "A" * LIMIT
        assert (await w.get(long_path)).status == 414
        assert (await w.get(path_of(request_of(leaf)))).body == held.der
        assert w.counted() == {"too-large": 4, "good": 1}

    run(scenario, tmp_path)


def test_the_ca_down_changes_nothing_for_the_servers(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        leaf, managed, held = await w.stapled()
        path = path_of(request_of(leaf))
        w.responder.set_behaviour(Behaviour.TRY_LATER)
        w.clock.now = managed.next_due or w.clock.now
        await w.keeper.tick()
        assert (managed.failures, managed.held) == (1, held)
        asked = len(w.responder.requests)
        assert (await w.get(path)).body == held.der
        w.responder.set_behaviour(Behaviour.HANG)
        w.clock.now = managed.next_due or w.clock.now
        refresh = asyncio.create_task(w.keeper.tick())
        while len(w.responder.requests) == asked:  # the keeper's fetch now hangs at the CA
            await asyncio.sleep(0.01)
        assert (await w.get(path)).body == held.der
        assert (await w.post(request_of(leaf))).body == held.der
        assert not refresh.done()  # answered while the CA holds the keeper's fetch (30 s)
        assert len(w.responder.requests) == asked + 1  # that fetch, and nothing else
        refresh.cancel()
        with suppress(asyncio.CancelledError):
            await refresh

    patient = FetchPolicy(total_timeout=30.0, connect_timeout=1.0, attempts_per_url=1)
    run(scenario, tmp_path, patient)


def test_prefix_and_arguments(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        leaf, _, held = await w.stapled()
        app = web.Application()
        add_routes(app, w.keeper, prefix="/", clock=w.clock)
        async with serving(app) as port:
            path = get_url("/", request_of(leaf))
            assert (await exchange(port, f"GET {path} HTTP/1.0\n")).body == held.der
        for prefix in ("ocsp", ""):
            with pytest.raises(ValueError, match="prefix"):
                add_routes(web.Application(), w.keeper, prefix=prefix)
        with pytest.raises(ValueError, match="max_request_size"):
            add_routes(web.Application(), w.keeper, max_request_size=0)
        shared: dict[str, int] = {}  # empty: not taken for "none given"
        with pytest.raises(ValueError, match="served has no count for good, malformed"):
            add_routes(web.Application(), w.keeper, served=shared)
        responder = add_routes(web.Application(), w.keeper)
        counts = served_counts()
        responder.switch(w.keeper, counts)
        assert responder.served is counts  # counted in place, where the caller reads
        del counts["too-large"]
        with pytest.raises(ValueError, match="served has no count for too-large"):
            responder.switch(w.keeper, counts)

    run(scenario, tmp_path)


def test_one_answer_whatever_the_server(tmp_path: Path) -> None:
    """`Responder.answer` decides; `for_path` and `for_body` read the request and count."""

    async def scenario(w: World) -> None:
        leaf, _, held = await w.stapled()
        served = served_counts()
        responder = add_routes(
            web.Application(), w.keeper, max_request_size=LIMIT, clock=w.clock, served=served
        )
        cert_id = make_cert_id(leaf.issuer, leaf.cert.serial_number)
        now = w.clock.now
        ok = responder.answer(cert_id, now, None)
        assert (ok.status, ok.body, ok.result) == (200, held.der, "good")
        assert list(ok.headers) == [
            "Content-Type", "ETag", "Last-Modified", "Expires", "Cache-Control"
        ]  # fmt: skip
        assert responder.answer(cert_id, now, None) is ok  # the same until max-age changes
        not_modified = responder.answer(cert_id, now, ok.headers["ETag"])
        assert (not_modified.status, not_modified.body) == (304, b"")
        assert not_modified.result == "not-modified"
        assert "Content-Type" not in not_modified.headers
        assert responder.answer(None, now, None).body == MALFORMED_REQUEST
        stranger = make_cert_id(leaf.issuer, leaf.cert.serial_number + 1)
        assert responder.answer(stranger, now, None).body == UNAUTHORIZED
        assert served == served_counts()  # answer() counts nothing
        request = request_of(leaf)
        assert responder.for_path(path_of(request), None) is ok
        assert responder.for_body(request, None) is ok
        assert responder.for_path("/ocsp/" + "A" * LIMIT, None) is None  # refused by the caller
        assert served == {**served_counts(), "good": 2}
        later = responder.answer(cert_id, now + timedelta(seconds=1), None)
        assert later is not ok
        assert (later.body, later.headers["ETag"]) == (ok.body, ok.headers["ETag"])

    run(scenario, tmp_path)


def test_read_cert_id() -> None:
    leaf = CA().issue(NAME)
    for hash_name in ("sha1", "sha256", "sha384", "sha512"):
        cert_id = make_cert_id(leaf.issuer, leaf.cert.serial_number, hash_name)
        assert read_cert_id(encode_request(cert_id)) == cert_id
    assert read_cert_id(two_cert_ids(leaf)) is None
    assert read_cert_id(b"\x30\x00") is None


# --- With real servers ----------------------------------------------------------------------


class LiveStack:
    """The CA's responder, a keeper and the local responder on the real clock, on one event
    loop in a thread, for real servers to fetch from. `url` is the local responder's."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = CA(now=datetime.now(UTC) - DAY)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.exits = AsyncExitStack()
        self.responder = OCSPResponder(self.ca)
        self.keeper: Keeper | None = None
        self.url = ""

    def __enter__(self) -> LiveStack:
        self.thread.start()
        self.call(self._start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.call(self.exits.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def call(self, coro: Coroutine[object, object, _T]) -> _T:
        """Run `coro` on the stack's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _start(self) -> None:
        await self.exits.enter_async_context(self.responder)
        self.keeper = await self.exits.enter_async_context(keeping(self.tmp, utc_now, QUICK))
        app = web.Application()
        add_routes(app, self.keeper)
        port = await self.exits.enter_async_context(serving(app))
        self.url = f"http://127.0.0.1:{port}/ocsp"

    async def stapled(self) -> tuple[Leaf, Managed, Staple]:
        """Issue the certificate and let the keeper fetch its staple from the CA."""
        assert self.keeper is not None
        leaf = self.ca.issue(NAME, ocsp_urls=[self.responder.url])
        self.responder.add(leaf)
        leaf.write(self.tmp / "live" / NAME)
        await self.keeper.scan()
        await self.keeper.tick()
        (managed,) = self.keeper.managed.values()
        assert managed.held is not None
        return leaf, managed, managed.held

    async def ca_down(self, managed: Managed) -> None:
        """The CA hangs from now on; the keeper's refresh fails and it keeps its staple."""
        assert self.keeper is not None
        self.responder.set_behaviour(Behaviour.HANG)
        await self.keeper.refresh(managed)
        assert managed.failures == 1

    async def asked(self) -> int:
        """How many requests the CA has had."""
        return len(self.responder.requests)


def first_staple(server: Server) -> bytes:
    """What the server staples once it has fetched (servers fetch lazily: retry a while)."""
    deadline = time.monotonic() + WAIT
    while (staple := staple_from(server.port, NAME)) is None:
        assert time.monotonic() < deadline, f"{server.program} never stapled:\n{server.output()}"
        time.sleep(0.05)
    return staple


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    with LiveStack(tmp_path / "mustaple") as stack:
        yield stack


def test_real_apache_staples_from_mustaple_and_keeps_it_while_the_ca_is_down(
    live: LiveStack, tmp_path: Path
) -> None:
    leaf, managed, held = live.call(live.stapled())
    files = leaf.write(tmp_path / "site")
    server = ApacheServer(
        tmp_path / "apache", cert=files.fullchain, key=files.key, responder=live.url
    )
    with server:
        assert first_staple(server) == held.der
        live.call(live.ca_down(managed))
        asked = live.call(live.asked())
        server.stop()
        server.start()  # a new stapling cache: Apache must fetch again
        assert first_staple(server) == held.der
    assert live.call(live.asked()) == asked  # the server's fetches never reached the CA


def test_real_nginx_staples_from_mustaple_and_keeps_it_while_the_ca_is_down(
    live: LiveStack, tmp_path: Path
) -> None:
    leaf, managed, held = live.call(live.stapled())
    files = leaf.write(tmp_path / "site")
    server = NginxServer(
        tmp_path / "nginx",
        cert=files.fullchain,
        key=files.key,
        responder=live.url,
        trusted=files.chain,
    )
    with server:
        assert first_staple(server) == held.der
        live.call(live.ca_down(managed))
        asked = live.call(live.asked())
        server.stop()
        server.start()  # nginx forgets its staple: it must fetch again
        assert first_staple(server) == held.der
    assert live.call(live.asked()) == asked  # the server's fetches never reached the CA
