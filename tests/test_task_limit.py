"""A limit of tasks reached (systemd's TasksMax, a cgroup's pids.max): no thread can start.

mustaple works on files that may hang in threads of their own (the look at the certificate
files, their reads, a sink's staple files), so a process that cannot start one more thread
meets it at every pass. Judged from outside: a real `mustaple run` moved into a pids cgroup
whose pids.max is 1 (what runs there goes on; nothing new starts), its log, its `/status`,
the staple files and its exit code; then the limit is raised and what waited is done.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from outside import wait_for
from test_recorded_attempts import MUSTAPLE, Site, site

NO_THREAD = (
    "no thread could be started (can't start new thread): mustaple has reached its limit of "
    "tasks (systemd's TasksMax, the pids.max of its cgroup, or ulimit -u): raise it"
)
NOT_LOOKED = f"certificate files: not looked at: {NO_THREAD}; the files are kept as last seen"
_NUMBER = itertools.count()


class Tasks:
    """A pids cgroup of its own (v1's hierarchy, or v2's with the pids controller)."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path, self.root = path, root

    def hold(self, pid: int) -> None:
        """Move the process `pid` (all its threads) in."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def limit(self, value: int | str) -> None:
        (self.path / "pids.max").write_text(str(value))

    def release(self) -> None:
        self.limit("max")


def _hierarchy() -> Path | None:
    """Where a pids cgroup can be made here: v1's `pids` hierarchy, or a v2 root whose
    children may have the pids controller."""
    v1 = Path("/sys/fs/cgroup/pids")
    if (v1 / "cgroup.procs").exists():
        return v1
    for v2 in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        controllers = v2 / "cgroup.controllers"
        if controllers.exists() and "pids" in controllers.read_text().split():
            subtree = v2 / "cgroup.subtree_control"
            if "pids" not in subtree.read_text().split():
                subtree.write_text("+pids")
            return v2
    return None


@contextmanager
def tasks() -> Iterator[Tasks]:
    root = _hierarchy()
    if root is None:
        pytest.skip("no pids cgroup can be made here (neither v1's hierarchy nor v2's controller)")
    path = root / f"mustaple-test-{os.getpid()}-{next(_NUMBER)}"
    path.mkdir()
    group = Tasks(path, root)
    try:
        yield group
    finally:
        group.release()
        for pid in (path / "cgroup.procs").read_text().split():  # those left: back at the root
            (root / "cgroup.procs").write_text(pid)
        path.rmdir()


def serial(s: Site) -> str:
    return str(s.page()["serial"])


def sink_error(s: Site) -> str | None:
    (files,) = s.page()["sinks"]
    error = files["error"]
    assert error is None or isinstance(error, str)
    return error


def test_a_running_keeper_that_cannot_start_a_thread_says_why_keeps_what_it_holds_and_heals(
    tmp_path: Path,
) -> None:
    """Each pass failed whole ("unexpected error in a pass ... please report it", every
    pass), a reload said the same, and `run` could not start ("internal error"). Now: a
    reload keeps the running configuration, saying why; a staple a prime stored meanwhile
    is a failure of the sink, shown on /status; a renewal waits, said in one line for the
    run of passes; once the limit is raised, the renewal is loaded and every staple
    delivered. A `run` started under the limit: one line, exit 2."""
    with site(tmp_path, cache_for=timedelta(0)) as s, tasks() as group:
        keeper = s.run()
        old = serial(s)
        group.hold(keeper.pid)
        group.limit(1)  # no task more than its own (a thread ending now frees no place)
        keeper.send_signal(signal.SIGHUP)
        wait_for(lambda: f"{NO_THREAD}; keeping the running configuration" in s.logs())
        assert s.prime()[0] == 0  # beside it, free of the limit: a newer staple stored
        wait_for(lambda: sink_error(s) == NO_THREAD)
        s.issue()  # a renewal it cannot look at
        s.passes(3)
        assert s.logs().count(NOT_LOOKED) == 1, s.logs()
        assert serial(s) == old  # what it holds is kept, and served
        group.release()
        wait_for(lambda: serial(s) != old and sink_error(s) is None)
        assert "looked at again" in s.logs()
        wait_for(lambda: s.page()["sinks"][0]["ok"])
        s.stop(keeper)
        said = s.logs()
        assert "please report it" not in said, said
        assert "internal error" not in said, said
        group.limit(1)
        started = inside(group, "run", "--config", str(s.config))
        assert (started.returncode, started.stderr) == (2, f"mustaple: {NO_THREAD}\n")


def inside(group: Tasks, *args: str) -> subprocess.CompletedProcess[str]:
    """`mustaple ARGS` run inside `group`."""
    moved = f'echo $$ > {group.path}/cgroup.procs && exec "$@"'
    return subprocess.run(
        ["sh", "-c", moved, "sh", MUSTAPLE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_under_a_limit_of_tasks_is_unknown_not_critical(tmp_path: Path) -> None:
    """`check` probes a server in a thread: with none to be had it said `mustaple: no
    thread ...` on standard error with exit 2, which a monitoring system reads as
    CRITICAL; now UNKNOWN (3), the line on standard output, as for every probe that could
    not be made; its certificate file read likewise."""
    with tasks() as group:
        group.limit(1)
        probed = inside(group, "check", "127.0.0.1:9")
        assert (probed.returncode, probed.stdout) == (3, f"UNKNOWN {NO_THREAD}\n")
        (tmp_path / "cert.pem").write_bytes(b"never read")
        read = inside(group, "check", "--cert", str(tmp_path / "cert.pem"))
        assert (read.returncode, read.stdout) == (3, f"UNKNOWN {NO_THREAD}\n")
