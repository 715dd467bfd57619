"""The HTTP endpoint and the metrics, with a keeper driven by a fake clock against the
misbehaving responder; the status page rendered by a real headless Chromium.

Set MUSTAPLE_UPDATE_SCREENSHOT=1 to write the page's screenshot to docs/status-page.png.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from mustaple.adapters.config import HttpConfig
from mustaple.adapters.fetch import FetchPolicy
from mustaple.adapters.store import SqliteStore
from mustaple.core.errors import InputError
from mustaple.core.request import encode_request, make_cert_id
from mustaple.front.status import status_rows
from mustaple.keeper.keeper import Keeper
from mustaple.serve.metrics import STATES
from mustaple.serve.web import make_app, start_http
from mustaple.testing import Behaviour, Leaf, RecordingSink, World, keeper_world

ROOT = Path(__file__).resolve().parents[1]
DAY = timedelta(days=1)
QUICK = FetchPolicy(total_timeout=1.0, connect_timeout=1.0, attempts_per_url=1)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--window-size=1280,800",
)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def every_state(w: World) -> Leaf:
    """www good, shop failing (try-later, then an HTML page) past its refresh point, mail
    revoked, legacy without an OCSP URL, static good without must-staple; return www."""
    www = w.issue("www.example.test")
    shop = w.issue("shop.example.test")
    mail = w.issue("mail.example.test")
    w.issue("legacy.example.test", url=False)
    w.issue("static.example.test", must_staple=False)
    w.responder.set_behaviour(Behaviour.REVOKED, serial=mail.cert.serial_number)
    await w.keeper.scan()
    await w.keeper.tick()
    w.responder.set_behaviour(Behaviour.TRY_LATER, serial=shop.cert.serial_number)
    w.clock.now += timedelta(days=2)
    await w.keeper.tick()
    w.responder.set_behaviour(Behaviour.HTML_200, serial=shop.cert.serial_number)
    w.clock.now += timedelta(hours=10)
    await w.keeper.tick()
    return www


@asynccontextmanager
async def serving(w: World) -> AsyncIterator[str]:
    app = make_app(w.keeper, w.metrics, HttpConfig(), clock=w.clock)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def get(url: str, **headers: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as reply:
        return reply.status, reply.headers["Content-Type"], await reply.text()


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        assert reply.status == 200
        return await reply.json()


async def scrape(base: str) -> Samples:
    status, content_type, text = await get(f"{base}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, tuple(sorted(labels.items()))))


def cert_labels(w: World, name: str) -> dict[str, str]:
    return {"name": name, "serial": f"{w.managed(name).target.serial:x}"}


def run(scenario: Callable[[Path], Coroutine[Any, Any, None]], tmp: Path) -> None:
    asyncio.run(scenario(tmp))


# --- Metrics --------------------------------------------------------------------------------


def test_metrics_follow_every_state(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with keeper_world(tmp) as w, serving(w) as base:
            await every_state(w)
            samples = await scrape(base)
            expected = {
                "www.example.test": ("good", 1.0),
                "shop.example.test": ("failing", 1.0),
                "mail.example.test": ("revoked", 0.0),
                "legacy.example.test": ("unusable", 0.0),
                "static.example.test": ("good", 1.0),
            }
            for name, (state, valid) in expected.items():
                labels = cert_labels(w, name)
                for each in STATES:
                    value = sample(samples, "mustaple_status", state=each, **labels)
                    assert value == float(each == state), (name, each)
                assert sample(samples, "mustaple_staple_valid", **labels) == valid
                must = float(name != "static.example.test")
                assert sample(samples, "mustaple_must_staple", **labels) == must
            check_times(w, samples)

    run(scenario, tmp_path)


def check_times(w: World, samples: Samples) -> None:
    now = w.clock.now
    for name in ("www.example.test", "shop.example.test"):
        held = w.managed(name).held
        assert held is not None
        left = sample(samples, "mustaple_seconds_until_expiry", **cert_labels(w, name))
        assert left == (held.effective_expiry - now).total_seconds()
        window = sample(samples, "mustaple_staple_window_seconds", **cert_labels(w, name))
        assert window == (held.effective_expiry - held.this_update).total_seconds() > 0
    for name in ("mail.example.test", "legacy.example.test"):
        assert sample(samples, "mustaple_seconds_until_expiry", **cert_labels(w, name)) is None
        assert sample(samples, "mustaple_staple_window_seconds", **cert_labels(w, name)) is None
        assert (
            sample(samples, "mustaple_seconds_since_last_good_fetch", **cert_labels(w, name))
            is None
        )
    since = "mustaple_seconds_since_last_good_fetch"
    assert sample(samples, since, **cert_labels(w, "www.example.test")) == 10 * 3600
    assert sample(samples, since, **cert_labels(w, "shop.example.test")) == (2 * 24 + 10) * 3600


def test_fetch_counters_latency_and_responder_requests(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with keeper_world(tmp) as w, serving(w) as base:
            before = await scrape(base)
            assert sample(before, "mustaple_responder_requests_total", result="good") == 0.0
            www = await every_state(w)
            await ask(base, www)
            await ask(base, www)
            async with aiohttp.ClientSession() as session:
                too_large = await session.post(f"{base}/ocsp", data=b"0" * 10001)
            assert too_large.status == 413
            samples = await scrape(base)
            # first pass: 4 valid answers (one revoked); second: www, static, mail again
            fetches = "mustaple_fetches_total"
            assert sample(samples, fetches, outcome="ok", reason="") == 7.0
            assert sample(samples, fetches, outcome="rejected", reason="try-later") == 1.0
            assert sample(samples, fetches, outcome="rejected", reason="content-type") == 1.0
            attempts = [a for r in w.results for a in r.attempts]
            assert sample(samples, "mustaple_fetch_latency_seconds_count") == len(attempts)
            total = sample(samples, "mustaple_fetch_latency_seconds_sum")
            assert total == pytest.approx(sum(a.latency for a in attempts))
            requests = "mustaple_responder_requests_total"
            assert sample(samples, requests, result="good") == 2.0
            assert sample(samples, requests, result="too-large") == 1.0
            assert sample(samples, requests, result="malformed") == 0.0

    run(scenario, tmp_path)


def test_metrics_speak_openmetrics_when_asked(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with keeper_world(tmp) as w, serving(w) as base:
            accept = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            status, content_type, text = await get(f"{base}/metrics", Accept=accept)
            assert status == 200
            assert content_type.startswith("application/openmetrics-text")
            assert text.endswith("# EOF\n")

    run(scenario, tmp_path)


def test_docs_and_alert_rules_name_exactly_the_real_metrics(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with keeper_world(tmp) as w, serving(w) as base:
            await every_state(w)
            _, _, text = await get(f"{base}/metrics")
        families = {f.name for f in text_string_to_metric_families(text)}
        exposed = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in families}
        documented = metric_names(ROOT / "docs" / "observability.md")
        assert documented == exposed | FLEET_ONLY  # test_fleet.py checks those
        assert metric_names(ROOT / "examples" / "prometheus-alerts.yml") <= exposed | FLEET_ONLY

    run(scenario, tmp_path)


FLEET_ONLY = {"mustaple_fleet_connected", "mustaple_fleet_adopted"}  # with a [fleet] table


def metric_names(path: Path) -> set[str]:
    names = re.findall(r"\bmustaple_[a-z_]+", path.read_text())
    return {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in names}


# --- Health, readiness, status ------------------------------------------------------------------


def test_healthz_and_readyz_follow_the_must_staple_certificates(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with keeper_world(tmp) as w, serving(w) as base:
            assert await get(f"{base}/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
            leaf = w.issue("www.example.test")
            w.issue("legacy.example.test", must_staple=False, url=False)
            await w.keeper.scan()
            status, _, text = await get(f"{base}/readyz")
            assert (status, text) == (503, "not ready: no valid staple for must-staple"
                                           " www.example.test\n")  # fmt: skip
            await w.keeper.tick()
            status, _, text = await get(f"{base}/readyz")
            assert (status, text) == (200, "ready\n")
            held = w.managed("www.example.test").held
            assert held is not None
            w.responder.set_behaviour(Behaviour.TRY_LATER, serial=leaf.cert.serial_number)
            w.clock.now = held.effective_expiry
            await w.keeper.tick()
            status, _, text = await get(f"{base}/readyz")
            assert status == 503
            assert "www.example.test" in text
            assert "legacy" not in text
            samples = await scrape(base)
            labels = cert_labels(w, "www.example.test")
            assert sample(samples, "mustaple_staple_valid", **labels) == 0.0
            assert sample(samples, "mustaple_seconds_until_expiry", **labels) is None

    run(scenario, tmp_path)


def test_status_json_describes_every_certificate(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with keeper_world(tmp) as w, serving(w) as base:
            await every_state(w)
            report = await get_json(f"{base}/status")
        assert report["now"] == w.clock.now.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert report["ready"] is False
        assert report["not_ready"] == ["legacy.example.test", "mail.example.test"]
        certs = {c["name"]: c for c in report["certificates"]}
        assert list(certs) == sorted(certs)
        check_shop(w, certs["shop.example.test"])
        assert certs["www.example.test"]["health"] == "ok"
        assert certs["www.example.test"]["last_error"] is None
        mail = certs["mail.example.test"]
        assert (mail["state"], mail["health"], mail["this_update"]) == ("revoked", "critical", None)
        assert mail["revoked_at"] is not None
        legacy = certs["legacy.example.test"]
        assert (legacy["state"], legacy["next_refresh"], legacy["attempts"]) == (
            "unusable", None, [])  # fmt: skip
        assert legacy["last_error"] == "no-ocsp-url"
        assert legacy["health_reason"].startswith("unusable: must-staple certificate without")

    run(scenario, tmp_path)


def check_shop(w: World, shop: dict[str, Any]) -> None:
    managed = w.managed("shop.example.test")
    held = managed.held
    assert held is not None
    assert shop["cert"] == str(w.tmp / "live" / "shop.example.test" / "fullchain.pem")
    assert shop["serial"] == f"{managed.target.serial:x}"
    assert (shop["must_staple"], shop["state"], shop["health"]) == (True, "failing", "warning")
    assert shop["this_update"] == held.this_update.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert shop["refresh_point"] == (held.this_update + 2 * DAY).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert shop["effective_expiry"] == held.effective_expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert shop["seconds_left"] == round(held.seconds_left(w.clock.now))
    assert shop["fraction_left"] == round(held.fraction_left(w.clock.now), 4)
    assert 0.3 < shop["fraction_left"] < 0.5
    assert shop["next_refresh"] is not None
    assert (shop["failures"], shop["last_error"]) == (2, "content-type")
    assert shop["last_message"].startswith("the answer is not application/ocsp-response")
    reasons = [(a["method"], a["http_status"], a["reason"]) for a in shop["attempts"]]
    assert reasons == [
        ("POST", 200, "content-type"),
        ("GET", 200, "content-type"),
        ("GET", 200, "try-later"),
        ("GET", 200, None),
    ]


# --- The HTTP server ------------------------------------------------------------------------


def test_start_http_listens_on_loopback_and_names_a_busy_port(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with keeper_world(tmp) as w:
            runner = await start_http(w.keeper, HttpConfig(port=0), metrics=w.metrics)
            try:
                host, port = runner.addresses[0][:2]
                assert host == "127.0.0.1"
                assert (await get(f"http://{host}:{port}/healthz"))[0] == 200
                with pytest.raises(InputError, match=rf"http.listen: cannot listen on .*:{port}"):
                    await start_http(w.keeper, HttpConfig(port=port), metrics=w.metrics)
            finally:
                await runner.cleanup()

    run(scenario, tmp_path)


def test_local_responder_is_served_and_counted(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with keeper_world(tmp) as w, serving(w) as base:
            leaf = w.issue("www.example.test")
            await w.keeper.scan()
            await w.keeper.tick()
            held = w.managed("www.example.test").held
            assert held is not None
            stranger = w.ca.issue("stranger.example.test")
            assert await ask(base, leaf) == held.der
            assert await ask(base, stranger) == bytes.fromhex("30030a0106")  # unauthorized
            samples = await scrape(base)
            requests = "mustaple_responder_requests_total"
            assert sample(samples, requests, result="good") == 1.0
            assert sample(samples, requests, result="unauthorized") == 1.0
            assert sample(samples, requests, result="malformed") == 0.0

    run(scenario, tmp_path)


async def ask(base: str, leaf: Leaf) -> bytes:
    """POST an OCSP request about `leaf` to the local responder; return the answer."""
    body = encode_request(make_cert_id(leaf.issuer, leaf.cert.serial_number))
    headers = {"Content-Type": "application/ocsp-request"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/ocsp", data=body, headers=headers) as reply,
    ):
        assert reply.status == 200
        return await reply.read()


# --- The status page ----------------------------------------------------------------------------


def test_status_page_escapes_every_value(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        async with keeper_world(tmp) as w, serving(w) as base:
            leaf = w.ca.issue("www.example.test", ocsp_urls=[w.responder.url])
            leaf.write(tmp / "live" / '<img src=x onerror="alert(1)">')
            w.responder.add(leaf)
            await w.keeper.scan()
            await w.keeper.tick()
            status, content_type, page = await get(f"{base}/")
        assert (status, content_type) == (200, "text/html; charset=utf-8")
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
        assert "<img" not in page

    run(scenario, tmp_path)


def test_a_file_name_that_is_not_utf8_breaks_nothing(tmp_path: Path) -> None:
    """A directory named with a byte that is not UTF-8 (legal on Linux), holding a good
    certificate and a garbled file: the pass goes on, the page, /status and /metrics answer,
    and the state store holds the name as `\\xff`."""

    async def scenario(tmp: Path) -> None:
        async with keeper_world(tmp) as w, serving(w) as base:
            w.issue("good.example.test")
            leaf = w.ca.issue("odd.example.test", ocsp_urls=[w.responder.url])
            w.responder.add(leaf)
            leaf.write(tmp / "live" / os.fsdecode(b"odd-\xff"))
            garbled = tmp / "live" / os.fsdecode(b"bad-\xfe") / "fullchain.pem"
            garbled.parent.mkdir()
            garbled.write_bytes(b"garbled")
            lookalike = tmp / "live" / "bad-\\xfe" / "fullchain.pem"  # shown the same
            lookalike.parent.mkdir()
            lookalike.write_bytes(b"garbled")
            await w.keeper.scan()
            await w.keeper.tick()
            answers = [await get(f"{base}{path}") for path in ("/", "/status", "/metrics")]
            rows = w.keeper.store.statuses()
        assert [status for status, _, _ in answers] == [200, 200, 200]
        assert "odd-\\xff" in answers[0][2]
        shown = {row.name: (row.state, row.paths) for row in rows.values()}
        assert shown["odd.example.test"][0] == "good"
        assert "odd-\\xff" in shown["odd.example.test"][1][0]
        assert shown["bad-\\xfe"][0] == "unusable"
        assert [row.state for row in rows.values()].count("unusable") == 2  # a row each

    run(scenario, tmp_path)


def test_the_page_and_mustaple_status_judge_every_certificate_alike(tmp_path: Path) -> None:
    """One scale, one judgement: /status (and so the page) and `mustaple status`, which reads
    the state store in its own way, give each certificate the same health: unusable without
    must-staple, pending, a sink that refuses, a staple near expiry, a keeper fault in a
    refresh with a staple in hand (a failed refresh, retried); and a staple that expired
    with no pass since (prime from cron) is `expired` in `mustaple status`."""

    async def scenario(tmp: Path) -> None:
        sink = RecordingSink()
        async with keeper_world(tmp, sinks={"record": sink}) as w, serving(w) as base:
            w.issue("nourl.example.test", url=False, must_staple=False)
            soon = w.issue("soon.example.test")
            w.issue("fault.example.test")
            await w.keeper.scan()
            await w.keeper.tick()
            w.responder.set_behaviour(Behaviour.TRY_LATER, serial=soon.cert.serial_number)
            held = w.managed("soon.example.test").held
            assert held is not None
            w.clock.now = held.effective_expiry - timedelta(hours=3)
            await w.keeper.tick()
            sink.fail = True
            w.issue("sinkfail.example.test")
            await w.keeper.scan()
            await w.keeper.tick()
            w.issue("pending.example.test")
            await w.keeper.scan()
            faulty = w.managed("fault.example.test")
            w.keeper._broken(faulty, RuntimeError("a bug"))
            w.keeper.save_pending()
            page = (await get_json(f"{base}/status"))["certificates"]
            rows = status_rows(w.keeper.config, w.clock.now)
            held = w.managed("sinkfail.example.test").held
            assert held is not None
            later = status_rows(w.keeper.config, held.effective_expiry + timedelta(minutes=1))
            w.clock.now = held.effective_expiry + timedelta(minutes=1)  # no pass since
            samples = await scrape(base)
            labels = cert_labels(w, "sinkfail.example.test")
            lapsed_metrics = (
                sample(samples, "mustaple_seconds_until_expiry", **labels),
                sample(samples, "mustaple_staple_valid", **labels),
            )
        on_page = {c["name"].split(".")[0]: c["health"] for c in page}
        in_cli = {r["name"].split(".")[0]: r["health"] for r in rows}
        assert in_cli == on_page
        assert on_page == {
            "nourl": "warning",
            "soon": "critical",
            "fault": "warning",
            "sinkfail": "warning",
            "pending": "critical",
        }
        assert {r["name"].split(".")[0]: r["state"] for r in rows}["fault"] == "failing"
        lapsed = {r["name"].split(".")[0]: (r["state"], r["health"]) for r in later}
        assert lapsed["sinkfail"] == ("expired", "critical")
        assert lapsed_metrics == (None, 0.0)  # not a negative time left

    run(scenario, tmp_path)


def test_time_since_the_last_good_fetch_follows_a_staple_taken_from_prime(
    tmp_path: Path,
) -> None:
    """A staple that `prime` (another keeper on the same state) fetched and the running
    keeper took in counts as its last good fetch: the metric is not stuck on its own."""

    async def scenario(tmp: Path) -> None:
        async with keeper_world(tmp) as w, serving(w) as base:
            await w.stapled("www.example.test")
            labels = cert_labels(w, "www.example.test")
            assert sample(await scrape(base), SINCE, **labels) == 0.0
            w.clock.now += timedelta(hours=20)
            other_store = SqliteStore(tmp / "state" / "state.db")
            sinks = {w.sink.name: w.sink}
            other = Keeper(w.keeper.config, store=other_store, sinks=sinks, clock=w.clock)
            try:
                async with other:
                    await other.prime([tmp / "live" / "www.example.test" / "fullchain.pem"])
            finally:
                other_store.close()
            w.clock.now += timedelta(minutes=1)
            await w.keeper.tick()  # takes in what prime stored
            assert sample(await scrape(base), SINCE, **labels) == 60.0

    run(scenario, tmp_path)


SINCE = "mustaple_seconds_since_last_good_fetch"


def test_an_unusable_file_beside_a_usable_one_of_the_same_certificate_has_its_own_row(
    tmp_path: Path,
) -> None:
    """A second file holding only the leaf (its issuer not found): it is shown, in its own
    row with its serial, and the usable file's row stays good in the state store."""

    async def scenario(tmp: Path) -> None:
        async with keeper_world(tmp) as w, serving(w) as base:
            leaf = w.issue("www.example.test")
            copy = tmp / "live" / "copy" / "fullchain.pem"
            copy.parent.mkdir()
            copy.write_bytes(leaf.cert_pem)
            await w.keeper.scan()
            await w.keeper.tick()
            page = (await get_json(f"{base}/status"))["certificates"]
            stored = sorted((row.state, row.paths) for row in w.keeper.store.statuses().values())
            samples = await scrape(base)
            labels = cert_labels(w, "www.example.test")
        rows = sorted((c["state"], c["serial"], c["paths"]) for c in page)
        serial = f"{leaf.cert.serial_number:x}"
        assert rows == [
            ("good", serial, [str(tmp / "live" / "www.example.test" / "fullchain.pem")]),
            ("unusable", serial, [str(copy)]),
        ]
        assert [state for state, _ in stored] == ["good", "unusable"]
        # one series per (name, serial): the certificate's own, never the unusable copy's
        assert sample(samples, "mustaple_status", **labels, state="good") == 1.0
        assert sample(samples, "mustaple_staple_valid", **labels) == 1.0

    run(scenario, tmp_path)


