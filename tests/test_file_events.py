"""A real `mustaple run` on certbot's layout (`live/NAME/fullchain.pem`, a link into
`archive/NAME/`) waits for file events instead of looking at every file at every pass:
strace, attached from outside to every thread, sees no look at the certificate files over
three passes once the watches are set, while with `rescan_interval` no longer than the
watch every pass looks at each. An entry on /proc, whose changes give no events, is named
in `/status` and counted in `/metrics`. Either way a renewal (a new archive file, the link
moved) is delivered, and so is a new certificate."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from mustaple.testing import CA, Leaf, ResponderThread
from outside import get_json, http_get, keeping, wait_for
from ports import free_port
from test_owed_reloads import notify_socket, passes

_LOOK = re.compile(r"\b(stat|lstat|newfstatat|statx|openat|readlink)\(")


def renew(leaf: Leaf, live: Path, generation: int) -> None:
    """What certbot does: the new files in `archive/NAME/`, then the link moved."""
    name = live.name
    archive = live.parent.parent / "archive" / name
    written = leaf.write(archive / f"new{generation}")
    target = archive / f"fullchain{generation}.pem"
    written.fullchain.rename(target)
    link = live / "fullchain.pem"
    live.mkdir(parents=True, exist_ok=True)
    temporary = live / "fullchain.pem.new"
    os.symlink(f"../../archive/{name}/{target.name}", temporary)
    temporary.rename(link)


def stapled_serial(path: Path) -> int | None:
    try:
        return ocsp.load_der_ocsp_response(path.read_bytes()).serial_number
    except (OSError, ValueError):
        return None


@contextmanager
def traced(pid: int, out: Path) -> Iterator[None]:
    """strace attached to every thread of `pid` (and the threads it starts) while inside."""
    tasks = [f"-p{task}" for task in os.listdir(f"/proc/{pid}/task")]
    argv = ["strace", "-f", "-qq", "-o", str(out), "-e", "trace=%file", *tasks]
    tracer = subprocess.Popen(argv, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: out.exists() and tracer.poll() is None, timeout=10)
        yield
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)


@pytest.mark.parametrize("rescan", ["1h", "1s"])
def test_a_running_keeper_waits_for_file_events_instead_of_looking(
    tmp_path: Path, rescan: str
) -> None:
    ca = CA()
    log, staples, live = tmp_path / "stderr", tmp_path / "staples", tmp_path / "live"
    config = tmp_path / "mustaple.toml"
    port = free_port()
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n'
        f'[[certificates]]\npaths = ["{live}/*/fullchain.pem"]\n'
        '[[certificates]]\npaths = ["/proc/sys/fs/inotify/*.pem"]\n'  # no events there
        f'[sinks.files]\ntype = "file"\npath = "{staples}/{{name}}.der"\n'
        f'[policy]\nwatch_interval = "1s"\nrescan_interval = "{rescan}"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    with ResponderThread(ca) as responder, notify_socket(tmp_path) as (sock, env):
        leaves = {name: ca.issue(name, ocsp_urls=[responder.url]) for name in ("a", "b", "c")}
        for name, leaf in leaves.items():
            responder.add(leaf)
            renew(leaf, live / name, 1)
        with keeping(config, log, env=env) as keeper:
            wait_for(lambda: all((staples / f"{n}.der").exists() for n in leaves))
            passes(sock, 2)  # the first watched pass sets the watches up
            trace = tmp_path / "strace.out"
            with traced(keeper.pid, trace):
                passes(sock, 3)
            lines = trace.read_text().splitlines()
            looks = [line for line in lines if str(live) in line and _LOOK.search(line)]
            assert sum("state.db" in line for line in lines) >= 3  # the trace saw each pass
            without = get_json(f"http://127.0.0.1:{port}/status")["files_without_events"]
            _, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
            gauge = "mustaple_certificate_entries_without_events"
            if rescan == "1h":
                assert looks == []
                (polled,) = without  # the entry on /proc, and why
                assert polled["paths"] == ["/proc/sys/fs/inotify/*.pem"]
                assert polled["why"].startswith("/proc is on a network or user-space")
                assert f"\n{gauge} 1.0\n".encode() in metrics
            else:  # file events off: no entry said to be without them; each file each pass
                assert without == []
                assert f"\n{gauge} 0.0\n".encode() in metrics
                for name in leaves:
                    assert sum(f"/{name}/fullchain.pem" in line for line in looks) >= 3
            renewed = ca.issue("b", ocsp_urls=[responder.url])
            responder.add(renewed)
            renew(renewed, live / "b", 2)
            wait_for(lambda: stapled_serial(staples / "b.der") == renewed.cert.serial_number)
            added = ca.issue("d", ocsp_urls=[responder.url])
            responder.add(added)
            renew(added, live / "d", 1)
            wait_for(lambda: stapled_serial(staples / "d.der") == added.cert.serial_number)


def test_a_trusted_staple_file_is_not_looked_at_until_something_else_touches_it(
    tmp_path: Path,
) -> None:
    """Once two looks at the copies (every 6 passes at a 1 s watch) found the staple file as
    written, the next ones do not stat it (strace); removed by something else, it is written
    again at the next look, with the same bytes."""
    ca = CA()
    log, staples, live = tmp_path / "stderr", tmp_path / "staples", tmp_path / "live"
    config = tmp_path / "mustaple.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n'
        f'[[certificates]]\npaths = ["{live}/*/fullchain.pem"]\n'
        f'[sinks.files]\ntype = "file"\npath = "{staples}/{{name}}.der"\n'
        '[policy]\nwatch_interval = "1s"\n'
    )
    with ResponderThread(ca) as responder, notify_socket(tmp_path) as (sock, env):
        leaf = ca.issue("a", ocsp_urls=[responder.url])
        responder.add(leaf)
        renew(leaf, live / "a", 1)
        staple = staples / "a.der"
        with keeping(config, log, env=env) as keeper:
            wait_for(staple.exists)
            written = staple.read_bytes()
            passes(sock, 14)  # two looks at the copies: the second trusts the file
            trace = tmp_path / "strace.out"
            with traced(keeper.pid, trace):
                passes(sock, 7)  # one more look at the copies at least
            lines = trace.read_text().splitlines()
            assert sum("state.db" in line for line in lines) >= 7  # the trace saw each pass
            assert [line for line in lines if str(staple) in line] == []
            staple.unlink()  # an operator, a configuration management tool
            wait_for(staple.exists, timeout=20)
            assert staple.read_bytes() == written
