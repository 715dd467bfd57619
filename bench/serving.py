"""Benchmark: the local responder of a real `mustaple run` that keeps N certificates, while its
passes run, next to the same process whose passes have stopped.

For N = 1k, 10k and 100k, with the certificates, responses and CA responder of bench/prime.py,
a prime stores every staple (the CA is then stopped: every staple is valid for days, nothing
falls due). Then, in alternating order, two real `mustaple run --config FILE` processes on that
state directory, each with `[http]`, watched through the systemd notify protocol:

* *passes*: the default `watch_interval` (5 s): a pass every 5 s (what is due or changed
  is fetched, judged and delivered, the certificate files looked at where file events say
  something changed, the sinks' copies looked at every 30 s);
* *idle*: `watch_interval = "1d"`: after its first pass, none until the probe is over.

Once the first pass has ended (its STATUS notice), one GET for a certificate's staple (its
answer time is reported: the first look-up by a hash builds that hash's index of N CertIDs),
then a paced probe: one keep-alive connection, a GET every `PACE` s for `--seconds`, each
answer timed. The figures: percentiles, the longest answer, the answers over SLOW_MS, and the
passes the run made meanwhile (STATUS notices). The ratio passes/idle of each figure is what
the passes cost the responder's tail. Every answer must be 200 with the staple's bytes. With
`--against REF`, a third run, *passes* with REF's src/ first on the path (the same state), gives
the figures of that code in the same run.

    .venv/bin/python bench/serving.py            # 1k, 10k, 100k; 30 s per run
    .venv/bin/python bench/serving.py --quick    # 1k, 5 s per run (a smoke test)
    .venv/bin/python bench/serving.py --max 10000 --no-write
    .venv/bin/python bench/serving.py --against 0f85418   # and that commit's src/, passes
    .venv/bin/python bench/serving.py --settle 10  # probe once 10 passes have ended

`--settle K`: the probe starts once the first K passes have ended (idle: its first, the only
one). `run`'s start and first pass look at every certificate file to set the file events
up, and the staple files are trusted from the second look at the sinks' copies, 30 s after
the first: `--settle 10` measures the passes with both in place.

The figures go to docs/performance.md between the `<!-- bench:serving -->` markers only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from docsection import markers, write_section
from mustaple.core.request import encode_request, get_url, make_cert_id
from prime import Responder, Workdir, cert_path, listening_socket, machine_facts, new_authority
from restart import MUSTAPLE, Site, prime
from restart import _process_cpu as process_cpu
from startup import source_tree

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = markers("serving")
SIZES = (1_000, 10_000, 100_000)
PACE = 0.01  # seconds between two requests of the probe
SLOW_MS = 50.0
WAIT = 3600.0  # seconds for one notice, at most


@dataclass(frozen=True)
class Probe:
    """One run's answers, in ms."""

    kind: str  # "passes" or "idle"
    first: float  # the first answer (it builds the CertID index)
    times: list[float]
    passes: int  # STATUS notices (passes ended) during the probe
    cpu: float  # the run's CPU seconds during the probe

    def at(self, fraction: float) -> float:
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def slow(self) -> int:
        return sum(t > SLOW_MS for t in self.times)


def request_path(certs: Path) -> str:
    """The RFC 5019 GET path for the first certificate's staple."""
    leaf, issuer = x509.load_pem_x509_certificates(cert_path(certs, 0).read_bytes())[:2]
    url = get_url("http://h/ocsp", encode_request(make_cert_id(issuer, leaf.serial_number)))
    return url.removeprefix("http://h")


def ask(conn: socket.socket, request: bytes) -> tuple[float, bytes]:
    """One GET on a keep-alive connection: ms until the whole answer, and its body."""
    start = time.perf_counter()
    conn.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(conn)
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"the local responder answered {head.splitlines()[0]!r}")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += _recv(conn)
    return (time.perf_counter() - start) * 1000, body


def _recv(conn: socket.socket) -> bytes:
    chunk = conn.recv(65536)
    if not chunk:
        raise SystemExit("the local responder closed the connection")
    return chunk


