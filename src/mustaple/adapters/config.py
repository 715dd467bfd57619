"""The keeper's configuration: one TOML file, checked strictly (docs/configuration.md).

Every problem is a `ConfigError` naming the file, the key and what is wrong; unknown keys are
errors, not silently ignored. Durations are written with their unit ("30s", "5m", "2h", "1d").
Sink tables are kept raw here and checked by `sinks.build_sinks` when the keeper builds them.
"""

from __future__ import annotations

import codecs
import dataclasses
import ipaddress
import math
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit

from mustaple.adapters.files import MAX_INPUT, read_input
from mustaple.core.errors import InputError
from mustaple.core.fetchtypes import FetchPolicy
from mustaple.core.proxy import ProxyError, check_proxy_url
from mustaple.core.request import HASHES
from mustaple.core.schedule import SchedulePolicy
from mustaple.core.urls import url_problem
from mustaple.core.verify import Policy

__all__ = [
    "CertEntry",
    "Config",
    "ConfigError",
    "FleetConfig",
    "Hooks",
    "HttpConfig",
    "KeeperPolicy",
    "TableReader",
    "load_config",
    "parse_config",
    "parse_duration",
    "with_proxy",
]

_T = TypeVar("_T")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd])$")  # ASCII digits only, as TOML
_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
HOOK_EVENTS = ("on_revoked", "on_expiring", "on_failure", "on_recovered")
MAX_CONFIG_SIZE = 1024 * 1024  # bytes of the configuration file
MAX_NESTING = 16  # tables and arrays within one another
MAX_DURATION = timedelta(days=3650)  # no duration may be longer, whatever its key
_MINUTE, _HOUR, _DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
WATCH_TIMEOUT = timedelta(seconds=30)  # policy.watch_timeout's default
_LOOP = timedelta(seconds=1)  # the least interval of what repeats (a rescan, a retry, a sweep)


class ConfigError(InputError):
    """The configuration cannot be used; the message names the file and the key."""


def parse_duration(text: str) -> timedelta:
    """'30s', '5m', '2h', '1d' (a number and one unit) as a timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration such as '30s', '5m', '2h' or '1d'")
    seconds = float(match[1]) * _UNITS[match[2]]
    if not seconds <= MAX_DURATION.total_seconds():  # also inf
        raise ValueError(f"{text!r} is longer than {MAX_DURATION.days}d")
    value = timedelta(seconds=seconds)
    if seconds > 0 and not value:
        raise ValueError(f"{text!r} is shorter than a microsecond, the least duration there is")
    return value


@dataclass(frozen=True)
class CertEntry:
    """Which certificates, and how to get and deliver their staples."""

    paths: tuple[str, ...]  # files or globs
    issuer: Path | None = None
    urls: tuple[str, ...] = ()
    sinks: tuple[str, ...] | None = None  # None: every sink
    proxy: str | None = None  # None: the policy's; "": none; else an http:// proxy URL


@dataclass(frozen=True)
class Hooks:
    """Commands run on events, with the event in their environment (docs/configuration.md)."""

    on_revoked: str | None = None
    on_expiring: str | None = None
    on_failure: str | None = None
    on_recovered: str | None = None
    timeout: timedelta = timedelta(seconds=60)

    def command(self, event: str) -> str | None:
        value: str | None = getattr(self, event)
        return value


@dataclass(frozen=True)
class KeeperPolicy:
    """The policy knobs, grouped by the part of mustaple they steer."""

    schedule: SchedulePolicy = field(default_factory=SchedulePolicy)
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    verify: Policy = field(default_factory=Policy)
    hash_name: str = "sha1"
    concurrency: int = 32
    per_host: int = 4
    at_expiry: str = "remove"  # or "keep"
    watch_interval: timedelta = timedelta(seconds=5)
    watch_timeout: timedelta = WATCH_TIMEOUT  # a file that hangs: see mustaple.adapters.patience
    # with file events (inotify), every file is looked at anyway this often; not above the
    # watch interval: every file at every pass, no file events (mustaple.keeper.changes)
    rescan_interval: timedelta = timedelta(minutes=10)
    workers: int | None = None  # processes for large batches; None: one per core; 0: none


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP endpoint: the local OCSP responder, metrics, health and the status page."""

    host: str = "127.0.0.1"
    port: int = 8008
    max_request_size: int = 10000  # bytes of an OCSP request (POST body or GET path)
    max_connections: int = 512  # open at once; see mustaple.serve.fastpath
    idle_timeout: timedelta = timedelta(seconds=75)  # a connection idle this long is closed
    request_timeout: timedelta = timedelta(seconds=60)  # from a request's first byte to its last


