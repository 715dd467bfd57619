"""Benchmark: upstream OCSP requests per certificate per day, for fleets of 1, 4 and 8 servers.

Three ways to staple the same certificates, side by side in one run:

* mustaple fleet on Redis: N members, each a `Keeper` with its own SQLite file joined to the
  fleet by `mustaple.keeper.fleet.Fleet`, against a real redis-server that the script starts on
  loopback. The members live in this process and share a fake clock, as in
  tests/test_fleet.py: the clock jumps to the next moment a member has something due, and
  those members tick. Days pass in seconds.
* mustaple alone: the same N keepers without a coordinator (no Redis): each fetches for
  itself.
* nginx's own stapling: real nginx (`ssl_stapling on; ssl_stapling_verify on;` and
  `ssl_stapling_responder` pointing at a counting responder), one process per server. Its
  wall clock is accelerated by libfaketime (`FAKETIME="+0 xSPEED"`, the monotonic clock left
  alone so its timeouts stay real): nginx's refresh rule reads the wall clock, so a simulated
  day passes in a few minutes. Clients hand-shake with status_request
  (`mustaple.adapters.probe`) with every certificate on every server in turn, all the time
  (steady traffic). Eight servers of one worker each mirror the fleet sizes (a fleet of N is the
  first N); one more server with 4 workers (`reuseport` spreads the connections) shows that each
  worker fetches on its own.

Every side uses `mustaple.testing.OCSPResponder` (fresh answers, thisUpdate = now, nextUpdate
= now + validity), whose request log is what is counted. The keepers use the default policy
(refresh at half the window, jittered up to a tenth of it earlier). After a warm-up (half a
window for mustaple, an hour for nginx), the requests in the measured span are divided by
the certificates and the days. The script also checks, before every tick, that every member
holds a valid staple for every certificate, and reports the certificates that ever lacked one.

    .venv/bin/python bench/fleet.py             # about 4 minutes; updates docs/performance.md
    .venv/bin/python bench/fleet.py --quick     # about 30 s, a smoke test
    .venv/bin/python bench/fleet.py --no-write  # print only

Needs redis-server, nginx and libfaketime (Debian: `apt-get install -y redis-server nginx
faketime`). The figures go to docs/performance.md between the `<!-- bench:fleet -->` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from cryptography.x509.oid import NameOID

from docsection import cpu_model, markers, write_section
from mustaple.adapters.config import CertEntry, Config, FleetConfig
from mustaple.adapters.fetch import FetchResult
from mustaple.adapters.probe import ProbeError, probe
from mustaple.adapters.store import SqliteStore
from mustaple.keeper.fleet import Fleet
from mustaple.keeper.keeper import CertFile, Keeper
from mustaple.testing import CA, Leaf, OCSPResponder, ResponderThread
from processes import free_port, stop, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = markers("fleet")
REDIS = "/usr/bin/redis-server"
NGINX = "/usr/sbin/nginx"
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
INSTALL_HINT = "install them: apt-get install -y redis-server nginx faketime"
SIZES = (1, 4, 8)
VALIDITIES = (timedelta(days=4), timedelta(days=1))
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
WORKERS = 4  # worker_processes of the extra nginx server
SPREAD = 8  # handshakes per certificate per round with that server (to reach every worker)


# --- Processes: free ports, and a redis-server of our own -----------------------------------------


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A redis-server on loopback without persistence; yields its URL."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "redis.conf"
    settings = [
        "bind 127.0.0.1",
        f"port {port}",
        f"dir {directory}",
        'save ""',
        "appendonly no",
        f"logfile {directory / 'redis.log'}",
    ]
    config.write_text("\n".join(settings) + "\n")
    process = subprocess.Popen([REDIS, str(config)], stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


# --- The mustaple side: members under a fake clock ------------------------------------------------


@dataclass
class FakeClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class Plan:
    """One simulated fleet: `members` keepers, on Redis when `redis_url` is given."""

    validity: timedelta
    members: int
    redis_url: str | None
    certificates: int
    windows: int  # the measured span, in validity windows

    @property
    def setup(self) -> str:
        return "mustaple fleet on Redis" if self.redis_url else "mustaple alone (no Redis)"

    @property
    def warmup(self) -> timedelta:
        return self.validity / 2

    @property
    def span(self) -> timedelta:
        return self.validity * self.windows


@dataclass
class Member:
    name: str
    keeper: Keeper
    fleet: Fleet | None


@dataclass
class Watch:
    """What the members held, looked at just before each tick of the measured span."""

    lacking: set[str] = field(default_factory=set)  # certificates a member had no valid staple for
    least_left: float = 1.0  # the smallest share of a window left on a held staple

    def look(self, members: Sequence[Member], now: datetime) -> None:
        for member in members:
            for managed in member.keeper.managed.values():
                held = managed.held
                if held is None or held.effective_expiry <= now:
                    self.lacking.add(managed.name)
                else:
                    self.least_left = min(self.least_left, held.fraction_left(now))


@dataclass(frozen=True)
class SimResult:
    plan: Plan
    requests: int  # upstream requests in the measured span
    per_day: float  # per certificate per day
    lacking: int  # certificates that a member ever lacked a valid staple for
    least_left: float
    gap: float  # mean gap between a certificate's fetches (one member's, alone), share of window
    adopted: int  # staples adopted from other members
    steps: int
    seconds: float  # wall time of the simulation


def issue_leaves(ca: CA, url: str, count: int, live: Path) -> list[Leaf]:
    leaves = []
    for n in range(count):
        leaf = ca.issue(f"c{n}.test", ocsp_urls=[url], must_staple=True)
        leaf.write(live / f"c{n}.test")
        leaves.append(leaf)
    return leaves


@dataclass
class Sim:
    """What the members of one simulation share."""

    plan: Plan
    directory: Path  # the certificates under live/, each member's state under its name
    clock: FakeClock
    fetches: list[tuple[str, str, datetime]] = field(default_factory=list)  # member, name, time


async def join(stack: AsyncExitStack, sim: Sim, name: str) -> Member:
    """One member: a keeper with its own SQLite file, in the fleet when there is Redis."""
    plan, directory, clock = sim.plan, sim.directory, sim.clock
    fleet_config = None
    if plan.redis_url:
        fleet_config = FleetConfig(plan.redis_url, prefix=f"{directory.parent.name}:", member=name)
    config = Config(
        path=directory / name / "mustaple.toml",
        state_dir=directory / name,
        certificates=(CertEntry(paths=(str(directory / "live" / "*" / "fullchain.pem"),)),),
        sinks={},
        fleet=fleet_config,
    )
    store = SqliteStore(config.state_dir / "state.db")
    stack.callback(store.close)

    def fetched(cert: CertFile, result: FetchResult) -> None:
        sim.fetches.append((name, cert.name, clock()))

    dice = random.Random(f"{directory.parent.name}-{name}").random
    keeper = Keeper(config, store=store, sinks={}, clock=clock, dice=dice, observers=[fetched])
    await stack.enter_async_context(keeper)
    await keeper.scan()
    fleet = None
    if fleet_config is not None:
        fleet = Fleet(fleet_config)
        await fleet.start(keeper)
        stack.push_async_callback(fleet.close)
    return Member(name, keeper, fleet)


async def step(members: Sequence[Member], clock: FakeClock, watch: Watch | None) -> None:
    """To the next moment a member has something due; look at what all hold; those tick."""
    wakes = [(m, m.keeper.next_wakeup()) for m in members]
    clock.now = max(clock.now, min(w for _, w in wakes if w is not None))
    if watch is not None:
        watch.look(members, clock.now)
    await asyncio.gather(*(m.keeper.tick() for m, w in wakes if w is not None and w <= clock.now))


async def simulate(plan: Plan, directory: Path) -> SimResult:
    started = time.perf_counter()
    sim = Sim(plan, directory, FakeClock(datetime.now(UTC).replace(microsecond=0)))
    clock = sim.clock
    measured_from = clock.now + plan.warmup
    end = measured_from + plan.span
    ca = CA(key_type="ec", now=clock.now - DAY)
    watch, steps = Watch(), 0
    responder = OCSPResponder(ca, clock=clock, validity=plan.validity, cache_for=timedelta(0))
    async with responder, AsyncExitStack() as stack:
        for leaf in issue_leaves(ca, responder.url, plan.certificates, directory / "live"):
            responder.add(leaf)
        members = [await join(stack, sim, f"m{n}") for n in range(plan.members)]
        await asyncio.gather(*(m.keeper.tick() for m in members))
        while clock.now < end:
            await step(members, clock, watch if clock.now >= measured_from else None)
            steps += 1
        adopted = sum(m.fleet.adopted for m in members if m.fleet is not None)
        counted = [r for r in responder.requests if measured_from <= r.time < end]
    return SimResult(
        plan=plan,
        requests=len(counted),
        per_day=len(counted) / plan.certificates / (plan.span / DAY),
        lacking=len(watch.lacking),
        least_left=watch.least_left,
        gap=mean_gap(sim.fetches, plan),
        adopted=adopted,
        steps=steps,
        seconds=time.perf_counter() - started,
    )


def mean_gap(fetches: list[tuple[str, str, datetime]], plan: Plan) -> float:
    """The mean time between two fetches of a certificate, as a share of the window: by any
    member in a fleet, by one member alone (the start-up fetch included)."""
    times: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for member, name, at in fetches:
        times[(name, "" if plan.redis_url else member)].append(at)
    gaps = [b - a for series in times.values() for a, b in itertools.pairwise(series)]
    return statistics.fmean(g / plan.validity for g in gaps) if gaps else float("nan")


async def run_mustaple(args: argparse.Namespace, redis_url: str, root: Path) -> list[SimResult]:
    results: list[SimResult] = []
    for validity in VALIDITIES:
        for url in (redis_url, None):
            for members in SIZES:
                plan = Plan(validity, members, url, args.certificates, args.windows)
                directory = root / f"run{len(results)}" / "work"
                results.append(await simulate(plan, directory))
                print(summary(results[-1]), flush=True)
    return results


def summary(result: SimResult) -> str:
    plan = result.plan
    return (
        f"  {plan.setup}, validity {days(plan.validity)}, {plan.members} member(s):"
        f" {result.requests} requests in {days(plan.span)} for {plan.certificates} certificates"
        f" = {result.per_day:.3f} per certificate per day; lacking {result.lacking},"
        f" least left {result.least_left:.2f}, mean gap {result.gap:.3f} of a window,"
        f" adopted {result.adopted}; {result.steps} steps in {result.seconds:.1f} s"
    )


def days(value: timedelta) -> str:
    count = value / DAY
    return f"{count:g} day" if count == 1 else f"{count:g} days"


# --- The nginx side: real nginx with its own stapling, its clock accelerated ----------------------


class FastClock:
    """The wall clock of one nginx under libfaketime, as seen from here: calibrated from a
    moment of it (`set`), running `speed` times faster than ours. Before that: our clock."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.fake = 0.0
        self.real = 0.0

    def set(self, fake: float, real: float) -> None:
        self.fake, self.real = fake, real

    def at(self, real: float) -> float:
        return self.fake + (real - self.real) * self.speed if self.real else real

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.at(time.time()), UTC)


