"""The promise, judged by the strict clients on the real servers.

A must-staple certificate makes Firefox, GnuTLS (`gnutls-cli --ocsp`) and curl (`curl
--cert-status`) refuse a handshake that brings no valid staple. Each test serves one such
certificate from a real server (nginx, HAProxy, lighttpd, Apache) and has the three clients
judge their first handshakes, each against a server just started (nothing cached, no session
to resume; lighttpd's test keeps one running, and mustaple delivers to it), at TLS 1.3 (the
staple in the Certificate message) and at TLS 1.2 (in a CertificateStatus message). Without
mustaple (nginx's own stapling, which fetches only once a first client came, and has nothing
while the CA answers tryLater; no staple file yet) every client refuses; with the staple a
real `mustaple prime` delivered, as a deploy hook runs it, every client accepts. Apache,
which fetches for itself, fails asking the CA while it answers tryLater, and passes asking a
real `mustaple run`'s local responder. The judges are those of the client matrix
(`mustaple.testing.judges`, docs/strictness.md).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, AsyncExitStack, nullcontext
from functools import partial
from pathlib import Path

import pytest

from mustaple.core.report import ExitCode
from mustaple.testing import CA, Behaviour, Leaf, LeafFiles, ResponderThread
from mustaple.testing.judges import Firefox, Verdict, Workspace, curl, gnutls
from mustaple.testing.matrix import HOSTNAME
from outside import end_all, http_get, wait_for
from servers import ApacheServer, HAProxyServer, LighttpdServer, NginxServer, Server, free_port
from test_sinks import haproxy_pem

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
REFUSED = {  # each client's words for a must-staple certificate served with no staple
    "firefox": Verdict(False, "MOZILLA_PKIX_ERROR_REQUIRED_TLS_FEATURE_MISSING"),
    "gnutls": Verdict(False, "OCSP status missing"),
    "curl": Verdict(False, "No OCSP response received"),
}
ACCEPTED = dict.fromkeys(REFUSED, Verdict(True))


class Site:
    """A must-staple leaf for localhost from a CA whose responder runs, the clients' roots,
    and a mustaple configuration to fill in."""

    def __init__(self, tmp: Path, responder: ResponderThread, ca: CA) -> None:
        self.tmp, self.responder, self.responder_url = tmp, responder, responder.url
        self.leaf: Leaf = ca.issue(HOSTNAME, ocsp_urls=[responder.url])
        responder.add(self.leaf)
        self.files: LeafFiles = self.leaf.write(tmp / "site")
        self.workspace = Workspace(tmp / "clients", [self.leaf.root])

    def prime(self, sink: str, paths: list[Path]) -> subprocess.CompletedProcess[str]:
        """A real `mustaple prime` of `paths` through the sink whose TOML table is `sink`."""
        config = self.tmp / "mustaple.toml"
        config.write_text(
            f'state_dir = "{self.tmp}/state"\n\n[[certificates]]\n'
            f"paths = {json.dumps(list(map(str, paths)))}\n\n{sink}\n"
        )
        command = [MUSTAPLE, "prime", "--config", str(config), *map(str, paths)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    ca = CA(key_type="ec")
    with ResponderThread(ca) as responder:
        yield Site(tmp_path, responder, ca)


def first_handshakes(
    site: Site,
    server: Callable[[], AbstractContextManager[Server]],
    clients: tuple[str, ...] = tuple(REFUSED),
    *,
    tls12: bool = False,
) -> dict[str, Verdict]:
    """Each client's verdict on its first handshake with `server()` (entered: started); with
    `tls12`, every client at TLS 1.2 at most (the staple in a CertificateStatus message,
    not in the TLS 1.3 Certificate message)."""

    async def judge() -> dict[str, Verdict]:
        verdicts = {}
        async with AsyncExitStack() as stack:
            if "firefox" in clients:
                browser = Firefox([site.leaf.root], tls12=tls12)
                firefox = await stack.enter_async_context(browser)
            for client in clients:
                with server() as started:
                    if client == "firefox":
                        verdicts[client] = await firefox.judge(started.port)
                    else:
                        cli = partial(gnutls if client == "gnutls" else curl, tls12=tls12)
                        verdicts[client] = await asyncio.to_thread(
                            cli, site.workspace, started.port
                        )
        return verdicts

    return asyncio.run(judge())


def test_nginx_fed_by_mustaple_passes_where_its_own_stapling_fails(
    site: Site, tmp_path: Path
) -> None:
    files = site.files
    staple = tmp_path / "staples" / f"{HOSTNAME}.der"
    sink = f'[sinks.nginx]\ntype = "file"\npath = "{staple.parent}/{{name}}.der"'
    primed = site.prime(sink, [files.fullchain])  # the deploy hook, while the CA answers
    assert primed.returncode == ExitCode.GOOD, primed.stdout + primed.stderr

    def own() -> NginxServer:  # nginx asks the CA itself, once a first client came
        return NginxServer(
            tmp_path / "nginx-own",
            cert=files.fullchain,
            key=files.key,
            responder=site.responder_url,
            trusted=files.root,
        )

    def fed() -> NginxServer:
        return NginxServer(
            tmp_path / "nginx", cert=files.fullchain, key=files.key, stapling_file=staple
        )

    # the CA answers: the first client of nginx's own stapling still gets nothing (Firefox,
    # which tries again at once after a refused handshake, found the staple fetched meanwhile)
    cli = ("gnutls", "curl")
    assert first_handshakes(site, own, cli) == {c: REFUSED[c] for c in cli}
    site.responder.set_behaviour(Behaviour.TRY_LATER)  # then the CA has a hiccup
    assert first_handshakes(site, own) == REFUSED
    assert first_handshakes(site, fed) == ACCEPTED
    assert first_handshakes(site, fed, tls12=True) == ACCEPTED


def test_haproxy_started_after_mustaple_prime_passes(site: Site, tmp_path: Path) -> None:
    pem = haproxy_pem(site.leaf, tmp_path / "certs")

    def haproxy() -> HAProxyServer:
        return HAProxyServer(tmp_path / "haproxy", pem=pem)

    assert first_handshakes(site, haproxy) == REFUSED  # no <crt>.ocsp yet
    assert first_handshakes(site, haproxy, tls12=True) == REFUSED

    stopped = haproxy()  # HAProxy is stopped: nothing listens at its socket, which is fine
    socket = stopped.api_socket
    stopped.stop()  # its socket directory goes
    primed = site.prime(f'[sinks.haproxy]\ntype = "haproxy"\nsocket = "{socket}"', [pem])
    assert primed.returncode == ExitCode.GOOD, primed.stdout + primed.stderr
    assert Path(f"{pem}.ocsp").is_file()
    assert first_handshakes(site, haproxy) == ACCEPTED
    assert first_handshakes(site, haproxy, tls12=True) == ACCEPTED


def test_running_lighttpd_passes_once_mustaple_prime_delivered(site: Site, tmp_path: Path) -> None:
    files = site.files
    staple = tmp_path / "staples" / "site.der"  # missing: lighttpd logs it and staples nothing
    lighttpd = LighttpdServer(
        tmp_path / "lighttpd", cert=files.fullchain, key=files.key, stapling_file=staple
    )

    def same() -> AbstractContextManager[Server]:  # the one running lighttpd, for every client
        return nullcontext(lighttpd)

    with lighttpd:
        assert first_handshakes(site, same) == REFUSED
        sink = (
            f'[sinks.lighttpd]\ntype = "file"\npath = "{staple}"\n'
            f'reload = "{lighttpd.reload_command}"\nrunning = "kill -0 {lighttpd.pid}"'
        )
        primed = site.prime(sink, [files.fullchain])
        assert primed.returncode == ExitCode.GOOD, primed.stdout + primed.stderr
        assert first_handshakes(site, same) == ACCEPTED  # the reload mustaple ran took it
        assert first_handshakes(site, same, tls12=True) == ACCEPTED


def test_apache_asking_mustaple_passes_while_the_ca_has_a_hiccup(
    site: Site, tmp_path: Path
) -> None:
    files, port = site.files, free_port()
    primed = site.prime(f'[http]\nlisten = "127.0.0.1:{port}"', [files.fullchain])
    assert primed.returncode == ExitCode.GOOD, primed.stdout + primed.stderr
    keeper = subprocess.Popen([MUSTAPLE, "run", "--config", str(site.tmp / "mustaple.toml")])
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/status")[0] == 200)
        site.responder.set_behaviour(Behaviour.TRY_LATER)

        def apache(responder: str) -> Callable[[], ApacheServer]:
            directory = tmp_path / f"apache-{len(responder)}"
            return lambda: ApacheServer(
                directory, cert=files.fullchain, key=files.key, responder=responder
            )

        # mod_ssl fetches in the handshake: from the CA it gets tryLater and staples nothing
        assert first_handshakes(site, apache(site.responder_url)) == REFUSED
        local = f"http://127.0.0.1:{port}/ocsp"  # mustaple's local responder, as documented
        assert first_handshakes(site, apache(local)) == ACCEPTED
        assert first_handshakes(site, apache(local), tls12=True) == ACCEPTED
    finally:
        end_all([keeper])
