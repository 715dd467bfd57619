"""Worker processes (`mustaple.adapters.workers`): a large batch is loaded and fetched in other
processes, with the same outcome as in process, judged from outside: who held the TCP
connection each request came on (the kernel's socket table), the child processes, the state
store, the staple files, a reload command's log and `mustaple prime`'s exit code and lines.

Batches here are small: the keeper's threshold (`WORKERS_FROM`) is lowered for the in-process
tests; the command-line test primes more certificates than the real threshold.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

import mustaple.adapters.workers as workers_module
import mustaple.keeper.keeper as keeper_module
from conftest import Crowded, Handler, LoopbackServer
from mustaple.adapters.config import Config
from mustaple.adapters.fetch import HttpFetcher
from mustaple.adapters.store import SqliteStore
from mustaple.adapters.workers import Limits, WorkerPool
from mustaple.core.certs import make_target
from mustaple.core.clock import utc_now
from mustaple.core.errors import InputError
from mustaple.core.fetchtypes import FetchJob, FetchResult
from mustaple.core.verify import Staple, verify
from mustaple.keeper.keeper import WORKERS_FROM, Keeper, Primed
from mustaple.testing import (
    CA,
    QUICK_FETCH,
    Behaviour,
    OCSPResponder,
    RecordingSink,
    keeper_config,
)
from test_signature_cache import COUNTER

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))


def socket_owners() -> dict[int, tuple[int, int]]:
    """Local TCP port -> (pid, parent pid) of the process holding that socket, among this
    process and its children (from /proc). Not every process of the machine: the tests call
    this in the event loop their responder answers in, and on a loaded machine reading them
    all took a fifth of a second or more each time, which held the answers up past the
    fetches' 1 s timeout."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            inodes[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    owners: dict[int, tuple[int, int]] = {}
    for pid in (os.getpid(), *children()):
        proc = Path(f"/proc/{pid}")
        try:
            holder, fds = (pid, parent_of(pid)), list((proc / "fd").iterdir())
        except OSError:
            continue  # gone meanwhile
        for link in map(_link, fds):
            if link.startswith("socket:[") and link[8:-1] in inodes:
                owners[inodes[link[8:-1]]] = holder
    return owners


def _link(fd: Path) -> str:
    try:
        return os.readlink(fd)
    except OSError:  # closed meanwhile (the listing's own descriptor, for one)
        return ""


def children() -> list[int]:
    """The pids of this process's children, whichever of its threads started them."""
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += map(int, (task / "children").read_text().split())
        except OSError:
            continue  # a thread that ended meanwhile
    return pids


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@dataclass
class Fleet:
    """Leaves on disk, a responder for them, and the keeper's configuration."""

    tmp: Path
    ca: CA
    responder: OCSPResponder
    config: Config

    def state(self) -> SqliteStore:
        return SqliteStore(self.config.state_dir / "state.db")


@asynccontextmanager
async def leaves(tmp: Path, count: int, **policy: Any) -> AsyncIterator[Fleet]:
    ca = CA()
    async with OCSPResponder(ca) as responder:
        for index in range(count):
            leaf = ca.issue(f"w{index}.example", ocsp_urls=[responder.url])
            responder.add(leaf)
            leaf.write(tmp / "live" / f"w{index:04d}")
        yield Fleet(tmp, ca, responder, keeper_config(tmp, **policy))


async def prime_all(fleet: Fleet, keeper: Keeper) -> list[Primed]:
    paths = sorted((fleet.tmp / "live").glob("*/fullchain.pem"))
    async with keeper:
        return await keeper.prime(paths)


def new_keeper(fleet: Fleet, store: SqliteStore, sink: RecordingSink) -> Keeper:
    return Keeper(fleet.config, store=store, sinks={sink.name: sink})


def noting_owners(fleet: Fleet, owners: dict[int, tuple[int, int]]) -> Callable[..., None]:
    """An observer of the keeper's fetch results: while the connections are kept alive, it
    notes in `owners` which process holds the port each request came from, reading /proc only
    when a request came from a port not noted yet (it runs in the event loop the responder
    answers in)."""

    def note(*_: object) -> None:
        if any(r.peer and r.peer[1] not in owners for r in fleet.responder.requests):
            owners.update(socket_owners())

    return note


def fetched_by(fleet: Fleet, owners: dict[int, tuple[int, int]]) -> set[tuple[int, int]]:
    """(pid, parent pid) of each process that sent a request the responder answered."""
    return {owners[served.peer[1]] for served in fleet.responder.requests if served.peer}


