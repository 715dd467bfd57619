"""Benchmark: `mustaple run` restarting on a state directory where a prime stored every staple.

For N = 1k, 10k and 100k (issue 17: "the same start-up path serves `mustaple run` on a restart
with 100k certificates"), with the certificates, responses and responder of bench/prime.py:

* a prime of the N files (`Keeper.prime` with the configuration's keeper, store and file sink,
  as `mustaple prime` runs it, in its own process), timed; every staple must be stored;
* then, several times, a real `mustaple run --config FILE` process on the same state
  directory, watched from outside through the systemd notify protocol (NOTIFY_SOCKET: a
  STATUS notice says when each pass ended): the time to READY=1 (every stored staple
  delivered to the file sink; before it, every certificate was loaded, its leaf signature
  checked, and its stored staple verified again), the time to the first pass's STATUS notice
  (the first pass: nothing due, nothing fetched, every file looked at again), its CPU time
  at both moments (its worker processes' included: from 2,000 certificates it loads, checks
  and verifies in one per core, and they end before READY) and its peak RSS; afterwards the
  state database must show N staple files, N good status rows and no new fetch attempt;
* each restart with the leaf-signature cache (the tags the prime stored) and without it (the
  state directory's `signatures.key` replaced by a directory for that run: the cache is off,
  every signature is checked, as before the cache existed), alternating;
* for N up to `--prime-off-max` also a prime without the cache, beside the first prime (which
  cannot benefit: its table is empty; it stores the N tags).

    .venv/bin/python bench/restart.py             # 1k, 10k, 100k; updates docs/performance.md
    .venv/bin/python bench/restart.py --quick     # 1k only, a smoke test
    .venv/bin/python bench/restart.py --max 10000 # stop after 10k

A size whose predicted setup and runs would overrun `--budget` is extrapolated from a linear
fit of the measured sizes and labelled so. The figures go to docs/performance.md between the
`<!-- bench:restart -->` markers only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from docsection import markers, write_section
from mustaple.adapters.config import load_config
from mustaple.adapters.signatures import KEY_FILE
from mustaple.keeper.daemon import open_keeper
from prime import (
    Responder,
    Workdir,
    as_installed,
    cert_path,
    fit,
    listening_socket,
    machine_busy,
    machine_facts,
    new_authority,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = markers("restart")
SIZES = (1_000, 10_000, 100_000)
MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
WATCHDOG_USEC = 600_000_000  # systemd's setting as a service has it (WATCHDOG=1 every 5 min)
WAIT = 3600.0  # seconds for one notice, at most


# --- The prime (its own process) -----------------------------------------------------------------


def prime_main(config_path: str, size: str) -> int:
    """Prime the first `size` files of the configuration's directory; print wall and CPU."""
    config = load_config(config_path)
    certs = Path(config.certificates[0].paths[0]).parent
    paths = [cert_path(certs, i) for i in range(int(size))]

    async def prime() -> int:
        async with open_keeper(config) as keeper:
            chosen = await keeper.prime(paths)
        return sum(1 for p in chosen if p.phase == "good")

    start, cpu = time.perf_counter(), _own_cpu()
    good = asyncio.run(prime())
    print(json.dumps({"wall": time.perf_counter() - start, "cpu": _own_cpu() - cpu, "good": good}))
    return 0


def _own_cpu() -> float:
    """This process's CPU seconds and its finished children's (the keeper's workers)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


# --- One state directory, and what it holds ------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """The configuration of one size: its state directory and its staple files."""

    root: Path
    certs: Path
    url: str

    @property
    def config(self) -> Path:
        return self.root / "mustaple.toml"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def staples(self) -> Path:
        return self.root / "staples"

    def write_config(self, concurrency: int) -> None:
        self.config.write_text(f"""
state_dir = "{self.state}"

[[certificates]]
paths = ["{self.certs}/*.pem"]

[sinks.files]
type = "file"
path = "{self.staples}/{{stem}}.der"

