"""examples/mustaple.service, hardened, shown to work: real `mustaple prime`, `run` and
`status` in its sandbox, emulated from the unit's own lines (tests/sandbox.py: there is no
systemd here to start it), keep a real nginx started outside the sandbox stapling, reloaded
by `nginx -s reload` from inside; what the sandbox refuses fails with one clear line.

Judged from outside: exit codes, the staple file, what nginx staples (`openssl s_client`),
the HTTP endpoints and `status --json`. These tests need root (CI runs as root).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mustaple.testing import CA, Behaviour, ResponderThread
from outside import end_all, get_json, http_get, wait_for
from sandbox import Sandbox, read_unit
from servers import NginxServer, free_port, staple_from

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
NAME = "sandboxed.test"
HARDENING = {  # what the sandbox emulates, as the unit must say it
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "NoNewPrivileges": "true",
    "MemoryDenyWriteExecute": "true",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
}


@dataclass
class Server:
    """A server's file system (`sandbox.root`) with certbot's layout, one must-staple
    certificate, nginx (started outside the sandbox) and mustaple's configuration."""

    sandbox: Sandbox
    responder: ResponderThread
    nginx: NginxServer
    http_port: int
    runs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.sandbox.path("/etc/mustaple/mustaple.toml")

    @property
    def staple(self) -> Path:
        return self.sandbox.path(f"/var/lib/mustaple/staples/{NAME}.der")

    def write_config(
        self, sink_path: str, reload: str, state_dir: str = "/var/lib/mustaple"
    ) -> None:
        """The configuration, as README's install would have it, at the server's paths."""
        pid = self.nginx.directory / "nginx.pid"
        live = self.sandbox.path("/etc/letsencrypt/live")
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"""
state_dir = {json.dumps(str(self.sandbox.path(state_dir)))}

[[certificates]]
paths = [{json.dumps(f"{live}/*/fullchain.pem")}]
sinks = ["nginx"]

[sinks.nginx]
type = "file"
path = {json.dumps(str(self.sandbox.path(sink_path)))}
remove = "keep"
reload = {json.dumps(reload)}
running = {json.dumps(f"test -s {pid}")}

[policy]
timeout = "2s"
attempts = 1
watch_interval = "1s"

[http]
listen = "127.0.0.1:{self.http_port}"
""")

    def mustaple(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`mustaple ARGS --config ...` in the sandbox, to its end."""
        return in_sandbox(self.sandbox, self.sandbox.mustaple, *args, "--config", self.config)

    def run(self) -> subprocess.Popen[str]:
        """`mustaple run` in the sandbox, in the background."""
        command = self.sandbox.command(self.sandbox.mustaple, "run", "--config", self.config)
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.runs.append(process)
        return process

    def status(self) -> dict[str, Any]:
        shown = self.mustaple("status", "--json")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        (row,) = json.loads(shown.stdout)
        assert isinstance(row, dict)
        return row

    def serves(self, staple: bytes) -> None:
        """Wait until nginx staples `staple` (`nginx -s reload` returns once it has signalled
        the master, before the new workers serve)."""
        wait_for(lambda: staple_from(self.nginx.port, NAME) == staple)


def in_sandbox(sandbox: Sandbox, *argv: str | Path) -> subprocess.CompletedProcess[str]:
    command = sandbox.command(*argv)
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def without_traceback(done: subprocess.CompletedProcess[str]) -> str:
    """Its output, after checking that there is no traceback in it."""
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    return output


def without_refusal(done: subprocess.CompletedProcess[str]) -> str:
    """Its output, after checking that no traceback and no refused write is in it."""
    output = without_traceback(done)
    assert "Read-only file system" not in output, output
    return output


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    assert os.geteuid() == 0, "the sandbox is made as systemd makes it: as root (as CI runs)"
    unit = read_unit()
    sandbox = Sandbox(tmp_path / "root", unit)
    for unit_path, _ in unit.writable():  # StateDirectory=: systemd makes it, mode 0755
        sandbox.path(unit_path).mkdir(parents=True, exist_ok=True)
    ca = CA(key_type="ec")
    with ResponderThread(ca) as responder:
        leaf = ca.issue(NAME, ocsp_urls=[responder.url], must_staple=True)
        responder.add(leaf)
        live = sandbox.path("/etc/letsencrypt/live")
        files = leaf.write(live / NAME)
        live.chmod(0o700)  # as certbot leaves live/ and archive/: root's alone
        nginx = NginxServer(
            sandbox.path("/run/nginx"),
            cert=files.fullchain,
            key=files.key,
            stapling_file=sandbox.path(f"/var/lib/mustaple/staples/{NAME}.der"),
        )
        s = Server(sandbox, responder, nginx, free_port())
        s.write_config("/var/lib/mustaple/staples/{name}.der", nginx.reload_command)
        try:
            yield s
        finally:
            end_all(s.runs)
            nginx.stop()


def test_the_unit_has_the_sandbox_the_docs_describe() -> None:
    """Every directive the emulation reads is in the unit, with the value the docs give; the
    unit keeps no capability and writes only below its state directory."""
    unit = read_unit()
    assert {key: unit.one(key) for key in HARDENING} == HARDENING
    assert unit.capabilities() == []
    assert unit.writable() == [("/var/lib/mustaple", True)]


def test_prime_run_and_status_work_in_the_sandbox_and_nginx_staples_what_they_deliver(
    server: Server,
) -> None:
    """The documented order in the sandbox: `prime --all` with nginx stopped (the file is
    written for its start), nginx started; a newer staple primed is reloaded into nginx by
    `nginx -s reload` from inside; `run` serves its pages, and its own delivery at its start
    reaches nginx too; `status --json` reads it all. No write is refused anywhere."""
    s = server
    s.responder.set_behaviour(Behaviour.STALE)  # valid, older than what comes next
    primed = s.mustaple("prime", "--all")
    assert primed.returncode == 0, without_refusal(primed)
    assert "the server is not running" in without_refusal(primed)
    first = s.staple.read_bytes()
    s.nginx.start()
    s.serves(first)

    s.responder.set_behaviour(Behaviour.GOOD)
    again = s.mustaple("prime", "--all")
    assert again.returncode == 0, without_refusal(again)
    second = s.staple.read_bytes()
    assert second != first
    s.serves(second)  # reloaded from inside the sandbox
    assert s.status()["sinks"][0]["reload_owed"] is False

    s.staple.write_bytes(first)  # an older staple put back by hand, and loaded
    s.nginx.reload()
    s.serves(first)
    run = s.run()
    base = f"http://127.0.0.1:{s.http_port}"
    wait_for(lambda: http_get(f"{base}/healthz")[0] == 200)
    assert_sandboxed(run.pid)
    (cert,) = get_json(f"{base}/status")["certificates"]
    assert cert["state"] == "good"
    assert s.staple.read_bytes() == second  # its start delivered the stored staple
    s.serves(second)  # and reloaded nginx
    row = s.status()
    assert row["state"] == "good", row
    [sink] = row["sinks"]
    assert (sink["ok"], sink["error"], sink["reload_owed"]) == (True, None, False), sink

    run.send_signal(signal.SIGTERM)
    assert run.wait(30) == 0
    log = run.stderr.read() if run.stderr else ""
    for bad in ("Traceback", "Read-only file system", " ERROR ", "error:"):
        assert bad not in log, log


def assert_sandboxed(pid: int) -> None:
    """Process `pid` runs as the unit says, seen from outside in /proc: no capability, no
    new privileges, the root read-only, the state directory writable, a /tmp of its own."""
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    assert (status["CapEff"], status["CapBnd"], status["NoNewPrivs"]) == ("0" * 16, "0" * 16, "1")
    mounts = {
        fields[4]: fields[5].split(",")[0]
        for fields in map(str.split, Path(f"/proc/{pid}/mountinfo").read_text().splitlines())
    }
    assert mounts["/"] == "ro"
    assert mounts["/tmp"] == "rw"
    assert {mounts[p] for p in mounts if p.endswith("/var/lib/mustaple")} == {"rw"}


def test_the_sandbox_is_what_the_unit_says(server: Server) -> None:
    """Inside: the unit's writable paths take a file, the rest of the server refuses it with
    "Read-only file system"; /root cannot be read; /tmp is empty and private; no memory is
    both writable and executable."""
    sandbox = server.sandbox
    canary = Path(tempfile.mkdtemp(prefix="mustaple-host-tmp-"))  # in the host's /tmp
    script = f"""
            touch {sandbox.path("/var/lib/mustaple/ok")} && echo state-writable
            touch {sandbox.path("/etc/mustaple/no")} 2>&1
            touch /etc/mustaple-no 2>&1
            ls /root 2>&1
            test -e {canary} || echo host-tmp-hidden
            touch {canary}-inside && echo tmp-writable
            {sandbox.interpreter} -c 'import mmap; mmap.mmap(-1, 4096, prot=7)' 2>&1 | tail -1
    """
    try:
        probe = in_sandbox(sandbox, "sh", "-c", script)
    finally:
        canary.rmdir()
    lines = probe.stdout.splitlines()
    assert lines[0] == "state-writable", probe.stdout + probe.stderr
    assert lines[1].endswith("/etc/mustaple/no': Read-only file system"), lines
    assert lines[2].endswith("'/etc/mustaple-no': Read-only file system"), lines
    assert lines[3] == "ls: cannot open directory '/root': Permission denied", lines
    assert lines[4:6] == ["host-tmp-hidden", "tmp-writable"], lines
    assert lines[6] == "PermissionError: [Errno 13] Permission denied", lines
    assert not Path(f"{canary}-inside").exists()


def test_what_the_sandbox_refuses_is_one_line_that_says_what_to_do(server: Server) -> None:
    """A sink directory or a state directory outside the unit's writable paths: check-config,
    prime and run each say so in one line naming the directory and ReadWritePaths=, with the
    exit code documented. `nginx -t` writes nginx's pid file: it fails in the sandbox (and
    works outside), and so every reload of the form `nginx -t && ...` fails, said in one
    line."""
    s = server
    s.responder.set_behaviour(Behaviour.STALE)  # valid, older than the answer at the end
    reload = f'kill -HUP "$(cat {s.nginx.directory / "nginx.pid"})"'
    fix = "if systemd runs mustaple with ProtectSystem=, add {} to its unit's ReadWritePaths="
    staples = s.sandbox.path("/etc/nginx/staples")
    s.write_config("/etc/nginx/staples/{name}.der", reload)
    checked = s.mustaple("run", "--check-config")
    assert checked.returncode == 2, without_traceback(checked)
    assert checked.stderr.count("\n") == 1, checked.stderr
    assert "sinks.nginx.path: " in checked.stderr
    assert fix.format(staples) in checked.stderr
    primed = s.mustaple("prime", "--all")
    assert primed.returncode == 1, without_traceback(primed)
    assert primed.stdout.startswith(f"FAILED {NAME}: "), primed.stdout
    assert fix.format(staples) in primed.stdout

    state = s.sandbox.path("/srv/mustaple")
    state.mkdir(parents=True)
    s.write_config("/var/lib/mustaple/staples/{name}.der", reload, state_dir="/srv/mustaple")
    for command in ("prime", "run"):
        refused = s.mustaple(command, *(["--all"] if command == "prime" else []))
        assert refused.returncode == 2, without_traceback(refused)
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert fix.format(state) in refused.stderr, refused.stderr

    nginx = shlex.split(s.nginx.reload_command)
    test = [nginx[0], "-t", *nginx[3:]]  # `nginx -t`, with the test nginx's own paths
    s.write_config("/var/lib/mustaple/staples/{name}.der", shlex.join(test) + " && " + reload)
    assert s.mustaple("prime", "--all").returncode == 0  # nginx stopped: no reload
    s.nginx.start()
    outside = subprocess.run(test, capture_output=True, text=True, timeout=60, check=False)
    assert outside.returncode == 0, outside.stderr
    inside = in_sandbox(s.sandbox, *test)
    assert inside.returncode == 1, inside.stderr
    assert f'open() "{s.nginx.directory}/nginx.pid" failed (30: Read-only file system)' in (
        inside.stderr
    )
    s.responder.set_behaviour(Behaviour.GOOD)  # a newer answer: prime must reload
    failed = s.mustaple("prime", "--all")
    assert failed.returncode == 1, without_traceback(failed)
    assert "reload failed: " in failed.stdout, failed.stdout


def test_mustaple_check_in_the_sandbox_says_why_it_cannot_run(server: Server) -> None:
    """`mustaple check` needs memory both writable and executable (pyOpenSSL's callbacks),
    which MemoryDenyWriteExecute= refuses: in the sandbox it says so in one line, exit 3
    (UNKNOWN), where it said "internal error: MemoryError" (exit 4); outside, the same
    command checks the same nginx."""
    s = server
    assert s.mustaple("prime", "--all").returncode == 0
    s.nginx.start()
    target = f"127.0.0.1:{s.nginx.port}"
    inside = in_sandbox(s.sandbox, s.sandbox.mustaple, "check", target, "--servername", NAME)
    assert inside.returncode == 3, without_traceback(inside)
    assert "internal error" not in inside.stdout + inside.stderr
    assert "MemoryDenyWriteExecute=" in inside.stdout + inside.stderr
    assert "run `mustaple check` from a shell" in inside.stdout + inside.stderr
    outside = subprocess.run(
        [MUSTAPLE, "check", target, "--servername", NAME],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert outside.returncode == 0, outside.stdout + outside.stderr
