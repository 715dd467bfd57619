"""Worker processes that load certificate files and fetch staples, so that a large batch (a
`prime` of many certificates, a keeper starting with many) uses every core.

Python runs one thread of Python at a time, and loading and fetching are CPU-bound on a fast
network (two signature checks, parsing, HTTP), so the keeper hands them to worker processes:
each one is a fresh interpreter (`python -c ...`, never a fork of a process that may hold
threads) with its own event loop and its own `HttpFetcher` pool of connections. The keeper stays
the one orchestrator: it decides what to load and fetch, steps the life cycle, stores and
delivers; a worker only carries out `load_file` and `Fetcher.fetch`, the very functions the
keeper calls in process, and sends back their values.

`WorkerPool` is a `Fetcher` (plus `load_many`) for the keeper. The channel is the worker's
stdin and stdout, private to the two processes: frames of a 4-byte length and a pickle, written
in batches (everything sent in one turn of the event loop goes out in one write). What only the
parent may hold (x509 objects) crosses as DER; what repeats (the issuer, the policies) is sent
once per worker and named by a number after that. A worker that dies (killed, out of memory),
garbles a frame, or stays silent for SILENCE seconds with calls in flight (it beats every BEAT
seconds) costs nothing but speed: it is stopped, its calls in flight and every call after run
in the parent instead, and the pool says so.

Stopping is the keeper's: a worker runs in a session of its own (a terminal's Ctrl-C reaches
only the keeper) and ignores SIGINT and SIGTERM (systemd signals every process of the unit);
the keeper ends it by closing its stdin, and it exits at once, dropping the calls still in
flight (an interrupted `prime`, a `run` stopped mid-pass: nothing waits for their answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import dataclasses
import functools
import logging
import operator
import os
import pickle
import random
import signal
import struct
import sys
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    MutableMapping,
    Sequence,
)
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mustaple.adapters.collector import batch_collector
from mustaple.adapters.fetch import HttpFetcher
from mustaple.adapters.http1 import Watcher
from mustaple.adapters.loader import IssuerDownloads, Loaded, LoadFailed, load_or_fail
from mustaple.adapters.reads import Group, ReadAhead, by_entry
from mustaple.adapters.signatures import SignatureCache, Tag
from mustaple.adapters.store import Looked, SqliteStore, cert_key, look_up
from mustaple.core.certs import Target
from mustaple.core.clock import Clock, utc_now
from mustaple.core.errors import InputError
from mustaple.core.fetchtypes import Attempt, Fetcher, FetchJob, FetchPolicy, FetchResult
from mustaple.core.urls import first_host
from mustaple.core.verify import DEFAULT_POLICY, Policy, Staple

__all__ = ["DEPTH", "Limits", "ToLoad", "WorkerPool", "cores"]

log = logging.getLogger("mustaple")
_LENGTH = struct.Struct(">I")
_PROTO = pickle.PROTO[0]  # the first byte of every pickle sent (protocol 2 and later)
_ENTRY = "from mustaple.adapters.workers import main; main()"
_LIMITS = "MUSTAPLE_WORKER_LIMITS"  # a worker's part of the limits: "TOTAL,PER_HOST"
LOAD_CHUNK = 64  # files per load message: one message costs about as much as a few loads
BEAT = 1.0  # seconds between a worker's signs of life (and its reports of long waits)
_WAIT = -1  # the call number of a worker's report of a request it has waited on for a while
SILENCE = 30.0  # a worker with calls in flight silent this long is stopped (its loop is stuck)
# How many times `concurrency` (and `per_host`) fetches the keeper hands a pool at once: the
# workers keep the limits on requests themselves, and the rest wait in them, so a worker never
# waits on the main process for its next fetch (at 1x, 16% of two cores stayed idle).
DEPTH = 4
# A file to load: its path, its issuer file or None, the policy to download an issuer with,
# and its entry (its reads wait on those of the same entry: `ReadAhead`)
ToLoad = tuple[Path, Path | None, FetchPolicy, Group]
# A file as a worker loaded it: the leaf's DER, the issuer's (or, once sent, its number among
# the issuers this worker sent), `Target.facts`, whether the file carries the issuer, the
# leaf's `cert_key`, its stored answer validated (None: not looked up), and the tags of the
# signatures it checked (for the keeper's signature cache).
_LoadAnswer = tuple[
    bytes,
    "bytes | int",
    tuple[str, bool, tuple[str, ...]],
    bool,
    str,
    "Looked | None",
    "list[Tag]",
]


def _as_constructed(kind: type) -> Callable[[Any], tuple[type, tuple[object, ...]]]:
    """How to pickle a frozen dataclass with slots: as the call that makes it (unpickling then
    runs its `__init__`, much faster than the generic state of a slotted dataclass)."""
    values = operator.attrgetter(*(f.name for f in dataclasses.fields(kind)))

    def reduce(value: Any) -> tuple[type, tuple[object, ...]]:
        return kind, values(value)

    return reduce


for _kind in (Staple, Attempt, Looked):  # what every answer carries, in both processes
    copyreg.pickle(_kind, _as_constructed(_kind))


class Limits:
    """At most `total` fetches at once, and `per_host` to one responder host: a slot is taken
    for each (`async with limits.slot(host)`)."""

    def __init__(self, total: int, per_host: int) -> None:
        self.total, self.per_host = total, per_host
        self._all = asyncio.Semaphore(total)
        self._hosts: dict[str, asyncio.Semaphore] = {}

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        one = self._hosts.get(host)
        if one is None:
            one = self._hosts[host] = asyncio.Semaphore(self.per_host)
        async with self._all, one:
            yield

    def deeper(self, factor: int) -> Limits:
        return Limits(self.total * factor, self.per_host * factor)

    def share(self, index: int, count: int) -> Limits:
        """Worker `index`'s part of these limits when `count` workers split them (the parts
        add up to them exactly; a part may be 0)."""
        return Limits(_part(self.total, index, count), _part(self.per_host, index, count))


def _part(whole: int, index: int, count: int) -> int:
    return whole // count + (1 if index < whole % count else 0)


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --- Framing, shared by both ends -------------------------------------------------------------


class _Frames:
    """Frames out of a byte stream: `feed` bytes, get every whole message; ValueError as
    soon as a frame does not start as ours do (a pickle's PROTO opcode after the length: any
    text, such as a stray print on the stream, is caught at its first bytes)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        messages, at = [], 0
        buffer = self._buffer
        while len(buffer) - at > _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, at)
            if buffer[at + _LENGTH.size] != _PROTO:
                raise ValueError("a frame that is not a pickle")
            if len(buffer) - at - 4 < size:
                break
            messages.append(pickle.loads(buffer[at + 4 : at + 4 + size]))
            at += 4 + size
        del buffer[:at]
        return messages


