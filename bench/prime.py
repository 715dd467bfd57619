"""Benchmark: prime N must-staple certificates against a responder with pre-signed responses.

For N = 1k, 10k and 100k (the goals: 100k primed within 1.5x of the floor measured in the same
run, under 1 GiB peak RSS, the cost growing linearly with N; 1k at least 20x faster than a
cron loop of `openssl ocsp`):

* setup (timed, not part of the figures): one P-256 CA (`mustaple.testing.CA`), N must-staple
  leaves (one shared leaf key, distinct serials) written as fullchain.pem-style files, and N
  pre-signed OCSP responses; built by a pool of worker processes;
* a responder in its own process on loopback answers from a dict keyed by the request (the
  DER decoded from the GET path, or the POST body), so that the measured process's CPU and RSS
  are the keeper's alone; it still shares the machine's cores with the keeper;
* the measured run, in a fresh process each time: a `Keeper` with a `SqliteStore` in a new
  state directory and one in-memory sink that counts deliveries, timing
  `await keeper.prime(paths)` and its phases from the outside; then every certificate must
  hold a valid good staple, stored and delivered;
* beside it, in the same run: the floor script and, for 1k, the `openssl ocsp` cron loop and the
  `mustaple prime` command (bench/baselines.py).

    .venv/bin/python bench/prime.py              # 1k, 10k, 100k; updates docs/performance.md
    .venv/bin/python bench/prime.py --quick      # 1k only, a smoke test
    .venv/bin/python bench/prime.py --max 10000  # stop after 10k

A size whose predicted setup and run would overrun `--budget` is not run: its figures are
extrapolated from a linear fit of the measured ones and labelled so. The figures go to
docs/performance.md between the `<!-- bench:prime -->` markers only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import compileall
import cProfile
import json
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import cryptography
from cryptography import x509
from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

import mustaple
import mustaple.core.fetchplan
from baselines import Measured, cron_loop, environment_without_proxy, floor_main
from docsection import cpu_model, markers, write_section
from mustaple.adapters.config import CertEntry, Config, KeeperPolicy
from mustaple.adapters.fetch import FetchResult
from mustaple.adapters.sinks import FileSink
from mustaple.adapters.store import AttemptRecord, CertStatus, SqliteStore, StoredStaple
from mustaple.adapters.workers import cores
from mustaple.core.certs import Target
from mustaple.core.delivery import Action, Delivered, Delivery
from mustaple.core.reasons import Rejection
from mustaple.core.request import encode_request, make_cert_id
from mustaple.core.verify import DEFAULT_POLICY, HttpAnswer, Policy, Staple, judge
from mustaple.keeper.keeper import WORKERS_FROM, Keeper, Managed, Primed
from mustaple.testing import CA

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = markers("prime")
SIZES = (1_000, 10_000, 100_000)
GOAL_N, GOAL_FLOOR, GOAL_MIB = 100_000, 1.5, 1024.0  # within 1.5x of the floor's wall time
GOAL_CRON = 20.0  # `mustaple prime` at least this many times faster than the openssl loop
LINEAR_SLACK = 1.25  # ms/cert at the largest N may exceed that at the one before by this factor
CHUNK = 500  # certificates per setup job
SERIAL_BASE = 0x5EED_0000_0000
RECORD = struct.Struct(">HH")  # lengths of one (request DER, response DER) record
PEM = serialization.Encoding.PEM


# --- Setup: the CA, the leaves, the pre-signed responses -----------------------------------------


@dataclass(frozen=True)
class Authority:
    """What every setup worker needs, in picklable form."""

    ca_cert_pem: bytes
    ca_key_pem: bytes
    leaf_public_der: bytes  # the one key every leaf certifies
    url: str
    start: datetime


@dataclass(frozen=True)
class Job:
    """Leaves `first` .. `first + count - 1`, written into `directory`."""

    authority: Authority
    directory: Path
    first: int
    count: int


@dataclass(frozen=True)
class Signer:
    """An Authority loaded into key and certificate objects (once per job)."""

    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    leaf_public: ec.EllipticCurvePublicKey


def new_authority(url: str) -> Authority:
    """A fresh P-256 CA and leaf key; leaves will point at `url` for OCSP."""
    start = datetime.now(UTC).replace(microsecond=0)
    ca = CA(key_type="ec", name="mustaple prime bench", ocsp_url=url, now=start)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    return Authority(
        ca_cert_pem=ca.cert.public_bytes(PEM),
        ca_key_pem=ca.issuing.key_pem,
        leaf_public_der=leaf_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        url=url,
        start=start,
    )


def load_signer(authority: Authority) -> Signer:
    ca_key = serialization.load_pem_private_key(authority.ca_key_pem, None)
    leaf_public = serialization.load_der_public_key(authority.leaf_public_der)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or not isinstance(
        leaf_public, ec.EllipticCurvePublicKey
    ):
        raise TypeError("the bench CA and leaf keys are P-256")
    return Signer(x509.load_pem_x509_certificate(authority.ca_cert_pem), ca_key, leaf_public)


def cert_path(directory: Path, index: int) -> Path:
    return directory / f"{index:06d}.pem"


def issue_leaf(authority: Authority, signer: Signer, index: int) -> x509.Certificate:
    """A must-staple leaf for h<index>.bench.test, serial SERIAL_BASE + index."""
    host = f"h{index}.bench.test"
    aia = x509.AccessDescription(
        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(authority.url)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(signer.ca_cert.subject)
        .public_key(signer.leaf_public)
        .serial_number(SERIAL_BASE + index)
        .not_valid_before(authority.start - timedelta(hours=1))
        .not_valid_after(authority.start + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityInformationAccess([aia]), critical=False)
        .add_extension(x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False)
    )
    return builder.sign(signer.ca_key, hashes.SHA256())


def presign(authority: Authority, signer: Signer, leaf: x509.Certificate) -> bytes:
    """A good response for `leaf`, signed by the CA, valid for three days."""
    response = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            leaf,
            signer.ca_cert,
            hashes.SHA1(),
            ocsp.OCSPCertStatus.GOOD,
            authority.start - timedelta(hours=1),
            authority.start + timedelta(days=3),
            None,
            None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, signer.ca_cert)
        .sign(signer.ca_key, hashes.SHA256())
    )
    return response.public_bytes(serialization.Encoding.DER)


def build_job(job: Job) -> bytes:
    """Write the job's leaves (leaf, then CA); return its packed (request, response) records."""
    signer = load_signer(job.authority)
    records = []
    for index in range(job.first, job.first + job.count):
        leaf = issue_leaf(job.authority, signer, index)
        cert_path(job.directory, index).write_bytes(
            leaf.public_bytes(PEM) + job.authority.ca_cert_pem
        )
        request = encode_request(make_cert_id(signer.ca_cert, leaf.serial_number))
        response = presign(job.authority, signer, leaf)
        records.append(RECORD.pack(len(request), len(response)) + request + response)
    return b"".join(records)