@dataclass
class Site:
    """One nginx server: its processes, its responder (with its clock), its traffic."""

    directory: Path
    workers: int
    leaves: list[Leaf]
    clock: FastClock
    responder: ResponderThread
    port: int = 0
    plain: int = 0  # a plain HTTP port answering nginx's $msec, to read its clock
    process: subprocess.Popen[bytes] | None = None
    handshakes: int = 0
    unstapled: int = 0  # handshakes without a staple
    unstapled_late: int = 0  # of which after the warm-up
    first: tuple[int, int, int] = (0, 0, 0)  # the first round: handshakes, unstapled, fetches

    @property
    def rounds_per_certificate(self) -> int:
        return SPREAD if self.workers > 1 else 1

    def config(self) -> str:
        d = self.directory
        temp = " ".join(
            f"{kind}_temp_path {d}/{kind}_temp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        lines = [
            f"daemon off; master_process on; worker_processes {self.workers}; user root;",
            f"pid {d}/nginx.pid; error_log {d}/error.log warn;",
            "events { worker_connections 256; }",
            f"http {{ access_log off; {temp}",
            f"  server {{ listen 127.0.0.1:{self.plain}; location / {{ return 200 $msec; }} }}",
        ]
        for n, leaf in enumerate(self.leaves):
            files = d / "certs" / f"c{n}"
            reuse = " reuseport" if n == 0 and self.workers > 1 else ""
            lines += [
                f"  server {{ listen 127.0.0.1:{self.port} ssl{reuse};",
                f"    server_name {name_of(leaf)};",
                f"    ssl_certificate {files}/fullchain.pem;"
                f" ssl_certificate_key {files}/privkey.pem;",
                "    ssl_protocols TLSv1.2 TLSv1.3;",
                "    ssl_stapling on; ssl_stapling_verify on;",
                f"    ssl_trusted_certificate {files}/root.pem;",
                f"    ssl_stapling_responder {self.responder.url}; }}",
            ]
        return "\n".join([*lines, "}"]) + "\n"

    def start(self) -> None:
        for n, leaf in enumerate(self.leaves):
            leaf.write(self.directory / "certs" / f"c{n}")
        self.port, self.plain = free_port(), free_port()
        config = self.directory / "nginx.conf"
        config.write_text(self.config())
        env = {
            **os.environ,
            "LD_PRELOAD": FAKETIME,
            "FAKETIME": f"+0 x{self.clock.speed:g}",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
        log = self.directory / "error.log"
        command = [NGINX, "-p", str(self.directory), "-c", str(config), "-e", str(log)]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env)
        wait_for_port(self.port, self.process, "nginx")
        self.clock.set(*self.read_clock())

    def read_clock(self) -> tuple[float, float]:
        """nginx's wall clock and ours at the same moment (the middle of one request)."""
        before = time.time()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.plain}/", timeout=5) as answer:
            fake = float(answer.read())
        return fake, (before + time.time()) / 2

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
        self.responder.stop()

    def errors(self) -> list[str]:
        path = self.directory / "error.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        serious = ("[error]", "[crit]", "[alert]", "[emerg]", "OCSP")
        return [line for line in text.splitlines() if any(word in line for word in serious)]