[policy]
concurrency = {concurrency}
per_host = {concurrency}
""")

    def count(self, query: str) -> int:
        with sqlite3.connect(self.state / "state.db") as db:
            return int(db.execute(query).fetchone()[0])

    def staple_files(self) -> int:
        return sum(1 for _ in self.staples.glob("*.der"))

    @contextmanager
    def cache_off(self) -> Iterator[None]:
        """The state directory's key replaced by a directory: the keeper cannot read it, so
        it checks every signature and stores no tag (one warning); the key is put back."""
        key, aside = self.state / KEY_FILE, self.state / f"{KEY_FILE}.aside"
        key.rename(aside)
        key.mkdir()
        try:
            yield
        finally:
            key.rmdir()
            aside.rename(key)


def prime(site: Site, size: int) -> tuple[float, float]:
    """Wall and CPU seconds of priming `size` files into `site`; every one must end good."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "_prime", str(site.config), str(size)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the prime of {size} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.splitlines()[-1])
    stored = site.count("SELECT count(*) FROM staples")
    if figures["good"] != size or stored != size:
        raise SystemExit(f"the prime of {size}: {figures['good']} good, {stored} stored")
    return figures["wall"], figures["cpu"]


# --- The restart: a real `mustaple run`, watched from outside -----------------------------------


@dataclass(frozen=True)
class Restart:
    """One `mustaple run` from start to the end of its first pass."""

    cache: bool
    ready: float  # seconds from the process start to READY=1
    first_pass: float  # ... to the first pass's STATUS notice
    cpu_ready: float  # the process's CPU seconds at READY=1
    cpu_pass: float  # ... at the first pass's STATUS notice
    peak_mib: float  # VmHWM at the first pass's STATUS notice
    other_cpu: float  # CPU seconds the rest of the machine used meanwhile: noise, when high
    files: int  # staple files in the sink's directory afterwards
    good: int  # status rows saying good
    fetched: int  # fetch attempts the restart added to the history
    tags: int  # leaf-signature tags stored afterwards


