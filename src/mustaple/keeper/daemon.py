"""Running the keeper for real: build it from a config, the daemon loop, reload and stop.

`serve(config_path, stop=..., reload=...)` is embeddable (tests and `mustaple run` use it):
setting `stop` ends it gracefully: the pass in progress stops fetching and loading, and
delivers what it fetched (a start is cut short at once);
setting `reload` ends the pass's fetching as a stop does (what it fetched is delivered; what
it did not reach goes first at the next pass), then re-reads the configuration, and a
configuration that fails to load, moves
`state_dir`, or whose keeper or endpoint cannot start is reported and the running keeper kept
as it is.
Under systemd (Type=notify) it reports READY, STATUS after each pass, WATCHDOG from a timer of
its own (a slow pass is not a stuck process) and STOPPING. With an `[http]`
table it also serves the local OCSP responder, metrics, health and the status page (and keeps
serving them across a reload); with a `[fleet]` table it joins the fleet on Redis
(`mustaple.keeper.fleet`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from mustaple.adapters import sinks as sink_builders
from mustaple.adapters.collector import Settled
from mustaple.adapters.config import Config, ConfigError, load_config
from mustaple.adapters.files import os_words
from mustaple.adapters.http1 import Watcher
from mustaple.adapters.notify import notify, watchdog_interval
from mustaple.adapters.patience import thread_problem
from mustaple.adapters.sinks import SinkConfigError
from mustaple.adapters.store import BUSY_TIMEOUT, SqliteStore
from mustaple.core.clock import Clock, utc_now
from mustaple.core.delivery import Sink
from mustaple.core.errors import InputError
from mustaple.core.fetchtypes import Fetcher
from mustaple.core.render import counted, human_time
from mustaple.keeper.keeper import NOT_DELIVERED_AT_START, Keeper
from mustaple.keeper.surveys import Surveys

if TYPE_CHECKING:  # loaded where used: `prime` and `status` need none of redis, metrics, web
    from mustaple.keeper.fleet import Fleet
    from mustaple.serve.metrics import Metrics
    from mustaple.serve.web import HttpServer

__all__ = ["build_sinks", "check_config", "open_fleet", "open_keeper", "serve"]

log = logging.getLogger("mustaple")
# seconds a write of `run` waits for another process's write lock: its event loop serves the
# local responder and the watchdog meanwhile; a write that cannot wait stays pending and is
# tried again at the next pass
RUN_BUSY_TIMEOUT = 1.0
# seconds a thread waiting for the interpreter waits before it is handed over, in `run`
# (`_prompt_switches`): at 100k certificates, the local responder's paced p99 was 5.4 ms
# with Python's 5 ms, 1.3 ms with 0.5 ms (no lower with 0.2 or 0.1 ms)
SWITCH = 0.0005


def build_sinks(config: Config) -> dict[str, Sink]:
    """Every configured sink, or ConfigError naming the file and the key. With file events
    (`policy.rescan_interval` longer than `policy.watch_interval`), the sinks' looks at
    their staple files skip those no event touched."""
    policy = config.policy
    rescan = policy.rescan_interval if policy.rescan_interval > policy.watch_interval else None
    try:
        return sink_builders.build_sinks(config.sinks, policy.watch_timeout, rescan)
    except SinkConfigError as exc:
        raise ConfigError(f"{config.path}: {exc}") from None


def check_config(path: Path) -> Config:
    """Load the configuration and build its sinks; raise ConfigError if anything is wrong."""
    config = load_config(path)
    build_sinks(config)
    return config


@asynccontextmanager
async def open_keeper(
    config: Config,
    *,
    clock: Clock = utc_now,
    watchers: Sequence[Watcher] = (),
    fetcher: Fetcher | None = None,
    busy_timeout: float = BUSY_TIMEOUT,
    read_when_full: bool = False,
    made: dict[str, datetime] | None = None,
    surveys: Surveys | None = None,
) -> AsyncIterator[Keeper]:
    """A keeper with its state store and sinks, closed on exit (its own HTTP fetcher unless
    `fetcher` is given); its writes wait `busy_timeout` for another process's lock. With
    `read_when_full`, a full state disk opens the store for reading only (the daemon: it
    serves what is stored) instead of raising InputError. `made` and `surveys`: the
    refreshes this process made and its look at the files, by a keeper it replaces
    (`Keeper.made`, `Keeper.surveys`)."""
    sinks = build_sinks(config)
    store = SqliteStore(
        config.state_dir / "state.db", busy_timeout=busy_timeout, read_when_full=read_when_full
    )
    try:
        keeper = Keeper(
            config,
            store=store,
            sinks=sinks,
            clock=clock,
            watchers=watchers,
            fetcher=fetcher,
            made=made,
            surveys=surveys,
        )
        async with keeper:
            yield keeper
    finally:
        store.close()


@asynccontextmanager
async def open_fleet(
    config: Config, keeper: Keeper, *, for_prime: bool = False
) -> AsyncIterator[Fleet | None]:
    """With a `[fleet]` table: `keeper` in the fleet on Redis, left on exit (None without one).

    The daemon scans first, then joins for good (it adopts newer shared staples and keeps
    beating); `prime` (`for_prime`) uses or shares the fleet's staples, never waits for
    another member, and runs nothing in the background."""
    if config.fleet is None:
        yield None
        return
    from mustaple.keeper.fleet import Fleet  # redis, only in fleet mode

    fleet = Fleet(config.fleet, eager=for_prime)
    try:
        if not for_prime:
            await keeper.scan()
        await fleet.start(keeper, background=not for_prime)
        yield fleet
    finally:
        await fleet.close()


async def serve(
    config_path: Path,
    *,
    stop: asyncio.Event,
    reload: asyncio.Event | None = None,
    clock: Clock = utc_now,
) -> None:
    """Run the keeper until `stop` is set; re-read the configuration when `reload` is set.

    On a reload the new keeper is built and has delivered its staples before the old one is
    closed, and the HTTP endpoint keeps listening (unless `[http]` itself changed), so the
    local responder never stops answering."""
    reload = reload or asyncio.Event()
    config = check_config(config_path)
    with _only_daemon(config.state_dir), _prompt_switches():
        watchdog = asyncio.ensure_future(_watchdog(watchdog_interval()))
        try:
            await _serve(config_path, config, stop, reload, clock)
        finally:
            watchdog.cancel()
    log.info("stopped")


async def _watchdog(interval: timedelta | None) -> None:
    """WATCHDOG=1 every `interval` while the event loop turns (a pass that waits on a hanging
    CA for minutes is alive; a stuck loop is not, and systemd restarts it)."""
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval.total_seconds())


@contextmanager
def _prompt_switches() -> Iterator[None]:
    """While inside, a thread waiting for the interpreter gets it within SWITCH seconds
    (Python's default: 5 ms). The event loop's thread answers the local responder while a
    helper thread lists and stats the certificate files and the sinks' copies (about 1 s
    of Python a pass at 100k): each answer waited up to 5 ms then (bench/serving.py)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@contextmanager
