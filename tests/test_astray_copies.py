"""Staple files removed or replaced by something else while `mustaple run` runs.

An operator, a configuration management tool that purges a directory, a restored backup:
the staple file a server reads at its start is gone, or holds other bytes, while the keeper
believes the sink has its staple. Until the next refresh (days away) nothing wrote it again:
`status` said every sink took the staple, nginx then refused to start at all (its
`ssl_stapling_file` missing), and a restarted HAProxy stapled nothing, which must-staple
clients refuse. The keeper now looks at every pass (`Watches`) and writes it again.

Judged from outside: the files, real nginx and HAProxy restarted and asked for their staple
(`openssl s_client -status`), `mustaple status --json`, a reload script that counts its runs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from mustaple.adapters.fetch import fetch_staple
from mustaple.adapters.sinks import build_sink
from mustaple.core.certs import make_target
from mustaple.keeper.keeper import COPIES_EVERY
from mustaple.testing import CA, ResponderThread, World, keeper_config, keeper_world
from outside import end_all, wait_for
from servers import HAProxyServer, NginxServer, staple_from
from test_owed_reloads import notify_socket, passes
from test_sinks import haproxy_pem

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
NAME = "a.example.test"


def sinks_of(config: Path) -> dict[str, Any]:
    """Each sink's part of the one certificate's row, as `mustaple status --json` says it."""
    command = [MUSTAPLE, "status", "--json", "--config", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    (row,) = json.loads(done.stdout)
    return {sink["sink"]: sink for sink in row["sinks"]}


def write_config(tmp: Path, nginx: NginxServer, haproxy: HAProxyServer, pem: Path) -> Path:
    path = tmp / "mustaple.toml"
    path.write_text(
        f'state_dir = "{tmp}/state"\n'
        f'[[certificates]]\npaths = ["{nginx.cert}"]\nsinks = ["nginx"]\n'
        f'[[certificates]]\npaths = ["{pem}"]\nsinks = ["haproxy"]\n'
        f'[sinks.nginx]\ntype = "file"\npath = "{tmp}/staples/{{name}}.der"\n'
        f'reload = "{nginx.reload_command}"\nrunning = "test -s {nginx.directory}/nginx.pid"\n'
        f'[sinks.haproxy]\ntype = "haproxy"\nsocket = "{haproxy.api_socket}"\n'
        '[policy]\ntimeout = "2s"\nwatch_interval = "1s"\n'
    )
    return path


def test_staple_files_removed_by_hand_are_written_again_for_the_servers_next_start(
    tmp_path: Path,
) -> None:
    """A real `mustaple run` (watch_interval 1 s) for a real nginx (file sink) and a real
    HAProxy: once both staple, the nginx staple file and HAProxy's `.ocsp` are removed.
    Within seconds both are back, byte for byte; nginx and HAProxy restarted then start and
    staple the staple, and `status` says both sinks have it."""
    ca = CA()
    with (
        ResponderThread(ca, validity=timedelta(days=7)) as responder,
        notify_socket(tmp_path) as (sock, env),
    ):
        leaf = ca.issue(NAME, ocsp_urls=[responder.url])
        responder.add(leaf)
        files = leaf.write(tmp_path / "live" / NAME)
        pem = haproxy_pem(leaf, tmp_path / "certs")
        staple, ocsp = tmp_path / "staples" / f"{NAME}.der", Path(f"{pem}.ocsp")
        nginx = NginxServer(
            tmp_path / "nginx", cert=files.fullchain, key=files.key, stapling_file=staple
        )
        haproxy = HAProxyServer(tmp_path / "haproxy", pem=pem)
        config = write_config(tmp_path, nginx, haproxy, pem)
        with (tmp_path / "run.err").open("w") as err:
            run = subprocess.Popen([MUSTAPLE, "run", "--config", str(config)], env=env, stderr=err)
        try:
            wait_for(lambda: staple.exists() and ocsp.exists())  # the servers are not running
            with nginx, haproxy:
                stored = staple.read_bytes()
                assert ocsp.read_bytes() == stored
                assert staple_from(nginx.port, NAME) == stored
                assert staple_from(haproxy.port, NAME) == stored

                staple.unlink()
                ocsp.unlink()
                wait_for(lambda: staple.exists() and ocsp.exists())  # COPIES_PASSES: 6 s
                passes(sock, 1)  # the pass that wrote them has reloaded nginx
                assert (staple.read_bytes(), ocsp.read_bytes()) == (stored, stored)
                nginx.stop()
                nginx.start()  # `systemctl restart nginx`: no start without the file
                haproxy.restart()
                assert staple_from(nginx.port, NAME) == stored
                assert staple_from(haproxy.port, NAME) == stored
                sinks = sinks_of(config)
                assert [(s["ok"], s["error"]) for s in sinks.values()] == [(True, None)] * 2
            run.terminate()
            assert run.wait(20) == 0
        finally:
            end_all([run])
    log = (tmp_path / "run.err").read_text()
    assert "Traceback" not in log
    assert f"{staple} is gone (removed or replaced by something else): written again" in log


def reload_script(tmp: Path) -> str:
    """A reload command that adds a line to `tmp/runs` each time it runs."""
    script = tmp / "reload.sh"
    script.write_text(f"#!/bin/sh\necho run >> {tmp}/runs\n")
    script.chmod(0o755)
    return str(script)


def runs(tmp: Path) -> int:
    path = tmp / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


async def looked_again(w: World) -> None:
    """A pass once the copies are due to be looked at again (COPIES_EVERY later)."""
    w.clock.now += COPIES_EVERY
    await w.keeper.tick()


def test_a_staple_file_replaced_or_its_directory_removed_is_written_again_and_reloaded(
    tmp_path: Path,
) -> None:
    """On a clock the test moves: a staple file holding an older staple again (a restored
    backup) is written back at the next pass, and the server reloaded once; one as new, or
    a strictly newer one, put there stays (the newer one taken); a directory removed, then
    blocked by a file, is a failing sink in `status` until the path is free again, then
    written within the retry; and a file left alone costs no reload."""
    asyncio.run(replaced(tmp_path))


async def replaced(tmp: Path) -> None:
    table = {"type": "file", "path": f"{tmp}/staples/{{name}}.der", "reload": reload_script(tmp)}
    config = keeper_config(tmp, sinks={"files": table})
    path = tmp / "mustaple.toml"  # the same, for `mustaple status`
    sink = "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())
    path.write_text(
        f'state_dir = "{tmp}/state"\n[[certificates]]\npaths = ["{tmp}/live/*/fullchain.pem"]\n'
        f"[sinks.files]\n{sink}"
    )
    async with keeper_world(tmp, config, sinks={"files": build_sink("files", table)}) as w:
        leaf, managed, first = await w.stapled(NAME)
        staple = tmp / "staples" / f"{NAME}.der"
        await w.advance_to_next()
        second = managed.held
        assert second is not None
        assert second.der != first.der
        assert (staple.read_bytes(), runs(tmp)) == (second.der, 2)
        await w.keeper.tick()
        assert runs(tmp) == 2  # left alone: nothing to do

        staple.write_bytes(first.der)  # a backup restored
        await looked_again(w)
        assert (staple.read_bytes(), runs(tmp)) == (second.der, 3)
        await w.keeper.tick()
        assert runs(tmp) == 3

        target = make_target(leaf.cert, leaf.issuer)
        same_age = await fetch_staple(target, clock=w.clock)  # signed again: other bytes
        assert same_age.staple is not None
        assert same_age.staple.der != second.der
        staple.write_bytes(same_age.staple.der)  # another process's, as good: left alone
        await looked_again(w)
        assert (staple.read_bytes(), runs(tmp)) == (same_age.staple.der, 3)

        w.clock.now += timedelta(minutes=1)  # a newer answer, put there by another tool
        newer = await fetch_staple(target, clock=w.clock)
        assert newer.staple is not None
        staple.write_bytes(newer.staple.der)
        await w.keeper.tick()
        assert managed.held is not None
        assert managed.held.der == newer.staple.der  # taken
        assert staple.read_bytes() == newer.staple.der

        shutil.rmtree(staple.parent)
        staple.parent.write_bytes(b"")  # the directory cannot be made again
        await looked_again(w)
        row = sinks_of(path)["files"]
        assert not row["ok"], row
        assert str(staple.parent) in row["error"], row
        staple.parent.unlink()
        w.clock.now += timedelta(seconds=5)  # the delivery's retry
        await w.keeper.tick()
        assert staple.read_bytes() == newer.staple.der
        row = sinks_of(path)["files"]
        assert (row["ok"], row["error"]) == (True, None), row
