"""The documentation says what the code does: reason tables, exit codes, README commands."""

from __future__ import annotations

from pathlib import Path

from mustaple.core.reasons import markdown_tables
from mustaple.core.report import ExitCode

ROOT = Path(__file__).resolve().parent.parent


def test_reason_tables_are_current() -> None:
    text = (ROOT / "docs" / "reasons.md").read_text()
    start = text.index("-->\n", text.index("<!-- generated")) + 4
    end = text.index("<!-- end of generated tables -->")
    assert text[start:end] == markdown_tables(), "regenerate with the command in the comment"


def test_exit_codes_are_documented() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    for code in ExitCode:
        assert f"| {code.value} |" in text, code


def test_readme_quick_start_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert "./dev demo" in readme
    assert ci[-1] == "./dev test"
    assert "./dev test" in readme