def _only_daemon(state_dir: Path) -> Iterator[None]:
    """Hold `state_dir/run.lock` while running: a second daemon on the same state stops at
    once, before it delivers or runs anything (InputError, exit 2). `prime` and `status` do
    not take it: they work beside the daemon through the shared state."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        handle = (state_dir / "run.lock").open("a+")
    except OSError as exc:
        problem = os_words(exc, state_dir)
        raise InputError(f"{state_dir}: cannot use the state directory ({problem})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise InputError(
                f"{state_dir}: another `mustaple run` (pid {holder}) keeps this state "
                "directory; stop it first, or give this one its own `state_dir`"
            ) from None
        with contextlib.suppress(OSError):  # the pid only informs (a full disk: the lock holds)
            os.ftruncate(handle.fileno(), 0)  # unbuffered: nothing left to fail at the close
            os.pwrite(handle.fileno(), f"{os.getpid()}\n".encode(), 0)
        yield


async def _serve(
    config_path: Path, config: Config, stop: asyncio.Event, reload: asyncio.Event, clock: Clock
) -> None:
    running = await _unless_stopped(_Running.open(config, clock), stop)
    if running is None:
        notify("STOPPING=1")
        return
    server: HttpServer | None = None
    closing: set[asyncio.Task[None]] = set()  # keepers replaced by a reload, closing
    settled = Settled()
    try:
        server = await _serve_http(None, running, config)
        await _ready(running.keeper)
        await running.keeper.build_index()
        while True:
            await _loop(running.keeper, stop, reload, clock, settled)
            running.keeper.save_pending()
            if stop.is_set():
                break
            reload.clear()
            changed = _reloaded(config_path, config)
            if changed is None or _holds_unstored(running.keeper, config_path):
                continue  # the running keeper goes on as it was: its backoff, its streaks
            await running.pause()  # its fleet: the new keeper's takes over
            switched = await _switch(running, server, changed, stop, clock)
            if switched is None:
                await running.resume()
                server = await _still_serving(server, running, config)
                continue
            switched[0].keeper.unreached = running.keeper.unreached  # first at its first pass
            old, (running, server) = running, switched
            config = changed
            await _ready(running.keeper)
            await running.keeper.build_index()
            closing.add(task := asyncio.ensure_future(old.close()))  # its hooks may run on
            task.add_done_callback(closing.discard)
            task.add_done_callback(lambda _: settled.anew())  # the old keeper is garbage
    finally:
        notify("STOPPING=1")
        if server is not None:
            await server.cleanup()
        await running.close()
        if closing:
            await asyncio.wait(closing)


async def _switch(
    running: _Running,
    server: HttpServer | None,
    config: Config,
    stop: asyncio.Event,
    clock: Clock,
) -> tuple[_Running, HttpServer | None] | None:
    """The keeper and endpoint for a reloaded `config`, serving, or None when they cannot
    start (a state directory that cannot be opened, a port in use: said in one line) or
    `stop` came first; the running ones are then kept, untouched."""
    try:
        replaced = running.keeper
        opening = _Running.open(config, clock, replaced.made, replaced.surveys)
        started = await _unless_stopped(opening, stop)
    except Exception as exc:
        log.error("%s; keeping the running configuration", _why(exc))
        return None
    if started is None:
        return None
    try:
        return started, await _serve_http(server, started, config)
    except Exception as exc:
        await started.close()
        log.error("%s; keeping the running configuration", _why(exc))
        return None


async def _still_serving(
    server: HttpServer | None, running: _Running, config: Config
) -> HttpServer | None:
    """`server`, or, when a failed switch closed it (the new endpoint needed its port and
    then could not listen), the running configuration's endpoint started again."""
    if server is None or not server.closed:
        return server
    try:
        return await _serve_http(None, running, config)
    except Exception as exc:
        log.error("%s; the HTTP endpoint is down until the next reload", _why(exc))
        return None


