"""A reload a `mustaple prime` failed, paid by the keeper beside it, even when the prime stored
nothing new.

The prime fetches an answer as old as the stored one (a responder that signs every answer
afresh with the same times: the store keeps the answer's age, by the rule for "newer"), writes
its bytes to the staple file, and the server's reload fails. The keeper takes no new answer
from the store, so nothing of its own would deliver for hours; it must still hear the debt in
the status rows at its next look at the store, reload once, record the outcome, and back off
while the reload keeps failing.

Judged from outside: the reload is a script that counts its runs in a file (and fails while a
flag file is there), `mustaple status --json` reads the rows, sqlite3 the stored answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mustaple.adapters.sinks import build_sink
from mustaple.core.clock import utc_now
from mustaple.testing import CA, ResponderThread, keeper_config, keeper_world
from outside import end_all, wait_for
from servers import RedisServer

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
NAME = "a.example.test"


def reload_script(tmp: Path, *, once: bool) -> str:
    """A reload command that adds a line to `tmp/runs` each time it runs, and fails while
    `tmp/fail` is there (`once`: the run that fails removes it, keeping the staple files as
    they were then in `tmp/failed`)."""
    script = tmp / "reload.sh"
    keep = f"mkdir -p {tmp}/failed; cp {tmp}/staples/* {tmp}/failed/"
    failing = f"{keep}; rm {tmp}/fail; exit 1" if once else "exit 1"
    script.write_text(
        f"#!/bin/sh\necho run >> {tmp}/runs\nif [ -e {tmp}/fail ]; then {failing}; fi\n"
    )
    script.chmod(0o755)
    return str(script)


def runs(tmp: Path) -> int:
    """How often the reload ran."""
    path = tmp / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def sink_table(tmp: Path, reload: str) -> dict[str, str]:
    return {"type": "file", "path": f"{tmp}/staples/{{name}}.der", "reload": reload}


def write_config(tmp: Path, table: dict[str, str], watch_interval: str) -> Path:
    """The configuration file the `mustaple` processes read (one file sink, `files`)."""
    sink = "\n".join(f"{key} = {json.dumps(value)}" for key, value in table.items())
    path = tmp / "mustaple.toml"
    path.write_text(
        f'state_dir = "{tmp}/state"\n'
        f'[[certificates]]\npaths = ["{tmp}/live/*/fullchain.pem"]\n'
        f"[sinks.files]\n{sink}\n"
        f'[policy]\ntimeout = "2s"\nattempts = 1\nwatch_interval = "{watch_interval}"\n'
    )
    return path


def stored_this_update(tmp: Path) -> str:
    """The thisUpdate of the answer the state database holds for the one certificate."""
    uri = f"file:{tmp}/state/state.db?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
        (row,) = db.execute("SELECT this_update FROM staples").fetchall()
    return str(row[0])


def fetched_long_enough(tmp: Path, min_interval: timedelta) -> bool:
    """Whether the stored answer was fetched more than `min_interval` ago (by this clock)."""
    uri = f"file:{tmp}/state/state.db?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
        (row,) = db.execute("SELECT fetched_at FROM staples").fetchall()
    fetched = datetime.fromisoformat(str(row[0]))
    return utc_now() - fetched.replace(tzinfo=fetched.tzinfo or UTC) > min_interval


def sink_row(config: Path) -> dict[str, Any]:
    """The file sink's part of the certificate's row, as `mustaple status --json` says it."""
    command = [MUSTAPLE, "status", "--json", "--config", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    (row,) = json.loads(done.stdout)
    (sink,) = row["sinks"]
    assert isinstance(sink, dict)
    return sink


@contextmanager
def notify_socket(tmp: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A systemd notify socket, and the environment that points a process at it."""
    path = tmp / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        yield sock, {**os.environ, "NOTIFY_SOCKET": str(path)}


