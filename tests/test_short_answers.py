"""A responder whose answers are valid for less than `policy.min_interval`: the keeper, on a
fake clock, refreshes sooner than that floor rather than let the staple expire between two
refreshes, says so once in the log, `mustaple status` notes it on the certificate and
/metrics says it (`mustaple_refresh_hurried`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509 import ocsp

from mustaple.core.delivery import Action
from mustaple.core.schedule import SchedulePolicy
from mustaple.testing import keeper_config, keeper_world

NAME = "short.example.test"
MINUTE = timedelta(minutes=1)
MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
NOTE = "too little for policy.min_interval (2h 0m)"


def next_update(der: bytes) -> datetime | None:
    return ocsp.load_der_ocsp_response(der).next_update_utc


def test_answers_shorter_than_min_interval_never_lapse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """90-minute answers with `min_interval = "2h"`: a pass a minute (as `run` makes them)
    for six hours, and at every one the sink holds a staple still valid; about one request
    per 40 minutes (the refresh point of each answer), not one per pass."""
    with caplog.at_level(logging.INFO, logger="mustaple"):
        asyncio.run(short_answers(tmp_path))
    warned = [r for r in caplog.records if NOTE in r.getMessage()]
    assert [r.levelno for r in warned] == [logging.WARNING]


async def short_answers(tmp: Path) -> None:
    config = keeper_config(tmp, schedule=SchedulePolicy(min_interval=2 * 60 * MINUTE))
    async with keeper_world(tmp, config, validity=90 * MINUTE) as w:
        await w.stapled(NAME)
        for _ in range(6 * 60):
            w.clock.now += MINUTE
            await w.keeper.tick()
            last = w.sink.last()
            assert last.action is Action.STAPLE, f"withdrawn at {w.clock.now}"
            assert last.der is not None
            assert (next_update(last.der) or w.clock.now) > w.clock.now
        assert 8 <= len(w.responder.requests) <= 10
        (row,) = status_json(tmp)
        assert NOTE in (row["schedule_note"] or ""), row
        # the gauge an operator alerts on says it too
        hurried = [
            (sample.labels["name"], sample.value)
            for family in w.metrics.registry.collect()
            if family.name == "mustaple_refresh_hurried"
            for sample in family.samples
        ]
        assert hurried == [(NAME, 1.0)], hurried


def status_json(tmp: Path) -> list[dict[str, Any]]:
    """`mustaple status --json` (another process) on the world's state."""
    config = tmp / "mustaple.toml"
    config.write_text(
        f'state_dir = "{tmp}/state"\n[[certificates]]\npaths = ["{tmp}/live/*/fullchain.pem"]\n'
        '[policy]\nmin_interval = "2h"\n'
    )
    command = [MUSTAPLE, "status", "--json", "--config", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert isinstance(rows, list)
    return rows