def _holds_unstored(keeper: Keeper, path: Path) -> bool:
    """Whether `keeper` holds what the state store could not take (a full disk, a lock kept
    by another connection), said in one line: answers (a new keeper would start from the
    older stored ones, and a server without a copy of its own, HAProxy or the local
    responder, would be given those again) or hooks told (a new keeper would tell them
    again)."""
    held = [
        f"{count} {what}"
        for count, what in (
            (keeper.unstored(), "answers held in memory are not stored yet"),
            (keeper.unrecorded(), "hooks told are not recorded yet"),
        )
        if count
    ]
    if held:
        log.error(
            "%s: not reloaded: %s (%s), and a new keeper would start from the older state; "
            "reload once the state store is writable again; keeping the running "
            "configuration",
            path,
            " and ".join(held),
            keeper.store_problem,
        )
    return bool(held)


def _why(exc: Exception) -> str:
    if isinstance(exc, InputError | ConfigError | OSError):
        return str(exc)
    return f"unexpected error ({type(exc).__name__}: {exc}); please report it"


async def _unless_stopped(starting: Awaitable[_Running], stop: asyncio.Event) -> _Running | None:
    """`starting`, or None when `stop` is set first (it is then cancelled: a start that loads
    100k certificates, or waits on an issuer download, takes a while; SIGTERM should not)."""
    task = asyncio.ensure_future(starting)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        late = await task
    except asyncio.CancelledError:
        late = None
    if late is not None:  # it finished before it heard the cancellation
        await late.close()
    log.info("stopped while starting")
    return None


