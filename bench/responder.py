"""Benchmark: the local OCSP responder under load, next to nginx serving the same bytes.

Four servers on loopback answer the same OCSP response to HTTP GETs from `wrk` (256
connections, 2 threads, `--latency`), in the same run, in alternating rounds:

* mustaple: `mustaple.serve.web.start_http`, the HTTP endpoint as `mustaple run` serves it (the
  fast path of `mustaple.serve.fastpath` in front of aiohttp, every answer counted in the metrics),
  in its own process (this script with `--serve`), whose keeper holds valid staples for
  `--certificates` certificates, fetched from a throwaway CA responder that is stopped before
  the load: only the keeper's memory answers. wrk asks for one certificate's RFC 5019 GET URL.
* aiohttp floor: in the same process, a one-line aiohttp handler returning the same bytes on
  the same path: what any responder built on aiohttp pays before doing anything (mustaple's
  responder was one until the fast path).
* asyncio floor: in the same process, an asyncio protocol that writes the same HTTP answer
  (fixed bytes, made once) at each read: the least any asyncio server pays per request (the
  event loop, a receive and a send); the distance from it to mustaple is mustaple's own work.
* nginx: the same DER as a static file, `worker_processes 1` (one event loop, like mustaple).

Two loads: *saturated*, the issue's command (every connection sends its next request as soon
as the answer arrives), and *paced*, where each connection waits a random 0 to 2 x `PACE_MS`
between requests (a load well under saturation), for the latency of a server not queueing.
Each round also records the CPU time per request of the server and of wrk, and so how many
of the machine's cores the two kept busy, and what else the machine did meanwhile: a round
during which other work kept more than `NOISY_CORES` busy is run again (up to `TRIES` times
in all; the quietest is kept). Figures are medians of the rounds.
The goal (issue 17): at least nginx's requests per second and a p99 no worse than nginx's in
the same run, at 256 connections; paced, a p99 under 1 ms. wrk, the servers and Python share
the machine's cores.

    .venv/bin/python bench/responder.py             # 3 rounds of 10 s per side and load
    .venv/bin/python bench/responder.py --quick     # 1 round of 3 s, a smoke test
    .venv/bin/python bench/responder.py --no-write  # print only

Needs `wrk` and `nginx` (Debian: `apt-get install -y wrk nginx`). The figures go to
docs/performance.md between the `<!-- bench:responder -->` markers only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import aiohttp
from aiohttp import web

from docsection import cpu_model, markers, write_section
from mustaple.adapters.config import CertEntry, Config, HttpConfig
from mustaple.adapters.store import SqliteStore
from mustaple.core.request import encode_request, get_url, make_cert_id
from mustaple.keeper.keeper import Keeper
from mustaple.serve.localresponder import OCSP_RESPONSE
from mustaple.serve.metrics import Metrics
from mustaple.serve.web import start_http
from mustaple.testing import CA, OCSPResponder
from processes import free_port, stop, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = markers("responder")
NGINX = "/usr/sbin/nginx"
CONNECTIONS, THREADS = 256, 2
PACE_MS = 100  # paced load: each connection waits this long between requests, on average
GOAL_RATIO, GOAL_PACED_P99_MS = 1.0, 1.0  # saturated: the p99 no worse than nginx's
NOISY_CORES, TRIES = 0.25, 3  # a round is run again while other work took more cores
MUSTAPLE, FLOOR, NGINX_SIDE = "mustaple", "aiohttp floor", "nginx"
ASYNCIO_FLOOR = "asyncio floor"
SATURATED, PACED = "saturated", "paced"
INSTALL_HINT = "install them: apt-get install -y wrk nginx"
TICKS = os.sysconf("SC_CLK_TCK")


# --- The mustaple side (its own process) --------------------------------------------------------


def bench_config(directory: Path) -> Config:
    pattern = str(directory / "live" / "*" / "fullchain.pem")
    return Config(
        path=directory / "mustaple.toml",
        state_dir=directory / "state",
        certificates=(CertEntry(paths=(pattern,)),),
        sinks={},
    )


async def stapled_keeper(keeper: Keeper, directory: Path, certificates: int) -> None:
    """Issue `certificates` certificates and let `keeper` fetch their staples from a CA
    responder that stops right after."""
    ca = CA(now=datetime.now(UTC) - timedelta(days=1))
    async with OCSPResponder(ca) as upstream:
        for n in range(certificates):
            leaf = ca.issue(f"c{n}.bench.test", ocsp_urls=[upstream.url])
            upstream.add(leaf)
            leaf.write(directory / "live" / f"c{n}.bench.test")
        await keeper.scan()
        await keeper.tick()
    held = sum(m.held is not None for m in keeper.managed.values())
    if held != certificates:
        raise SystemExit(f"only {held} of {certificates} certificates have a staple")


async def start_site(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
    return runner, runner.addresses[0][1]


def floor_app(body: bytes) -> web.Application:
    """The least an aiohttp responder can do: the same bytes, whatever the request."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": OCSP_RESPONSE})

    app = web.Application()
    app.router.add_get("/ocsp/{request:.*}", answer)
    return app