def name_of(leaf: Leaf) -> str:
    (common_name,) = leaf.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common_name.value)


@dataclass(frozen=True)
class NginxRun:
    sites: list[Site]
    started: float  # our wall clock when the traffic started
    warm: float  # ... when the warm-up ended
    ended: float
    rounds: int
    speeds: list[float]  # each site's clock speed, measured over the run


def new_site(root: Path, n: int, *, workers: int, ca: CA, leaves: list[Leaf], speed: float) -> Site:
    """A server with its responder running; nginx itself waits for `start`."""
    clock = FastClock(speed)
    responder = ResponderThread(ca, clock=clock, validity=VALIDITIES[0], cache_for=timedelta(0))
    responder.start()
    for leaf in leaves:
        responder.add(leaf)
    site = Site(root / f"nginx{n}", workers, leaves, clock, responder)
    site.directory.mkdir(parents=True)
    return site


def hand_shake(site: Site, leaf: Leaf, warm: bool) -> None:
    try:
        result = probe("127.0.0.1", site.port, servername=name_of(leaf), timeout=5)
    except ProbeError as exc:
        raise SystemExit(f"nginx on port {site.port}: {exc}") from None
    site.handshakes += 1
    if result.staple is None:
        site.unstapled += 1
        site.unstapled_late += warm


