"""A certificate's life, as one pure state machine: `step(state, event, now, policy, dice)`.

Every process (`run`, `prime`, a restarted `run`, a fleet member) keeps a certificate's life
through this one function, so they agree on what it means. It does no I/O and never reads the
clock: it is told what happened (an `Event`) and when, and answers with the new frozen
`CertState` and the `Effect`s the caller must carry out, in order (`Store` before anything is
delivered). What the servers should be given follows from the state alone (`wanted`).

The phases:

    pending   no answer yet (a new certificate)
    good      a valid good staple, and the last refresh worked
    failing   refreshing fails (a valid good staple may still be in hand: `held`)
    expired   the staple in hand expired with no valid replacement
    revoked   a valid answer says revoked; no good staple is ever served again unless a
              strictly newer good answer arrives (certificateHold can be lifted)
    unusable  the certificate cannot be kept (no OCSP URL, no issuer, unreadable): `problem`

Rules a reader can check here rather than in the keeper:
- an answer replaces the one in hand only if `verify.compare` allows it (never older; a good
  answer after a revoked one only if strictly newer);
- after expiry, attempts restart at once and back off again from `retry_base`, never waiting
  more than `retry_max`;
- a failure is told to the hooks once per run of failures; an alert only when it gets worse,
  and each level once per staple, whatever processes see it: the shared state keeps the
  level told for the staple it is about (`Alert`: the process whose write raises it tells
  it), and a process starts from there (`Alerted`: a restart, a SIGHUP, a `prime`); the
  expiry of a staple is its step after CRITICAL, told once so too;
- `last_attempt` is the latest refresh by any process: another process's (a `prime` beside
  the keeper, or the process before a restart), as it recorded it, is taken in (`Tried`)
  only when it is later than the one in hand, and then counts as a refresh of this one's
  (said as this process's own when it made it before a reload: `Tried.reloaded`);
- a run of failures is told to the hooks once, whatever processes refresh meanwhile: its
  `on_failure` by the process whose write opens it in the shared state, its `on_recovered`
  by the one whose write closes it (an `Emit` that is `shared`: the state store decides,
  in one transaction with that write, not what a process read before it fetched); a
  revocation by the process that fetched it; another process's failure, recovery or
  revocation (`Tried`, `Accepted` with `told`) is said in the log here.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any

from mustaple.core.delivery import Action
from mustaple.core.reasons import Reason, Rejection
from mustaple.core.render import human_time
from mustaple.core.schedule import (
    SchedulePolicy,
    alert_level,
    critical_left,
    hurried_note,
    next_refresh,
    next_retry,
)
from mustaple.core.severity import Severity
from mustaple.core.verify import Staple, compare, strictly_newer

__all__ = [
    "EXPIRY_RANK",
    "Accepted",
    "Alert",
    "Alerted",
    "CertState",
    "Effect",
    "Emit",
    "Event",
    "LogLine",
    "Phase",
    "Rejected",
    "Restored",
    "Stale",
    "Store",
    "Tick",
    "Tried",
    "Unusable",
    "Wait",
    "calm_until",
    "step",
    "wanted",
]

Dice = Callable[[], float]


class Phase(enum.Enum):
    PENDING = "pending"
    GOOD = "good"
    FAILING = "failing"
    EXPIRED = "expired"
    REVOKED = "revoked"
    UNUSABLE = "unusable"


@dataclass(frozen=True, slots=True)
class CertState:
    """Everything known about one certificate's staple, at one moment."""

    phase: Phase = Phase.PENDING
    held: Staple | None = None  # the freshest valid good staple
    revoked: Staple | None = None  # the valid answer saying revoked
    failures: int = 0  # consecutive failed refreshes (by any process: see `Tried`)
    run_from: datetime | None = None  # the first of those failures known here (None: none)
    backoff: int = 0  # failures counted for the retry backoff (restarts at expiry)
    rejection: Rejection | None = None  # the last failure's reason
    problem: str | None = None  # why the certificate is unusable (names the key to fix)
    next_due: datetime | None = None  # None: nothing to fetch until the file changes
    last_attempt: datetime | None = None  # the latest refresh, by any process
    expired_at: datetime | None = None
    alert: Severity = Severity.OK
    known: bool = False  # a staple of ours was stored or served: a staple file may be ours
    # what a sink may hold is the staple of the certificate this one renewed: no staple of
    # this one, taken away whatever `at_expiry` says (until an answer is in hand)
    renewed: bool = False
    # the answer in hand leaves too little time for `min_interval`: why the keeper refreshes
    # sooner (`schedule.hurried_note`), said once in the log when it begins
    schedule_note: str | None = None

    @property
    def answer(self) -> Staple | None:
        """The valid answer in hand that newer ones are compared with."""
        return self.revoked if self.revoked is not None else self.held

    def due(self, now: datetime) -> bool:
        return self.next_due is not None and self.next_due <= now