@dataclass
class Workdir:
    """The certificate files and the responses built so far."""

    root: Path
    authority: Authority
    built: int = 0
    seconds: float = 0.0  # setup time so far

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def answers(self) -> Path:
        return self.root / "responses.bin"

    def grow(self, size: int, workers: int) -> None:
        """Build leaves and responses up to `size`, in `workers` processes."""
        self.certs.mkdir(parents=True, exist_ok=True)
        jobs = [
            Job(self.authority, self.certs, first, min(CHUNK, size - first))
            for first in range(self.built, size, CHUNK)
        ]
        start = time.perf_counter()
        with multiprocessing.Pool(workers) as pool, self.answers.open("ab") as out:
            for records in pool.imap(build_job, jobs):
                out.write(records)
        self.seconds += time.perf_counter() - start
        self.built = max(self.built, size)


# --- The responder (its own process) -------------------------------------------------------------


def load_answers(path: Path) -> dict[bytes, bytes]:
    """The packed records as a dict from request DER to response DER."""
    data, offset, answers = path.read_bytes(), 0, {}
    while offset < len(data):
        request_size, response_size = RECORD.unpack_from(data, offset)
        offset += RECORD.size
        request_end = offset + request_size
        answers[data[offset:request_end]] = data[request_end : request_end + response_size]
        offset = request_end + response_size
    return answers


def request_der(method: str, target: str, body: bytes) -> bytes:
    """The OCSP request: the POST body, or the base64 after the last slash of a GET path."""
    if method == "POST":
        return body
    try:
        return base64.b64decode(unquote(target.rsplit("/", 1)[-1]), validate=True)
    except (binascii.Error, ValueError):
        return b""


def http_reply(body: bytes | None) -> bytes:
    if body is None:
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: %d\r\n\r\n"
    )
    return head % len(body) + body


def content_length(headers: list[str]) -> int:
    for header in headers:
        name, _, value = header.partition(":")
        if name.strip().lower() == "content-length":
            return int(value)
    return 0


class AnswerProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, just enough for OCSP GET and POST."""

    def __init__(self, answers: dict[bytes, bytes]) -> None:
        self.answers = answers
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (reply := self.next_reply()) is not None:
            assert self.transport is not None
            self.transport.write(reply)

    def next_reply(self) -> bytes | None:
        """The reply to the first complete request in the buffer (consumed), or None."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        length = content_length(lines[1:])
        if len(self.buffer) < end + 4 + length:
            return None
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        return http_reply(self.answers.get(request_der(method, target, body)))


async def serve_answers(sock: socket.socket, answers: dict[bytes, bytes]) -> None:
    """Answer on `sock` until SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await loop.create_server(lambda: AnswerProtocol(answers), sock=sock, backlog=1024)
    print("ready", flush=True)
    await stop.wait()
    server.close()


def responder_main(fd: str, answers_path: str) -> int:
    answers = load_answers(Path(answers_path))
    asyncio.run(serve_answers(socket.socket(fileno=int(fd)), answers))
    return 0


class Responder:
    """The responder process, serving the responses built so far on a listening socket."""

    def __init__(self, sock: socket.socket, answers: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "_responder", str(sock.fileno()), str(answers)],
            pass_fds=(sock.fileno(),),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit("the responder did not start")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the responder used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# --- The measured run (a fresh process per size) -------------------------------------------------


SINK_WORDS = {"file": "file sink", "count": "counting sink"}  # `--sink`, as the tables say it


@dataclass
class Phases:
    """Seconds spent in each part of `prime`, timed from the outside."""

    load: float = 0.0  # Keeper._load_given: resolve the paths; read, parse, check, restore
    validate: float = 0.0  # verify.judge, called by the fetcher on each answer
    store: float = 0.0  # SqliteStore writes (each one a transaction, synchronous=FULL)
    deliver: float = 0.0  # Keeper.deliver: the batch to the sink, then the status rows
    first_fetch: float = 0.0  # perf_counter when the first fetch started
    last_fetch: float = 0.0  # ... and when the last one ended
    attempts: int = 0
    loaded_mib: float = 0.0  # RSS when the first fetch started: every certificate loaded

    def count(self, result: FetchResult) -> None:
        self.attempts += len(result.attempts)


class CountingSink:
    """A sink that only counts the staples it is given (no files, no reload)."""

    name = "count"

    def __init__(self) -> None:
        self.staples = 0

    async def deliver(self, batch: Sequence[Delivery]) -> list[Delivered]:
        self.staples += sum(1 for d in batch if d.action is Action.STAPLE and d.der)
        return [Delivered(d.key, self.name, changed=True) for d in batch]


class TimedStore(SqliteStore):
    """SqliteStore adding the time of every write to `phases.store` (a write that commits
    its own transaction, as every write does unless its caller opened one)."""

    def __init__(self, path: Path, phases: Phases) -> None:
        super().__init__(path)
        self.phases = phases

    def save_staples(self, items: Sequence[tuple[str, StoredStaple]]) -> list[bool]:
        start = time.perf_counter()
        try:
            return super().save_staples(items)
        finally:
            self.phases.store += time.perf_counter() - start

    def add_all_attempts(self, items: Sequence[tuple[str, Iterable[AttemptRecord]]]) -> None:
        start = time.perf_counter()
        super().add_all_attempts(items)
        self.phases.store += time.perf_counter() - start

    def save_statuses(self, rows: Iterable[tuple[str, CertStatus]]) -> None:
        start = time.perf_counter()
        super().save_statuses(rows)
        self.phases.store += time.perf_counter() - start


class TimedKeeper(Keeper):
    """Keeper timing its loads and its delivery into `phases`."""

    phases: Phases

    async def _load_given(
        self, paths: Sequence[Path], *, refuse: bool
    ) -> tuple[list[Path], dict[Path, Managed | None]]:
        start = time.perf_counter()
        try:
            return await super()._load_given(paths, refuse=refuse)
        finally:
            self.phases.load += time.perf_counter() - start

    async def _refresh_all(
        self,
        due: Sequence[Managed],
        done: set[str] | None = None,
        *,
        started: set[str] | None = None,
    ) -> None:
        phases = self.phases
        phases.first_fetch, phases.loaded_mib = time.perf_counter(), rss_mib("VmRSS")
        try:
            await super()._refresh_all(due, done, started=started)
        finally:
            phases.last_fetch = time.perf_counter()

    async def deliver(self, *, again: bool = False) -> list[Delivered]:
        start = time.perf_counter()
        try:
            return await super().deliver(again=again)
        finally:
            self.phases.deliver += time.perf_counter() - start


def time_validation(phases: Phases) -> None:
    """Make the fetcher's `judge` (the one `fetchplan.judged` calls) add its time to `phases`."""

    def timed(
        answer: HttpAnswer, target: Target, now: datetime, policy: Policy = DEFAULT_POLICY
    ) -> Staple | Rejection:
        start = time.perf_counter()
        try:
            return judge(answer, target, now, policy)
        finally:
            phases.validate += time.perf_counter() - start

    vars(mustaple.core.fetchplan)["judge"] = timed