class _Outbox:
    """Messages to one peer, written together at the end of the event loop's turn."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self._parts: list[bytes] = []

    def send(self, message: object, *, at_once: bool = False) -> None:
        """Send `message` with the others of this turn, or `at_once` (an answer that took
        a while to make: the turn may go on for long)."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if not self._parts and not at_once:
            asyncio.get_running_loop().call_soon(self._flush)
        self._parts += (_LENGTH.pack(len(data)), data)
        if at_once:
            self._flush()

    def _flush(self) -> None:
        parts, self._parts = self._parts, []
        if parts:
            self._write(b"".join(parts))


# --- The parent's side --------------------------------------------------------------------------


class WorkerGone(Exception):
    """The worker process ended: its calls are run in the parent."""


class _Worker(asyncio.SubprocessProtocol):
    """One worker process as the parent sees it: calls out, answers in."""

    def __init__(self) -> None:
        self.calls: dict[int, asyncio.Future[Any]] = {}
        self.known: set[int] = set()  # the references this worker has been given
        self.issuers: list[x509.Certificate] = []  # the issuers it sent, by number
        self.frames = _Frames()
        self.transport: asyncio.SubprocessTransport | None = None
        self.outbox: _Outbox | None = None
        self.alive = False
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.heard = loop.time()  # when it last sent a whole frame (an answer, a sign of life)
        self.on_wait: Callable[[int, tuple[Any, ...]], None] = lambda request, report: None
        self.on_gone: Callable[[], None] = lambda: None
        self.fetches = True  # False: its share of the limits is 0, it only loads
        self._next = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)

        def write(data: bytes) -> None:
            if not stdin.is_closing():
                stdin.write(data)

        self.outbox = _Outbox(write)
        self.alive = True

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        try:
            answers = self.frames.feed(data)
        except Exception as exc:  # not our frames: nothing more it says can be trusted
            self.end(f"sent what is not an answer ({type(exc).__name__})")
            return
        if answers:  # heard: whole frames, not bytes (a bogus length holds every frame back)
            self.heard = asyncio.get_running_loop().time()
        for call, ok, value in answers:
            if call == _WAIT:
                self.on_wait(ok, value)
                continue
            future = self.calls.pop(call, None)
            if future is None or future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(RuntimeError(value))

    def process_exited(self) -> None:
        """No new call goes to it; the answers it wrote before it ended are still in its
        pipe, read before `connection_lost` (every pipe closed) sends the rest back to the
        parent: a fetch already answered is not made again."""
        if self.alive:
            self.on_gone()
        self.alive = False
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def end(self, why: str) -> None:
        """Stop a worker that cannot be trusted to answer; its calls run in the parent."""
        if self.transport is not None and self.alive:
            log.warning("a worker process %s: stopped", why)
            with contextlib.suppress(ProcessLookupError):
                self.transport.kill()
        self._gone()

    def _gone(self) -> None:
        if self.alive:
            self.on_gone()
        self.alive = False
        calls, self.calls = self.calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(WorkerGone())

    def call(self, *message: object) -> asyncio.Future[Any]:
        if not self.alive or self.outbox is None:
            raise WorkerGone()
        self._next += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.calls[self._next] = future
        self.outbox.send((self._next, *message))
        return future

    def define(self, ref: int, value: object) -> None:
        """Give the worker a value it will be asked about by number."""
        if ref not in self.known and self.outbox is not None:
            self.outbox.send((0, "define", ref, value))
            self.known.add(ref)

    async def stop(self, timeout: float = 5.0) -> None:
        """Close the worker's stdin (it drops the calls still in flight, which no one awaits
        any more: none at a normal end, those of an interrupted prime), then make sure."""
        if self.transport is None:
            return
        stdin = self.transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
        self.transport.close()


