"""The sinks against real servers, and their own rules.

nginx, lighttpd and HAProxy are started for real on loopback (tests/servers.py) with the staple
mustaple delivered, fetched from the misbehaving test responder: each must staple it on the
very first handshake, and serve a newer one once it is delivered. nginx's own stapling is the
comparison: nothing on the first handshake. Then the sinks' rules without a server: files and
reloads, the command's environment and failures, and config errors that name the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from conftest import build_response, fake_staple
from hungfs import HungFS
from mustaple.adapters.fetch import fetch_staple
from mustaple.adapters.probe import probe
from mustaple.adapters.sinks import (
    SinkConfigError,
    SocketAddress,
    _Looks,
    build_sink,
    build_sinks,
)
from mustaple.adapters.store import cert_key
from mustaple.core.certs import make_target
from mustaple.core.delivery import Action, Delivered, Delivery, Sink
from mustaple.core.render import human_time
from mustaple.core.request import make_cert_id
from mustaple.core.verify import Staple
from mustaple.testing import (
    CA,
    Behaviour,
    Leaf,
    LeafFiles,
    ResponderThread,
    craft_response,
    good_single,
    good_spec,
)
from servers import (
    HAProxyServer,
    LighttpdServer,
    NginxServer,
    ServerError,
    free_port,
    staple_from,
)

NAME = "www.example.test"
WAIT = 10.0  # seconds a reloading server may take to serve the new staple


class StepClock:
    """The responder's clock: six hours ago, moved on two minutes for each fresh staple
    (room for the module's 180 fresh staples before it reaches the present)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Pki:
    ca: CA
    leaf: Leaf
    clock: StepClock
    responder: ResponderThread

    def fresh(self) -> Staple:
        """A new staple from the responder, with a later thisUpdate than the one before."""
        self.clock.now += timedelta(minutes=2)
        result = asyncio.run(fetch_staple(make_target(self.leaf.cert, self.leaf.issuer)))
        assert result.staple is not None, result.rejection
        return result.staple

    def delivery(self, cert_path: Path, der: bytes | None, *, with_issuer: bool = True) -> Delivery:
        """STAPLE `der`, or REMOVE when it is None."""
        return Delivery(
            key=cert_key(self.leaf.cert),
            name=NAME,
            cert_path=cert_path,
            action=Action.STAPLE if der is not None else Action.REMOVE,
            der=der,
            issuer_pem=self.leaf.issuer.public_bytes(serialization.Encoding.PEM),
            bundle_has_issuer=with_issuer,
            status="good" if der is not None else "revoked",
        )


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    clock = StepClock()
    ca = CA(key_type="ec")
    with ResponderThread(ca, clock=clock) as responder:
        leaf = ca.issue(NAME, ocsp_urls=[responder.url])
        responder.add(leaf)
        yield Pki(ca, leaf, clock, responder)


@pytest.fixture
def files(pki: Pki, tmp_path: Path) -> LeafFiles:
    return pki.leaf.write(tmp_path / "cert")


def deliver(sink: Sink, *batch: Delivery) -> list[Delivered]:
    return asyncio.run(sink.deliver(batch))


def revoked_answer(pki: Pki) -> bytes:
    """A valid answer from the CA saying the leaf is revoked."""
    pki.responder.set_behaviour(Behaviour.REVOKED)
    try:
        revoked = pki.fresh()
    finally:
        pki.responder.set_behaviour(Behaviour.GOOD)
    assert not revoked.good
    return revoked.der


def outcome(delivered: Delivered) -> tuple[str | None, bool]:
    """(error, changed): a failing comparison shows the error."""
    return delivered.error, delivered.changed


def served(port: int) -> bytes | None:
    """What the first client gets, as openssl s_client sees it; mustaple's probe agrees."""
    staple = staple_from(port, NAME)
    assert probe("127.0.0.1", port, servername=NAME).staple == staple
    return staple


def wait_for(port: int, expected: bytes | None) -> None:
    """Until the server staples `expected` (a reload takes a moment); fail after WAIT s."""
    deadline = time.monotonic() + WAIT
    seen: bytes | str | None = "nothing yet"
    while time.monotonic() < deadline:
        try:
            seen = staple_from(port, NAME)
        except ServerError as exc:
            seen = str(exc)
        if seen == expected:
            return
        time.sleep(0.05)
    pytest.fail(f"port {port} still staples {seen!r:.80}")


# --- nginx ----------------------------------------------------------------------------------------


def test_nginx_staples_the_delivered_file_from_the_first_handshake(
    pki: Pki, files: LeafFiles, tmp_path: Path
) -> None:
    template = str(tmp_path / "staples" / "{name}.der")
    first = pki.fresh()
    [primed] = deliver(
        build_sink("nginx", {"type": "file", "path": template}),
        pki.delivery(files.fullchain, first.der),
    )
    assert outcome(primed) == (None, True)
    staple_file = tmp_path / "staples" / f"{NAME}.der"
    server = NginxServer(
        tmp_path / "nginx", cert=files.fullchain, key=files.key, stapling_file=staple_file
    )
    with server:
        assert served(server.port) == first.der
        reloads = tmp_path / "reloads"
        reload = f"{server.reload_command} && echo reloaded >> {reloads}"
        sink = build_sink("nginx", {"type": "file", "path": template, "reload": reload})
        second = pki.fresh()
        assert second.this_update > first.this_update
        [done] = deliver(sink, pki.delivery(files.fullchain, second.der))
        assert outcome(done) == (None, True)
        wait_for(server.port, second.der)
        server.settle()  # no worker with the first staple left
        [again] = deliver(sink, pki.delivery(files.fullchain, second.der))
        assert outcome(again) == (None, False)
        assert reloads.read_text().split() == ["reloaded"]
        [removed] = deliver(sink, pki.delivery(files.fullchain, None))
        assert removed.changed
        assert "reload failed:" in (removed.error or "")  # nginx refuses a missing file...
        assert "BIO_new_file" in (removed.error or "")
        assert served(server.port) == second.der  # ...and goes on with what it has


def test_nginx_with_remove_keep_reloads_fine_after_a_removal(
    pki: Pki, files: LeafFiles, tmp_path: Path
) -> None:
    """`remove = "keep"` is the nginx setting: the file stays, so reloads keep working."""
    template = str(tmp_path / "staples" / "{name}.der")
    staple = pki.fresh()
    deliver(
        build_sink("n", {"type": "file", "path": template}),
        pki.delivery(files.fullchain, staple.der),
    )
    staple_file = tmp_path / "staples" / f"{NAME}.der"
    server = NginxServer(
        tmp_path / "nginx", cert=files.fullchain, key=files.key, stapling_file=staple_file
    )
    with server:
        table = {
            "type": "file",
            "path": template,
            "reload": server.reload_command,
            "remove": "keep",
        }
        [removed] = deliver(build_sink("n", table), pki.delivery(files.fullchain, None))
        assert outcome(removed) == (None, False)
        assert staple_file.read_bytes() == staple.der
        newer = pki.fresh()
        [done] = deliver(build_sink("n", table), pki.delivery(files.fullchain, newer.der))
        assert outcome(done) == (None, True)
        wait_for(server.port, newer.der)


def test_nginx_own_stapling_sends_nothing_on_the_first_handshake(
    pki: Pki, files: LeafFiles, tmp_path: Path
) -> None:
    server = NginxServer(
        tmp_path / "nginx",
        cert=files.fullchain,
        key=files.key,
        responder=pki.responder.url,
        trusted=files.chain,
    )
    with server:
        assert staple_from(server.port, NAME) is None  # nginx only now asks the responder
        deadline = time.monotonic() + WAIT
        while staple_from(server.port, NAME) is None:
            assert time.monotonic() < deadline, "nginx never stapled its own response"
            time.sleep(0.05)


# --- lighttpd -------------------------------------------------------------------------------------


def test_lighttpd_staples_the_delivered_file_from_the_first_handshake(
    pki: Pki, files: LeafFiles, tmp_path: Path
) -> None:
    path = str(tmp_path / "staples" / "{stem}.der")
    first = pki.fresh()
    [primed] = deliver(
        build_sink("lighttpd", {"type": "file", "path": path}),
        pki.delivery(files.fullchain, first.der),
    )
    assert outcome(primed) == (None, True)
    server = LighttpdServer(
        tmp_path / "lighttpd",
        cert=files.fullchain,
        key=files.key,
        stapling_file=tmp_path / "staples" / "fullchain.der",
    )
    with server:
        assert served(server.port) == first.der
        sink = build_sink(
            "lighttpd", {"type": "file", "path": path, "reload": server.reload_command}
        )
        second = pki.fresh()
        [done] = deliver(sink, pki.delivery(files.fullchain, second.der))
        assert outcome(done) == (None, True)
        wait_for(server.port, second.der)
        revoked = revoked_answer(pki)
        took = replace(pki.delivery(files.fullchain, revoked), action=Action.REVOKED)
        [done] = deliver(sink, took)
        assert outcome(done) == (None, True)
        wait_for(server.port, revoked)  # lighttpd staples the CA's revoked answer
        [removed] = deliver(sink, pki.delivery(files.fullchain, None))
        assert outcome(removed) == (None, True)
        wait_for(server.port, None)  # lighttpd goes on without a staple file


# --- HAProxy --------------------------------------------------------------------------------------


def haproxy_pem(leaf: Leaf, directory: Path, *, chain: bool = True) -> Path:
    """The one PEM HAProxy loads: the certificate (and its chain), then the key."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = directory / "site.pem"
    pem.write_bytes((leaf.fullchain_pem if chain else leaf.cert_pem) + leaf.key_pem)
    return pem


def test_haproxy_takes_a_new_staple_over_its_socket_without_reload(
    pki: Pki, tmp_path: Path
) -> None:
    pem = haproxy_pem(pki.leaf, tmp_path / "certs")
    server = HAProxyServer(tmp_path / "haproxy", pem=pem)
    sink = build_sink("haproxy", {"type": "haproxy", "socket": str(server.api_socket)})
    first = pki.fresh()
    [primed] = deliver(sink, pki.delivery(pem, first.der))  # HAProxy is not running yet
    assert primed.changed
    assert primed.ok  # in place for HAProxy's start: what `prime` before the server needs
    assert re.search(
        "HAProxy is not running .* it reads .*site.pem.ocsp at its start", primed.note or ""
    )
    assert Path(f"{pem}.ocsp").read_bytes() == first.der
    with server:
        assert served(server.port) == first.der
        worker = server.worker_pid()
        second = pki.fresh()
        [done] = deliver(sink, pki.delivery(pem, second.der))
        assert outcome(done) == (None, True)
        assert served(server.port) == second.der
        assert server.worker_pid() == worker  # the same process: no reload
        assert Path(f"{pem}.ocsp").read_bytes() == second.der
        revoked = revoked_answer(pki)
        took = replace(pki.delivery(pem, revoked), action=Action.REVOKED, status="revoked")
        [done] = deliver(sink, took)
        assert outcome(done) == (None, True)
        assert served(server.port) == revoked  # HAProxy takes the CA's revoked answer
        assert server.worker_pid() == worker


def test_haproxy_whose_ocsp_dir_hangs_still_takes_each_staple_over_its_socket(
    pki: Pki, tmp_path: Path
) -> None:
    """`ocsp_dir` on a file system that hangs (a real FUSE mount, tests/hungfs.py): the
    delivery fails after the patience naming the `.ocsp` file, the next one at once, and
    the running HAProxy takes each staple all the same."""
    pem = haproxy_pem(pki.leaf, tmp_path / "certs")
    Path(f"{pem}.ocsp").write_bytes(pki.fresh().der)  # what HAProxy loads at its start
    server = HAProxyServer(tmp_path / "haproxy", pem=pem)
    with HungFS(["hang.pem"]) as hung, server:
        table = {"type": "haproxy", "socket": str(server.api_socket)}
        table["ocsp_dir"] = str(hung.root / "hang.pem")
        sink = build_sink("haproxy", table, patience=timedelta(seconds=1))
        second = pki.fresh()
        [done] = deliver(sink, pki.delivery(pem, second.der))
        assert not done.ok
        assert f"{hung.root}/hang.pem/site.pem.ocsp has not answered in 1s" in (done.error or "")
        assert served(server.port) == second.der
        third = pki.fresh()
        began = time.monotonic()
        [again] = deliver(sink, pki.delivery(pem, third.der))
        assert time.monotonic() - began < 1  # no second wait on the file system
        assert "site.pem.ocsp has not answered for" in (again.error or "")
        assert served(server.port) == third.der
        hung.release()


def test_haproxy_socket_over_tcp_and_through_the_master_cli(pki: Pki, tmp_path: Path) -> None:
    pem = haproxy_pem(pki.leaf, tmp_path / "certs")
    Path(f"{pem}.ocsp").write_bytes(pki.fresh().der)
    with HAProxyServer(tmp_path / "haproxy", pem=pem) as server:
        tcp = {"type": "haproxy", "socket": f"127.0.0.1:{server.api_port}"}
        master = {"type": "haproxy", "socket": str(server.master_socket), "master": True}
        for table in (tcp, master):
            staple = pki.fresh()
            [done] = deliver(build_sink("haproxy", table), pki.delivery(pem, staple.der))
            assert done.ok, done.error
            assert served(server.port) == staple.der
    nobody = {"type": "haproxy", "socket": f"127.0.0.1:{free_port()}", "timeout": "2s"}
    [refused] = deliver(build_sink("haproxy", nobody), pki.delivery(pem, pki.fresh().der))
    assert refused.ok  # nothing listens: HAProxy is down, and the file is in place for its start
    assert "HAProxy is not running" in (refused.note or "")
    with socket.socket() as silent:  # listens, never answers: that is a failure
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = {"type": "haproxy", "socket": f"127.0.0.1:{silent.getsockname()[1]}"}
        [stuck] = deliver(
            build_sink("haproxy", {**mute, "timeout": "1s"}), pki.delivery(pem, pki.fresh().der)
        )
    assert "cannot reach HAProxy" in (stuck.error or "")


def stale_socket(path: Path) -> None:
    """A unix socket file nothing listens on, as a stopped HAProxy leaves its own."""
    with socket.socket(socket.AF_UNIX) as unused:
        unused.bind(str(path))


def test_haproxy_running_with_nothing_at_socket_fails_until_it_answers(
    pki: Pki, tmp_path: Path
) -> None:
    """HAProxy runs (its `running` check says so) but nothing answers at `socket` (a typo, a
    `stats socket` line not loaded yet): each new staple would never reach it while the sink
    said OK. It fails, naming the socket and what to fix, the file written and the push owed;
    once the socket answers, the retry hands the same staple over, with no reload."""
    pem = haproxy_pem(pki.leaf, tmp_path / "certs")
    first = pki.fresh()
    Path(f"{pem}.ocsp").write_bytes(first.der)
    with HAProxyServer(tmp_path / "haproxy", pem=pem) as server:
        worker = server.worker_pid()
        wrong = server.api_socket.with_name("typo.sock")
        running = f"kill -0 {server.pid}"
        sink = build_sink("h", {"type": "haproxy", "socket": str(wrong), "running": running})
        second = pki.fresh()
        [missing] = deliver(sink, pki.delivery(pem, second.der))
        stale_socket(wrong)
        [refused] = deliver(sink, pki.delivery(pem, second.der))
        for failed, why in ((missing, "No such file or directory"), (refused, "refused")):
            assert not failed.ok
            assert failed.reload_owed
            runs = f"HAProxy runs (its `running` check exits 0) but nothing listens at {wrong}: "
            assert (failed.error or "").startswith(runs)
            assert why in (failed.error or "")
            assert "`stats socket ... level admin` line" in (failed.error or "")
            assert f"{pem}.ocsp is written" in (failed.error or "")
            assert "\n" not in (failed.error or "")
        assert missing.changed
        assert not refused.changed
        assert Path(f"{pem}.ocsp").read_bytes() == second.der
        assert served(server.port) == first.der  # the running HAProxy never got it
        wrong.unlink()
        wrong.symlink_to(server.api_socket)  # the socket answers at the configured path
        [healed] = deliver(sink, pki.delivery(pem, second.der))  # the retry
        assert outcome(healed) == (None, False)
        assert not healed.reload_owed
        assert healed.note is None
        assert served(server.port) == second.der
        assert server.worker_pid() == worker  # pushed, not reloaded


def test_haproxy_not_running_stays_ok_with_or_without_a_running_check(
    pki: Pki, tmp_path: Path
) -> None:
    """A stopped HAProxy (no socket file, or the one it left behind, refusing) is no failure:
    the file is in place for its start. The `running` check says so when it fails; without
    one, nothing listening at the socket is taken for it. A removal reloads no stopped
    HAProxy."""
    pem = haproxy_pem(pki.leaf, tmp_path / "certs")
    with HAProxyServer(tmp_path / "haproxy", pem=pem) as server:
        stopped = server.pid
    gone = tmp_path / "gone.sock"
    left = tmp_path / "left.sock"
    stale_socket(left)
    for path in (gone, left):
        for extra in ({}, {"running": f"kill -0 {stopped}"}):
            sink = build_sink("h", {"type": "haproxy", "socket": str(path), **extra})
            staple = pki.fresh()
            [done] = deliver(sink, pki.delivery(pem, staple.der))
            assert outcome(done) == (None, True)
            assert not done.reload_owed
            assert "HAProxy is not running (" in (done.note or "")
            assert f"nothing listens at {path}: " in (done.note or "")
            assert f"it reads {pem}.ocsp at its start" in (done.note or "")
            assert ("`kill -0" in (done.note or "")) == bool(extra)
            assert Path(f"{pem}.ocsp").read_bytes() == staple.der
    reload = {"reload": "exit 1", "running": f"kill -0 {stopped}"}  # its reload would fail
    sink = build_sink("h", {"type": "haproxy", "socket": str(gone), **reload})
    [removed] = deliver(sink, pki.delivery(pem, None))
    assert outcome(removed) == (None, True)  # nothing served: nothing to reload
    assert "the server is not running (`kill -0" in (removed.note or "")
    assert Path(f"{pem}.ocsp").read_bytes() == b""


def test_haproxy_running_check_that_cannot_run_is_a_failure(pki: Pki, tmp_path: Path) -> None:
    pem = haproxy_pem(pki.leaf, tmp_path / "certs")
    table = {"type": "haproxy", "socket": str(tmp_path / "none.sock"), "running": "no-such-x"}
    [done] = deliver(build_sink("h", table), pki.delivery(pem, pki.fresh().der))
    assert not done.ok
    assert done.reload_owed
    assert "the `running` check cannot run (" in (done.error or "")
    assert f"nothing listens at {tmp_path / 'none.sock'}" in (done.error or "")


def test_haproxy_started_without_ocsp_file_needs_one_reload(pki: Pki, tmp_path: Path) -> None:
    pem = haproxy_pem(pki.leaf, tmp_path / "certs")
    with HAProxyServer(tmp_path / "haproxy", pem=pem) as server:
        sink = build_sink("haproxy", {"type": "haproxy", "socket": str(server.api_socket)})
        staple = pki.fresh()
        [unknown] = deliver(sink, pki.delivery(pem, staple.der))
        assert unknown.changed
        assert "does not match any certificate" in (unknown.error or "")
        assert f"if it started without {pem}.ocsp, reload it" in (unknown.error or "")
        assert staple_from(server.port, NAME) is None
        server.reload()
        wait_for(server.port, staple.der)  # the new worker read the file


def test_haproxy_started_without_ocsp_file_is_reloaded_by_a_sink_with_reload(
    pki: Pki, tmp_path: Path
) -> None:
    """The same HAProxy, started before its `.ocsp` was written (a restart while the file
    was missing): a sink with a `reload` command reloads it, so that it reads the file, and
    the delivery is done; it stayed failing, HAProxy stapling nothing, until someone else
    reloaded it."""
    pem = haproxy_pem(pki.leaf, tmp_path / "certs")
    with HAProxyServer(tmp_path / "haproxy", pem=pem) as server:
        table = {"type": "haproxy", "socket": str(server.api_socket)}
        sink = build_sink("haproxy", {**table, "reload": server.reload_command})
        staple = pki.fresh()
        [done] = deliver(sink, pki.delivery(pem, staple.der))
        assert (done.ok, done.error, done.reload_owed) == (True, None, False), done
        wait_for(server.port, staple.der)  # the new worker read the file


def test_haproxy_issuer_file_for_a_bundle_without_the_chain(pki: Pki, tmp_path: Path) -> None:
    pem = haproxy_pem(pki.leaf, tmp_path / "certs", chain=False)
    server = HAProxyServer(tmp_path / "haproxy", pem=pem)
    sink = build_sink("haproxy", {"type": "haproxy", "socket": str(server.api_socket)})
    first = pki.fresh()
    deliver(sink, pki.delivery(pem, first.der, with_issuer=False))
    issuer = pki.leaf.issuer.public_bytes(serialization.Encoding.PEM)
    assert Path(f"{pem}.issuer").read_bytes() == issuer
    with server:  # without .issuer, HAProxy refuses to start with this .ocsp
        assert served(server.port) == first.der


def test_haproxy_remove_needs_a_reload_and_keeps_the_slot(pki: Pki, tmp_path: Path) -> None:
    pem = haproxy_pem(pki.leaf, tmp_path / "certs")
    first = pki.fresh()
    Path(f"{pem}.ocsp").write_bytes(first.der)
    with HAProxyServer(tmp_path / "haproxy", pem=pem) as server:
        plain = build_sink("haproxy", {"type": "haproxy", "socket": str(server.api_socket)})
        [kept] = deliver(plain, pki.delivery(pem, None))
        assert kept.changed
        assert first.next_update is not None
        dropped_at = first.next_update - timedelta(seconds=300)
        assert f"until {dropped_at:%Y-%m-%d %H:%M:%S}Z" in (kept.error or "")
        assert Path(f"{pem}.ocsp").read_bytes() == b""
        assert served(server.port) == first.der  # HAProxy has no command to drop it
        table = {"type": "haproxy", "socket": str(server.api_socket)}
        reloading = build_sink("haproxy", {**table, "reload": server.reload_command})
        second = pki.fresh()
        assert deliver(reloading, pki.delivery(pem, second.der))[0].ok
        [removed] = deliver(reloading, pki.delivery(pem, None))
        assert outcome(removed) == (None, True)
        wait_for(server.port, None)
        third = pki.fresh()  # the empty .ocsp kept stapling on: a push works again
        assert deliver(reloading, pki.delivery(pem, third.der))[0].ok
        assert served(server.port) == third.der


def test_haproxy_rules_a_staple_must_keep(pki: Pki, tmp_path: Path) -> None:
    """HAProxy 2.6 takes one SingleResponse with a SHA-1 CertID; it stops stapling a response
    300 s before its nextUpdate, and takes one with less left, then staples nothing."""
    pem = haproxy_pem(pki.leaf, tmp_path / "certs")
    good = pki.fresh().der
    Path(f"{pem}.ocsp").write_bytes(good)
    now = datetime.now(UTC).replace(microsecond=0)
    serial = pki.leaf.cert.serial_number

    def crafted(seconds_left: int = 3600, **changes: Any) -> bytes:
        """A response whose nextUpdate is `seconds_left` from now, then `changes`."""
        validity = timedelta(hours=1, seconds=seconds_left)
        spec = good_spec(pki.leaf, pki.ca.issuing, now - timedelta(hours=1), validity=validity)
        return craft_response(replace(spec, **changes))

    sha256 = crafted(singles=[good_single(make_cert_id(pki.leaf.issuer, serial, "sha256"), now)])
    other = good_single(make_cert_id(pki.leaf.issuer, serial + 1), now)
    several = crafted(singles=[good_single(make_cert_id(pki.leaf.issuer, serial), now), other])
    with HAProxyServer(tmp_path / "haproxy", pem=pem) as server:
        sink = build_sink("haproxy", {"type": "haproxy", "socket": str(server.api_socket)})
        [by_sha256] = deliver(sink, pki.delivery(pem, sha256))
        assert "Certificate ID does not match any certificate" in (by_sha256.error or "")
        [by_several] = deliver(sink, pki.delivery(pem, several))
        assert "contains multiple single responses" in (by_several.error or "")
        assert served(server.port) == good
        [short] = deliver(sink, pki.delivery(pem, crafted(295)))
        assert outcome(short) == (None, True)  # taken, replacing the good one...
        assert staple_from(server.port, NAME) is None  # ...but never stapled
        soon = crafted(303)
        [taken] = deliver(sink, pki.delivery(pem, soon))
        assert outcome(taken) == (None, True)
        assert served(server.port) == soon
        time.sleep(max(0.0, (now + timedelta(seconds=4) - datetime.now(UTC)).total_seconds()))
        assert staple_from(server.port, NAME) is None  # 300 s before nextUpdate: dropped


def test_haproxy_removal_says_the_truth_about_the_staple_it_keeps_serving(
    pki: Pki, tmp_path: Path
) -> None:
    """HAProxy cannot drop a staple at run time: a removal fails, saying until when HAProxy
    goes on stapling the previous one (300 s before its nextUpdate), and keeps failing at
    its retries until then (the .ocsp file, emptied the first time, no longer tells); a
    previous staple HAProxy already stopped stapling by itself is no failure."""
    pem = haproxy_pem(pki.leaf, tmp_path / "certs")
    ocsp = Path(f"{pem}.ocsp")
    now = datetime.now(UTC)
    sink = build_sink("haproxy", {"type": "haproxy", "socket": str(tmp_path / "none.sock")})
    removal = pki.delivery(pem, None)
    ocsp.write_bytes(
        build_response(
            pki.leaf, pki.ca.issuing, this_update=now, next_update=now + timedelta(hours=1)
        )
    )
    first, retry = deliver(sink, removal)[0], deliver(sink, removal)[0]
    assert ocsp.read_bytes() == b""
    until = human_time((now + timedelta(hours=1) - timedelta(seconds=300)).replace(microsecond=0))
    for done in (first, retry):
        assert f"it goes on serving the previous one until {until}" in (done.error or "")
    ocsp.write_bytes(
        build_response(
            pki.leaf, pki.ca.issuing, this_update=now, next_update=now + timedelta(seconds=200)
        )
    )
    assert outcome(deliver(sink, removal)[0]) == (None, True)
    assert outcome(deliver(sink, removal)[0]) == (None, False)


def test_two_certificates_never_share_one_staple_file(pki: Pki, tmp_path: Path) -> None:
    """A template that gives two certificate files one staple file (an ECDSA and an RSA
    certificate of one name; certbot's example.com and example.com-0001): the second is
    refused, naming the first, while the first's file is there; the same certificate in two
    files, or a renewed one in its file, is no clash; a name that is no file name stays in
    the directory."""
    sink = build_sink("files", {"type": "file", "path": f"{tmp_path}/staples/{{name}}.der"})
    first, second = tmp_path / "ec" / "fullchain.pem", tmp_path / "rsa" / "fullchain.pem"
    for cert in (first, second):
        cert.parent.mkdir()
        cert.write_text("a certificate")
    ec = pki.delivery(first, fake_staple(b"EC staple"))
    rsa = replace(pki.delivery(second, fake_staple(b"RSA staple")), key="another certificate")
    done = deliver(sink, ec, rsa)
    assert outcome(done[0]) == (None, True)
    assert done[1].error is not None
    assert f"another certificate, {first}" in done[1].error
    staple = tmp_path / "staples" / f"{NAME}.der"
    assert staple.read_bytes() == fake_staple(b"EC staple")
    copy = pki.delivery(tmp_path / "copy.pem", fake_staple(b"EC staple"))  # the same certificate
    assert outcome(deliver(sink, copy)[0]) == (None, False)
    renewed = replace(pki.delivery(first, fake_staple(b"renewed")), key="the renewed certificate")
    assert outcome(deliver(sink, renewed)[0]) == (None, True)
    first.unlink()  # the other file gone: the staple file is the second's now
    assert outcome(deliver(sink, rsa)[0]) == (None, True)
    assert staple.read_bytes() == fake_staple(b"RSA staple")
    for name, written in (("..", "__"), (".", "_"), ("", "_")):
        odd = replace(pki.delivery(second, b"x"), name=name)
        assert sink.path_for(odd) == tmp_path / "staples" / f"{written}.der"  # type: ignore[attr-defined]


def test_staple_directories_are_reachable_whatever_the_umask(
    pki: Pki, files: LeafFiles, tmp_path: Path
) -> None:
    """Under a hardened umask (systemd UMask=0077) the directories a sink makes are 0755 as
    its files are 0644: a server running as another user (Exim's Debian-exim, lighttpd's
    www-data) must reach them; one made by someone else is left as it is."""
    sink = build_sink("files", {"type": "file", "path": f"{tmp_path}/a/b/{{name}}.der"})
    (tmp_path / "a").mkdir(mode=0o750)
    haproxy_dir = tmp_path / "h" / "ocsp"
    haproxy = build_sink(
        "haproxy",
        {"type": "haproxy", "socket": str(tmp_path / "none.sock"), "ocsp_dir": str(haproxy_dir)},
    )
    old = os.umask(0o077)
    try:
        [done] = deliver(sink, pki.delivery(files.fullchain, pki.fresh().der))
        deliver(haproxy, pki.delivery(files.fullchain, pki.fresh().der))
    finally:
        os.umask(old)
    assert done.ok
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "a" / "b" / f"{NAME}.der").stat().st_mode) == 0o644
    for directory in (haproxy_dir.parent, haproxy_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755


def test_two_sinks_never_give_two_certificates_one_file(pki: Pki, tmp_path: Path) -> None:
    """Two sinks of one configuration whose paths meet (each certificate with its own sink,
    both writing one file): the second certificate is refused, naming the first and its
    sink, and the file keeps the first's staple."""
    path = str(tmp_path / "staples" / "staple.der")
    sinks = build_sinks(
        {"one": {"type": "file", "path": path}, "two": {"type": "file", "path": path}}
    )
    first, second = tmp_path / "a" / "fullchain.pem", tmp_path / "b" / "fullchain.pem"
    for cert in (first, second):
        cert.parent.mkdir()
        cert.write_text("a certificate")
    [one] = deliver(sinks["one"], pki.delivery(first, fake_staple(b"A")))
    other = replace(pki.delivery(second, fake_staple(b"B")), key="another certificate")
    [two] = deliver(sinks["two"], other)
    assert outcome(one) == (None, True)
    assert two.error == (
        f"{path} holds the staple of another certificate, {first}: sink one writes it too; "
        "give the two sinks paths of their own"
    )
    assert Path(path).read_bytes() == fake_staple(b"A")
    [again] = deliver(sinks["two"], pki.delivery(first, fake_staple(b"A")))  # the same one
    assert outcome(again) == (None, False)


def test_a_sink_never_writes_over_or_removes_what_is_no_staple(
    pki: Pki, files: LeafFiles, tmp_path: Path
) -> None:
    """A file sink whose path names the certificate itself ("{dir}/{stem}.pem", a HAProxy
    habit), its key, the state database or any file that holds no OCSP response: the file is
    left as it is, for a staple and for a removal, and the delivery says why; HAProxy's
    `.ocsp` file likewise."""
    certificate = files.fullchain.read_bytes()
    state = tmp_path / "state" / "state.db"
    state.parent.mkdir()
    state.write_bytes(b"SQLite format 3\x00" + bytes(100))
    der = pki.fresh().der
    for template, victim in (("{dir}/{stem}.pem", files.fullchain), (str(state), state)):
        before = victim.read_bytes()
        sink = build_sink("oops", {"type": "file", "path": template})
        for delivery in (pki.delivery(files.fullchain, der), pki.delivery(files.fullchain, None)):
            [done] = deliver(sink, delivery)
            assert not done.changed
            assert done.error == (
                f"{victim}: holds something other than an OCSP response (a certificate, a key, "
                "the state database?): left as it is; give the sink a path of its own"
            )
            assert victim.read_bytes() == before
    assert files.fullchain.read_bytes() == certificate
    ocsp = files.fullchain.parent / "fullchain.pem.ocsp"
    ocsp.write_bytes(certificate)
    haproxy = build_sink("haproxy", {"type": "haproxy", "socket": str(tmp_path / "none.sock")})
    for delivery in (pki.delivery(files.fullchain, der), pki.delivery(files.fullchain, None)):
        [done] = deliver(haproxy, delivery)
        assert "holds something other than an OCSP response" in (done.error or "")
        assert ocsp.read_bytes() == certificate


# --- command --------------------------------------------------------------------------------------


def test_command_sees_the_delivery_in_its_environment(
    pki: Pki, files: LeafFiles, tmp_path: Path
) -> None:
    seen, copy = tmp_path / "seen", tmp_path / "copy.der"
    variables = ["EVENT", "CERT", "NAME", "STATUS", "STAPLE"]
    values = " ".join(f'"$MUSTAPLE_{v}"' for v in variables)
    script = (
        f"printf '%s\\n' {values} > {seen}; "
        f'if [ -n "$MUSTAPLE_STAPLE" ]; then cp "$MUSTAPLE_STAPLE" {copy}; fi'
    )
    sink = build_sink("hook", {"type": "command", "command": script})
    staple = pki.fresh()
    [done] = deliver(sink, pki.delivery(files.fullchain, staple.der))
    assert outcome(done) == (None, True)
    event, cert, name, status, temporary = seen.read_text().splitlines()
    assert (event, cert, name, status) == ("staple", str(files.fullchain), NAME, "good")
    assert copy.read_bytes() == staple.der
    assert not Path(temporary).exists()
    seen.unlink()
    [again] = deliver(sink, pki.delivery(files.fullchain, staple.der))
    assert outcome(again) == (None, False)
    assert not seen.exists()
    [removed] = deliver(sink, pki.delivery(files.fullchain, None))
    assert outcome(removed) == (None, True)
    assert seen.read_text().splitlines() == ["remove", str(files.fullchain), NAME, "revoked", ""]
    # the same certificate in a second file (another server's copy): its own delivery
    other = tmp_path / "haproxy" / "site.pem"
    [second] = deliver(sink, pki.delivery(other, None))
    assert outcome(second) == (None, True)
    assert seen.read_text().splitlines()[:2] == ["remove", str(other)]


def test_command_failure_and_timeout_are_reported(pki: Pki, files: LeafFiles) -> None:
    failing = "echo starting >&2; echo 'it broke' >&2; exit 3"
    sink = build_sink("hook", {"type": "command", "command": failing})
    delivery = pki.delivery(files.fullchain, pki.fresh().der)
    for _ in range(2):  # a failure is not remembered as done: it runs again
        [failed] = deliver(sink, delivery)
        assert failed.error == f"`{failing}` exited with status 3: it broke"
        assert not failed.changed
    slow = build_sink("hook", {"type": "command", "command": "sleep 30", "timeout": "0.2s"})
    started = time.monotonic()
    [late] = deliver(slow, delivery)
    assert late.error == "`sleep 30` timed out after 0.2 s and was killed"
    assert time.monotonic() - started < 5


# --- file, without a server -----------------------------------------------------------------------


def test_file_paths_unchanged_staples_and_removal(
    pki: Pki, files: LeafFiles, tmp_path: Path
) -> None:
    sink = build_sink("beside", {"type": "file", "path": "{dir}/ocsp/{stem}.der"})
    target = files.fullchain.parent / "ocsp" / "fullchain.der"
    staple = pki.fresh()
    results = [deliver(sink, pki.delivery(files.fullchain, staple.der))[0] for _ in range(2)]
    assert [outcome(r) for r in results] == [(None, True), (None, False)]
    assert target.read_bytes() == staple.der
    removals = [deliver(sink, pki.delivery(files.fullchain, None))[0] for _ in range(2)]
    assert [outcome(r) for r in removals] == [(None, True), (None, False)]
    assert not target.exists()
    blocked = build_sink("blocked", {"type": "file", "path": f"{files.key}/{{name}}.der"})
    [error] = deliver(blocked, pki.delivery(files.fullchain, staple.der))
    assert (error.error or "").startswith(f"{files.key}/{NAME}.der: ")


def test_file_reload_failure_is_reported_and_retried(
    pki: Pki, files: LeafFiles, tmp_path: Path
) -> None:
    runs, ready = tmp_path / "runs", tmp_path / "ready"
    reload = (
        f"echo run >> {runs}; test -e {ready} || {{ echo 'nginx: [emerg] not ready' >&2; exit 1; }}"
    )
    table = {"type": "file", "path": str(tmp_path / "{name}.der"), "reload": reload}
    sink = build_sink("nginx", table)
    delivery = pki.delivery(files.fullchain, pki.fresh().der)
    [failed] = deliver(sink, delivery)
    assert failed.changed
    assert (
        failed.error == f"reload failed: `{reload}` exited with status 1: nginx: [emerg] not ready"
    )
    ready.touch()
    [retried] = deliver(sink, delivery)  # unchanged, but the failed reload is owed
    assert outcome(retried) == (None, False)
    [quiet] = deliver(sink, delivery)
    assert outcome(quiet) == (None, False)
    assert runs.read_text().split() == ["run", "run"]


def test_a_trap_holds_reloads_back_until_its_file_holds_something_else(
    pki: Pki, files: LeafFiles, tmp_path: Path
) -> None:
    """A kept file with another certificate's staple (the one before a renewal): no reload
    while it is there, the reload owed; deleting the file (the certificate gone) ends it."""
    runs = tmp_path / "runs"
    table = {
        "type": "file",
        "path": str(tmp_path / "{stem}.der"),
        "reload": f"echo run >> {runs}",
        "remove": "keep",
    }
    sink = build_sink("nginx", table)
    other = files.fullchain.with_name("other.pem")
    other.write_bytes(files.fullchain.read_bytes())
    [written] = deliver(sink, pki.delivery(files.fullchain, pki.fresh().der))
    assert outcome(written) == (None, True)
    renewed = replace(pki.delivery(files.fullchain, None), serial=pki.leaf.cert.serial_number + 1)
    [kept] = deliver(sink, renewed)
    assert kept.trap is not None
    assert kept.trap.serial == pki.leaf.cert.serial_number
    assert (kept.error or "").endswith("does not reload until this certificate's staple is written")
    [held] = deliver(sink, pki.delivery(other, pki.fresh().der))
    assert held.changed
    assert (held.error or "").startswith("reload held back: ")
    assert held.reload_owed
    assert runs.read_text().split() == ["run"]
    (tmp_path / "fullchain.der").unlink()
    [paid] = deliver(sink, pki.delivery(other, pki.fresh().der))
    assert outcome(paid) == (None, True)
    assert runs.read_text().split() == ["run", "run"]


def test_a_running_check_that_cannot_run_is_an_error_not_a_server_down(
    pki: Pki, files: LeafFiles, tmp_path: Path
) -> None:
    """A typo in `running` (its program not found) made every delivery a quiet "the server
    is not running" and no reload ever ran: it is an error now, and the server is
    reloaded as without the check."""
    reloads = tmp_path / "reloads"
    table = {
        "type": "file",
        "path": str(tmp_path / "{name}.der"),
        "reload": f"echo reloaded >> {reloads}",
        "running": "systemctl-typo is-active --quiet nginx",
    }
    [done] = deliver(build_sink("nginx", table), pki.delivery(files.fullchain, pki.fresh().der))
    assert done.changed
    assert done.note is None
    assert (done.error or "").startswith(
        "the `running` check cannot run (`systemctl-typo is-active --quiet nginx` exited with "
        "status 127"
    )
    assert reloads.read_text() == "reloaded\n"
    down = {**table, "running": "false"}  # a server that is down: a note, no reload
    [noted] = deliver(build_sink("nginx", down), pki.delivery(files.fullchain, pki.fresh().der))
    assert noted.ok
    assert "the server is not running" in (noted.note or "")
    assert reloads.read_text() == "reloaded\n"


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "sinks.s.type: missing; use one of"),
        ({"type": "ftp"}, "sinks.s.type: 'ftp' is not a sink type"),
        ({"type": "file"}, "sinks.s.path: missing; give the staple file"),
        (
            {"type": "file", "path": "/x", "colour": "red"},
            "sinks.s.colour: unknown key; a file sink takes path, reload, reload_timeout",
        ),
        ({"type": "file", "path": 5}, "sinks.s.path: must be a non-empty string, not 5"),
        ({"type": "file", "path": "/x/{nam}.der"}, "sinks.s.path: unknown placeholder {nam}"),
        ({"type": "file", "path": "/x/{name.der"}, "sinks.s.path: "),
        ({"type": "file", "path": "/x/{name!x}.der"}, "sinks.s.path: {name!x}: placeholders"),
        ({"type": "file", "path": "/x/{name!r}.der"}, "sinks.s.path: {name!r}: placeholders"),
        ({"type": "file", "path": "/x/{stem:>12}.der"}, "sinks.s.path: {stem:>12}: placeholder"),
        ({"type": "file", "path": "/x/{name:{x}}.der"}, "sinks.s.path: {name:{x}}: placeholder"),
        ({"type": "file", "path": "/x/{name:{}}.der"}, "sinks.s.path: {name:{}}: placeholder"),
        ({"type": "file", "path": "/x/{}.der"}, "sinks.s.path: unknown placeholder {}"),
        ({"type": "file", "path": "/x/{dir[0]}.der"}, "sinks.s.path: unknown placeholder {dir[0]}"),
        (
            {"type": "file", "path": "/x", "reload": ["nginx"]},
            "sinks.s.reload: must be a non-empty string",
        ),
        (
            {"type": "file", "path": "/x", "reload_timeout": 5},
            "sinks.s.reload_timeout: must be a duration",
        ),
        (
            {"type": "file", "path": "/x", "reload_timeout": "soon"},
            "sinks.s.reload_timeout: 'soon' is not a duration",
        ),
        (
            {"type": "file", "path": "/x", "reload_timeout": "0s"},
            "sinks.s.reload_timeout: must be more than zero",
        ),
        (
            {"type": "file", "path": "/x", "remove": "shred"},
            'sinks.s.remove: must be "delete" or "keep"',
        ),
        ({"type": "haproxy"}, "sinks.s.socket: missing"),
        ({"type": "haproxy", "socket": "localhost"}, "sinks.s.socket: 'localhost' is neither"),
        (
            {"type": "haproxy", "socket": "/run/a", "master": "yes"},
            "sinks.s.master: must be true or false",
        ),
        (
            {"type": "haproxy", "socket": "/run/a", "path": "/x"},
            "sinks.s.path: unknown key; a haproxy sink takes",
        ),
        ({"type": "command"}, "sinks.s.command: missing"),
        (
            {"type": "command", "command": "true", "timeout": 60},
            "sinks.s.timeout: must be a duration",
        ),
    ],
)
def test_config_errors_name_the_key(table: Mapping[str, object], message: str) -> None:
    with pytest.raises(SinkConfigError, match="^" + re.escape(message)):
        build_sink("s", table)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("/run/haproxy/admin.sock", SocketAddress(path="/run/haproxy/admin.sock")),
        ("unix@/run/haproxy/admin.sock", SocketAddress(path="/run/haproxy/admin.sock")),
        ("127.0.0.1:9999", SocketAddress(host="127.0.0.1", port=9999)),
        ("ipv4@127.0.0.1:9999", SocketAddress(host="127.0.0.1", port=9999)),
        ("[::1]:9999", SocketAddress(host="::1", port=9999)),
        ("ipv6@::1:9999", SocketAddress(host="::1", port=9999)),  # HAProxy's own way
    ],
)
def test_haproxy_socket_addresses(text: str, address: SocketAddress) -> None:
    assert SocketAddress.parse(text) == address