class Rows(HTMLParser):
    """The certificate rows of the rendered page: (data-name, data-state, health, state text)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._wanted = False  # the next text is a badge or a state

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        classes = (found.get("class") or "").split()
        if tag == "tr" and "cert" in classes:
            self.rows.append([found["data-name"] or "", found["data-state"] or ""])
        elif tag == "span" and ("badge" in classes or "state" in classes):
            self._wanted = True

    def handle_data(self, data: str) -> None:
        if self._wanted:
            self.rows[-1].append(data)
            self._wanted = False


def test_status_page_in_headless_chromium(tmp_path: Path) -> None:
    browser = shutil.which("chromium")
    assert browser, "the status page test needs Chromium: apt-get install chromium"
    shot = tmp_path / "status-page.png"

    async def scenario(tmp: Path) -> None:
        async with keeper_world(tmp) as w, serving(w) as base:
            await every_state(w)
            await chromium(browser, tmp / "profile-1", f"--screenshot={shot}", f"{base}/")
            dom = await chromium(browser, tmp / "profile-2", "--dump-dom", f"{base}/")
        parser = Rows()
        parser.feed(dom)
        assert parser.rows == [
            ["legacy.example.test", "unusable", "CRITICAL", "unusable"],
            ["mail.example.test", "revoked", "CRITICAL", "revoked"],
            ["shop.example.test", "failing", "WARNING", "failing"],
            ["static.example.test", "good", "OK", "good"],
            ["www.example.test", "good", "OK", "good"],
        ]
        assert "try-later" in dom
        assert "5 certificates: 2 OK, 1 WARNING, 2 CRITICAL" in dom

    run(scenario, tmp_path)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 800)
    assert len(data) > 20_000
    if os.environ.get("MUSTAPLE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "status-page.png")


async def chromium(browser: str, profile: Path, *args: str) -> str:
    """Run headless Chromium with its own profile directory; return what it printed."""
    process = await asyncio.create_subprocess_exec(
        browser,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()