@dataclasses.dataclass(frozen=True, slots=True)
class _Batch:
    """What every chunk of a `load_many` shares."""

    reading: tuple[str, Policy, bytes | None] | None  # `WorkerPool._reading`
    reads: ReadAhead  # the caller's, for the files loaded here
    patience: timedelta
    signatures: SignatureCache | None
    downloads: IssuerDownloads  # the caller's, for the files loaded here


class WorkerPool:
    """A `Fetcher` whose fetches (and whose `load_many`) run in worker processes.

    Start it with `await WorkerPool.start(...)` in the running loop; `close` it."""

    def __init__(
        self,
        workers: list[_Worker],
        limits: Limits,
        fallback: Fetcher,
        watchers: Sequence[Watcher] = (),
    ) -> None:
        self.workers = workers
        self.fallback = fallback  # the caller's own fetcher: issuers, calls of dead workers
        self.limits = limits  # what the fallback keeps to, on its own (see `fetch`)
        self.watchers = list(watchers)  # told the requests a worker has waited on for a while
        self._waits: dict[tuple[int, int], list[object]] = {}  # (worker, request) -> tokens
        self._refs: dict[Hashable, int] = {}
        self._by_id: dict[int, tuple[Hashable, int]] = {}
        self._issuers: dict[bytes, x509.Certificate] = {}
        self._told_gone = False
        self._watching = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Stop a worker whose calls are in flight but which has been silent too long."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(BEAT)
            for worker in self.workers:
                if worker.alive and worker.calls and loop.time() - worker.heard > SILENCE:
                    worker.end(f"was silent for {SILENCE:.0f} s with work in hand")

    @classmethod
    async def start(
        cls, count: int, *, limits: Limits, fallback: Fetcher, watchers: Sequence[Watcher] = ()
    ) -> WorkerPool:
        """`count` workers splitting `limits` (each keeps its part on its own requests: a
        worker whose part is 0 only loads); `fallback` (the caller's fetcher, left open by
        `close`) does what no worker can; `watchers` are told each request a worker has waited
        on for more than a second (and how it ended)."""
        loop = asyncio.get_running_loop()
        env = dict(os.environ)
        here = str(Path(__file__).resolve().parents[2])  # the mustaple the parent runs
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        pool = cls([], limits, fallback, watchers)
        try:
            for index in range(count):
                part = limits.share(index, count)
                env[_LIMITS] = f"{part.total},{part.per_host}"
                _, worker = await loop.subprocess_exec(
                    _Worker,
                    sys.executable,
                    "-c",
                    _ENTRY,
                    stdin=-1,
                    stdout=-1,
                    env=env,
                    start_new_session=True,  # a terminal's Ctrl-C is the keeper's (see main)
                )
                worker.fetches = part.total > 0 and part.per_host > 0
                worker.on_wait = functools.partial(pool._waited, len(pool.workers))
                worker.on_gone = functools.partial(pool._gone, len(pool.workers))
                pool.workers.append(worker)
        except BaseException:
            await pool.close()  # the ones started so far
            raise
        return pool

    async def close(self) -> None:
        self._watching.cancel()
        await asyncio.gather(*(worker.stop() for worker in self.workers))

    def _waited(self, worker: int, request: int, report: tuple[Any, ...]) -> None:
        """A worker's report: ("started", method, url) of a request it has waited on for a
        while, or ("ended", outcome) of one it reported."""
        key = (worker, request)
        if report[0] == "started":
            self._waits[key] = [w.request_started(*report[1:]) for w in self.watchers]
            return
        tokens = self._waits.pop(key, None)
        for watcher, token in zip(self.watchers, tokens or (), strict=False):
            watcher.request_ended(token, report[1])

    def _gone(self, worker: int) -> None:
        """A worker ended: the waits it reported are over."""
        for key in [key for key in self._waits if key[0] == worker]:
            self._waited(*key, ("ended", "failed (worker process ended)"))

    def _pick(self, *, fetching: bool = False) -> _Worker | None:
        alive = [w for w in self.workers if w.alive and (w.fetches or not fetching)]
        return min(alive, key=lambda w: len(w.calls)) if alive else None

    def _ref(
        self, worker: _Worker, value: Hashable, form: Callable[[], object] | None = None
    ) -> int:
        """The number `worker` knows `value` by (sent as `form()`, or as itself, at first)."""
        kept = self._by_id.get(id(value))  # the same object again (hashing a policy is slow)
        if kept is not None and kept[0] is value:
            ref = kept[1]
        else:
            ref = self._refs.setdefault(value, len(self._refs) + 1)
            self._by_id[id(value)] = (value, ref)  # kept alive: its id is not reused
        if ref not in worker.known:
            worker.define(ref, form() if form is not None else value)
        return ref

    def _lost(self) -> None:
        if not self._told_gone:
            log.warning("a worker process ended; its work goes on in the main process")
            self._told_gone = True

    async def fetch(self, job: FetchJob, *, clock: Clock, rng: Callable[[], float]) -> FetchResult:
        """The fetch, run by the least busy worker within its part of the limits; by the
        fallback, within the whole limits of its own, when no worker can (one that ended:
        then a host may see the fetches of the workers left as well as the fallback's)."""
        worker = self._pick(fetching=True)
        if worker is not None:
            issuer = job.target.issuer
            message = (
                "fetch",
                job.target.leaf.public_bytes(Encoding.DER),
                self._ref(worker, issuer, lambda: issuer.public_bytes(Encoding.DER)),
                job.target.facts,
                tuple(job.urls),
                job.hash_name,
                self._ref(worker, job.policy),
                self._ref(worker, job.verify_policy),
                job.current,
            )
            try:
                result: FetchResult = await worker.call(*message)
                return result
            except WorkerGone:
                self._lost()
        async with self.limits.slot(first_host(job.urls, job.target.ocsp_urls)):
            return await self.fallback.fetch(job, clock=clock, rng=rng)

    async def issuer(
        self, url: str, *, policy: FetchPolicy, cache: MutableMapping[str, bytes] | None
    ) -> list[x509.Certificate]:
        return await self.fallback.issuer(url, policy=policy, cache=cache)

    async def load_many(
        self,
        files: Sequence[ToLoad],
        take: Callable[[int, Loaded | LoadFailed, Looked | None], object],
        *,
        reads: ReadAhead,
        patience: timedelta,
        restore: tuple[Path, Policy] | None = None,
        signatures: SignatureCache | None = None,
        downloads: IssuerDownloads | None = None,
    ) -> None:
        """Load each (certificate file, its issuer file or None, the policy to download an
        issuer with, its entry), in chunks spread over the workers; `take(index, outcome,
        looked)` each one as its chunk comes back. Each worker reads its files with a
        `ReadAhead` of its own, the files loaded here with `reads` (the caller's), each
        entry's reads given `patience`. With `restore` (the state database and the policy
        to validate with), a worker also looks up each certificate's stored answer and
        validates it now (`looked`; None where it did not), and with `signatures` (the
        keeper's cache, of that database) skips the leaf signatures checked before; the new
        ones are handed to `signatures` to store. Each worker downloads an issuer once (it
        remembers a failed download for its life: this batch); files no worker can load are
        loaded here, their issuers downloaded through `downloads` (the caller's)."""
        reading = self._reading(restore, signatures)
        batch = _Batch(reading, reads, patience, signatures, downloads or IssuerDownloads())
        await asyncio.gather(
            *(
                self._load_chunk(files[at : at + LOAD_CHUNK], at, take, batch)
                for at in range(0, len(files), LOAD_CHUNK)
            )
        )

    @staticmethod
    def _reading(
        restore: tuple[Path, Policy] | None, signatures: SignatureCache | None
    ) -> tuple[str, Policy, bytes | None] | None:
        """What a worker needs to read the state database: its path, the policy to validate
        stored answers with, and the signature cache's key."""
        if restore is None:
            return None
        path, policy = restore
        return str(path), policy, signatures.key if signatures is not None else None

    async def _load_chunk(
        self,
        files: Sequence[ToLoad],
        first: int,
        take: Callable[[int, Loaded | LoadFailed, Looked | None], object],
        batch: _Batch,
    ) -> None:
        reading, signatures, patience = batch.reading, batch.signatures, batch.patience
        worker = self._pick()
        if worker is not None:
            try:
                asked = [
                    (str(cert), issuer and str(issuer), self._ref(worker, p), self._ref(worker, g))
                    for cert, issuer, p, g in files
                ]
                where = self._ref(worker, reading) if reading else 0
                answers = await worker.call("load", asked, where, patience.total_seconds())
            except WorkerGone:
                self._lost()
            else:
                for index, answer in enumerate(answers, first):
                    loaded, looked, tags = self._loaded(worker, answer)
                    if tags and signatures is not None:
                        signatures.adopt(tags)
                    take(index, loaded, looked)
                return
        wanted = by_entry((cert, issuer, group) for cert, issuer, _, group in files)
        read = await batch.reads.read(wanted, patience)
        for index, (cert, issuer, policy, _) in enumerate(files, first):
            loaded = await load_or_fail(
                cert,
                issuer,
                fetcher=self.fallback,
                policy=policy,
                downloads=batch.downloads,
                issuers={},
                signatures=signatures,
                read=read,
            )
            take(index, loaded, None)

    def _loaded(
        self, worker: _Worker, answer: _LoadAnswer | LoadFailed
    ) -> tuple[Loaded | LoadFailed, Looked | None, list[Tag]]:
        if isinstance(answer, LoadFailed):
            return answer, None, []
        leaf_der, issuer, facts, bundle_has_issuer, key, looked, tags = answer
        if isinstance(issuer, bytes):  # one this worker had not sent yet
            worker.issuers.append(self._issuer(issuer))
            issuer = len(worker.issuers) - 1
        # The worker checked the issuer's signature on these very bytes, and read the facts.
        leaf = x509.load_der_x509_certificate(leaf_der)
        target = Target.known(leaf, worker.issuers[issuer], facts)
        return Loaded(target, bundle_has_issuer, key), looked, tags

    def _issuer(self, der: bytes) -> x509.Certificate:
        """One object per issuer, whichever worker sent it."""
        issuer = self._issuers.get(der)
        if issuer is None:
            issuer = self._issuers[der] = x509.load_der_x509_certificate(der)
        return issuer


