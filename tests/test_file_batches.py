"""The file sink writes a batch together (`files.write_atomic_many`) with the outcome of
writing its deliveries one at a time: every file in place and durable, in order, each failure
its own."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import threading
from pathlib import Path

import pytest

import mustaple.adapters.files as files_module
from conftest import fake_staple
from mustaple.adapters.files import SYNC_ONCE_FROM, syncfs_trusted, write_atomic_many
from mustaple.adapters.sinks import FileSink
from mustaple.core.delivery import Action, Delivery


def delivery(name: str, der: bytes | None, action: Action = Action.STAPLE) -> Delivery:
    return Delivery(
        key=name,
        name=name,
        cert_path=Path(f"/nowhere/{name}/fullchain.pem"),
        action=action,
        der=der,
        issuer_pem=b"",
        bundle_has_issuer=True,
        status="good",
    )


def test_a_batch_writes_every_file_and_reports_each(tmp_path: Path) -> None:
    sink = FileSink("files", path=str(tmp_path / "staples" / "{name}.der"))
    (tmp_path / "staples").mkdir()
    (tmp_path / "staples" / "same.der").write_bytes(b"same")
    (tmp_path / "staples" / "dir.der").mkdir()  # not a regular file: never written over
    batch = [delivery(f"c{i}", b"der %d" % i) for i in range(40)]
    batch += [delivery("same", b"same"), delivery("dir", b"x")]
    done = asyncio.run(sink.deliver(batch))
    assert [d.changed for d in done] == [True] * 40 + [False, False]
    assert [d.error is None for d in done] == [True] * 41 + [False]
    assert "dir.der" in (done[-1].error or "")
    for i in range(40):
        assert (tmp_path / "staples" / f"c{i}.der").read_bytes() == b"der %d" % i
    leftovers = [p.name for p in (tmp_path / "staples").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_the_order_of_a_batch_is_kept_for_one_file(tmp_path: Path) -> None:
    target = tmp_path / "one.der"
    sink = FileSink("files", path=str(tmp_path / "{name}.der"))
    batch = [
        delivery("one", fake_staple(b"first")),
        delivery("one", fake_staple(b"second")),
        delivery("one", fake_staple(b"second")),
        delivery("one", None, Action.REMOVE),
        delivery("one", fake_staple(b"third")),
    ]
    done = asyncio.run(sink.deliver(batch))
    assert [d.changed for d in done] == [True, True, False, True, True]
    assert target.read_bytes() == fake_staple(b"third")


def test_write_atomic_many_says_what_failed_and_writes_the_rest(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    files = [(tmp_path / "a", b"A"), (tmp_path / "busy", b"B"), (tmp_path / "no" / "c", b"C")]
    problems = write_atomic_many(files)
    assert problems[0] is None
    assert (tmp_path / "a").read_bytes() == b"A"
    assert problems[1] is not None
    assert (tmp_path / "busy").is_dir()
    assert isinstance(problems[2], FileNotFoundError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "busy"]


def test_a_small_batch_is_written_whole_by_the_threads_that_could_be_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch under SYNC_ONCE_FROM is written by a few threads at once; when the process
    has reached its limit of tasks, by those that could be started and by the caller's own
    (a pool of threads raised out of the whole batch, and the sink's delivery failed)."""
    started: list[threading.Thread] = []
    start = threading.Thread.start

    def one_only(thread: threading.Thread) -> None:
        if started:
            raise RuntimeError("can't start new thread")
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", one_only)
    batch = [(tmp_path / f"{i}.der", b"der %d" % i) for i in range(SYNC_ONCE_FROM - 2)]
    problems = write_atomic_many([*batch, (tmp_path / "no" / "c", b"C")])
    assert len(started) == 1
    assert problems[:-1] == [None] * len(batch)
    assert isinstance(problems[-1], FileNotFoundError)
    for path, data in batch:
        assert path.read_bytes() == data
    assert not list(tmp_path.rglob(".*"))  # no temporary left


def test_a_large_batch_is_made_durable_by_one_syncfs_per_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From SYNC_ONCE_FROM files, no fsync each but one syncfs(2) per file system: the same
    files in place (two directories, one file system here), the same errors, no temporaries."""
    real = files_module._syncfs()
    assert real is not None  # Linux: the C library has it
    calls: list[int] = []

    def counted(fd: int) -> int:
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(files_module, "_syncfs", lambda: counted)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "dir").mkdir()
    batch = [(tmp_path / "ab"[i % 2] / f"{i}.der", b"der %d" % i) for i in range(SYNC_ONCE_FROM)]
    problems = write_atomic_many([*batch, (tmp_path / "b" / "dir", b"x")], mode=0o640)
    assert problems[:-1] == [None] * SYNC_ONCE_FROM
    assert problems[-1] is not None
    assert len(calls) == 1
    for path, data in batch:
        assert path.read_bytes() == data
        assert path.stat().st_mode & 0o777 == 0o640
    assert not list(tmp_path.rglob(".*"))  # no temporary left


def test_syncfs_is_opened_before_the_first_write_and_trusted_from_linux_5_15(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """syncfs(2) reports only the writeback errors that came after its descriptor was opened:
    the directory is opened before any temporary is written. And it is used only from the
    kernel that reports errors (5.8) and reaches FUSE (5.15)."""
    opened: list[str] = []
    real_open = os.open

    def recording(path: str | Path, flags: int, *args: int, **kwargs: object) -> int:
        opened.append("directory" if flags & os.O_DIRECTORY else Path(path).name)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording)
    batch = [(tmp_path / f"{i}.der", b"der") for i in range(SYNC_ONCE_FROM)]
    assert write_atomic_many(batch) == [None] * SYNC_ONCE_FROM
    assert opened[0] == "directory"
    assert len(opened) == SYNC_ONCE_FROM + 2  # the directory, the temporaries, its fsync
    assert [syncfs_trusted(r) for r in ("6.18.44-fc", "5.15.0-91-generic", "5.14.21")] == [
        True, True, False
    ]  # fmt: skip
    assert not any(syncfs_trusted(r) for r in ("5.10.0-23-amd64", "4.19.0", "", "linux"))


def test_a_failed_syncfs_fails_its_files_and_keeps_what_was_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that cannot flush (EIO, injected at the C call: it cannot be made on demand
    here): every file of the batch says so, the old bytes stay, no temporary is left."""

    def failing(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(files_module, "_syncfs", lambda: failing)
    (tmp_path / "old.der").write_bytes(b"old")
    batch = [(tmp_path / f"{i}.der", b"new") for i in range(SYNC_ONCE_FROM - 1)]
    problems = write_atomic_many([*batch, (tmp_path / "old.der", b"new")])
    assert all(isinstance(p, OSError) and p.errno == errno.EIO for p in problems)
    assert "old.der" in str(problems[-1])
    assert (tmp_path / "old.der").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["old.der"]
