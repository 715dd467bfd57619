"""Long work shows what it waits on: plain lines when not on a terminal, rich on a terminal.

The plain-line rules (silent for quick waits, a line after 2 s, then every 10 s, one when the
wait ends) are timed with a hand-moved clock. Then the real thing: `mustaple fetch` against a
responder that accepts the connection and never answers (a listening socket nobody reads),
once in-process with stderr a pipe, once as a process on a pseudo-terminal.
"""

from __future__ import annotations

import io
import os
import pty
import re
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from mustaple.adapters.fetch import FetchResult
from mustaple.adapters.http1 import outcome
from mustaple.cli import main
from mustaple.core.reasons import Reason, Rejection
from mustaple.core.report import ExitCode
from mustaple.front.progress import Display, FetchProgress, PrimeProgress
from mustaple.testing.pki import CA

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def silent() -> Iterator[str]:
    """An OCSP URL whose server accepts connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/ocsp"


def test_plain_lines_only_for_waits_that_last() -> None:
    stream, clock = io.StringIO(), Ticks()
    progress = FetchProgress("a.test", Display(stream, tty=False, clock=clock))
    quick = progress.request_started("GET", "http://127.0.0.1:9/quick")
    clock.now += 1.9
    progress.display.tick()
    progress.request_ended(quick, outcome(200))
    assert stream.getvalue() == ""  # a quick exchange says nothing
    slow = progress.request_started("GET", "http://127.0.0.1:9/slow")
    for step in (1.9, 0.1, 5.0, 5.0, 0.5):
        clock.now += step
        progress.display.tick()
    progress.request_ended(slow, outcome(None, TimeoutError()))
    what = "mustaple: a.test: waiting on GET http://127.0.0.1:9/slow"
    assert stream.getvalue().splitlines() == [
        f"{what}: 2 s so far",
        f"{what}: 12 s so far",
        f"{what}: failed (TimeoutError) after 12.5 s",
    ]


def test_prime_progress_counts_certificates_once_it_is_slow() -> None:
    stream, clock = io.StringIO(), Ticks()
    progress = PrimeProgress(3, Display(stream, tty=False, clock=clock))
    good = FetchResult(None, None, (), None)
    bad = FetchResult(None, Rejection(Reason.TIMEOUT, "after 10 s"), (), None)
    progress.display.start(0, progress._what())
    progress.refreshed(SimpleNamespace(name="a.test"), good)  # type: ignore[arg-type]
    clock.now += 3
    progress.display.tick()
    progress.refreshed(SimpleNamespace(name="b.test"), bad)  # type: ignore[arg-type]
    assert stream.getvalue().splitlines() == [
        "mustaple: prime: 1/3 certificates refreshed, last a.test: no valid staple: 3 s so far",
        "mustaple: prime: b.test: no valid staple (timeout) (2/3)",
    ]


def slow_prime(total: int) -> tuple[PrimeProgress, io.StringIO, Ticks]:
    """The progress of a prime of `total` certificates in plain mode, told of once (3 s in)."""
    stream, clock = io.StringIO(), Ticks()
    progress = PrimeProgress(total, Display(stream, tty=False, clock=clock))
    progress.display.start(0, progress._what())
    clock.now += 3
    progress.display.tick()
    return progress, stream, clock


def test_prime_progress_calls_a_revoked_answer_revoked() -> None:
    progress, stream, _ = slow_prime(2)
    for name, good in (("a.test", True), ("r.test", False)):
        result = FetchResult(SimpleNamespace(good=good), None, (), None)  # type: ignore[arg-type]
        progress.refreshed(SimpleNamespace(name=name), result)  # type: ignore[arg-type]
    assert stream.getvalue().splitlines()[1:] == [
        "mustaple: prime: a.test: valid staple (1/2)",
        "mustaple: prime: r.test: revoked (2/2)",
    ]


def test_prime_progress_tells_a_good_staple_once_a_second_and_every_failure() -> None:
    progress, stream, clock = slow_prime(40)
    good = FetchResult(SimpleNamespace(good=True), None, (), None)  # type: ignore[arg-type]
    bad = FetchResult(None, Rejection(Reason.TIMEOUT, "after 10 s"), (), None)
    for n in range(40):  # an eighth of a second apart, every tenth a failure
        clock.now += 0.125
        result = bad if n % 10 == 9 else good
        progress.refreshed(SimpleNamespace(name=f"c{n}"), result)  # type: ignore[arg-type]
    said = [line.split()[2].rstrip(":") for line in stream.getvalue().splitlines()[1:]]
    assert said == ["c0", "c8", "c9", "c16", "c19", "c24", "c29", "c32", "c39"]


def _cert(tmp_path: Path, url: str) -> Path:
    return CA(key_type="ec", ocsp_url=url).issue("slow.test").write(tmp_path).fullchain


def test_fetch_tells_a_pipe_what_it_waits_on(
    silent: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = _cert(tmp_path, silent)
    code = main(["fetch", str(cert), "--timeout", "2.5", "--attempts", "1"])
    out, err = capsys.readouterr()
    assert code == ExitCode.NO_STAPLE
    assert out.startswith("FAILED slow.test:")
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert re.fullmatch(rf"mustaple: slow\.test: waiting on GET {silent}/\S+: 2 s so far", lines[0])
    assert re.fullmatch(r"mustaple: .*: failed \(\w*TimeoutError\) after 2\.\d s", lines[1])


def test_fetch_on_a_terminal_shows_the_url_and_a_clock(silent: str, tmp_path: Path) -> None:
    cert = _cert(tmp_path, silent)
    argv = ["fetch", str(cert), "--timeout", "2", "--attempts", "1"]
    text = _on_a_terminal(argv, ExitCode.NO_STAPLE)
    assert f"slow.test: waiting on GET {silent}/" in text
    assert "0:00:01" in text  # the running clock of the wait
    assert "FAILED slow.test:" in text


def _on_a_terminal(argv: list[str], exit_code: int) -> str:
    """Run mustaple on a pseudo-terminal; what the terminal received, escapes removed."""
    program = Path(sys.executable).parent / "mustaple"
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "TERM": "xterm"}
    process = subprocess.Popen(
        [program, *argv], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    screen = _read_all(leader)
    assert process.wait(30) == exit_code
    return ANSI.sub("", screen)


def _read_all(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 30)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def _prime_config(tmp_path: Path, cert: Path) -> Path:
    config = tmp_path / "mustaple.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n[[certificates]]\npaths = ["{cert}"]\n'
        '[policy]\ntimeout = "2.5s"\nattempts = 1\n'
    )
    return config


def test_prime_tells_a_pipe_how_far_it_is(
    silent: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = _cert(tmp_path, silent)
    code = main(["prime", "--config", str(_prime_config(tmp_path, cert)), str(cert)])
    out, err = capsys.readouterr()
    assert code == ExitCode.NO_STAPLE
    assert out.startswith("FAILED slow.test")
    lines = err.splitlines()
    assert lines[0] == "mustaple: prime: 0/1 certificates refreshed: 2 s so far"
    assert lines[-1] == "mustaple: prime: slow.test: no valid staple (timeout) (1/1)"
    # and the request it waits on, with its URL and how long, as fetch shows it
    assert re.fullmatch(
        r"mustaple: prime: waiting on GET http://127\.0\.0\.1:\d+/ocsp/\S+: 2 s so far", lines[1]
    )
    assert re.match(r"mustaple: prime: waiting on GET .*: failed \(TimeoutError\) after", lines[2])
    assert len(lines) == 4


def test_prime_on_a_terminal_shows_the_count_and_a_clock(silent: str, tmp_path: Path) -> None:
    cert = _cert(tmp_path, silent)
    config = _prime_config(tmp_path, cert)
    text = _on_a_terminal(["prime", "--config", str(config), str(cert)], ExitCode.NO_STAPLE)
    assert "prime: 0/1 certificates refreshed" in text
    assert "0:00:01" in text