def test_a_large_prime_runs_in_worker_processes_with_the_same_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keeper_module, "WORKERS_FROM", 8)

    async def scenario() -> None:
        async with leaves(tmp_path, 12, workers=2) as fleet:
            store, sink = fleet.state(), RecordingSink()
            keeper = new_keeper(fleet, store, sink)
            owners: dict[int, tuple[int, int]] = {}
            # While a worker holds its kept-alive connection, find whose it is.
            keeper.observers.append(noting_owners(fleet, owners))
            primed = await prime_all(fleet, keeper)
            assert [p.phase for p in primed] == ["good"] * 12
            assert len(fleet.responder.requests) == 12
            senders = fetched_by(fleet, owners)
            assert len(senders) == 2
            assert {parent for _, parent in senders} == {os.getpid()}
            for one in primed:  # stored, and valid here, in the parent
                managed = keeper.managed[one.path]
                stored = store.load(managed.key)
                assert stored is not None
                assert stored.good
                staple = verify(stored.der, managed.target, utc_now(), keeper.policy.verify)
                assert isinstance(staple, Staple)
            assert sum(len(batch) for batch in sink.batches) == 12
            store.close()
            for pid, _ in senders:  # the workers ended with the prime
                assert not Path(f"/proc/{pid}").exists()

    asyncio.run(scenario())


def test_a_keeper_starting_with_many_stored_staples_restores_them_in_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start of `mustaple run`: files loaded and stored answers validated in workers; a
    stored answer that does not validate (garbled here) is fetched again, the rest is not."""
    monkeypatch.setattr(keeper_module, "WORKERS_FROM", 8)

    async def scenario() -> None:
        async with leaves(tmp_path, 12, workers=2) as fleet:
            store = fleet.state()
            first = new_keeper(fleet, store, RecordingSink())
            primed = [first.managed[p.path] for p in await prime_all(fleet, first)]
            garbled = primed[4].key
            with sqlite3.connect(fleet.config.state_dir / "state.db") as db:
                db.execute("UPDATE staples SET der = X'3000' WHERE cert_key = ?", (garbled,))
            fleet.responder.requests.clear()
            sink = RecordingSink()
            keeper = new_keeper(fleet, store, sink)
            async with keeper:
                await keeper.scan()
                assert {v.phase for v in keeper.views() if v.key != garbled} == {"good"}
                await keeper.tick()
            store.close()
            served = [s.serial for s in fleet.responder.requests]
            assert served == [primed[4].target.serial]
            delivered = {d.key for batch in sink.batches for d in batch}
            assert delivered == {m.key for m in primed}
            assert {v.phase for v in keeper.views()} == {"good"}

    asyncio.run(scenario())


def test_workers_use_and_fill_the_leaf_signature_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted in the workers themselves (a sitecustomize on their PYTHONPATH logs every leaf
    signature they check): a prime checks each leaf once and stores its tag; a keeper starting
    on the same state directory checks none."""
    monkeypatch.setattr(keeper_module, "WORKERS_FROM", 8)
    hooks, checks = tmp_path / "hooks", tmp_path / "checks.log"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(COUNTER)
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    monkeypatch.setenv("SIGNATURE_LOG", str(checks))

    async def scenario() -> None:
        async with leaves(tmp_path, 12, workers=2) as fleet:
            store = fleet.state()
            first = new_keeper(fleet, store, RecordingSink())
            primed = [first.managed[p.path] for p in await prime_all(fleet, first)]
            assert len(checks.read_text().split()) == 12
            with sqlite3.connect(fleet.config.state_dir / "state.db") as db:
                assert db.execute("SELECT count(*) FROM signatures").fetchone() == (12,)
            keeper = new_keeper(fleet, store, RecordingSink())
            async with keeper:
                await keeper.scan()
            store.close()
            assert len(checks.read_text().split()) == 12
            assert {v.phase for v in keeper.views()} == {"good"}
            assert {f"{m.target.serial:x}" for m in primed} == set(checks.read_text().split())

    asyncio.run(scenario())


def test_below_the_threshold_or_with_workers_0_everything_stays_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(workers: int | None, tmp: Path) -> set[tuple[int, int]]:
        async with leaves(tmp, 3, workers=workers) as fleet:
            store, owners = fleet.state(), dict[int, tuple[int, int]]()
            keeper = new_keeper(fleet, store, RecordingSink())
            keeper.observers.append(noting_owners(fleet, owners))
            primed = await prime_all(fleet, keeper)
            store.close()
            assert [p.phase for p in primed] == ["good"] * 3
            return fetched_by(fleet, owners)

    assert WORKERS_FROM > 3
    us = (os.getpid(), os.getppid())
    assert asyncio.run(scenario(None, tmp_path / "few")) == {us}
    monkeypatch.setattr(keeper_module, "WORKERS_FROM", 2)
    assert asyncio.run(scenario(0, tmp_path / "off")) == {us}


