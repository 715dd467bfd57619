"""HAProxy's runtime API refusing mustaple's user, for real: HAProxy runs as root with its
admin socket 0600, and `mustaple prime` runs as `nobody` (these tests run as root, so a user
without access has to be made). The prime must name the refusal and the fix (the `mode`,
`user` or `group` of the `stats socket` line), leave the staple written for HAProxy's next
start, record the push as owed, and push it once the socket lets the user in. Like the
whole suite, it runs as root (CI does): `setpriv` needs it to become `nobody`."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mustaple.adapters.fetch import fetch_staple
from mustaple.core.certs import make_target
from mustaple.core.report import ExitCode
from mustaple.testing import CA, Behaviour, ResponderThread
from servers import HAProxyServer, staple_from
from test_sinks import haproxy_pem

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
NAME = "denied.test"
USER = "nobody"


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory `nobody` can enter (pytest's tmp_path is root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="mustaple-denied-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """`mustaple ARGS` run as `nobody`, with no supplementary groups."""
    command = ["setpriv", f"--reuid={USER}", "--regid=nogroup", "--clear-groups", MUSTAPLE]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_socket_that_refuses_mustaples_user_is_named_owed_and_pushed_once_let_in(
    shared: Path,
) -> None:
    nobody = pwd.getpwnam(USER)
    ca = CA(key_type="ec")
    with ResponderThread(ca) as responder:
        leaf = ca.issue(NAME, ocsp_urls=[responder.url])
        responder.add(leaf)
        responder.set_behaviour(Behaviour.STALE)  # valid, but older than what comes next
        first = asyncio.run(fetch_staple(make_target(leaf.cert, leaf.issuer))).staple
        responder.set_behaviour(Behaviour.GOOD)
        assert first is not None
        certs = shared / "certs"
        pem = haproxy_pem(leaf, certs)
        Path(f"{pem}.ocsp").write_bytes(first.der)  # HAProxy takes pushes for what it loaded
        for path in (certs, pem, Path(f"{pem}.ocsp")):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)  # mustaple writes beside the PEM
        state = shared / "state"
        state.mkdir()
        os.chown(state, nobody.pw_uid, nobody.pw_gid)
        with HAProxyServer(shared / "haproxy", pem=pem) as server:
            server.api_socket.parent.chmod(0o755)  # the socket's own mode is what refuses
            server.api_socket.chmod(0o600)  # root's alone
            config = shared / "mustaple.toml"
            config.write_text(f"""
state_dir = "{state}"

[[certificates]]
paths = ["{pem}"]

[sinks.haproxy]
type = "haproxy"
socket = "{server.api_socket}"
running = "test -d /proc/{server.pid}"

[policy]
timeout = "2s"
attempts = 1
""")
            config.chmod(0o644)
            served = staple_from(server.port, NAME)
            assert served == first.der
            refused = as_nobody("prime", "--config", str(config), str(pem))
            assert refused.returncode == ExitCode.NO_STAPLE, refused.stdout + refused.stderr
            why = f"HAProxy's runtime API at {server.api_socket} refuses mustaple's user"
            assert why in refused.stdout
            assert "give it access with the `mode`, `user` or `group`" in refused.stdout
            assert "Traceback" not in refused.stderr
            written = Path(f"{pem}.ocsp").read_bytes()  # for HAProxy's next start
            assert written != first.der
            assert staple_from(server.port, NAME) == first.der  # the running one never got it
            shown = as_nobody("status", "--config", str(config), "--json")
            [row] = json.loads(shown.stdout)
            [sink] = row["sinks"]
            assert (sink["ok"], sink["reload_owed"]) == (False, True), sink
            assert why in sink["error"]

            server.api_socket.chmod(0o666)  # the `mode 666` of the stats socket line
            let_in = as_nobody("prime", "--config", str(config), str(pem))
            assert let_in.returncode == ExitCode.GOOD, let_in.stdout + let_in.stderr
            assert staple_from(server.port, NAME) == Path(f"{pem}.ocsp").read_bytes()
            [row] = json.loads(as_nobody("status", "--config", str(config), "--json").stdout)
            [sink] = row["sinks"]
            assert (sink["ok"], sink["reload_owed"], sink["error"]) == (True, False, None)
