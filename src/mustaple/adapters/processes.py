"""Which process this is, and whether a process recorded earlier still runs.

A process is named by its pid and when it started (`this_process`): on Linux, the boot's id
and the start time in clock ticks since that boot (/proc), so a pid used again by another
process, after this one ended or after a reboot (a power cut), is not taken for it. Without
/proc the start is "" and the pid alone says it. A pid is only meaningful on its host and in
its pid namespace: the state records that use it (`store.Store.take_cut_deliveries`) are kept
by one host's processes.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["running", "this_process"]

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def _boot() -> str:
    """The id of this boot of the system ("" without /proc)."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _started(pid: int) -> str | None:
    """When process `pid` started ("BOOT TICKS"; "" without /proc), or None when it is
    gone or a zombie (killed and not reaped yet: it does nothing any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None if Path("/proc/self/stat").exists() else _signalled(pid)
    except OSError:
        return _signalled(pid)
    fields = stat.rpartition(")")[2].split()  # the name, in parentheses, may hold spaces
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # state, then from ppid on: 22nd is 19th
        return None
    return f"{_boot()} {fields[19]}"


def _signalled(pid: int) -> str | None:
    """An empty start when a process `pid` exists (without /proc to say when it started),
    else None."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's: there all the same
    return ""


@functools.cache
def _mine(pid: int) -> str:
    return _started(pid) or ""


def this_process() -> tuple[int, str]:
    """This process: its pid and when it started (see the module)."""
    pid = os.getpid()  # asked each time: a forked child is another process
    return pid, _mine(pid)


def running(pid: int, started: str) -> bool:
    """Whether the process recorded as (`pid`, `started`) still runs: a pid now used by
    another process (started at another time, or on another boot) is not it."""
    now = _started(pid)
    return now is not None and (now == started or "" in (now, started))
