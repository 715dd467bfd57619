"""`ReadAhead`: certificate files read an entry at a time in threads given a patience. A read
held (here a read of one file made to wait on an event; tests/test_hung_files.py has real
FUSE files whose open never answers, in real processes) costs its entry the patience once,
and each load that needs a file not reached is told why; the other entries are read."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from mustaple.adapters import files, reads
from mustaple.adapters.fetch import HttpFetcher
from mustaple.adapters.loader import IssuerDownloads, LoadFailed, load_or_fail
from mustaple.adapters.patience import FilesHang, NoThread
from mustaple.adapters.reads import ReadAhead
from mustaple.core.errors import InputError
from mustaple.core.fetchtypes import DEFAULT_FETCH_POLICY

PATIENCE = timedelta(milliseconds=300)


def test_a_read_held_costs_its_entry_the_patience_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held, same, other, gone = (str(tmp_path / name) for name in ("held", "same", "other", "gone"))
    for path in (held, same, other):
        Path(path).write_bytes(path.encode())
    answer = threading.Event()

    def read_input(path: str | Path, what: str = "file") -> bytes:
        if str(path) == held:
            answer.wait()
        return files.read_input(path, what)

    monkeypatch.setattr(reads, "read_input", read_input)
    groups: dict[tuple[str, ...], dict[str, str]] = {
        ("a",): {held: "certificate", same: "certificate"},
        ("b",): {other: "certificate", gone: "certificate"},
    }

    async def scenario() -> None:
        ahead = ReadAhead()
        began = time.monotonic()
        read = await ahead.read(groups, PATIENCE)
        assert time.monotonic() - began >= PATIENCE.total_seconds()
        assert await read(other, "certificate") == other.encode()
        with pytest.raises(InputError, match="gone"):  # its own error, raised by its load
            await read(gone, "certificate")
        with pytest.raises(FilesHang, match=r"^its read has not answered in "):
            await read(held, "certificate")
        waited = re.escape(
            f"not read while the read of {held}, of the same entry, has not answered"
        )
        with pytest.raises(FilesHang, match=waited):
            await read(same, "certificate")
        began = time.monotonic()  # again while it still waits: at once, nothing read there
        read = await ahead.read(groups, PATIENCE)
        assert time.monotonic() - began < PATIENCE.total_seconds()
        assert await read(other, "certificate") == other.encode()
        with pytest.raises(FilesHang, match=waited):
            await read(same, "certificate")
        answer.set()  # the file system answers: everything is read at the next batch
        await asyncio.sleep(0.05)
        read = await ahead.read(groups, PATIENCE)
        assert [await read(path, "certificate") for path in (held, same)] == [
            held.encode(),
            same.encode(),
        ]

    asyncio.run(scenario())


def test_no_thread_to_read_in_is_each_file_s_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that cannot be started (a limit of tasks reached, as systemd's TasksMax sets)
    is raised by each load of the group, not out of the batch (which stopped the whole scan,
    or a worker's whole chunk): not read, as a read that hangs (read again later, what the
    keeper held kept), saying why."""
    path = tmp_path / "fullchain.pem"
    path.write_bytes(b"not read")

    def start(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def scenario() -> None:
        with monkeypatch.context() as patched:
            patched.setattr(threading.Thread, "start", start)
            read = await ReadAhead().read({("a",): {str(path): "certificate"}}, PATIENCE)
        loaded = await load_or_fail(
            path,
            None,
            fetcher=HttpFetcher(),
            policy=DEFAULT_FETCH_POLICY,
            downloads=IssuerDownloads(),
            issuers={},
            read=read,
        )
        no_thread = str(NoThread(RuntimeError("can't start new thread")))
        assert loaded == LoadFailed(no_thread, hung=True, no_thread=True)

    asyncio.run(scenario())
