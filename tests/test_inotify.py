"""`Inotify` and `local_file_system` against the real kernel: the events of a watched
directory with their names, one watch for two paths of a directory, a directory removed,
the queue's overflow, what cannot be watched (the watch limit set low in a user namespace of
its own), and which file systems count as local."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mustaple.adapters.inotify import Inotify, local_file_system


@pytest.fixture
def inotify() -> Iterator[Inotify]:
    watcher = Inotify()
    yield watcher
    watcher.close()


def test_each_change_in_a_watched_directory_is_read_with_its_name(
    tmp_path: Path, inotify: Inotify
) -> None:
    watched, beside = tmp_path / "certs", tmp_path / "other"
    watched.mkdir()
    beside.mkdir()
    inotify.add(str(watched))
    assert inotify.read() == ([], False)  # nothing yet, and no wait
    (watched / "a.pem").write_text("a")
    (beside / "b.pem").write_text("b")  # not watched
    assert {name for _, name in inotify.read()[0]} == {"a.pem"}
    for change in (
        lambda: os.utime(watched / "a.pem", (1, 1)),
        lambda: (watched / "a.pem").rename(watched / "c.pem"),
        (watched / "c.pem").unlink,
        lambda: os.symlink("nowhere", watched / "link"),
    ):
        change()
        events, overflowed = inotify.read()
        assert events
        assert not overflowed
        assert {directory for directory, _ in events} == {str(watched)}
    assert inotify.read() == ([], False)


def test_two_paths_of_one_directory_share_its_watch(tmp_path: Path, inotify: Inotify) -> None:
    real = tmp_path / "archive"
    real.mkdir()
    os.symlink(real, tmp_path / "live")
    inotify.add(str(real))
    inotify.add(str(tmp_path / "live"))
    (real / "x").write_text("x")
    assert {d for d, _ in inotify.read()[0]} == {str(real), str(tmp_path / "live")}
    inotify.remove(str(real))  # the other path keeps the kernel's watch
    (real / "y").write_text("y")
    assert {d for d, _ in inotify.read()[0]} == {str(tmp_path / "live")}
    inotify.remove(str(tmp_path / "live"))
    (real / "z").write_text("z")
    assert inotify.read() == ([], False)


def test_a_removed_directory_says_so_and_is_no_longer_watched(
    tmp_path: Path, inotify: Inotify
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    inotify.add(str(gone))
    assert str(gone) in inotify
    gone.rmdir()
    events, _ = inotify.read()
    assert (str(gone), "") in events  # an event on the directory itself
    assert str(gone) not in inotify
    assert len(inotify) == 0


def test_an_overflow_of_the_kernels_queue_is_said(tmp_path: Path, inotify: Inotify) -> None:
    inotify.add(str(tmp_path))
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    first, second = tmp_path / "1", tmp_path / "2"
    first.write_text("")
    second.write_text("")
    for index in range(limit // 2 + 10):  # two files in turn: the kernel merges no event
        os.utime(first, (index, index))
        os.utime(second, (index, index))
    assert inotify.read()[1] is True
    assert inotify.read() == ([], False)


def test_what_cannot_be_watched_is_an_oserror(tmp_path: Path, inotify: Inotify) -> None:
    with pytest.raises(OSError, match="No such file") as missing:
        inotify.add(str(tmp_path / "nothing"))
    assert missing.value.errno == errno.ENOENT
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="Not a directory") as not_a_directory:
        inotify.add(str(tmp_path / "file"))
    assert not_a_directory.value.errno == errno.ENOTDIR


def test_the_watch_limit_is_an_enospc(tmp_path: Path) -> None:
    for name in "abcd":
        (tmp_path / name).mkdir()
    script = (
        "import sys\n"
        "from mustaple.adapters.inotify import Inotify\n"
        "watcher = Inotify()\n"
        "for name in 'abcd':\n"
        "    try:\n"
        "        watcher.add(sys.argv[1] + '/' + name)\n"
        "    except OSError as exc:\n"
        "        print(name, exc.errno)\n"
    )
    done = in_user_namespace(
        ["max_inotify_watches=2"], [sys.executable, "-c", script, str(tmp_path)]
    )
    assert done.stdout.split() == ["c", str(errno.ENOSPC), "d", str(errno.ENOSPC)]


def test_local_file_systems_are_told_from_others(tmp_path: Path) -> None:
    assert local_file_system(str(tmp_path)) is True  # ext4 here
    assert local_file_system("/dev/shm") is True  # tmpfs
    assert local_file_system("/proc") is False
    assert local_file_system("/sys") is False
    with pytest.raises(OSError, match="statfs: No such file"):
        local_file_system(str(tmp_path / "nothing"))


def in_user_namespace(limits: list[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`argv` run in a user namespace of its own whose /proc/sys/user limits are set (each
    `name=value`): the kernel's per-user limits, lowered for that process alone."""
    settings = " && ".join(
        f"echo {value} > /proc/sys/user/{name}"
        for name, value in (limit.split("=") for limit in limits)
    )
    return subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "sh",
            "-c",
            f'{settings} && exec "$@"',
            "sh",
            *argv,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
