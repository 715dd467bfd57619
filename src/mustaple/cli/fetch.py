"""`mustaple fetch CERT`: fetch and validate one certificate's staple now; print the verdict."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from mustaple.cli.options import (
    check_urls,
    emit_json,
    json_errors,
    lenient_option,
    proxy_option,
    proxy_setting,
    timeout_option,
)
from mustaple.core.clock import utc_now
from mustaple.core.errors import InputError
from mustaple.core.render import human_time
from mustaple.core.request import HASHES
from mustaple.core.verify import Policy, Staple, may_replace, verify

if TYPE_CHECKING:
    from datetime import datetime

    from mustaple.adapters.fetch import FetchPolicy, FetchResult
    from mustaple.core.certs import Target

__all__ = ["fetch"]


@click.command("fetch")
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
@timeout_option("each HTTP exchange, and for reading each file")
@click.option(
    "--attempts",
    type=click.IntRange(min=1, max=10),
    default=3,
    show_default=True,
    help="Rounds of tries per responder URL (1 to 10, as `attempts` in the configuration).",
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
    from mustaple.adapters.fetch import FetchPolicy
    from mustaple.adapters.loader import patiently
    from mustaple.core.report import FETCH_KEYS, exit_code, fetch_json, fetch_line

    verify_policy = Policy(allow_missing_next_update=allow_missing_next_update)
    with json_errors(as_json, FETCH_KEYS):
        check_urls(urls)
        policy = FetchPolicy.within(timeout, attempts_per_url=attempts, proxy=proxy_setting(proxy))
        asked = _fetch(cert, issuer, urls=urls, hash_name=hash_name, policy=policy,
                       verify_policy=verify_policy, out=out)  # fmt: skip
        target, result = asyncio.run(asked)
        now = utc_now()
        staple = result.staple
        saved = None
        if out and staple is not None and staple.good:
            save = functools.partial(_save_out, out, staple, target, now, verify_policy)
            asyncio.run(patiently(save, out, timedelta(seconds=timeout)))
            saved = out
    if as_json:
        emit_json(fetch_json(target, result, now, saved))
    else:
        click.echo(fetch_line(target, result, now, saved))
    return exit_code(staple or result.rejection)


def _check_out(out: str, *inputs: str | None) -> None:
    """InputError, before anything is fetched (its inputs read), when --out would destroy
    what is not a staple:
    the certificate or issuer file given, or a file that holds something other than an OCSP
    response (a certificate or key, PEM or DER)."""
    from mustaple.adapters.files import NotRegularFileError, read_prefix
    from mustaple.core.der import RESPONSE_HEAD, looks_like_ocsp_response

    for given in inputs:
        exist = given is not None and os.path.exists(out) and os.path.exists(given)
        if exist and os.path.samefile(out, str(given)):
            raise InputError(f"{out}: --out is the input file {given}; give another path")
    try:
        head = read_prefix(out, RESPONSE_HEAD)
    except NotRegularFileError as exc:
        raise InputError(f"{out}: {exc.strerror}; --out writes only regular files") from None
    except OSError:
        return  # unreadable: said when it is written
    if head and not looks_like_ocsp_response(head):
        raise InputError(
            f"{out}: holds something else than an OCSP response; --out replaces only a staple "
            "file: remove it or give another path"
        )


def _save_out(path: str, staple: Staple, target: Target, now: datetime, policy: Policy) -> None:
    """--out: `staple` written to `path`, unless `path` holds a newer answer (`_keep_newer`)."""
    _keep_newer(path, staple, target, now, policy)
    _write_out(path, staple.der)


def _keep_newer(path: str, staple: Staple, target: Target, now: datetime, policy: Policy) -> None:
    """InputError when `path` holds a valid answer for the same certificate that `staple`
    may not replace (`verify.may_replace`: a newer one, or a revocation of the same age): a
    staple file a keeper maintains is never set back (a revocation undone)."""
    from mustaple.adapters.files import MAX_INPUT, read_prefix

    try:
        held = read_prefix(path, MAX_INPUT)
    except OSError:
        return  # unreadable: said when it is written
    found = verify(held, target, now, policy) if held else None
    if isinstance(found, Staple) and (older := may_replace(staple, found)) is not None:
        said = "revoked" if not found.good else "good"
        raise InputError(
            f"{path}: holds a newer answer for this certificate ({said}, thisUpdate "
            f"{human_time(found.this_update)}); not replaced: {older.message}"
        )


def _write_out(path: str, data: bytes) -> None:
    from mustaple.adapters.files import NotRegularFileError, write_atomic

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
    out: str | None,
) -> tuple[Any, FetchResult]:
    from mustaple.adapters.fetch import fetch_staple
    from mustaple.adapters.loader import load_target, patiently
    from mustaple.front.progress import FetchProgress

    progress = FetchProgress(cert)  # on stderr: which URL it waits on, for how long
    async with progress.fetcher() as http:
        patience = timedelta(seconds=policy.total_timeout)
        target = await load_target(cert, issuer, patience=patience, policy=policy, fetcher=http)
        if out:
            await patiently(functools.partial(_check_out, out, cert, issuer), out, patience)
        progress.name = target.name
        result = await fetch_staple(
            target, urls=urls, hash_name=hash_name, policy=policy, verify_policy=verify_policy,
            clients=http.clients, sleep=progress.sleep,
        )  # fmt: skip
    return target, result
