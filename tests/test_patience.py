"""`Patient`: a sink's work on files that stays at one file for its patience fails with
`FilesHang` naming that file; later work fails at once while it still waits (no second
thread behind it), and runs again once it ended; work that moves on is waited for. Real
threads; the file system that hangs is in tests/test_hung_files.py."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest

from mustaple.adapters.patience import FilesHang, Patient

PATIENCE = timedelta(milliseconds=600)  # wide: a loaded CI machine runs threads late


def test_work_that_hangs_fails_and_so_does_the_next_until_it_ends() -> None:
    release = threading.Event()
    started: list[str] = []

    def hangs(at: list[object]) -> str:
        started.append("hangs")
        at[0] = "/srv/staples/a.der"
        release.wait(10)
        return "late"

    def quick(at: list[object]) -> str:
        started.append("quick")
        return "done"

    async def scenario() -> None:
        patient = Patient(PATIENCE)
        with pytest.raises(FilesHang, match=r"^/srv/staples/a.der has not answered in "):
            await patient.run(hangs, "/srv/staples")
        began = time.monotonic()
        with pytest.raises(FilesHang, match=r"^/srv/staples/a.der has not answered for "):
            await patient.run(quick, "/srv/staples")
        assert time.monotonic() - began < PATIENCE.total_seconds()  # at once
        assert started == ["hangs"]  # no thread started behind the one that waits
        release.set()
        while True:  # the waiting thread ends; then work runs again
            try:
                assert await patient.run(quick, "/srv/staples") == "done"
                break
            except FilesHang:
                await asyncio.sleep(0.01)
        assert started == ["hangs", "quick"]

    asyncio.run(scenario())


def test_work_that_moves_on_is_waited_for_and_its_error_raised() -> None:
    pace = threading.Event()

    def slow(at: list[object]) -> int:
        for index in range(8):
            at[0] = f"/srv/staples/{index}.der"
            pace.wait(PATIENCE.total_seconds() / 4)
        return 8

    def broken(at: list[object]) -> int:
        raise ValueError("a bug")

    async def scenario() -> None:
        patient = Patient(PATIENCE)
        assert await patient.run(slow, "/srv/staples") == 8
        with pytest.raises(ValueError, match="a bug"):
            await patient.run(broken, "/srv/staples")

    asyncio.run(scenario())
