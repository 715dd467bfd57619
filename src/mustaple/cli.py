"""The command line: fetch, inspect, prime, run, status, check and demo.

`main(argv=None) -> int` runs in-process (tests call it directly) and never lets a traceback
reach the user: bad input is one line on stderr and exit code 2; an outcome is one line (or a
JSON object) on stdout and the exit code of `report.ExitCode`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from mustaple import __version__
from mustaple.check import check_command
from mustaple.config import Config, load_config
from mustaple.daemon import check_config as check_config_file
from mustaple.daemon import open_keeper, serve
from mustaple.demo import run_demo
from mustaple.errors import InputError
from mustaple.fetch import FetchPolicy, FetchResult, fetch_staple, utc_now
from mustaple.files import read_input, write_atomic
from mustaple.fleet import Fleet
from mustaple.keeper import Managed
from mustaple.loader import load_target
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
from mustaple.verify import Policy, verify

__all__ = ["main"]


def _emit_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, indent=2))


def _check_urls(urls: Sequence[str]) -> None:
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise click.BadParameter(
                f"{url!r} is not an http:// or https:// URL", param_hint="--url"
            )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mustaple")
def cli() -> None:
    """Keep OCSP staples (and must-staple certificates) safe on real TLS servers."""


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
    type=click.FloatRange(min=0.1),
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
    allow_missing_next_update: bool,
) -> int:
    """Fetch and validate the OCSP staple for CERT (a PEM bundle such as fullchain.pem, or DER).

    Exit codes: 0 a valid good staple; 1 no valid staple; 2 usage error or unreadable input;
    3 the certificate is revoked.
    """
    _check_urls(urls)
    policy = FetchPolicy(
        total_timeout=timeout, connect_timeout=min(timeout, 5.0), attempts_per_url=attempts
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
    target = await load_target(cert, issuer, policy=policy)
    result = await fetch_staple(
        target, urls=urls, hash_name=hash_name, policy=policy, verify_policy=verify_policy
    )
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
        _emit_json(outcome_json(target, outcome, now))
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


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )


@cli.command()
@click.argument("certs", nargs=-1, required=True)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per certificate.")
@click.option("-v", "--verbose", is_flag=True, help="Log every step to stderr.")
def prime(*, certs: tuple[str, ...], config_path: str, as_json: bool, verbose: bool) -> int:
    """Fetch, validate, store and deliver the staples of CERTS now: the deploy-hook gate.

    Exit 0 only if every must-staple certificate has a valid good staple delivered, so
    `mustaple prime "$RENEWED_LINEAGE/fullchain.pem" && systemctl reload nginx` never puts a
    must-staple certificate live without its staple. Same exit codes as fetch.
    """
    _setup_logging(verbose)
    config = check_config_file(Path(config_path))
    results = asyncio.run(_prime(config, [Path(c) for c in certs]))
    now = utc_now()
    for managed in results:
        if as_json:
            click.echo(json.dumps(prime_json(managed, now)))
        else:
            click.echo(prime_line(managed, now))
    return prime_exit_code(results)


async def _prime(config: Config, paths: list[Path]) -> list[Managed]:
    async with open_keeper(config) as keeper:
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
@click.option("-v", "--verbose", is_flag=True, help="Log every refresh, not only problems.")
def run_keeper(*, config_path: str, check_config: bool, verbose: bool) -> int:
    """Run the keeper in the foreground (SIGTERM stops, SIGHUP reloads the configuration)."""
    path = Path(config_path)
    if check_config:
        checked = check_config_file(path)
        click.echo(
            f"{path}: OK ({len(checked.certificates)} certificate entries, "
            f"{len(checked.sinks)} sinks)"
        )
        return ExitCode.GOOD
    _setup_logging(verbose)
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
    config = load_config(Path(config_path))
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