EXPIRY_RANK = 4  # the rank an expiry is recorded at: after every level of its staple


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert level told for one staple, named by its thisUpdate and effective expiry
    (together they say which of two staples is newer: `verify.may_replace`); or, with
    `expired`, the staple's expiry itself (the step after CRITICAL: `level` is CRITICAL).
    The shared state keeps the last one told per certificate, by its `rank`."""

    this_update: datetime
    expiry: datetime
    level: Severity
    expired: bool = False

    @classmethod
    def ranked(cls, this_update: datetime, expiry: datetime, rank: int) -> Alert:
        """The alert the shared state records at `rank` (ValueError for no known rank)."""
        if rank == EXPIRY_RANK:
            return cls(this_update, expiry, Severity.CRITICAL, expired=True)
        return cls(this_update, expiry, Severity(rank))

    @property
    def rank(self) -> int:
        """How far the staple's decline went, as the shared state records it: its level,
        or `EXPIRY_RANK` once it expired."""
        return EXPIRY_RANK if self.expired else int(self.level)

    def about(self, staple: Staple) -> bool:
        """Whether this alert is about `staple`."""
        return (self.this_update, self.expiry) == (staple.this_update, staple.effective_expiry)

    def news_over(self, recorded: Alert | None) -> bool:
        """Whether telling this alert is news after `recorded` (the last one told for the
        certificate): it is about a newer staple, or a higher rank of the same one (its
        expiry after its CRITICAL). Never about an older staple's: a process that holds one
        has not taken the newer in yet."""
        if recorded is None:
            return True
        mine = (self.this_update, self.expiry, self.rank)
        return mine > (recorded.this_update, recorded.expiry, recorded.rank)


# --- Events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Restored:
    """The stored answer, validated again now, as a process starts (`fetched_at` from the store)."""

    staple: Staple
    fetched_at: datetime


@dataclass(frozen=True, slots=True)
class Stale:
    """The stored good staple is no longer valid as a process starts: nothing to serve, but
    a staple file on a sink may be ours (`known`), so it may be taken away at expiry. With
    `renewed`, what a sink may hold is the staple of the certificate this one renewed: it
    is taken away even with `at_expiry = "keep"`, which keeps this certificate's own."""

    renewed: bool = False


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid answer: fetched here, adopted from the fleet, or stored by another process
    (`origin` says which, for the log). `fetched_at` schedules the next refresh. `told`: the
    process that fetched it ran the hooks (a `prime` on the same state): its news (revoked,
    recovered) goes to the log only here."""

    staple: Staple
    fetched_at: datetime
    url: str | None = None
    origin: str = ""
    told: bool = False


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refresh that produced no valid answer."""

    rejection: Rejection


@dataclass(frozen=True, slots=True)
class Tried:
    """A refresh another process made, as it recorded it (its status row: a `prime` beside
    the keeper, or the process before a restart): at `at`, it failed with `rejection` (the
    `failures` in a row it counted), or with None it worked (its answer, when newer than the
    one in hand, comes as `Accepted`). Taken only when later than this state's last attempt:
    then it is the last refresh, as if made here, but the other process told the hooks.
    `reloaded`: it was no other process but this one, before a reload (SIGHUP): the keeper
    it built in its predecessor's place takes in the rows that one wrote."""

    at: datetime
    rejection: Rejection | None = None
    failures: int = 0
    reloaded: bool = False