@pytest.mark.parametrize("text", ["127.0.0.1:\u00b2", "127.0.0.1:0", "127.0.0.1:", "haproxy"])
def test_a_haproxy_socket_that_is_no_address_is_one_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="neither a unix socket path"):
        SocketAddress.parse(text)
    with pytest.raises(ValueError, match="the host is not a name or address"):
        SocketAddress.parse("foo..bar:9999")  # the resolver could not even encode it


def test_a_runtime_api_that_floods_is_cut_off(pki: Pki, tmp_path: Path) -> None:
    """Something at the HAProxy socket that answers without end (never the empty line that
    ends an answer): cut off at MAX_ANSWER, one line, instead of buffered until the timeout."""
    listener = socket.create_server(("127.0.0.1", 0))

    def flood() -> None:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            while True:
                conn.sendall(b"x" * 65536)

    threading.Thread(target=flood, daemon=True).start()
    pem = haproxy_pem(pki.leaf, tmp_path / "certs")
    sink = build_sink("h", {"type": "haproxy", "socket": f"127.0.0.1:{listener.getsockname()[1]}"})
    with listener:
        [delivered] = deliver(sink, pki.delivery(pem, pki.fresh().der))
    assert not delivered.ok
    assert "an answer of over 65536 bytes" in (delivered.error or "")