def one_round(sites: Sequence[Site], warm: bool) -> None:
    """A handshake with every certificate of every site (several with a many-worker site)."""
    for site in sites:
        for leaf in site.leaves:
            for _ in range(site.rounds_per_certificate):
                hand_shake(site, leaf, warm)


def run_nginx(args: argparse.Namespace, root: Path) -> NginxRun:
    """Eight one-worker servers and one with WORKERS workers, under steady traffic."""
    ca = CA(key_type="ec", now=datetime.now(UTC) - DAY)
    leaves = [ca.issue(f"c{n}.test", must_staple=True) for n in range(args.nginx_certificates)]
    shapes = [1] * max(SIZES) + [WORKERS]
    sites: list[Site] = []
    try:
        for n, workers in enumerate(shapes):
            sites.append(new_site(root, n, workers=workers, ca=ca, leaves=leaves, speed=args.speed))
            sites[-1].start()
        warmup, span = HOUR.total_seconds() / args.speed, args.nginx_hours * 3600 / args.speed
        started = time.time()
        one_round(sites, warm=False)
        for site in sites:
            site.first = (site.handshakes, site.unstapled, len(site.responder.requests))
        rounds = 1
        while time.time() < started + warmup + span:
            one_round(sites, warm=time.time() >= started + warmup)
            rounds += 1
        ended = time.time()
        speeds = [measured_speed(s) for s in sites]
        problems = [line for s in sites for line in s.errors()]
        if problems:
            print("nginx said:\n  " + "\n  ".join(problems[:10]))
    finally:
        for site in sites:
            site.stop()
    return NginxRun(sites, started, started + warmup, ended, rounds, speeds)


