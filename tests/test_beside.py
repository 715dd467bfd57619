"""A worker-mode `mustaple prime` beside a running `mustaple run` on the same state directory:
real processes, a loopback responder, and judged from outside: exit codes, stderr, the worker
processes in /proc, the responder's count of requests, the sinks' files, the state database
(read with sqlite3) and the running keeper's `/status`.

The prime has more certificates than `WORKERS_FROM` (so it loads and fetches in worker
processes, which read the database through read-only connections), and the keeper stays up
and writes the same database meanwhile: one writer per process, readers in the workers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509 import ocsp

from mustaple.keeper.keeper import WORKERS_FROM
from mustaple.testing import CA, Behaviour, ResponderThread
from outside import end_all, get_json, http_get, wait_for
from servers import free_port

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
COUNT = 2 * WORKERS_FROM + 20  # over the threshold, and enough for the processes to overlap
KEPT = 4  # the running keeper's own certificates: w0..w3, primed too
WORKER = "mustaple.adapters.workers"
BAD_LINES = ("database is locked", "Traceback", "worker process")


@dataclass
class Beside:
    """COUNT leaves on disk (`live/w0000/fullchain.pem` is `w0.example`), their responder,
    and the processes started on their shared state directory."""

    tmp: Path
    responder: ResponderThread
    serials: list[int]
    started: list[subprocess.Popen[str]] = field(default_factory=list)
    logs: dict[int, str] = field(default_factory=dict)  # pid -> where its output is

    @property
    def db(self) -> Path:
        return self.tmp / "state" / "state.db"

    def config(self, name: str, paths: str, *, http: int | None = None) -> Path:
        """A configuration on the shared state directory, delivering to files in `tmp/name`."""
        path = self.tmp / f"{name}.toml"
        text = (
            f'state_dir = "{self.tmp / "state"}"\n'
            '[policy]\nworkers = 2\nconcurrency = 16\nper_host = 16\nwatch_interval = "1s"\n'
            f'[[certificates]]\npaths = ["{paths}"]\n'
            f'[sinks.files]\ntype = "file"\npath = "{self.tmp / name}/{{name}}.der"\n'
        )
        if http is not None:
            text += f'[http]\nlisten = "127.0.0.1:{http}"\n'
        path.write_text(text)
        return path

    def every(self) -> Path:
        return self.config("primed", f"{self.tmp}/live/*/fullchain.pem")

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """`mustaple ARGS`, its stdout and stderr into files (a keeper's log outgrows a pipe)."""
        name = f"{args[0]}{len(self.started)}"
        out, err = (self.tmp / f"{name}.{kind}" for kind in ("out", "err"))
        with out.open("w") as stdout, err.open("w") as stderr:
            process = subprocess.Popen(
                [MUSTAPLE, *args], stdout=stdout, stderr=stderr, text=True, env=env
            )
        self.started.append(process)
        self.logs[process.pid] = name
        return process

    def prime(self) -> subprocess.Popen[str]:
        paths = sorted(str(p) for p in (self.tmp / "live").glob("*/fullchain.pem"))
        return self.start("prime", "--config", str(self.every()), *paths)

    def output(self, process: subprocess.Popen[str]) -> tuple[str, str]:
        """What `process` wrote to stdout and to stderr."""
        name = self.logs[process.pid]
        return (self.tmp / f"{name}.out").read_text(), (self.tmp / f"{name}.err").read_text()

    def revoke(self, *indices: int) -> None:
        for index in indices:
            self.responder.set_behaviour(Behaviour.REVOKED, self.serials[index])

    def fetched(self) -> Counter[int | None]:
        """How often the responder was asked about each serial."""
        return Counter(served.serial for served in self.responder.requests)

    def rows(self, query: str) -> dict[Any, Any]:
        with closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)) as db:
            return dict(db.execute(query).fetchall())


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A systemd notify socket, and the environment that points a process at it."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(60)
        yield sock, {**os.environ, "NOTIFY_SOCKET": str(path)}


def ready_status(notify: socket.socket) -> str:
    """The STATUS a keeper tells systemd with READY=1 (its stored staples delivered)."""
    while True:
        lines = notify.recv(4096).decode().splitlines()
        if "READY=1" in lines:
            return next(line for line in lines if line.startswith("STATUS="))


@pytest.fixture
def beside(tmp_path: Path) -> Iterator[Beside]:
    ca = CA()
    with ResponderThread(ca) as responder:
        serials = []
        for index in range(COUNT):
            leaf = ca.issue(f"w{index}.example", ocsp_urls=[responder.url])
            responder.add(leaf)
            home = tmp_path / "live" / f"w{index:04d}"
            home.mkdir(parents=True)
            (home / "fullchain.pem").write_bytes(leaf.fullchain_pem)  # all mustaple reads
            serials.append(leaf.cert.serial_number)
        b = Beside(tmp_path, responder, serials)
        try:
            yield b
        finally:
            end_all(b.started)


def says(path: Path) -> str:
    """What a delivered file says: `good` or `revoked` (or `missing`)."""
    if not path.exists():
        return "missing"
    response = ocsp.load_der_ocsp_response(path.read_bytes())
    return response.certificate_status.name.lower()


def workers_of(pid: int) -> set[int]:
    """The worker processes `pid` has now (from /proc)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and WORKER.encode() in command:
            found.add(int(proc.name))
    return found


def watch_until_done(
    process: subprocess.Popen[str], seen: Callable[[], None], timeout: float = 120
) -> int:
    """Wait for `process`, calling `seen()` every tenth of a second meanwhile."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        assert time.monotonic() < deadline, "timed out"
        seen()
        time.sleep(0.1)
    return process.returncode