def test_haproxy_ocsp_dir_never_gives_two_certificates_one_file(pki: Pki, tmp_path: Path) -> None:
    """Two certificate files of the same name (a/site.pem, b/site.pem) with one `ocsp_dir`:
    the second is refused in one line naming the first, whose .ocsp file stays its own."""
    first = haproxy_pem(pki.leaf, tmp_path / "a")
    second = haproxy_pem(pki.leaf, tmp_path / "b")
    table = {"type": "haproxy", "socket": str(tmp_path / "none.sock"), "ocsp_dir": str(tmp_path)}
    sink = build_sink("h", table)
    der = pki.fresh().der
    other = replace(pki.delivery(second, b"OTHER"), key="another-certificate")
    kept, refused = deliver(sink, pki.delivery(first, der), other)
    assert kept.ok
    assert not refused.ok
    assert f"holds the staple of another certificate, {first}" in (refused.error or "")
    assert (tmp_path / "site.pem.ocsp").read_bytes() == der


def test_a_haproxy_socket_path_that_is_no_socket_is_an_error_not_haproxy_down(
    pki: Pki, tmp_path: Path
) -> None:
    """A regular file or a directory at `socket` is a mistake to fix (said, and retried),
    not a HAProxy that is not running (which only notes it: the file waits for its start)."""
    pem = haproxy_pem(pki.leaf, tmp_path / "certs")
    (tmp_path / "file.sock").write_text("")
    (tmp_path / "dir.sock").mkdir()
    for name, kind in (("file.sock", "is a file"), ("dir.sock", "is a directory")):
        sink = build_sink("h", {"type": "haproxy", "socket": str(tmp_path / name)})
        [delivered] = deliver(sink, pki.delivery(pem, pki.fresh().der))
        assert not delivered.ok
        assert f"{tmp_path / name} {kind}, not a socket" in (delivered.error or "")