# --- The worker's side --------------------------------------------------------------------------


class _Serving(asyncio.Protocol):
    """The worker's end of the channel: each call runs as a task, its answer sent back."""

    def __init__(self, outbox: Callable[[], _Outbox], fetcher: HttpFetcher, limits: Limits) -> None:
        self.outbox = outbox
        self.fetcher = fetcher
        self.limits = limits  # this worker's part
        self.frames = _Frames()
        self.refs: dict[int, Any] = {}
        self.downloads = IssuerDownloads()  # for the worker's life: one batch
        self.reads = ReadAhead()  # of the certificate files, for its life too
        self.issuers: dict[x509.Certificate, x509.Certificate] = {}
        self.sent: dict[x509.Certificate, int] = {}  # the issuers sent, by number
        self.stores: dict[str, SqliteStore | None] = {}
        self.signatures: dict[str, SignatureCache] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.loading = asyncio.Lock()  # one chunk of loads at a time
        self.ended = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        try:
            asked = self.frames.feed(data)
        except Exception as exc:  # not the keeper's frames: nothing to serve
            log.error("unreadable request from the keeper (%s): ending", exc)
            self.connection_lost(None)
            return
        for call, kind, *args in asked:
            if kind == "define":
                ref, value = args
                self.refs[ref] = _issuer(value) if isinstance(value, bytes) else value
                continue
            task = asyncio.get_running_loop().create_task(self._answer(call, kind, args))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    async def _answer(self, call: int, kind: str, args: list[Any]) -> None:
        if kind != "load":
            await self._reply(call, self._fetch(args))
            return
        # A chunk of loads runs without a pause: one at a time, its answer sent at once, and a
        # turn of the loop before the next, so that the answer leaves (the keeper takes it
        # while this worker goes on) and the fetches in flight go on.
        async with self.loading:
            await self._reply(call, self._load(*args), at_once=True)
            await asyncio.sleep(0)

    async def _reply(self, call: int, work: Awaitable[object], *, at_once: bool = False) -> None:
        try:
            value = await work
        except Exception as exc:  # answered, never a dead worker
            self.outbox().send((call, False, f"{type(exc).__name__}: {exc}"))
        else:
            self.outbox().send((call, True, value), at_once=at_once)

    async def _fetch(self, asked: list[Any]) -> FetchResult:
        leaf, issuer, facts, urls, hash_name, policy, verify_policy, current = asked
        target = Target.known(x509.load_der_x509_certificate(leaf), self.refs[issuer], facts)
        job = FetchJob(
            target, urls, hash_name, self.refs[policy], self.refs[verify_policy], current
        )
        async with self.limits.slot(first_host(urls, target.ocsp_urls)):
            return await self.fetcher.fetch(job, clock=utc_now, rng=random.random)

    async def _load(
        self, files: list[tuple[str, str | None, int, int]], reading: int, patience: float
    ) -> list[_LoadAnswer | LoadFailed]:
        store, verify_policy, signatures = self._reading(reading)
        given = [
            (cert, issuer, self.refs[policy], self.refs[group])
            for cert, issuer, policy, group in files
        ]
        wanted = by_entry((cert, issuer, group) for cert, issuer, _, group in given)
        read = await self.reads.read(wanted, timedelta(seconds=patience))
        answers: list[_LoadAnswer | LoadFailed] = []
        fresh: dict[x509.Certificate, int] = {}  # issuers first sent in this answer
        for cert, issuer, policy, _ in given:
            loaded = await load_or_fail(
                cert,
                issuer,
                fetcher=self.fetcher,
                policy=policy,
                downloads=self.downloads,
                issuers=self.issuers,
                signatures=signatures,
                read=read,
            )
            if isinstance(loaded, LoadFailed):
                answers.append(loaded)
                continue
            target, bundled = loaded.target, loaded.bundle_has_issuer
            key, looked = cert_key(target.leaf), None
            if store is not None:
                looked = look_up(store, key, target, utc_now(), verify_policy)
            tags = signatures.new_tags() if signatures is not None else []
            named = self._named(target.issuer, fresh)
            answers.append((_der(target.leaf), named, target.facts, bundled, key, looked, tags))
        self.sent.update(fresh)  # only once the answer is sure to go
        return answers

    def _named(self, issuer: x509.Certificate, fresh: dict[x509.Certificate, int]) -> bytes | int:
        """The issuer as an answer names it: its DER the first time, then its number."""
        number = self.sent.get(issuer, fresh.get(issuer))
        if number is None:
            fresh[issuer] = len(self.sent) + len(fresh)
            return _der(issuer)
        return number

    def _reading(self, ref: int) -> tuple[SqliteStore | None, Policy, SignatureCache | None]:
        """The state database a load looks answers up in (read only), the policy to validate
        them with, and the signature cache on that database (with the keeper's key)."""
        if not ref:
            return None, DEFAULT_POLICY, None
        path, policy, key = self.refs[ref]
        if path not in self.stores:
            try:
                self.stores[path] = SqliteStore.reader(path)
            except InputError:
                self.stores[path] = None  # the main process looks them up itself
        store = self.stores[path]
        if store is None or key is None:
            return store, policy, None
        if path not in self.signatures:
            self.signatures[path] = SignatureCache(store, key, None)
        return store, policy, self.signatures[path]

    def close(self) -> None:
        for store in self.stores.values():
            if store is not None:
                store.close()