def restart(site: Site, size: int, *, cache: bool) -> Restart:
    """Start `mustaple run`, wait for READY=1 then the first pass's STATUS, stop it; check
    the outcome."""
    attempts = site.count("SELECT count(*) FROM attempts")
    notices = site.root / "notify.sock"
    notices.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notices))
        notify.settimeout(WAIT)
        env = {**os.environ, "NOTIFY_SOCKET": str(notices), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        env.pop("WATCHDOG_PID", None)
        with (site.root / "run.log").open("ab") as log:
            busy, start = machine_busy(), time.perf_counter()
            process = subprocess.Popen(
                [MUSTAPLE, "run", "--config", str(site.config)], env=env, stderr=log
            )
        try:
            ready, cpu_ready = _await(notify, "READY=1", process.pid, start)
            first_pass, cpu_pass = _await(notify, "STATUS=", process.pid, start)
            peak, other = _peak_mib(process.pid), machine_busy() - busy - cpu_pass
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(WAIT)
    if code != 0:
        raise SystemExit(f"`mustaple run` exited {code}; see {site.root / 'run.log'}")
    return Restart(
        cache,
        ready,
        first_pass,
        cpu_ready,
        cpu_pass,
        peak,
        max(0.0, other),
        site.staple_files(),
        site.count("SELECT count(*) FROM status WHERE state = 'good'"),
        site.count("SELECT count(*) FROM attempts") - attempts,
        site.count("SELECT count(*) FROM signatures"),
    )


def _await(notify: socket.socket, notice: str, pid: int, start: float) -> tuple[float, float]:
    """Seconds from `start` to the first notice line starting with `notice`, and the
    process's CPU seconds then."""
    while not any(line.startswith(notice) for line in notify.recv(4096).decode().splitlines()):
        pass
    return time.perf_counter() - start, _process_cpu(pid)


def _process_cpu(pid: int) -> float:
    """The process's CPU seconds, with those of the children it waited for (its workers,
    which end with the batch they load and fetch)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise LookupError("VmHWM")


# --- One size ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """The figures of one N, measured (or extrapolated)."""

    size: int
    setup: float  # seconds to build this many certificates and responses (cumulative)
    prime_wall: float  # the first prime (cache empty: it stores N tags)
    prime_cpu: float
    prime_off_wall: float | None  # a prime with the cache off (None: not measured)
    prime_off_cpu: float | None
    cached: Restart  # the fastest restart of each kind
    uncached: Restart
    extrapolated: bool = False

    @property
    def complete(self) -> bool:
        return self.extrapolated or all(
            r.files == r.good == r.tags == self.size and r.fetched == 0
            for r in (self.cached, self.uncached)
        )


@dataclass
class Bench:
    sizes: list[int]
    concurrency: int
    workers: int
    budget: float
    repeat: int
    prime_off_max: int
    results: list[Size] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


def measure(bench: Bench, workdir: Workdir, size: int, sock: socket.socket) -> Size:
    workdir.grow(size, bench.workers)
    print(f"N={size:,}: setup so far {workdir.seconds:.1f} s", flush=True)
    responder = Responder(sock, workdir.answers)
    try:
        site = Site(
            Path(tempfile.mkdtemp(prefix=f"restart-{size}-", dir=workdir.root)), *where(workdir)
        )
        site.write_config(bench.concurrency)
        prime_wall, prime_cpu = prime(site, size)
        print(f"  prime: {prime_wall:.2f} s wall, {prime_cpu:.2f} s CPU", flush=True)
        off = prime_off(bench, workdir, size)
        runs = []
        for _ in range(bench.repeat):
            with site.cache_off():
                runs.append(restart(site, size, cache=False))
            print(restart_summary(runs[-1]), flush=True)
            runs.append(restart(site, size, cache=True))
            print(restart_summary(runs[-1]), flush=True)
    finally:
        responder.stop()
    best = {c: min((r for r in runs if r.cache is c), key=lambda r: r.ready) for c in (True, False)}
    return Size(size, workdir.seconds, prime_wall, prime_cpu, *off, best[True], best[False])


def where(workdir: Workdir) -> tuple[Path, str]:
    return workdir.certs, workdir.authority.url


def prime_off(bench: Bench, workdir: Workdir, size: int) -> tuple[float | None, float | None]:
    """A prime of `size` in a new state directory with the cache off (up to prime_off_max)."""
    if size > bench.prime_off_max:
        return None, None
    site = Site(
        Path(tempfile.mkdtemp(prefix=f"prime-off-{size}-", dir=workdir.root)), *where(workdir)
    )
    site.write_config(bench.concurrency)
    (site.state / KEY_FILE).mkdir(parents=True)
    wall, cpu = prime(site, size)
    print(f"  prime without the cache: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    shutil.rmtree(site.root, ignore_errors=True)
    return wall, cpu


def extrapolate(results: Sequence[Size], size: int) -> Size:
    """Every figure of `size` from a linear fit of the measured sizes over N."""
    measured = [r for r in results if not r.extrapolated]

    def line(values: Callable[[Size], float]) -> float:
        intercept, slope = fit([(r.size, values(r)) for r in measured])
        return intercept + slope * size

    def restart_at(pick: Callable[[Size], Restart]) -> Restart:
        def at(name: str) -> float:
            return line(lambda r: float(getattr(pick(r), name)))

        ready, first_pass = at("ready"), at("first_pass")
        cpu_ready, cpu_pass, peak = at("cpu_ready"), at("cpu_pass"), at("peak_mib")
        cache, other = pick(measured[0]).cache, at("other_cpu")
        return Restart(
            cache, ready, first_pass, cpu_ready, cpu_pass, peak, other, size, size, 0, size
        )

    return Size(
        size,
        line(lambda r: r.setup),
        line(lambda r: r.prime_wall),
        line(lambda r: r.prime_cpu),
        None,
        None,
        restart_at(lambda r: r.cached),
        restart_at(lambda r: r.uncached),
        extrapolated=True,
    )


def affordable(bench: Bench, size: int) -> bool:
    """Whether setup, prime and restarts of `size`, predicted from the sizes so far, fit in the
    budget (the first two sizes always run: a linear fit needs two points)."""
    if len(bench.results) < 2:
        return True
    guess = extrapolate(bench.results, size)
    runs = guess.cached.first_pass + guess.uncached.first_pass
    predicted = guess.setup - bench.results[-1].setup + guess.prime_wall + runs * bench.repeat
    return time.perf_counter() - bench.started + predicted * 1.2 <= bench.budget


def run_all(bench: Bench, workdir: Workdir, sock: socket.socket) -> None:
    for size in bench.sizes:
        if affordable(bench, size):
            bench.results.append(measure(bench, workdir, size, sock))
        else:
            print(f"N={size:,}: predicted to overrun the {bench.budget:.0f} s budget; extrapolated")
            bench.results.append(extrapolate(bench.results, size))


# --- Reporting -----------------------------------------------------------------------------------


def restart_summary(run: Restart) -> str:
    return (
        f"  restart {'with' if run.cache else 'without'} the cache: READY {run.ready:.2f} s"
        f" (CPU {run.cpu_ready:.2f} s), first pass {run.first_pass:.2f} s (CPU"
        f" {run.cpu_pass:.2f} s), peak RSS {run.peak_mib:.0f} MiB, other CPU"
        f" {run.other_cpu:.1f} s; {run.files:,} files,"
        f" {run.good:,} good, {run.fetched} fetched, {run.tags:,} tags"
    )


def cell(result: Size, text: str) -> str:
    return f"*{text}*" if result.extrapolated else text


def restart_table(results: Sequence[Size]) -> list[str]:
    lines = [
        "| N | cache | READY (all delivered) | µs/cert | CPU | first pass done | CPU | peak RSS"
        " | other CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for run in (r.uncached, r.cached):
            figures = [
                f"{run.ready:.2f} s",
                f"{run.ready / r.size * 1e6:.0f}",
                f"{run.cpu_ready:.2f} s",
                f"{run.first_pass:.2f} s",
                f"{run.cpu_pass:.2f} s",
                f"{run.peak_mib:.0f} MiB",
                f"{run.other_cpu:.1f} s",
            ]
            label = "on" if run.cache else "off"
            lines.append(
                f"| {r.size:,} | {label} | " + " | ".join(cell(r, f) for f in figures) + " |"
            )
    return lines


def gain_lines(results: Sequence[Size]) -> list[str]:
    lines = []
    for r in results:
        saved = r.uncached.cpu_ready - r.cached.cpu_ready
        word = "extrapolated: " if r.extrapolated else ""
        lines.append(
            f"- N = {r.size:,}: {word}with the cache, READY after {r.cached.ready:.2f} s instead"
            f" of {r.uncached.ready:.2f} s ({r.cached.ready / r.uncached.ready:.2f}x); CPU to"
            f" READY {r.cached.cpu_ready:.2f} s instead of {r.uncached.cpu_ready:.2f} s"
            f" ({saved / r.size * 1e6:.0f} µs of CPU per certificate saved)"
        )
    return lines


def prime_table(results: Sequence[Size]) -> list[str]:
    lines = [
        "| N | first prime (stores the tags): wall | CPU | prime with the cache off: wall | CPU |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        off = (
            [f"{r.prime_off_wall:.2f} s", f"{r.prime_off_cpu or 0:.2f} s"]
            if r.prime_off_wall is not None
            else ["not run", "not run"]
        )
        first = [cell(r, f"{r.prime_wall:.2f} s"), cell(r, f"{r.prime_cpu:.2f} s")]
        lines.append(f"| {r.size:,} | " + " | ".join(first + off) + " |")
    return lines


def check_lines(results: Sequence[Size]) -> list[str]:
    measured = [r for r in results if not r.extrapolated]
    ok = all(r.complete for r in measured)
    verdict = "held" if ok else "did NOT hold (see the run's output)"
    return [
        f"After every measured restart the checks {verdict}: N staple files, N status rows"
        " saying good, N tags stored, and no fetch attempt added to the history."
    ]


METHOD = """\
How it measures: bench/prime.py's certificates (one P-256 CA, N must-staple leaves as
leaf-then-CA PEM files) and its responder with pre-signed responses (valid 3 days, so nothing
is due at the restart). For each N, a new state directory and a configuration with one file
sink (`{stem}.der` per certificate); a prime in its own process (`Keeper.prime` through
`open_keeper`, as `mustaple prime` runs it) stores and writes every staple; then real
`mustaple run --config FILE` processes on that state, with NOTIFY_SOCKET and WATCHDOG_USEC
set, timed from their start (fork and exec, interpreter and imports included):

