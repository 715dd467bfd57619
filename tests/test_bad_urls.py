"""Malformed responder URLs, from a certificate's AIA or from `urls` / --url: one line and a
documented exit code, never an exception; a good URL beside a bad one is still used."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from mustaple.adapters.fetch import fetch_staple
from mustaple.cli import main
from mustaple.core.certs import make_target
from mustaple.core.reasons import Reason
from mustaple.core.report import ExitCode
from mustaple.core.urls import url_host, url_problem
from mustaple.testing import CA, ResponderThread

BAD_URLS = [
    "http://[::1/",
    "http://127.0.0.1:99999/",
    "http://127.0.0.1:0/",
    "http://host:8x/",
    "http://a b/",
    "ftp://127.0.0.1/",
    "http:///nohost",
    "http://127.0.0.1/\x00",
    "http://ocsp..example.test/",
    "http://" + "x" * 64 + ".example/",
]


@pytest.fixture(scope="module")
def responder() -> Iterator[ResponderThread]:
    with ResponderThread(CA()) as thread:
        yield thread


@pytest.mark.parametrize("url", BAD_URLS)
def test_url_problem_names_the_url(url: str) -> None:
    problem = url_problem(url)
    assert problem is not None
    assert "\n" not in problem
    assert repr(url)[:20] in problem


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/", "https://[::1]:443/ocsp", "http://r3.o"])
def test_url_problem_accepts_good_urls(url: str) -> None:
    assert url_problem(url) is None


def test_url_host_never_raises() -> None:
    assert url_host("http://[::1/") == ""
    assert url_host("http://OCSP.Example:99999/") == "ocsp.example"
    assert url_host("http://[::1]:80/") == "::1"


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_aia_url_is_a_rejection_not_an_exception(url: str) -> None:
    ca = CA()
    leaf = ca.issue("bad-aia.test", ocsp_urls=[url])
    result = asyncio.run(fetch_staple(make_target(leaf.cert, leaf.issuer), urls=()))
    assert result.rejection is not None
    assert result.rejection.reason is Reason.BAD_URL
    assert "AIA" in result.rejection.message
    assert result.attempts == ()  # nothing was sent


def test_a_good_url_after_a_bad_one_is_still_used(responder: ResponderThread) -> None:
    leaf = responder.responder.ca.issue("mixed.test", ocsp_urls=["http://[::1/", responder.url])
    responder.add(leaf)
    result = asyncio.run(fetch_staple(make_target(leaf.cert, leaf.issuer)))
    assert result.staple is not None
    assert result.staple.good


def test_a_bad_override_names_the_urls_key(responder: ResponderThread) -> None:
    leaf = responder.responder.ca.issue("override.test", ocsp_urls=[])
    target = make_target(leaf.cert, leaf.issuer)
    result = asyncio.run(fetch_staple(target, urls=["http://[::1/"]))
    assert result.rejection is not None
    assert result.rejection.reason is Reason.BAD_URL
    assert "`urls`" in result.rejection.message


@pytest.mark.parametrize("url", ["http://[::1/", "http://127.0.0.1:99999/"])
def test_fetch_with_a_bad_aia_url_exits_1_with_one_line(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = CA().issue("bad.test", ocsp_urls=[url]).write(tmp_path)
    code = main(["fetch", str(files.fullchain), "--attempts", "1"])
    out, err = capsys.readouterr()
    assert code == ExitCode.NO_STAPLE, err
    assert out.count("\n") == 1
    assert "malformed" in out
    assert err == ""


def test_fetch_with_a_bad_url_option_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = CA().issue("opt.test", ocsp_urls=[]).write(tmp_path)
    code = main(["fetch", str(files.fullchain), "--url", "http://127.0.0.1:99999/"])
    _, err = capsys.readouterr()
    assert code == ExitCode.USAGE
    assert "--url" in err
    assert "Port out of range" in err


@pytest.mark.parametrize("url", ["http://[::1/", "http://127.0.0.1:99999/", "http://a b/"])
def test_check_config_refuses_a_bad_urls_entry(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mustaple.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\n[[certificates]]\npaths = ["/x.pem"]\nurls = [{url!r}]\n'
    )
    code = main(["run", "--config", str(config), "--check-config"])
    _, err = capsys.readouterr()
    assert code == ExitCode.USAGE
    assert err.count("\n") == 1
    assert "certificates[0].urls:" in err


def _prime_config(tmp_path: Path) -> Path:
    config = tmp_path / "mustaple.toml"
    config.write_text(f"""
state_dir = "{tmp_path}/state"
[[certificates]]
paths = ["{tmp_path}/live/*/fullchain.pem"]
[sinks.files]
type = "file"
path = "{tmp_path}/staples/{{name}}.der"
[policy]
timeout = "1s"
attempts = 1
""")
    return config


def test_prime_with_a_bad_port_in_the_aia_fails_that_certificate_only(
    tmp_path: Path, responder: ResponderThread, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = responder.responder.ca
    good = ca.issue("good.test", ocsp_urls=[responder.url])
    responder.add(good)
    good_files = good.write(tmp_path / "live" / "good")
    bad_files = ca.issue("bad.test", ocsp_urls=["http://127.0.0.1:99999/"]).write(
        tmp_path / "live" / "bad"
    )
    config = _prime_config(tmp_path)
    argv = ["prime", "--config", str(config), str(good_files.fullchain), str(bad_files.fullchain)]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == ExitCode.NO_STAPLE, err
    assert "OK good.test" in out
    assert "FAILED bad.test" in out
    assert "malformed" in out
    assert (tmp_path / "staples" / "good.test.der").stat().st_size > 0


def test_prime_with_a_broken_ipv6_aia_fails_that_certificate_only(
    tmp_path: Path, responder: ResponderThread, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = responder.responder.ca
    bad_files = ca.issue("v6.test", ocsp_urls=["http://[::1/"]).write(tmp_path / "live" / "v6")
    code = main(["prime", "--config", str(_prime_config(tmp_path)), str(bad_files.fullchain)])
    out, err = capsys.readouterr()
    assert code == ExitCode.NO_STAPLE, err
    assert "FAILED v6.test" in out
