"""The HTTP endpoint under more idle connections than it may hold, in a real `mustaple run`
started with a soft limit of 1,024 file descriptors (the usual default): the idle connections
beyond `http.max_connections` are closed, a fresh GET is still answered, the process stays
under its cap, and the log has no traceback. With a hard limit above it (systemd's default),
mustaple raises its soft limit and never runs out; with the hard limit at 1,024 too, a burst
can still run accept() out of descriptors for a moment: one line, then it recovers."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mustaple.adapters.config import load_config
from mustaple.core.request import encode_request, get_url, make_cert_id
from mustaple.serve.fastpath import MAX_CONNECTIONS, SPARE_DESCRIPTORS
from mustaple.testing import CA, Leaf, ResponderThread
from ports import free_port

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
SOFT_LIMIT = 1024
IDLE_CLIENTS = 1100


@pytest.fixture
def room_for_clients() -> Iterator[None]:
    """Enough descriptors in this test process for the idle clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = IDLE_CLIENTS + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def wait_ready(notify: socket.socket, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while "READY=1" not in seen:
        notify.settimeout(max(0.01, deadline - time.monotonic()))
        seen += notify.recv(4096).decode().splitlines()


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, answer.read()


@pytest.mark.parametrize(("hard_limit", "accept_failures"), [(4096, 0), (SOFT_LIMIT, 1)])
def test_idle_connections_beyond_the_cap_never_lock_out_a_fresh_get(
    tmp_path: Path, room_for_clients: None, hard_limit: int, accept_failures: int
) -> None:
    ca = CA()
    with ResponderThread(ca) as responder:
        leaf: Leaf = ca.issue("cap.test", ocsp_urls=[responder.url])
        responder.add(leaf)
        leaf.write(tmp_path / "live" / "cap.test")
        port = free_port()
        config = tmp_path / "mustaple.toml"
        config.write_text(f"""
state_dir = "{tmp_path}/state"
[[certificates]]
paths = ["{tmp_path}/live/*/fullchain.pem"]
[http]
listen = "127.0.0.1:{port}"
""")
        assert load_config(config).http is not None
        notify_path = tmp_path / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        limited = (
            "import os, resource, sys; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
            "os.execv(sys.argv[3], sys.argv[3:])"
        )
        limits = [str(SOFT_LIMIT), str(hard_limit)]
        process = subprocess.Popen(
            [sys.executable, "-c", limited, *limits, MUSTAPLE, "run", "--config", str(config)],
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            stderr=subprocess.PIPE,
            text=True,
        )
        idle: list[socket.socket] = []
        try:
            wait_ready(notify)
            for _ in range(IDLE_CLIENTS):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            base = f"http://127.0.0.1:{port}"
            assert get(f"{base}/healthz") == (200, b"ok\n")
            request = encode_request(make_cert_id(leaf.issuer, leaf.cert.serial_number))
            status, _ = get(get_url(f"{base}/ocsp", request))
            assert status == 200
            open_now = len(os.listdir(f"/proc/{process.pid}/fd"))
            assert open_now <= MAX_CONNECTIONS + SPARE_DESCRIPTORS, open_now
            assert closed_by_server(idle[0])  # the one idle longest made room
            assert not closed_by_server_now(idle[-1])  # the newest is still open
        finally:
            for sock in idle:
                sock.close()
            process.send_signal(signal.SIGTERM)
            _, log = process.communicate(timeout=30)
            notify.close()
    assert process.returncode == 0, log
    assert "Traceback" not in log
    assert log.count("Too many open files") <= accept_failures, log
    assert log.count("connections open (http.max_connections)") == 1, log


def closed_by_server_now(sock: socket.socket) -> bool:
    """Whether the server has closed `sock`, without waiting for it to."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_http_limits_are_read_and_checked(tmp_path: Path) -> None:
    config = tmp_path / "mustaple.toml"
    base = '[[certificates]]\npaths = ["/x.pem"]\n[http]\n'
    config.write_text(base + 'max_connections = 100\nidle_timeout = "10s"\n')
    http = load_config(config).http
    assert http is not None
    assert http.max_connections == 100
    assert http.idle_timeout.total_seconds() == 10