def write_config(site: Site, port: int, idle: bool) -> Path:
    """The site's configuration (its last table is [policy]) with `[http]`, idle or not."""
    config = site.root / ("idle.toml" if idle else "passes.toml")
    policy = 'watch_interval = "1d"\n' if idle else ""
    http = f'\n[http]\nlisten = "127.0.0.1:{port}"\n'
    config.write_text(site.config.read_text() + policy + http)
    return config


def probe_run(
    site: Site,
    kind: str,
    seconds: float,
    path: str,
    staple: bytes,
    *,
    src: Path | None = None,
    settle: int = 1,
) -> Probe:
    """A `mustaple run` of `kind` (with `src` first on the path when given), probed once its
    first `settle` passes have ended (idle: its first, the only one); stopped after."""
    port = _free_port()
    config = write_config(site, port, idle=kind == "idle")
    notices = site.root / "serving.sock"
    notices.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notices))
        notify.settimeout(WAIT)
        env = {**os.environ, "NOTIFY_SOCKET": str(notices)}
        if src is not None:
            env["PYTHONPATH"] = str(src)
        with (site.root / "serving.log").open("ab") as log:
            process = subprocess.Popen(
                [MUSTAPLE, "run", "--config", str(config)], env=env, stderr=log
            )
        try:
            _await(notify, "READY=1")
            for _ in range(1 if kind == "idle" else settle):
                _await(notify, "STATUS=")
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            with socket.create_connection(("127.0.0.1", port)) as conn:
                first, body = ask(conn, request)
                cpu = process_cpu(process.pid)
                times, end = [], time.monotonic() + seconds
                while time.monotonic() < end:
                    took, body = ask(conn, request)
                    if body != staple:
                        raise SystemExit("the local responder answered other bytes")
                    times.append(took)
                    time.sleep(PACE)
            cpu = process_cpu(process.pid) - cpu
            passes = _count(notify, "STATUS=")
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(WAIT)
    if code != 0:
        raise SystemExit(f"`mustaple run` exited {code}; see {site.root / 'serving.log'}")
    return Probe(kind, first, times, passes, cpu)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _await(notify: socket.socket, notice: str) -> None:
    while not any(line.startswith(notice) for line in notify.recv(4096).decode().splitlines()):
        pass


def _count(notify: socket.socket, notice: str) -> int:
    """The notices starting with `notice` waiting on the socket now."""
    notify.setblocking(False)
    count = 0
    try:
        while True:
            lines = notify.recv(4096).decode().splitlines()
            count += sum(line.startswith(notice) for line in lines)
    except BlockingIOError:
        return count
    finally:
        notify.setblocking(True)


def measure(
    workdir: Workdir,
    size: int,
    sock: socket.socket,
    seconds: float,
    against: Against | None,
    *,
    settle: int = 1,
) -> list[Probe]:
    workdir.grow(size, os.cpu_count() or 1)
    site = Site(
        Path(tempfile.mkdtemp(prefix=f"serving-{size}-", dir=workdir.root)),
        workdir.certs,
        workdir.authority.url,
    )
    site.write_config(64)
    responder = Responder(sock, workdir.answers)
    try:
        prime(site, size)
    finally:
        responder.stop()
    staple = (site.staples / f"{cert_path(workdir.certs, 0).stem}.der").read_bytes()
    path = request_path(workdir.certs)
    probes = []
    runs: list[tuple[str, Path | None]] = [("passes", None), ("idle", None)]
    if against is not None:
        runs.append((f"passes at {against.ref}", against.src))
    for kind, src in runs:
        probes.append(probe_run(site, kind, seconds, path, staple, src=src, settle=settle))
        print(f"N={size:,} {line(probes[-1])}", flush=True)
    shutil.rmtree(site.root, ignore_errors=True)
    return probes


def line(p: Probe) -> str:
    return (
        f"{p.kind}: first answer {p.first:.1f} ms; {len(p.times)} answers, p50 {p.at(0.5):.2f},"
        f" p99 {p.at(0.99):.2f}, p99.9 {p.at(0.999):.1f}, max {max(p.times):.1f} ms,"
        f" {p.slow} over {SLOW_MS:.0f} ms; {p.passes} passes, {p.cpu:.2f} s CPU"
    )