@dataclass
class _Running:
    """One configuration at work: the keeper, its fleet membership and its metrics."""

    keeper: Keeper
    fleet: Fleet | None
    metrics: Metrics
    stack: AsyncExitStack

    @classmethod
    async def open(
        cls,
        config: Config,
        clock: Clock,
        made: dict[str, datetime] | None = None,
        surveys: Surveys | None = None,
    ) -> _Running:
        """Build the keeper, join the fleet, deliver the stored staples (see `_start`);
        `made` and `surveys`: those of the keeper it replaces (`Keeper.made`,
        `Keeper.surveys`)."""
        stack = AsyncExitStack()
        try:
            keeper = await stack.enter_async_context(
                open_keeper(
                    config,
                    clock=clock,
                    busy_timeout=RUN_BUSY_TIMEOUT,
                    read_when_full=True,
                    made=made,
                    surveys=surveys,
                )
            )
            fleet = await stack.enter_async_context(open_fleet(config, keeper))
            from mustaple.serve.metrics import Metrics  # prometheus-client, only for `run`

            metrics = Metrics(keeper, clock=clock, fleet=fleet)  # observes the keeper
            await _start(keeper)  # stored staples first: never answer empty-handed
        except BaseException:
            await stack.aclose()
            raise
        return cls(keeper, fleet, metrics, stack)

    async def pause(self) -> None:
        """Before a reload's switch: the fleet's membership paused (see `Fleet.pause`), so
        that until this keeper is closed nothing but the daemon's own loop makes it deliver
        or write (the loop has ended, its writes stored)."""
        if self.fleet is not None:
            await self.fleet.pause()

    async def resume(self) -> None:
        """The switch failed: this keeper goes on, in its fleet again."""
        if self.fleet is not None:
            await self.fleet.resume()

    async def close(self) -> None:
        await self.stack.aclose()


async def _serve_http(
    server: HttpServer | None, running: _Running, config: Config
) -> HttpServer | None:
    """The HTTP endpoint for `config`: the one listening, switched to the new keeper, or
    a new one (none without `[http]`), listening before the old one closes unless both use
    the same port (0.0.0.0 and 127.0.0.1 cannot both hold it: the old one frees it first)."""
    if server is not None and server.http == config.http:
        server.switch(running.keeper, running.metrics)
        return server
    http = config.http
    if server is not None and (http is None or server.http.port == http.port):
        await server.cleanup()
        server = None
    if http is None:
        return None
    from mustaple.serve.web import start_http  # aiohttp's server, only with [http]

    started = await start_http(running.keeper, http, metrics=running.metrics)
    if server is not None:
        await server.cleanup()
    return started


def _reloaded(path: Path, running: Config) -> Config | None:
    """The configuration at `path`, or None (said in one line) when it cannot be used: the
    running one is then kept as it is, whatever went wrong: a reload never stops the keeper."""
    try:
        config = check_config(path)
    except ConfigError as exc:
        log.error("%s; keeping the running configuration", exc)
        return None
    except Exception as exc:  # a bug of ours, in reading a new file: the keeper goes on
        log.debug("the new configuration could not be read", exc_info=True)
        log.error(
            "%s: cannot use the new configuration (internal error: %s: %s; please report it); "
            "keeping the running configuration",
            path,
            type(exc).__name__,
            exc,
        )
        return None
    if config.state_dir != running.state_dir:
        log.error(
            "%s: state_dir changed from %s to %s, which a reload cannot do (this process "
            "holds the old one's lock); restart mustaple to use it; keeping the running "
            "configuration",
            path,
            running.state_dir,
            config.state_dir,
        )
        return None
    log.info("configuration reloaded from %s", path)
    return config


