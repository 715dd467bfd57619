"""Which outbound HTTP proxy a fetch goes through, decided as curl decides it (pure, no I/O).

The setting is `None` (take it from the environment), `""` (never use a proxy) or a proxy URL.
From the environment: `http_proxy` (or `HTTP_PROXY`) for http:// URLs, `https_proxy` (or
`HTTPS_PROXY`) for https:// URLs, `all_proxy` (or `ALL_PROXY`) for both, the lower-case name
winning. `no_proxy` / `NO_PROXY` lists hosts reached directly whichever way the proxy was set:
`*` for all, a domain (`example.com` or `.example.com`, covering its subdomains), an IP address
or a CIDR range (`10.0.0.0/8`). A proxy written without a scheme (`proxy.lan:3128`) is http://.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from mustaple.core.urls import url_problem

__all__ = ["Proxy", "ProxyError", "check_proxy_url", "choose_proxy"]


class ProxyError(ValueError):
    """A proxy setting that cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy to send a request through: its URL without credentials, and those credentials."""

    url: str  # http://host:port, never with user:password
    user: str | None = None
    password: str = ""


def check_proxy_url(value: str, source: str = "proxy") -> Proxy:
    """The proxy at `value` (http://[user:password@]host[:port]); ProxyError if unusable."""
    text = value.strip()
    try:
        parts = urlsplit(text if "://" in text else f"http://{text}")
    except ValueError as exc:  # an unclosed [ of an IPv6 address
        raise ProxyError(f"{source} {value!r}: not a URL ({exc})") from None
    if parts.scheme != "http":
        raise ProxyError(
            f"{source} {value!r}: only http:// proxies are supported (for https:// "
            "responders too, through CONNECT)"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0  # not a number, or over 65535
    if port == 0:  # port 0 reaches nothing: before the host is judged, which is not at fault
        raise ProxyError(f"{source} {value!r}: the port is not a number from 1 to 65535")
    if not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ProxyError(f"{source} {value!r}: give http://HOST:PORT such as http://proxy:3128")
    if url_problem(f"http://{parts.netloc.rpartition('@')[2]}/") is not None:
        raise ProxyError(f"{source} {value!r}: the host is not a name or address to connect to")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    user = unquote(parts.username) if parts.username is not None else None
    return Proxy(f"http://{host}:{port or 80}", user, unquote(parts.password or ""))


def choose_proxy(url: str, setting: str | None, environ: Mapping[str, str]) -> Proxy | None:
    """The proxy for a request to `url`, or None to connect directly.

    `setting` is the configured proxy (None: the environment's; "": none at all).
    """
    if setting == "":
        return None
    if setting is None:
        scheme = url.partition(":")[0].lower()  # as urlsplit reads it, for the URLs we fetch
        name, value = _from_environment(scheme, environ)
        if not value:
            return None
    else:
        name, value = "proxy", setting
    parts = urlsplit(url)
    if _bypassed(parts.hostname or "", _env(environ, "no_proxy")):
        return None
    return check_proxy_url(value, name)


def _env(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name) or environ.get(name.upper()) or ""


def _from_environment(scheme: str, environ: Mapping[str, str]) -> tuple[str, str]:
    for name in (f"{scheme}_proxy", "all_proxy"):
        for spelled in (name, name.upper()):
            if environ.get(spelled):
                return spelled, environ[spelled]
    return "", ""


def _bypassed(host: str, no_proxy: str) -> bool:
    """Whether `host` matches an entry of a NO_PROXY list."""
    host = host.lower().rstrip(".")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*" or _matches(host, entry):
            return True
    return False


def _matches(host: str, entry: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        domain = entry.lstrip(".").rstrip(".")
        return host == domain or host.endswith(f".{domain}")
    try:
        return address in ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return False
