"""What several commands share: their common options, checked values, JSON and logging."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import click

from mustaple.core.errors import InputError
from mustaple.core.proxy import ProxyError, check_proxy_url
from mustaple.core.render import one_line, shown
from mustaple.core.urls import url_problem

__all__ = [
    "MAX_TIMEOUT",
    "OneLine",
    "check_urls",
    "config_option",
    "emit_json",
    "json_errors",
    "lenient_option",
    "proxy_option",
    "proxy_setting",
    "setup_logging",
    "timeout_option",
]

F = TypeVar("F", bound=Callable[..., Any])  # a command, as click decorates it
MAX_TIMEOUT = 600.0  # seconds: the longest --timeout


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """Refuse nan, which passes every range check."""
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


def emit_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, indent=2))


@contextlib.contextmanager
def json_errors(as_json: bool, keys: Sequence[str]) -> Iterator[None]:
    """With --json, bad input the command finds (an InputError, a bad option value) is one
    JSON object on standard output too (`report.error_json` of `keys`), so a script always
    gets its object; the error then goes on to `main`: one line on stderr, exit 2."""
    from mustaple.core.report import error_json

    try:
        yield
    except (InputError, click.BadParameter) as exc:
        if as_json:
            said = exc.format_message() if isinstance(exc, click.BadParameter) else str(exc)
            emit_json(error_json(one_line(shown(said)), keys))
        raise


def check_urls(urls: Sequence[str]) -> None:
    for url in urls:
        problem = url_problem(url)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="--url")


proxy_option = click.option(
    "--proxy",
    help='HTTP proxy for OCSP and AIA requests, http://HOST:PORT ("" for none; default: '
    "HTTP_PROXY/HTTPS_PROXY/NO_PROXY as curl reads them).",
)


def proxy_setting(proxy: str | None) -> str | None:
    """A --proxy value checked: one line saying what is wrong, exit 2."""
    if proxy:
        try:
            check_proxy_url(proxy, "--proxy")
        except ProxyError as exc:
            raise click.BadParameter(str(exc), param_hint="--proxy") from None
    return proxy


def timeout_option(allowed: str) -> Callable[[F], F]:
    """`--timeout SECONDS` (default 10, 0.1 to MAX_TIMEOUT): `allowed` says for what."""
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0.1, max=MAX_TIMEOUT),
        callback=_finite,
        default=10.0,
        show_default=True,
        help=f"Seconds allowed for {allowed}.",
    )


lenient_option = click.option(
    "--allow-missing-next-update",
    is_flag=True,
    help="Accept a response without nextUpdate (treated as valid for one day).",
)

config_option = click.option(
    "--config",
    "config_path",
    default="/etc/mustaple/mustaple.toml",
    show_default=True,
    help="The keeper's configuration file.",
)


def setup_logging(verbose: bool, level: int = logging.WARNING) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(OneLine("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else level, handlers=[handler])


class OneLine(logging.Formatter):
    """One event, one line: a newline or a terminal escape in a certificate's name or a file's
    path (both can hold any character) is written escaped, so it cannot forge a log line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))