def test_prime_loads_slices_while_it_resolves_and_refuses_a_bad_path_before_any_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keeper_module, "WORKERS_FROM", 8)
    monkeypatch.setattr(keeper_module, "RESOLVE_SLICE", 5)

    async def scenario() -> None:
        async with leaves(tmp_path, 12, workers=2) as fleet:
            paths = sorted((fleet.tmp / "live").glob("*/fullchain.pem"))
            store = fleet.state()
            keeper = new_keeper(fleet, store, RecordingSink())
            with pytest.raises(InputError, match="gone"):
                async with keeper:
                    await keeper.prime([*paths, fleet.tmp / "gone" / "fullchain.pem"])
            assert fleet.responder.requests == []
            assert _workers_of_us() == []
            primed = await prime_all(fleet, new_keeper(fleet, store, RecordingSink()))
            store.close()
            assert [p.phase for p in primed] == ["good"] * 12
            assert len(fleet.responder.requests) == 12

    asyncio.run(scenario())


def test_the_workers_keep_the_limits_between_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    serve: Callable[[Handler], LoopbackServer],
) -> None:
    """The keeper hands the pool more fetches than `concurrency` at once (DEPTH times); the
    workers keep `per_host` between them: each its part (2 and 1 of 3), on its own requests
    (the first ones held until 3 are in flight: both workers then have theirs out)."""
    monkeypatch.setattr(keeper_module, "WORKERS_FROM", 8)
    crowded = Crowded(gather=3)
    server = serve(crowded)

    async def scenario() -> None:
        ca = CA()
        for index in range(12):
            leaf = ca.issue(f"s{index}.example", ocsp_urls=[server.url])
            leaf.write(tmp_path / "live" / f"s{index:04d}")
        config = keeper_config(tmp_path, workers=2, concurrency=5, per_host=3)
        fleet = Fleet(tmp_path, ca, OCSPResponder(ca), config)
        store = fleet.state()
        primed = await prime_all(fleet, new_keeper(fleet, store, RecordingSink()))
        store.close()
        assert [p.phase for p in primed] == ["failing"] * 12

    asyncio.run(scenario())
    assert crowded.peak == 3


@pytest.mark.parametrize(
    ("how", "told"),
    [
        (signal.SIGKILL, []),
        (signal.SIGSTOP, ["a worker process was silent for 2 s with work in hand: stopped"] * 2),
    ],
)
def test_a_worker_killed_or_stuck_midway_costs_only_speed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    how: signal.Signals,
    told: list[str],
) -> None:
    monkeypatch.setattr(keeper_module, "WORKERS_FROM", 8)
    monkeypatch.setattr(workers_module, "SILENCE", 2.0)

    async def scenario() -> None:
        async with leaves(tmp_path, 16, workers=2, concurrency=2, per_host=2) as fleet:
            store = fleet.state()
            keeper = new_keeper(fleet, store, RecordingSink())
            hit: list[int] = []

            def hit_workers(*_: object) -> None:
                if not hit:
                    for pid, _command in _workers_of_us():
                        os.kill(pid, how)
                        hit.append(pid)

            keeper.observers.append(hit_workers)
            primed = await prime_all(fleet, keeper)
            store.close()
            assert len(hit) == 2
            assert [p.phase for p in primed] == ["good"] * 16
            # A request a worker had sent when it was hit is sent again, and so is one it
            # had answered in the same turn of its loop, the answer not written yet (a
            # worker writes its answers together at the turn's end): at most two per worker
            # (each one's part of the limits is one request at a time).
            assert 16 <= len(fleet.responder.requests) <= 20
            assert not [pid for pid in hit if Path(f"/proc/{pid}").exists()]

    with caplog.at_level(logging.WARNING, logger="mustaple"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "worker process" in r.getMessage()]
    ended = "a worker process ended; its work goes on in the main process"
    silent = "a worker process was silent for 2 s with work in hand: stopped"
    if not told:  # a worker slowed 2 s by a busy machine before the kill may be told silent
        lines = [line for line in lines if line != silent]
    assert sorted(lines) == sorted([*told, ended])