def _issuer(der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(der)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    channel_out = os.dup(1)
    os.dup2(2, 1)  # stray prints go to stderr: stdout is the channel
    out: list[_Outbox] = []
    waits = _Waits(lambda: out[0])
    total, per_host = (int(n) for n in os.environ.get(_LIMITS, "32,4").split(","))
    fetcher = HttpFetcher.open(limit=max(1, total), watchers=[waits])
    serving = _Serving(lambda: out[0], fetcher, Limits(max(1, total), max(1, per_host)))
    writer, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(channel_out, "wb"))
    out.append(_Outbox(writer.write))
    await loop.connect_read_pipe(lambda: serving, sys.stdin.buffer)
    beating = loop.create_task(_beat(out[0], waits))
    try:
        await serving.ended  # the parent closed our stdin: it is done with us
        for task in serving.tasks:
            task.cancel()  # a fetch waiting on a hanging responder must not keep us alive
        if serving.tasks:
            await asyncio.wait(serving.tasks)
    finally:
        beating.cancel()
        serving.close()
        await fetcher.close()


async def _beat(outbox: _Outbox, waits: _Waits) -> None:
    """A sign of life every BEAT seconds, so the parent can tell a stuck worker, with the
    requests waited on for more than BEAT seconds since the last one."""
    while True:
        await asyncio.sleep(BEAT)
        waits.report()
        outbox.send((0, True, None), at_once=True)


