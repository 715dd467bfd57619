"""The state on Redis: the `Store` contract, plus what a fleet shares (leases, who fetched what).

`RedisStore(url, prefix=..., member=...)` keeps the `store.Store` contract (tests/test_store.py
runs the same suite on it and on SQLite) and adds the records a fleet of members coordinates
through (`mustaple.keeper.fleet`). A member's keeper (`run`, and `prime` beside it) keeps its
own state in SQLite (`store.SqliteStore`), which tells it what the other processes of its host
wrote; a fleet shares staples through this class, and hears the other members' ones as
announcements. Everything lives under `prefix`:

- `{prefix}staple:{key}`, a hash: the last good staple (DER and times), who fetched it
  (`fetched_by`) and the fencing token it was written with. `save_staple` is one Lua script:
  it refuses a staple older than the stored one, and one written under a fencing token older
  than the stored one (a member whose lease ran out while it was paused cannot overwrite what
  its successor stored); an accepted staple is announced on the channel `{prefix}staples`
  with the message `"{key} {member}"`.
- `{prefix}lease:{key}`: `"{member} {token}"`, set with SET NX PX semantics by `acquire`
  (the token comes from INCR of `{prefix}fence:{key}`, so it only grows; a counter gone starts
  again from Redis's clock in ms), extended by `renew`
  and dropped by `release` only by the member holding it. A write without a lease takes the
  token of the last lease given. A lease key that never runs out (or of another type) is no
  member's, nor is a counter that is not a whole number: `acquire` replaces them.
- `{prefix}retry:{key}`: after a failed fetch, when the fleet should try again and why; it
  lives in Redis as long as the fleet should wait, and readers wait for its TTL (Redis's
  clock), not for the time written in it (the marking member's clock); one without a TTL is
  no member's (`Retry.left` None), and holds nobody back.
- `{prefix}attempts:{key}`: the bounded history of attempts, newest first, with the member.
- `{prefix}status:{member}`: each member's view of each certificate (`save_status`).
- `{prefix}runs:{member}`: each member's open runs of failures (`settle_runs`, one Lua
  script: which of the member's processes tells a failure or a recovery to the hooks).
- `{prefix}alerts:{member}`: the last expiring alert each certificate's staple was told at
  by the member, or its expiry (`settle_alerts`, one Lua script: `"{thisUpdate} {expiry}
  {rank}"`, the times in µs since 1970, the rank `lifecycle.Alert.rank`), and where its
  processes start from (`alerts`).
- `{prefix}deliveries:{member}`: the deliveries to sinks under way in the member's
  processes (`begin_delivery`; fields `[sink, pid, start]` in JSON): those of a process gone
  were cut short (`take_cut_deliveries`, see the `Store` contract).
- `{prefix}members`: one heartbeat per member (`beat`, `members`); each heartbeat drops those
  older than `forget` (a day: members that left or died), with their leaves.
- `{prefix}leaves:{member}`, a hash: the leaves a member manages (`record_leaves`, `leaves`),
  by key: name, serial and validity. A member writes what changed, not at every heartbeat;
  its heartbeat counts again the end of the whole record (`forget` after it), in the same
  script, so the record ends with the member's heartbeat.
- `{prefix}keys`: the set of keys with a stored staple; `{prefix}sweep`, where the writes'
  sweep of that set has got to.

A certificate's staple, fencing counter and attempts end `keep` (a day) after the staple's
effective expiry, by Redis's clock, counted again at every write: a leaf that no member
refreshes any more (renewed on every member) leaves nothing behind, while a member that still
serves it keeps writing them. A key whose staple record ended is not among `keys()`, and each
staple written takes the next few such keys out of the set, and gives the next few records
found without an end (an older version's) the end a write gives them.

Times without a time zone, fields missing and keys of another type in what is read (another
writer's records) make that record unreadable: logged and left out, never an exception. Every
call raises `redis.RedisError` (usually `ConnectionError` or `TimeoutError`) when Redis
cannot answer (`ResponseError` when it refuses a write to a key of another type); timeouts
are short (`timeout`), so a Redis that does not answer costs seconds, not minutes. Calls
from one thread at a time (the fleet runs them in one worker thread).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import redis

from mustaple.adapters.processes import running, this_process
from mustaple.adapters.store import (
    HISTORY_LIMIT,
    AttemptRecord,
    CertStatus,
    RecordedAttempt,
    StoredStaple,
    owed_of,
    sinks_from_json,
    sinks_json,
    traps_of,
)
from mustaple.core.delivery import Trap
from mustaple.core.leaves import LeafFacts
from mustaple.core.lifecycle import Alert, Phase

__all__ = [
    "Beat",
    "FleetRecord",
    "Lease",
    "Member",
    "RedisStore",
    "Retry",
    "shown_url",
    "wrong_type",
]

log = logging.getLogger("mustaple")

CHANNEL = "staples"
# how long a certificate's records outlive its staple's effective expiry when no member writes
# them again (a leaf renewed everywhere): long enough for the fleet view to show it expired
KEEP_AFTER_EXPIRY = timedelta(days=1)
# how long the fleet view keeps a member that no longer beats (it left, or it died) before the
# next heartbeat of another member drops it: long enough for people to see it left
FORGET_MEMBER_AFTER = timedelta(days=1)
LEAVES_PER_WRITE = 1000  # leaves in one HSET of `record_leaves`
# Before the scripts that need them: a fencing counter as a number, or nil when it is none of
# ours (not a whole number, or the error of a key of another type that `redis.pcall`
# returns); Redis's clock; a key kept as long as a staple record.
_WHOLE = """
local function whole(value)
  if type(value) == 'string' and #value < 16 and string.match(value, '^%d+$') then
    return tonumber(value)
  end
  return nil
