"""Running a shell command for a hook or a sink, so that it can never hang or swamp us.

The command runs through /bin/sh in a process group of its own. When its timeout passes, the
whole group is killed (the shell and every child it started, however deep) and the result
says "timed out" (a child that left the group, with `setsid`, is not waited for). Its
standard error is read as it comes and only the last `TAIL_BYTES` are kept, so a command that
floods it costs a few KiB, not gigabytes; the last line of it explains a failure. Standard
input and output are /dev/null.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from mustaple.core.render import one_line

__all__ = ["TAIL_BYTES", "Ran", "run", "run_command"]

TAIL_BYTES = 4096  # of standard error kept
_LINE_CHARS = 200  # of the last line shown
_STDERR_GRACE = 1.0  # seconds standard error may stay open after the command exits
_KILL_WAIT = 5.0  # seconds a killed command is waited for at most
_POLL = 0.05  # seconds between looks at whether it exited (asyncio's wait() also waits for
# every pipe to close, which a background child holding stderr never does)
_NOT_RUN = (126, 127)  # the shell's statuses for a program it cannot execute or find


@dataclass(frozen=True, slots=True)
class Ran:
    """How a command ended: `problem` is None when it exited 0, else one line; `unrunnable`
    when it never ran (it could not start, or the shell could not find or execute its
    program: a typo, not a failure of what it checks)."""

    problem: str | None
    unrunnable: bool = False


async def run_command(
    command: str,
    timeout: timedelta,
    env: Mapping[str, str] | None = None,
    *,
    label: str | None = None,
) -> str | None:
    """Run `command`; None when it exits 0, else one line saying how it failed.

    `label` names the command in that line (default: the command in backquotes).
    """
    return (await run(command, timeout, env, label=label)).problem


async def run(
    command: str,
    timeout: timedelta,
    env: Mapping[str, str] | None = None,
    *,
    label: str | None = None,
) -> Ran:
    """`run_command`, telling also whether the command could run at all."""
    label = label or one_line(f"`{command.strip()}`")
    try:
        process = await asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the environment
        why = exc.strerror if isinstance(exc, OSError) else exc
        return Ran(f"{label} could not start ({why})", unrunnable=True)
    tail = bytearray()
    assert process.stderr is not None  # a pipe, asked for above
    reading = asyncio.ensure_future(_keep_tail(process.stderr, tail))
    try:
        async with asyncio.timeout(timeout.total_seconds()):
            while not reading.done() and process.returncode is None:
                await asyncio.wait({reading}, timeout=_POLL)
            if reading.done():  # standard error ended: the exit comes with it (or after)
                await process.wait()
        if not reading.done():  # it exited, but a child it left in the background (`cmd &`)
            await asyncio.wait({reading}, timeout=_STDERR_GRACE)  # holds stderr: not waited
            _let_go(process)
    except TimeoutError:
        _kill_group(process.pid)
        await _reaped(process, reading)
        return Ran(f"{label} timed out after {timeout.total_seconds():g} s and was killed")
    except asyncio.CancelledError:  # we are stopping: leave nothing running behind us
        _kill_group(process.pid)
        raise
    finally:
        reading.cancel()
    if process.returncode == 0:
        return Ran(None)
    problem = f"{label} {_how_it_ended(process.returncode)}{_last_line(bytes(tail))}"
    return Ran(problem, unrunnable=process.returncode in _NOT_RUN)


async def _reaped(process: asyncio.subprocess.Process, reading: asyncio.Future[None]) -> None:
    """Wait, at most `_KILL_WAIT`, for a killed command to end, not for its standard error
    to close: a child that left its process group (`setsid`) may hold it for as long as it
    lives. Then let go of it."""
    for _ in range(round(_KILL_WAIT / _POLL)):
        if process.returncode is not None:
            break
        await asyncio.sleep(_POLL)
    if not reading.done():
        _let_go(process)


def _let_go(process: asyncio.subprocess.Process) -> None:
    """Close our end of the standard error a background child of the command still holds
    (that child writes there no more: it should send its output elsewhere), so that nothing
    of the command stays open in this process."""
    transport = getattr(process, "_transport", None)  # asyncio has no public way to it
    pipe = transport.get_pipe_transport(2) if transport is not None else None
    if pipe is not None:
        pipe.close()


async def _keep_tail(stream: asyncio.StreamReader, tail: bytearray) -> None:
    """Read `stream` to its end, keeping only its last TAIL_BYTES in `tail`."""
    while chunk := await stream.read(65536):
        tail += chunk
        if len(tail) > TAIL_BYTES:
            del tail[:-TAIL_BYTES]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _how_it_ended(code: int | None) -> str:
    if code is not None and code > 0:
        return f"exited with status {code}"
    try:
        return f"was killed by {signal.Signals(-(code or 0)).name}"
    except ValueError:
        return f"ended with status {code}"


def _last_line(output: bytes) -> str:
    """': the last non-empty line', unprintable characters shown as '?'; or nothing."""
    lines = [line.strip() for line in output.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    return ": " + "".join(c if c.isprintable() else "?" for c in lines[-1][:_LINE_CHARS])
