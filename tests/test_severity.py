"""One severity scale (`mustaple.core.severity`): the same words, colours and numbers wherever
mustaple says how worried to be."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from mustaple.core.health import phase_severity
from mustaple.core.lifecycle import Phase
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


def test_status_colours_each_stored_state_by_its_severity(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = {
        "good": "green",
        "pending": "yellow",
        "failing": "yellow",
        "expired": "red",
        "revoked": "red",
        "unusable": "red",
        "not yet seen by the keeper": "red",
    }
    assert {p.value for p in Phase} < set(expected)
    assert {state: phase_severity(state).colour for state in expected} == expected
    console = Console(force_terminal=True, color_system="standard", width=300)
    monkeypatch.setattr(status, "_console", lambda: console)
    status.print_status_table([_row(state) for state in expected])
    lines = capsys.readouterr().out.splitlines()
    for state, colour in expected.items():
        (line,) = [line for line in lines if f"cert-{state.replace(' ', '-')}" in line]
        assert f"{ANSI[colour]}{state}\x1b[0m" in line


def _row(state: str) -> dict[str, Any]:
    """A row of `status_rows` with no times and no error: only its state matters here."""
    row: dict[str, Any] = dict.fromkeys(("this_update", "effective_expiry", "next_refresh"))
    row |= {"last_attempt": None, "last_error": None, "sinks": [], "must_staple": True}
    return row | {"name": f"cert-{state.replace(' ', '-')}", "state": state}