end
local function now_ms()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end
-- key lives as long as the staple record `staple`, and at least `least` ms from now
local function keep_as(key, staple, least)
  local left = redis.call('PTTL', staple)
  if left < least then left = least end
  redis.call('PEXPIRE', key, left)
end
"""
# KEYS: staple hash, key set, fence counter, attempts list, sweep cursor. ARGV: fence ('' for
# a write without a lease: the counter's value, so it neither outranks nor is outranked by the
# lease live now; a counter that is none of ours ties with the stored staple), thisUpdate
# (ms), channel, key, member, effective expiry (ms), revoked ("1"/"0"), the DER of a record
# the writer refused ('' for none), how long the records outlive the staple (ms), fields...
# Refuses a write under an older fence, and any answer that may not replace the stored one:
# `verify.may_replace` on the stored numbers (never older, never expiring sooner, a good
# answer after a revoked one only when strictly newer). A record whose DER is the one the
# writer refused (it failed validation) is replaced whatever its numbers say: a forged
# "thisUpdate in 2099" must not hold the fleet's staple for ever. The certificate's records
# (staple, fence, attempts) end that long after the staple's effective expiry (by Redis's
# clock; at the latest, from now): a leaf no member refreshes any more (renewed everywhere)
# leaves nothing behind. Each write also sweeps the next few keys of the set (SSCAN, its
# cursor in KEYS[5]: a small set at once, a large one over a few writes) and takes out those
# whose staple record has ended; a staple hash it finds without an end (written by a version
# before the records' end: a leaf renewed before the upgrade is written by nobody again) gets
# the end a write gives, with its fencing counter and attempts.
_SAVE = """
local held = redis.call('HMGET', KEYS[1], 'fence', 'this_update_ms', 'expiry_ms', 'revoked',
  'der')
local held_fence = tonumber(held[1])
local token = tonumber(ARGV[1])
if not token then token = whole(redis.pcall('GET', KEYS[3])) or held_fence or 0 end
if not (ARGV[8] ~= '' and held[5] == ARGV[8]) then
  if held_fence and token < held_fence then return 0 end
  local this_update, expiry = tonumber(ARGV[2]), tonumber(ARGV[6])
  local held_update, held_expiry = tonumber(held[2]), tonumber(held[3])
  if held_update then
    if ARGV[7] == '0' and held[4] == '1' and this_update <= held_update then return 0 end
    if this_update < held_update then return 0 end
  end
  if held_expiry and expiry < held_expiry then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fence', token, 'this_update_ms', ARGV[2], 'expiry_ms', ARGV[6],
  'revoked', ARGV[7], unpack(ARGV, 10))
local ends = math.max(tonumber(ARGV[6]), now_ms()) + tonumber(ARGV[9])
redis.call('PEXPIREAT', KEYS[1], ends)
redis.call('PEXPIREAT', KEYS[3], ends)
redis.call('PEXPIREAT', KEYS[4], ends)
local cursor = redis.pcall('GET', KEYS[5])
if not (type(cursor) == 'string' and #cursor <= 20 and string.match(cursor, '^%d+$')) then
  cursor = '0'
end
local swept = redis.call('SSCAN', KEYS[2], cursor, 'COUNT', 4)
local function kind_of(key) return string.sub(key, 1, #key - #ARGV[4]) end
local staples, fences, attempts = kind_of(KEYS[1]), kind_of(KEYS[3]), kind_of(KEYS[4])
for _, other in ipairs(swept[2]) do
  local record = staples .. other
  if redis.call('EXISTS', record) == 0 then
    redis.call('SREM', KEYS[2], other)
  elseif redis.call('PTTL', record) == -1 and redis.call('TYPE', record).ok == 'hash' then
    local held = tonumber(redis.call('HGET', record, 'expiry_ms')) or 0
    local at = math.max(held, now_ms()) + tonumber(ARGV[9])
    redis.call('PEXPIREAT', record, at)
    redis.call('PEXPIREAT', fences .. other, at)
    redis.call('PEXPIREAT', attempts .. other, at)
  end
end
redis.call('SET', KEYS[5], swept[1])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. ARGV[5])
return 1
"""
# KEYS: lease, fence counter, staple hash. ARGV: member, ttl (ms), how long the records
# outlive the staple (ms). Returns {the new token, or 0 when taken; 1 when the lease key was
# replaced; 1 when the counter was}. Every lease we write runs out: a lease key of another
# type, or one that never runs out, was written by something else, and would hold every
# member back for ever; a counter that is none of ours (not a whole number, or another type)
# would fail every acquire: it starts again, as does a counter gone (evicted, deleted), above
# the stored staple's token and Redis's clock in ms, so above every token given before (no key
# is leased more than once a millisecond) even when the staple record and the lease went with
# it (a volatile maxmemory policy evicts what has an end): a member still fetching under an
# older lease stays fenced out, and the next leases are not. The counter ends with the staple
# record, and never sooner than that margin from now (far beyond any lease).
_ACQUIRE = """
local lease, counter = 0, 0
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' then
  if kind == 'string' and redis.call('PTTL', KEYS[1]) >= 0 then return {0, 0, 0} end
  redis.call('DEL', KEYS[1])
  lease = 1
end
local count = redis.pcall('GET', KEYS[2])
if not (count and whole(count)) then
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[2], math.max(whole(redis.pcall('HGET', KEYS[3], 'fence')) or 0,
    now_ms()))
  if count then counter = 1 end