def measured_speed(site: Site) -> float:
    fake, real = site.read_clock()
    return (fake - site.clock.fake) / (real - site.clock.real)


@dataclass(frozen=True)
class NginxFigures:
    servers: int
    workers: int
    requests: int
    per_day: float
    unstapled_late: int
    first: tuple[int, int, int]  # the first round: handshakes, unstapled, fetches


def nginx_figures(run: NginxRun, sites: Sequence[Site], certificates: int) -> NginxFigures:
    """Requests in the measured span of each site's own clock, per day, summed over `sites`."""
    requests, per_day = 0, 0.0
    for site in sites:
        begin, end = site.clock.at(run.warm), site.clock.at(run.ended)
        times = [r.time.timestamp() for r in site.responder.requests]
        counted = sum(begin <= t < end for t in times)
        requests += counted
        per_day += counted / certificates / ((end - begin) / DAY.total_seconds())
    first = tuple(sum(site.first[n] for site in sites) for n in range(3))
    return NginxFigures(
        servers=len(sites),
        workers=sites[0].workers,
        requests=requests,
        per_day=per_day,
        unstapled_late=sum(s.unstapled_late for s in sites),
        first=(first[0], first[1], first[2]),
    )


def worker_gaps(run: NginxRun) -> list[float]:
    """Minutes (nginx's clock) between two fetches of a certificate by a one-worker server."""
    gaps = []
    for site in run.sites:
        if site.workers != 1:
            continue
        times: dict[int | None, list[float]] = defaultdict(list)
        for served in site.responder.requests:
            times[served.serial].append(served.time.timestamp())
        for series in times.values():
            gaps += [(b - a) / 60 for a, b in itertools.pairwise(series)]
    return gaps


def nginx_summary(run: NginxRun, rows: Sequence[NginxFigures]) -> list[str]:
    lines = [
        f"  nginx: {run.rounds} rounds of handshakes in {run.ended - run.started:.0f} s;"
        f" clock speeds {min(run.speeds):.1f} to {max(run.speeds):.1f}"
    ]
    for row in rows:
        handshakes, unstapled, fetches = row.first
        lines.append(
            f"  nginx, {shape(row)}: {row.requests} requests = {row.per_day:.2f} per certificate"
            f" per day; first round: {fetches} fetches, {unstapled} of {handshakes} handshakes"
            f" without a staple; {row.unstapled_late} without after the warm-up"
        )
    return lines


