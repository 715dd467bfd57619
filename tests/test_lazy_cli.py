"""Each command loads only what it needs: `mustaple prime --help` or a usage error does not
import the network, Redis, metrics or terminal libraries, and no command imports another
command's module; `fetch` and `prime` of certificates whose responders are plain http:// load
no aiohttp (docs/performance.md, start-up)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from mustaple.cli import COMMANDS, cli, main
from mustaple.core.report import ExitCode
from mustaple.testing import CA, ResponderThread

HTTP_CLIENT = {"aiohttp", "yarl", "multidict"}  # loaded only when an exchange needs aiohttp
HEAVY = (
    "aiohttp",
    "yarl",
    "multidict",
    "redis",
    "prometheus_client",
    "rich",
    "mustaple.keeper.keeper",
    "mustaple.testing",
)


def loaded_after(argv: list[str]) -> set[str]:
    """The heavy modules and command modules a fresh interpreter holds after main(argv)."""
    return run_fresh(argv)[1]


def run_fresh(argv: list[str]) -> tuple[int, set[str]]:
    """main(argv)'s exit code in a fresh interpreter, and the heavy modules and command
    modules it holds afterwards."""
    code = (
        "import contextlib, io, sys\n"
        "from mustaple.cli import main\n"
        "quiet = io.StringIO()\n"
        "with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):\n"
        f"    code = main({argv!r})\n"
        "print(code, ' '.join(m for m in sys.modules if m.startswith('mustaple.cli.')\n"
        f"    or m.split('.')[0] in {HEAVY!r} or m in {HEAVY!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    exit_code, *loaded = done.stdout.split()
    return int(exit_code), set(loaded)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_command_help_loads_only_its_own_module(name: str) -> None:
    loaded = loaded_after([name, "--help"])
    own = COMMANDS[name][0]
    assert own in loaded
    assert {m for m in loaded if m.startswith("mustaple.cli.")} <= {own, "mustaple.cli.options"}
    if name != "init":  # init's options come from mustaple.front.init, which loads rich
        assert loaded & set(HEAVY) == set(), loaded


def test_a_usage_error_loads_no_heavy_library() -> None:
    assert loaded_after(["prime", "--no-such-option"]) <= {
        "mustaple.cli.prime",
        "mustaple.cli.options",
    }


def test_the_group_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    listed = {
        line.split()[0]
        for line in capsys.readouterr().out.split("Commands:")[1].splitlines()
        if line.strip()
    }
    assert listed == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_name_finds_its_command(name: str) -> None:
    command = cli.get_command(click.Context(cli), name)
    assert isinstance(command, click.Command)
    assert command.name == name


@pytest.fixture(scope="module")
def responder() -> Iterator[ResponderThread]:
    with ResponderThread(CA()) as thread:
        yield thread


def _leaf(responder: ResponderThread, tmp_path: Path, url: str | None = None) -> Path:
    leaf = responder.responder.ca.issue("lazy.test", ocsp_urls=[url or responder.url])
    responder.add(leaf)
    return leaf.write(tmp_path).fullchain


def test_fetch_over_plain_http_loads_no_aiohttp(responder: ResponderThread, tmp_path: Path) -> None:
    code, loaded = run_fresh(["fetch", str(_leaf(responder, tmp_path))])
    assert code == ExitCode.GOOD
    assert loaded & HTTP_CLIENT == set()


def test_prime_over_plain_http_loads_no_aiohttp(responder: ResponderThread, tmp_path: Path) -> None:
    cert = _leaf(responder, tmp_path)
    config = tmp_path / "mustaple.toml"
    config.write_text(f'state_dir = "{tmp_path}/state"\n[[certificates]]\npaths = ["{cert}"]\n')
    code, loaded = run_fresh(["prime", "--config", str(config), str(cert)])
    assert code == ExitCode.GOOD
    assert "mustaple.keeper.keeper" in loaded
    assert loaded & HTTP_CLIENT == set()


def test_an_https_responder_loads_aiohttp(responder: ResponderThread, tmp_path: Path) -> None:
    """The checks above can fail: an exchange over https:// needs aiohttp (here, to be refused
    on a closed loopback port)."""
    cert = _leaf(responder, tmp_path, "https://127.0.0.1:1/ocsp")
    code, loaded = run_fresh(["fetch", str(cert), "--attempts", "1"])
    assert code == ExitCode.NO_STAPLE
    assert loaded >= HTTP_CLIENT
