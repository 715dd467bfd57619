"""`mustaple check HOST[:PORT]` (or `--cert CERT`): options in, a report out, and the exit code
of the monitoring-plugin convention (`Severity`): usage errors are UNKNOWN (3), not 2."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine, Iterator
from typing import Any

import click

from mustaple.adapters.starttls import DEFAULT_PORTS as STARTTLS_PORTS
from mustaple.adapters.starttls import PROTOCOLS as STARTTLS_PROTOCOLS
from mustaple.cli.options import timeout_option
from mustaple.core.checkjudge import CheckReport
from mustaple.core.errors import InputError
from mustaple.core.render import one_line, shown
from mustaple.core.severity import Severity

__all__ = ["check_command"]

MAX_CONNECTIONS = 100


@contextlib.contextmanager
def _usage_errors_are_unknown() -> Iterator[None]:
    """click exits 2 on a usage error, which a monitoring system reads as CRITICAL."""
    try:
        yield
    except click.UsageError as exc:
        message = one_line(shown(exc.format_message()))
        click.echo(f"UNKNOWN usage error: {message} (see mustaple check --help)")
        raise click.exceptions.Exit(int(Severity.UNKNOWN)) from exc


class _CheckCommand(click.Command):
    """A click command whose usage errors exit 3 (UNKNOWN) with one line on stdout."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with _usage_errors_are_unknown():
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        with _usage_errors_are_unknown():
            return super().invoke(ctx)


@click.command("check", cls=_CheckCommand)
@click.argument("address", metavar="HOST[:PORT]", required=False)
@click.option("--servername", help="SNI name to send (default: HOST unless it is an IP).")
@click.option("--tls", "tls_version", type=click.Choice(["1.2", "1.3"]), help="TLS version.")
@click.option("--cafile", help="PEM roots: also check that the served chain verifies.")
@click.option("--issuer", help="Issuer certificate file, if the server does not send it.")
@click.option(
    "--connections",
    type=click.IntRange(1, MAX_CONNECTIONS),
    default=1,
    show_default=True,
    help="Connect this many times, one after the other.",
)
@click.option(
    "--starttls",
    type=click.Choice(STARTTLS_PROTOCOLS),
    help="Speak this protocol's STARTTLS first (default port: 25 for smtp).",
)
@click.option("--cert", help="No server: ask this certificate's OCSP responder directly.")
@click.option("--url", "urls", multiple=True, help="With --cert: responder URL to try first.")
@timeout_option("each connection and handshake, HTTP exchange and file read")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def check_command(
    ctx: click.Context,
    *,
    address: str | None,
    servername: str | None,
    tls_version: str | None,
    cafile: str | None,
    issuer: str | None,
    connections: int,
    starttls: str | None,
    cert: str | None,
    urls: tuple[str, ...],
    timeout: float,
    as_json: bool,
) -> None:
    """Check that HOST[:PORT] (default port 443) staples safely for must-staple.

    Or, with --cert CERT and no HOST, check what the certificate's responder answers.
    Exit codes (monitoring-plugin convention): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    (including usage errors).
    """
    from mustaple.adapters.checkprobe import DEFAULT_PORT, check_responder, check_server

    if (address is None) == (cert is None):
        raise click.UsageError("give either HOST[:PORT] or --cert CERT")
    if cert is not None:
        server_only = {
            "--servername": servername is not None,
            "--tls": tls_version is not None,
            "--cafile": cafile is not None,
            "--connections": connections != 1,
            "--starttls": starttls is not None,
        }
        given = [name for name, used in server_only.items() if used]
        if given:
            raise click.UsageError(f"{', '.join(given)}: only for checking a server")
        work = check_responder(cert, issuer, urls, timeout)
    else:
        assert address is not None
        if urls:
            raise click.UsageError("--url: only with --cert")
        host, port = _address(address, STARTTLS_PORTS.get(starttls or "", DEFAULT_PORT))
        if servername is not None:
            _host_name(servername, "--servername")
        work = check_server(
            host,
            port,
            servername=servername,
            tls_version=tls_version,
            cafile=cafile,
            issuer_path=issuer,
            connections=connections,
            starttls=starttls,
            timeout=timeout,
        )
    ctx.exit(int(_run(work, as_json)))


def _address(text: str, default_port: int) -> tuple[str, int]:
    from mustaple.adapters.checkprobe import parse_address

    try:
        host, port = parse_address(text, default_port)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="HOST[:PORT]") from None
    return _host_name(host, "HOST[:PORT]"), port


def _host_name(name: str, hint: str) -> str:
    """`name`, if it can be sent and looked up: an IP address, or a name whose labels the
    resolver can encode (none empty, none over 63 characters)."""
    from mustaple.adapters.probe import server_name_problem

    problem = server_name_problem(name)
    if problem is not None:
        raise click.BadParameter(problem, param_hint=hint)
    return name


def _run(work: Coroutine[Any, Any, CheckReport], as_json: bool) -> Severity:
    """Run the check; print the report, or one UNKNOWN line when nothing could be checked."""
    from mustaple.adapters.patience import thread_problem
    from mustaple.adapters.probe import ProbeError
    from mustaple.core.checkrender import report_json, report_lines

    try:
        report = asyncio.run(work)
    except (ProbeError, InputError) as exc:
        return _unknown(str(exc), as_json)
    except RuntimeError as exc:  # no thread for the probe (a limit of tasks): not CRITICAL
        problem = thread_problem(exc)
        if problem is None:
            raise
        return _unknown(problem, as_json)
    if as_json:
        click.echo(json.dumps(report_json(report), indent=2))
    else:
        click.echo("\n".join(report_lines(report)))
    return report.level


def _unknown(message: str, as_json: bool) -> Severity:
    """Nothing could be checked: one UNKNOWN line (or JSON object) saying why."""
    from mustaple.core.checkrender import error_json

    if as_json:
        click.echo(json.dumps(error_json(shown(message)), indent=2))
    else:
        click.echo(f"UNKNOWN {one_line(shown(message))}")
    return Severity.UNKNOWN
