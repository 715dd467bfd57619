"""`mustaple demo` tells the whole story and ends cleanly."""

from __future__ import annotations

import pytest

from mustaple.cli import main
from mustaple.demo import MISBEHAVIOURS


def test_demo_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "1. Fetch before any client connects" in out
    codes = [line.rsplit("-> ", 1)[1].split()[0] for line in out.splitlines() if "-> " in line]
    assert len(codes) == len(MISBEHAVIOURS)
    assert codes[:5] == ["try-later", "content-type", "http-server-error", "timeout",
                         "older-than-current"]  # fmt: skip
    assert "ACCEPTED" not in out
    assert "Meanwhile the staple in hand is untouched" in out
    assert "3. The responder recovers" in out
    assert "4. The CA revokes the certificate" in out
    assert out.rstrip().endswith("--json")
