"""A renewed certificate whose new staple cannot be fetched yet, with nginx's `remove = "keep"`.

nginx cannot reload without its stapling file, so the file keeps the staple of the certificate
before the renewal. The next reload of nginx would serve the new certificate with it, which
clients refuse (the CertID names the old serial). Such a file is a trap (`delivery.Trap`):
the sink says so on that certificate, and no reload of ours springs it, in this process or in
another (`mustaple prime` of another certificate), until the new staple is written. Checked
on a real nginx: the certificate it serves and the reloads its log records.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from mustaple.adapters.probe import probe
from mustaple.adapters.sinks import build_sink
from mustaple.testing import CA, Leaf, ResponderThread, World, keeper_config, keeper_world
from outside import end_all, wait_for
from servers import NginxServer

A, B = "a.example.test", "b.example.test"
MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))


def served(nginx: NginxServer) -> tuple[int, int | None]:
    """The serial number of the certificate nginx serves, and the one its staple is about."""
    result = probe("127.0.0.1", nginx.port, servername=A)
    staple = result.staple
    about = ocsp.load_der_ocsp_response(staple).serial_number if staple else None
    return result.leaf.serial_number, about


def reloads(nginx: NginxServer) -> int:
    """The reloads nginx's own log records."""
    return nginx.error_log.read_text().count("reconfiguring")


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


