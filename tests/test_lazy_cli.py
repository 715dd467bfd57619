"""Each command loads only what it needs: `mustaple prime --help` or a usage error does not
import the network, Redis, metrics or terminal libraries, and no command imports another
command's module (docs/performance.md, start-up)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from mustaple.cli import COMMANDS, cli, main

HEAVY = (
    "aiohttp",
    "redis",
    "prometheus_client",
    "rich",
    "mustaple.keeper.keeper",
    "mustaple.testing",
)


def loaded_after(argv: list[str]) -> set[str]:
    """The heavy modules and command modules a fresh interpreter holds after main(argv)."""
    code = (
        "import contextlib, io, sys\n"
        "from mustaple.cli import main\n"
        "quiet = io.StringIO()\n"
        "with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):\n"
        f"    main({argv!r})\n"
        "print(' '.join(m for m in sys.modules if m.startswith('mustaple.cli.')\n"
        f"    or m.split('.')[0] in {HEAVY!r} or m in {HEAVY!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


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