async def _start(keeper: Keeper) -> None:
    """Deliver every stored staple that is still valid (or a newer one a file sink holds),
    before the first fetch (the delivery writes every status row: each certificate is new to
    this process, so each has one). A stop during the delivery (its reload command killed)
    leaves rows saying which sinks did not take their staple and owe a reload."""
    # it looks at the sinks' copies of those without a staple, and sets the file events up
    await keeper.scan(watch=True)
    await keeper.take_from_sinks(
        m for m in keeper.managed.values() if m.life.state.answer is not None
    )
    keeper.owe_reloads()
    try:
        await keeper.deliver(again=True)
    except asyncio.CancelledError:  # a stop (`_unless_stopped`): the reload command is killed
        keeper.not_delivered(NOT_DELIVERED_AT_START)  # the rows owe it: the next start pays it
        raise


async def _ready(keeper: Keeper) -> None:
    """Tell systemd (and the log) that we serve: staples delivered, endpoint listening."""
    status = await _summary(keeper)
    log.info("started: %s", status)
    notify("READY=1", f"STATUS={status}")


async def _summary(keeper: Keeper) -> str:
    """The certificates (a file holds one, its leaf; a leaf in two files is one) and the
    files they come from (a file that cannot be used holds none), and the staples held."""
    held = keeper.count_held()
    files = counted(len(keeper.managed) + len(keeper.problems), "file")
    unusable = f" ({len(keeper.problems)} unusable)" if keeper.problems else ""
    certificates = counted(len(keeper.lives), "certificate")
    return f"{certificates} from {files}{unusable}, {held} with a valid staple"


def _pass_failed(exc: Exception) -> None:
    """The line of a pass cut short by `exc`: a limit of tasks reached, or a bug."""
    why = thread_problem(exc)
    if why is not None:
        log.error("a pass was cut short: %s; the keeper goes on and tries again", why)
        return
    log.error(
        "unexpected error in a pass (%s: %s); the keeper goes on and tries again at the next "
        "one; please report it",
        type(exc).__name__,
        exc,
    )


async def _loop(
    keeper: Keeper, stop: asyncio.Event, reload: asyncio.Event, clock: Clock, settled: Settled
) -> None:
    """Passes until `stop` or `reload`; after each, what the keeper holds is settled (see
    `Settled`: the collector no longer scans it all, 0.6 s at 100k, once a pass)."""
    failed = 0  # passes in a row that failed: the next waits 1 s, 2 s ... at most the watch
    while not (stop.is_set() or reload.is_set()):  # interval: never a busy loop
        try:
            async with _either(stop, reload) as cut:
                await keeper.tick(cut)  # a stop or reload ends its fetching, not its delivery
                await keeper.scan(cut, watch=True)
        except Exception as exc:  # a bug must not end the daemon: the next pass tries again
            failed += 1
            _pass_failed(exc)
            limit = keeper.policy.watch_interval.total_seconds()
            await _wait(stop, reload, min(float(1 << min(failed - 1, 20)), limit))
            continue
        failed = 0
        settled.settle()
        await asyncio.sleep(0)  # a turn for the local responder: each step goes through 100k
        notify(f"STATUS={await _summary(keeper)}; last pass {human_time(clock())}")
        await _wait(stop, reload, await _pause(keeper, clock))


async def _pause(keeper: Keeper, clock: Clock) -> float:
    """Seconds until something is due, at most the watch interval."""
    pause = keeper.policy.watch_interval
    wake = keeper.next_wakeup()
    if wake is not None:
        pause = min(pause, max(wake - clock(), timedelta(0)))
    return pause.total_seconds()


@asynccontextmanager
async def _either(stop: asyncio.Event, reload: asyncio.Event) -> AsyncIterator[asyncio.Event]:
    """An event set once `stop` or `reload` is (a pass waiting on a responder that hangs
    would hold up a SIGHUP as long as a SIGTERM)."""
    either = asyncio.Event()

    async def watch() -> None:
        await _wait(stop, reload, None)
        either.set()

    watching = asyncio.ensure_future(watch())
    try:
        yield either
    finally:
        watching.cancel()


async def _wait(stop: asyncio.Event, reload: asyncio.Event, seconds: float | None) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, reload)]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