@dataclass(frozen=True)
class FleetConfig:
    """Fleet mode: the members share staples and take turns fetching, through one Redis."""

    url: str  # redis://, rediss:// or unix://
    prefix: str = "mustaple:"
    member: str = field(default_factory=socket.gethostname)
    lease: timedelta = timedelta(seconds=30)

    @property
    def beat_interval(self) -> float:
        """Seconds between a member's heartbeats (and Redis probes while it is down)."""
        return min(10.0, max(0.5, self.lease.total_seconds() / 3))


@dataclass(frozen=True)
class Config:
    path: Path
    state_dir: Path
    certificates: tuple[CertEntry, ...]
    sinks: Mapping[str, Mapping[str, Any]]
    hooks: Hooks = field(default_factory=Hooks)
    policy: KeeperPolicy = field(default_factory=KeeperPolicy)
    http: HttpConfig | None = None  # None: no HTTP endpoint
    fleet: FleetConfig | None = None  # None: on our own (no Redis)


def load_config(path: str | Path) -> Config:
    """Read and check a configuration file (a regular file of at most 1 MiB)."""
    p = Path(path)
    try:
        raw = read_input(p, "configuration file", MAX_CONFIG_SIZE)
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    if raw.startswith(codecs.BOM_UTF8):  # TOML has none: tomllib said only "line 1, column 1"
        raise ConfigError(
            f"{p}: the file starts with a byte-order mark (BOM); save it as UTF-8 without one"
        )
    try:
        data = tomllib.loads(raw.decode())
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: cannot read the configuration ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{p}: {_TOO_DEEP}") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4300)
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    if _depth(data) > MAX_NESTING:
        raise ConfigError(f"{p}: {_TOO_DEEP}")
    return parse_config(data, p)


_TOO_DEEP = f"tables and arrays are nested more than {MAX_NESTING} deep; no key needs that"


def _depth(data: object) -> int:
    """How deeply tables and arrays are nested in `data` (counted without recursion)."""
    deepest, todo = 0, [(data, 0)]
    while todo:
        value, level = todo.pop()
        deepest = max(deepest, level)
        if isinstance(value, dict):
            todo += [(v, level + 1) for v in value.values()]
        elif isinstance(value, list):
            todo += [(v, level + 1) for v in value]
    return deepest


