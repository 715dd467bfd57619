"""What the benchmark scripts share to run servers: a free port, waiting for a server to
answer, and stopping it."""

from __future__ import annotations

import socket
import subprocess
import time

__all__ = ["free_port", "stop", "wait_for_port"]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], name: str, timeout: float = 10.0
) -> None:
    """Return once `port` answers; exit with one line if `process` ends or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited at start (exit code {process.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.02)
            continue
        return
    raise SystemExit(f"{name} did not answer on port {port} in time")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate `process`, and kill it if it has not ended within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
