"""The HTTP endpoint: health, readiness, status JSON, a status page and Prometheus metrics.

`start_http(keeper, http, metrics=...)` serves `make_app(...)` on `http.host:http.port`
(loopback by default) and returns an `HttpServer`; `await server.cleanup()` stops it. Every
connection goes first through `mustaple.serve.fastpath`, which answers the OCSP GETs itself,
hands everything else to aiohttp and gives each request `http.request_timeout` to come whole
(its middleware, `request_deadlines`, is the application's). Endpoints:

- `/healthz`: 200 "ok" while the event loop runs.
- `/readyz`: 200 when every must-staple certificate has a valid good staple, else 503 and the
  names of those that have none.
- `/status`: JSON, one object per certificate (the same data the page shows).
- `/`: the status page for people: one self-contained HTML page (no scripts, no external
  assets) that reloads itself every 30 seconds.
- `/metrics`: Prometheus text or OpenMetrics, as the scraper asks (`mustaple.serve.metrics`).

The local OCSP responder (`mustaple.serve.localresponder`) is served under `/ocsp`, its answers
counted by the metrics. Every value shown in HTML is escaped. A request aiohttp cannot parse,
or cannot read to its end because the connection is gone (the client left, or did not send it
within `http.request_timeout`), is the client's doing: logged at debug level, in one line
(aiohttp logs a traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Mapping
from datetime import datetime
from html import escape
from typing import Any

from aiohttp import web
from aiohttp.http import HttpProcessingError

from mustaple.adapters.config import HttpConfig
from mustaple.adapters.store import AttemptRecord
from mustaple.core.clock import Clock, utc_now
from mustaple.core.errors import InputError
from mustaple.core.health import health
from mustaple.core.render import (
    attempt_json,
    human_duration,
    iso,
    short_time,
    sink_json,
    validity_json,
)
from mustaple.core.schedule import SchedulePolicy, refresh_point
from mustaple.core.severity import Severity
from mustaple.keeper.keeper import FILE_KEY, CertView, Keeper
from mustaple.keeper.surveys import Unanswered
from mustaple.serve.fastpath import (
    FastPath,
    quiet_accept_errors,
    raise_file_limit,
    request_deadlines,
)
from mustaple.serve.localresponder import Responder, add_routes
from mustaple.serve.metrics import Metrics, serial_hex

__all__ = ["HttpServer", "make_app", "not_ready", "start_http"]

log = logging.getLogger("mustaple")
ATTEMPTS_SHOWN = 5
PAGE_REFRESH_SECONDS = 30
_NAMES_SHOWN = 20  # in the /readyz body
_PATH_SHOWN = 36  # characters of a certificate's path on the page; all of it in the title
BACKLOG = 1024  # connections waiting to be accepted (servers ask for staples in bursts)
HEAD_FIELDS = 16384  # bytes of header lines, beyond the request line, the fast path waits for


def not_ready(keeper: Keeper, now: datetime) -> list[str]:
    """Names of the must-staple certificates without a valid good staple (unusable ones
    included)."""
    return sorted(
        {
            v.name
            for v in keeper.views()
            if v.must_staple and (v.state.held is None or v.state.held.effective_expiry <= now)
        }
    )


def make_app(
    keeper: Keeper, metrics: Metrics, http: HttpConfig, *, clock: Clock = utc_now
) -> web.Application:
    """The application serving the endpoints of the module docstring."""
    return _app(keeper, metrics, http, clock)[0]


def _app(
    keeper: Keeper, metrics: Metrics, http: HttpConfig, clock: Clock
) -> tuple[web.Application, _Endpoints, Responder]:
    """`make_app`, its endpoints and the local responder it serves."""
    endpoints = _Endpoints(keeper, metrics, clock)
    app = web.Application(middlewares=[request_deadlines])
    app.router.add_get("/", endpoints.page)
    app.router.add_get("/healthz", endpoints.healthz)
    app.router.add_get("/readyz", endpoints.readyz)
    app.router.add_get("/status", endpoints.status)
    app.router.add_get("/metrics", endpoints.prometheus)
    responder = add_routes(
        app,
        keeper,
        max_request_size=http.max_request_size,
        clock=clock,
        served=metrics.responder_counts,
    )
    return app, endpoints, responder


class HttpServer:
    """The running HTTP endpoint (what `start_http` returns), serving `http` from a keeper
    that `switch` replaces (the listener stays open across a configuration reload)."""

    def __init__(
        self,
        http: HttpConfig,
        server: asyncio.Server,
        runner: web.AppRunner,
        fast: FastPath,
        endpoints: _Endpoints,
    ) -> None:
        self.http, self.server, self.runner, self.fast = http, server, runner, fast
        self.endpoints = endpoints

    def switch(self, keeper: Keeper, metrics: Metrics) -> None:
        """Serve from `keeper` and count in `metrics` from now on."""
        self.endpoints.keeper, self.endpoints.metrics = keeper, metrics
        self.fast.responder.switch(keeper, metrics.responder_counts)
        self.fast.replies.clear()  # the old keeper's answers: `Responder.again` refuses them
        self.fast.on_timeout = metrics.request_timeouts.inc

    @property
    def closed(self) -> bool:
        """Whether `cleanup` ran: it listens no more."""
        return self.fast.closed

    @property
    def addresses(self) -> list[Any]:
        """The addresses listened on, as `socket.getsockname()` gives them."""
        return [sock.getsockname() for sock in self.server.sockets]

    async def cleanup(self) -> None:
        """Stop listening and close every connection (aiohttp's within its shutdown time).
        Once: later calls do nothing."""
        if self.fast.closed:
            return
        self.server.close()
        self.fast.close()
        await self.runner.cleanup()
        await self.server.wait_closed()


async def start_http(keeper: Keeper, http: HttpConfig, *, metrics: Metrics) -> HttpServer:
    """Serve `make_app` on `http.host:http.port`, OCSP GETs through `mustaple.serve.fastpath`;
    raise InputError if that is impossible."""
    app, endpoints, responder = _app(keeper, metrics, http, keeper.clock)
    # aiohttp refuses long request lines itself; let a GET request up to the cap through
    line = max(8190, http.max_request_size + 64)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=2.0,
        max_line_size=line,
        keepalive_timeout=http.idle_timeout.total_seconds(),  # as on the fast path
        logger=_ServerLog(),
    )
    await runner.setup()
    assert runner.server is not None  # set up
    fast = FastPath(
        responder,
        runner.server,
        max_head=line + HEAD_FIELDS,
        max_line=line,
        idle_timeout=http.idle_timeout.total_seconds(),
        max_connections=http.max_connections,
        request_timeout=http.request_timeout.total_seconds(),
        on_timeout=metrics.request_timeouts.inc,
    )
    raise_file_limit(http.max_connections, BACKLOG)
    try:
        loop = asyncio.get_running_loop()
        quiet_accept_errors(loop)
        server = await loop.create_server(fast, http.host, http.port, backlog=BACKLOG)
    except OSError as exc:
        fast.close()
        await runner.cleanup()
        where = f"{keeper.config.path}: http.listen"
        raise InputError(f"{where}: cannot listen on {http.host}:{http.port} ({exc})") from exc
    endpoint = HttpServer(http, server, runner, fast, endpoints)
    host, port = endpoint.addresses[0][:2]
    log.info("HTTP endpoint at http://%s:%d/", host, port)
    return endpoint


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log, where a request aiohttp cannot parse or read to its end (the
    client's doing) is one line at debug level instead of a traceback, at whatever level
    aiohttp logs it (an error, or debug for a bad method in a connection's first request);
    any other error is logged as aiohttp does."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"))

    def log(
        self,
        level: int,
        msg: object,
        *args: object,
        exc_info: Any = None,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        if isinstance(exc_info, HttpProcessingError | web.RequestPayloadError | ConnectionError):
            text = str(msg) % args if args else str(msg)
            super().log(logging.DEBUG, "%s: %s", text, _one_line(exc_info))
            return
        super().log(
            level,
            msg,
            *args,
            exc_info=exc_info,
            stack_info=stack_info,
            stacklevel=stacklevel,
            extra=extra,
            **kwargs,
        )


def _one_line(exc: BaseException) -> str:
    """What aiohttp says of a request it refuses, on one line of at most 200 characters."""
    message = getattr(exc, "message", None)
    text = " ".join(str(message if isinstance(message, str) and message else exc).split())
    return text if len(text) <= 200 else text[:199] + "…"


class _Endpoints:
    """The request handlers, sharing the keeper, the metrics and the clock."""

    def __init__(self, keeper: Keeper, metrics: Metrics, clock: Clock) -> None:
        self.keeper, self.metrics, self.clock = keeper, metrics, clock

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        missing = not_ready(self.keeper, self.clock())
        if not missing:
            return web.Response(text="ready\n")
        names = ", ".join(missing[:_NAMES_SHOWN])
        more = f" and {len(missing) - _NAMES_SHOWN} more" if len(missing) > _NAMES_SHOWN else ""
        text = f"not ready: no valid staple for must-staple {names}{more}\n"
        return web.Response(status=503, text=text)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self._report(self.clock()))

    async def page(self, request: web.Request) -> web.Response:
        now = self.clock()
        page = _page(self._report(now), now, self.keeper.policy.schedule)
        return web.Response(text=page, content_type="text/html")

    async def prometheus(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _report(self, now: datetime) -> dict[str, Any]:
        views = self.keeper.views()
        missing = not_ready(self.keeper, now)
        return {
            "now": iso(now),
            "ready": not missing,
            "not_ready": missing,
            "store_problem": self.keeper.store_problem,
            "files_unanswered": [_unanswered_json(u) for u in self.keeper.unanswered],
            "files_without_events": [
                {"paths": list(p.paths), "why": p.why} for p in self.keeper.without_events
            ],
            "certificates": [self._certificate(v, now) for v in views],
        }

    def _certificate(self, view: CertView, now: datetime) -> dict[str, Any]:
        attempts: list[AttemptRecord] = []
        # the store's trouble is said in store_problem: then no history, never a 500
        with contextlib.suppress(sqlite3.Error):
            if not view.key.startswith(FILE_KEY):
                attempts = self.keeper.store.history(view.key, ATTEMPTS_SHOWN)
        return _certificate_json(view, now, self.keeper.policy.schedule, attempts)


def _certificate_json(
    view: CertView, now: datetime, policy: SchedulePolicy, attempts: list[AttemptRecord]
) -> dict[str, Any]:
    """One certificate as `/status` shows it."""
    state = view.state
    held = state.held if state.held and state.held.effective_expiry > now else None
    rejection, revoked = state.rejection, state.revoked
    level, why = health(state, view.must_staple, view.sinks, now, policy)
    return {
        "name": view.name,
        "serial": serial_hex(view),
        "cert": view.paths[0] if view.paths else None,
        "paths": list(view.paths),
        "must_staple": view.must_staple,
        "state": view.phase,
        "health": level.word,
        "health_reason": why,
        **validity_json(held, now),
        "refresh_point": iso(refresh_point(held, policy)) if held else None,
        "fraction_left": round(held.fraction_left(now), 4) if held else None,
        "next_refresh": iso(state.next_due),
        "schedule_note": state.schedule_note if held else None,
        "failures": state.failures,
        "last_attempt": iso(state.last_attempt),
        "last_error": rejection.code if rejection else None,
        "last_message": rejection.message if rejection else None,
        "revoked_at": iso(revoked.revocation_time) if revoked else None,
        "expired_at": iso(state.expired_at),
        "sinks": [sink_json(s) for s in view.sinks],
        "attempts": [_attempt_json(a) for a in attempts],
    }


def _attempt_json(attempt: AttemptRecord) -> dict[str, Any]:
    return attempt_json(
        at=attempt.at,
        url=attempt.url,
        method=attempt.method,
        http_status=attempt.http_status,
        latency=attempt.latency,
        reason=attempt.reason,
        message=attempt.message,
    )


# --- The status page ------------------------------------------------------------------------

_STYLE = """
:root { --ok: #1a7f37; --warning: #9a6700; --critical: #c62828; --ink: #1f2328;
  --muted: #59636e; --line: #d1d9e0; }
* { box-sizing: border-box; }
body { margin: 0; padding: 1.5rem 2rem; font: 15px/1.45 system-ui, sans-serif; color: var(--ink);
  background: #f6f8fa; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
header p { margin: .2rem 0; color: var(--muted); }
header p.store { color: var(--critical); font-weight: 600; }
.summary { font-size: 1.05rem; color: var(--ink); }
table { width: 100%; border-collapse: collapse; margin-top: 1rem; background: #fff;
  border: 1px solid var(--line); table-layout: fixed; }
th, td { text-align: left; vertical-align: top; padding: .55rem .8rem;
  border-bottom: 1px solid var(--line); }
th { font-size: .85rem; color: var(--muted); background: #f0f3f6; }
th .small { font-weight: normal; }
tr.cert { border-left: 6px solid var(--line); }
tr.ok { border-left-color: var(--ok); }
tr.warning { border-left-color: var(--warning); }
tr.critical { border-left-color: var(--critical); }
.name { font-weight: 600; }
.small { font-size: .82rem; color: var(--muted); }
.path { font: .78rem ui-monospace, monospace; color: var(--muted); overflow-wrap: anywhere; }
.badge { display: inline-block; padding: .05rem .45rem; border-radius: 4px; font-size: .78rem;
  font-weight: 700; letter-spacing: .03em; color: #fff; }
.badge.ok { background: var(--ok); }
.badge.warning { background: var(--warning); }
.badge.critical { background: var(--critical); }
.tag { display: inline-block; border: 1px solid var(--line); border-radius: 4px;
  padding: 0 .35rem; font-size: .75rem; color: var(--muted); }
.state { display: block; font-weight: 600; white-space: nowrap; }
.bar { position: relative; height: 1.1rem; margin-top: 1rem; border-radius: 3px;
  background: #e6eaef; }
.elapsed { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 3px 0 0 3px; }
.ok .elapsed { background: var(--ok); }
.warning .elapsed { background: var(--warning); }
.critical .elapsed { background: var(--critical); }
.mark { position: absolute; top: -.3rem; bottom: -.3rem; width: 0; }
.mark.refresh { border-left: 2px dashed var(--ink); }
.mark.now { border-left: 3px solid var(--ink); }
.mark.now span { position: absolute; top: -1.1rem; left: -.9rem; font-size: .7rem;
  font-weight: 700; }
.scale { display: flex; justify-content: space-between; gap: .5rem; font-size: .75rem;
  color: var(--muted); margin-top: .3rem; }
.empty { padding: .2rem .5rem; border-radius: 3px; font-size: .85rem; font-weight: 600;
  background: #fde8e8; color: var(--critical); }
.warning .empty { background: #fff4d6; color: var(--warning); }
code { font: .82rem ui-monospace, monospace; background: #eff2f5; padding: 0 .25rem;
  border-radius: 3px; }
ul.errors { margin: .3rem 0 0; padding-left: 1rem; font-size: .8rem; color: var(--muted); }
ul.errors code { white-space: nowrap; }
"""


def _page(report: dict[str, Any], now: datetime, policy: SchedulePolicy) -> str:
    """The status page for `report` (what `/status` returns), as one HTML document."""
    rows = "".join(_row(c, now, policy) for c in report["certificates"])
    empty = '<tr><td colspan="5">No certificates yet.</td></tr>'
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{PAGE_REFRESH_SECONDS}">
<title>mustaple status</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>mustaple status</h1>
<p class="summary">{escape(_summary(report))}</p>
{_store_line(report["store_problem"])}
{_unanswered_lines(report["files_unanswered"])}
<p>At {_time(report["now"], year=True)} · this page reloads every {PAGE_REFRESH_SECONDS} s ·
<a href="/status">JSON</a> · <a href="/metrics">metrics</a></p>
</header>
<main>
<table>
<caption hidden>Certificates and their OCSP staples</caption>
<colgroup><col style="width: 23%"><col style="width: 13%"><col style="width: 30%">
<col style="width: 11%"><col style="width: 23%"></colgroup>
<thead><tr><th scope="col">Certificate</th><th scope="col">Health</th>
<th scope="col">Staple validity<br><span class="small">from thisUpdate to the effective expiry;
dashed: refresh point, solid: now</span></th>
<th scope="col">Next refresh</th><th scope="col">Last error</th></tr></thead>
<tbody>
{rows or empty}
</tbody>
</table>
</main>
</body>
</html>
"""


def _store_line(problem: str | None) -> str:
    """The state store's trouble, said above the table (nothing when it is well)."""
    if problem is None:
        return ""
    said = f"The state store cannot be written ({problem}): staples are served from memory"
    return f'<p class="store">{escape(said)} and stored once it can be written again.</p>'


def _unanswered_json(unanswered: Unanswered) -> dict[str, Any]:
    return {
        "at": unanswered.at,
        "paths": list(unanswered.paths),
        "since": iso(unanswered.since),
        "kind": unanswered.kind,
    }


def _unanswered_lines(unanswered: list[dict[str, Any]]) -> str:
    """The entries whose files hang, said above the table (nothing when none does)."""
    lines = []
    for entry in unanswered:
        at, since = escape(entry["at"]), _time(entry["since"])
        if entry["kind"] == "read":
            kept = "it is read again at each pass, and a certificate it held keeps its staple"
            said = f"The read of {at} has not answered since {since}"
        else:
            kept = f"the files of {escape(', '.join(entry['paths']))} are kept as last seen"
            said = f"The look at {at} has not answered since {since}"
        lines.append(f'<p class="store">{said} (a file system that hangs?): {kept}.</p>')
    return "\n".join(lines)


def _summary(report: dict[str, Any]) -> str:
    certificates = report["certificates"]
    counts = [sum(c["health"] == s.word for c in certificates) for s in Severity]
    parts = [f"{n} {s.name}" for n, s in zip(counts, Severity, strict=True) if n]
    ready = "ready" if report["ready"] else "NOT READY: " + ", ".join(report["not_ready"])
    return f"{len(certificates)} certificates: {', '.join(parts) or 'none'} · {ready}"


def _row(cert: dict[str, Any], now: datetime, policy: SchedulePolicy) -> str:
    level = cert["health"]
    must = '<span class="tag">must-staple</span> ' if cert["must_staple"] else ""
    return f"""<tr class="cert {level}" data-name="{escape(cert["name"])}" \
data-state="{escape(cert["state"])}">
<td><div class="name">{escape(cert["name"])}</div>
<div class="path" title="{escape(cert["cert"])}">{escape(_short_path(cert["cert"]))}</div>
<div>{must}<span class="small">serial {escape(cert["serial"])}</span></div></td>
<td><span class="badge {level}">{escape(level.upper())}</span>
<span class="state">{escape(cert["state"])}</span>
<div class="small">{escape(cert["health_reason"])}</div></td>
<td class="timeline">{_timeline(cert, policy)}</td>
<td>{_next_refresh(cert["next_refresh"], now)}{_note(cert["schedule_note"])}</td>
<td>{_errors(cert)}</td>
</tr>
"""


def _timeline(cert: dict[str, Any], policy: SchedulePolicy) -> str:
    if cert["this_update"] is None:
        return f'<div class="empty">{_no_staple(cert)}</div>'
    elapsed = 100 * (1 - cert["fraction_left"])
    refresh = 100 * policy.refresh_at
    left = f"{human_duration(cert['seconds_left'])} left ({100 * cert['fraction_left']:.0f}%)"
    label = (
        f"thisUpdate {cert['this_update']}, refresh point {cert['refresh_point']},"
        f" effective expiry {cert['effective_expiry']}; {left}"
    )
    return f"""<div class="bar" role="img" aria-label="{escape(label)}">
<div class="elapsed" style="width: {elapsed:.2f}%"></div>
<div class="mark refresh" style="left: {refresh:.2f}%" title="refresh point"></div>
<div class="mark now" style="left: {elapsed:.2f}%"><span>now</span></div></div>
<div class="scale" aria-hidden="true"><span>{_time(cert["this_update"])}</span>
<span>refresh {_time(cert["refresh_point"])}</span>
<span>expires {_time(cert["effective_expiry"])}</span></div>
<div class="small">{escape(left)}</div>"""


def _no_staple(cert: dict[str, Any]) -> str:
    if cert["revoked_at"]:
        return f"revoked at {_time(cert['revoked_at'])}: staple withdrawn"
    return escape(cert["health_reason"])


def _next_refresh(iso: str | None, now: datetime) -> str:
    if iso is None:
        return "none planned"
    seconds = (datetime.fromisoformat(iso) - now).total_seconds()
    relative = f"in {human_duration(seconds)}" if seconds > 0 else "due now"
    return f'{_time(iso)}<div class="small">{escape(relative)}</div>'


def _note(note: str | None) -> str:
    return f'<div class="small note">{escape(note)}</div>' if note else ""


def _errors(cert: dict[str, Any]) -> str:
    if not cert["last_error"]:
        return '<span class="small">none</span>'
    count = cert["failures"]
    streak = f"{count} failed refresh{'es' if count > 1 else ''} in a row" if count else ""
    recent = "".join(
        f"<li>{_time(a['at'])} {escape(a['method'])} {escape(str(a['http_status'] or '-'))}"
        f" <code>{escape(a['reason'])}</code></li>"
        for a in cert["attempts"]
        if a["reason"]
    )
    return (
        f"<code>{escape(cert['last_error'])}</code> {escape(cert['last_message'])}"
        f'<div class="small">{streak}</div>'
        f'<ul class="errors" aria-label="recent failed attempts">{recent}</ul>'
    )


def _short_path(path: str) -> str:
    """A long path as its last two parts, which tell certificates apart."""
    parts = path.split("/")
    return path if len(path) <= _PATH_SHOWN else "…/" + "/".join(parts[-2:])


def _time(iso: str, *, year: bool = False) -> str:
    """A `<time>` element: '24 Nov 05:40Z' (with the year if asked), the full value as title."""
    shown = short_time(iso, year=year)
    return f'<time datetime="{escape(iso)}" title="{escape(iso)}">{escape(shown)}</time>'
