"""One severity scale (`mustaple.core.severity`): the same words, colours and numbers wherever
mustaple says how worried to be."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from mustaple.core.severity import Severity
from mustaple.front import status

ANSI = {"green": "\x1b[32m", "yellow": "\x1b[33m", "red": "\x1b[31m"}


def test_the_scale_is_the_monitoring_plugin_exit_codes_with_its_words() -> None:
    assert [(s.name, int(s), s.word) for s in Severity] == [
        ("OK", 0, "ok"),
        ("WARNING", 1, "warning"),
        ("CRITICAL", 2, "critical"),
        ("UNKNOWN", 3, "unknown"),
    ]


def test_status_colours_each_row_by_its_health(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The state's colour is the row's health (`health.judge`, as on the status page), not
    the state alone: a good staple a server refuses is yellow."""
    expected = {("good", "ok"): "green", ("good", "warning"): "yellow"}
    expected |= {("failing", "critical"): "red", ("unusable", "warning"): "yellow"}
    console = Console(force_terminal=True, color_system="standard", width=300)
    monkeypatch.setattr(status, "_console", lambda: console)
    status.print_status_table([_row(state, health) for state, health in expected])
    lines = capsys.readouterr().out.splitlines()
    for (state, health), colour in expected.items():
        (line,) = [line for line in lines if f"cert-{state}-{health}" in line]
        assert f"{ANSI[colour]}{state}\x1b[0m" in line


def _row(state: str, health: str) -> dict[str, Any]:
    """A row of `status_rows` with no times and no error: its state and health matter here."""
    row: dict[str, Any] = dict.fromkeys(("this_update", "effective_expiry", "next_refresh"))
    row |= {"last_attempt": None, "last_error": None, "sinks": [], "must_staple": True}
    row |= {"schedule_note": None}
    return row | {"name": f"cert-{state}-{health}", "state": state, "health": health}
