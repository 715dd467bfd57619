"""Prometheus metrics for one keeper, in a registry of their own (docs/observability.md).

`Metrics(keeper)` owns a `CollectorRegistry` (never the global one, so several keepers and
tests do not collide) and attaches itself to the keeper as an observer:

- per certificate gauges (`name`, `serial` labels) are computed at scrape time from the
  keeper's frozen views (`Keeper.views`), so they are always current, with no timer updating
  them; unusable certificates are there too (serial "" when the file cannot be read), whether
  refreshes come sooner than `min_interval` (the `schedule_note` of `/status`), and each
  sink's consecutive failures per certificate;
- fetch counters and the attempt latency histogram are fed by `observe` after every refresh;
- local responder counters are `responder_counts`, which the responder increases in place;
- the HTTP endpoint counts in `request_timeouts` the requests not sent whole in time;
- whether the state store can be written (0 on a full disk), read from the keeper;
- in fleet mode, whether Redis answers and how many staples were adopted from other members,
  read from the `Fleet` at scrape time.

`exposition(accept)` renders the registry in the format the scraper asks for.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from mustaple.adapters.fetch import FetchResult
from mustaple.core.clock import Clock, utc_now
from mustaple.core.lifecycle import Phase
from mustaple.keeper.fleet import Fleet
from mustaple.keeper.keeper import FILE_KEY, CertFile, CertView, Keeper
from mustaple.serve.localresponder import served_counts

__all__ = ["STATES", "Metrics", "serial_hex"]

# Every phase of the life cycle: `mustaple_status` has one series for each.
STATES = tuple(phase.value for phase in Phase)
_LABELS = ("name", "serial")


def serial_hex(view: CertView) -> str:
    """The certificate's serial number as the `serial` label shows it (lowercase hex; empty
    when the file could not be read)."""
    return f"{view.serial:x}" if view.serial is not None else ""


class Metrics:
    """The metrics of one keeper; attaches `observe` to `keeper.observers`."""

    def __init__(
        self, keeper: Keeper, *, clock: Clock = utc_now, fleet: Fleet | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.fetches = Counter(
            "mustaple_fetches",
            "Refreshes by outcome (ok: a valid answer; rejected: none) and reason code.",
            ("outcome", "reason"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "mustaple_fetch_latency_seconds",
            "Duration of each HTTP exchange with an OCSP responder.",
            registry=self.registry,
        )
        # plain integers that the local responder increases at every request it answers
        # (a prometheus-client counter, or even a call, costs a large share of the fast
        # path's own work per request: bench/README.md), handed to Prometheus at each scrape
        self.responder_counts = served_counts()
        self.registry.register(_ResponderCollector(self.responder_counts))
        self.request_timeouts = Counter(
            "mustaple_http_request_timeouts",
            "Requests to the HTTP endpoint not sent whole within http.request_timeout.",
            registry=self.registry,
        )
        self._certificates = _CertificateCollector(keeper, clock)
        self.registry.register(self._certificates)
        for gauge in _keeper_gauges(keeper):
            self.registry.register(gauge)
        if fleet is not None:
            self.registry.register(_FleetCollector(fleet))
        keeper.observers.append(self.observe)

    def observe(self, cert: CertFile, result: FetchResult) -> None:
        """Count one refresh and time its attempts (a keeper `Observer`)."""
        if result.rejection is None:
            self.fetches.labels("ok", "").inc()
        else:
            self.fetches.labels("rejected", result.rejection.code).inc()
        for attempt in result.attempts:
            self.latency.observe(attempt.latency)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry rendered for a scraper's Accept header, and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _CertificateCollector:
    """Per certificate gauges, computed from the keeper's state at each scrape."""

    def __init__(self, keeper: Keeper, clock: Clock) -> None:
        self.keeper, self.clock = keeper, clock
        # cert key -> (the answer in hand, its last good fetch): read again from the store
        # whenever the answer changes (a refresh, or one taken from `prime` or the fleet)
        self._fetched: dict[str, tuple[object, datetime | None]] = {}

    def describe(self) -> Iterator[Metric]:
        return iter(_families())

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        families = _families()
        expiry, window, since, status, must, valid, hurried, sink_failures = families
        views = self._views()
        for view in views:
            labels = [view.name, serial_hex(view)]
            held = view.state.held
            if held is not None and held.effective_expiry <= now:
                held = None  # expired since the last pass: no valid staple, nothing left
            if held is not None:
                expiry.add_metric(labels, held.seconds_left(now))
                window.add_metric(labels, held.window.total_seconds())
            fetched = self._last_good_fetch(view)
            if fetched is not None:
                since.add_metric(labels, (now - fetched).total_seconds())
            for state in STATES:
                status.add_metric([*labels, state], float(view.phase == state))
            must.add_metric(labels, float(bool(view.must_staple)))
            valid.add_metric(labels, float(held is not None))
            hurried.add_metric(labels, float(held is not None and bool(view.state.schedule_note)))
            for sink in view.sinks:
                sink_failures.add_metric([*labels, sink.sink], float(sink.failures))
        self._fetched = {v.key: self._fetched[v.key] for v in views if v.key in self._fetched}
        return iter(families)

    def _views(self) -> list[CertView]:
        """One per (name, serial): the same certificate in two files is one series, the
        certificate's own (an unusable file holding the same leaf only says so in /status)."""
        unique: dict[tuple[str, str], CertView] = {}
        views = self.keeper.views()
        for view in sorted(views, key=lambda v: v.key.startswith(FILE_KEY)):  # lives first
            unique.setdefault((view.name, serial_hex(view)), view)
        return list(unique.values())

    def _last_good_fetch(self, view: CertView) -> datetime | None:
        key, answer = view.key, view.state.answer
        cached = self._fetched.get(key)
        if cached is not None and cached[0] is answer:
            return cached[1]
        try:
            stored = self.keeper.store.load(key) if not key.startswith(FILE_KEY) else None
        except sqlite3.Error:  # the store's trouble is the store's metric: asked again later
            return None
        fetched = stored.fetched_at if stored and stored.good else None
        if answer is None or (stored is not None and stored.der == answer.der):
            self._fetched[key] = (answer, fetched)  # else the store is not there yet: ask again
        return fetched