- *READY*: the keeper has loaded every certificate file (read, parsed, the issuer's signature
  on the leaf checked, or found in the leaf-signature cache), read each stored staple and
  verified it again (signature, CertID, times: "checked" for a valid staple not yet due means
  restored and verified again, no fetch), given every staple to the file sink, and saved
  every status row. The file sink compares each file with the staple and rewrites none (they
  are the prime's). Every certificate is checked before the first delivery: the start-up
  path delivers nothing until its scan is complete.
- *first pass done*: the first pass's STATUS notice, sent after the daemon's first `tick`
  (nothing due: no fetch) and `scan` (every file's stat compared); until this round it was
  the first WATCHDOG=1, which the loop sent at the same point and which now comes from a
  timer of its own.
- CPU is the process's user + system time at each notice (from /proc), with its worker
  processes' (from 2,000 certificates the scan loads, checks and verifies in one per core;
  they end before READY), peak RSS its VmHWM at the first pass (the main process's); *other
  CPU* what the rest of the machine used from the start to the first pass (from /proc/stat;
  the responder is idle): when it is high, the wall times are noise.
- *cache off*: the state directory's `signatures.key` is replaced by a directory for that run,
  so the keeper cannot read it: one warning, every signature checked, no tag stored (the cost
  before the cache existed). Runs with and without alternate; the fastest READY of each is
  shown.
- The prime with the cache off runs in a state directory of its own."""


def section(bench: Bench, command: str, workdir: Path) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "\n".join(
            [
                BEGIN,
                "## Restart: `mustaple run` on the state a prime left",
                "",
                f"Written by `bench/restart.py` on {when}. Command, from the repository root:",
                "",
                f"    {command}",
                "",
                *(f"- {fact}" for fact in machine_facts(workdir)),
                "",
                METHOD,
                "",
                *restart_table(bench.results),
                "",
                *gain_lines(bench.results),
                "",
                "A first prime cannot benefit from the cache (its table is empty); it checks every"
                " signature and stores one tag per certificate (about 35 µs each, in process;"
                " bench/README.md). The two primes run once each, the one with the cache first,"
                " which has been the slower in every run so far, by up to 0.3 s at 1k; alternating"
                " runs (bench/README.md) found no difference beyond their spread:",
                "",
                *prime_table(bench.results),
                "",
                *check_lines(bench.results),
                "",
                "Figures in *italics* are extrapolated (a linear fit of the measured sizes),"
                " not measured.",
                END,
            ]
        )
        + "\n"
    )


# --- Main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N = 1,000 only (a smoke test)")
    parser.add_argument("--max", type=int, default=SIZES[-1], help="stop after this N")
    parser.add_argument("--concurrency", type=int, default=64, help="and per_host (default 64)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="setup processes")
    parser.add_argument("--budget", type=float, default=1200, help="seconds (default 1200)")
    parser.add_argument("--repeat", type=int, default=1, help="restarts of each kind per size")
    parser.add_argument(
        "--prime-off-max", type=int, default=10_000, help="prime with the cache off up to this N"
    )
    parser.add_argument("--workdir", type=Path, help="a new directory to build in, kept afterwards")
    parser.add_argument("--doc", type=Path, default=DOC, help="where to write the figures")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sizes = [s for s in SIZES if s <= (SIZES[0] if args.quick else args.max)]
    if not sizes:
        raise SystemExit(f"--max must be at least {SIZES[0]}")
    if args.workdir and args.workdir.exists() and any(args.workdir.iterdir()):
        raise SystemExit(f"--workdir {args.workdir}: not empty; give a new directory")
    bench = Bench(
        sizes, args.concurrency, args.workers, args.budget, max(1, args.repeat), args.prime_off_max
    )
    root = args.workdir or Path(tempfile.mkdtemp(prefix="mustaple-restart-"))
    as_installed()
    with listening_socket() as sock:
        workdir = Workdir(root, new_authority(f"http://127.0.0.1:{sock.getsockname()[1]}/"))
        try:
            run_all(bench, workdir, sock)
        finally:
            if not args.workdir:
                shutil.rmtree(root, ignore_errors=True)
    if not args.no_write:
        command = " ".join([".venv/bin/python", "bench/restart.py", *argv])
        write_section(args.doc, section(bench, command, root), BEGIN, END)
        print(f"figures written to {args.doc}")
    print("\n".join(gain_lines(bench.results)))
    return 0 if all(r.complete for r in bench.results) else 1


ROLES: dict[str, Callable[..., int]] = {"_prime": prime_main}

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in ROLES:
        sys.exit(ROLES[sys.argv[1]](*sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
