"""Absurd option and configuration values: not finite, out of range, nested too deeply, or
unknown keys. Each is one line naming the option or key, exit code 2, in every command that
reads it (`run --check-config`, `status`, `prime`), never an internal error."""

from __future__ import annotations

from pathlib import Path

import pytest

from mustaple.cli import main
from mustaple.core.report import ExitCode

BASE = """
state_dir = "{tmp}/state"
[[certificates]]
paths = ["{tmp}/live/*/fullchain.pem"]
"""
COMMANDS = [["run", "--check-config"], ["status"], ["prime", "/nonexistent/fullchain.pem"]]


def check_all_commands(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str], *words: str, base: str = BASE
) -> None:
    config = tmp_path / "mustaple.toml"
    config.write_text(base.format(tmp=tmp_path) + text)
    for command in COMMANDS:
        code = main([*command, "--config", str(config)])
        out, err = capsys.readouterr()
        assert code == ExitCode.USAGE, (command, out, err)
        assert err.count("\n") == 1, (command, err)
        assert "internal error" not in err
        for word in words:
            assert word in err, (command, err)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[policy]\ntimeout = "99999999999d"', ["policy.timeout", "longer than"]),
        ('[policy]\ntimeout = "2h"', ["policy.timeout", "at most 1h"]),
        ('[policy]\nmin_interval = "1e309s"', ["policy.min_interval", "not a duration"]),
        ('[policy]\nretry_max = "999999999999999999999999s"', ["policy.retry_max"]),
        ('[policy]\nwatch_interval = "0s"', ["policy.watch_interval", "at least 1s"]),
        ('[policy]\nwatch_interval = "0.000001s"', ["policy.watch_interval", "at least 1s"]),
        ('[policy]\nretry_min = "0.1s"', ["policy.retry_min", "at least 1s"]),
        ('[http]\nlisten = "127.0.0.1:\u00b2"', ["http.listen", "HOST:PORT"]),
        ('[policy]\nclock_skew = "30d"', ["policy.clock_skew", "at most 1d"]),
        ("[policy]\nrefresh_at = nan", ["policy.refresh_at", "finite"]),
        ("[policy]\njitter = inf", ["policy.jitter", "finite"]),
        ("[policy]\nattempts = 1000000", ["policy.attempts", "at most 10"]),
        ("[policy]\nconcurrency = 9223372036854775807", ["policy.concurrency", "at most"]),
        ("[policy]\nmax_response_size = 99999999999", ["policy.max_response_size", "at most"]),
        ('[hooks]\ntimeout = "99999999999d"', ["hooks.timeout"]),
        ("[http]\nmax_request_size = 0", ["http.max_request_size", "at least 1"]),
        ('[fleet]\nredis = "redis://127.0.0.1:1"\nlease = "9999d"', ["fleet.lease"]),
        ('[sinks.f]\ntype = "file"\npath = "/x/{name}"\ntimeout = 1', ["sinks.f.timeout"]),
        ('[sinks.f]\ntype = "command"\ncommand = "true"\ntimeout = "2d"', ["at most 1d"]),
    ],
)
def test_out_of_range_values_are_one_line_everywhere(
    tmp_path: Path, text: str, words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    check_all_commands(tmp_path, text, capsys, *words)


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("127.0.0.1:" + "9" * 5000, "a port from 1 to 65535"),
        ("127.0.0.1:0", "a port from 1 to 65535"),
        ("not a host!:8008", "the host holds spaces"),
        (" 127.0.0.1:18009", "the host holds spaces"),
        ("127.0.\\u00000.1:8008", "the host holds spaces or control characters"),
        ("999.1.1.1:8008", "the host is not an IPv4 address"),
        ("bad_host:8008", "the host is not an IP address or a host name"),
        ("-a.example:8008", "the host is not an IP address or a host name"),
        ("[[::1]]:8008", r"no IPv6 address in [ ]"),
        ("[127.0.0.1]:8008", r"no IPv6 address in [ ]"),
        ("::1:8008", "write an IPv6 address in brackets"),
    ],
)
def test_a_listen_address_run_would_refuse_is_refused_everywhere(
    tmp_path: Path, listen: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config passed these, and `run` then refused them (or, for [[::1]], took ::1, and
    for 5000 digits a reload died with an internal error)."""
    check_all_commands(tmp_path, f'[http]\nlisten = "{listen}"', capsys, "http.listen", problem)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[sinks.f]\ntype = "file"\npath = "/x/{name}\\u0000.der"', "sinks.f.path"),
        ('[sinks.f]\ntype = "file"\npath = "/x/{name}"\nreload = "true\\u0000"', "sinks.f.reload"),
        ('[sinks.f]\ntype = "file"\npath = "/x/{name}"\nrunning = "a\\u0000"', "sinks.f.running"),
        ('[sinks.h]\ntype = "haproxy"\nsocket = "/run/h\\u0000.sock"', "sinks.h.socket"),
        (
            '[sinks.h]\ntype = "haproxy"\nsocket = "/run/h"\nocsp_dir = "/x\\u0000"',
            "sinks.h.ocsp_dir",
        ),
        ('[sinks.c]\ntype = "command"\ncommand = "echo \\u0000"', "sinks.c.command"),
        ('[hooks]\non_failure = "logger \\u0000"', "hooks.on_failure"),
    ],
)
def test_a_nul_character_in_a_path_or_command_is_refused_everywhere(
    tmp_path: Path, text: str, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No system call takes a NUL: each would fail only when used (or crash check-config)."""
    check_all_commands(tmp_path, text, capsys, f"{key}: ", "holds a NUL character")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('state_dir = "~/mstate"\n', "state_dir", "~ is not expanded here"),
        ('state_dir = "mstate"\n', "state_dir", "is a relative path"),
        ('[[certificates]]\npaths = ["live/*.pem"]\n', "certificates[1].paths", "relative"),
        ('[[certificates]]\npaths = ["~/a.pem"]\n', "certificates[1].paths", "~ is not"),
        ('[[certificates]]\npaths = ["/a.pem"]\nissuer = "ca.pem"\n', "certificates[1].issuer", ""),
        ('[sinks.f]\ntype = "file"\npath = "staples/{name}.der"\n', "sinks.f.path", "relative"),
        ('[sinks.f]\ntype = "file"\npath = "~/{name}.der"\n', "sinks.f.path", "~ is not"),
        (
            '[sinks.h]\ntype = "haproxy"\nsocket = "/run/h"\nocsp_dir = "o"\n',
            "sinks.h.ocsp_dir",
            "",
        ),
    ],
)
def test_a_path_not_written_from_the_root_is_refused_everywhere(
    tmp_path: Path,
    text: str,
    key: str,
    problem: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ "~/mstate" made a directory named "~" in the current directory, and a relative path
    was taken from wherever mustaple started (/ under systemd)."""
    monkeypatch.chdir(tmp_path)
    if key == "state_dir":  # in place of the base's own
        text, base = "", text + BASE.replace('state_dir = "{tmp}/state"\n', "")
    else:
        base = BASE
    words = [f"{key}: ", problem or "relative", "write the full path, from /"]
    check_all_commands(tmp_path, text, capsys, *words, base=base)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mustaple.toml"]


@pytest.mark.parametrize("depth", [17, 100, 5000])
def test_deeply_nested_arrays_are_one_line(
    tmp_path: Path, depth: int, capsys: pytest.CaptureFixture[str]
) -> None:
    nested = "[" * depth + "]" * depth
    check_all_commands(tmp_path, f"[sinks.f]\ntype = {nested}\n", capsys, "nested more than 16")


def test_unknown_keys_are_refused_by_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = '[sinks.f]\ntype = "file"\npath = "/x/{name}.der"\nbogus = 1\n'
    check_all_commands(tmp_path, sink, capsys, "sinks.f.bogus: unknown key")
    check_all_commands(tmp_path, "bogus = 1\n", capsys, "bogus: unknown key")


@pytest.mark.parametrize("value", ["inf", "1e309", "nan", "-inf", "0", "601"])
def test_fetch_timeout_must_be_finite_and_in_range(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["fetch", "/nonexistent.pem", "--timeout", value])
    _, err = capsys.readouterr()
    assert code == ExitCode.USAGE
    assert "--timeout" in err
    assert "internal error" not in err