@dataclass(frozen=True)
class Spec:
    """What the measured process is asked to do."""

    certs: str  # the directory of certificate files
    size: int
    state_dir: str
    concurrency: int
    profile: str | None  # write a cProfile of `prime` here
    processes: int | None = None  # the keeper's worker processes (None: its default)
    sink: str = "file"  # "file": staple files, as the floor writes; "count": none


def rss_mib(field_name: str) -> float:
    """VmRSS or VmHWM of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field_name)


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def config_for(spec: Spec) -> Config:
    """One entry globbing the certificate files, every sink, concurrency and per_host alike."""
    return Config(
        path=Path("bench-prime.toml"),
        state_dir=Path(spec.state_dir),
        certificates=(CertEntry(paths=(str(Path(spec.certs) / "*.pem"),)),),
        sinks={},
        policy=KeeperPolicy(
            concurrency=spec.concurrency, per_host=spec.concurrency, workers=spec.processes
        ),
    )


async def prime_measured(spec: Spec, phases: Phases) -> dict[str, Any]:
    """Prime `spec.size` certificates; the figures and the checks of the outcome."""
    paths = [cert_path(Path(spec.certs), i) for i in range(spec.size)]
    staples = Path(spec.state_dir) / "staples"
    counting = CountingSink()
    sink = FileSink("files", path=f"{staples}/{{stem}}.der") if spec.sink == "file" else counting
    base_mib = rss_mib("VmRSS")
    store = TimedStore(Path(spec.state_dir) / "state.db", phases)
    cpu, start = cpu_seconds(), time.perf_counter()
    workers_cpu = cpu_seconds(resource.RUSAGE_CHILDREN)
    keeper = TimedKeeper(config_for(spec), store=store, sinks={sink.name: sink})
    keeper.phases = phases
    keeper.observers.append(lambda _, result: phases.count(result))
    async with keeper:
        chosen = await prime_profiled(keeper, paths, spec.profile)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    workers_cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - workers_cpu
    stored = len(store.keys())
    store.close()
    return {
        "wall": wall,
        "main_cpu": cpu,
        "workers_cpu": workers_cpu,
        "base_mib": base_mib,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "good": sum(1 for p in chosen if p.phase == "good" and p.state.held),
        "stored": stored,
        "delivered": counting.staples if spec.sink != "file" else len(os.listdir(staples)),
    }


async def prime_profiled(keeper: Keeper, paths: list[Path], profile: str | None) -> list[Primed]:
    """`keeper.prime(paths)`, under cProfile (written to `profile`) when one is asked for."""
    if profile is None:
        return await keeper.prime(paths)
    profiler = cProfile.Profile(time.process_time)  # CPU time: a busy machine blurs it less
    profiler.enable()
    try:
        return await keeper.prime(paths)
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


def keeper_main(spec_json: str) -> int:
    spec = Spec(**json.loads(spec_json))
    phases = Phases()
    time_validation(phases)
    figures = asyncio.run(prime_measured(spec, phases))
    figures.update(asdict(phases), fetch=phases.last_fetch - phases.first_fetch)
    figures["mustaple"] = str(Path(mustaple.__file__).parent)
    print(json.dumps(figures))
    return 0


# --- Orchestration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Floor:
    """The floor script (bench/baselines.py) over `size` certificates: its CPU time and the
    responder's, and the least wall time they add up to on this machine's cores."""

    size: int
    wall: float  # serial, one core
    client_cpu: float
    responder_cpu: float
    good: int

    @property
    def per_cert(self) -> float:
        """Seconds of CPU, client and responder, per certificate."""
        return (self.client_cpu + self.responder_cpu) / self.size

    def wall_for(self, size: int) -> float:
        """The least wall time for `size` certificates, the work spread over every core."""
        return self.per_cert * size / (os.cpu_count() or 1)


@dataclass(frozen=True)
class Run:
    """The figures for one N, measured (or extrapolated from the measured ones)."""

    size: int
    processes: int  # the keeper's worker processes (0: in process)
    setup: float  # seconds to build this many certificates and responses
    wall: float  # seconds of `prime` (with the keeper's set-up and close)
    fetch: float  # seconds from the first fetch started to the last one ended
    attempts: int
    cpu: float  # the keeper process's CPU seconds during `prime`, its workers' included
    main_cpu: float  # ... of which the keeper's own process
    workers_cpu: float  # ... of which its worker processes (start-up included)
    responder_cpu: float
    other_cpu: float  # CPU seconds other processes used meanwhile: noise, when it is high
    base_mib: float  # RSS before the keeper was built (interpreter and imports)
    loaded_mib: float  # RSS when every certificate was loaded, before the first fetch
    peak_mib: float
    load: float
    validate: float
    store: float
    deliver: float
    good: int
    stored: int
    delivered: int
    floor: Floor | None = None  # the floor, measured in the same run (None: extrapolated)
    extrapolated: bool = False
    # each repeat's wall against the floor measured right after it (the machine's speed
    # drifts over minutes: a floor and a prime measured minutes apart can differ by 25%)
    paired: tuple[float, ...] = ()

    @property
    def mode(self) -> str:
        if not self.processes:
            return "in process"
        if self.size < WORKERS_FROM:  # the keeper keeps a batch this small in process
            return f"workers = {self.processes}, but in process (N < {WORKERS_FROM:,})"
        return f"{self.processes} workers"

    @property
    def ms_per_cert(self) -> float:
        return self.wall / self.size * 1000

    @property
    def fetches_per_second(self) -> float:
        return self.attempts / self.fetch if self.fetch else 0.0

    @property
    def rest(self) -> float:
        """HTTP, asyncio and the keeper's own bookkeeping: what no phase timer covers."""
        return self.wall - self.load - self.validate - self.store - self.deliver

    @property
    def complete(self) -> bool:
        return self.extrapolated or self.good == self.stored == self.delivered == self.size


