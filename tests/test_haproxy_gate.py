"""The HAProxy sink's gate across processes: a running HAProxy that nothing answers for at
the configured `socket` (here: its stats socket is at another path) is a failure that `prime`,
`status`, the metrics and a running keeper all show, owed until the socket answers; then the
keeper's retry hands the staple over by itself and the running HAProxy staples it. Real
processes throughout: HAProxy, `mustaple prime`, `status` and `run`."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mustaple.adapters.fetch import fetch_staple
from mustaple.core.certs import make_target
from mustaple.core.clock import utc_now
from mustaple.core.report import ExitCode
from mustaple.core.verify import Staple, verify
from mustaple.testing import CA, Behaviour, Leaf, ResponderThread
from outside import end_all, http_get, wait_for
from servers import HAProxyServer, free_port, staple_from
from test_sinks import haproxy_pem

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
NAME = "ha.test"


@dataclass
class Setup:
    leaf: Leaf
    pem: Path
    server: HAProxyServer
    wrong: Path  # the configured `socket`: nothing listens there
    config: Path
    metrics: str

    def mustaple(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [MUSTAPLE, *args, "--config", str(self.config)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    def sink(self) -> dict[str, Any]:
        """How the haproxy sink took the staple, as `mustaple status --json` says."""
        ran = self.mustaple("status", "--json")
        [row] = json.loads(ran.stdout)
        [sink] = row["sinks"]
        return {**sink, "health": row["health"]}

    def failures(self) -> str | None:
        """The sink's `mustaple_sink_failures` sample, from the keeper's /metrics."""
        status, body = http_get(self.metrics)
        if status != 200:
            return None
        found = re.search(
            r'^mustaple_sink_failures\{.*sink="haproxy".*\} (\S+)$', body.decode(), re.M
        )
        return found[1] if found else None


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    ca = CA(key_type="ec")
    with ResponderThread(ca) as responder:
        leaf = ca.issue(NAME, ocsp_urls=[responder.url])
        responder.add(leaf)
        responder.set_behaviour(Behaviour.STALE)  # valid, but older than what comes next
        first = asyncio.run(fetch_staple(make_target(leaf.cert, leaf.issuer))).staple
        responder.set_behaviour(Behaviour.GOOD)
        assert first is not None
        pem = haproxy_pem(leaf, tmp_path / "certs")
        Path(f"{pem}.ocsp").write_bytes(first.der)  # HAProxy takes pushes for what it loaded
        with HAProxyServer(tmp_path / "haproxy", pem=pem) as server:
            wrong = server.api_socket.with_name("typo.sock")
            port = free_port()
            config = tmp_path / "mustaple.toml"
            config.write_text(f"""
state_dir = "{tmp_path}/state"

[[certificates]]
paths = ["{pem}"]

[sinks.haproxy]
type = "haproxy"
socket = "{wrong}"
running = "kill -0 {server.pid}"

[policy]
timeout = "2s"
attempts = 1
retry_max = "5s"

[http]
listen = "127.0.0.1:{port}"
""")
            metrics = f"http://127.0.0.1:{port}/metrics"
            yield Setup(leaf, pem, server, wrong, config, metrics)


def stored(setup: Setup) -> Staple:
    """The staple in `<crt>.ocsp`, validated."""
    target = make_target(setup.leaf.cert, setup.leaf.issuer)
    staple = verify(Path(f"{setup.pem}.ocsp").read_bytes(), target, utc_now())
    assert isinstance(staple, Staple), staple
    return staple


def test_running_haproxy_with_its_socket_elsewhere_fails_then_heals(setup: Setup) -> None:
    first = staple_from(setup.server.port, NAME)
    worker = setup.server.worker_pid()
    primed = setup.mustaple("prime", str(setup.pem))
    assert primed.returncode == ExitCode.NO_STAPLE, primed.stdout + primed.stderr
    runs = f"HAProxy runs (its `running` check exits 0) but nothing listens at {setup.wrong}: "
    assert runs in primed.stdout
    assert "`stats socket ... level admin` line" in primed.stdout
    assert "Traceback" not in primed.stderr
    new = stored(setup).der  # written for HAProxy's next start
    assert new != first
    assert staple_from(setup.server.port, NAME) == first  # the running HAProxy never got it
    failing = setup.sink()
    assert not failing["ok"]
    assert failing["error"].startswith(runs)
    assert failing["health"] != "ok"

    keeper = subprocess.Popen([MUSTAPLE, "run", "--config", str(setup.config)], text=True)
    try:
        # its start failed too; its retries come at most `retry_max` (5 s) apart: the sink's
        # back-off doubles from 5 s, and under load its failures before the socket answers
        # had pushed the next try past this test's wait
        wait_for(lambda: setup.failures() not in (None, "0.0"))
        assert staple_from(setup.server.port, NAME) == first
        setup.wrong.symlink_to(setup.server.api_socket)  # now the socket answers
        wait_for(lambda: staple_from(setup.server.port, NAME) == new, timeout=60)
        wait_for(lambda: setup.failures() == "0.0")
        healed = setup.sink()
        assert healed["ok"]
        assert healed["error"] is None
        assert healed["health"] == "ok"
        assert setup.server.worker_pid() == worker  # pushed by the keeper's retry: no reload
        keeper.terminate()
        assert keeper.wait(20) == 0
    finally:
        end_all([keeper])