def passes(sock: socket.socket, count: int, *, drop: bool = True) -> None:
    """Wait for `count` passes of `mustaple run` from now on (each ends with a STATUS of its
    last pass); what it told before is dropped first, unless not `drop` (the passes it may
    have told already count: a pass that follows an event the test waited for otherwise)."""
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while drop and sock.recv(4096):
            pass
    sock.settimeout(30)
    seen = 0
    while seen < count:
        lines = sock.recv(4096).decode().splitlines()
        seen += sum(line.startswith("STATUS=") and "last pass" in line for line in lines)


def a_failed_prime_is_paid_once(
    tmp_path: Path, config: Path, fullchain: Path, sock: socket.socket
) -> None:
    """Beside a running keeper that delivered once: a real `mustaple prime` whose reload fails
    (once) and that stores nothing newer (its bytes only differ); then the keeper reloads
    once (the start's, the prime's, the keeper's: three runs, and no more over three passes)
    and the row says the debt is paid."""
    before = stored_this_update(tmp_path)
    staple = (tmp_path / "staples" / f"{NAME}.der").read_bytes()
    (tmp_path / "fail").touch()
    prime = [MUSTAPLE, "prime", "--config", str(config), str(fullchain)]
    primed = subprocess.run(prime, capture_output=True, text=True, timeout=60, check=False)
    assert primed.returncode == 1, primed.stdout + primed.stderr
    assert "reload failed" in primed.stdout, primed.stdout
    assert not (tmp_path / "fail").exists()  # its reload ran, and failed
    assert stored_this_update(tmp_path) == before  # nothing newer stored
    # its bytes, which the server would have loaded (the keeper may have written the stored
    # ones again already, paying the debt)
    assert (tmp_path / "failed" / f"{NAME}.der").read_bytes() != staple
    wait_for(lambda: runs(tmp_path) == 3)
    passes(sock, 3)
    assert runs(tmp_path) == 3  # once
    sink = sink_row(config)
    assert (sink["ok"], sink["error"], sink["reload_owed"]) == (True, None, False), sink


def test_a_running_keeper_pays_the_reload_a_prime_failed_without_storing_anything_new(
    tmp_path: Path,
) -> None:
    """A real `mustaple run` (watch_interval 1 s) and a real `mustaple prime` beside it: the
    prime's reload fails (once) and it stores no newer answer; the keeper reloads once at its
    next look at the store, and the row says the debt is paid."""
    frozen = utc_now().replace(microsecond=0)  # every answer of the same age, signed afresh
    ca = CA()
    table = sink_table(tmp_path, reload_script(tmp_path, once=True))
    config = write_config(tmp_path, table, "1s")
    with (
        ResponderThread(ca, cache_for=timedelta(0), clock=lambda: frozen) as responder,
        notify_socket(tmp_path) as (sock, env),
    ):
        leaf = ca.issue(NAME, ocsp_urls=[responder.url])
        responder.add(leaf)
        files = leaf.write(tmp_path / "live" / NAME)
        with (tmp_path / "run.err").open("w") as err:
            run = subprocess.Popen(
                [MUSTAPLE, "run", "--config", str(config)], env=env, stderr=err, text=True
            )
        try:
            wait_for(lambda: runs(tmp_path) == 1)  # its first delivery
            a_failed_prime_is_paid_once(tmp_path, config, files.fullchain, sock)
            run.terminate()
            assert run.wait(20) == 0
        finally:
            end_all([run])
    assert "Traceback" not in (tmp_path / "run.err").read_text()


def test_a_keeper_pays_a_primes_failed_reload_once_per_retry_and_backs_off(
    tmp_path: Path,
) -> None:
    """The keeper on a clock the test moves, a real `mustaple prime` beside it: the reload
    keeps failing, so the keeper tries again after 5 s, then 10 s (as after a failure of its
    own), never in between; once it works, the row is paid and no reload follows."""
    asyncio.run(keeps_failing(tmp_path))