@dataclass(frozen=True, slots=True)
class Alerted:
    """The alert the shared state records as told (by any process: the one before a
    restart or a SIGHUP, a `prime`): taken when it is about the staple in hand and higher
    than this state's, so that this process does not tell that level again."""

    alert: Alert


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: expiry and alerts are judged at `now`."""


@dataclass(frozen=True, slots=True)
class Wait:
    """Someone else fetches (the fleet): look again at `until`; or fetch now (`until` = now)."""

    until: datetime


@dataclass(frozen=True, slots=True)
class Unusable:
    """The certificate cannot be kept; `problem` is one line naming what to fix."""

    problem: str
    reason: Reason = Reason.NO_OCSP_URL


Event = Restored | Stale | Accepted | Rejected | Tried | Alerted | Tick | Wait | Unusable


# --- Effects --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Store:
    """Store this answer (good or revoked) as the certificate's truth, before delivering."""

    staple: Staple
    fetched_at: datetime
    url: str | None


@dataclass(frozen=True, slots=True)
class Emit:
    """An event for the operator: a log line, and the matching hook when `hook`.

    `shared`: the hook follows the certificate's run of failures as the shared state keeps
    it (every process on the state directory), not this process's view of it: a "failure"
    is told only by the process whose write opens the run, a "recovered" only by the one
    whose write closes it, a "revoked" opens it (a good answer after it is a recovery); an
    "expiring" (with its `alert`) only by the process whose write raises the level the
    state keeps for that staple (`Alert.news_over`), and an "expired" (its `alert` the
    staple's expiry, the step after CRITICAL) likewise. `hook` is then this process's own
    view: what it tells alone when the state cannot be written (what it does not tell then,
    the state decides once it is written). `said`: the line is logged
    at once; else (a good answer after no failure seen here) only when its write closes a
    run another process opened meanwhile."""

    kind: str  # revoked, expiring, expired, failure, recovered
    message: str
    reason: str | None = None
    hook: bool = True
    shared: bool = False
    said: bool = True
    alert: Alert | None = None


@dataclass(frozen=True, slots=True)
class LogLine:
    """A line for the log only (no hook): `level` is "info" or "warning".

    Its text is made only when read (`message`): most lines are at info, which `prime` and a
    quiet keeper do not print. `template` has a `{}` for each of `values`; a datetime among
    them reads as `human_time` writes it."""

    level: str
    template: str
    values: tuple[object, ...] = ()

    @property
    def message(self) -> str:
        shown = (human_time(v) if isinstance(v, datetime) else v for v in self.values)
        return self.template.format(*shown)


Effect = Store | Emit | LogLine


# --- The transition function ----------------------------------------------------------------------


def step(
    state: CertState, event: Event, now: datetime, policy: SchedulePolicy, dice: Dice
) -> tuple[CertState, list[Effect]]:
    """The state after `event` at `now`, and what to do about it (see the module docstring)."""
    event = _not_ahead(event, now)
    if isinstance(event, Restored):
        return _restored(state, event, now, policy, dice)
    if isinstance(event, Accepted):
        return _accepted(state, event, now, policy, dice)
    if isinstance(event, Rejected):
        return _rejected(state, event.rejection, now, policy, dice)
    if isinstance(event, Tried):
        return _tried(state, event, policy, dice)
    if isinstance(event, Alerted):
        return _alerted(state, event.alert), []
    if isinstance(event, Wait):
        return _evolve(state, next_due=event.until), []
    if isinstance(event, Stale):
        return _evolve(state, known=True, renewed=state.renewed or event.renewed), []
    if isinstance(event, Unusable):
        return _unusable(state, event), []
    return _tick(state, now, policy)


def _not_ahead(event: Event, now: datetime) -> Event:
    """`event` with a time another process recorded (its fetch, its attempt) taken as `now`
    when it is later: a clock ahead of this one (another host's, or one set back since) would
    plan the next refresh from the future, past the staple's expiry."""
    if isinstance(event, Restored | Accepted) and event.fetched_at > now:
        return replace(event, fetched_at=now)
    if isinstance(event, Tried) and event.at > now:
        return replace(event, at=now)
    return event


_IN_HAND = {"known": True, "renewed": False}  # an answer of this certificate in hand