class _Fixed(asyncio.Protocol):
    """The asyncio floor: the same answer, made once, written at each read."""

    def __init__(self, wire: bytes) -> None:
        self.wire = wire
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(self.wire)


async def start_fixed(body: bytes) -> tuple[asyncio.Server, int]:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {OCSP_RESPONSE}\r\nContent-Length: {len(body)}"
    wire = head.encode() + b"\r\n\r\n" + body
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Fixed(wire), "127.0.0.1", 0, backlog=1024)
    return server, server.sockets[0].getsockname()[1]


async def serve(directory: Path, certificates: int) -> None:
    """Serve mustaple's responder and the two floors until SIGTERM; once serving, print one
    JSON line: the three ports, one certificate's GET path and its staple (hex)."""
    store = SqliteStore(directory / "state" / "state.db")
    async with Keeper(bench_config(directory), store=store, sinks={}) as keeper:
        await stapled_keeper(keeper, directory, certificates)
        managed = min(keeper.managed.values(), key=lambda m: m.name)
        assert managed.held is not None
        ours = await start_http(keeper, HttpConfig(port=0), metrics=Metrics(keeper))
        port = ours.addresses[0][1]
        floor, floor_port = await start_site(floor_app(managed.held.der))
        fixed, fixed_port = await start_fixed(managed.held.der)
        request = encode_request(make_cert_id(managed.target.issuer, managed.target.serial))
        ready = {
            "port": port,
            "floor_port": floor_port,
            "fixed_port": fixed_port,
            "path": get_url("/ocsp", request),
            "staple": managed.held.der.hex(),
        }
        print(json.dumps(ready), flush=True)
        await until_terminated()
        await ours.cleanup()
        await floor.cleanup()
        fixed.close()
    store.close()


async def until_terminated() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


# --- The servers, seen from the benchmark -------------------------------------------------------


@dataclass(frozen=True)
class Side:
    label: str
    url: str
    pid: int  # the server's process: its CPU time (and its children's) is measured