end
local token = redis.call('INCR', KEYS[2])
keep_as(KEYS[2], KEYS[3], tonumber(ARGV[3]))
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return {token, lease, counter}
"""
# KEYS: attempts list, staple hash. ARGV: how many to keep, the margin (ms), attempts... Newest
# first; the list ends with the staple record, and never sooner than the margin from now.
_ATTEMPTS = """
redis.call('LPUSH', KEYS[1], unpack(ARGV, 3))
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
keep_as(KEYS[1], KEYS[2], tonumber(ARGV[2]))
"""
# KEYS: members hash, this member's leaves. ARGV: member, heartbeat (JSON), the cutoff (UTC,
# "YYYY-MM-DDTHH:MM:SS"), how long a member's leaves outlive its last heartbeat (ms), the
# prefix of the members' leaves. Writes this member's heartbeat and counts again the end of
# its leaves (whatever their number: one command; a key of another type there is no
# member's: it goes, and the member records its leaves again), then drops in the same script
# (so never a heartbeat written meanwhile) every other one whose time (`seen`, UTC as we
# write it) is before the cutoff, with its leaves. A heartbeat we did not write (not JSON, no
# such time) is left alone. Returns {1 when this member's heartbeat was not there, 1 when its
# leaves were, the members dropped...}.
_BEAT = """
local new = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local kind = redis.call('TYPE', KEYS[2]).ok
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[2]) end
local found = {new, redis.call('PEXPIRE', KEYS[2], ARGV[4])}
local rows = redis.call('HGETALL', KEYS[1])
for i = 1, #rows, 2 do
  local ok, data = pcall(cjson.decode, rows[i + 1])
  local seen = ok and type(data) == 'table' and data.seen
  if type(seen) == 'string' and string.match(seen, '^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d')
      and string.sub(seen, -6) == '+00:00' and string.sub(seen, 1, 19) < ARGV[3] then
    redis.call('HDEL', KEYS[1], rows[i])
    redis.call('DEL', ARGV[5] .. rows[i])
    table.insert(found, rows[i])
  end
