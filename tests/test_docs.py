"""The documentation says what the code does: reason tables, exit codes, README commands."""

from __future__ import annotations

import json
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mustaple.adapters.config import ConfigError, parse_config, parse_duration
from mustaple.adapters.sinks import SinkConfigError, build_sink
from mustaple.core.reasons import markdown_tables
from mustaple.core.report import ExitCode
from mustaple.testing.matrix import build_cases

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


def _section(page: str, heading: str) -> str:
    """The text of `page` (under docs/) from the line `heading` to the next heading of its
    level or above."""
    text = (ROOT / "docs" / page).read_text()
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ", 1)[0]
    ends = [text.find(f"\n{'#' * n} ", start + 1) for n in range(1, len(level) + 1)]
    return text[start : min([e for e in ends if e != -1] or [len(text)])]


def _table_keys(section: str) -> set[str]:
    """The keys in the first column of the tables of `section` (`[[certificates]]` and
    `[sinks.NAME]` named as the loader names them: certificates, sinks)."""
    keys = re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE)
    return {key.strip("[]").removesuffix(".NAME") for key in keys}


def _refused(text: str) -> str:
    """The one line the real loader gives for the configuration `text`."""
    with pytest.raises(ConfigError) as refused:
        parse_config(tomllib.loads(text), Path("/etc/mustaple/mustaple.toml"))
    return str(refused.value)


_ENTRY = '[[certificates]]\npaths = ["/etc/ssl/example.pem"]\n'
_REDIS = 'redis = "redis://127.0.0.1:6379/0"\n'
_TABLES = {  # (page, heading): a configuration with the unknown key `zz` in that table
    ("configuration.md", "## Top level"): f"zz = 1\n{_ENTRY}",
    ("configuration.md", "## [[certificates]]"): f"{_ENTRY}zz = 1\n",
    ("configuration.md", "## [hooks]"): f"{_ENTRY}[hooks]\nzz = 1\n",
    ("configuration.md", "## [policy]"): f"{_ENTRY}[policy]\nzz = 1\n",
    ("configuration.md", "## [http]"): f"{_ENTRY}[http]\nzz = 1\n",
    ("configuration.md", "## [fleet]"): f"{_ENTRY}[fleet]\n{_REDIS}zz = 1\n",
}
_SINKS = {  # (page, heading): sink type
    ("integrations/nginx.md", "## mustaple"): "file",
    ("integrations/haproxy.md", "## mustaple"): "haproxy",
    ("configuration.md", "### The command sink"): "command",
}


@pytest.mark.parametrize(("page", "heading"), list(_TABLES))
def test_every_key_the_loader_takes_is_documented_and_no_other(page: str, heading: str) -> None:
    """The keys of each table of the configuration, as the loader's own "unknown key" line
    lists them, are the rows of the page's table (the top-level table lacked [fleet])."""
    line = _refused(_TABLES[page, heading])
    accepted = set(line.split("expected one of: ", 1)[1].split(", "))
    assert _table_keys(_section(page, heading)) == accepted


@pytest.mark.parametrize(("page", "heading"), list(_SINKS))
def test_every_key_a_sink_takes_is_documented_and_no_other(page: str, heading: str) -> None:
    """The keys each sink type takes, as its own "unknown key" line lists them, are the rows
    of its table (the command sink's keys were in a sentence only, on no page of keys)."""
    kind = _SINKS[page, heading]
    with pytest.raises(SinkConfigError) as refused:
        build_sink("s", {"type": kind, "zz": 1})
    accepted = set(str(refused.value).split(" sink takes ", 1)[1].split(", "))
    assert _table_keys(_section(page, heading)) == accepted


def _limit_rows() -> list[tuple[str, str, str]]:
    """(table, key, allowed) for each key of [policy], [hooks], [http] and [fleet] in the
    Limits table of configuration.md."""
    table = _section("configuration.md", "## Limits")
    found = []
    for keys, allowed in re.findall(r"^\| (`.+?) \| (.+?) \|$", table, re.MULTILINE):
        for name in re.findall(r"`(policy|hooks|http|fleet)\.([a-z_]+)`", keys):
            found.append((*name, allowed))
    return found


def _range(allowed: str) -> tuple[list[object], list[object]] | None:
    """The TOML values a Limits row says are taken (its ends) and refused (just past them),
    or None for a row that gives no range."""
    if m := re.match(r"more than zero, at most `(\d+[smhd])`", allowed):
        return ["0.000001s", m[1]], ["0s", _past(m[1])]
    if m := re.match(r"`(\d+[smhd])` to `(\d+[smhd])`", allowed):
        least = parse_duration(m[1]).total_seconds()
        below = [f"{least - 0.5}s"] if least else []
        return [m[1], m[2]], [*below, _past(m[2])]
    if m := re.match(r"(\d+) to (\d+)", allowed):
        return [int(m[1]), int(m[2])], [int(m[1]) - 1, int(m[2]) + 1]
    return None


# what a table needs beside the key tried: a Redis URL; a retry_min not over a 1s retry_max
_OTHERS = {"fleet": _REDIS, "policy": 'retry_min = "1s"\n'}


def _past(duration: str) -> str:
    return f"{parse_duration(duration).total_seconds() + 1:.0f}s"


def test_the_limits_table_says_what_the_loader_takes() -> None:
    """Each range of the Limits table, tried with the real loader at both ends and just past
    them (it said "more than zero" for keys that must be at least 1s)."""
    checked = 0
    for table, key, allowed in _limit_rows():
        ends = _range(allowed)
        if ends is None:
            continue
        taken, refused = ends
        other = _OTHERS.get(table, "") if key != "retry_min" else ""
        for value in taken + refused:
            text = f"{_ENTRY}[{table}]\n{other}{key} = {json.dumps(value)}\n"
            if value in taken:
                parse_config(tomllib.loads(text), Path("/etc/mustaple/mustaple.toml"))
            else:
                assert f"{table}.{key}: " in _refused(text), (key, value)
        checked += 1
    assert checked >= 15


def _toml_blocks() -> list[tuple[str, dict[str, Any]]]:
    """(where, table) for every TOML block of README.md and docs/, and examples/mustaple.toml."""
    found = [
        ("examples/mustaple.toml", tomllib.loads((ROOT / "examples/mustaple.toml").read_text()))
    ]
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for block in re.findall(r"^```toml\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL):
            found.append((page.name, tomllib.loads(block)))
    return found


def test_every_sink_that_reloads_a_server_says_when_it_runs() -> None:
    """A sink with `reload` has `running`, as `mustaple init` writes it: without it, a
    `prime` before the server starts (and `run`, ordered before the servers by the unit)
    fails on `systemctl reload` of a stopped server, and lighttpd's `systemctl restart`
    starts it (lighttpd.md and examples/mustaple.toml had none)."""
    blocks = _toml_blocks()
    assert len(blocks) >= 10
    for where, data in blocks:
        for name, sink in data.get("sinks", {}).items():
            if "reload" in sink:
                assert "running" in sink, (where, name)


def test_the_readme_counts_the_cases_of_the_client_matrix() -> None:
    """README's line on docs/strictness.md says how many staples the matrix judges: the
    number of its cases (it said 179 when there were 215)."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    counted = re.search(r"the client matrix: (\d+) hand-made staples", readme)
    assert counted is not None
    assert int(counted[1]) == len(build_cases(datetime.now(UTC)))
