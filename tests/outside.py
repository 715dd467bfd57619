"""Looking at a running system from outside, for the tests that run real processes: wait for a
condition, ask an HTTP endpoint (a status code and a body, never an exception), and end the
processes a test started."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any


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
