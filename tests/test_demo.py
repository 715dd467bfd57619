"""`mustaple demo` tells the whole story and ends cleanly."""

from __future__ import annotations

import pytest

from mustaple.cli import main
from mustaple.front.demo import MISBEHAVIOURS


def test_demo_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    verdicts = [
        line.split(": ", 1)[1].split()[0] for line in out.splitlines() if "mustaple check:" in line
    ]
    assert verdicts == ["CRITICAL", "OK", "OK", "OK", "CRITICAL"]
    codes = [line.rsplit("-> ", 1)[1].split()[0] for line in out.splitlines() if "-> " in line]
    assert len(codes) == len(MISBEHAVIOURS)
    assert codes[:5] == [
        "try-later",
        "content-type",
        "http-server-error",
        "timeout",
        "older-than-current",
    ]
    assert "ACCEPTED" not in out
    assert "The server still staples the good staple" in out
    assert "5. The CA revokes the certificate" in out
    assert out.rstrip().endswith("fullchain.pem")