@contextmanager
def mustaple_sides(directory: Path, certificates: int) -> Iterator[tuple[list[Side], bytes]]:
    """The responder process; yields mustaple's side, the floors', and the staple."""
    command = [sys.executable, __file__, "--serve", str(directory)]
    process = subprocess.Popen(
        [*command, "--certificates", str(certificates)], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise SystemExit("the mustaple responder process did not start")
        ready = json.loads(line)
        sides = [
            Side(label, f"http://127.0.0.1:{ready[key]}{ready['path']}", process.pid)
            for label, key in (
                (MUSTAPLE, "port"),
                (FLOOR, "floor_port"),
                (ASYNCIO_FLOOR, "fixed_port"),
            )
        ]
        yield sides, bytes.fromhex(ready["staple"])
    finally:
        stop(process)


@contextmanager
def nginx_side(directory: Path, staple: bytes) -> Iterator[Side]:
    """nginx (one worker) serving `staple` as a static file."""
    directory.mkdir(parents=True)
    (directory / "staple.der").write_bytes(staple)
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(nginx_config(directory, port))
    command = [NGINX, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, "nginx")
        yield Side(NGINX_SIDE, f"http://127.0.0.1:{port}/staple.der", process.pid)
    finally:
        stop(process)


def nginx_config(directory: Path, port: int) -> str:
    temp = " ".join(
        f"{kind}_temp_path {directory}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "daemon off; master_process on; worker_processes 1; user root;\n"
        f"pid {directory}/nginx.pid; error_log {directory}/error.log warn;\n"
        "events { worker_connections 2048; }\n"
        f"http {{ access_log off; {temp} keepalive_requests 1000000;\n"
        f"  server {{ listen 127.0.0.1:{port} backlog=1024; root {directory};\n"
        "    location = /staple.der { default_type application/ocsp-response; } } }\n"
    )


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


def machine_busy_seconds() -> float:
    """CPU time the machine's cores have spent busy so far (not idle, not waiting for I/O),
    from /proc/stat: every process's, and the kernel's own."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / TICKS


def children_cpu_seconds() -> float:
    """CPU time used so far by the processes this one ran and waited for (wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time used so far by process `pid` and its live children (nginx's workers): in
    user space, and in the kernel."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    user = kernel = 0
    for each in [pid, *map(int, children)]:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        user, kernel = user + int(fields[11]), kernel + int(fields[12])  # utime, stime
    return user / TICKS, kernel / TICKS


# --- wrk ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    rate: float  # requests per second
    p99_ms: float
    cpu_us: float  # server CPU time per request, microseconds
    user_us: float  # of which in user space (the rest: in the kernel)
    wrk_cpu_us: float  # wrk's CPU time per request, microseconds
    other_cores: float  # cores kept busy by anything but the server and wrk
    errors: str  # wrk's complaints (socket errors, non-2xx answers), or ""


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_command(url: str, seconds: int, script: Path | None) -> list[str]:
    paced = ["-s", str(script)] if script else []
    return [
        "wrk",
        f"-c{CONNECTIONS}",
        f"-t{THREADS}",
        f"-d{seconds}s",
        "--latency",
        *paced,
        url,
    ]


def run_wrk(side: Side, seconds: int, script: Path | None) -> Round:
    (user, kernel), wrk_before = cpu_seconds(side.pid), children_cpu_seconds()
    busy_before = machine_busy_seconds()
    command = wrk_command(side.url, seconds, script)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    user_after, kernel_after = cpu_seconds(side.pid)
    user, used = user_after - user, user_after + kernel_after - user - kernel
    wrk_used = children_cpu_seconds() - wrk_before
    other = machine_busy_seconds() - busy_before - used - wrk_used
    return parse_wrk(output, (used, user), wrk_used, max(other, 0.0) / seconds)


def parse_wrk(output: str, cpu: tuple[float, float], wrk_cpu: float, other_cores: float) -> Round:
    """The round in wrk's `output`; `cpu` is the server's CPU time, in all and in user
    space."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)$", output, re.M)
    done = re.search(r"^\s+(\d+) requests in", output, re.M)
    if rate is None or p99 is None or done is None:
        raise SystemExit(f"cannot read wrk's output:\n{output}")
    errors = re.findall(r"^\s*(Socket errors:.*|Non-2xx or 3xx responses:.*)$", output, re.M)
    count = max(int(done[1]), 1)
    p99_ms = float(p99[1]) * _UNITS_MS[p99[2]]
    cpu_us, user_us = (seconds / count * 1e6 for seconds in cpu)
    wrk_cpu_us = wrk_cpu / count * 1e6
    return Round(
        float(rate[1]), p99_ms, cpu_us, user_us, wrk_cpu_us, other_cores, "; ".join(errors)
    )


@dataclass(frozen=True)
class Result:
    rounds: dict[tuple[str, str], list[Round]]  # by (load, side)

    def median(self, load: str, side: str, what: str) -> float:
        values: list[float] = [getattr(r, what) for r in self.rounds[load, side]]
        return statistics.median(values)

    def rate(self, side: str, load: str = SATURATED) -> float:
        return self.median(load, side, "rate")

    def p99(self, side: str, load: str = SATURATED) -> float:
        return self.median(load, side, "p99_ms")

    def cpu(self, side: str) -> float:
        return self.median(SATURATED, side, "cpu_us")

    def user_cpu(self, side: str) -> float:
        return self.median(SATURATED, side, "user_us")

    def wrk_cpu(self, side: str) -> float:
        return self.median(SATURATED, side, "wrk_cpu_us")

    def cores(self, side: str) -> tuple[float, float, float]:
        """Cores kept busy, saturated: by the server, by wrk, by anything else."""
        rate, other = self.rate(side), self.median(SATURATED, side, "other_cores")
        return rate * self.cpu(side) / 1e6, rate * self.wrk_cpu(side) / 1e6, other

    def mean_ms(self, side: str) -> float:
        """The mean latency, saturated, by Little's law: connections over rate."""
        return CONNECTIONS / self.rate(side) * 1000

    @property
    def ratio(self) -> float:
        return self.rate(MUSTAPLE) / self.rate(NGINX_SIDE)

    @property
    def met(self) -> bool:
        return self.ratio >= GOAL_RATIO and self.tail_met and self.paced_met

    @property
    def tail_met(self) -> bool:
        return self.p99(MUSTAPLE) <= self.p99(NGINX_SIDE)

    @property
    def paced_met(self) -> bool:
        return self.p99(MUSTAPLE, PACED) < GOAL_PACED_P99_MS


def measure(sides: list[Side], rounds: int, seconds: int, script: Path) -> Result:
    """Warm every side up, then run the rounds, each load in turn, the sides' order reversed
    every other round so that drift hits them alike."""
    for side in sides:
        run_wrk(side, 2, None)
    results: dict[tuple[str, str], list[Round]] = {}
    for n in range(rounds):
        for load, paced in ((SATURATED, None), (PACED, script)):
            for side in sides if n % 2 == 0 else sides[::-1]:
                measured = quiet_round(side, load, seconds, paced)
                results.setdefault((load, side.label), []).append(measured)
    return Result(results)


def quiet_round(side: Side, load: str, seconds: int, script: Path | None) -> Round:
    """One round; run again (`TRIES` times at most) while something else on the machine kept
    more than `NOISY_CORES` busy, and keep the quietest."""
    tries: list[Round] = []
    while len(tries) < TRIES and (not tries or tries[-1].other_cores > NOISY_CORES):
        measured = run_wrk(side, seconds, script)
        tries.append(measured)
        print(
            f"  {load:>9} {side.label:>13}: {measured.rate:9,.0f} req/s,"
            f" p99 {measured.p99_ms:6.2f} ms, CPU/request: server"
            f" {measured.cpu_us:5.1f} µs (user {measured.user_us:4.1f}),"
            f" wrk {measured.wrk_cpu_us:5.1f} µs;"
            f" other {measured.other_cores:.2f} cores"
        )
    return min(tries, key=lambda r: r.other_cores)


# --- Reporting ----------------------------------------------------------------------------------


def machine_facts() -> list[str]:
    cpu = cpu_model()
    nginx = subprocess.run([NGINX, "-v"], check=True, capture_output=True, text=True).stderr
    wrk = subprocess.run(["wrk", "-v"], check=False, capture_output=True, text=True).stdout
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"CPU: {cpu}, {os.cpu_count()} cores visible, shared by wrk and the server under load",
        f"OS: {platform.system()} {platform.release()} ({platform.machine()}); load average"
        f" before the run: {load}",
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__} (asyncio loop)",
        f"{nginx.strip().removeprefix('nginx version: ')}, {' '.join(wrk.split()[:2])}",
    ]


def table(result: Result, sides: list[str]) -> list[str]:
    rows = [
        f"| {side} | {result.rate(side):,.0f} | {result.p99(side):.2f}"
        f" | {result.mean_ms(side):.2f} | {result.cpu(side):.1f}"
        f" | {result.user_cpu(side):.1f} + {result.cpu(side) - result.user_cpu(side):.1f}"
        f" | {result.wrk_cpu(side):.1f}"
        f" | {' + '.join(f'{n:.2f}' for n in result.cores(side))}"
        f" | {result.rate(side, PACED):,.0f} | {result.p99(side, PACED):.2f} |"
        for side in sides
    ]
    return [
        "| server | saturated: requests/s | p99 (ms) | mean (ms) | server CPU per request (µs)"
        " | of which user + kernel (µs) | wrk CPU per request (µs) | cores busy: server + wrk"
        " + other | paced: requests/s | p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]


def analysis(result: Result) -> list[str]:
    """What the figures say, one paragraph per point (the first is the verdict)."""
    ours, floor, nginx = (result.cpu(side) for side in (MUSTAPLE, FLOOR, NGINX_SIDE))
    floor_ratio = result.rate(FLOOR) / result.rate(NGINX_SIDE)
    fixed_ratio = result.rate(ASYNCIO_FLOOR) / result.rate(NGINX_SIDE)
    user = result.user_cpu
    target = result.p99(NGINX_SIDE)  # the saturated p99 to reach, in ms
    bound = CONNECTIONS / (target / 1000)
    verdict = "**met**" if result.met else "**not met**"
    if not result.met:
        missed = [
            name
            for name, ok in (
                ("rate", result.ratio >= GOAL_RATIO),
                ("p99", result.tail_met),
                ("paced p99", result.paced_met),
            )
            if not ok
        ]
        verdict += f" ({', '.join(missed)})"
    server, client, other = result.cores(MUSTAPLE)
    cores = os.cpu_count() or 1
    tail = result.p99(MUSTAPLE) / result.mean_ms(MUSTAPLE)
    needed = CONNECTIONS * tail / (target / 1000)  # requests/s for the p99 goal
    points = [
        f"Ratio mustaple / nginx, saturated: **{result.ratio:.2f}** (goal >= {GOAL_RATIO});"
        f" mustaple's p99: **{result.p99(MUSTAPLE):.2f} ms** (goal: no more than nginx's"
        f" {target:.2f} ms); paced p99 **{result.p99(MUSTAPLE, PACED):.2f} ms** (goal <"
        f" {GOAL_PACED_P99_MS:g} ms)."
        f" The goal is {verdict}.",
        f"CPU per request: mustaple {ours:.1f} µs, nginx {nginx:.1f} µs, the aiohttp floor"
        f" {floor:.1f} µs (a do-nothing aiohttp handler: {floor_ratio:.2f} of nginx's rate)."
        f" In user space: mustaple {user(MUSTAPLE):.1f} µs, the asyncio floor"
        f" {user(ASYNCIO_FLOOR):.1f} µs (its rate {fixed_ratio:.2f} of nginx's), nginx"
        f" {user(NGINX_SIDE):.1f} µs; the rest is the kernel's (loopback TCP, the event loop's"
        " wait). mustaple's own work is the distance from the asyncio floor, about"
        f" {user(MUSTAPLE) - user(ASYNCIO_FLOOR):.1f} µs: a request head asked again, alone in"
        " its read, is looked up by its bytes (one dictionary look-up), and the bytes sent"
        " for it last are written again while their answer holds (the same keeper at the"
        " same revision, max-age and their Date the same second, the staple valid), counted"
        " once.",
        f"Latency, saturated: wrk keeps all {CONNECTIONS} connections busy, so the mean latency"
        f" is {CONNECTIONS} divided by the rate (Little's law): {result.mean_ms(MUSTAPLE):.2f} ms"
        f" for mustaple, {result.mean_ms(NGINX_SIDE):.2f} ms for nginx. A p99 under"
        f" {target:.2f} ms needs more than {bound:,.0f} requests/s and a tail close to the"
        f" mean; here the p99 is {tail:.1f} times the mean for mustaple,"
        f" {result.p99(NGINX_SIDE) / result.mean_ms(NGINX_SIDE):.1f} for nginx (p99"
        f" {result.p99(NGINX_SIDE):.2f} ms). Both serve from one thread that takes the"
        " connections ready at each turn of its event loop, so a request waits up to about two"
        f" turns; and the machine's {cores} cores are shared: saturated, mustaple kept"
        f" {server:.2f} core busy, wrk {client:.2f} and anything else {other:.2f}, so the"
        " three busy threads (the server's and wrk's two) take turns on the cores.",
    ]
    limits = (
        f"What limits the p99: with the tail measured here ({tail:.1f} times the mean), a p99"
        f" of nginx's {target:.2f} ms takes about {needed:,.0f} requests/s, which one thread"
        f" reaches only at {1e6 / needed:.1f} µs of CPU per request or less. mustaple's one"
        f" Python thread spends {ours:.1f} µs (its core {server:.0%} busy), nginx's one C"
        f" worker {nginx:.1f} µs; most of it is the same for both: the kernel's loopback TCP"
        " (a receive and a send per request) and the event loop."
    )
    paced = (
        "Under a load the server keeps up with, the latency is the server's own: paced (each"
        f" connection waits {PACE_MS} ms on average between requests), mustaple's p99 is"
        f" {result.p99(MUSTAPLE, PACED):.2f} ms at {result.rate(MUSTAPLE, PACED):,.0f}"
        f" requests/s, nginx's {result.p99(NGINX_SIDE, PACED):.2f} ms."
    )
    slow = not result.tail_met
    return [*points, *([limits] if slow else []), paced]


def wrapped(text: str, first: str = "", rest: str = "") -> list[str]:
    return textwrap.wrap(text, 92, initial_indent=first, subsequent_indent=rest)


def section(result: Result, command: str, args: argparse.Namespace) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    errors = [
        f"- {load} {side}: {r.errors}"
        for (load, side), rounds in result.rounds.items()
        for r in rounds
        if r.errors
    ]
    how = (
        f"Each load runs `{' '.join(wrk_command('URL', args.seconds, None))}` against each"
        f" server, {args.rounds} alternating rounds after a 2 s warm-up; figures are the"
        " medians. *saturated*: the issue's command. *paced*: the same with a wrk script in"
        f" which each connection waits a random 0 to {2 * PACE_MS} ms between requests."
        " *mustaple*: `start_http`, the endpoint of `mustaple run` (the fast path in front of"
        " aiohttp, answers counted in the metrics), in its own process, with a keeper holding"
        f" staples for {args.certificates} certificates; one certificate's RFC 5019 GET URL."
        " *aiohttp floor*: a one-line aiohttp handler returning the same bytes, in the same"
        " process. *asyncio floor*: an asyncio protocol writing the same HTTP answer (bytes"
        " made once) at each read, in the same process: the least an asyncio server pays per"
        " request. *nginx*: the same DER as a static file, one worker process. *user + kernel*:"
        " the server's CPU time in user space and in the kernel. *mean*: the mean"
        " latency by Little's law (connections over rate). *cores busy*: CPU time over wall"
        " time; *other*: the machine's busy time (/proc/stat) less the server's and wrk's, what"
        " else the machine did (near 0 when it is quiet: the kernel's loopback TCP work is"
        " mostly counted in the server's and wrk's time); a round with other above"
        f" {NOISY_CORES} core was run again, up to {TRIES} times, and the quietest kept."
    )
    lines = [
        BEGIN,
        "## Local OCSP responder: mustaple against nginx serving the same bytes",
        "",
        f"Written by `bench/responder.py` on {when}. Command, from the repository root:",
        "",
        f"    {command}",
        "",
        *(f"- {fact}" for fact in args.facts),
        "",
        *wrapped(how),
        "",
        *table(result, [MUSTAPLE, FLOOR, ASYNCIO_FLOOR, NGINX_SIDE]),
        "",
        *(line for point in analysis(result) for line in wrapped(point, "- ", "  ")),
        *(["", "wrk reported:", *errors] if errors else []),
        END,
    ]
    return "\n".join(lines) + "\n"


# --- Main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s (a smoke test)")
    parser.add_argument("--rounds", type=int, help="rounds per side and load (default 3)")
    parser.add_argument("--seconds", type=int, help="seconds per round (default 10)")
    parser.add_argument("--certificates", type=int, default=100, help="held staples (100)")
    parser.add_argument("--doc", type=Path, default=DOC, help="where to write the figures")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the mustaple process
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (3 if args.quick else 10)
    return args


def run_benchmark(args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory(prefix="mustaple-bench-") as temp:
        script = Path(temp) / "paced.lua"
        # random waits, so that the connections do not all ask at the same moment
        script.write_text(f"function delay()\n  return math.random(0, {2 * PACE_MS})\nend\n")
        with (
            mustaple_sides(Path(temp) / "mustaple", args.certificates) as (ours, staple),
            nginx_side(Path(temp) / "nginx", staple) as theirs,
        ):
            sides = [*ours, theirs]
            if any(fetch(side.url) != staple for side in sides):
                raise SystemExit("the servers do not all answer the same bytes")
            return measure(sides, args.rounds, args.seconds, script)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.serve is not None:
        asyncio.run(serve(args.serve, args.certificates))
        return 0
    if missing := [tool for tool in ("wrk", NGINX) if shutil.which(tool) is None]:
        raise SystemExit(f"missing {', '.join(missing)}: {INSTALL_HINT}")
    args.facts = machine_facts()  # before the load, for its load average
    result = run_benchmark(args)
    for point in analysis(result):
        print(point.replace("**", ""))
    if not args.no_write:
        command = " ".join([".venv/bin/python", "bench/responder.py", *argv])
        write_section(args.doc, section(result, command, args), BEGIN, END)
        print(f"figures written to {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
