"""Fleet mode: the members of a fleet share staples through Redis and take turns fetching.

A `Fleet` is the keeper's `Coordinator`. For each certificate that falls due it decides
(`claim`), looking at the shared state (`mustaple.adapters.redisstore`):

1. a shared staple newer than ours, that passes our own validation: adopt it, fetch nothing;
2. the same staple as ours, fetched again by a member just now (the CA answered the same):
   wait for the floor one member keeps after a fetch (`schedule.refresh_floor`:
   `min_interval` after that fetch, or sooner for an answer too short for it);
3. the fleet asked to wait after a failure (a retry mark by another member): wait until then;
4. the lease of the certificate is ours: fetch (the lease is renewed while fetching); `settle`
   then stores the staple under the lease's fencing token (or marks when to retry), records
   the attempts with our name and releases the lease;
5. another member holds the lease: wait for its announcement, at most one lease time; a member
   that died holding it is replaced when the lease runs out.

A member that stores a staple announces it on a channel; every member hears it (a listener
thread), validates the staple itself and delivers it to its own sinks within a second. A
shared staple that fails our validation is never delivered: it is logged and we fetch.

Each member records in Redis the leaves it manages (`RedisStore.record_leaves`): all of
them when it joins (or finds them gone), then at a heartbeat only what changed since, so that
`mustaple status --fleet` can say which members still manage an older leaf after a renewal.

Redis unavailable: every member goes on alone (fetching for itself, from its local SQLite copy
of the last good staple), logs it once, probes Redis with its heartbeat, and on its return
catches up: it adopts shared staples newer than its own and shares its own newer ones.

All Redis calls run in one worker thread, so a Redis that does not answer never stalls the
event loop (nor the local OCSP responder); each call gives up after `RedisStore.timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import redis

from mustaple.adapters.config import FleetConfig
from mustaple.adapters.fetch import FetchResult
from mustaple.adapters.redisstore import Beat, Lease, RedisStore, Retry, shown_url, wrong_type
from mustaple.adapters.store import StoredStaple
from mustaple.core.leaves import LeafFacts
from mustaple.core.render import human_duration
from mustaple.core.schedule import refresh_floor
from mustaple.core.verify import Staple, strictly_newer, verify
from mustaple.keeper.keeper import Keeper, Life, Managed, Turn, attempt_records

__all__ = ["Fleet"]

log = logging.getLogger("mustaple")
_T = TypeVar("_T")
GATHER_SECONDS = 0.2  # announcements heard within this are adopted and delivered together
CATCH_UP_BATCH = 500  # certificates read from Redis in one round trip when catching up
# what `RedisStore.acquire` replaced: keys under the prefix no member wrote
_REPLACED = {
    "lease": "the lease key in Redis was no member's lease (it never ran out, or held another"
    " type): replaced by this member's",
    "fence": "the fencing counter in Redis was no member's (not a whole number, or another"
    " type): started again above the stored staple's token",
}
RECHECK_PER_BEAT = 100  # certificates whose shared record each heartbeat looks for
SHARED_HISTORY = 10  # attempts kept in Redis per certificate (each member keeps 50 locally)
LISTEN_POLL_SECONDS = 0.25  # how soon the listener thread notices it should stop


class Fleet:
    """One member of a fleet (see the module docstring). `start(keeper)` joins, `close` leaves.

    An `eager` member never waits: with no newer shared staple it fetches, under the lease if
    it can get it, and shares what it got (`mustaple prime`: a deploy hook must not wait on
    another member). `start(keeper, background=False)` only connects: no listening, no
    heartbeat (a one-shot command is no member of the fleet view)."""

    def __init__(self, config: FleetConfig, *, timeout: float = 2.0, eager: bool = False) -> None:
        self.config, self.eager = config, eager
        self.shared = RedisStore(
            config.url,
            prefix=config.prefix,
            member=config.member,
            history_limit=SHARED_HISTORY,
            timeout=timeout,
        )
        self.up = False  # whether Redis answers (else this member goes on alone)
        self._beaten: datetime | None = None  # our last heartbeat since we joined (`_beat`)
        self.adopted = 0  # staples fetched by other members and adopted here
        self._keeper: Keeper | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="mustaple-redis")
        self._heard: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._beat_written = False  # a heartbeat of ours is in Redis: say we left at the close
        self._paused = False  # a reload's new keeper took over (`pause`)
        self._listening: threading.Event | None = None  # set to stop the listener thread
        self._listener: threading.Thread | None = None
        self._renewals: dict[str, asyncio.Task[None]] = {}
        self._adopting: asyncio.Future[None] | None = None  # the last adoption of what was heard
        self._refusals: dict[str, str] = {}  # what Redis refused last, by record (said once)
        self._refused: dict[str, bytes] = {}  # shared DER that failed our validation, by key
        self._recheck_from = 0  # where the next heartbeat looks for vanished records
        self._leaves: set[str] | None = None  # the keys of the leaves recorded (None: none yet)

    @property
    def member(self) -> str:
        return self.config.member

    @property
    def keeper(self) -> Keeper:
        if self._keeper is None:
            raise RuntimeError("the fleet has not been started with a keeper")
        return self._keeper

    @property
    def beat_interval(self) -> float:
        """Seconds between heartbeats (and Redis probes while it is down)."""
        return self.config.beat_interval

    async def _call(self, function: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, partial(function, *args))

    # --- Joining and leaving ----------------------------------------------------------------------

    async def start(self, keeper: Keeper, *, background: bool = True) -> None:
        """Join: listen, catch up with the shared state (the caller delivers), beat. Redis
        down: go on alone. Call after the keeper's first scan."""
        self._keeper = keeper
        keeper.coordinator = self
        if not background:
            try:
                await self._call(self.shared.ping)
                self.up = True
            except redis.RedisError as exc:
                self._lost(exc)
            return
        await self._join(deliver=False)
        self._tasks = self._background()

    def _background(self) -> list[asyncio.Task[None]]:
        """The member's work in the background: adopting what is heard, beating."""
        return [
            asyncio.create_task(self._adopt_heard(), name="fleet-adopt"),
            asyncio.create_task(self._beat(), name="fleet-beat"),
        ]

    async def _quiet(self) -> None:
        """Stop listening (the listener thread ended: nothing heard from now on) and the
        background work (a gathering not adopted yet is dropped)."""
        self._stop_listening()
        if self._listener is not None:
            await asyncio.to_thread(self._listener.join, LISTEN_POLL_SECONDS * 4)
        for task in [*self._tasks, *self._renewals.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._renewals.values(), return_exceptions=True)
        if self._adopting is not None:
            await asyncio.gather(self._adopting, return_exceptions=True)
        while not self._heard.empty():
            self._heard.get_nowait()

    async def pause(self) -> None:
        """Hear no member and beat no more, until `resume` (a reload: this keeper is being
        replaced, and the new keeper's membership takes over; a staple this one adopted
        meanwhile would be delivered and recorded as this keeper's view, a certificate or a
        sink the reload removed included). Closed paused, it does not say it left."""
        await self._quiet()
        self._tasks, self._paused = [], True

    async def resume(self) -> None:
        """After `pause` (the reload failed: this keeper goes on): join again, catching up
        with what was announced meanwhile (delivered), and beat."""
        self._paused = False
        await self._join()
        self._tasks = self._background()

    async def close(self) -> None:
        """Leave: say so in our heartbeat once one is in Redis (also when a stop cut the
        start short, after the first heartbeat), unless paused (a reload's new keeper beats)."""
        await self._quiet()
        joining = not self._tasks  # Redis answered our first heartbeat; a stop came meanwhile
        if self._beat_written and not self._paused and (self.up or joining):
            with contextlib.suppress(redis.RedisError):
                await self._call(self.shared.beat, self.keeper.clock(), self._info(left=True))
        await self._call(self.shared.close)
        self._worker.shutdown(wait=True)

    async def _join(self, *, deliver: bool = True) -> None:
        """Beat (a write: a Redis that answers but refuses writes, full under `noeviction` or
        a read-only replica, is still unavailable), listen (nothing announced from now on is
        missed), then catch up."""
        try:
            beaten = await self._first_beat(self.keeper.clock())
            await self._listen()
        except redis.RedisError as exc:
            self._lost(exc)
            return
        self.up, self._beaten = True, beaten
        log.info("fleet: joined as %s at %s", self.member, shown_url(self.config.url))
        self._leaves = None  # Redis may have lost them meanwhile: all of them again
        await self._record_leaves()
        await self._catch_up_or_say(deliver)

    async def _first_beat(self, now: datetime) -> datetime | None:
        """The heartbeat at joining: when it was written, or None when the heartbeat record is
        of another type (said once: the member joins without it). Raises what Redis raised
        otherwise."""
        try:
            beat = await self._call(self.shared.beat, now, self._info())
        except redis.ResponseError as exc:
            if not wrong_type(exc):
                raise
            self._trouble(exc, "the heartbeat")
            return None
        self._beat_written = True
        self._say_dropped(beat.dropped)
        return now

    async def _catch_up_or_say(self, deliver: bool) -> None:
        try:
            await self._catch_up(deliver)
        except redis.RedisError as exc:
            self._trouble(exc, "the catch-up")

    def _trouble(self, exc: redis.RedisError, what: str) -> None:
        """A Redis call failed: Redis cannot answer or refuses us (`_lost`: unreachable, a
        read-only replica, no permission), or it refused one record (a key of another type,
        written by something else): that record is done without, said once per record and
        message, and the fleet goes on."""
        if not wrong_type(exc):
            self._lost(exc)
            return
        problem = _short(exc)
        if self._refusals.get(what) != problem:
            self._refusals[what] = problem
            log.warning("fleet: Redis refused %s (%s); going on without it", what, problem)

    def _lost(self, exc: BaseException) -> None:
        """Redis cannot answer: go on alone until the heartbeat finds it again."""
        if self.up or not self._tasks:  # once, or at the start
            log.error(
                "fleet: Redis at %s unavailable (%s); serving and refreshing alone until it"
                " returns",
                shown_url(self.config.url),
                _short(exc),
            )
        self.up = False
        self._stop_listening()

    async def _beat(self) -> None:
        """Say we are alive, and show what we hold; while Redis is down, probe it to rejoin."""
        while True:
            await asyncio.sleep(self.beat_interval)
            if self.up:
                await self._beat_once()
            else:
                await self._join()

    async def _beat_once(self) -> None:
        """One heartbeat (dropping those of members gone for a day). Ours gone since the last
        one: Redis lost what it held (flushed, or emptied under a connection that held), or
        we were silent so long that another member dropped it: share our staples again, as
        when joining. Then record what changed among our leaves (all of them when Redis lost
        them)."""
        now = self.keeper.clock()
        try:
            beat = await self._call(self.shared.beat, now, self._info())
        except redis.RedisError as exc:
            self._trouble(exc, "the heartbeat")
            return
        self._say_dropped(beat.dropped)
        last, self._beaten = self._beaten, now
        if beat.new and last is not None:
            if now - last >= self.shared.forget:
                log.warning(
                    "fleet: this member had no heartbeat for %s: joining again",
                    human_duration((now - last).total_seconds()),
                )
            else:
                log.warning(
                    "fleet: Redis at %s lost the fleet's records (this member's heartbeat was"
                    " gone: flushed?); sharing this member's staples again",
                    shown_url(self.config.url),
                )
            await self._catch_up_or_say(True)
        else:
            await self._share_vanished(now)
        self._leaves_kept(beat)
        if self.up:
            await self._record_leaves()

    def _leaves_kept(self, beat: Beat) -> None:
        """Our leaves gone from Redis (flushed, evicted, deleted, or a key of another type
        there): the next record writes all of them."""
        if self._leaves and (beat.new or not beat.leaves_kept):
            if not beat.new:  # a flush is said already
                log.warning(
                    "fleet: the record of this member's leaves was gone from Redis (evicted,"
                    " deleted, or of another type): recorded again"
                )
            self._leaves = None

    async def _record_leaves(self) -> None:
        """Record in Redis the leaves this member manages: what changed since the last
        record, or all of them when none was recorded (joining, Redis lost them, a write
        failed). Nothing changed: nothing is written."""
        lives, written = self.keeper.lives, self._leaves
        keys = set(lives)
        added = keys if written is None else keys - written
        gone = set() if written is None else written - keys
        if written is not None and not added and not gone:
            return
        facts = [_leaf_facts(lives[key]) for key in added]
        self._leaves = None  # until written
        write = partial(self.shared.record_leaves, facts, gone, whole=written is None)
        try:
            await self._call(write)
        except redis.RedisError as exc:
            self._trouble(exc, "the record of this member's leaves")
            return
        self._leaves = keys

    def _say_dropped(self, dropped: list[str]) -> None:
        forget = human_duration(self.shared.forget.total_seconds())
        for name in dropped:
            log.info(
                "fleet: member %r dropped from the fleet view: no heartbeat for %s", name, forget
            )

    async def _share_vanished(self, now: datetime) -> None:
        """Share again the valid staples we hold whose shared record is gone (evicted by
        Redis's maxmemory policy, deleted by hand): a member starting would fetch them again.
        Each heartbeat looks at the next `RECHECK_PER_BEAT` certificates."""
        every = list(self.keeper.managed.values())
        start = self._recheck_from % len(every) if every else 0
        batch = every[start : start + RECHECK_PER_BEAT]
        self._recheck_from = start + len(batch)
        held = {
            m.key: (m, a) for m in batch if (a := m.life.state.answer) and a.seconds_left(now) > 0
        }
        if not held:
            return
        try:
            gone = await self._call(self.shared.missing, list(held))
            again = [(key, _stored(*held[key]), None) for key in gone]
            await self._call(self.shared.publish_many, again)
        except redis.RedisError as exc:
            self._trouble(exc, "the records looked for at the heartbeat")
            return
        if again:
            log.warning(
                "fleet: staples shared again, their records gone from Redis (evicted?): %d",
                len(again),
            )

    def _info(self, *, left: bool = False) -> dict[str, Any]:
        """The heartbeat: the certificates (a leaf in two files is one) and their states."""
        states = [life.state for life in self.keeper.lives.values()]
        return {
            "left": left,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "certificates": len(states),
            "good": sum(state.held is not None for state in states),
            "failing": sum(state.failures > 0 for state in states),
            "revoked": sum(state.revoked is not None for state in states),
        }

    async def _catch_up(self, deliver: bool) -> None:
        """Adopt shared staples newer than ours; share ours where they are newer."""
        adopted = shared = 0
        fetchable = [m for m in self.keeper.managed.values() if m.next_due is not None]
        for start in range(0, len(fetchable), CATCH_UP_BATCH):
            batch = fetchable[start : start + CATCH_UP_BATCH]
            found = await self._call(self.shared.load_many, [m.key for m in batch])
            newer = []
            for managed, shared_staple in zip(batch, found, strict=True):
                if shared_staple is not None and self._adopt(managed, *shared_staple):
                    adopted += 1
                    continue
                answer, refused = managed.life.state.answer, self._refused.get(managed.key)
                if answer is None:
                    continue
                if refused is not None or _newer(answer, shared_staple):
                    newer.append((managed.key, _stored(managed, answer), refused))
            try:
                await self._call(self.shared.publish_many, newer)
            except redis.ResponseError as exc:  # one record of another type: the rest go on
                if not wrong_type(exc):
                    raise
                self._trouble(exc, "a staple shared at the catch-up")
            shared += len(newer)
        if adopted and deliver:
            await self.keeper.deliver()
        if adopted or shared:
            log.info("fleet: caught up: %d staples adopted, %d shared", adopted, shared)

    # --- Hearing other members ------------------------------------------------------------------

    async def _listen(self) -> None:
        """Subscribe, then start the listener thread: announcements go to `_heard`, Redis
        trouble to `_lost`. Once this returns, no announcement is missed."""
        self._stop_listening()
        pubsub = self.shared.client.pubsub(ignore_subscribe_messages=True)
        await self._call(pubsub.subscribe, self.shared.channel)
        stop = threading.Event()
        self._listening = stop
        loop = asyncio.get_running_loop()
        self._listener = threading.Thread(
            target=self._listen_until, args=(pubsub, stop, loop), daemon=True, name="fleet-listen"
        )
        self._listener.start()

    def _listen_until(
        self, pubsub: Any, stop: threading.Event, loop: asyncio.AbstractEventLoop
    ) -> None:
        try:
            while not stop.is_set():
                message = pubsub.get_message(timeout=LISTEN_POLL_SECONDS)
                if message is not None:
                    heard = message["data"].decode(errors="replace")  # a garbled one: no key
                    loop.call_soon_threadsafe(self._heard.put_nowait, heard)
        except redis.RedisError as exc:
            if not stop.is_set():
                loop.call_soon_threadsafe(self._lost, exc)
        except RuntimeError:  # the loop closed under us: we are leaving
            pass
        finally:
            pubsub.close()

    def _stop_listening(self) -> None:
        if self._listening is not None:
            self._listening.set()
            self._listening = None

    async def _adopt_heard(self) -> None:
        """Adopt announced staples, a gathering at a time, and deliver them together."""
        while True:
            heard = {await self._heard.get()}
            await asyncio.sleep(GATHER_SECONDS)
            while not self._heard.empty():
                heard.add(self._heard.get_nowait())
            # shielded: leaving (`_quiet`) waits for an adoption's delivery to end instead
            # of cutting it short (its reload killed, its status rows not written)
            self._adopting = asyncio.ensure_future(self._adopt_messages(heard))
            try:
                await asyncio.shield(self._adopting)
            except Exception as exc:  # keep hearing: a due certificate is claimed anyway
                log.error("fleet: adopting announced staples failed: %s", _short(exc))

    async def _adopt_messages(self, heard: set[str]) -> None:
        adopted = 0
        for message in heard:
            key, _, member = message.partition(" ")
            if member != self.member:
                adopted += await self._adopt_key(key)
        if adopted:
            await self.keeper.deliver()

    async def _adopt_key(self, key: str) -> int:
        managed = self.keeper.by_key(key)
        if not managed:
            return 0
        try:
            found = await self._call(self.shared.load_with_origin, key)
        except redis.RedisError as exc:
            self._trouble(exc, f"the shared staple of {managed[0].name}")
            return 0
        return sum(self._adopt(m, *found) for m in managed) if found else 0

    def _adopt(self, managed: Managed, stored: StoredStaple, origin: str) -> bool:
        current = managed.life.state.answer
        if current is not None and current.der == stored.der:
            return False
        staple = self._validated(managed, stored)
        if staple is None or not self.keeper.adopt(managed, staple, stored, origin):
            return False
        self.adopted += 1
        return True

    def _validated(self, managed: Managed, stored: StoredStaple) -> Staple | None:
        """The shared staple if it passes our own validation; never trusted otherwise."""
        outcome = verify(stored.der, managed.target, self.keeper.clock(), self.keeper.policy.verify)
        if isinstance(outcome, Staple):
            self._refused.pop(managed.key, None)
            return outcome
        self._refused[managed.key] = stored.der  # our next staple replaces it, whatever it says
        log.warning(
            "%s: fleet: the shared staple is refused: %s",
            managed.name,
            f"{outcome.code}: {outcome.message}",
        )
        return None

    # --- Taking turns ---------------------------------------------------------------------------

    async def claim(self, managed: Managed) -> Turn:
        """Fetch, adopt or wait (see the module docstring)."""
        if not self.up:
            return Turn()
        try:
            return await self._claim(managed)
        except redis.RedisError as exc:
            self._trouble(exc, f"the shared records of {managed.name}")
            return Turn()

    async def _claim(self, managed: Managed) -> Turn:
        now, shared = self.keeper.clock(), self.shared
        turn = self._from_look(managed, *await self._call(shared.look, managed.key), now)
        if turn is not None:
            return turn
        # the member before us stores its staple or its retry mark before it releases the
        # lease: look again once the lease is ours
        lease, found, retry = await self._call(
            shared.acquire_and_look, managed.key, self.config.lease
        )
        if lease is None:
            return Turn() if self.eager else Turn(wait_until=now + self.config.lease)
        for replaced in lease.replaced:
            log.warning("%s: fleet: %s", managed.name, _REPLACED[replaced])
        turn = self._from_look(managed, found, retry, now)
        if turn is not None:
            await self._call(shared.release, lease)
            return turn
        self._renewals[managed.key] = asyncio.create_task(self._renew(lease))
        return Turn(token=lease)

    def _from_look(
        self,
        managed: Managed,
        found: tuple[StoredStaple, str] | None,
        retry: Retry | None,
        now: datetime,
    ) -> Turn | None:
        """What the shared state says: adopt or wait (see `_from_shared`), or wait for the
        retry mark of another member's failure; None: fetch."""
        turn = self._from_shared(managed, found, now)
        if turn is not None:
            return turn
        if retry is None or retry.member == self.member or self.eager or retry.left is None:
            return None  # none, ours, or one that never runs out: no member's, it holds none back
        # how long Redis keeps the mark, by its own clock: members' clocks may differ; never
        # longer than our own longest retry (another member's policy, or its bug)
        until = now + min(retry.left, self.keeper.policy.schedule.retry_max)
        return Turn(wait_until=until) if until > now else None

    def _from_shared(
        self, managed: Managed, found: tuple[StoredStaple, str] | None, now: datetime
    ) -> Turn | None:
        """Adopt a newer shared staple, or wait while the shared one is not due; None: fetch."""
        if found is None:
            return None
        stored, origin = found
        current = managed.life.state.answer
        if current is not None and current.der == stored.der:  # ours: validated already
            # due, unless it was adopted while we looked (its schedule then says when), or a
            # member fetched it again just now (the CA answered the same): keep the floor
            # one member keeps after a fetch (`min_interval`, or sooner for an answer too
            # short for it: never past its expiry)
            fetched, policy = min(stored.fetched_at, now), self.keeper.policy.schedule
            again = refresh_floor(current, fetched, self.keeper.dice, policy)
            due = max(again, managed.next_due or now)
            return Turn(wait_until=due) if due > now else None
        if self._adopt(managed, stored, origin):
            return Turn(wait_until=managed.next_due)
        return None

    async def _renew(self, lease: Lease) -> None:
        """Keep the lease while the fetch goes on."""
        while True:
            await asyncio.sleep(self.config.lease.total_seconds() / 3)
            try:
                held = await self._call(self.shared.renew, lease, self.config.lease)
            except redis.RedisError:
                continue
            if not held:
                log.warning("fleet: lost the lease of %s before the fetch ended", lease.key[:12])
                return

    async def settle(self, managed: Managed, turn: Turn, result: FetchResult | None) -> None:
        """Share what our fetch gave (fenced by the lease), then release the lease."""
        lease = turn.token if isinstance(turn.token, Lease) else None
        if lease is not None and (renewal := self._renewals.pop(lease.key, None)):
            renewal.cancel()
        if not self.up:
            return
        try:
            if result is not None:
                await self._call(self._share, managed, lease, result)
            elif lease is not None:  # the fetch raised: nothing to share, the lease goes
                await self._call(self.shared.release, lease)
        except redis.RedisError as exc:
            self._trouble(exc, f"the shared records of {managed.name}")
            if lease is not None and wrong_type(exc):
                with contextlib.suppress(redis.RedisError):
                    await self._call(self.shared.release, lease)

    def _share(self, managed: Managed, lease: Lease | None, result: FetchResult) -> None:
        """In the worker thread: attempts, then the staple or the retry mark, then release."""
        shared, key = self.shared, managed.key
        try:
            shared.add_attempts(key, attempt_records(result))
        except redis.ResponseError as exc:  # the history only: the staple is still shared
            if not wrong_type(exc):
                raise
            log.warning("%s: fleet: Redis refused the attempts (%s)", managed.name, _short(exc))
        staple = result.staple
        if staple is not None:
            stored = _stored(managed, staple, result.url, self.keeper.clock())
            refused = self._refused.get(key)
            if shared.publish(key, stored, lease, refused=refused):
                if refused is not None:
                    log.warning("%s: fleet: the refused shared staple is replaced", managed.name)
                    self._refused.pop(key, None)
            else:
                log.info("%s: fleet: a newer staple was shared meanwhile", managed.name)
            shared.clear_retry(key)
        elif result.rejection is not None and managed.next_due is not None:
            reason = result.rejection.code
            shared.mark_retry(key, managed.next_due, reason, self.keeper.clock())
        if lease is not None:
            shared.release(lease)


def _stored(
    managed: Managed, staple: Staple, url: str | None = None, at: datetime | None = None
) -> StoredStaple:
    return StoredStaple(
        managed.name,
        staple.der,
        staple.this_update,
        staple.effective_expiry,
        at or staple.produced_at,
        url,
        revoked=not staple.good,
    )


def _leaf_facts(life: Life) -> LeafFacts:
    leaf = life.target.leaf
    serial = f"{leaf.serial_number:x}"
    return LeafFacts(
        life.key, life.name, serial, leaf.not_valid_before_utc, leaf.not_valid_after_utc
    )


def _newer(staple: Staple, found: tuple[StoredStaple, str] | None) -> bool:
    """Whether ours is strictly newer than the shared one (`verify.strictly_newer`)."""
    if found is None:
        return True
    shared = found[0]
    return strictly_newer(staple, shared)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
