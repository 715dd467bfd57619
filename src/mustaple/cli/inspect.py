"""`mustaple inspect RESPONSE --cert CERT`: explain an OCSP response file, judged at a time."""

from __future__ import annotations

import asyncio
import base64
import binascii
from datetime import datetime, timedelta

import click

from mustaple.cli.options import emit_json, json_errors, lenient_option, timeout_option
from mustaple.core.clock import utc_now
from mustaple.core.errors import InputError
from mustaple.core.verify import Policy, verify

__all__ = ["inspect"]


@click.command("inspect")
@click.argument("response")
@click.option("--cert", required=True, help="The certificate the response should be about.")
@click.option("--issuer", help="Issuer certificate file (default: the bundle, then AIA).")
@click.option("--at", "at", help="Judge as at this time (ISO 8601, UTC), not now.")
@timeout_option("reading each file, and for an issuer's download over AIA")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@lenient_option
def inspect(
    *,
    response: str,
    cert: str,
    issuer: str | None,
    at: str | None,
    timeout: float,
    as_json: bool,
    allow_missing_next_update: bool,
) -> int:
    """Explain a DER OCSP response file (RESPONSE) for the certificate CERT.

    Same exit codes as fetch.
    """
    from mustaple.adapters.loader import load_target, read_patiently
    from mustaple.core.fetchtypes import FetchPolicy
    from mustaple.core.report import OUTCOME_KEYS, exit_code, explain, outcome_json

    patience = timedelta(seconds=timeout)
    with json_errors(as_json, OUTCOME_KEYS):
        now = _parse_time(at) if at else utc_now()
        read = read_patiently(response, "OCSP response", patience=patience)
        data = _response_bytes(asyncio.run(read), response)
        loading = load_target(cert, issuer, patience=patience, policy=FetchPolicy.within(timeout))
        target = asyncio.run(loading)
    policy = Policy(allow_missing_next_update=allow_missing_next_update)
    outcome = verify(data, target, now, policy)
    if as_json:
        emit_json(outcome_json(target, outcome, now, from_file=True))
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
    if not 1 < value.year < 9999:  # the checks add and take away days: room on both sides
        raise click.BadParameter("give a time from the year 2 to 9998", param_hint="--at")
    return value


_BOM = b"\xef\xbb\xbf"


def _response_bytes(data: bytes, source: str) -> bytes:
    """DER as is; base64 text (as some tools store responses) decoded, after a UTF-8 byte
    order mark if an editor wrote one."""
    if data[:1] == b"\x30" or not data.strip():
        return data
    try:
        decoded = base64.b64decode(b"".join(data.removeprefix(_BOM).split()), validate=True)
    except (binascii.Error, ValueError):
        return data
    if decoded[:1] != b"\x30":
        raise InputError(f"{source}: neither DER nor base64 DER")
    return decoded