def _restored(
    state: CertState, event: Restored, now: datetime, policy: SchedulePolicy, dice: Dice
) -> tuple[CertState, list[Effect]]:
    staple = event.staple
    due = next_refresh(staple, event.fetched_at, dice, policy)
    note = hurried_note(staple, event.fetched_at, policy)
    held, revoked = (staple, None) if staple.good else (None, staple)
    phase = Phase.GOOD if staple.good else Phase.REVOKED
    new = _evolve(
        state, phase=phase, held=held, revoked=revoked, next_due=due, schedule_note=note, **_IN_HAND
    )
    if staple.good:
        line = LogLine(
            "info", "restored a valid staple from the state (until {})", (staple.effective_expiry,)
        )
    else:
        line = LogLine(
            "info",
            "restored the revoked answer from the state (revoked at {})",
            (staple.revocation_time,),
        )
    return new, [line, *_hurried(state, note)]


def _hurried(before: CertState, note: str | None) -> list[Effect]:
    """The warning that the keeper refreshes sooner than `min_interval`: once, when it
    begins (not at every refresh while it lasts)."""
    if note is None or before.schedule_note is not None:
        return []
    return [LogLine("warning", "{}", (note,))]


def _accepted(
    state: CertState, event: Accepted, now: datetime, policy: SchedulePolicy, dice: Dice
) -> tuple[CertState, list[Effect]]:
    staple, current = event.staple, state.answer
    why = compare(staple, current)
    if why is not None and event.origin:  # another process or member: only noted
        kept = LogLine("info", "kept the answer in hand{}: {}", (_from(event), why.message))
        return state, [kept]
    if why is not None:  # our own fetch: a failed refresh
        return _rejected(state, why, now, policy, dice)
    if current is not None and current.der == staple.der and event.origin:
        return state, []  # the answer in hand, heard again
    due = next_refresh(staple, event.fetched_at, dice, policy)
    note = hurried_note(staple, event.fetched_at, policy)
    stored = Store(staple, event.fetched_at, event.url)
    changes: dict[str, Any] = {
        "failures": 0,
        "run_from": None,
        "backoff": 0,
        "rejection": None,
        "next_due": due,
        "schedule_note": note,
        # the same answer again (a responder's cache) is no news: its alert stays raised,
        # else on_expiring would run again at every refresh
        "alert": Severity.OK if current is None or strictly_newer(staple, current) else state.alert,
        "known": True,
        "renewed": False,
    }
    if event.origin == "":
        changes["last_attempt"] = event.fetched_at
    if not staple.good:
        new = _evolve(state, phase=Phase.REVOKED, held=None, revoked=staple, **changes)
        effects: list[Effect] = [stored, *_hurried(state, note)]
        if state.phase is not Phase.REVOKED:
            text = (
                f"revoked at {_revoked_at(staple)}; every server now gets the CA's revoked answer"
            )
            told = event.told
            effects.append(Emit("revoked", text + _from(event), hook=not told, shared=not told))
        return new, effects
    recovered = state.failures > 0 or state.phase in (Phase.EXPIRED, Phase.REVOKED)
    new = _evolve(state, phase=Phase.GOOD, held=staple, revoked=None, expired_at=None, **changes)
    effects = [stored]
    until, origin = staple.effective_expiry, _from(event)
    if recovered or not event.told:  # not seen here: a run another process opened meanwhile
        text = f"good staple again, until {human_time(until)}{origin}"
        hook = recovered and not event.told
        effects.append(Emit("recovered", text, hook=hook, shared=True, said=recovered))
    line = "good staple until {}{}; next refresh at {}"
    effects.append(LogLine("info", line, (until, origin, due)))
    return new, effects + _hurried(state, note)


def _rejected(
    state: CertState, rejection: Rejection, now: datetime, policy: SchedulePolicy, dice: Dice
) -> tuple[CertState, list[Effect]]:
    new, message = _failed(state, rejection, now, policy, dice)
    return new, [Emit("failure", message, rejection.code, hook=new.failures == 1, shared=True)]


