"""Hook commands cannot hang or swamp the keeper: a hook that outlives its timeout is killed
with every process it started and reported as timed out; one that floods standard error
costs a few KiB of memory, and its last line still explains the failure."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

from mustaple.adapters.events import Event, run_hook
from mustaple.adapters.shell import TAIL_BYTES, run_command

EVENT = Event("failure", "hook.test", "/x/fullchain.pem", True, "failing", "it broke", "timeout")
FLOOD_MB = 200


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_hanging_hook_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    command = f"sleep 60 & echo $! >> {pids}; (sleep 60 & echo $! >> {pids}; wait) & wait"

    async def hang() -> tuple[str | None, list[int]]:
        task = asyncio.create_task(run_hook(command, EVENT, timedelta(seconds=0.5)))
        await asyncio.wait({task}, timeout=10)  # returns as soon as the hook is dealt with
        started = list(map(int, pids.read_text().split()))
        # SIGKILL went to the whole group; a busy machine may take a moment to run each death
        for _ in range(40):
            left = [pid for pid in started if alive(pid)]
            if not left:
                break
            await asyncio.sleep(0.05)
        return task.result() if task.done() else "still waiting for the hook", left

    problem, left = asyncio.run(hang())
    assert left == []
    assert problem is not None
    assert "timed out after 0.5 s" in problem
    assert problem.startswith("hook ")


def test_a_hook_that_exits_keeps_its_last_line(tmp_path: Path) -> None:
    problem = asyncio.run(run_hook("echo first >&2; echo 'it failed' >&2; exit 3", EVENT, _MIN))
    assert (
        problem
        == "hook \"echo first >&2; echo 'it failed' >&2; exit 3\" exited with status 3: it failed"
    )


def test_a_hook_gets_the_event_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "env"
    command = f'echo "$MUSTAPLE_EVENT $MUSTAPLE_NAME $MUSTAPLE_REASON" > {out}'
    assert asyncio.run(run_hook(command, EVENT, _MIN)) is None
    assert out.read_text() == "failure hook.test timeout\n"


def test_a_command_that_cannot_start_is_one_line() -> None:
    problem = asyncio.run(run_command("true", _MIN, {"BAD": "a\0b"}))
    assert problem is not None
    assert problem.startswith("`true` could not start")


def test_a_command_of_several_lines_fails_in_one_line() -> None:
    """A reload or command sink written on several lines (a TOML multi-line string): its
    failure names it in one line, the newlines escaped."""
    problem = asyncio.run(run_command("set -e\nfalse\n", _MIN))
    assert problem == "`set -e\\nfalse` exited with status 1"


def test_a_command_that_leaves_a_child_in_the_background_is_done_when_it_exits() -> None:
    """`reload = "(...) & exit 0"`: the shell exits at once, its child holds standard error
    open; the command is done (exit 0), not timed out and killed."""
    problem = asyncio.run(run_command("(sleep 8) & exit 0", timedelta(seconds=5)))
    assert problem is None


def test_a_timed_out_command_whose_child_left_its_group_is_given_up_at_once(
    tmp_path: Path,
) -> None:
    """A command that hangs, with a child that left its process group (`setsid`) holding
    standard error: the group is killed at the timeout and the command reported, without
    waiting for that child to end (asyncio's wait() waits for every pipe to close)."""
    pid_file = tmp_path / "pid"
    command = f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 30' & sleep 30"

    async def hang() -> str | None:
        task = asyncio.create_task(run_command(command, timedelta(seconds=0.5)))
        await asyncio.wait({task}, timeout=10)
        return task.result() if task.done() else "still waiting for the command"

    try:
        problem = asyncio.run(hang())
    finally:
        subprocess.run(["pkill", "-F", str(pid_file)], check=False)
    assert problem == f"`{command}` timed out after 0.5 s and was killed"


_MIN = timedelta(minutes=1)


def test_a_flood_on_stderr_keeps_memory_bounded() -> None:
    """In a fresh process, so the growth of its peak RSS is the hook's doing alone."""
    script = textwrap.dedent(f"""
        import asyncio, resource
        from datetime import timedelta
        from mustaple.adapters.events import Event, run_hook
        event = Event("failure", "n", "/c", True, "failing", "m")
        flood = "head -c {FLOOD_MB}000000 /dev/zero >&2; echo >&2; echo last words >&2; exit 1"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(asyncio.run(run_hook(flood, event, timedelta(seconds=60))))
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    problem, growth_kib = done.stdout.splitlines()
    assert int(growth_kib) < FLOOD_MB * 1024 // 4, f"peak RSS grew by {growth_kib} KiB"
    assert problem.endswith("exited with status 1: last words")
    assert TAIL_BYTES <= 64 * 1024
