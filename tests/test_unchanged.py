"""`Unchanged` on real files and real inotify: a staple file found as it should be is
trusted (not looked at) from the look after its directory was watched, until an event
names it or its directory, an overflow, or the rescan; a directory whose changes the kernel
does not see is never trusted. And a file sink that follows events skips, in its look at its
copies, the files nothing touched, and still finds the one removed."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mustaple.adapters.sinks import FileSink
from mustaple.adapters.unchanged import Unchanged
from test_file_batches import delivery
from test_progress import Ticks as Clock


@pytest.fixture
def made() -> Iterator[Callable[[Clock], Unchanged]]:
    kept: list[Unchanged] = []

    def make(clock: Clock) -> Unchanged:
        unchanged = Unchanged(600.0, clock)
        kept.append(unchanged)
        return unchanged

    yield make
    for unchanged in kept:
        unchanged._give_up()


def trusted(tmp_path: Path, made: Callable[[Clock], Unchanged]) -> tuple[Unchanged, Clock, str]:
    """A staple file found twice (the first look watches its directory): trusted."""
    clock = Clock()
    unchanged = made(clock)
    staples = tmp_path / "staples"
    staples.mkdir(exist_ok=True)
    path = staples / "a.der"
    path.write_bytes(b"staple")
    unchanged.begin()
    unchanged.found(str(path), b"staple")
    assert not unchanged.unchanged(str(path), b"staple")  # its directory was not watched yet
    unchanged.begin()
    unchanged.found(str(path), b"staple")
    unchanged.begin()
    assert unchanged.unchanged(str(path), b"staple")
    assert not unchanged.unchanged(str(path), b"another staple")
    return unchanged, clock, str(path)


@pytest.mark.parametrize(
    "change", ["written", "replaced by a rename", "removed", "touched", "directory removed"]
)
def test_a_file_an_event_names_is_looked_at_again(
    tmp_path: Path, made: Callable[[Clock], Unchanged], change: str
) -> None:
    unchanged, _, path = trusted(tmp_path, made)
    (tmp_path / "staples" / "b.der").write_bytes(b"b")  # another file: no matter
    (tmp_path / "elsewhere").write_bytes(b"x")
    unchanged.begin()
    assert unchanged.unchanged(path, b"staple")
    staples = tmp_path / "staples"
    changes: dict[str, Callable[[], object]] = {
        "written": lambda: Path(path).write_bytes(b"other"),
        "replaced by a rename": lambda: (staples / "b.der").rename(path),
        "removed": Path(path).unlink,
        "touched": lambda: os.utime(path, (1, 1)),
        "directory removed": lambda: shutil.rmtree(staples),
    }
    changes[change]()
    unchanged.begin()
    assert not unchanged.unchanged(path, b"staple")


def test_every_file_is_looked_at_again_after_the_rescan_or_an_overflow(
    tmp_path: Path, made: Callable[[Clock], Unchanged]
) -> None:
    unchanged, clock, path = trusted(tmp_path, made)
    clock.now += 599
    unchanged.begin()
    assert unchanged.unchanged(path, b"staple")
    clock.now += 1
    unchanged.begin()
    assert not unchanged.unchanged(path, b"staple")
    unchanged.found(path, b"staple")  # its directory still watched: trusted at once
    unchanged.begin()
    assert unchanged.unchanged(path, b"staple")
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    others = [tmp_path / "staples" / name for name in ("b.der", "c.der")]
    for other in others:
        other.write_bytes(b"")
    for index in range(limit // 2 + 10):  # two names in turn: the kernel merges no event
        for other in others:
            os.utime(other, (index, index))
    unchanged.begin()
    assert not unchanged.unchanged(path, b"staple")


def test_a_file_system_whose_changes_the_kernel_does_not_see_is_never_trusted(
    made: Callable[[Clock], Unchanged],
) -> None:
    unchanged = made(Clock())
    for _ in range(3):
        unchanged.begin()
        unchanged.found("/proc/sys/fs/inotify/max_user_watches", b"x")
    unchanged.begin()
    assert not unchanged.unchanged("/proc/sys/fs/inotify/max_user_watches", b"x")


def test_a_file_sink_following_events_stats_only_what_was_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staples = tmp_path / "staples"
    sink = FileSink("files", path=f"{staples}/{{name}}.der")
    sink.follow_events(timedelta(minutes=10))
    batch = [delivery(name, f"staple of {name}".encode()) for name in ("a", "b", "c")]
    looked: list[str] = []
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path).startswith(str(staples)):
            looked.append(os.path.basename(str(path)))
        return real_stat(path, *args, **kwargs)

    async def scenario() -> None:
        assert all(d.ok for d in await sink.deliver(batch))
        for name in ("a", "b", "c"):  # settled: written longer ago than a clock step
            os.utime(staples / f"{name}.der", (1, 1))
        monkeypatch.setattr(os, "stat", stat)
        for _ in range(2):  # the first look watches the directory, the second trusts
            assert await sink.astray(batch) == [None, None, None]
        looked.clear()
        assert await sink.astray(batch) == [None, None, None]
        assert looked == []
        (staples / "b.der").unlink()
        found = await sink.astray(batch)
        assert set(looked) == {"b.der"}  # the others not even stat-ed
        assert found[0] is None
        assert found[1] is not None
        assert found[2] is None

    asyncio.run(scenario())