def _failed(
    state: CertState, rejection: Rejection, now: datetime, policy: SchedulePolicy, dice: Dice
) -> tuple[CertState, str]:
    """The state after a refresh failed at `now`, and the line that says so."""
    failures, backoff = state.failures + 1, state.backoff + 1
    run_from = state.run_from if state.failures and state.run_from is not None else now
    held, expired_at = state.held, state.expired_at
    if held is not None and held.effective_expiry <= now:  # expired since the last tick
        expired_at, held = held.effective_expiry, None  # (a resume): not in hand any more
    expiry = held.effective_expiry if held else None
    due = next_retry(backoff, now, expiry, dice, policy)
    phase = state.phase
    if phase in (Phase.PENDING, Phase.GOOD):
        phase = Phase.FAILING
    new = _evolve(
        state,
        phase=phase,
        failures=failures,
        run_from=run_from,
        backoff=backoff,
        rejection=rejection,
        next_due=due,
        last_attempt=now,
    )
    if held is not None:
        in_hand = f"the staple in hand stays valid until {human_time(held.effective_expiry)}"
    elif expired_at is not None:
        in_hand = f"no valid staple in hand: the last one expired at {human_time(expired_at)}"
    elif state.revoked is not None:
        in_hand = "the revoked answer in hand stays on every server"
    else:
        in_hand = "no valid staple in hand"
    return new, f"{rejection.message}; {in_hand}; next try at {human_time(due)}"


def _tried(
    state: CertState, event: Tried, policy: SchedulePolicy, dice: Dice
) -> tuple[CertState, list[Effect]]:
    """Another process's refresh, later than this state's last attempt, taken as the last
    refresh: a failure as one of this process's (its retry planned from then), told in the
    log only; a success ends a run of failures when an answer is in hand (the one it got,
    or as new: a newer one came as `Accepted`), and plans the next refresh from then (its
    hook is the other process's, unless the shared state says this one opened the run
    after that process wrote)."""
    before = state.last_attempt
    if state.phase is Phase.UNUSABLE:
        return state, []
    if before is not None and event.at <= before:
        return _amid(state, event), []
    if event.rejection is not None:
        new, message = _failed(state, event.rejection, event.at, policy, dice)
        new = _evolve(new, failures=max(new.failures, event.failures))
        line = "the last refresh, {} at {}, failed: {}"
        return new, [LogLine("info", line, (_by(event), event.at, message))]
    answer = state.answer
    if answer is None or not state.failures:
        return _evolve(state, last_attempt=event.at), []
    due = next_refresh(answer, event.at, dice, policy)
    note = hurried_note(answer, event.at, policy)
    recovered = state.phase is Phase.FAILING
    new = _evolve(
        state,
        phase=Phase.GOOD if recovered else state.phase,
        failures=0,
        run_from=None,
        backoff=0,
        rejection=None,
        next_due=due,
        schedule_note=note,
        last_attempt=event.at,
    )
    effects: list[Effect] = _hurried(state, note)
    if recovered:
        until = human_time(answer.effective_expiry)
        text = f"good staple again, until {until} (fetched {_by(event)})"
        # the other process told them, unless this one opened the run after its write
        effects.insert(0, Emit("recovered", text, hook=False, shared=True))
    return new, effects


def _amid(state: CertState, event: Tried) -> CertState:
    """Another process's refresh no later than this state's last attempt: nothing new,
    unless it worked within the run of failures counted here (two refreshes at once, the
    other one's answered first): only the failures from then on are in a row, this
    state's last one (no later than it: after it)."""
    if event.rejection is not None or state.run_from is None or event.at <= state.run_from:
        return state
    return _evolve(state, failures=1, backoff=1, run_from=state.last_attempt)


def _by(event: Tried) -> str:
    """Who made the refresh `event` records, as the log says it."""
    return "by this process before its reload" if event.reloaded else "by another mustaple process"


def _alerted(state: CertState, alert: Alert) -> CertState:
    """The level another process told for the staple in hand, when higher than this one's."""
    held = state.held
    if held is None or not alert.about(held) or alert.level <= state.alert:
        return state
    return _evolve(state, alert=alert.level)


def _unusable(state: CertState, event: Unusable) -> CertState:
    rejection = Rejection(event.reason, event.problem)
    return _evolve(
        state, phase=Phase.UNUSABLE, problem=event.problem, rejection=rejection, next_due=None
    )