def test_a_staple_file_that_still_looks_the_same_is_not_read_again(tmp_path: Path) -> None:
    """The keeper asks about every staple file at every pass: a file whose device, inode,
    size and modification time are as when last found right is not read again (the same
    bytes rewritten in place with its old time are taken on trust); one modified in the last
    two seconds is read each time, whatever its time says (a file system's clock moves in
    steps: a write within one step keeps the time)."""
    looks, path = _Looks(), tmp_path / "a.der"
    wanted, other = b"staple" * 50, b"STAPLE" * 50

    def write(data: bytes, at: int) -> None:
        path.write_bytes(data)
        os.utime(path, ns=(at, at))

    now, old = time.time_ns(), time.time_ns() - 10**10
    write(wanted, now)
    assert looks.astray(path, wanted) is None
    write(other, now)  # within the same step
    assert looks.astray(path, wanted) == f"{path} holds other bytes than were written"
    write(wanted, old)
    assert looks.astray(path, wanted) is None
    write(other, old)  # the same look: not read
    assert looks.astray(path, wanted) is None
    assert looks.astray(path, other) is None  # another staple wanted: read again
    assert looks.astray(path, wanted) == f"{path} holds other bytes than were written"
    path.unlink()
    assert looks.astray(path, wanted) == f"{path} is gone"