@pytest.mark.parametrize(
    ("stray", "told", "silence"),
    [  # text is caught at once: a busy machine's slow start must not be taken for silence
        (b"hello from a sitecustomize\n", "sent what is not an answer (ValueError)", 30.0),
        (b"\x00\xff\xff\xff\x80", "was silent for 2 s with work in hand", 2.0),  # bad length
    ],
)
def test_a_worker_whose_output_is_garbled_costs_only_speed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stray: bytes,
    told: str,
    silence: float,
) -> None:
    """Bytes on a worker's stdout before its frames (a print at start-up): text is caught at
    its first bytes; a length no answer ever fills holds every frame back, beats included, so
    the worker is silent and stopped. Either way its work runs in the main process."""
    monkeypatch.setattr(keeper_module, "WORKERS_FROM", 8)
    monkeypatch.setattr(workers_module, "SILENCE", silence)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'MUSTAPLE_WORKER_LIMITS' in os.environ:\n"
        f"    sys.stdout.buffer.write({stray!r}); sys.stdout.flush()\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(site))

    async def scenario() -> None:
        async with leaves(tmp_path, 16, workers=2, concurrency=2, per_host=2) as fleet:
            store = fleet.state()
            keeper = new_keeper(fleet, store, RecordingSink())
            primed = await asyncio.wait_for(prime_all(fleet, keeper), 30)
            store.close()
            assert [p.phase for p in primed] == ["good"] * 16

    with caplog.at_level(logging.WARNING, logger="mustaple"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "worker process" in r.getMessage()]
    # "ended" is said once when a call was in hand as a worker went; both may be stopped
    # before the first call goes out (then the calls go to the main process unsaid)
    ended = "a worker process ended; its work goes on in the main process"
    assert lines.count(ended) <= 1, lines
    assert [line for line in lines if line != ended] == [f"a worker process {told}: stopped"] * 2


def _workers_of_us() -> list[tuple[int, str]]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                parent = parent_of(int(proc.name))
            except OSError:
                continue
            if parent == os.getpid() and "mustaple.adapters.workers" in command:
                found.append((int(proc.name), command))
    return found


def test_files_a_worker_cannot_load_read_as_they_do_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def problems(workers: int, tmp: Path) -> dict[str, str]:
        async with leaves(tmp, 10, workers=workers) as fleet:
            (tmp / "live" / "w0003" / "fullchain.pem").write_text("not a certificate\n")
            other = CA().issue("stranger.example")  # its issuer is in no file, no AIA URL
            (tmp / "live" / "w0005" / "fullchain.pem").write_bytes(other.cert_pem)
            store = fleet.state()
            keeper = new_keeper(fleet, store, RecordingSink())
            async with keeper:
                loaded = await keeper.scan()
            store.close()
            assert len(loaded) == 8
            return {p.path.parent.name: p.message for p in keeper.problems.values()}

    monkeypatch.setattr(keeper_module, "WORKERS_FROM", 4)
    in_workers = asyncio.run(problems(2, tmp_path / "workers"))
    in_process = asyncio.run(problems(0, tmp_path / "process"))
    assert set(in_workers) == {"w0003", "w0005"}
    assert {k: v.replace("/workers/", "/") for k, v in in_workers.items()} == {
        k: v.replace("/process/", "/") for k, v in in_process.items()
    }
    assert "certificate" in in_workers["w0003"]
    assert "issuer" in in_workers["w0005"]


def test_mustaple_prime_of_many_certificates_delivers_every_staple_and_reloads_once(
    tmp_path: Path,
) -> None:
    count = WORKERS_FROM + 20
    staples, reloads = tmp_path / "staples", tmp_path / "reloads.log"

    async def scenario() -> tuple[int, str, str]:
        async with leaves(tmp_path, count) as fleet:
            config = tmp_path / "mustaple.toml"
            config.write_text(
                f'state_dir = "{tmp_path / "state"}"\n'
                "[policy]\nworkers = 2\nconcurrency = 16\nper_host = 16\n"
                f'[[certificates]]\npaths = ["{tmp_path}/live/*/fullchain.pem"]\n'
                f'[sinks.files]\ntype = "file"\npath = "{staples}/{{name}}.der"\n'
                f'reload = "echo reloaded >> {reloads}"\n'
            )
            process = await asyncio.create_subprocess_exec(
                MUSTAPLE,
                "prime",
                "--config",
                str(config),
                *sorted(str(p) for p in (tmp_path / "live").glob("*/fullchain.pem")),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), 120)
            assert process.returncode is not None
            assert len(fleet.responder.requests) == count
            return process.returncode, out.decode(), err.decode()

    code, out, err = asyncio.run(scenario())
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == count
    assert all(line.startswith("OK w") for line in lines)
    assert lines[0].startswith("OK w0.example")
    assert lines[-1].startswith(f"OK w{count - 1}.")
    assert len(list(staples.glob("*.der"))) == count
    assert reloads.read_text() == "reloaded\n"
    assert "Traceback" not in err