class _Waits:
    """The worker's `Watcher`: the requests in flight, of which those that last are reported
    to the keeper (a report per request would cost more than the fetch's own bookkeeping)."""

    def __init__(self, outbox: Callable[[], _Outbox]) -> None:
        self.outbox = outbox
        self.open: dict[int, tuple[float, str, str]] = {}  # request -> (since, method, url)
        self.told: set[int] = set()
        self._next = 0

    def request_started(self, method: str, url: str) -> object:
        self._next += 1
        self.open[self._next] = (time.monotonic(), method, url)
        return self._next

    def request_ended(self, token: object, outcome: str) -> None:
        assert isinstance(token, int)
        self.open.pop(token, None)
        if token in self.told:
            self.told.discard(token)
            self.outbox().send((_WAIT, token, ("ended", outcome)))

    def report(self) -> None:
        now = time.monotonic()
        for request, (since, method, url) in self.open.items():
            if request not in self.told and now - since >= BEAT:
                self.told.add(request)
                self.outbox().send((_WAIT, request, ("started", method, url)))


def main() -> None:
    """The worker process: serve the parent until it closes the channel. SIGINT and SIGTERM
    are the parent's to act on (systemd stopping the unit signals every process in it): a
    worker that died of one first would have its calls run in the parent, fetches started
    after the stop; the parent ends its workers itself, by closing the channel."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="mustaple worker: %(message)s")
    with batch_collector():
        asyncio.run(_serve())
