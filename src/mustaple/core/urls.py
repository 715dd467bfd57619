"""Whether a responder URL can be used at all, before anything is sent. Pure.

A malformed URL (`http://[::1/`, a port of 99999, spaces, a scheme other than http or https)
comes from a person (`urls` in the configuration, `--url`) or from a certificate's AIA
extension. Either way it is one line saying what is wrong, never an exception: `fetch` turns
it into a `bad-url` rejection for that certificate, the configuration into a `ConfigError`.

A URL passes here exactly when it passes both the standard library's `urlsplit` and yarl's
parser (which aiohttp uses for https://): yarl also refuses a backslash in the authority and a
host with brackets anywhere but around a whole IP literal. Those rules are written out here so
that checking a URL does not load yarl (tests/test_url_rules.py holds them against yarl).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

__all__ = ["url_host", "url_problem"]

MAX_URL_LENGTH = 2048  # characters: longer ones are not responder addresses
_IP_FUTURE = re.compile(r"v[a-fA-F0-9]+\..+")  # RFC 3986 3.2.2 IPvFuture


@functools.lru_cache(maxsize=1024)  # every fetch asks it of the same few URLs
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
        _check_authority(parts.netloc)
    except ValueError as exc:
        return f"{shown} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"{shown} is not an http:// or https:// URL"
    if not parts.hostname:
        return f"{shown} names no host"
    if not _dns_name(parts.hostname):
        return (
            f"{shown} names a host with an empty label or one over 63 characters, which no "
            "client can look up"
        )
    if port == 0:
        return f"{shown} has port 0; give a port from 1 to 65535"
    return None


def _dns_name(host: str) -> bool:
    """Whether `host` can be looked up: an IP address, or labels of 1 to 63 characters (a
    final dot allowed), as the resolver's IDNA encoding requires."""
    if ":" in host:  # an IPv6 address (or IPvFuture), not a name
        return True
    labels = host.removesuffix(".").split(".")
    return all(0 < len(label) <= 63 for label in labels)


def _check_authority(netloc: str) -> None:
    """Raise ValueError for what yarl refuses in an authority that `urlsplit` takes: a
    backslash, and brackets other than one pair around the whole host, which holds an IPv6
    address (a colon) or an IPvFuture, followed by nothing or a port."""
    if "\\" in netloc:
        raise ValueError("a backslash is not allowed in the host part")
    if "[" not in netloc and "]" not in netloc:
        return
    host = netloc.rpartition("@")[2]
    literal, _, after = host[1:].partition("]")
    if host[:1] != "[" or host.count("[") > 1 or host.count("]") > 1 or after[:1] not in ("", ":"):
        raise ValueError("brackets only go around an IP address, before any port")
    if literal.startswith("v") and not _IP_FUTURE.fullmatch(literal):
        raise ValueError("the IPvFuture address between brackets is not valid")
    if not literal.startswith("v") and ":" not in literal:
        raise ValueError("the IPv6 address between brackets is not valid")


def first_host(overrides: Sequence[str], own: Sequence[str]) -> str:
    """The host of the first responder URL a fetch tries (`overrides`, then the certificate's
    `own` URLs): what `per_host` limits; "" when there is none or it is malformed (the fetch
    says so, for that certificate only)."""
    first = overrides[0] if overrides else own[0] if own else ""
    return url_host(first) if first else ""


@functools.lru_cache(maxsize=1024)
def url_host(url: str) -> str:
    """The host of `url` (lower case), or "" when it has none or is malformed; never raises.
    (Cached: a keeper asks it for every certificate, and their URLs are few.)"""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""
