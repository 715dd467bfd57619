"""Whether a responder URL can be used at all, before anything is sent. Pure.

A malformed URL (`http://[::1/`, a port of 99999, spaces, a scheme other than http or https)
comes from a person (`urls` in the configuration, `--url`) or from a certificate's AIA
extension. Either way it is one line saying what is wrong, never an exception: `fetch` turns
it into a `bad-url` rejection for that certificate, the configuration into a `ConfigError`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from yarl import URL

__all__ = ["url_host", "url_problem"]

MAX_URL_LENGTH = 2048  # characters: longer ones are not responder addresses


def url_problem(url: str) -> str | None:
    """None when `url` is a usable http:// or https:// URL, else one line saying why not."""
    shown = repr(url[:120])
    if len(url) > MAX_URL_LENGTH:
        return f"{shown}... is longer than {MAX_URL_LENGTH} characters"
    if not url.isascii() or not url.isprintable() or " " in url:
        return f"{shown} holds spaces, control or non-ASCII characters"
    try:
        parts = urlsplit(url)
        port = parts.port
        URL(url, encoded=True)  # what the HTTP client will parse
    except ValueError as exc:
        return f"{shown} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"{shown} is not an http:// or https:// URL"
    if not parts.hostname:
        return f"{shown} names no host"
    if port == 0:
        return f"{shown} has port 0; give a port from 1 to 65535"
    return None


def url_host(url: str) -> str:
    """The host of `url` (lower case), or "" when it has none or is malformed; never raises."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""
