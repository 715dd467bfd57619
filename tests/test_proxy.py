"""Fetching through an outbound HTTP proxy: a real tinyproxy on loopback, and the rules for
choosing it (environment as curl reads it, the `proxy` key, NO_PROXY)."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from conftest import Handler, LoopbackServer
from mustaple.adapters.config import CertEntry, ConfigError, load_config, with_proxy
from mustaple.adapters.fetch import FetchPolicy, FetchResult, fetch_issuer, fetch_staple
from mustaple.cli import main
from mustaple.core.certs import make_target
from mustaple.core.proxy import Proxy, ProxyError, check_proxy_url, choose_proxy
from mustaple.core.reasons import Reason
from mustaple.core.report import ExitCode
from mustaple.testing import CA, Behaviour, Leaf, ResponderThread
from reach_servers import TinyproxyServer
from servers import free_port

Serve = Callable[[Handler], LoopbackServer]
QUICK = FetchPolicy(total_timeout=5.0, connect_timeout=2.0, attempts_per_url=1)
ENV_NAMES = [
    *("http_proxy", "https_proxy", "all_proxy", "no_proxy"),
    *("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"),
]


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def responder() -> Iterator[ResponderThread]:
    with ResponderThread(CA()) as thread:
        yield thread


@pytest.fixture
def leaf(responder: ResponderThread) -> Leaf:
    leaf = responder.responder.ca.issue("proxied.test", ocsp_urls=[responder.url])
    responder.add(leaf)
    return leaf


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[TinyproxyServer]:
    with TinyproxyServer(tmp_path / "tinyproxy") as server:
        yield server


def fetch(leaf: Leaf, policy: FetchPolicy = QUICK) -> FetchResult:
    return asyncio.run(fetch_staple(make_target(leaf.cert, leaf.issuer), policy=policy))


def with_proxy_setting(setting: str | None) -> FetchPolicy:
    return FetchPolicy(total_timeout=5.0, connect_timeout=2.0, attempts_per_url=1, proxy=setting)


# --- Through a real proxy ------------------------------------------------------------------------


def test_the_configured_proxy_carries_the_request(
    leaf: Leaf, responder: ResponderThread, proxy: TinyproxyServer
) -> None:
    result = fetch(leaf, with_proxy_setting(proxy.url))
    assert result.ok, result.rejection
    (line,) = proxy.requests()
    assert line.startswith(f"GET {responder.url}")
    assert len(responder.requests) == 1
    (attempt,) = result.attempts
    assert attempt.proxy == proxy.url
    assert attempt.message == f"valid staple (via proxy {proxy.url})"


def test_the_environment_proxy_is_used_as_curl_does(
    leaf: Leaf, proxy: TinyproxyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # for https:// only: not used
    monkeypatch.setenv("http_proxy", proxy.url.removeprefix("http://"))  # no scheme: http
    result = fetch(leaf)
    assert result.ok, result.rejection
    assert len(proxy.requests()) == 1
    monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.0/8")
    assert fetch(leaf).ok
    assert len(proxy.requests()) == 1  # straight to the responder
    monkeypatch.delenv("NO_PROXY")
    result = fetch(leaf, with_proxy_setting(""))  # proxy = "": off, whatever the environment
    assert result.ok
    assert result.attempts[0].proxy is None
    assert len(proxy.requests()) == 1


def test_aia_issuer_downloads_go_through_the_proxy(
    responder: ResponderThread, proxy: TinyproxyServer, serve: Serve
) -> None:
    issuer_der = responder.responder.ca.cert.public_bytes(Encoding.DER)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=issuer_der, content_type="application/pkix-cert")

    server = serve(handler)
    url = f"{server.url}ca.der"
    (issuer,) = asyncio.run(fetch_issuer(url, policy=with_proxy_setting(proxy.url)))
    assert issuer == responder.responder.ca.cert
    assert proxy.requests() == [f"GET {url} HTTP/1.1"]


def test_proxy_down(leaf: Leaf, responder: ResponderThread) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = fetch(leaf, with_proxy_setting(dead))
    assert result.rejection is not None
    assert result.rejection.reason is Reason.PROXY_UNREACHABLE
    assert dead.removeprefix("http://") in result.rejection.message
    assert "the CA was not asked" in result.rejection.hint
    assert responder.requests == []


@pytest.mark.parametrize("refusal", ["deny", "filtered"])
def test_proxy_refuses(
    leaf: Leaf, responder: ResponderThread, tmp_path: Path, refusal: str
) -> None:
    with TinyproxyServer(tmp_path / "p", **{refusal: True}) as proxy:  # type: ignore[arg-type]
        result = fetch(leaf, with_proxy_setting(proxy.url))
    assert result.rejection is not None
    assert result.rejection.reason is Reason.PROXY_REFUSED
    words = "Access denied" if refusal == "deny" else "Filtered"
    assert result.rejection.message.endswith(f"{proxy.url} answered HTTP 403 {words}")
    assert responder.requests == []
    assert [a.reason for a in result.attempts] == ["proxy-refused"]  # no POST: same answer


def test_proxy_cannot_reach_the_responder(leaf: Leaf, proxy: TinyproxyServer) -> None:
    gone = leaf.cert  # the leaf names its responder; point the fetch at a dead one instead
    dead = f"http://127.0.0.1:{free_port()}/"
    target = make_target(gone, leaf.issuer)
    result = asyncio.run(fetch_staple(target, urls=[dead], policy=with_proxy_setting(proxy.url)))
    first = result.attempts[0]
    assert first.reason == "proxy-error"
    assert first.message.startswith("the HTTP proxy answered with its own error page")
    assert f"{proxy.url} answered HTTP 500 Unable to connect" in first.message
    assert first.http_status is None  # the responder never answered


def test_dead_upstream_proxy_gives_502(
    leaf: Leaf, responder: ResponderThread, tmp_path: Path
) -> None:
    upstream = f"127.0.0.1:{free_port()}"
    with TinyproxyServer(tmp_path / "p", upstream=upstream) as proxy:
        result = fetch(leaf, with_proxy_setting(proxy.url))
    assert result.rejection is not None
    assert result.rejection.reason is Reason.PROXY_ERROR
    assert "answered HTTP 502 Unable to connect to upstream proxy" in result.rejection.message
    assert responder.requests == []


def test_the_responders_own_error_through_the_proxy_stays_the_responders(
    leaf: Leaf, responder: ResponderThread, proxy: TinyproxyServer
) -> None:
    responder.set_behaviour(Behaviour.HTTP_500)
    result = fetch(leaf, with_proxy_setting(proxy.url))
    assert result.rejection is not None
    assert result.rejection.reason is Reason.HTTP_SERVER_ERROR
    assert result.attempts[0].http_status == 500
    assert result.attempts[0].message.endswith(f"(via proxy {proxy.url})")


def test_an_https_responder_is_reached_through_connect(leaf: Leaf, proxy: TinyproxyServer) -> None:
    port = free_port()  # nothing listens: the tunnel opens, the TLS handshake cannot
    target = make_target(leaf.cert, leaf.issuer)
    url = f"https://127.0.0.1:{port}/"
    result = asyncio.run(fetch_staple(target, urls=[url], policy=with_proxy_setting(proxy.url)))
    assert proxy.requests()[0] == f"CONNECT 127.0.0.1:{port} HTTP/1.1"
    assert result.attempts[0].reason == "proxy-error"  # tinyproxy could not connect


# --- The command line and the keeper -------------------------------------------------------------


def test_fetch_proxy_option(
    leaf: Leaf, proxy: TinyproxyServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = leaf.write(tmp_path / "live")
    argv = ["fetch", str(files.fullchain), "--json", "--attempts", "1", "--proxy", proxy.url]
    assert main(argv) == ExitCode.GOOD
    out = json.loads(capsys.readouterr().out)
    assert out["attempts"][0]["message"] == f"valid staple (via proxy {proxy.url})"
    assert len(proxy.requests()) == 1
    assert main(["fetch", str(files.fullchain), "--proxy", "socks5://x:1"]) == ExitCode.USAGE
    assert "only http:// proxies are supported" in capsys.readouterr().err


def test_prime_through_the_configured_proxy_records_it(
    leaf: Leaf, proxy: TinyproxyServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf.write(tmp_path / "live" / "proxied.test")
    config = tmp_path / "mustaple.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n'
        f'[[certificates]]\npaths = ["{tmp_path}/live/*/fullchain.pem"]\n'
        f'[sinks.files]\ntype = "file"\npath = "{tmp_path}/staples/{{name}}.der"\n'
        f'[policy]\nattempts = 1\nproxy = "{proxy.url}"\n'
    )
    cert = str(tmp_path / "live" / "proxied.test" / "fullchain.pem")
    assert main(["prime", "--config", str(config), cert]) == ExitCode.GOOD
    assert len(proxy.requests()) == 1
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        (message,) = db.execute("SELECT message FROM attempts").fetchone()
    assert message == f"valid staple (via proxy {proxy.url})"
    assert main(["prime", "--config", str(config), "--proxy", "", cert]) == ExitCode.GOOD
    assert len(proxy.requests()) == 1  # --proxy "" went straight to the responder
    capsys.readouterr()


# --- Choosing the proxy (pure) -------------------------------------------------------------------


def test_environment_names_as_curl_reads_them() -> None:
    env = {"http_proxy": "http://low:1", "HTTP_PROXY": "http://up:2", "HTTPS_PROXY": "up:3"}
    assert choose_proxy("http://ocsp.ca/", None, env) == Proxy("http://low:1")
    assert choose_proxy("https://ocsp.ca/", None, env) == Proxy("http://up:3")
    assert choose_proxy("http://ocsp.ca/", None, {"ALL_PROXY": "all:4"}) == Proxy("http://all:4")
    assert choose_proxy("http://ocsp.ca/", None, {}) is None
    assert choose_proxy("http://ocsp.ca/", "", env) is None
    assert choose_proxy("http://ocsp.ca/", "http://conf:5", env) == Proxy("http://conf:5")


@pytest.mark.parametrize(
    ("no_proxy", "url", "bypassed"),
    [
        ("*", "http://ocsp.ca/", True),
        ("ca", "http://ocsp.ca/", True),
        (".ca", "http://ocsp.ca/", True),
        ("ocsp.ca", "http://ocsp.ca:8080/", True),
        ("sp.ca", "http://ocsp.ca/", False),
        ("other.example, OCSP.CA", "http://ocsp.ca/", True),
        ("10.0.0.0/8", "http://10.1.2.3/", True),
        ("10.0.0.0/8", "http://11.1.2.3/", False),
        ("::1", "http://[::1]:80/", True),
        ("127.0.0.1", "http://localhost/", False),  # names are not resolved, as in curl
    ],
)
def test_no_proxy(no_proxy: str, url: str, bypassed: bool) -> None:
    chosen = choose_proxy(url, "http://proxy:3128", {"no_proxy": no_proxy})
    assert (chosen is None) == bypassed


def test_proxy_urls() -> None:
    assert check_proxy_url("proxy.lan") == Proxy("http://proxy.lan:80")
    with_credentials = Proxy("http://[::1]:3128", "u@x", "p:w")
    assert check_proxy_url("http://u%40x:p%3Aw@[::1]:3128/") == with_credentials
    for bad, problem in [
        ("socks5://p:1", "only http:// proxies"),
        ("https://p:1", "only http:// proxies"),
        ("http://p:99999", "port"),
        ("http://p:0", "the port is not a number from 1 to 65535"),
        ("http://p:1/path", "HOST:PORT"),
    ]:
        with pytest.raises(ProxyError, match=problem):
            check_proxy_url(bad)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("socks5://127.0.0.1:1080", "only http:// proxies"),
        ("http://127.0.0.1:0", "the port is not a number from 1 to 65535"),
    ],
)
def test_a_bad_environment_proxy_is_one_clear_rejection(
    leaf: Leaf,
    responder: ResponderThread,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    problem: str,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", value)
    result = fetch(leaf)
    assert result.rejection is not None
    assert result.rejection.reason is Reason.PROXY_INVALID
    assert f"HTTP_PROXY {value!r}: {problem}" in result.rejection.message
    assert responder.requests == []


def test_proxy_credentials_are_sent_never_shown(
    leaf: Leaf, responder: ResponderThread, tmp_path: Path
) -> None:
    with TinyproxyServer(tmp_path / "p", auth=("user", "s3cret")) as proxy:
        without = fetch(leaf, with_proxy_setting(proxy.url))
        secret = proxy.url.replace("http://", "http://user:s3cret@")
        result = fetch(leaf, with_proxy_setting(secret))
    assert without.rejection is not None
    assert without.rejection.reason is Reason.PROXY_REFUSED
    assert "answered HTTP 407" in without.rejection.message
    assert result.ok, result.rejection
    assert len(responder.requests) == 1
    assert all("s3cret" not in a.message and a.proxy == proxy.url for a in result.attempts)


# --- Configuration -------------------------------------------------------------------------------


def write(tmp_path: Path, policy: str, entry: str = "") -> Path:
    path = tmp_path / "m.toml"
    path.write_text(f'[[certificates]]\npaths = ["/x"]\n{entry}\n[policy]\n{policy}\n')
    return path


def test_proxy_key_global_and_per_certificate(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'proxy = "http://p:3128"'))
    assert config.policy.fetch.proxy == "http://p:3128"
    (entry,) = config.certificates
    assert entry.proxy is None
    assert with_proxy(config.policy.fetch, entry) is config.policy.fetch
    config = load_config(write(tmp_path, 'proxy = "http://p:3128"', 'proxy = ""'))
    assert with_proxy(config.policy.fetch, config.certificates[0]).proxy == ""
    config = load_config(write(tmp_path, "", 'proxy = "http://q:8080"'))
    assert config.policy.fetch.proxy is None  # the environment's
    assert with_proxy(config.policy.fetch, config.certificates[0]).proxy == "http://q:8080"
    assert with_proxy(FetchPolicy(), CertEntry(paths=("/x",))).proxy is None


@pytest.mark.parametrize(
    ("policy", "entry", "message"),
    [
        ('proxy = "socks5://p:1"', "", "policy.proxy: only http:// proxies are supported"),
        ("proxy = 3128", "", "policy.proxy: must be a string"),
        ("", 'proxy = "http://p:x"', "certificates[0].proxy: the port is not a number"),
    ],
)
def test_bad_proxy_key(tmp_path: Path, policy: str, entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, policy, entry))


def test_an_entry_s_own_proxy_wins_over_the_global_one(
    leaf: Leaf, proxy: TinyproxyServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf.write(tmp_path / "live" / "proxied.test")
    dead = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "mustaple.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n'
        f'[[certificates]]\npaths = ["{tmp_path}/live/*/fullchain.pem"]\n'
        f'proxy = "{proxy.url}"\n'
        f'[sinks.files]\ntype = "file"\npath = "{tmp_path}/staples/{{name}}.der"\n'
        f'[policy]\nattempts = 1\nproxy = "{dead}"\n'
    )
    cert = str(tmp_path / "live" / "proxied.test" / "fullchain.pem")
    assert main(["prime", "--config", str(config), cert]) == ExitCode.GOOD
    assert len(proxy.requests()) == 1
    capsys.readouterr()
