"""The command line, one module per command: fetch, inspect, prime, run, status, check, init, demo.

`main(argv=None) -> int` runs in-process (tests call it directly) and never lets a traceback
reach the user: bad input is one line on stderr and exit code 2; an outcome is one line (or a
JSON object) on stdout and the exit code of `report.ExitCode`. `run` is the console script.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from mustaple import __version__
from mustaple.cli.check import check_command
from mustaple.cli.demo import demo
from mustaple.cli.fetch import fetch
from mustaple.cli.init import init_command
from mustaple.cli.inspect import inspect
from mustaple.cli.prime import prime
from mustaple.cli.run_keeper import run_keeper
from mustaple.cli.status import status
from mustaple.errors import InputError
from mustaple.report import ExitCode

__all__ = ["cli", "main", "run"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mustaple")
def cli() -> None:
    """Keep OCSP staples (and must-staple certificates) safe on real TLS servers."""


for _command in (fetch, inspect, prime, run_keeper, status, demo):
    cli.add_command(_command)
cli.add_command(check_command, "check")
cli.add_command(init_command, "init")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of exiting."""
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="mustaple",
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:  # one line, as every other problem (docs/cli.md)
        message = exc.format_message()
        if "\n" in message:  # no command at all: the help is the message
            exc.show()
            return ExitCode.USAGE
        command = exc.ctx.command_path if exc.ctx is not None else "mustaple"
        click.echo(f"mustaple: {message} (see {command} --help)", err=True)
        return ExitCode.USAGE
    except click.ClickException as exc:
        exc.show()
        return ExitCode.USAGE
    except click.Abort:
        click.echo("mustaple: interrupted", err=True)
        return 130
    except InputError as exc:
        click.echo(f"mustaple: {exc}", err=True)
        return ExitCode.USAGE
    except Exception as exc:  # a bug of ours: one line, no traceback unless asked
        if os.environ.get("MUSTAPLE_DEBUG"):
            raise
        click.echo(
            f"mustaple: internal error: {type(exc).__name__}: {exc} "
            "(please report it; MUSTAPLE_DEBUG=1 shows the traceback)",
            err=True,
        )
        return ExitCode.INTERNAL
    return int(result) if isinstance(result, int) else ExitCode.GOOD


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
