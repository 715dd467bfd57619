"""The command line, one module per command: fetch, inspect, prime, run, status, check, init, demo.

`main(argv=None) -> int` runs in-process (tests call it directly) and never lets a traceback
reach the user: bad input is one line on stderr and exit code 2; an outcome is one line (or a
JSON object) on stdout and the exit code of `report.ExitCode`. `run` is the console script.

Start-up is part of every command's cost (a deploy hook runs `prime` once per renewal): the
group imports a command's module only when that command is asked for (`COMMANDS`), and a
command imports what only its run needs inside its function, so its --help and its usage
errors stay quick.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
from collections.abc import Sequence

import click

from mustaple import __version__
from mustaple.core.errors import InputError
from mustaple.core.render import one_line, shown
from mustaple.core.report import ExitCode

__all__ = ["COMMANDS", "cli", "main", "run"]

# Each command's name -> (its module, the click command's name there). A command's module,
# and what it imports, loads only when that command runs or the group's help lists it, so
# `mustaple prime` does not pay for importing `check`, `init` or `demo` (docs/performance.md).
COMMANDS = {
    "check": ("mustaple.cli.check", "check_command"),
    "demo": ("mustaple.cli.demo", "demo"),
    "fetch": ("mustaple.cli.fetch", "fetch"),
    "init": ("mustaple.cli.init", "init_command"),
    "inspect": ("mustaple.cli.inspect", "inspect"),
    "prime": ("mustaple.cli.prime", "prime"),
    "run": ("mustaple.cli.run_keeper", "run_keeper"),
    "status": ("mustaple.cli.status", "status"),
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when the command is wanted."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, name = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mustaple")
def cli() -> None:
    """Keep OCSP staples (and must-staple certificates) safe on real TLS servers."""


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
        if isinstance(exc, _NO_COMMAND):  # no command at all: the help is the message
            exc.show()
            return ExitCode.USAGE
        command = exc.ctx.command_path if exc.ctx is not None else "mustaple"
        click.echo(f"mustaple: {said(exc.format_message())} (see {command} --help)", err=True)
        return ExitCode.USAGE
    except click.ClickException as exc:
        click.echo(f"mustaple: {said(exc.format_message())}", err=True)
        return ExitCode.USAGE
    except click.Abort:
        click.echo("mustaple: interrupted", err=True)
        return ExitCode.INTERRUPTED
    except InputError as exc:
        click.echo(f"mustaple: {said(exc)}", err=True)
        return ExitCode.USAGE
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRORS:
            return _internal(exc)
        with contextlib.suppress(OSError):  # standard error may be gone too
            click.echo(f"mustaple: cannot write the output ({exc.strerror})", err=True)
        return ExitCode.USAGE
    except Exception as exc:  # a bug of ours: one line, no traceback unless asked
        return _internal(exc)
    return int(result) if isinstance(result, int) else ExitCode.GOOD


# `mustaple` alone: click (from 8.2) raises the help as a usage error
_HELP = getattr(click.exceptions, "NoArgsIsHelpError", None)
_NO_COMMAND: tuple[type[Exception], ...] = (_HELP,) if _HELP is not None else ()


def said(text: object) -> str:
    """A message as one line of valid Unicode: a file name with a newline in it cannot
    forge another line, nor one that is not UTF-8 write raw bytes (`\\n`, `\\xff`)."""
    return one_line(shown(text))


# Writing standard output fails: a pipe closed early, a full disk, a device error.
_OUTPUT_ERRORS = (errno.EPIPE, errno.ENOSPC, errno.EIO)


def _internal(exc: Exception) -> int:
    """A bug of ours: one line, no traceback unless asked; or a thread that could not be
    started (a limit of tasks reached), said as such."""
    from mustaple.adapters.patience import thread_problem

    problem = thread_problem(exc)
    if problem is not None:
        click.echo(f"mustaple: {said(problem)}", err=True)
        return ExitCode.USAGE
    if os.environ.get("MUSTAPLE_DEBUG"):
        raise exc
    click.echo(
        f"mustaple: internal error: {type(exc).__name__}: {said(exc)} "
        "(please report it; MUSTAPLE_DEBUG=1 shows the traceback)",
        err=True,
    )
    return ExitCode.INTERNAL


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