class _KeeperGauge:
    """One gauge with no labels, read from the keeper at each scrape by `value`."""

    def __init__(
        self, keeper: Keeper, name: str, documentation: str, value: Callable[[Keeper], float]
    ) -> None:
        self.keeper, self.name, self.documentation, self.value = keeper, name, documentation, value

    def describe(self) -> Iterator[Metric]:
        return iter([GaugeMetricFamily(self.name, self.documentation)])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation)
        family.add_metric([], self.value(self.keeper))
        return iter([family])


def _keeper_gauges(keeper: Keeper) -> list[_KeeperGauge]:
    """`mustaple_state_store_writable` (from `store_problem`),
    `mustaple_certificate_files_unanswered` (from `unanswered`) and
    `mustaple_certificate_entries_without_events` (from `without_events`)."""
    return [
        _KeeperGauge(
            keeper,
            "mustaple_state_store_writable",
            "1 while the state store takes the keeper's writes; 0 while it cannot (a full "
            "disk): staples are served from memory and stored once it can.",
            lambda k: float(k.store_problem is None),
        ),
        _KeeperGauge(
            keeper,
            "mustaple_certificate_files_unanswered",
            "[[certificates]] entries whose look at their files, or the read of one of "
            "their files, has stayed at one file for policy.watch_timeout (a file system "
            "that hangs): their files are kept as last seen until it answers.",
            lambda k: float(len({u.paths for u in k.unanswered})),
        ),
        _KeeperGauge(
            keeper,
            "mustaple_certificate_entries_without_events",
            "[[certificates]] entries looked at every pass for want of file events (a network "
            "or FUSE file system, the inotify watch limit): a pass costs a stat of each of "
            "their files.",
            lambda k: float(len(k.without_events)),
        ),
    ]


class _ResponderCollector:
    """`mustaple_responder_requests_total` by result, from the plain counts at each scrape."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def describe(self) -> Iterator[Metric]:
        return iter([self._family()])

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for result, count in sorted(self.counts.items()):
            family.add_metric([result], float(count))
        return iter([family])

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "mustaple_responder_requests",
            "Requests answered by the local OCSP responder, by result.",
            labels=("result",),
        )


class _FleetCollector:
    """Fleet mode: whether Redis answers, and the staples adopted from other members."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        connected, adopted = families = self._families()
        connected.add_metric([], float(self.fleet.up))
        adopted.add_metric([], float(self.fleet.adopted))
        return iter(families)

    def _families(self) -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                "mustaple_fleet_connected",
                "1 while the fleet's Redis answers; 0 while this member goes on alone.",
            ),
            CounterMetricFamily(
                "mustaple_fleet_adopted",
                "Staples fetched by other members, validated here and adopted.",
            ),
        )


def _families() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily(
            "mustaple_seconds_until_expiry",
            "Seconds until the held staple's effective expiry (absent with no valid staple).",
            labels=_LABELS,
        ),
        GaugeMetricFamily(
            "mustaple_staple_window_seconds",
            "Seconds from the held staple's thisUpdate to its effective expiry (absent with no "
            "valid staple): how long the responder's answers live, for alerts that scale.",
            labels=_LABELS,
        ),
        GaugeMetricFamily(
            "mustaple_seconds_since_last_good_fetch",
            "Seconds since the last fetch that gave a new valid good staple.",
            labels=_LABELS,
        ),
        GaugeMetricFamily(
            "mustaple_status",
            "The certificate's state: 1 for the current state, 0 for the others.",
            labels=(*_LABELS, "state"),
        ),
        GaugeMetricFamily(
            "mustaple_must_staple",
            "1 if the certificate carries the must-staple flag, else 0.",
            labels=_LABELS,
        ),
        GaugeMetricFamily(
            "mustaple_staple_valid",
            "1 if a valid good staple is in hand for delivery, else 0.",
            labels=_LABELS,
        ),
        GaugeMetricFamily(
            "mustaple_refresh_hurried",
            "1 while the answer in hand left too little time for policy.min_interval when "
            "fetched, and refreshes come sooner than it so the staple never lapses, else 0.",
            labels=_LABELS,
        ),
        GaugeMetricFamily(
            "mustaple_sink_failures",
            "Failed deliveries in a row to this sink for this certificate (0: it took the last).",
            labels=(*_LABELS, "sink"),
        ),
    )
