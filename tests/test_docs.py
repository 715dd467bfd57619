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


def _code_lines(page: Path) -> list[str]:
    """The lines of the fenced code blocks of a Markdown page."""
    lines, inside = [], False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def test_the_command_is_where_the_readme_says_everywhere() -> None:
    """README's install links /usr/local/bin/mustaple, and ./dev installs .venv/bin/mustaple:
    the README says both, once; every example (README, docs/) calls the command `mustaple`,
    or by the installed path where a full path is needed (it used `.venv/bin/mustaple`,
    beside a unit, a hook and docs that call the installed one)."""
    readme = (ROOT / "README.md").read_text()
    installed, linked = "/usr/local/bin/mustaple", "/opt/mustaple/bin/mustaple"
    assert f"ln -s {linked} {installed}\n" in readme
    dev = (ROOT / "dev").read_text()
    assert "\nVENV=.venv\n" in dev
    assert 'exec "$VENV/bin/mustaple" demo' in dev
    use = readme.split("## Use\n", 1)[1].split("\n## ", 1)[0]
    assert f"`{installed}`" in use
    assert "`.venv/bin/mustaple`" in use
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        for line in _code_lines(page):
            for word in line.split():
                if word.endswith("/mustaple") and "bin/" in word:
                    assert word in (installed, linked), (page.name, line)