async def keeps_failing(tmp: Path) -> None:
    table = sink_table(tmp, reload_script(tmp, once=False))
    config = keeper_config(tmp, sinks={"files": table})
    async with keeper_world(tmp, config, sinks={"files": build_sink("files", table)}) as w:
        await w.stapled(NAME)  # the same age as every answer the responder gives meanwhile
        assert runs(tmp) == 1
        path = write_config(tmp, table, "1h")
        before = stored_this_update(tmp)

        (tmp / "fail").touch()
        code, out = await prime(path, tmp / "live" / NAME / "fullchain.pem")
        assert (code, "reload failed" in out) == (1, True), out
        assert stored_this_update(tmp) == before
        assert runs(tmp) == 2

        await w.keeper.tick()  # its next look at the store: the debt, paid (and failed)
        assert runs(tmp) == 3
        sink = sink_row(path)
        assert sink["reload_owed"] is True, sink
        assert sink["error"].startswith("reload failed: "), sink
        await w.keeper.tick()  # no time passed: no reload
        assert runs(tmp) == 3

        for wait in (5, 10):  # tried again after 5 s, then 10 s, not before
            w.clock.now += timedelta(seconds=wait - 1)
            await w.keeper.tick()
            assert runs(tmp) == 3 + (wait == 10)
            w.clock.now += timedelta(seconds=1)
            await w.keeper.tick()
            assert runs(tmp) == 4 + (wait == 10)

        (tmp / "fail").unlink()
        await w.advance_to_next()
        assert runs(tmp) == 6
        sink = sink_row(path)
        assert (sink["error"], sink["reload_owed"]) == (None, False), sink
        w.clock.now += timedelta(minutes=10)
        await w.keeper.tick()
        assert runs(tmp) == 6  # paid: no reload more


async def prime(config: Path, cert: Path) -> tuple[int, str]:
    """A real `mustaple prime` process (the responder answers it from this event loop)."""
    process = await asyncio.create_subprocess_exec(
        MUSTAPLE,
        "prime",
        "--config",
        str(config),
        str(cert),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


def test_a_running_fleet_member_pays_the_reload_a_prime_failed(tmp_path: Path) -> None:
    """The same in fleet mode: a real `mustaple run` in a fleet on a real redis-server, and
    a real `mustaple prime` of the same configuration beside it. The prime stores and shares
    nothing newer, its reload fails (once); the member reloads once within its watch
    interval, and the row says the debt is paid."""
    frozen = utc_now().replace(microsecond=0)
    ca = CA()
    table = sink_table(tmp_path, reload_script(tmp_path, once=True))
    config = write_config(tmp_path, table, "1s")
    with (
        RedisServer(tmp_path / "redis") as redis,
        ResponderThread(ca, cache_for=timedelta(0), clock=lambda: frozen) as responder,
        notify_socket(tmp_path) as (sock, env),
    ):
        fleet = f'[fleet]\nredis = "{redis.url}"\nprefix = "t:"\nmember = "m0"\n'
        # the prime fetches again (nothing newer: its bytes only differ)
        text = config.read_text().replace("[policy]\n", '[policy]\nmin_interval = "1s"\n')
        config.write_text(text + fleet)
        leaf = ca.issue(NAME, ocsp_urls=[responder.url])
        responder.add(leaf)
        files = leaf.write(tmp_path / "live" / NAME)
        with (tmp_path / "run.err").open("w") as err:
            run = subprocess.Popen(
                [MUSTAPLE, "run", "--config", str(config)], env=env, stderr=err, text=True
            )
        try:
            wait_for(lambda: runs(tmp_path) == 1)  # its first delivery
            # past min_interval since the member's fetch (with room for the clocks' grain):
            # the prime fetches instead of taking the fleet's answer (same bytes, no reload)
            wait_for(lambda: fetched_long_enough(tmp_path, timedelta(seconds=1.5)))
            a_failed_prime_is_paid_once(tmp_path, config, files.fullchain, sock)
            run.terminate()
            assert run.wait(20) == 0
        finally:
            end_all([run])
    assert "Traceback" not in (tmp_path / "run.err").read_text()