@dataclass
class RecordingWatcher:
    """A `Watcher` keeping what it is told."""

    started: list[tuple[str, str]] = field(default_factory=list)
    ended: list[tuple[str, str]] = field(default_factory=list)

    def request_started(self, method: str, url: str) -> object:
        self.started.append((method, url))
        return url

    def request_ended(self, token: object, outcome: str) -> None:
        self.ended.append((str(token), outcome))


def test_a_request_a_worker_waits_on_is_shown_to_the_keeper_watchers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `prime` shows while it waits: a request hanging in a worker is told to the
    keeper's watchers after a second, and how it ended. A worker looks at its requests at
    each beat (every second), so one that lasts only two seconds could fall between two
    looks; this one lasts three."""
    monkeypatch.setattr(keeper_module, "WORKERS_FROM", 8)
    fetch = replace(QUICK_FETCH, total_timeout=3.0, attempts_per_url=1)

    async def scenario() -> RecordingWatcher:
        async with leaves(tmp_path, 10, workers=2, fetch=fetch) as fleet:
            paths = sorted((fleet.tmp / "live").glob("*/fullchain.pem"))
            hanging = x509.load_pem_x509_certificate(paths[3].read_bytes()).serial_number
            fleet.responder.set_behaviour(Behaviour.HANG, hanging)
            store, watcher = fleet.state(), RecordingWatcher()
            keeper = Keeper(
                fleet.config, store=store, sinks={"r": RecordingSink()}, watchers=[watcher]
            )
            async with keeper:
                primed = await keeper.prime(paths)
            store.close()
            assert [p.phase for p in primed].count("good") == 9
            return watcher

    watcher = asyncio.run(scenario())
    assert watcher.started
    assert all(url.startswith("http://127.0.0.1:") for _, url in watcher.started)
    assert sorted(url for _, url in watcher.started) == sorted(url for url, _ in watcher.ended)
    outcomes = [outcome for _, outcome in watcher.ended]
    assert "failed (TimeoutError)" in outcomes
    assert set(outcomes) <= {"failed (TimeoutError)", "HTTP 200"}


def test_a_worker_leaves_sigint_and_sigterm_to_the_keeper_and_ends_when_its_channel_closes(
    tmp_path: Path,
) -> None:
    """A Ctrl-C, or systemd stopping the unit, signals every process: the workers leave it to
    the keeper (one that died of it would have its fetches run in the keeper, after the
    stop), which ends them by closing their channel (an interrupted prime): each exits by
    itself at once, status 0, dropping its fetch to a responder that hangs (not killed after
    waiting for it)."""

    async def scenario() -> list[int | None]:
        ca = CA()
        async with OCSPResponder(ca) as responder:
            leaves = [
                ca.issue(f"s{index}.example", ocsp_urls=[responder.url]) for index in range(4)
            ]
            for leaf in leaves[2:]:
                responder.add(leaf)
                responder.set_behaviour(Behaviour.HANG, leaf.cert.serial_number)
            for leaf in leaves[:2]:
                responder.add(leaf)
            jobs = [FetchJob(make_target(leaf.cert, leaf.issuer)) for leaf in leaves]
            fallback = HttpFetcher.open(limit=2)
            pool = await WorkerPool.start(2, limits=Limits(2, 2), fallback=fallback)

            def fetch(job: FetchJob) -> asyncio.Future[FetchResult]:
                return asyncio.ensure_future(pool.fetch(job, clock=utc_now, rng=lambda: 0.5))

            good = await asyncio.gather(*map(fetch, jobs[:2]))  # one each: both are serving
            assert [result.staple is not None for result in good] == [True, True]
            for worker in pool.workers:
                assert worker.transport is not None
                for signum in (signal.SIGINT, signal.SIGTERM):
                    os.kill(worker.transport.get_pid(), signum)
            hanging = [fetch(job) for job in jobs[2:]]
            while len(responder.requests) < 4:
                await asyncio.sleep(0.05)
            owners = socket_owners()
            senders = {owners[r.peer[1]] for r in responder.requests[2:] if r.peer}
            assert len(senders) == 2  # both workers, alive, sent them
            assert {parent for _, parent in senders} == {os.getpid()}
            for future in hanging:
                future.cancel()
            await pool.close()
            await fallback.close()
            return [
                worker.transport.get_returncode() for worker in pool.workers if worker.transport
            ]

    assert asyncio.run(scenario()) == [0, 0]