# --- Reporting ------------------------------------------------------------------------------------


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def shape(row: NginxFigures) -> str:
    return f"{plural(row.servers, 'server')} x {plural(row.workers, 'worker')}"


def days_long(value: timedelta) -> str:
    """`value` as an adjective: "4-day"."""
    return f"{value / DAY:g}-day"


@dataclass(frozen=True)
class Row:
    setup: str
    size: str
    per_day: float
    base: float  # the same setup's figure for one member (one worker)
    without: str  # how often a staple was missing


def mustaple_rows(results: Sequence[SimResult]) -> list[Row]:
    base = {(r.plan.validity, r.plan.redis_url): r.per_day for r in results if r.plan.members == 1}
    rows = []
    for result in results:
        plan = result.plan
        without = (
            f"{result.lacking} of {plan.certificates} certificates on any member"
            f" (least left: {result.least_left:.0%} of a window)"
        )
        setup = f"{plan.setup}, {days_long(plan.validity)} responses"
        size = plural(plan.members, "member")
        rows.append(
            Row(setup, size, result.per_day, base[(plan.validity, plan.redis_url)], without)
        )
    return rows


def nginx_rows(figures: Sequence[NginxFigures]) -> list[Row]:
    rows = []
    for row in figures:
        handshakes, unstapled, _ = row.first
        without = (
            f"first round: {unstapled} of {handshakes} handshakes; afterwards: {row.unstapled_late}"
        )
        setup = "nginx's own stapling, 4-day responses"
        rows.append(Row(setup, shape(row), row.per_day, figures[0].per_day, without))
    return rows


def table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| setup | members/workers | upstream requests per certificate per day | vs 1 member"
        " | without a valid staple |",
        "|---|---|---:|---:|---|",
    ]
    for row in rows:
        ratio = row.per_day / row.base
        lines.append(
            f"| {row.setup} | {row.size} | {row.per_day:.2f} | {ratio:.1f}x | {row.without} |"
        )
    return lines


def wrapped(text: str) -> list[str]:
    return textwrap.wrap(text, width=95, break_on_hyphens=False)


def method(args: argparse.Namespace, run: NginxRun) -> list[str]:
    spans = " and ".join(
        f"{days(v * args.windows)} for {days_long(v)} responses" for v in VALIDITIES
    )
    mustaple = (
        f"**mustaple**: {args.certificates} must-staple certificates (P-256) and N members in "
        "one process sharing a fake clock (it jumps to the next moment a member has something "
        "due; the members due tick), each a `Keeper` with its own SQLite file and the default "
        "policy (refresh at half the window, moved earlier by up to a tenth of it at random). "
        "*Fleet on Redis*: each member also a `mustaple.keeper.fleet.Fleet` (lease 30 s) on one "
        "real redis-server on loopback; *alone*: no coordinator. The responder "
        "(`mustaple.testing.OCSPResponder`) answers afresh each time (thisUpdate = now, "
        "nextUpdate = now + validity). Counted: the requests in its log after a warm-up of half "
        f"a window, over {args.windows} windows ({spans}), divided by the certificates and the "
        "days. *Without a valid staple*: just before every tick of that span, every member must "
        "hold a valid staple for every certificate; the certificates that ever lacked one on "
        "some member are counted."
    )
    nginx = (
        f"**nginx** {nginx_version()}, measured: {args.nginx_certificates} certificates (a "
        "`server` each, chosen by SNI) with `ssl_stapling on; ssl_stapling_verify on; "
        "ssl_stapling_responder` pointing at an OCSPResponder of its own. Eight servers (nginx "
        "processes) of one worker each, a fleet of N being the first N, and one server of "
        f"{WORKERS} workers (`listen ... reuseport` spreads the connections over them). Their "
        f'wall clock runs {args.speed:g} times faster under libfaketime (`FAKETIME="+0 '
        f"x{args.speed:g}\"`, with `FAKETIME_DONT_FAKE_MONOTONIC=1` so that nginx's timeouts "
        "stay real); each responder's clock is set from its server's `$msec` and the speed "
        f"checked at the end ({min(run.speeds):.1f} to {max(run.speeds):.1f}). Steady traffic: "
        "`mustaple.adapters.probe` (pyOpenSSL, status_request) hand-shakes with every "
        f"certificate of every server in turn, {SPREAD} times with the {WORKERS}-worker one, "
        "without pause: "
        f"{run.rounds} rounds, one every {round_minutes(run):.1f} minutes of nginx's clock. "
        f"Counted: the requests after nginx's first hour, over {args.nginx_hours:g} hours of "
        "its clock."
    )
    return [*wrapped(mustaple), "", *wrapped(nginx)]