def _tick(
    state: CertState, now: datetime, policy: SchedulePolicy
) -> tuple[CertState, list[Effect]]:
    held, effects = state.held, list[Effect]()
    stepped_back = state.last_attempt is not None and state.last_attempt > now
    latest = now + policy.retry_max
    if stepped_back and state.failures and state.next_due and state.next_due > latest:
        # the clock went back (NTP, a restored VM): a retry planned from the later time would
        # wait that long again; never longer than the longest retry
        state = _evolve(state, next_due=latest)
    if held is not None and held.effective_expiry <= now:
        when = held.effective_expiry
        due = now if state.next_due is None or state.next_due > now else state.next_due
        state = _evolve(
            state,
            phase=Phase.EXPIRED,
            held=None,
            expired_at=when,
            backoff=0,
            next_due=due,
            schedule_note=None,
        )
        told = Alert(held.this_update, when, Severity.CRITICAL, expired=True)
        text = f"the staple expired at {human_time(when)} with no valid replacement"
        effects.append(Emit("expired", text, shared=True, alert=told))
    if state.phase in (Phase.REVOKED, Phase.UNUSABLE):
        return state, effects
    level = alert_level(state.held, now, policy)
    held = state.held
    if level > state.alert and held is not None:
        text = f"{level.name}: the staple expires at {human_time(held.effective_expiry)}"
        told = Alert(held.this_update, held.effective_expiry, level)
        message = f"{text} and no fresh one came yet"
        effects.append(Emit("expiring", message, shared=True, alert=told))
    if level != state.alert:
        state = _evolve(state, alert=level)
    return state, effects


_MARGIN = timedelta(seconds=1)  # before a WARNING whose time is worked out in floats


def calm_until(state: CertState, policy: SchedulePolicy) -> datetime | None:
    """Until when a `Tick` leaves `state` as it is, with nothing to do, given that `state`
    is what a tick at some time `now` made: at any time from `now` (included) to the one
    returned (excluded), or from `now` on when None. A keeper of 100k certificates judges
    each one's time at every pass; it skips those still calm. Before `now` (a clock set
    back), a tick may change things (an alert lowered): the caller never skips then.

    From `now` on, only the held staple's expiry and its alert level rising can change a
    tick's outcome (the level only rises with time; a clock seen set back at `now` was
    dealt with then)."""
    held = state.held
    if held is None:
        return None  # CRITICAL, or revoked or unusable, whatever the time
    until = held.effective_expiry
    if state.phase in (Phase.REVOKED, Phase.UNUSABLE):
        return until
    if state.alert < Severity.CRITICAL:
        until = min(until, held.effective_expiry - critical_left(held, policy))
    if state.alert < Severity.WARNING:
        share = held.window.total_seconds() * policy.warn_left
        until = min(until, held.effective_expiry - timedelta(seconds=share) - _MARGIN)
    return until


# --- What the servers should have -----------------------------------------------------------------


def wanted(state: CertState, *, remove_at_expiry: bool) -> tuple[Action, bytes | None] | None:
    """What every sink should serve for this certificate, or None to leave them alone.

    The good staple held; the CA's revoked answer once revoked (every server keeps running and
    clients learn the truth: nginx, which cannot reload without its stapling file, included);
    nothing once expired, when `remove_at_expiry`, and nothing in place of the staple of the
    certificate this one renewed, always (`renewed`: it is no staple of this one). A
    certificate never seen with a staple of ours is left alone: what a server has for it
    then is not ours to take away.
    """
    if state.held is not None:
        return (Action.STAPLE, state.held.der)
    if state.revoked is not None:
        return (Action.REVOKED, state.revoked.der)
    if state.known and (remove_at_expiry or state.renewed):
        return (Action.REMOVE, None)
    return None


_STATE_FIELDS = tuple(f.name for f in fields(CertState))
_STATE_VALUES = operator.attrgetter(*_STATE_FIELDS)
_STATE_INDEX = {name: index for index, name in enumerate(_STATE_FIELDS)}


def _evolve(state: CertState, **changes: Any) -> CertState:
    """`dataclasses.replace` for a CertState, without its inspection of the fields at every
    call (a life steps several times per refresh)."""
    values = list(_STATE_VALUES(state))
    for name, value in changes.items():
        values[_STATE_INDEX[name]] = value
    return CertState(*values)


def _from(event: Accepted) -> str:
    return f" ({event.origin})" if event.origin else ""


def _revoked_at(staple: Staple) -> str:
    return human_time(staple.revocation_time)
