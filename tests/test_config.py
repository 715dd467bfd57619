"""The configuration file: defaults, durations, and errors that name the file and the key."""

from __future__ import annotations

import socket
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from mustaple.adapters.config import ConfigError, load_config, parse_config, parse_duration
from mustaple.adapters.redisstore import shown_url
from mustaple.cli import main
from mustaple.core.report import ExitCode
from mustaple.keeper.daemon import check_config

MINIMAL = """
[[certificates]]
paths = ["/etc/letsencrypt/live/*/fullchain.pem"]
"""

FULL = """
state_dir = "/tmp/state"

[[certificates]]
paths = ["/etc/ssl/a.pem", "/etc/ssl/b/*.pem"]
issuer = "/etc/ssl/issuer.pem"
urls = ["http://ocsp.example/"]
sinks = ["nginx"]

[sinks.nginx]
type = "file"
path = "/var/lib/mustaple/{name}.der"
reload = "systemctl reload nginx"

[hooks]
on_revoked = "/usr/local/bin/renew"
timeout = "30s"

[policy]
refresh_at = 0.4
jitter = 0.05
min_interval = "10m"
timeout = "5s"
attempts = 2
hash = "sha1"
concurrency = 8
per_host = 2
at_expiry = "keep"
watch_interval = "2s"
watch_timeout = "1m"
clock_skew = "1m"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mustaple.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.state_dir == Path("/var/lib/mustaple")
    assert config.sinks == {}
    assert config.certificates[0].sinks is None
    assert config.policy.schedule.refresh_at == 0.5
    assert config.policy.at_expiry == "remove"
    assert config.policy.hash_name == "sha1"


def test_full_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    (entry,) = config.certificates
    assert entry.paths == ("/etc/ssl/a.pem", "/etc/ssl/b/*.pem")
    assert entry.issuer == Path("/etc/ssl/issuer.pem")
    assert entry.sinks == ("nginx",)
    assert config.sinks["nginx"]["reload"] == "systemctl reload nginx"
    assert config.hooks.on_revoked == "/usr/local/bin/renew"
    assert config.hooks.timeout == timedelta(seconds=30)
    policy = config.policy
    assert policy.schedule.min_interval == timedelta(minutes=10)
    assert policy.fetch.total_timeout == 5.0
    assert (policy.hash_name, policy.per_host, policy.at_expiry) == ("sha1", 2, "keep")
    assert policy.verify.clock_skew == timedelta(minutes=1)
    assert policy.watch_interval == timedelta(seconds=2)
    assert policy.watch_timeout == timedelta(minutes=1)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "certificates: give at least one"),
        ("colour = 'blue'\n" + MINIMAL, "colour: unknown key"),
        (MINIMAL + "colour = 'blue'\n", r"certificates\[0\].colour: unknown key"),
        ("[[certificates]]\npaths = []\n", r"certificates\[0\].paths: required"),
        ("[[certificates]]\npaths = 'a.pem'\n", r"certificates\[0\].paths: must be a list"),
        ("[[certificates]]\npaths = ['/a.pem', '']\n", r"certificates\[0\].paths: '' is not a"),
        ('[[certificates]]\npaths = ["a\\u0000"]\n', r"certificates\[0\].paths: 'a\\x00' is"),
        (MINIMAL + "issuer = ' '\n", r"certificates\[0\].issuer: ' ' is not a file"),
        (MINIMAL + "issuer = 5\n", r"certificates\[0\].issuer: 5 is not a file"),
        ("state_dir = ''\n" + MINIMAL, "state_dir: '' is not a directory"),
        (MINIMAL + "urls = ['ftp://x']\n", r"certificates\[0\].urls: 'ftp://x' is not"),
        (MINIMAL + "sinks = ['nope']\n", r"certificates\[0\].sinks: no sink named 'nope'"),
        (MINIMAL + "[sinks.x]\npath = 'a'\n", "sinks.x.type: required"),
        (MINIMAL + "[policy]\ntimeout = 5\n", "policy.timeout: must be a duration"),
        (MINIMAL + "[policy]\ntimeout = '5 minutes'\n", "policy.timeout: '5 minutes' is not"),
        (MINIMAL + "[policy]\nrefresh_at = 2.0\n", "policy: refresh_at must be between"),
        (MINIMAL + "[policy]\nhash = 'md5'\n", "policy.hash: must be one of"),
        (MINIMAL + "[policy]\nconcurrency = 0\n", "policy.concurrency: must be at least 1"),
        (MINIMAL + "[policy]\nattempts = true\n", "policy.attempts: must be an integer, not bool"),
        (MINIMAL + "[policy]\nat_expiry = 'panic'\n", "policy.at_expiry: must be one of"),
        (MINIMAL + "[policy]\nwatch_timeout = '0.5s'\n", "policy.watch_timeout: must be at"),
        (MINIMAL + "[policy]\nwatch_timeout = '2h'\n", "policy.watch_timeout: must be at most"),
        (MINIMAL + "[hooks]\non_revoke = 'x'\n", "hooks.on_revoke: unknown key"),
        (MINIMAL + "[hooks]\non_revoked = ''\n", "hooks.on_revoked: must be a shell command"),
        ("[[certificates\n", "not valid TOML"),
        (MINIMAL + "[policy]\nattempts = " + "9" * 5000 + "\n", "not valid TOML"),
        (MINIMAL + "[http]\nlisten = '8008'\n", "http.listen: '8008' is not HOST:PORT"),
        (MINIMAL + "[http]\nport = 1\n", "http.port: unknown key"),
        (MINIMAL + "proxy = 'http://127.0.0.1:0'\n", r"certificates\[0\].proxy: the port is 0"),
        (MINIMAL + "[policy]\nproxy = 'u:pw@proxy:0'\n", "policy.proxy: the port is 0; give"),
        (MINIMAL + "[fleet]\n", "fleet.redis: '' is not a redis://, rediss:// or unix:// URL"),
        (MINIMAL + "[fleet]\nredis = 'http://r/'\n", "fleet.redis: 'http://r/' is not a"),
        (MINIMAL + "[fleet]\nredis = 'redis://r/'\nmember = 'a b'\n", "fleet.member: must be"),
        (MINIMAL + "[fleet]\nredis = 'redis://r/'\nlease = '0.5s'\n", "fleet.lease: must be at"),
        (MINIMAL + "[fleet]\nredis = 'redis://r/'\nleases = '5s'\n", "fleet.leases: unknown"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"^{path}: {problem}"):
        load_config(path)


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("[::1]:9000", "::1", 9000),
        ("127.0.0.1:8008", "127.0.0.1", 8008),
        ("0.0.0.0:1", "0.0.0.0", 1),
        ("localhost:65535", "localhost", 65535),
        ("web-1.example.:8008", "web-1.example.", 8008),
        ("[fe80::1%eth0]:8008", "fe80::1%eth0", 8008),
    ],
)
def test_http_section(tmp_path: Path, listen: str, host: str, port: int) -> None:
    assert load_config(write(tmp_path, MINIMAL)).http is None
    config = load_config(write(tmp_path, f"[http]\nlisten = '{listen}'\n" + MINIMAL))
    assert config.http is not None
    assert (config.http.host, config.http.port) == (host, port)


def test_fleet_section(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).fleet is None
    text = "[fleet]\nredis = 'rediss://:pw@r.example:6380/2'\n"
    fleet = load_config(write(tmp_path, text + MINIMAL)).fleet
    assert fleet is not None
    assert (fleet.url, fleet.prefix, fleet.lease) == (
        "rediss://:pw@r.example:6380/2",
        "mustaple:",
        timedelta(seconds=30),
    )
    assert fleet.member == socket.gethostname()
    text += "prefix = 'web:'\nmember = 'web-1'\nlease = '1m'\n"
    fleet = load_config(write(tmp_path, text + MINIMAL)).fleet
    assert fleet is not None
    assert (fleet.prefix, fleet.member, fleet.lease) == ("web:", "web-1", timedelta(minutes=1))
    assert shown_url(fleet.url) == "rediss://r.example:6380/2"  # no password in logs


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1.5m", 90)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["5", "5 m", "m", "-5m", "5w", "\u0665s", "\uff11m", "1.\u0665s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0.0000000001s", "0.0000005s"])
def test_a_duration_below_a_microsecond_says_so(text: str) -> None:
    """It was taken as zero, and then said to be "not more than zero"."""
    with pytest.raises(ValueError, match="shorter than a microsecond"):
        parse_duration(text)
    assert parse_duration("0.000001s") == timedelta(microseconds=1)
    assert parse_duration("0s") == timedelta(0)


def test_the_example_configuration_loads() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "mustaple.toml"
    config = check_config(example)
    assert config.fleet is None  # commented out there
    text = example.read_text().replace("# [fleet]", "[fleet]").replace("# redis", "redis")
    fleet = parse_config(tomllib.loads(text.replace("# member", "member")), example).fleet
    assert fleet is not None
    assert fleet.member == "web-1"


def test_the_retry_cadence_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "mustaple.toml"
    path.write_text(
        f'state_dir = "{tmp_path}"\n[[certificates]]\npaths = ["/x.pem"]\n'
        '[policy]\nretry_min = "2s"\nretry_base = "10s"\nretry_max = "5m"\n'
    )
    schedule = load_config(path).policy.schedule
    assert (schedule.retry_min, schedule.retry_base, schedule.retry_max) == (
        timedelta(seconds=2),
        timedelta(seconds=10),
        timedelta(minutes=5),
    )
    path.write_text(path.read_text().replace('retry_min = "2s"', 'retry_min = "10m"'))
    with pytest.raises(ConfigError, match="retry_min must not exceed retry_max"):
        load_config(path)


def test_a_certid_hash_other_than_sha1_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "mustaple.toml"
    path.write_text(
        f'state_dir = "{tmp_path}"\n[[certificates]]\npaths = ["/x.pem"]\n'
        '[policy]\nhash = "sha256"\n'
    )
    with pytest.raises(ConfigError, match=r"policy\.hash: 'sha256' would never give a staple"):
        load_config(path)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://[::1/0", r"'redis://\[::1/0' is not a valid URL \(Invalid IPv6 URL\)"),
        ("redis://127.0.0.1:99999/0", "the port is not a number from 1 to 65535"),
        ("redis://:secret@r:0/0", r"'redis://r:0/0': the port is not a number from 1 to"),
        ("redis://r/0?socket_timeout=abc", "redis-py refuses it .*'socket_timeout'"),
        ("redis://r/0?colour=blue", "redis-py knows no option 'colour' for this URL"),
        ("rediss://r/0?ssl_cert_reqs=maybe", "redis-py refuses it"),
        ("unix://", "names no socket"),
    ],
)
def test_a_redis_url_redis_py_cannot_use_is_refused_at_load(
    tmp_path: Path, url: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`prime`, `run` and `status --fleet` would fail on these with an internal error: the
    whole URL is read as redis-py reads it, without connecting, and never shows a password."""
    path = write(tmp_path, f"[fleet]\nredis = '{url}'\n" + MINIMAL)
    with pytest.raises(ConfigError, match=f"^{path}: fleet.redis: .*{problem}"):
        load_config(path)
    assert main(["status", "--fleet", "--config", str(path)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "secret" not in err


def test_a_byte_order_mark_is_named(tmp_path: Path) -> None:
    """Editors on Windows save one; tomllib said only "Invalid statement (line 1, column 1)"."""
    path = tmp_path / "mustaple.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: the file starts with a byte-order mark (BOM); save it as UTF-8 without one"
    )