def section(
    results: dict[int, list[Probe]], command: str, root: Path, seconds: float, settle: int = 1
) -> str:
    after = "first pass has" if settle == 1 else f"first {settle} passes have"
    lines = [
        BEGIN,
        "## The local responder while `mustaple run` keeps N certificates (bench/serving.py)",
        "",
        f"Command: `{command}`. One keep-alive connection asks for a staple every"
        f" {PACE * 1000:.0f} ms for {seconds:.0f} s, once the run's {after} ended;"
        " *passes*: the default `watch_interval` (a pass every 5 s);"
        ' *idle*: `watch_interval = "1d"` (no pass during the probe); *passes at REF*'
        " (`--against REF`): passes, with REF's src/ first on the path. Times in ms.",
        "",
        "| N | run | passes | CPU s | answers | p50 | p99 | p99.9 | max | over 50 ms | first"
        " answer |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, probes in results.items():
        for p in probes:
            lines.append(
                f"| {size:,} | {p.kind} | {p.passes} | {p.cpu:.2f} | {len(p.times)}"
                f" | {p.at(0.5):.2f}"
                f" | {p.at(0.99):.2f} | {p.at(0.999):.1f} | {max(p.times):.1f} | {p.slow}"
                f" | {p.first:.1f} |"
            )
    lines += ["", "Passes (and REF's passes, with `--against`) against idle, same N and run:", ""]
    for size, (passes, idle, *other) in results.items():
        lines.append(f"- N = {size:,}: {against_line(passes, idle, size)}")
        if other:
            lines.append(f"  - {other[0].kind}: {against_line(other[0], idle, size)}")
    lines += ["", *(f"- {fact}" for fact in machine_facts(root)), "", END]
    return "\n".join(lines) + "\n"


def against_line(passes: Probe, idle: Probe, size: int) -> str:
    per_pass = (passes.cpu - idle.cpu) / passes.passes if passes.passes else float("nan")
    if per_pass > 0:
        each = per_pass / size * 1e6
        digits = 1 if each < 10 else 0
        cost = f"about {per_pass * 1000:.0f} ms of CPU ({each:.{digits}f} µs a certificate)"
    else:  # the passes took less than two runs differ by
        cost = "less CPU than two runs differ by"
    return (
        f"p99 {passes.at(0.99) / idle.at(0.99):.1f}x,"
        f" p99.9 {passes.at(0.999) / idle.at(0.999):.1f}x,"
        f" max {max(passes.times) / max(idle.times):.1f}x; a pass costs {cost}"
    )


@dataclass(frozen=True)
class Against:
    ref: str
    src: Path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N = 1,000, 5 s (a smoke test)")
    parser.add_argument("--max", type=int, default=SIZES[-1], help="stop after this N")
    parser.add_argument("--seconds", type=float, default=30.0, help="probe per run (30)")
    parser.add_argument("--against", help="a git ref whose src/ runs a third, passes, run")
    parser.add_argument("--doc", type=Path, default=DOC, help="where to write the figures")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--settle", type=int, default=1, help="passes before the probe starts (1; idle: 1)"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sizes = [s for s in SIZES if s <= (SIZES[0] if args.quick else args.max)]
    if not sizes:
        raise SystemExit(f"--max must be at least {SIZES[0]}")
    seconds = 5.0 if args.quick else args.seconds
    root = Path(tempfile.mkdtemp(prefix="mustaple-serving-"))
    results: dict[int, list[Probe]] = {}
    against = None
    if args.against:
        (root / "against").mkdir()
        against = Against(args.against, source_tree(args.against, root / "against"))
    try:
        with listening_socket() as sock:
            workdir = Workdir(root, new_authority(f"http://127.0.0.1:{sock.getsockname()[1]}/"))
            for size in sizes:
                results[size] = measure(workdir, size, sock, seconds, against, settle=args.settle)
        command = " ".join([".venv/bin/python", "bench/serving.py", *argv])
        text = section(results, command, root, seconds, args.settle)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(text)
    if not args.no_write:
        write_section(args.doc, text, BEGIN, END)
        print(f"figures written to {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
