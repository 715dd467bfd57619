"""`mustaple run`: the keeper in the foreground, as a service runs it (or --check-config)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from mustaple.cli.options import config_option, setup_logging
from mustaple.core.render import counted
from mustaple.core.report import ExitCode

__all__ = ["run_keeper"]


@click.command("run")
@config_option
@click.option("--check-config", is_flag=True, help="Only check the configuration, then exit.")
@click.option(
    "--unit",
    "unit_file",
    metavar="FILE",
    help="With --check-config: the systemd unit file that runs mustaple, when it is not "
    "mustaple.service in systemd's directories.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail too.")
@click.option("-q", "--quiet", is_flag=True, help="Log only problems (warnings and errors).")
def run_keeper(
    *, config_path: str, check_config: bool, unit_file: str | None, verbose: bool, quiet: bool
) -> int:
    """Run the keeper in the foreground (SIGTERM stops, SIGHUP reloads the configuration).

    Logs one line per event to stderr (refreshes, deliveries, problems), as a service should.
    """
    from mustaple.adapters.preflight import preflight
    from mustaple.keeper.daemon import check_config as check_config_file

    path = Path(config_path)
    if unit_file is not None and not check_config:
        raise click.UsageError("--unit: only with --check-config")
    if check_config:
        checked = check_config_file(path)
        found = preflight(checked, Path(unit_file) if unit_file is not None else None)
        for line in found.errors + [f"warning: {w}" for w in found.warnings]:
            click.echo(f"mustaple: {line}", err=True)
        if found.errors:
            return ExitCode.USAGE
        entries = counted(len(checked.certificates), "certificate entry", "certificate entries")
        click.echo(f"{path}: OK ({entries}, {counted(len(checked.sinks), 'sink')})")
        return ExitCode.GOOD
    setup_logging(verbose, logging.WARNING if quiet else logging.INFO)
    asyncio.run(_run(path))
    return ExitCode.GOOD


async def _run(path: Path) -> None:
    from mustaple.keeper.daemon import serve

    stop, reload = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    await serve(path, stop=stop, reload=reload)
