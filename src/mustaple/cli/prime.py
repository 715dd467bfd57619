"""`mustaple prime CERT...`: the deploy-hook gate: fetch, store and deliver staples now."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mustaple.cli.options import config_option, proxy_option, proxy_setting, setup_logging
from mustaple.core.clock import utc_now
from mustaple.core.report import ExitCode

if TYPE_CHECKING:
    from mustaple.adapters.config import Config
    from mustaple.keeper.keeper import Interrupt, Primed, Unusable

__all__ = ["prime"]


@click.command("prime")
@click.argument("certs", nargs=-1)
@click.option(
    "--all", "every", is_flag=True, help="Prime every certificate file the configuration covers."
)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per certificate.")
@click.option(
    "--skip-uncovered",
    is_flag=True,
    help="A file no [[certificates]] entry covers is skipped (said), not an error: for a "
    "deploy hook that runs for every certificate.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every step to stderr.")
@proxy_option
def prime(
    *,
    certs: tuple[str, ...],
    every: bool,
    config_path: str,
    as_json: bool,
    skip_uncovered: bool,
    verbose: bool,
    proxy: str | None,
) -> int:
    """Fetch, validate, store and deliver the staples of CERTS (or, with --all, of every
    configured certificate file) now: the deploy-hook gate.

    Exit 0 only if every must-staple certificate has a valid good staple delivered, so
    `mustaple prime "$RENEWED_LINEAGE/fullchain.pem" && systemctl reload nginx` never puts a
    must-staple certificate live without its staple. Same exit codes as fetch.
    """
    from mustaple.front.status import (
        interrupted_line,
        prime_exit_code,
        prime_json,
        prime_line,
        unusable_json,
        unusable_line,
    )
    from mustaple.keeper.daemon import check_config as check_config_file

    if every and certs:
        raise click.UsageError("give the certificate files to prime, or --all, not both")
    if not every and not certs:
        raise click.UsageError("give the certificate files to prime, or --all for every one")
    setup_logging(verbose)
    config = check_config_file(Path(config_path))
    if proxy is not None:
        config = _overriding_proxy(config, proxy_setting(proxy))
    paths = _every_file(config) if every else [Path(c) for c in certs]
    if skip_uncovered:
        paths = _covered_only(config, paths, as_json=as_json)
        if not paths:
            return 0
    stop = _Stop()
    results, unusable = asyncio.run(_prime(config, paths, every=every, stop=stop))
    now = utc_now()
    for primed in results:
        if stop.signals and not primed.done:  # interrupted before its end: counted below
            continue
        if as_json:
            click.echo(json.dumps(prime_json(primed, now)))
        else:
            click.echo(prime_line(primed, now))
    for left in unusable:
        click.echo(json.dumps(unusable_json(left)) if as_json else unusable_line(left))
    if not stop.signals:
        return prime_exit_code(results, unusable)
    click.echo(interrupted_line(results, unusable, len(paths), stop.signals), err=True)
    return ExitCode.INTERRUPTED if stop.signals[0] == signal.SIGINT else ExitCode.TERMINATED


class _Stop:
    """The signals received (SIGINT, SIGTERM), each telling the keeper's prime to stop: the
    first ends the fetching, the second the delivery (`Interrupt`)."""

    def __init__(self) -> None:
        from mustaple.keeper.keeper import Interrupt

        self.signals: list[int] = []
        self.interrupt: Interrupt = Interrupt()

    def received(self, signum: int) -> None:
        self.signals.append(signum)
        self.interrupt.ask()


def _every_file(config: Config) -> list[Path]:
    """Every configured certificate file that exists now; InputError when there is none."""
    from mustaple.adapters.coverage import configured_files
    from mustaple.core.errors import InputError

    files = list(configured_files(config))
    if not files:
        raise InputError(
            f"{config.path}: no file matches the `paths` of any [[certificates]] entry: "
            "nothing to prime"
        )
    return files


def _covered_only(config: Config, paths: list[Path], *, as_json: bool) -> list[Path]:
    """The paths an entry covers; each other one is said (SKIPPED) and left out: its
    certificate is no concern of this configuration, so it gates nothing."""
    from mustaple.adapters.coverage import Coverage
    from mustaple.core.errors import InputError
    from mustaple.core.render import one_line, shown
    from mustaple.front.status import skipped_json

    coverage, covered = Coverage(config), []
    for path in paths:
        try:
            coverage.find(path)
        except InputError:
            said = shown(f"no [[certificates]] entry of {config.path} covers it: not gated")
            line = one_line(f"SKIPPED {shown(path)}: {said}")
            click.echo(json.dumps(skipped_json(path, said)) if as_json else line)
            continue
        covered.append(path)
    return covered


def _overriding_proxy(config: Config, proxy: str | None) -> Config:
    """The configuration with --proxy in place of every `proxy` key."""
    fetch_policy = dataclasses.replace(config.policy.fetch, proxy=proxy)
    entries = tuple(dataclasses.replace(e, proxy=None) for e in config.certificates)
    policy = dataclasses.replace(config.policy, fetch=fetch_policy)
    return dataclasses.replace(config, policy=policy, certificates=entries)


async def _prime(
    config: Config, paths: list[Path], *, every: bool, stop: _Stop
) -> tuple[list[Primed], list[Unusable]]:
    """`Keeper.prime` of the given paths; with --all, `prime_usable` (an unusable file is
    left out and said, the others primed). SIGINT and SIGTERM go to `stop` from here on,
    until the loop is closed: after the threads that write staple files have ended."""
    from mustaple.front.progress import FetchProgress, PrimeProgress
    from mustaple.keeper.daemon import open_fleet, open_keeper

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.received, signum)
    progress = PrimeProgress(len(paths))  # on stderr: how many are done, which came last
    waits = FetchProgress("prime", progress.display)  # and each request while it waits
    interrupt = stop.interrupt
    async with (
        open_keeper(config, watchers=[waits], read_when_full=True) as keeper,
        progress.running(),
    ):
        keeper.observers.append(progress.refreshed)
        async with open_fleet(config, keeper, for_prime=True):
            if every:
                return await keeper.prime_usable(paths, interrupt=interrupt)
            return await keeper.prime(paths, interrupt=interrupt), []