def clean(*logs: str) -> None:
    for text in logs:
        assert not [line for line in text.splitlines() if any(b in line for b in BAD_LINES)]


def names(indices: range | tuple[int, ...]) -> set[str]:
    return {f"w{index}.example" for index in indices}


def test_a_worker_prime_beside_a_running_keeper_stores_each_once_and_the_keeper_takes_it(
    beside: Beside,
) -> None:
    b, port = beside, free_port()
    kept = b.config("kept", f"{b.tmp}/live/w000[0-{KEPT - 1}]/fullchain.pem", http=port)
    run = b.start("run", "--config", str(kept))

    def states() -> dict[str, str]:
        status, body = http_get(f"http://127.0.0.1:{port}/status")
        report = json.loads(body) if status == 200 else {"certificates": []}
        return {c["name"]: c["state"] for c in report["certificates"]}

    wait_for(lambda: states() == dict.fromkeys(names(range(KEPT)), "good"))
    revoked = (0, 1)  # two of the keeper's own certificates, found revoked by the prime
    b.revoke(*revoked)
    prime = b.prime()
    workers: set[int] = set()
    assert watch_until_done(prime, lambda: workers.update(workers_of(prime.pid))) == 3
    out, err = b.output(prime)
    assert len(workers) == 2  # a worker-mode prime
    lines = sorted(line.split(":", 1)[0] for line in out.splitlines())
    assert lines == sorted(
        [f"REVOKED {n}" for n in names(revoked)]
        + [f"OK {n}" for n in names(range(COUNT)) - names(revoked)]
    )

    # The running keeper takes in what the prime stored, without fetching it again.
    expected = dict.fromkeys(names(range(KEPT)), "good") | dict.fromkeys(names(revoked), "revoked")
    wait_for(lambda: states() == expected, timeout=15)
    wait_for(lambda: {n: says(b.tmp / "kept" / f"{n}.der") for n in expected} == expected)
    assert run.poll() is None
    run.terminate()
    assert run.wait(20) == 0
    clean(err, *b.output(run))

    # Every certificate fetched once by the prime (the keeper's own once more, at its start).
    assert b.fetched() == {s: 2 if i < KEPT else 1 for i, s in enumerate(b.serials)}
    files = {p.stem: says(p) for p in (b.tmp / "primed").glob("*.der")}
    truth = dict.fromkeys(names(range(COUNT)), "good") | dict.fromkeys(names(revoked), "revoked")
    assert files == truth
    assert b.rows("SELECT name, state FROM status") == truth
    stored = b.rows("SELECT name, revoked FROM staples")
    assert stored == {n: int(state == "revoked") for n, state in truth.items()}


def test_a_keeper_starting_with_many_stored_staples_beside_a_prime_restores_and_takes_it(
    beside: Beside, notify: tuple[socket.socket, dict[str, str]]
) -> None:
    b, port = beside, free_port()
    assert b.prime().wait(120) == 0
    before = b.fetched()
    assert sum(before.values()) == COUNT
    revoked = (2, COUNT - 1)  # stored early in the prime (read at the start), and last
    b.revoke(*revoked)
    prime = b.prime()

    # The keeper starts once the prime has written its first group of fetches; the prime is
    # held there until the keeper's workers are up, so that they read while it writes however
    # slow the machine (a prime that ends first tests nothing)
    wait_for(lambda: b.rows("SELECT 1, count(*) FROM attempts")[1] > COUNT, timeout=60)
    prime.send_signal(signal.SIGSTOP)
    kept = b.config("kept", f"{b.tmp}/live/*/fullchain.pem", http=port)
    run = b.start("run", "--config", str(kept), env=notify[1])
    try:
        wait_for(lambda: workers_of(run.pid), timeout=60)
    finally:
        prime.send_signal(signal.SIGCONT)
    overlap: list[bool] = []

    def seen() -> None:  # the keeper's workers read the database while the prime writes it
        if workers_of(run.pid):
            overlap.append(prime.poll() is None)

    assert watch_until_done(prime, seen) == 3
    assert any(overlap)
    _, err = b.output(prime)
    # Ready with the staples it restored (w2's revoked answer was stored before it started;
    # the last certificate's was stored last, maybe after the keeper read it).
    held = ready_status(notify[0]).removeprefix(f"STATUS={COUNT} certificates from {COUNT} files, ")
    assert held in (f"{COUNT - 2} with a valid staple", f"{COUNT - 1} with a valid staple")

    delivered = b.tmp / "kept"
    truth = dict.fromkeys(names(range(COUNT)), "good") | dict.fromkeys(names(revoked), "revoked")
    wait_for(
        lambda: (
            {n: says(delivered / f"{n}.der") for n in names(revoked)}
            == dict.fromkeys(names(revoked), "revoked")
        ),
        timeout=30,
    )
    wait_for(lambda: len(list(delivered.glob("*.der"))) == COUNT)
    report = get_json(f"http://127.0.0.1:{port}/status")
    assert {c["name"]: c["state"] for c in report["certificates"]} == truth
    assert run.poll() is None
    run.terminate()
    assert run.wait(30) == 0
    clean(err, *b.output(run))
    # The keeper restored every stored staple: it fetched none; the prime fetched each once.
    assert b.fetched() - before == Counter(b.serials)
    assert {p.stem: says(p) for p in delivered.glob("*.der")} == truth
    assert b.rows("SELECT name, state FROM status") == truth