def write_config(tmp: Path, table: dict[str, str], at_expiry: str) -> Path:
    lines = [f'state_dir = "{tmp}/state"', "[[certificates]]"]
    lines.append(f'paths = ["{tmp}/live/*/fullchain.pem"]')
    lines.append("[sinks.nginx]")
    lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    lines += ["[policy]", f"at_expiry = {json.dumps(at_expiry)}"]
    path = tmp / "mustaple.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def prime(config: Path, *paths: Path) -> tuple[int, str]:
    """A real `mustaple prime` process (the responder answers it from this event loop)."""
    process = await asyncio.create_subprocess_exec(
        MUSTAPLE,
        "prime",
        "--config",
        str(config),
        *map(str, paths),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"},
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


def sink_of(w: World, name: str) -> tuple[str | None, bool]:
    """The nginx sink's error on certificate `name`'s status, and whether it is a trap."""
    (view,) = [v for v in w.keeper.views() if v.name == name]
    (health,) = view.sinks
    return health.error, health.trap is not None


@dataclass
class Setting:
    """A keeper (in this process) of A and B, both stapled, one nginx sink with `remove =
    "keep"` reloading a real nginx that serves A; the same configuration in a file, for
    `mustaple` processes."""

    w: World
    nginx: NginxServer
    old: x509.Certificate  # A before its renewal
    config: Path

    def renew(self) -> Leaf:
        """A renewed; the responder does not know the new one yet (it answers unauthorized)."""
        new = self.w.ca.issue(A, ocsp_urls=[self.w.responder.url])
        new.write(self.w.tmp / "live" / A)
        return new


@asynccontextmanager
async def setting(tmp: Path, at_expiry: str = "remove") -> AsyncIterator[Setting]:
    """With `at_expiry` ("keep" keeps an expired staple of the same certificate, never the
    staple of the one before a renewal)."""
    live = tmp / "live"
    nginx = NginxServer(
        tmp / "nginx",
        cert=live / A / "fullchain.pem",
        key=live / A / "privkey.pem",
        stapling_file=tmp / "staples" / f"{A}.der",
    )
    table = {
        "type": "file",
        "path": f"{tmp}/staples/{{name}}.der",
        "remove": "keep",
        "reload": nginx.reload_command,
        "running": f"test -s {nginx.directory}/nginx.pid",
    }
    config = keeper_config(tmp, sinks={"nginx": table}, at_expiry=at_expiry)
    async with keeper_world(tmp, config, sinks={"nginx": build_sink("nginx", table)}) as w:
        old, _, _ = await w.stapled(A)
        w.issue(B)
        await w.keeper.scan()
        await w.keeper.tick()
        nginx.start()
        try:
            assert served(nginx) == (old.cert.serial_number, old.cert.serial_number)
            yield Setting(w, nginx, old.cert, write_config(tmp, table, at_expiry))
        finally:
            nginx.stop()


AT_EXPIRY = pytest.mark.parametrize("at_expiry", ["remove", "keep"])


@AT_EXPIRY
def test_no_reload_serves_a_renewed_certificate_with_the_old_ones_staple(
    tmp_path: Path, at_expiry: str
) -> None:
    asyncio.run(renewed_under_the_keeper(tmp_path, at_expiry))


@AT_EXPIRY
def test_a_prime_of_the_renewed_certificate_sets_the_trap_for_the_next(
    tmp_path: Path, at_expiry: str
) -> None:
    """No keeper saw the renewal: the deploy hook's `prime` of the renewed certificate
    finds the old staple in its file, and the `prime` of another one does not reload."""
    asyncio.run(renewed_with_no_keeper(tmp_path, at_expiry))


async def renewed_with_no_keeper(tmp: Path, at_expiry: str) -> None:
    async with setting(tmp, at_expiry) as s:
        s.renew()
        code, out = await prime(s.config, tmp / "live" / A / "fullchain.pem")
        assert (code, f"FAILED {A}" in out) == (1, True), out
        assert f"serial {s.old.serial_number:X}), and none is fetched" in out, out
        before = reloads(s.nginx)
        s.w.clock.now += timedelta(minutes=2)
        code, out = await prime(s.config, tmp / "live" / B / "fullchain.pem")
        assert (code, "reload held back" in out) == (1, True), out
        assert reloads(s.nginx) == before
        assert served(s.nginx) == (s.old.serial_number, s.old.serial_number)


async def renewed_under_the_keeper(tmp: Path, at_expiry: str) -> None:
    async with setting(tmp, at_expiry) as s:
        await trap_and_release(s)


async def trap_and_release(s: Setting) -> None:
    w, nginx, old, config = s.w, s.nginx, s.old, s.config
    new = s.renew()
    await w.keeper.scan()
    await w.keeper.tick()
    error, trapped = sink_of(w, A)
    assert trapped, error
    assert f"serial {old.serial_number:X}" in (error or ""), error
    assert (w.tmp / "staples" / f"{A}.der").exists()  # kept: nginx could not reload without

    before = reloads(nginx)
    # a deploy hook's `prime` of B (another process) writes B's newer staple: it learns the
    # trap from the status rows and does not reload (its answer is two minutes younger)
    w.clock.now += timedelta(minutes=2)
    code, out = await prime(config, w.tmp / "live" / B / "fullchain.pem")
    assert (code, f"FAILED {B}" in out, "reload held back" in out) == (1, True, True), out
    assert reloads(nginx) == before
    assert served(nginx) == (old.serial_number, old.serial_number)
    # `status --json` (another process) says both: A's trap, B's reload still to come
    rows = {row["name"]: row["sinks"][0] for row in status_json(config)}
    assert rows[A]["trap"] == {
        "path": f"{w.tmp}/staples/{A}.der",
        "serial": f"{old.serial_number:x}",
    }
    assert (rows[B]["trap"], rows[B]["reload_owed"]) == (None, True)
    # nor does this keeper, at B's next refresh
    b_staple = w.managed(B).held
    while w.managed(B).held == b_staple:
        await w.advance_to_next()
    error, trapped = sink_of(w, B)
    assert not trapped
    assert (error or "").startswith("reload held back: "), error
    assert reloads(nginx) == before
    assert served(nginx) == (old.serial_number, old.serial_number)

    # the CA answers for the new certificate: its staple is written, and nginx reloaded
    w.responder.add(new)
    while w.managed(A).held is None or sink_of(w, B)[0] is not None:
        await w.advance_to_next()
    assert sink_of(w, A) == (None, False)
    # nginx logs a reload once its master has handled the signal, not when the command returns
    await until(lambda: reloads(nginx) > before, "nginx reloads")
    await until(lambda: served(nginx)[0] == new.cert.serial_number, "nginx serves the new one")
    nginx.settle()
    assert served(nginx) == (new.cert.serial_number, new.cert.serial_number)


def test_a_trap_ends_with_its_certificate_and_comes_back_with_the_next(tmp_path: Path) -> None:
    """A trapped certificate whose file goes (removed from the configuration, or garbled
    mid-renewal) holds no reload back any more: no status row would say why, and no other
    process would hold back; a certificate back at that path is trapped again at once."""
    asyncio.run(trap_goes_and_comes(tmp_path))


async def trap_goes_and_comes(tmp: Path) -> None:
    runs = tmp / "runs"
    table = {
        "type": "file",
        "path": f"{tmp}/staples/{{name}}.der",
        "remove": "keep",
        "reload": f"echo run >> {runs}",
    }
    config = keeper_config(tmp, sinks={"nginx": table})
    async with keeper_world(tmp, config, sinks={"nginx": build_sink("nginx", table)}) as w:

        def ran() -> int:
            return len(runs.read_text().split()) if runs.exists() else 0

        async def refresh_b() -> None:
            held = w.managed(B).held
            while w.managed(B).held == held:
                await w.advance_to_next()

        async def held_back() -> int:
            """A is trapped: B's refresh reloads nothing. The reloads run so far."""
            await w.keeper.scan()
            await w.keeper.tick()
            assert sink_of(w, A)[1]
            before = ran()
            await refresh_b()
            assert (sink_of(w, B)[0] or "").startswith("reload held back: ")
            assert ran() == before
            return before

        await w.stapled(A)
        await w.stapled(B)
        live = tmp / "live" / A
        w.ca.issue(A, ocsp_urls=[w.responder.url]).write(live)  # unknown to the responder
        before = await held_back()

        garbled = (live / "fullchain.pem").read_bytes()
        (live / "fullchain.pem").write_bytes(b"garbled mid-write")
        await w.keeper.scan()
        await refresh_b()  # the owed reload is paid, and B's new staple reloads
        assert sink_of(w, B) == (None, False)
        assert ran() > before

        (live / "fullchain.pem").write_bytes(garbled)  # back, still unknown to the CA
        before = await held_back()

        shutil.rmtree(live)  # gone for good
        await w.keeper.scan()
        await refresh_b()
        assert sink_of(w, B) == (None, False)
        assert ran() > before


def run_config(tmp: Path, nginx: NginxServer, names: Sequence[str]) -> str:
    """A configuration keeping `names`' files, for real `mustaple` processes; a long
    watch_interval: `run` makes no pass of its own while the test works beside it."""
    paths = ", ".join(json.dumps(f"{tmp}/live/{name}/fullchain.pem") for name in names)
    return f"""state_dir = "{tmp}/state"
[[certificates]]
paths = [{paths}]
[sinks.nginx]
type = "file"
path = "{tmp}/staples/{{name}}.der"
remove = "keep"
reload = {json.dumps(nginx.reload_command)}
running = "test -s {nginx.directory}/nginx.pid"
[policy]
timeout = "2s"
attempts = 1
watch_interval = "1h"
"""


def test_a_certificate_left_out_at_a_sighup_takes_its_trap_along(tmp_path: Path) -> None:
    """`run` holds a renewed A's trap; a `prime` of B is held back (the reload owed, in B's
    status row). A SIGHUP with A out of the configuration: the new keeper reloads nginx for
    B; the old one wrote no row of its own over the prime's, and A's trap went with A."""
    ca = CA(key_type="ec")
    config = tmp_path / "mustaple.toml"
    with ResponderThread(ca, cache_for=timedelta(0)) as responder:  # a new answer each time
        for name in (A, B):
            leaf = ca.issue(name, ocsp_urls=[responder.url])
            responder.add(leaf)
            leaf.write(tmp_path / "live" / name)
        live = tmp_path / "live" / A
        nginx = NginxServer(
            tmp_path / "nginx",
            cert=live / "fullchain.pem",
            key=live / "privkey.pem",
            stapling_file=tmp_path / "staples" / f"{A}.der",
        )
        config.write_text(run_config(tmp_path, nginx, [A, B]))
        assert mustaple(config, "prime", "--all").returncode == 0
        with nginx:
            ca.issue(A, ocsp_urls=[responder.url]).write(live)  # unknown to the responder
            keeper = subprocess.Popen([MUSTAPLE, "run", "--config", str(config)])
            try:
                wait_for(lambda: "renewed" in (sink_errors(config)[A] or ""))
                before = reloads(nginx)
                primed = mustaple(config, "prime", str(tmp_path / "live" / B / "fullchain.pem"))
                assert primed.returncode == 1, primed.stdout
                assert "reload held back" in primed.stdout
                config.write_text(run_config(tmp_path, nginx, [B]))
                keeper.send_signal(signal.SIGHUP)
                wait_for(lambda: reloads(nginx) > before)
                assert sink_errors(config) == {B: None}
                keeper.terminate()
                assert keeper.wait(20) == 0
            finally:
                end_all([keeper])


def mustaple(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [MUSTAPLE, *args, "--config", str(config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def status_json(config: Path) -> list[dict[str, Any]]:
    rows = json.loads(mustaple(config, "status", "--json").stdout)
    assert isinstance(rows, list)
    return rows


def sink_errors(config: Path) -> dict[str, str | None]:
    """Each certificate's nginx sink error, as `mustaple status --json` says."""
    rows = status_json(config)
    return {row["name"]: row["sinks"][0]["error"] if row["sinks"] else None for row in rows}


def test_a_renewal_to_a_certificate_without_ocsp_says_no_staple_will_come(tmp_path: Path) -> None:
    """Renewed by a CA that left OCSP (no OCSP URL): no staple will ever come for the new
    certificate, so the trap's line says what the operator must do instead of waiting."""
    asyncio.run(renewed_without_ocsp(tmp_path))


async def renewed_without_ocsp(tmp: Path) -> None:
    table = {"type": "file", "path": f"{tmp}/staples/{{name}}.der", "remove": "keep"}
    config = keeper_config(tmp, sinks={"nginx": table})
    async with keeper_world(tmp, config, sinks={"nginx": build_sink("nginx", table)}) as w:
        old, _, _ = await w.stapled(A)
        w.ca.issue(A, ocsp_urls=[]).write(tmp / "live" / A)
        await w.keeper.scan()
        await w.keeper.tick()
        error, trapped = sink_of(w, A)
        assert trapped
        assert f"serial {old.cert.serial_number:X}), and this one can have none" in (error or "")
        assert f"take {tmp}/staples/{A}.der out of the server's configuration" in (error or "")


def test_a_trap_whose_file_cannot_be_read_stays_a_trap(tmp_path: Path) -> None:
    """A's staple file, trapped, turns into a directory (a file that cannot be read): the
    keeper's next removal pass keeps the trap in A's status row, saying why, so a `prime`
    of B (another process) still does not reload nginx, which goes on serving A's old
    certificate with its own staple."""
    asyncio.run(trapped_and_unreadable(tmp_path))


async def trapped_and_unreadable(tmp: Path) -> None:
    async with setting(tmp) as s:
        w, nginx = s.w, s.nginx
        s.renew()
        await w.keeper.scan()
        await w.keeper.tick()
        assert sink_of(w, A)[1]
        staple = tmp / "staples" / f"{A}.der"
        kept = staple.read_bytes()
        staple.unlink()
        staple.mkdir()
        await w.advance_to_next()  # the removal is delivered again: the file cannot be read
        error, trapped = sink_of(w, A)
        assert f"{staple}: is a directory" in (error or ""), error
        assert f"serial {s.old.serial_number:X}), and may hold it still" in (error or ""), error
        assert trapped, error
        rows = {row["name"]: row["sinks"][0] for row in status_json(s.config)}
        assert rows[A]["trap"] == {"path": str(staple), "serial": f"{s.old.serial_number:x}"}
        before = reloads(nginx)
        w.clock.now += timedelta(minutes=2)
        code, out = await prime(s.config, tmp / "live" / B / "fullchain.pem")
        assert (code, "reload held back" in out) == (1, True), out
        assert reloads(nginx) == before
        assert served(nginx) == (s.old.serial_number, s.old.serial_number)
        staple.rmdir()
        staple.write_bytes(kept)  # for nginx to stop with


def test_a_trap_whose_file_cannot_be_read_outlives_a_sighup(tmp_path: Path) -> None:
    """`run` holds a renewed A's trap; A's staple file turns into a directory; a SIGHUP: the
    new keeper cannot read the file, but learns the trap from the status rows, keeps it in
    A's row, and a `prime` of B (another process) still does not reload nginx."""
    ca = CA(key_type="ec")
    config = tmp_path / "mustaple.toml"
    staple = tmp_path / "staples" / f"{A}.der"
    with ResponderThread(ca, cache_for=timedelta(0)) as responder:
        for name in (A, B):
            leaf = ca.issue(name, ocsp_urls=[responder.url])
            responder.add(leaf)
            leaf.write(tmp_path / "live" / name)
        live = tmp_path / "live" / A
        nginx = NginxServer(
            tmp_path / "nginx",
            cert=live / "fullchain.pem",
            key=live / "privkey.pem",
            stapling_file=staple,
        )
        config.write_text(run_config(tmp_path, nginx, [A, B]))
        assert mustaple(config, "prime", "--all").returncode == 0
        with nginx:
            old = x509.load_pem_x509_certificate((live / "fullchain.pem").read_bytes())
            ca.issue(A, ocsp_urls=[responder.url]).write(live)  # unknown to the responder
            keeper = subprocess.Popen([MUSTAPLE, "run", "--config", str(config)])
            try:
                wait_for(lambda: "renewed" in (sink_errors(config)[A] or ""))
                kept = staple.read_bytes()
                staple.unlink()
                staple.mkdir()
                keeper.send_signal(signal.SIGHUP)
                wait_for(lambda: "is a directory" in (sink_errors(config)[A] or ""))
                rows = {row["name"]: row["sinks"][0] for row in status_json(config)}
                assert rows[A]["trap"] == {"path": str(staple), "serial": f"{old.serial_number:x}"}
                before = reloads(nginx)
                primed = mustaple(config, "prime", str(tmp_path / "live" / B / "fullchain.pem"))
                assert primed.returncode == 1, primed.stdout
                assert "reload held back" in primed.stdout, primed.stdout
                assert reloads(nginx) == before
                keeper.terminate()
                assert keeper.wait(20) == 0
            finally:
                end_all([keeper])
                if staple.is_dir():
                    staple.rmdir()
                    staple.write_bytes(kept)  # for nginx to stop with