class TableReader:
    """Typed access to one TOML table, naming `prefix.key` (after `source:` when given) in
    every error, which is a `failure` (ConfigError unless the caller wants another)."""

    def __init__(
        self,
        source: Path | None,
        prefix: str,
        table: object,
        failure: Callable[[str], Exception] = ConfigError,
    ) -> None:
        self.source, self.prefix, self.failure = source, prefix, failure
        if not isinstance(table, dict):
            raise self.error("", "must be a table")
        self.table: dict[str, Any] = table

    def error(self, key: str, problem: str) -> Exception:
        name = f"{self.prefix}.{key}" if self.prefix and key else self.prefix or key
        return self.failure(
            f"{self.source}: {name}: {problem}" if self.source else f"{name}: {problem}"
        )

    def only(self, *allowed: str, expected: str = "") -> None:
        """No key but `allowed`; `expected` says what is (default: the allowed keys)."""
        for key in self.table:
            if key not in allowed:
                wanted = expected or f"expected one of: {', '.join(allowed)}"
                raise self.error(key, f"unknown key; {wanted}")

    def get(self, key: str, kind: type[_T], default: _T) -> _T:
        value = self.table.get(key, default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            wanted = _KIND_NAMES.get(kind, kind.__name__)
            raise self.error(key, f"must be {wanted}, not {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(key, f"must be a finite number, not {value}")
        return value

    def number(self, key: str, default: int, low: int, high: int) -> int:
        """An integer from `low` to `high`."""
        value = self.get(key, int, default)
        if value < low:
            raise self.error(key, f"must be at least {low}")
        if value > high:
            raise self.error(key, f"must be at most {high}")
        return value

    def duration(
        self, key: str, default: timedelta, high: timedelta, low: timedelta | None = None
    ) -> timedelta:
        """A duration string, more than zero (or at least `low`) and at most `high`."""
        value = self.convert(key, default, _duration)
        if low is None and value <= timedelta(0):
            raise self.error(key, "must be more than zero")
        if low is not None and value < low:
            raise self.error(key, f"must be at least {_shown(low)}")
        if value > high:
            raise self.error(key, f"must be at most {_shown(high)}")
        return value

    def convert(self, key: str, default: _T, parse: Callable[[Any], _T]) -> _T:
        if key not in self.table:
            return default
        try:
            return parse(self.table[key])
        except (ValueError, TypeError) as exc:
            raise self.error(key, str(exc)) from None

    def strings(self, key: str) -> tuple[str, ...] | None:
        value = self.table.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings")
        return tuple(value)

    def text(self, key: str) -> str | None:
        """A non-empty string; None when absent."""
        value = self.table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, not {value!r}")
        return value

    def required(self, key: str, hint: str) -> str:
        """A non-empty string that must be there; `hint` says what to give."""
        value = self.text(key)
        if value is None:
            raise self.error(key, f"missing; {hint}")
        return value

    def flag(self, key: str) -> bool:
        """true or false; false when absent."""
        value = self.table.get(key, False)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {value!r}")
        return value


def parse_config(data: Mapping[str, Any], source: Path) -> Config:
    """Check a parsed TOML document."""
    top = TableReader(source, "", dict(data))
    top.only("state_dir", "certificates", "sinks", "hooks", "policy", "http", "fleet")
    entries = top.table.get("certificates", [])
    if not isinstance(entries, list) or not entries:
        raise top.error("certificates", "give at least one [[certificates]] entry")
    sinks = _sinks(TableReader(source, "sinks", top.table.get("sinks", {})))
    certificates = tuple(
        _entry(TableReader(source, f"certificates[{i}]", t), sinks) for i, t in enumerate(entries)
    )
    state_dir = top.get("state_dir", str, "/var/lib/mustaple")
    if not _is_path(state_dir):
        raise top.error("state_dir", f'{state_dir!r} is not a directory, e.g. "/var/lib/mustaple"')
    _absolute(top, "state_dir", state_dir)
    return Config(
        path=source,
        state_dir=Path(state_dir),
        certificates=certificates,
        sinks=sinks,
        hooks=_hooks(TableReader(source, "hooks", top.table.get("hooks", {}))),
        policy=_policy(TableReader(source, "policy", top.table.get("policy", {}))),
        http=_http(TableReader(source, "http", top.table["http"])) if "http" in top.table else None,
        fleet=_fleet(TableReader(source, "fleet", top.table["fleet"]))
        if "fleet" in top.table
        else None,
    )


def _absolute(reader: TableReader, key: str, path: str) -> None:
    """Refuse a path that is not written in full from /: "~" is not expanded here, and a
    relative path would depend on the directory mustaple starts in (/ under systemd)."""
    if path.startswith("~"):
        raise reader.error(key, f"{path!r}: ~ is not expanded here; write the full path, from /")
    if not path.startswith("/"):
        raise reader.error(
            key,
            f"{path!r} is a relative path, which would depend on the directory mustaple starts "
            "in (/ under systemd); write the full path, from /",
        )


def _is_path(text: str) -> bool:
    """Whether `text` can name a file: not blank (that would be the current directory), no
    NUL byte (no system call takes one)."""
    return bool(text.strip()) and "\0" not in text


def _fleet(reader: TableReader) -> FleetConfig:
    reader.only("redis", "prefix", "member", "lease")
    url = _redis_url(reader)
    defaults = FleetConfig(url)
    member = reader.get("member", str, defaults.member)
    if not member or any(c.isspace() for c in member):
        raise reader.error("member", "must be a name without spaces")
    lease = reader.duration("lease", defaults.lease, _HOUR, low=timedelta(seconds=1))
    return FleetConfig(url, reader.get("prefix", str, defaults.prefix), member, lease)


def _redis_url(reader: TableReader) -> str:
    """The `redis` key: a URL redis-py takes as it is (its port, database and options),
    checked without connecting; its password is never shown."""
    url = reader.get("redis", str, "")
    shown = _without_password(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [ of an IPv6 address
        raise reader.error("redis", f"{shown!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise reader.error("redis", f"{shown!r} is not a redis://, rediss:// or unix:// URL")
    if not _port_ok(parts):
        raise reader.error("redis", f"{shown!r}: the port is not a number from 1 to 65535")
    if parts.scheme == "unix" and not parts.path:
        raise reader.error("redis", f"{shown!r} names no socket, e.g. unix:///run/redis.sock")
    problem = _redis_problem(url)
    if problem is not None:
        raise reader.error("redis", f"{shown!r}: {problem}")
    return url


def _port_ok(parts: SplitResult) -> bool:
    """Whether the URL's port, if it has one, is from 1 to 65535."""
    try:
        return parts.port != 0
    except ValueError:  # not a number, or out of range
        return False


def _without_password(url: str) -> str:
    """A URL fit to show: without its user and password."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


def _redis_problem(url: str) -> str | None:
    """What redis-py refuses in `url` (a port out of range, an option that is no number or
    that it does not know), found by building a connection without opening it."""
    import redis  # noqa: PLC0415 (only a [fleet] loads it: `prime` alone never pays for it)

    try:
        client = redis.Redis.from_url(url)
        client.connection_pool.make_connection()
        client.close()
    except TypeError as exc:  # an unknown option, passed on to the connection
        unknown = re.search(r"keyword argument '(\w+)'", str(exc))
        option = f"{unknown[1]!r} " if unknown else ""
        return f"redis-py knows no option {option}for this URL; remove it"
    except (ValueError, redis.RedisError) as exc:
        return f"redis-py refuses it ({exc})"
    return None


def _http(reader: TableReader) -> HttpConfig:
    reader.only("listen", "max_request_size", "max_connections", "idle_timeout", "request_timeout")
    host, port = _listen(reader)
    size = reader.number("max_request_size", HttpConfig.max_request_size, 1, 1024 * 1024)
    cap = reader.number("max_connections", HttpConfig.max_connections, 1, 65536)
    idle = reader.duration("idle_timeout", HttpConfig.idle_timeout, _HOUR, low=_LOOP)
    request = reader.duration("request_timeout", HttpConfig.request_timeout, _HOUR)
    return HttpConfig(host, port, size, cap, idle, request)


def _listen(reader: TableReader) -> tuple[str, int]:
    """The `listen` key: HOST:PORT, the host an IP address, [IPv6] or a host name."""
    listen = reader.get("listen", str, "127.0.0.1:8008")
    shown = repr(listen) if len(listen) <= 80 else f"{listen[:80]!r}..."
    host, _, port = listen.rpartition(":")
    if not host:
        raise reader.error("listen", f"{shown} is not HOST:PORT such as 127.0.0.1:8008")
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        raise reader.error(
            "listen", f"{shown} is not HOST:PORT such as 127.0.0.1:8008 (a port from 1 to 65535)"
        )
    problem = _host_problem(host)
    if problem is not None:
        raise reader.error("listen", f"{shown}: {problem}")
    return host.removeprefix("[").removesuffix("]"), int(port)


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")  # of a host name (RFC 1123)


def _host_problem(host: str) -> str | None:
    """Why `host` is neither an IP address, [IPv6] nor a host name, or None."""
    if any(c.isspace() or not c.isprintable() for c in host):
        return "the host holds spaces or control characters"
    if host.startswith("[") and host.endswith("]"):
        return None if _is_ip(host[1:-1], ipaddress.IPv6Address) else "no IPv6 address in [ ]"
    if ":" in host:
        return "write an IPv6 address in brackets, such as [::1]:8008"
    if _is_ip(host, ipaddress.IPv4Address):
        return None
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return "the host is not an IP address or a host name (letters, digits, - and dots)"
    if labels[-1].isdigit():
        return "the host is not an IPv4 address (four numbers from 0 to 255)"
    return None


def _is_ip(text: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


_NO_NUL = "no file name or command can; remove it"


def _sinks(reader: TableReader) -> dict[str, Mapping[str, Any]]:
    sinks: dict[str, Mapping[str, Any]] = {}
    for name, table in reader.table.items():
        sink = TableReader(reader.source, f"sinks.{name}", table)
        if not isinstance(sink.table.get("type"), str):
            raise sink.error("type", 'required: "file", "haproxy" or "command"')
        for key, value in sink.table.items():
            if isinstance(value, str) and "\0" in value:
                raise sink.error(key, f"{value!r} holds a NUL character ({_NO_NUL})")
        _sink_paths(sink)
        sinks[name] = sink.table
    return sinks


def _sink_paths(sink: TableReader) -> None:
    """A file sink's `path` (unless it starts at the certificate's {dir}) and a HAProxy
    sink's `ocsp_dir` are written in full (its `socket` is checked as an address)."""
    kind, path, ocsp_dir = (sink.table.get(key) for key in ("type", "path", "ocsp_dir"))
    if kind == "file" and isinstance(path, str) and path.strip() and not path.startswith("{dir}"):
        _absolute(sink, "path", path)
    if kind == "haproxy" and isinstance(ocsp_dir, str) and ocsp_dir.strip():
        _absolute(sink, "ocsp_dir", ocsp_dir)


def _entry(reader: TableReader, sinks: Mapping[str, object]) -> CertEntry:
    reader.only("paths", "issuer", "urls", "sinks", "proxy")
    paths = reader.strings("paths")
    if not paths:
        raise reader.error("paths", "required: certificate files or globs")
    for path in paths:
        if not _is_path(path):
            raise reader.error("paths", f"{path!r} is not a file or a glob; give certificate files")
        _absolute(reader, "paths", path)
    urls = reader.strings("urls") or ()
    for url in urls:
        problem = url_problem(url)
        if problem is not None:
            raise reader.error("urls", problem)
    chosen = reader.strings("sinks")
    for name in chosen or ():
        if name not in sinks:
            raise reader.error("sinks", f"no sink named {name!r} in [sinks]")
    issuer = reader.table.get("issuer")
    if issuer is not None and not (isinstance(issuer, str) and _is_path(issuer)):
        raise reader.error("issuer", f"{issuer!r} is not a file; give the issuer's certificate")
    if issuer is not None:
        _absolute(reader, "issuer", issuer)
    proxy = _proxy(reader) if "proxy" in reader.table else None
    return CertEntry(paths, Path(issuer) if issuer else None, urls, chosen, proxy)


def _proxy(reader: TableReader) -> str:
    """The `proxy` key: "" (no proxy) or http://[user:password@]host:port."""
    value = reader.get("proxy", str, "")
    if value and _port_zero(value):  # (check_proxy_url would blame the host)
        raise reader.error("proxy", "the port is 0; give a port from 1 to 65535")
    if value:
        try:
            check_proxy_url(value)
        except ProxyError as exc:
            raise reader.error("proxy", str(exc).removeprefix(f"proxy {value!r}: ")) from None
    return value


def _port_zero(url: str) -> bool:
    """Whether proxy URL `url` (http:// when it has no scheme) gives port 0."""
    text = url.strip()
    try:
        return urlsplit(text if "://" in text else f"http://{text}").port == 0
    except ValueError:  # not a URL, or another port problem: check_proxy_url says which
        return False


def with_proxy(policy: FetchPolicy, entry: CertEntry) -> FetchPolicy:
    """The fetch policy for one certificate entry: its own `proxy` when it sets one."""
    if entry.proxy is None or entry.proxy == policy.proxy:
        return policy
    return dataclasses.replace(policy, proxy=entry.proxy)


def _hooks(reader: TableReader) -> Hooks:
    reader.only(*HOOK_EVENTS, "timeout")
    commands = {e: reader.table[e] for e in HOOK_EVENTS if e in reader.table}
    for event, command in commands.items():
        if not isinstance(command, str) or not command.strip():
            raise reader.error(event, "must be a shell command (a non-empty string)")
        if "\0" in command:
            raise reader.error(event, f"{command!r} holds a NUL character ({_NO_NUL})")
    return Hooks(**commands, timeout=reader.duration("timeout", Hooks.timeout, _DAY))


def _duration(value: Any) -> timedelta:
    if not isinstance(value, str):
        raise TypeError("must be a duration string such as '30s' or '5m'")
    return parse_duration(value)


def _shown(value: timedelta) -> str:
    """A duration as written in the configuration: '10m', '1d', '30s'."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def _sha1_only(reader: TableReader, default: str) -> str:
    """The keeper's CertID hash: SHA-1, the only one whose staples every client accepts (curl
    and OpenSSL match SHA-1 CertIDs only), so anything else would never give a staple."""
    value = _choice(reader, "hash", sorted(HASHES), default)
    if value != "sha1":
        raise reader.error(
            "hash",
            f"{value!r} would never give a staple: curl and OpenSSL match SHA-1 CertIDs only; "
            'remove the key or set "sha1" (`mustaple fetch --hash` still asks with another hash, '
            "to see what a responder says)",
        )
    return value


def _policy(reader: TableReader) -> KeeperPolicy:
    reader.only(
        "refresh_at", "jitter", "min_interval", "retry_min", "retry_base", "retry_max",
        "timeout", "attempts",
        "clock_skew", "allow_missing_next_update", "hash", "concurrency", "per_host",
        "at_expiry", "watch_interval", "watch_timeout", "rescan_interval", "max_response_size",
        "proxy", "workers",
    )  # fmt: skip
    defaults = KeeperPolicy()
    try:
        schedule = SchedulePolicy(
            refresh_at=reader.get("refresh_at", float, defaults.schedule.refresh_at),
            jitter=reader.get("jitter", float, defaults.schedule.jitter),
            min_interval=reader.duration(
                "min_interval", defaults.schedule.min_interval, _DAY, low=_LOOP
            ),
            retry_min=reader.duration("retry_min", defaults.schedule.retry_min, _HOUR, low=_LOOP),
            retry_base=reader.duration("retry_base", defaults.schedule.retry_base, _DAY, low=_LOOP),
            retry_max=reader.duration("retry_max", defaults.schedule.retry_max, _DAY, low=_LOOP),
        )
        timeout = reader.duration("timeout", timedelta(seconds=defaults.fetch.total_timeout), _HOUR)
        fetch = FetchPolicy(
            total_timeout=timeout.total_seconds(),
            attempts_per_url=reader.number("attempts", defaults.fetch.attempts_per_url, 1, 10),
            max_size=reader.number("max_response_size", defaults.fetch.max_size, 1, MAX_INPUT),
            proxy=_proxy(reader) if "proxy" in reader.table else None,
        )
    except ValueError as exc:
        raise reader.error("", str(exc)) from None
    skew = reader.duration("clock_skew", defaults.verify.clock_skew, _DAY, low=timedelta(0))
    verify = Policy(
        clock_skew=skew,
        allow_missing_next_update=reader.get("allow_missing_next_update", bool, False),
    )
    return KeeperPolicy(
        schedule=schedule,
        fetch=fetch,
        verify=verify,
        hash_name=_sha1_only(reader, defaults.hash_name),
        concurrency=reader.number("concurrency", defaults.concurrency, 1, 1024),
        per_host=reader.number("per_host", defaults.per_host, 1, 1024),
        at_expiry=_choice(reader, "at_expiry", ["remove", "keep"], defaults.at_expiry),
        watch_interval=reader.duration("watch_interval", defaults.watch_interval, _DAY, low=_LOOP),
        watch_timeout=reader.duration("watch_timeout", defaults.watch_timeout, _HOUR, low=_LOOP),
        rescan_interval=reader.duration(
            "rescan_interval", defaults.rescan_interval, _DAY, low=_LOOP
        ),
        workers=reader.number("workers", 0, 0, 64) if "workers" in reader.table else None,
    )


def _choice(reader: TableReader, key: str, choices: list[str], default: str) -> str:
    value = reader.get(key, str, default)
    if value not in choices:
        raise reader.error(key, f"must be one of {', '.join(choices)}, not {value!r}")
    return value
