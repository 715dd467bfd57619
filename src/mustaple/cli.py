"""The command line: fetch, inspect, prime, run, status, check and demo.

`main(argv=None) -> int` runs in-process (tests call it directly) and never lets a traceback
reach the user: bad input is one line on stderr and exit code 2; an outcome is one line (or a
JSON object) on stdout and the exit code of `report.ExitCode`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from mustaple import __version__
from mustaple.check import check_command
from mustaple.config import Config
from mustaple.daemon import check_config as check_config_file
from mustaple.daemon import open_keeper, serve
from mustaple.demo import run_demo
from mustaple.errors import InputError
from mustaple.fetch import FetchPolicy, FetchResult, fetch_staple, utc_now
from mustaple.files import NotRegularFileError, read_input, write_atomic
from mustaple.fleet import Fleet
from mustaple.init import init_command
from mustaple.keeper import Managed
from mustaple.loader import load_target
from mustaple.preflight import preflight
from mustaple.progress import FetchProgress, PrimeProgress
from mustaple.proxy import ProxyError, check_proxy_url
from mustaple.report import ExitCode, exit_code, explain, fetch_json, fetch_line, outcome_json
from mustaple.request import HASHES
from mustaple.status import (
    fleet_view,
    prime_exit_code,
    prime_json,
    prime_line,
    print_fleet_tables,
    print_status_table,
    status_rows,
)
from mustaple.urls import url_problem
from mustaple.verify import Policy, verify

__all__ = ["main"]


MAX_TIMEOUT = 600.0  # seconds: the longest --timeout


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """Refuse nan, which passes every range check."""
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


def _emit_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, indent=2))


def _check_urls(urls: Sequence[str]) -> None:
    for url in urls:
        problem = url_problem(url)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="--url")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mustaple")
def cli() -> None:
    """Keep OCSP staples (and must-staple certificates) safe on real TLS servers."""


proxy_option = click.option(
    "--proxy",
    help='HTTP proxy for OCSP and AIA requests, http://HOST:PORT ("" for none; default: '
    "HTTP_PROXY/HTTPS_PROXY/NO_PROXY as curl reads them).",
)


def _proxy_setting(proxy: str | None) -> str | None:
    """A --proxy value checked: one line saying what is wrong, exit 2."""
    if proxy:
        try:
            check_proxy_url(proxy, "--proxy")
        except ProxyError as exc:
            raise click.BadParameter(str(exc), param_hint="--proxy") from None
    return proxy


lenient_option = click.option(
    "--allow-missing-next-update",
    is_flag=True,
    help="Accept a response without nextUpdate (treated as valid for one day).",
)


@cli.command()
@click.argument("cert")
@click.option("--issuer", help="Issuer certificate file (default: the bundle, then AIA).")
@click.option("--url", "urls", multiple=True, help="Responder URL tried before the certificate's.")
@click.option("--out", help="Write the DER staple here (atomically) when it is good.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--hash",
    "hash_name",
    type=click.Choice(sorted(HASHES)),
    default="sha1",
    show_default=True,
    help="CertID hash algorithm (only sha1 gives a staple curl and OpenSSL accept).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=MAX_TIMEOUT),
    callback=_finite,
    default=10.0,
    show_default=True,
    help="Seconds allowed for each HTTP exchange.",
)
@click.option(
    "--attempts",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Rounds of tries per responder URL.",
)
@proxy_option
@lenient_option
def fetch(
    *,
    cert: str,
    issuer: str | None,
    urls: tuple[str, ...],
    out: str | None,
    as_json: bool,
    hash_name: str,
    timeout: float,
    attempts: int,
    proxy: str | None,
    allow_missing_next_update: bool,
) -> int:
    """Fetch and validate the OCSP staple for CERT (a PEM bundle such as fullchain.pem, or DER).

    Exit codes: 0 a valid good staple; 1 no valid staple; 2 usage error or unreadable input;
    3 the certificate is revoked.
    """
    _check_urls(urls)
    policy = FetchPolicy(
        total_timeout=timeout,
        connect_timeout=min(timeout, 5.0),
        attempts_per_url=attempts,
        proxy=_proxy_setting(proxy),
    )
    verify_policy = Policy(allow_missing_next_update=allow_missing_next_update)
    target, result = asyncio.run(
        _fetch(
            cert, issuer, urls=urls, hash_name=hash_name, policy=policy, verify_policy=verify_policy
        )
    )
    now = utc_now()
    staple = result.staple
    saved = None
    if out and staple is not None and staple.good:
        _write_out(out, staple.der)
        saved = out
    if as_json:
        _emit_json(fetch_json(target, result, now, saved))
    else:
        click.echo(fetch_line(target, result, now, saved))
    return exit_code(staple or result.rejection)


def _write_out(path: str, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except NotRegularFileError as exc:
        raise InputError(f"{path}: {exc.strerror}; --out writes only regular files") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot write the staple ({exc.strerror})") from None


async def _fetch(
    cert: str,
    issuer: str | None,
    *,
    urls: Sequence[str],
    hash_name: str,
    policy: FetchPolicy,
    verify_policy: Policy,
) -> tuple[Any, FetchResult]:
    progress = FetchProgress(cert)  # on stderr: which URL it waits on, for how long
    async with progress.session(policy) as http:
        target = await load_target(cert, issuer, policy=policy, session=http)
        progress.name = target.name
        result = await fetch_staple(
            target, urls=urls, hash_name=hash_name, policy=policy, verify_policy=verify_policy,
            session=http, sleep=progress.sleep,
        )  # fmt: skip
    return target, result


@cli.command()
@click.argument("response")
@click.option("--cert", required=True, help="The certificate the response should be about.")
@click.option("--issuer", help="Issuer certificate file (default: the bundle, then AIA).")
@click.option("--at", "at", help="Judge as at this time (ISO 8601, UTC), not now.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@lenient_option
def inspect(
    *,
    response: str,
    cert: str,
    issuer: str | None,
    at: str | None,
    as_json: bool,
    allow_missing_next_update: bool,
) -> int:
    """Explain a DER OCSP response file (RESPONSE) for the certificate CERT.

    Same exit codes as fetch.
    """
    now = _parse_time(at) if at else utc_now()
    data = _response_bytes(read_input(response, "OCSP response"), response)
    target = asyncio.run(load_target(cert, issuer))
    outcome = verify(data, target, now, Policy(allow_missing_next_update=allow_missing_next_update))
    if as_json:
        _emit_json(outcome_json(target, outcome, now, from_file=True))
    else:
        click.echo("\n".join(explain(target, outcome, now)))
    return exit_code(outcome)


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time", param_hint="--at") from None
    if value.tzinfo is None:
        raise click.BadParameter("give a time zone, e.g. 2026-01-31T12:00:00Z", param_hint="--at")
    return value


def _response_bytes(data: bytes, source: str) -> bytes:
    """DER as is; base64 text (as some tools store responses) decoded."""
    if data[:1] == b"\x30" or not data.strip():
        return data
    try:
        decoded = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return data
    if decoded[:1] != b"\x30":
        raise InputError(f"{source}: neither DER nor base64 DER")
    return decoded


config_option = click.option(
    "--config",
    "config_path",
    default="/etc/mustaple/mustaple.toml",
    show_default=True,
    help="The keeper's configuration file.",
)


def _setup_logging(verbose: bool, level: int = logging.WARNING) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else level,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )


@cli.command()
@click.argument("certs", nargs=-1, required=True)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per certificate.")
@click.option("-v", "--verbose", is_flag=True, help="Log every step to stderr.")
@proxy_option
def prime(
    *, certs: tuple[str, ...], config_path: str, as_json: bool, verbose: bool, proxy: str | None
) -> int:
    """Fetch, validate, store and deliver the staples of CERTS now: the deploy-hook gate.

    Exit 0 only if every must-staple certificate has a valid good staple delivered, so
    `mustaple prime "$RENEWED_LINEAGE/fullchain.pem" && systemctl reload nginx` never puts a
    must-staple certificate live without its staple. Same exit codes as fetch.
    """
    _setup_logging(verbose)
    config = check_config_file(Path(config_path))
    if proxy is not None:
        config = _overriding_proxy(config, _proxy_setting(proxy))
    results = asyncio.run(_prime(config, [Path(c) for c in certs]))
    now = utc_now()
    for managed in results:
        if as_json:
            click.echo(json.dumps(prime_json(managed, now)))
        else:
            click.echo(prime_line(managed, now))
    return prime_exit_code(results)


def _overriding_proxy(config: Config, proxy: str | None) -> Config:
    """The configuration with --proxy in place of every `proxy` key."""
    fetch_policy = dataclasses.replace(config.policy.fetch, proxy=proxy)
    entries = tuple(dataclasses.replace(e, proxy=None) for e in config.certificates)
    policy = dataclasses.replace(config.policy, fetch=fetch_policy)
    return dataclasses.replace(config, policy=policy, certificates=entries)


async def _prime(config: Config, paths: list[Path]) -> list[Managed]:
    progress = PrimeProgress(len(paths))  # on stderr: how many are done, which came last
    waits = FetchProgress("prime", progress.display)  # and each request while it waits
    async with open_keeper(config, trace_configs=[waits.trace()]) as keeper, progress.running():
        keeper.observers.append(progress.refreshed)
        if config.fleet is None:
            return await keeper.prime(paths)
        fleet = Fleet(config.fleet, eager=True)  # use or share the fleet's staples, never wait
        await fleet.start(keeper, background=False)
        try:
            return await keeper.prime(paths)
        finally:
            await fleet.close()


@cli.command("run")
@config_option
@click.option("--check-config", is_flag=True, help="Only check the configuration, then exit.")
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail too.")
@click.option("-q", "--quiet", is_flag=True, help="Log only problems (warnings and errors).")
def run_keeper(*, config_path: str, check_config: bool, verbose: bool, quiet: bool) -> int:
    """Run the keeper in the foreground (SIGTERM stops, SIGHUP reloads the configuration).

    Logs one line per event to stderr (refreshes, deliveries, problems), as a service should.
    """
    path = Path(config_path)
    if check_config:
        checked = check_config_file(path)
        found = preflight(checked)
        for line in found.errors + [f"warning: {w}" for w in found.warnings]:
            click.echo(f"mustaple: {line}", err=True)
        if found.errors:
            return ExitCode.USAGE
        click.echo(
            f"{path}: OK ({len(checked.certificates)} certificate entries, "
            f"{len(checked.sinks)} sinks)"
        )
        return ExitCode.GOOD
    _setup_logging(verbose, logging.WARNING if quiet else logging.INFO)
    asyncio.run(_run(path))
    return ExitCode.GOOD


async def _run(path: Path) -> None:
    stop, reload = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    await serve(path, stop=stop, reload=reload)


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--fleet", "fleet", is_flag=True, help="Show the fleet's view, from Redis.")
def status(*, config_path: str, as_json: bool, fleet: bool) -> int:
    """Show every certificate's staple: status, times, next refresh, last error. With
    --fleet: every member, and who fetched each certificate's staple, when."""
    config = check_config_file(Path(config_path))  # the sinks too: the same checks as run
    if fleet:
        view: Any = fleet_view(config, utc_now())
        show: Callable[[Any], None] = print_fleet_tables
    else:
        view, show = status_rows(config, utc_now()), print_status_table
    if as_json:
        click.echo(json.dumps(view, indent=2))
    else:
        show(view)
    return ExitCode.GOOD


@cli.command()
def demo() -> int:
    """Show mustaple end to end on loopback: no internet, no setup, under a minute."""
    return asyncio.run(run_demo(click.echo))


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