def round_minutes(run: NginxRun) -> float:
    speed = statistics.median(run.speeds)
    return (run.ended - run.started) * speed / 60 / run.rounds


def nginx_version() -> str:
    done = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=False)
    return done.stderr.strip().removeprefix("nginx version: nginx/")


def reading_mustaple(results: Sequence[SimResult]) -> str:
    four, one = VALIDITIES
    big = max(SIZES)
    fleet = {(r.plan.validity, r.plan.members): r for r in results if r.plan.redis_url}
    alone = {(r.plan.validity, r.plan.members): r for r in results if not r.plan.redis_url}
    lacking = sum(r.lacking for r in results)
    return (
        f"On Redis, a fleet asks the CA about as often as one member: with {days_long(four)} "
        f"responses, {fleet[(four, big)].per_day:.2f} requests per certificate per day for {big} "
        f"members, {fleet[(four, 1)].per_day:.2f} for one, while {big} keepers alone ask "
        f"{alone[(four, big)].per_day:.2f}, {big} times as many. A staple is fetched again after "
        "0.4 to 0.5 of its window, so the rate is 2 to 2.5 divided by the validity in days, "
        f"whatever the size of the fleet: {days_long(one)} responses cost four times as many "
        f"requests ({fleet[(one, big)].per_day:.2f} for {big} members). The mean gap between two "
        f"fetches of a certificate is {alone[(four, 1)].gap:.3f} of a window for a keeper alone, "
        f"{fleet[(four, 1)].gap:.3f} for a fleet of one and {fleet[(four, big)].gap:.3f} for a "
        f"fleet of {big}: the member whose jittered refresh point comes first fetches, so a "
        "larger fleet refreshes a little earlier in the window, towards 0.4. The "
        f"counts are of whole requests (about {results[0].plan.windows / 0.45:.0f} per "
        "certificate and fetcher in the span), so differences of a few per cent between rows "
        "are noise. No member ever lacked a valid "
        f"staple after start-up ({lacking} certificates over all the runs)."
    )


def reading_nginx(figures: Sequence[NginxFigures], run: NginxRun, fleet_big: float) -> str:
    one, *_, many = figures
    big = next(f for f in figures if f.servers == max(SIZES))
    handshakes, unstapled, fetches = many.first
    gap = statistics.median(worker_gaps(run))
    return (
        "nginx refreshes an hour after each good fetch whatever the validity (the rule in "
        "ngx_event_openssl_stapling.c: `refresh = max(min(nextUpdate - 5 min, now + 1 h), now "
        "+ 5 min)`, and now + 5 min after an error), at the first handshake after that, each "
        f"worker process for itself. Measured: a median of {gap:.1f} minutes between two "
        f"fetches by one worker (1440 / {gap:.1f} = {1440 / gap:.1f} a day; the count in the "
        f"table is of whole requests in {run_hours(run):g} hours), {one.per_day:.1f} requests "
        f"per certificate per day for one worker, {big.per_day:.0f} for {big.servers} servers, "
        f"{many.per_day:.0f} for one server of {many.workers} workers. Derived from the rule: "
        "M servers of W workers make about 24 x M x W requests per certificate per day under "
        "steady traffic, whatever the validity (above 65 minutes); with `worker_processes "
        f"auto` on 2 cores, {big.servers} servers make about {24 * big.servers * 2}. For "
        f"{big.servers} servers of one worker and {days_long(VALIDITIES[0])} responses, that "
        f"is {big.per_day / fleet_big:.0f} times what a mustaple fleet on Redis asks. And "
        "lazily: the first handshake with each certificate on each worker got no staple (on "
        f"the {many.workers}-worker server, {unstapled} of the first {handshakes} handshakes, "
        f"and {fetches} fetches), which a must-staple client refuses."
    )