end
return found
"""
# KEYS: runs. ARGV: key, kind (failure, revoked, recovered), key, kind, ... Returns 1 for
# each one told (see `SqliteStore.settle_runs`), else 0.
_RUNS = """
local told = {}
for i = 1, #ARGV, 2 do
  local before = redis.call('HGET', KEYS[1], ARGV[i])
  if ARGV[i + 1] == 'recovered' then
    told[#told + 1] = before and 1 or 0
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    told[#told + 1] = (ARGV[i + 1] == 'failure' and before ~= 'failure') and 1 or 0
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return told
"""
# KEYS: alerts. ARGV: key, thisUpdate, expiry (µs), level, key, ... Returns 1 for each one
# told (news over the one recorded: see `lifecycle.Alert.news_over`), which it records.
_ALERTS = """
local function later(mine, was)
  for j = 1, 3 do
    if mine[j] ~= was[j] then return mine[j] > was[j] end
  end
  return false
end
local told = {}
for i = 1, #ARGV, 4 do
  local mine = {tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])}
  local was = {string.match(redis.call('HGET', KEYS[1], ARGV[i]) or '', '^(%d+) (%d+) (%d+)$')}
  local news = #was < 3 or later(mine, {tonumber(was[1]), tonumber(was[2]), tonumber(was[3])})
  if news then
    redis.call('HSET', KEYS[1], ARGV[i], table.concat(ARGV, ' ', i + 1, i + 3))
  end
  told[#told + 1] = news and 1 or 0
end
return told
"""
# KEYS: lease. ARGV: value, ttl (ms).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lease. ARGV: value.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to fetch one certificate's staple for the fleet, until it runs out."""

    key: str
    member: str
    token: int  # the fencing token: grows with every lease of this key
    replaced: tuple[str, ...] = ()  # the keys no member wrote it replaced (see `acquire`)

    @property
    def value(self) -> str:
        return f"{self.member} {self.token}"


@dataclass(frozen=True, slots=True)
class Retry:
    """A failed fetch: the fleet waits until `at` before anyone tries again."""

    at: datetime  # by the clock of the member that marked it
    member: str
    reason: str
    # how long Redis keeps the mark, by its clock; None: it ran out, or it never runs out
    # (written by something else: every mark of ours runs out)
    left: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Member:
    """A member's last heartbeat."""

    name: str
    seen: datetime
    info: dict[str, Any]


class Beat(NamedTuple):
    """What a heartbeat found (`RedisStore.beat`)."""

    new: bool  # Redis held no heartbeat of this member
    # Redis held this member's leaves (not: evicted, deleted, never written, or a key of
    # another type there, deleted)
    leaves_kept: bool
    dropped: list[str]  # the members dropped: silent for `forget`


@dataclass(frozen=True, slots=True)
class FleetRecord:
    """The fleet's view of one certificate: the shared staple, who fetched it, who holds the
    lease now, and the retry mark."""

    key: str
    staple: StoredStaple | None
    fetched_by: str | None
    lease_holder: str | None
    retry: Retry | None


class RedisStore:
    """A `Store` on Redis, with the fleet's records (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "mustaple:",
        member: str = "local",
        history_limit: int = HISTORY_LIMIT,
        timeout: float = 2.0,
        keep: timedelta = KEEP_AFTER_EXPIRY,
        forget: timedelta = FORGET_MEMBER_AFTER,
    ) -> None:
        self.url, self.prefix, self.member = url, prefix, member
        self.history_limit, self.keep, self.forget = history_limit, keep, forget
        # redis-py's annotations mix its sync and async answers; values are checked here instead
        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._pipe: Any = None  # the open transaction's pipeline, if any
        self._save = self.client.register_script(_WHOLE + _SAVE)
        self._acquire = self.client.register_script(_WHOLE + _ACQUIRE)
        self._attempts = self.client.register_script(_WHOLE + _ATTEMPTS)
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)
        self._beat = self.client.register_script(_BEAT)
        self._runs = self.client.register_script(_RUNS)
        self._alerts = self.client.register_script(_ALERTS)

    @property
    def channel(self) -> str:
        """Where accepted staples are announced."""
        return self.prefix + CHANNEL

    def _k(self, kind: str, key: str = "") -> str:
        return f"{self.prefix}{kind}:{key}" if key else f"{self.prefix}{kind}"

    def _w(self) -> Any:
        """Where writes go: the open transaction, else straight to Redis."""
        return self._pipe if self._pipe is not None else self.client

    def close(self) -> None:
        self.client.close()

    def ping(self) -> None:
        self.client.ping()

    # --- The Store contract ---------------------------------------------------------------------

    def load(self, key: str) -> StoredStaple | None:
        found = self.load_with_origin(key)
        return found[0] if found else None

    def load_with_origin(self, key: str) -> tuple[StoredStaple, str] | None:
        """The stored staple and the member that fetched it."""
        return _found(self.client.hgetall(self._k("staple", key)))

    def save_staple(self, key: str, staple: StoredStaple) -> bool:
        """Store `staple` unless a newer one is stored (see `publish`)."""
        return self.publish(key, staple)

    def save_staples(self, items: Sequence[tuple[str, StoredStaple]]) -> list[bool]:
        return [self.publish(key, staple) for key, staple in items]

    def others_wrote(self) -> dict[str, tuple[datetime, bool]] | None:
        """Always None: a fleet hears other members' writes as announcements instead."""
        return None

    def written_since_look(self) -> bool:
        """Always False: a member's status rows are its own (see `others_wrote`)."""
        return False

    def check(self) -> str | None:
        """Always None: there is no file to lose (a Redis that returns empty is caught up
        with by the fleet)."""
        return None

    def publish(
        self,
        key: str,
        staple: StoredStaple,
        lease: Lease | None = None,
        *,
        refused: bytes | None = None,
    ) -> bool:
        """Store `staple` unless a newer one is stored, or one written under a later lease;
        announce it. Without `lease`, the write takes the token of the last lease given (it
        outranks the leases before it, and a member fetching under the lease live now may
        still store a newer staple). A stored record whose DER is `refused` (it failed our
        validation) is replaced whatever it claims. Returns whether it was stored (inside a
        transaction: True)."""
        token = lease.token if lease is not None else ""
        fields = {
            "name": staple.name,
            "der": staple.der,
            "this_update": _iso(staple.this_update),
            "effective_expiry": _iso(staple.effective_expiry),
            "fetched_at": _iso(staple.fetched_at),
            "responder_url": staple.responder_url or "",
            "fetched_by": self.member,
        }
        args: list[Any] = [token, _ms(staple.this_update), self.channel, key, self.member]
        args += [_ms(staple.effective_expiry), "1" if staple.revoked else "0", refused or b""]
        args.append(_ms_delta(self.keep))
        for name, value in fields.items():
            args += [name, value]
        keys = [self._k("staple", key), self._k("keys"), self._k("fence", key)]
        keys += [self._k("attempts", key), self._k("sweep")]
        if self._pipe is not None:
            self._save(keys=keys, args=args, client=self._pipe)
            return True
        return bool(self._save(keys=keys, args=args))

    def add_attempts(self, key: str, attempts: Iterable[AttemptRecord]) -> None:
        rows = [_attempt_json(a, self.member) for a in attempts]
        if not rows:
            return
        keys = [self._k("attempts", key), self._k("staple", key)]
        args: list[str | int] = [self.history_limit, _ms_delta(self.keep), *rows]
        self._attempts(keys=keys, args=args, client=self._w())

    def add_all_attempts(self, items: Sequence[tuple[str, Iterable[AttemptRecord]]]) -> None:
        with self.transaction():
            for key, attempts in items:
                self.add_attempts(key, attempts)

    def history(self, key: str, limit: int = HISTORY_LIMIT) -> list[AttemptRecord]:
        """The most recent attempts, newest first."""
        return [record for record, _ in self.history_by_member(key, limit)]

    def history_by_member(
        self, key: str, limit: int = HISTORY_LIMIT
    ) -> list[tuple[AttemptRecord, str]]:
        """The most recent attempts with the member that made each, newest first."""
        rows = self.client.lrange(self._k("attempts", key), 0, limit - 1)
        found = []
        for row in rows:
            try:
                found.append(_attempt(json.loads(row)))
            except (*_UNREADABLE, json.JSONDecodeError) as exc:
                log.warning("fleet: an attempt cannot be read (%s: %s): left out", _kind(exc), exc)
        return found

    def keys(self) -> list[str]:
        """The keys with a staple record (one that ended is left out: the set is cleaned up
        a little later, see `publish`)."""
        found = sorted(k.decode() for k in self.client.smembers(self._k("keys")))
        gone = set(self.missing(found))
        return [key for key in found if key not in gone]

    def save_status(self, key: str, status: CertStatus) -> None:
        self.save_statuses([(key, status)])

    def save_statuses(self, rows: Iterable[tuple[str, CertStatus]]) -> None:
        mapping = {key: _status_json(status) for key, status in rows}
        if mapping:
            self._w().hset(self._k("status", self.member), mapping=mapping)

    def status_keys(self) -> set[str]:
        """This member's keys that have a status row."""
        return {k.decode() for k in self.client.hkeys(self._k("status", self.member))}

    def owed_reloads(self) -> set[tuple[str, str]]:
        """This member's (certificate key, sink) pairs whose reload failed at that
        certificate's last delivery to that sink."""
        return owed_of((key, row.sinks) for key, row in self.statuses().items())

    def traps(self) -> dict[tuple[str, str], Trap]:
        """This member's sinks' traps, by its status rows (see `delivery.HoldsBack`)."""
        return traps_of((key, row.sinks) for key, row in self.statuses().items())

    def begin_delivery(self, sinks: Collection[str]) -> None:
        """Record that this member's process delivers to `sinks` (see `SqliteStore`)."""
        pid, started = this_process()
        if sinks:
            fields = {json.dumps([sink, pid, started]): 1 for sink in sinks}
            self._w().hset(self._k("deliveries", self.member), mapping=fields)

    def end_delivery(self, sinks: Collection[str]) -> None:
        """Drop this process's records of its delivery to `sinks`."""
        pid, started = this_process()
        if sinks:
            fields = [json.dumps([sink, pid, started]) for sink in sinks]
            self._w().hdel(self._k("deliveries", self.member), *fields)

    def take_cut_deliveries(self, sinks: Collection[str]) -> set[str]:
        """Those of `sinks` whose delivery a process of this member that is gone cut
        short: their records become this process's (see `SqliteStore`)."""
        cut: dict[bytes, str] = {}
        for raw in self.client.hkeys(self._k("deliveries", self.member)):
            with suppress(*_UNREADABLE):  # JSONDecodeError is a ValueError
                sink, pid, started = json.loads(raw)
                if sink in sinks and not running(int(pid), str(started)):
                    cut[raw] = str(sink)
        if cut:
            with self.transaction():
                self._w().hdel(self._k("deliveries", self.member), *cut)
                self.begin_delivery(set(cut.values()))
        return set(cut.values())

    def last_attempts(self, keys: Collection[str] | None = None) -> dict[str, RecordedAttempt]:
        """The last attempt recorded in this member's status rows (see `SqliteStore`)."""
        return {
            key: RecordedAttempt(row.last_attempt, row.failures, row.last_reason, row.last_message)
            for key, row in self.statuses().items()
            if row.last_attempt is not None
            and row.state != Phase.UNUSABLE.value
            and (keys is None or key in keys)
        }

    def settle_runs(self, news: Sequence[tuple[str, str]]) -> list[bool]:
        """This member's runs of failures (see `SqliteStore.settle_runs`), at once even
        inside a transaction (its reads and writes are one script)."""
        if not news:
            return []
        told = self._runs(keys=[self._k("runs", self.member)], args=[v for n in news for v in n])
        return [bool(one) for one in told]

    def settle_alerts(self, news: Sequence[tuple[str, Alert]]) -> list[bool]:
        """This member's expiring alerts (see `SqliteStore.settle_alerts`), at once even
        inside a transaction (its reads and writes are one script)."""
        if not news:
            return []
        args = [v for key, alert in news for v in (key, *_alert_values(alert))]
        told = self._alerts(keys=[self._k("alerts", self.member)], args=args)
        return [bool(one) for one in told]

    def alerts(self, keys: Collection[str]) -> dict[str, Alert]:
        """The last alert this member told for each of `keys` (one that cannot be read is
        taken as none)."""
        listed = list(keys)
        if not listed:
            return {}
        found = {}
        told = self.client.hmget(self._k("alerts", self.member), listed)
        for key, raw in zip(listed, told, strict=True):
            with suppress(ValueError, TypeError, AttributeError):
                this_update, expiry, level = raw.decode().split()
                found[key] = Alert.ranked(_from_us(this_update), _from_us(expiry), int(level))
        return found

    def forget_statuses(self, keys: Iterable[str]) -> None:
        """Remove this member's status rows of `keys`."""
        gone = list(keys)
        if gone:
            self._w().hdel(self._k("status", self.member), *gone)

    def statuses(self, member: str | None = None) -> dict[str, CertStatus]:
        """One member's statuses (this store's member by default), sorted by name."""
        rows = self.client.hgetall(self._k("status", member or self.member))
        found = {}
        for key, raw in rows.items():
            try:
                found[key.decode()] = _status(json.loads(raw))
            except (*_UNREADABLE, json.JSONDecodeError) as exc:  # written again at the next pass
                log.warning("fleet: a status row cannot be read (%s: %s)", _kind(exc), exc)
        return dict(sorted(found.items(), key=lambda item: item[1].name))

    def remove(self, key: str) -> None:
        with self.transaction():
            self._w().delete(self._k("staple", key), self._k("attempts", key))
            self._w().hdel(self._k("status", self.member), key)
            self._w().hdel(self._k("runs", self.member), key)
            self._w().hdel(self._k("alerts", self.member), key)
            self._w().srem(self._k("keys"), key)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """MULTI ... EXEC around every write inside (reads inside see Redis as it was)."""
        if self._pipe is not None:
            yield
            return
        self._pipe = self.client.pipeline(transaction=True)
        try:
            yield
            self._pipe.execute()
        finally:
            self._pipe.reset()
            self._pipe = None

    # --- The fleet's records --------------------------------------------------------------------

    def acquire(self, key: str, ttl: timedelta) -> Lease | None:
        """The lease of `key` for `ttl`, or None when another member holds it. A lease key
        that never runs out, or of another type, is no member's (every lease runs out), nor
        is a fencing counter that is not a whole number: each is replaced, and the lease
        says which (`replaced`: "lease", "fence")."""
        keys = [self._k("lease", key), self._k("fence", key), self._k("staple", key)]
        args: list[str | int] = [self.member, _ms_delta(ttl), _ms_delta(self.keep)]
        token, *flags = self._acquire(keys=keys, args=args)
        if not token:
            return None
        replaced = tuple(name for name, flag in zip(("lease", "fence"), flags, strict=True) if flag)
        return Lease(key, self.member, int(token), replaced)

    def load_many(self, keys: list[str]) -> list[tuple[StoredStaple, str] | None]:
        """`load_with_origin` of each key, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(self._k("staple", key))
        return [_found(fields) for fields in _each(pipe)]

    def missing(self, keys: list[str]) -> list[str]:
        """The keys among `keys` that have no staple record, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.exists(self._k("staple", key))
        return [key for key, there in zip(keys, pipe.execute(), strict=True) if not there]

    def publish_many(self, staples: list[tuple[str, StoredStaple, bytes | None]]) -> None:
        """`publish` each (key, staple, refused DER or None), in one transaction."""
        with self.transaction():
            for key, staple, refused in staples:
                self.publish(key, staple, refused=refused)

    def look(self, key: str) -> tuple[tuple[StoredStaple, str] | None, Retry | None]:
        """The stored staple with who fetched it, and the retry mark, in one round trip; a
        record Redis cannot give (a key of another type) is as one that cannot be read."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self._k("staple", key))
        pipe.get(self._k("retry", key))
        pipe.pttl(self._k("retry", key))
        fields, raw, left = _each(pipe)
        return _found(fields), _retry(raw, left)

    def acquire_and_look(
        self, key: str, ttl: timedelta
    ) -> tuple[Lease | None, tuple[StoredStaple, str] | None, Retry | None]:
        """`acquire`, then (when it succeeded) `look`."""
        lease = self.acquire(key, ttl)
        return (lease, *self.look(key)) if lease is not None else (None, None, None)

    def renew(self, lease: Lease, ttl: timedelta) -> bool:
        """Extend a lease still held; False when it ran out (someone else may hold it now)."""
        args: list[str | int] = [lease.value, _ms_delta(ttl)]
        return bool(self._renew(keys=[self._k("lease", lease.key)], args=args))

    def release(self, lease: Lease) -> None:
        self._release(keys=[self._k("lease", lease.key)], args=[lease.value])

    def mark_retry(self, key: str, at: datetime, reason: str, now: datetime) -> None:
        """Ask the fleet to wait until `at` before fetching `key` again."""
        value = json.dumps({"at": _iso(at), "member": self.member, "reason": reason})
        ttl = max(at - now, timedelta(seconds=1))
        self.client.set(self._k("retry", key), value, px=_ms_delta(ttl))

    def clear_retry(self, key: str) -> None:
        self._w().delete(self._k("retry", key))

    def retry(self, key: str) -> Retry | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self._k("retry", key))
        pipe.pttl(self._k("retry", key))
        return _retry(*_each(pipe))

    def beat(self, now: datetime, info: dict[str, Any]) -> Beat:
        """This member's heartbeat, with what it wants the fleet view to show; the end of its
        leaves is counted again; every other member's heartbeat older than `forget` by `now`
        is dropped in the same step, with its leaves (it left, or died: a member that comes
        back joins again)."""
        value = json.dumps({"seen": _iso(now), **info})
        cutoff = (now - self.forget).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        keys = [self._k("members"), self._k("leaves", self.member)]
        args: list[str | int] = [self.member, value, cutoff, _ms_delta(self.forget)]
        args.append(self._k("leaves") + ":")
        new, kept, *dropped = self._beat(keys=keys, args=args)
        return Beat(bool(new), bool(kept), [name.decode(errors="replace") for name in dropped])

    def record_leaves(
        self, leaves: Collection[LeafFacts], gone: Collection[str] = (), *, whole: bool = False
    ) -> None:
        """Record the leaves this member manages: `leaves` added, the keys `gone` no more;
        `whole`: `leaves` are all of them (whatever Redis held, even a key of another type, is
        replaced). One transaction; the record ends `forget` from now, as the heartbeat."""
        record = self._k("leaves", self.member)
        pipe = self.client.pipeline(transaction=True)
        if whole:
            pipe.delete(record)
        elif gone:
            pipe.hdel(record, *gone)
        rows = list(leaves)
        for start in range(0, len(rows), LEAVES_PER_WRITE):
            batch = rows[start : start + LEAVES_PER_WRITE]
            pipe.hset(record, mapping={leaf.key: _leaf_json(leaf) for leaf in batch})
        pipe.pexpire(record, _ms_delta(self.forget))
        pipe.execute()

    def leaves(self, members: Sequence[str]) -> dict[str, list[LeafFacts]]:
        """The leaves each of `members` manages, in one round trip. A record of another type,
        or a leaf that cannot be read (another writer's), is left out, said in one line per
        member."""
        pipe = self.client.pipeline(transaction=False)
        for member in members:
            pipe.hgetall(self._k("leaves", member))
        return {
            member: _leaves_of(member, fields)
            for member, fields in zip(members, _each(pipe), strict=True)
        }

    def members(self) -> list[Member]:
        """Every member's last heartbeat; one that cannot be read is left out, said once."""
        rows = self.client.hgetall(self._k("members"))
        found = []
        for name, raw in sorted(rows.items()):
            try:
                data = json.loads(raw)
                seen = _time(data.pop("seen"))
                found.append(Member(name.decode(), seen, data))
            except (*_UNREADABLE, json.JSONDecodeError) as exc:
                log.warning("fleet: a heartbeat cannot be read (%s: %s): left out", _kind(exc), exc)
        return found

    def record(self, key: str) -> FleetRecord:
        """The fleet's view of one certificate."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self._k("staple", key))
        pipe.get(self._k("lease", key))
        fields, lease = _each(pipe)
        found = _found(fields)
        holder = lease.decode(errors="replace").split(" ")[0] if isinstance(lease, bytes) else None
        staple, by = found if found is not None else (None, None)
        return FleetRecord(key, staple, by, holder, self.retry(key))


def shown_url(url: str) -> str:
    """A Redis URL fit for logs: without its user and password."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _time(text: str | bytes) -> datetime:
    """A time as stored; ValueError without a time zone (another writer's, not ours: it
    could not be compared with ours)."""
    value = datetime.fromisoformat(text.decode() if isinstance(text, bytes) else text)
    if value.tzinfo is None:
        raise ValueError(f"{value.isoformat()} has no time zone")
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _alert_values(alert: Alert) -> tuple[int, int, int]:
    """An alert as the script compares it: its times in µs since 1970, and its rank."""
    micro = timedelta(microseconds=1)
    return (alert.this_update - _EPOCH) // micro, (alert.expiry - _EPOCH) // micro, alert.rank


def _from_us(text: str) -> datetime:
    return _EPOCH + timedelta(microseconds=int(text))


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _ms_delta(value: timedelta) -> int:
    return max(1, int(value.total_seconds() * 1000))


def _staple(fields: dict[bytes, bytes]) -> StoredStaple:
    url = fields[b"responder_url"].decode()
    return StoredStaple(
        fields[b"name"].decode(),
        fields[b"der"],
        _time(fields[b"this_update"]),
        _time(fields[b"effective_expiry"]),
        _time(fields[b"fetched_at"]),
        url or None,
        fields.get(b"revoked") == b"1",
    )


def _each(pipe: Any) -> list[Any]:
    """A pipeline's answers, a key of another type's error in its place: one garbled record
    costs that record, not the whole round trip. Any other error (a read-only replica, no
    permission, out of memory) is Redis's, and raised."""
    answers = list(pipe.execute(raise_on_error=False))
    for answer in answers:
        if isinstance(answer, redis.RedisError) and not wrong_type(answer):
            raise answer
    return answers


def wrong_type(exc: BaseException) -> bool:
    """Whether Redis refused a command for a key holding another type (WRONGTYPE): that
    record is another writer's, not Redis's trouble."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("WRONGTYPE")


def _found(fields: dict[bytes, bytes] | Exception) -> tuple[StoredStaple, str] | None:
    """A staple hash as (the staple, who fetched it); None when there is none, or when it
    cannot be read (a field missing or garbled by another writer, or a key of another type:
    refused, logged, and the member fetches for itself)."""
    if isinstance(fields, Exception):
        log.warning("fleet: a shared staple cannot be read (%s): refused", _short(fields))
        return None
    if not fields:
        return None
    try:
        return _staple(fields), fields[b"fetched_by"].decode()
    except _UNREADABLE as exc:
        log.warning("fleet: a shared staple cannot be read (%s: %s): refused", _kind(exc), exc)
        return None


def _retry(raw: bytes | Exception | None, left: int | Exception | None = None) -> Retry | None:
    """A retry mark, with how long Redis keeps it (`left`, its PTTL in ms), or None (none, or
    one that cannot be read: no reason to wait)."""
    if raw is None:
        return None
    if isinstance(raw, Exception):
        log.warning("fleet: a retry mark cannot be read (%s): ignored", _short(raw))
        return None
    kept = timedelta(milliseconds=left) if isinstance(left, int) and left >= 0 else None
    try:
        data = json.loads(raw)
        return Retry(_time(data["at"]), str(data["member"]), str(data["reason"]), kept)
    except (*_UNREADABLE, json.JSONDecodeError) as exc:
        log.warning("fleet: a retry mark cannot be read (%s: %s): ignored", _kind(exc), exc)
        return None


# what a record garbled by another writer raises when read
_UNREADABLE = (KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError)


def _kind(exc: BaseException) -> str:
    return type(exc).__name__


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else _kind(exc)


def _leaf_json(leaf: LeafFacts) -> str:
    return json.dumps(
        {
            "name": leaf.name,
            "serial": leaf.serial,
            "not_before": _iso(leaf.not_before),
            "not_after": _iso(leaf.not_after),
        }
    )


def _leaf(key: bytes, raw: bytes) -> LeafFacts:
    data = json.loads(raw)
    name, serial = data["name"], data["serial"]
    if not (isinstance(name, str) and isinstance(serial, str)):
        raise TypeError("the name and the serial must be text")
    return LeafFacts(
        key.decode(), name, serial, _time(data["not_before"]), _time(data["not_after"])
    )


def _leaves_of(member: str, fields: dict[bytes, bytes] | Exception) -> list[LeafFacts]:
    """A member's leaves as recorded; what cannot be read is left out, said in one line."""
    if isinstance(fields, Exception):
        log.warning(
            "fleet: the leaves of member %r cannot be read (%s): left out", member, _short(fields)
        )
        return []
    found, unreadable = [], []
    for key, raw in fields.items():
        try:
            found.append(_leaf(key, raw))
        except (*_UNREADABLE, json.JSONDecodeError) as exc:
            unreadable.append(exc)
    if unreadable:
        first = unreadable[0]
        log.warning(
            "fleet: %d of the leaves of member %r cannot be read (%s: %s): left out",
            len(unreadable),
            member,
            _kind(first),
            first,
        )
    return found


def _attempt_json(a: AttemptRecord, member: str) -> str:
    return json.dumps(
        {
            "at": _iso(a.at),
            "url": a.url,
            "method": a.method,
            "http_status": a.http_status,
            "latency": a.latency,
            "reason": a.reason,
            "message": a.message,
            "member": member,
        }
    )


def _attempt(data: dict[str, Any]) -> tuple[AttemptRecord, str]:
    record = AttemptRecord(
        _time(data["at"]),
        data["url"],
        data["method"],
        data["http_status"],
        data["latency"],
        data["reason"],
        data["message"],
    )
    return record, data["member"]


def _status_json(status: CertStatus) -> str:
    return json.dumps(
        {
            "name": status.name,
            "cert_path": status.cert_path,
            "must_staple": status.must_staple,
            "state": status.state,
            "next_due": _iso(status.next_due) if status.next_due else None,
            "failures": status.failures,
            "last_attempt": _iso(status.last_attempt) if status.last_attempt else None,
            "last_reason": status.last_reason,
            "last_message": status.last_message,
            "paths": list(status.paths),
            "sinks": sinks_json(status.sinks),
        }
    )


def _status(data: dict[str, Any]) -> CertStatus:
    return CertStatus(
        data["name"],
        data["cert_path"],
        data["must_staple"],
        data["state"],
        _time(data["next_due"]) if data["next_due"] else None,
        data["failures"],
        _time(data["last_attempt"]) if data["last_attempt"] else None,
        data["last_reason"],
        data["last_message"],
        tuple(data.get("paths", ())),
        sinks_from_json(data.get("sinks", "[]")),
    )
