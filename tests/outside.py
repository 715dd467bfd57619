"""Looking at a running system from outside, for the tests that run real processes: wait for a
condition, ask an HTTP endpoint (a status code and a body, never an exception), and end the
processes a test started."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))


def wait_for(condition: Callable[[], object], timeout: float = 20) -> None:
    """Until `condition()` is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def http_get(url: str) -> tuple[int, bytes]:
    """(status, body); (0, b"") while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def get_json(url: str) -> Any:
    status, body = http_get(url)
    assert status == 200, (url, status, body[:200])
    return json.loads(body)


def end_all(processes: Iterable[subprocess.Popen[Any]]) -> None:
    """Kill those of `processes` still running (a test that failed midway), and reap each."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(10)


@contextmanager
def keeping(
    config: Path,
    log: Path,
    *,
    stopping: Callable[[], None] = lambda: None,
    within: float = 20,
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A `mustaple run` logging to the file `log` (read while it runs), stopped by SIGTERM
    at the end, then `stopping()`: it must exit 0 within `within` seconds, without a
    traceback. `env`: its environment (default: this one)."""
    with log.open("ab") as out:
        argv = [MUSTAPLE, "run", "--config", str(config)]
        keeper = subprocess.Popen(argv, stderr=out, env=env)
    try:
        yield keeper
    finally:
        keeper.send_signal(signal.SIGTERM)
        stopping()
        code = keeper.wait(within)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