def run_hours(run: NginxRun) -> float:
    speed = statistics.median(run.speeds)
    return round((run.ended - run.warm) * speed / 3600, 1)


def section(
    *,
    args: argparse.Namespace,
    command: str,
    results: Sequence[SimResult],
    run: NginxRun,
    figures: Sequence[NginxFigures],
    seconds: float,
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [*mustaple_rows(results), *nginx_rows(figures)]
    lines = [
        BEGIN,
        "## Fleet mode: upstream OCSP requests per certificate per day",
        "",
        f"Written by `bench/fleet.py` on {when}, in {seconds / 60:.1f} minutes. Command, from",
        "the repository root:",
        "",
        f"    {command}",
        "",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores visible",
        f"- Python {platform.python_version()}, redis-server {redis_version()},"
        f" redis-py {redis.__version__}, nginx {nginx_version()}, libfaketime {faketime_version()}",
        "",
        *method(args, run),
        "",
        *table(rows),
        "",
        *wrapped(reading_mustaple(results)),
        "",
        *wrapped(reading_nginx(figures, run, fleet_rate(results))),
        END,
    ]
    return "\n".join(lines) + "\n"


def fleet_rate(results: Sequence[SimResult]) -> float:
    """What the largest fleet on Redis asks with the longest validity."""
    return next(
        r.per_day
        for r in results
        if r.plan.redis_url and r.plan.members == max(SIZES) and r.plan.validity == VALIDITIES[0]
    )


def redis_version() -> str:
    done = subprocess.run([REDIS, "--version"], capture_output=True, text=True, check=False)
    words = done.stdout.split()
    return next((w.removeprefix("v=") for w in words if w.startswith("v=")), "?")


def faketime_version() -> str:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "libfaketime"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


# --- Main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short spans, a smoke test")
    parser.add_argument("--certificates", type=int, default=20, help="mustaple (default 20)")
    parser.add_argument("--windows", type=int, default=8, help="validity windows measured")
    parser.add_argument("--nginx-certificates", type=int, default=10, help="default 10")
    parser.add_argument("--nginx-hours", type=float, default=24, help="nginx's hours measured")
    parser.add_argument("--speed", type=float, default=600, help="nginx's clock speed-up")
    parser.add_argument("--doc", type=Path, default=DOC, help="where to write the figures")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.quick:
        args.windows, args.nginx_hours, args.certificates = 1, 2.0, 10
        args.nginx_certificates = 4
    return args


def missing() -> list[str]:
    return [p for p in (REDIS, NGINX, FAKETIME) if not Path(p).exists()]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if absent := missing():
        raise SystemExit(f"missing: {', '.join(absent)}; {INSTALL_HINT}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mustaple-fleet-") as temp:
        root = Path(temp)
        with redis_server(root / "redis") as url:
            results = asyncio.run(run_mustaple(args, url, root))
        print("nginx ...", flush=True)
        run = run_nginx(args, root)
    singles = [s for s in run.sites if s.workers == 1]
    figures = [nginx_figures(run, singles[:n], args.nginx_certificates) for n in SIZES]
    figures.append(nginx_figures(run, [run.sites[-1]], args.nginx_certificates))
    print("\n".join(nginx_summary(run, figures)))
    seconds = time.perf_counter() - started
    print(f"done in {seconds:.0f} s")
    command = " ".join([".venv/bin/python", "bench/fleet.py", *argv])
    text = section(
        args=args, command=command, results=results, run=run, figures=figures, seconds=seconds
    )
    if args.no_write:
        print(text)
    else:
        write_section(args.doc, text, BEGIN, END)
        print(f"figures written to {args.doc}")
    return 0 if all(r.lacking == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