@dataclass
class Bench:
    """The settings of one benchmark run and what it measured so far."""

    sizes: list[int]
    concurrency: int
    workers: int
    modes: list[int]  # the keeper's worker processes, one run of each per N (0: in process)
    budget: float  # seconds for setup and runs together
    profile: Path | None
    repeat: int  # runs per size; the fastest is kept
    sink: str  # where the primes deliver: "file" (staple files) or "count" (none)
    floor_max: int  # the floor runs over at most this many certificates
    cron_size: int  # the openssl cron loop and `mustaple prime` run over this many (0: not)
    runs: list[Run] = field(default_factory=list)
    cron: Measured | None = None  # the `openssl ocsp` loop
    cli: Measured | None = None  # `mustaple prime` over the same files
    started: float = field(default_factory=time.perf_counter)


def measure(bench: Bench, workdir: Workdir, size: int, responder: Responder, processes: int) -> Run:
    """Prime `size` certificates in a fresh process with a fresh state directory, with
    `processes` worker processes (0: in process)."""
    state = tempfile.mkdtemp(prefix=f"state-{size}-", dir=workdir.root)
    profile = str(bench.profile / f"prime-{size}-{processes}.prof") if bench.profile else None
    spec = Spec(str(workdir.certs), size, state, bench.concurrency, profile, processes, bench.sink)
    before = (machine_busy(), children_cpu(), responder.cpu_seconds())
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "_keeper", json.dumps(asdict(spec))],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the keeper run for {size} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.splitlines()[-1])
    print(f"  mustaple imported from {figures.pop('mustaple')}")
    for name in ("first_fetch", "last_fetch"):
        figures.pop(name)
    responder_cpu = responder.cpu_seconds() - before[2]
    keeper_process = children_cpu() - before[1]
    other = machine_busy() - before[0] - keeper_process - responder_cpu
    return Run(
        size=size,
        processes=processes,
        setup=workdir.seconds,
        cpu=keeper_process,
        responder_cpu=responder_cpu,
        other_cpu=max(0.0, other),
        **figures,
    )


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy since boot (every core, from /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    busy = sum(int(v) for v in (user, nice, system, irq, softirq, steal))
    return busy / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of the child processes waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares intercept and slope of two or more points."""
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
        (x - mean_x) ** 2 for x, _ in points
    )
    return mean_y - slope * mean_x, slope


def extrapolate(runs: Sequence[Run], size: int, processes: int) -> Run:
    """Every figure of `size` from a linear fit of the measured runs over N (of one mode)."""
    measured = [r for r in runs if not r.extrapolated and r.processes == processes]
    values: dict[str, Any] = {}
    for name, value in asdict(measured[0]).items():
        if isinstance(value, float) or name in ("attempts", "good", "stored", "delivered"):
            intercept, slope = fit([(r.size, float(getattr(r, name))) for r in measured])
            estimate = intercept + slope * size
            values[name] = estimate if isinstance(value, float) else round(estimate)
    return replace(measured[0], **values, size=size, floor=None, extrapolated=True)


def affordable(bench: Bench, size: int) -> bool:
    """Whether setup and run of `size`, predicted from the runs so far, fit in the budget.

    The first two sizes always run: a linear fit needs two points.
    """
    if len({r.size for r in bench.runs}) < 2:
        return True
    guesses = [extrapolate(bench.runs, size, processes) for processes in bench.modes]
    setup = guesses[0].setup - bench.runs[-1].setup
    predicted = setup + sum(g.wall for g in guesses) * 1.5 * bench.repeat  # 1.5: start, checks
    return time.perf_counter() - bench.started + predicted <= bench.budget


def run_all(bench: Bench, workdir: Workdir, sock: socket.socket) -> None:
    for size in bench.sizes:
        if affordable(bench, size):
            bench.runs += run_size(bench, workdir, size, sock)
        else:
            print(f"N={size:,}: predicted to overrun the {bench.budget:.0f} s budget; extrapolated")
            bench.runs += [extrapolate(bench.runs, size, mode) for mode in bench.modes]


def run_size(bench: Bench, workdir: Workdir, size: int, sock: socket.socket) -> list[Run]:
    """Build up to `size`, then prime `size` certificates `bench.repeat` times in each mode,
    the modes taking turns; the fastest of each."""
    workdir.grow(size, bench.workers)
    print(f"N={size:,}: setup so far {workdir.seconds:.1f} s; priming ...", flush=True)
    responder = Responder(sock, workdir.answers)
    runs: list[Run] = []
    floors = []
    paired: dict[int, list[float]] = {mode: [] for mode in bench.modes}
    try:
        if size == bench.cron_size:
            compare_cron(bench, workdir, size, responder)
        for _ in range(bench.repeat):
            for processes in bench.modes:
                runs.append(measure(bench, workdir, size, responder, processes))
                print(summary(runs[-1]), flush=True)
            floors.append(measure_floor(workdir, min(size, bench.floor_max), responder))
            print(floor_summary(floors[-1], runs[-1]), flush=True)
            for run in runs[-len(bench.modes) :]:
                paired[run.processes].append(run.wall / floors[-1].wall_for(size))
    finally:
        responder.stop()
    floor = min(floors, key=lambda f: f.per_cert)
    return [
        replace(
            min((r for r in runs if r.processes == mode), key=lambda r: r.wall),
            floor=floor,
            paired=tuple(paired[mode]),
        )
        for mode in bench.modes
    ]


def as_installed() -> None:
    """mustaple's bytecode compiled beside its sources, as an installed package has it (pip
    compiles it at install; the standard library's and the dependencies' are there): with
    PYTHONDONTWRITEBYTECODE set (as on the reference machine) and no bytecode, every keeper,
    worker and command process compiled every mustaple module it imported at every start
    (py-spy: about 0.14 s of the 1k command's process, as much in each worker)."""
    compileall.compile_dir(Path(mustaple.__file__).parent, quiet=1)


def measure_floor(workdir: Workdir, size: int, responder: Responder) -> Floor:
    """The floor script over the first `size` files, in its own process."""
    out = Path(tempfile.mkdtemp(prefix=f"floor-{size}-", dir=workdir.root))
    listing = out / "paths.txt"
    listing.write_text("".join(f"{cert_path(workdir.certs, i)}\n" for i in range(size)))
    spec = {"paths": str(listing), "out": str(out / "staples"), "url": workdir.authority.url}
    before = responder.cpu_seconds()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "_floor", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    responder_cpu = responder.cpu_seconds() - before
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"the floor run for {size} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.splitlines()[-1])
    return Floor(size, figures["wall"], figures["cpu"], responder_cpu, figures["good"])


def compare_cron(bench: Bench, workdir: Workdir, size: int, responder: Responder) -> None:
    """The `openssl ocsp` cron loop, then `mustaple prime` (the command), over `size` files."""
    paths = [cert_path(workdir.certs, i) for i in range(size)]
    ca_pem = workdir.root / "ca.pem"
    ca_pem.write_bytes(workdir.authority.ca_cert_pem)
    out = Path(tempfile.mkdtemp(prefix="cron-", dir=workdir.root))
    print(f"N={size:,}: the openssl ocsp cron loop ...", flush=True)
    bench.cron = cron_loop(paths, ca_pem, workdir.authority.url, out)
    print(f"N={size:,}: mustaple prime (the command) ...", flush=True)
    bench.cli = command_prime(bench, workdir, paths)
    for name, measured in (("openssl ocsp loop", bench.cron), ("mustaple prime", bench.cli)):
        figures = f"wall {measured.wall:.2f} s, CPU {measured.cpu:.2f} s, {measured.good:,} good"
        print(f"  {name}: {figures}")
    if bench.cron.good != size or bench.cli.good != size:
        raise SystemExit("a baseline did not get a good response for every certificate")


def command_prime(bench: Bench, workdir: Workdir, paths: Sequence[Path]) -> Measured:
    """`mustaple prime --config ... FILES` with a file sink, as a deploy hook runs it."""
    root = Path(tempfile.mkdtemp(prefix="command-", dir=workdir.root))
    config = root / "mustaple.toml"
    config.write_text(
        f'state_dir = "{root / "state"}"\n'
        f'[[certificates]]\npaths = ["{workdir.certs / "*.pem"}"]\n'
        f'[sinks.files]\ntype = "file"\npath = "{root / "staples"}/{{name}}.der"\n'
        f"[policy]\nconcurrency = {bench.concurrency}\nper_host = {bench.concurrency}\n"
    )
    program = Path(sys.executable).parent / "mustaple"
    cpu, start = children_cpu(), time.perf_counter()
    done = subprocess.run(
        [str(program), "prime", "--config", str(config), *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        env=environment_without_proxy(),
    )
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"mustaple prime failed ({done.returncode}):\n{done.stderr[-3000:]}")
    good = len(list((root / "staples").glob("*.der")))
    return Measured(len(paths), wall, cpu, good)


def floor_summary(floor: Floor, run: Run) -> str:
    least = floor.wall_for(run.size)
    return (
        f"  floor over {floor.size:,}: client CPU {floor.client_cpu / floor.size * 1e6:.0f}"
        f" µs/cert, responder {floor.responder_cpu / floor.size * 1e6:.0f} µs/cert;"
        f" least wall for {run.size:,} on {os.cpu_count()} cores {least:.2f} s;"
        f" mustaple / floor {run.wall / least:.2f}x"
    )


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


# --- Reporting -----------------------------------------------------------------------------------


def summary(run: Run) -> str:
    label = " (extrapolated)" if run.extrapolated else ""
    return (
        f"  N={run.size:,}{label}, {run.mode}: wall {run.wall:.2f} s,"
        f" {run.fetches_per_second:,.0f} fetches/s,"
        f" {run.ms_per_cert:.3f} ms/cert, peak RSS {run.peak_mib:.0f} MiB"
        f" ({run.loaded_mib:.0f} loaded); CPU keeper {run.cpu:.1f} s (main {run.main_cpu:.1f},"
        f" workers {run.workers_cpu:.1f}), responder"
        f" {run.responder_cpu:.1f} s, others {run.other_cpu:.1f} s;"
        f" load {run.load:.2f} s, validate {run.validate:.2f} s, store {run.store:.2f} s,"
        f" deliver {run.deliver:.2f} s, rest {run.rest:.2f} s;"
        f" good {run.good:,}, stored {run.stored:,}, delivered {run.delivered:,}"
    )


def mount_of(path: Path) -> str:
    """The file system type and mount point holding `path`, from /proc/mounts."""
    best = ("?", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        _, point, kind, *_ = line.split()
        inside = str(path).startswith(point.rstrip("/") + "/") or str(path) == point
        if inside and len(point) > len(best[1]):
            best = (kind, point)
    return f"{best[0]} ({best[1]})"


def machine_facts(workdir: Path) -> list[str]:
    return [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores visible",
        f"OS: {platform.system()} {platform.release()} ({platform.machine()})",
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        f"cryptography {cryptography.__version__}, {backend.openssl_version_text()}",
        f"aiohttp {aiohttp.__version__}, SQLite {sqlite3.sqlite_version}",
        f"mustaple: {source_version()}",
        f"state database and certificate files on {mount_of(workdir)}",
    ]


def source_version() -> str:
    """Where the measured mustaple came from: the commit, and whether src/ has changes."""
    where = Path(mustaple.__file__).resolve().parent
    if where != ROOT / "src" / "mustaple":
        return f"imported from {where} (not this tree's src/)"
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changes = " with uncommitted changes in src/" if git("status", "--porcelain", "src") else ""
    return f"src/ at commit {commit}{changes}"


def git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def cell(run: Run, text: str) -> str:
    return f"*{text}*" if run.extrapolated else text


def main_table(runs: Sequence[Run]) -> list[str]:
    lines = [
        "| N | keeper | setup (s) | wall (s) | fetches/s | ms/cert | peak RSS (MiB) "
        "| RSS loaded (MiB) | keeper CPU (s): main + workers | responder CPU (s) "
        "| other CPU (s) | good staples |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        figures = [
            f"{r.size:,}",
            r.mode,
            f"{r.setup:.1f}",
            f"{r.wall:.2f}",
            f"{r.fetches_per_second:,.0f}",
            f"{r.ms_per_cert:.3f}",
            f"{r.peak_mib:.0f}",
            f"{r.loaded_mib:.0f}",
            f"{r.main_cpu:.1f} + {r.workers_cpu:.1f}",
            f"{r.responder_cpu:.1f}",
            "-" if r.extrapolated else f"{r.other_cpu:.1f}",
            "extrapolated" if r.extrapolated else f"{r.good:,}",
        ]
        lines.append("| " + " | ".join(cell(r, f) for f in figures) + " |")
    return lines


def phase_table(runs: Sequence[Run]) -> list[str]:
    lines = [
        "| N | keeper | load | fetching (first to last) | of which validate | of which store "
        "| deliver | rest (HTTP, asyncio, keeper) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        validate = f"{r.validate:.2f} s ({r.validate / r.wall:.0%})" if r.validate else "in workers"
        figures = [
            f"{r.size:,}",
            r.mode,
            *(f"{v:.2f} s ({v / r.wall:.0%})" for v in (r.load, r.fetch)),
            validate,
            *(f"{v:.2f} s ({v / r.wall:.0%})" for v in (r.store, r.deliver, r.rest)),
        ]
        lines.append("| " + " | ".join(cell(r, f) for f in figures) + " |")
    return lines


def floor_of(runs: Sequence[Run], run: Run) -> Floor | None:
    """The floor measured with `run`, or, for an extrapolated run, the last one measured."""
    floors = [r.floor for r in runs if r.floor is not None and r.size <= run.size]
    return run.floor or (floors[-1] if floors else None)


def cron_verdict(bench: Bench) -> list[str]:
    if bench.cron is None or bench.cli is None:
        return []
    size = bench.cli.size
    ratio = bench.cron.wall / bench.cli.wall
    met = "met" if ratio >= GOAL_CRON else "**not met**"
    lines = [
        f"- {size:,} certificates: `mustaple prime` at least {GOAL_CRON:.0f}x faster "
        f"than the openssl ocsp loop: {met} ({ratio:.1f}x)"
    ]
    floor = next((r.floor for r in bench.runs if r.size == size and r.floor), None)
    if floor is not None:
        least = floor.wall_for(size)
        lines.append(
            f"  (the floor's least wall for {size:,}, {least:.2f} s with no process start-up, "
            f"is {bench.cron.wall / least:.1f}x the loop: the most any primer could reach here)"
        )
    return lines


def judged(bench: Bench) -> list[Run]:
    """The runs the goals are judged on: the last mode asked for (by default, the keeper's
    own choice of worker processes)."""
    return [r for r in bench.runs if r.processes == bench.modes[-1]]


def verdict(bench: Bench) -> list[str]:
    """Whether the goal is met, one line per criterion, with the figure judged."""
    runs = judged(bench)
    goal = next((r for r in runs if r.size == GOAL_N), None)
    if goal is None:
        return [
            f"Goal: not judged: N = {GOAL_N:,} was not part of this run.",
            "",
            *cron_verdict(bench),
        ]
    before = runs[runs.index(goal) - 1]
    ratio = goal.ms_per_cert / before.ms_per_cert
    versus, judged_how = floor_ratio(runs, goal)
    checks = [
        (f"{GOAL_N:,} primed within {GOAL_FLOOR}x of the floor's wall time", versus <= GOAL_FLOOR,
         f"{versus:.2f}x: {judged_how}"),
        (f"peak RSS under {GOAL_MIB:.0f} MiB", goal.peak_mib < GOAL_MIB,
         f"{goal.peak_mib:.0f} MiB"),
    ]  # fmt: skip
    if not goal.extrapolated:
        linear = f"linear: ms/cert at {GOAL_N:,} within {LINEAR_SLACK}x of that at {before.size:,}"
        checks.append((linear, ratio <= LINEAR_SLACK, f"{ratio:.2f}x"))
    how = "extrapolated, so only predicted" if goal.extrapolated else "measured"
    lines = [f"Goal ({how}, keeper {goal.mode}):", ""]
    for text, ok, figure in checks:
        lines.append(f"- {text}: {'met' if ok else '**not met**'} ({figure})")
    floor = floor_of(runs, goal)
    if goal.paired and floor is not None:
        fastest = goal.wall / floor.wall_for(goal.size)
        lines.append(
            f"  (the fastest prime against the fastest floor of the run, the most severe "
            f"reading: {fastest:.2f}x, {goal.wall:.1f} s against {floor.wall_for(goal.size):.1f} s)"
        )
    return lines + cron_verdict(bench)


def floor_ratio(runs: Sequence[Run], goal: Run) -> tuple[float, str]:
    """mustaple's wall time over the floor's, as the goal is judged, and how: the median of
    each prime against the floor measured right after it (the machine's speed drifts within
    a run: the floor's CPU per certificate has moved by 20 to 40% between two measurements
    minutes apart), else the prime against the floor of the run."""
    if goal.paired:
        each = ", ".join(f"{ratio:.2f}x" for ratio in goal.paired)
        median = statistics.median(goal.paired)
        return median, f"the median of each prime against the floor measured after it: {each}"
    floor = floor_of(runs, goal)
    if floor is None:
        return float("inf"), "no floor measured"
    least = floor.wall_for(goal.size)
    return goal.wall / least, f"{goal.wall:.1f} s against {least:.1f} s"


def floor_table(runs: Sequence[Run]) -> list[str]:
    """mustaple against the floor, per N: the floor's CPU and the least wall it allows."""
    cores = os.cpu_count() or 1
    lines = [
        "| N | keeper | floor measured over | floor client CPU (µs/cert) "
        f"| floor responder CPU (µs/cert) | least wall on {cores} cores (s) | mustaple wall (s) "
        "| mustaple / floor |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        floor = floor_of(runs, r)
        if floor is None:
            continue
        least = floor.wall_for(r.size)
        figures = [
            f"{r.size:,}",
            r.mode,
            f"{floor.size:,}",
            f"{floor.client_cpu / floor.size * 1e6:.0f}",
            f"{floor.responder_cpu / floor.size * 1e6:.0f}",
            f"{least:.2f}",
            f"{r.wall:.2f}",
            f"**{r.wall / least:.2f}x**",
        ]
        lines.append("| " + " | ".join(cell(r, f) for f in figures) + " |")
    return lines


def cron_table(bench: Bench) -> list[str]:
    """The openssl loop, the command and the keeper over the same certificates."""
    if bench.cron is None or bench.cli is None:
        return []
    rows = [
        ("`openssl ocsp` cron loop", bench.cron.wall, bench.cron.cpu),
        ("`mustaple prime` (the command, file sink)", bench.cli.wall, bench.cli.cpu),
    ]
    for run in (r for r in bench.runs if r.size == bench.cli.size):
        name = f"`Keeper.prime` ({run.mode}, {SINK_WORDS[bench.sink]})"
        rows.append((name, run.wall, run.cpu + run.responder_cpu))
    lines = [
        f"{bench.cli.size:,} certificates, the same files and responder "
        "(CPU: the process and what it started; the keeper's row adds the responder's):",
        "",
        "| who | wall (s) | CPU (s) | openssl loop / this, wall | openssl loop / this, CPU |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, wall, cpu in rows:
        ratio_wall, ratio_cpu = bench.cron.wall / wall, bench.cron.cpu / cpu
        lines.append(f"| {name} | {wall:.2f} | {cpu:.2f} | {ratio_wall:.1f}x | {ratio_cpu:.1f}x |")
    return lines


def where_time_goes(runs: Sequence[Run], sink: str) -> list[str]:
    """Per-certificate cost of each phase at the largest measured N, in each mode."""
    largest = max(r.size for r in runs if not r.extrapolated)
    lines: list[str] = []
    for run in (r for r in runs if r.size == largest and not r.extrapolated):
        lines += [*time_of(run, sink), ""]
    return lines[:-1]


def time_of(run: Run, sink: str) -> list[str]:
    per_cert = {
        "load (read, parse, check the issuer's signature, look up the stored staple)": run.load,
        "validate (`verify.judge`)": run.validate,
        "store (SQLite writes: attempts, staple, status)": run.store,
        f"deliver (one batch to the {SINK_WORDS[sink]}, and the status rows)": run.deliver,
        "rest: HTTP client, asyncio and the keeper's bookkeeping": run.rest,
    }
    if not run.validate:
        del per_cert["validate (`verify.judge`)"]  # in the workers, where it is not timed
    lines = [
        f"Where the time goes at N = {run.size:,}, keeper {run.mode} (µs per certificate of "
        "wall time, share of wall):",
        "",
    ]
    for name, seconds in sorted(per_cert.items(), key=lambda item: -item[1]):
        lines.append(f"- {name}: {seconds / run.size * 1e6:,.0f} µs ({seconds / run.wall:.0%})")
    return lines


SINKS = {
    "file": "one file sink writing each staple to its own file (atomically, made durable "
    "together), as the floor writes one per certificate (`--sink count`: none)",
    "count": "one in-memory sink that counts deliveries (`--sink count`: the floor still "
    "writes a file per certificate)",
}


def method_notes(bench: Bench) -> list[str]:
    best = f"the fastest of {bench.repeat} runs" if bench.repeat > 1 else "one run"
    text = (
        "One P-256 CA, N must-staple leaves (fullchain files), N pre-signed good responses "
        "served from memory by a responder in its own process on loopback. Each N is primed in "
        "a fresh process: `Keeper.prime(paths)` with a new SqliteStore (WAL, synchronous=FULL) "
        f"and {SINKS[bench.sink]}; concurrency and per_host "
        f"{bench.concurrency}; {best} per N and mode. Each N is primed in every mode, one after "
        "the other: *in process* (`policy.workers = 0`) and with worker processes "
        "(`policy.workers = K`: loading and fetching in K other processes, the keeper's own "
        "process stepping the life cycles, storing and delivering; *keeper CPU* adds the "
        "workers' CPU, start-up included, to the main process's). Peak RSS is that process's "
        "ru_maxrss (the main process's only), interpreter "
        f"and imports included ({bench.runs[0].base_mib:.0f} MiB before the keeper is built); "
        "*RSS loaded* is taken when every certificate is loaded, before the first fetch. "
        "fetches/s counts HTTP exchanges from the first fetch started to the last one ended. "
        "The 2 cores are shared: the responder's CPU time is in the table, and so is what other "
        "processes on the machine used meanwhile (*other CPU*: when it is high, the figures are "
        "noisy). Setup (building certificates and responses) is not part of the figures; "
        "mustaple's bytecode is compiled first, as an installed package has it. "
        "*Italic* rows are extrapolated from a linear fit of the measured ones, because running "
        f"them would have overrun the {bench.budget:.0f} s budget. How to profile, and what the "
        "profile says: bench/README.md."
    )
    return textwrap.wrap(text, width=95)


def floor_notes() -> list[str]:
    text = (
        "*The floor* (bench/baselines.py), measured in the same run against the same responder: "
        "a minimal serial loop doing only the necessary work per certificate (read and parse "
        "the PEM file, build the request, one keep-alive POST on a plain socket, parse the "
        "response and check its signature, write it to a file, check the issuer's signature on "
        "the leaf), over the first N files (at most --floor-max). Its CPU time plus the "
        "responder's, spread over every core, is the least wall time any primer could take "
        "here; mustaple / floor is mustaple's wall time over that. The floor is measured "
        "after each round of primes; the table pairs the fastest prime with the fastest floor "
        "of the run, and the goal is judged on the median of each prime against the floor "
        "measured right after it (the machine's speed drifts within a run)."
    )
    return textwrap.wrap(text, width=95)


def section(bench: Bench, command: str, workdir: Path) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        BEGIN,
        "## Priming: N certificates against a responder with pre-signed responses",
        "",
        f"Written by `bench/prime.py` on {when}. Command, from the repository root:",
        "",
        f"    {command}",
        "",
        *(f"- {fact}" for fact in machine_facts(workdir)),
        "",
        *method_notes(bench),
        "",
        *main_table(bench.runs),
        "",
        *phase_table(bench.runs),
        "",
        *floor_notes(),
        "",
        *floor_table(bench.runs),
        "",
        *cron_table(bench),
        "",
        *verdict(bench),
        "",
        *where_time_goes(bench.runs, bench.sink),
        END,
    ]
    return "\n".join(lines) + "\n"


# --- Main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N = 1,000 only (a smoke test)")
    parser.add_argument("--max", type=int, default=SIZES[-1], help="stop after this N")
    parser.add_argument("--concurrency", type=int, default=64, help="and per_host (default 64)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="setup processes")
    parser.add_argument(
        "--modes",
        default=f"0,{cores()}",
        help="the keeper's worker processes, one run per N of each, comma-separated; 0: in "
        "process; the last is judged (default: 0 and one per core, as the keeper chooses)",
    )
    parser.add_argument("--budget", type=float, default=900, help="seconds (default 900)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size, the fastest kept")
    parser.add_argument("--profile", type=Path, help="write a cProfile of each prime here")
    parser.add_argument(
        "--floor-max", type=int, default=10_000, help="floor over at most this N (default 10k)"
    )
    parser.add_argument(
        "--cron", type=int, default=1_000, help="N for the openssl loop and the command (0: none)"
    )
    parser.add_argument(
        "--sink",
        choices=("file", "count"),
        default="file",
        help="the primes write staple files, as the floor does (file, the default), or only "
        "count them (count)",
    )
    parser.add_argument("--workdir", type=Path, help="a new directory to build in, kept afterwards")
    parser.add_argument("--doc", type=Path, default=DOC, help="where to write the figures")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def command_line(argv: list[str]) -> str:
    return " ".join([".venv/bin/python", "bench/prime.py", *argv])


def bench_from(args: argparse.Namespace) -> Bench:
    sizes = [s for s in SIZES if s <= (SIZES[0] if args.quick else args.max)]
    if not sizes:
        raise SystemExit(f"--max must be at least {SIZES[0]}")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.workdir and args.workdir.exists() and any(args.workdir.iterdir()):
        raise SystemExit(f"--workdir {args.workdir}: not empty; give a new directory")
    return Bench(
        sizes,
        args.concurrency,
        args.workers,
        [int(mode) for mode in args.modes.split(",")],
        args.budget,
        args.profile,
        max(1, args.repeat),
        args.sink,
        args.floor_max,
        args.cron if args.cron in sizes else 0,
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    bench = bench_from(args)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="mustaple-prime-"))
    as_installed()
    with listening_socket() as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        workdir = Workdir(root, new_authority(url))
        try:
            run_all(bench, workdir, sock)
        finally:
            if not args.workdir:
                shutil.rmtree(root, ignore_errors=True)
    if not args.no_write and not args.profile:
        write_section(args.doc, section(bench, command_line(argv), root), BEGIN, END)
        print(f"figures written to {args.doc}")
    print("\n".join(verdict(bench)))
    return 0 if all(r.complete for r in bench.runs) else 1


ROLES: dict[str, Callable[..., int]] = {
    "_responder": responder_main,
    "_keeper": keeper_main,
    "_floor": floor_main,
}

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in ROLES:
        sys.exit(ROLES[sys.argv[1]](*sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
