"""One validated responder URL for every stapler: servers that fetch their own staples, pointed
at mustaple's local responder (docs/integrations/responder-url.md).

Each test: the keeper holds a staple fetched from the CA; the server starts, pointed at the
local responder; the first handshake carries mustaple's exact bytes, and the CA's responder
was not asked again. Where a server does not do that (Caddy with certificates from files,
nginx's lazy stapling), the test pins down what it does instead, as the page says.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mustaple.adapters.probe import ProbeResult, probe
from mustaple.check import Issuer, judge, report_lines
from mustaple.cli import main
from reach_servers import CaddyServer, JsseServer, NatsServer, compile_jsse_server
from servers import ApacheServer, NginxServer, staple_from
from test_localresponder import NAME, LiveStack, first_staple


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    with LiveStack(tmp_path / "mustaple") as stack:
        yield stack


@pytest.fixture(scope="session")
def jsse_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_jsse_server(tmp_path_factory.mktemp("jsse"))


def test_nats_staples_mustaples_bytes_from_the_first_connection(
    live: LiveStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf, _, held = live.call(live.stapled())
    files = leaf.write(tmp_path / "site")
    asked = live.call(live.asked())
    nats = NatsServer(tmp_path / "nats", cert=files.fullchain, key=files.key, responder=live.url)
    with nats:
        first = probe("127.0.0.1", nats.port, servername=NAME, starttls="nats")
        code = main(["check", f"127.0.0.1:{nats.port}", "--starttls", "nats"])
    assert first.staple == held.der
    assert live.call(live.asked()) == asked  # nats-server never asked the CA
    assert code == 0
    assert capsys.readouterr().out.startswith(f"OK {NAME}: safe for must-staple")


def test_java_jsse_staples_mustaples_bytes_from_the_first_connection(
    live: LiveStack, tmp_path: Path, jsse_classes: Path
) -> None:
    leaf, _, held = live.call(live.stapled())
    asked = live.call(live.asked())
    server = JsseServer(tmp_path / "jsse", leaf=leaf, classes=jsse_classes, responder=live.url)
    with server:
        first = staple_from(server.port, NAME)
        again = staple_from(server.port, NAME)
    assert first == held.der  # JSSE fetches during the first handshake, then caches
    assert again == held.der
    assert live.call(live.asked()) == asked


def test_caddy_ignores_ocsp_overrides_for_certificates_from_files(
    live: LiveStack, tmp_path: Path
) -> None:
    """Caddy 2.6 staples certificates loaded from files at start, but with a configuration
    that leaves out `ocsp_overrides`: it asks the CA itself (the page says so)."""
    leaf, _, held = live.call(live.stapled())
    files = leaf.write(tmp_path / "site")
    asked = live.call(live.asked())
    caddy = CaddyServer(
        tmp_path / "caddy",
        cert=files.fullchain,
        key=files.key,
        original=live.responder.url,
        responder=live.url,
    )
    with caddy:
        first = staple_from(caddy.port, NAME)
    assert first == held.der  # the CA's responder gives the same bytes for a minute
    assert live.call(live.asked()) == asked + 1  # but Caddy fetched them from the CA


def test_apache_fetches_during_the_first_handshake(live: LiveStack, tmp_path: Path) -> None:
    """Apache is not lazy like nginx: the first client waits while it fetches, then gets it."""
    leaf, _, held = live.call(live.stapled())
    files = leaf.write(tmp_path / "site")
    asked = live.call(live.asked())
    server = ApacheServer(
        tmp_path / "apache", cert=files.fullchain, key=files.key, responder=live.url
    )
    with server:
        assert staple_from(server.port, NAME) == held.der
    assert live.call(live.asked()) == asked


def test_nginx_stays_lazy_with_the_override(live: LiveStack, tmp_path: Path) -> None:
    leaf, _, held = live.call(live.stapled())
    files = leaf.write(tmp_path / "site")
    asked = live.call(live.asked())
    server = NginxServer(
        tmp_path / "nginx",
        cert=files.fullchain,
        key=files.key,
        responder=live.url,
        trusted=files.chain,
    )
    with server:
        assert staple_from(server.port, NAME) is None  # the first client gets nothing
        later = first_staple(server)  # then nginx fetches, from mustaple
    assert later == held.der
    assert live.call(live.asked()) == asked


def test_check_says_what_to_do_about_a_lazy_stapler(live: LiveStack) -> None:
    leaf, _, held = live.call(live.stapled())
    chain = (leaf.cert, leaf.issuer)
    results = [
        ProbeResult(chain=chain, staple=staple, tls_version="1.3", verified=None)
        for staple in (None, held.der, held.der)
    ]
    now = datetime.now(UTC)
    report = judge(results, Issuer(leaf.issuer, "chain"), now, server="lazy:443")
    last = report_lines(report)[-1]
    assert "(none on the first: lazy stapling)" in last
    assert last.endswith(
        "the server fetches its staple only after a client has asked (nginx does, even "
        "pointed at a responder URL): hand it the staple as a file instead"
    )
