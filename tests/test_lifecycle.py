"""The certificate's life cycle as a pure function: every transition in a table, then long
random event sequences under a fake clock, checking the promises at every step."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.x509 import ocsp
from hypothesis import given, settings
from hypothesis import strategies as st

from mustaple.core.delivery import Action
from mustaple.core.lifecycle import (
    Accepted,
    Alert,
    Alerted,
    CertState,
    Effect,
    Emit,
    Event,
    LogLine,
    Phase,
    Rejected,
    Restored,
    Stale,
    Store,
    Tick,
    Tried,
    Unusable,
    Wait,
    calm_until,
    step,
    wanted,
)
from mustaple.core.reasons import Reason, Rejection
from mustaple.core.schedule import SchedulePolicy
from mustaple.core.severity import Severity
from mustaple.core.verify import Signer, Staple

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
POLICY = SchedulePolicy()
HALF = 0.5


def answer(this_update: datetime, *, good: bool = True, life: timedelta = 4 * DAY) -> Staple:
    status = ocsp.OCSPCertStatus.GOOD if good else ocsp.OCSPCertStatus.REVOKED
    return Staple(
        der=f"{this_update.isoformat()}-{good}".encode(),
        serial=1,
        status=status,
        produced_at=this_update,
        this_update=this_update,
        next_update=this_update + life,
        effective_expiry=this_update + life,
        signer=Signer.ISSUER,
        signer_name="CN=test",
        hash_name="sha1",
        revocation_time=None if good else this_update - HOUR,
    )


def run(state: CertState, event: Event, now: datetime = T0) -> tuple[CertState, list[Effect]]:
    return step(state, event, now, POLICY, lambda: HALF)


def kinds(effects: list[Effect]) -> list[str]:
    """The effects by kind, without the recovery every good answer may close unseen (the
    shared state decides it: see `test_the_shared_state_decides_who_tells_a_run`)."""
    return [
        e.kind if isinstance(e, Emit) else type(e).__name__
        for e in effects
        if not isinstance(e, Emit) or e.said
    ]


GOOD = answer(T0)
LATER_GOOD = answer(T0 + DAY)
REVOKED = answer(T0 + HOUR, good=False)
FAIL = Rejected(Rejection(Reason.TRY_LATER))
HELD = CertState(phase=Phase.GOOD, held=GOOD, next_due=T0 + DAY, known=True)
REVOKED_STATE = CertState(phase=Phase.REVOKED, revoked=REVOKED, next_due=T0 + DAY, known=True)
REFUSED = Rejection(Reason.HTTP_SERVER_ERROR, "HTTP 500")
TRIED_FAIL = Tried(T0 + HOUR, REFUSED, failures=1)  # another process's, as it recorded it
FAILING = replace(HELD, phase=Phase.FAILING, failures=2, backoff=2, rejection=REFUSED)


# (name, state before, event, now, phase after, effects, what sinks get)
TABLE = [
    ("first good answer", CertState(), Accepted(GOOD, T0), T0, Phase.GOOD,
     ["Store", "LogLine"], (Action.STAPLE, GOOD.der)),
    ("first answer revoked", CertState(), Accepted(REVOKED, T0), T0, Phase.REVOKED,
     ["Store", "revoked"], (Action.REVOKED, REVOKED.der)),
    ("pending fails", CertState(), FAIL, T0, Phase.FAILING, ["failure"], None),
    ("good fails: keeps the staple", HELD, FAIL, T0, Phase.FAILING, ["failure"],
     (Action.STAPLE, GOOD.der)),
    ("good, then revoked", HELD, Accepted(REVOKED, T0 + HOUR), T0 + HOUR, Phase.REVOKED,
     ["Store", "revoked"], (Action.REVOKED, REVOKED.der)),
    ("revoked, good of the same age is refused", REVOKED_STATE,
     Accepted(answer(T0 + HOUR), T0 + 2 * HOUR), T0 + 2 * HOUR, Phase.REVOKED, ["failure"],
     (Action.REVOKED, REVOKED.der)),
    ("revoked, another process stores an older good: noted only", REVOKED_STATE,
     Accepted(GOOD, T0, origin="stored by another mustaple process"), T0 + 2 * HOUR,
     Phase.REVOKED, ["LogLine"], (Action.REVOKED, REVOKED.der)),
    ("revoked, strictly newer good lifts it (certificateHold)", REVOKED_STATE,
     Accepted(LATER_GOOD, T0 + DAY), T0 + DAY, Phase.GOOD, ["Store", "recovered", "LogLine"],
     (Action.STAPLE, LATER_GOOD.der)),
    ("good, an older answer from the fleet is not taken", replace(HELD, held=LATER_GOOD),
     Accepted(GOOD, T0, origin="fetched by m2"), T0 + DAY, Phase.GOOD, ["LogLine"],
     (Action.STAPLE, LATER_GOOD.der)),
    ("good, the same answer heard again", HELD, Accepted(GOOD, T0, origin="fetched by m2"),
     T0 + HOUR, Phase.GOOD, [], (Action.STAPLE, GOOD.der)),
    ("failing recovers", replace(HELD, phase=Phase.FAILING, failures=3, backoff=3),
     Accepted(LATER_GOOD, T0 + DAY), T0 + DAY, Phase.GOOD, ["Store", "recovered", "LogLine"],
     (Action.STAPLE, LATER_GOOD.der)),
    ("time passes the expiry", HELD, Tick(), T0 + 4 * DAY, Phase.EXPIRED, ["expired"],
     (Action.REMOVE, None)),
    ("time passes the warning point", HELD, Tick(), T0 + 3 * DAY + HOUR, Phase.GOOD,
     ["expiring"], (Action.STAPLE, GOOD.der)),
    ("expired recovers", CertState(phase=Phase.EXPIRED, expired_at=T0, known=True, failures=5),
     Accepted(LATER_GOOD, T0 + DAY), T0 + DAY, Phase.GOOD, ["Store", "recovered", "LogLine"],
     (Action.STAPLE, LATER_GOOD.der)),
    ("revoked: no expiry, no alert", REVOKED_STATE, Tick(), T0 + 10 * DAY, Phase.REVOKED, [],
     (Action.REVOKED, REVOKED.der)),
    ("restored good", CertState(), Restored(GOOD, T0), T0 + HOUR, Phase.GOOD, ["LogLine"],
     (Action.STAPLE, GOOD.der)),
    ("restored revoked", CertState(), Restored(REVOKED, T0), T0 + HOUR, Phase.REVOKED,
     ["LogLine"], (Action.REVOKED, REVOKED.der)),
    ("no OCSP URL", CertState(), Unusable("no URL; set `urls`"), T0, Phase.UNUSABLE, [], None),
    ("stored staple expired at start: ours to take away", CertState(), Stale(), T0,
     Phase.PENDING, [], (Action.REMOVE, None)),
    ("the fleet says wait", HELD, Wait(T0 + 2 * HOUR), T0, Phase.GOOD, [],
     (Action.STAPLE, GOOD.der)),
    ("good, another process's later refresh failed: failing, said in the log only", HELD,
     TRIED_FAIL, T0 + 2 * HOUR, Phase.FAILING, ["LogLine"], (Action.STAPLE, GOOD.der)),
    ("good, another process's earlier failure is not taken",
     replace(HELD, last_attempt=T0 + 2 * HOUR), TRIED_FAIL, T0 + 2 * HOUR, Phase.GOOD, [],
     (Action.STAPLE, GOOD.der)),
    ("failing, another process's later refresh got the answer in hand: recovered", FAILING,
     Tried(T0 + HOUR), T0 + 2 * HOUR, Phase.GOOD, ["recovered"], (Action.STAPLE, GOOD.der)),
    ("revoked, another process's later refresh failed: still revoked", REVOKED_STATE,
     TRIED_FAIL, T0 + 2 * HOUR, Phase.REVOKED, ["LogLine"], (Action.REVOKED, REVOKED.der)),
    ("unusable: another process's refresh is not taken", CertState(phase=Phase.UNUSABLE),
     TRIED_FAIL, T0 + 2 * HOUR, Phase.UNUSABLE, [], None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("state", "event", "now", "phase", "effects", "sinks"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_transition(
    state: CertState,
    event: Event,
    now: datetime,
    phase: Phase,
    effects: list[str],
    sinks: tuple[Action, bytes | None] | None,
) -> None:
    after, done = run(state, event, now)
    assert after.phase is phase
    assert kinds(done) == effects
    assert wanted(after, remove_at_expiry=True) == sinks


def test_a_revoked_answer_is_stored_so_a_restart_keeps_it() -> None:
    _, effects = run(HELD, Accepted(REVOKED, T0 + HOUR), T0 + HOUR)
    assert [e.staple for e in effects if isinstance(e, Store)] == [REVOKED]
    restarted, _ = run(CertState(), Restored(REVOKED, T0 + HOUR), T0 + 2 * HOUR)
    assert restarted.phase is Phase.REVOKED
    assert wanted(restarted, remove_at_expiry=False) == (Action.REVOKED, REVOKED.der)


def test_the_staple_before_a_renewal_is_taken_away_even_when_expired_ones_are_kept() -> None:
    """`at_expiry = "keep"` keeps a certificate's own expired staple, never the staple of the
    certificate it renewed (a kept file would be a trap, see `delivery.Trap`), until an
    answer of the new one is in hand; then its own expiry is kept again."""
    expired, _ = run(CertState(), Stale())
    assert wanted(expired, remove_at_expiry=False) is None
    renewed, _ = run(CertState(), Stale(renewed=True))
    assert wanted(renewed, remove_at_expiry=False) == (Action.REMOVE, None)
    assert wanted(run(renewed, FAIL)[0], remove_at_expiry=False) == (Action.REMOVE, None)
    stapled, _ = run(renewed, Accepted(GOOD, T0))
    after, _ = run(stapled, Tick(), T0 + 4 * DAY)
    assert (after.phase, wanted(after, remove_at_expiry=False)) == (Phase.EXPIRED, None)
    restored, _ = run(renewed, Restored(GOOD, T0))
    assert not restored.renewed


def test_after_expiry_attempts_restart_at_once_and_never_wait_longer_than_retry_max() -> None:
    state = replace(HELD, phase=Phase.FAILING, failures=12, backoff=12, next_due=T0 + 4 * DAY)
    expired, effects = run(state, Tick(), T0 + 4 * DAY + timedelta(seconds=1))
    assert expired.next_due == T0 + 4 * DAY  # at once: not the backoff of the outage
    assert "expired at 2026-01-05 00:00:00Z" in next(
        e.message for e in effects if isinstance(e, Emit)
    )
    now = T0 + 4 * DAY
    waits = []
    for _ in range(20):
        expired, effects = run(expired, FAIL, now)
        assert expired.next_due is not None
        waits.append(expired.next_due - now)
        now = expired.next_due
        (failure,) = effects
        assert isinstance(failure, Emit)
        assert "the last one expired at 2026-01-05 00:00:00Z" in failure.message
    assert waits[0] <= POLICY.retry_base
    assert max(waits) <= POLICY.retry_max


def test_another_processs_refresh_is_the_last_one_when_later_and_told_to_no_hook() -> None:
    """What another process recorded (a `prime` beside the keeper, the process before a
    restart) counts as the last refresh when it is later than the one in hand: its time and
    outcome, the failures in a row (its count when larger: the one before a restart), a
    retry planned from then; it ran its own hooks. A success ends a run of failures and
    plans the next refresh from then; without failures it only moves the last attempt."""
    held = replace(HELD, last_attempt=T0)
    failed, effects = run(held, Tried(T0 + HOUR, REFUSED, failures=4), T0 + 2 * HOUR)
    assert (failed.last_attempt, failed.rejection, failed.failures) == (T0 + HOUR, REFUSED, 4)
    assert failed.held == GOOD
    assert failed.next_due == T0 + HOUR + POLICY.retry_base * HALF  # from the prime's failure
    assert not [e for e in effects if isinstance(e, Emit)]  # the other process told the hooks
    again, effects = run(failed, FAIL, T0 + 3 * HOUR)  # the run of failures goes on
    assert (again.failures, [e.hook for e in effects if isinstance(e, Emit)]) == (5, [False])

    worked, effects = run(again, Tried(T0 + 4 * HOUR), T0 + 5 * HOUR)
    assert (worked.phase, worked.failures, worked.backoff) == (Phase.GOOD, 0, 0)
    told = [(e.kind, e.hook) for e in effects if isinstance(e, Emit)]
    assert told == [("recovered", False)]  # said in the log; the other process ran the hook
    assert (worked.rejection, worked.last_attempt) == (None, T0 + 4 * HOUR)
    assert worked.next_due is not None
    assert worked.next_due > T0 + 5 * HOUR  # the next refresh, not a retry

    quiet, effects = run(held, Tried(T0 + HOUR), T0 + 2 * HOUR)
    assert (quiet, effects) == (replace(held, last_attempt=T0 + HOUR), [])


def test_a_success_within_the_run_counted_here_leaves_the_failures_after_it() -> None:
    """Two refreshes at once (two primes held at the responder): the other one worked and
    wrote its row first, then this one failed. Taken in at the write, the other's success
    is no later than this state's last attempt, and was ignored: the row said 2 failures
    in a row for fail, good, fail. Now only the failures after it count; a success before
    the run, or a failure, changes nothing."""
    held = replace(HELD, last_attempt=T0)
    counted, _ = run(held, Tried(T0 + HOUR, REFUSED, failures=1), T0 + HOUR)  # read at start
    failed, _ = run(counted, FAIL, T0 + 3 * HOUR)  # its own attempt
    assert failed.failures == 2
    amid, effects = run(failed, Tried(T0 + 2 * HOUR), T0 + 3 * HOUR)  # the other's success
    assert (amid.failures, amid.backoff, amid.phase, effects) == (1, 1, Phase.FAILING, [])
    assert (amid.last_attempt, amid.rejection) == (failed.last_attempt, failed.rejection)
    again, _ = run(amid, FAIL, T0 + 4 * HOUR)
    assert again.failures == 2  # the run goes on from there
    assert run(failed, Tried(T0 + HOUR / 2), T0 + 3 * HOUR)[0] == failed  # before the run
    assert run(failed, Tried(T0 + 2 * HOUR, REFUSED, 1), T0 + 3 * HOUR)[0] == failed


def test_a_refresh_this_process_made_before_its_reload_is_said_as_its_own() -> None:
    """The keeper a SIGHUP builds takes in the rows its predecessor wrote: their refreshes
    are this process's, said so (a failure and a recovery), not another process's."""
    held = replace(HELD, last_attempt=T0)
    for reloaded, who in ((True, "by this process before its reload"), (False, "by another")):
        failed, effects = run(held, Tried(T0 + HOUR, REFUSED, 1, reloaded), T0 + 2 * HOUR)
        (line,) = [e.message for e in effects if isinstance(e, LogLine)]
        assert line.startswith(f"the last refresh, {who}"), line
        _, effects = run(failed, Tried(T0 + 2 * HOUR, reloaded=reloaded), T0 + 3 * HOUR)
        (emit,) = [e for e in effects if isinstance(e, Emit)]
        assert f"(fetched {who}" in emit.message, emit.message


def test_a_time_another_process_recorded_ahead_of_this_clock_is_taken_as_now() -> None:
    """A `prime` on a host (or at a moment) whose clock ran three days ahead recorded its
    fetch and its attempt in the future: the next refresh planned from then came after the
    staple in hand expired (it lapsed, served expired, until the tick of the expiry). Such a
    time is taken as this process's now."""
    ahead, now = T0 + 5 * DAY, T0 + 2 * DAY  # GOOD expires at T0 + 4 days
    failing = replace(FAILING, last_attempt=T0 + DAY)
    worked, _ = run(failing, Tried(ahead), now)
    assert worked.last_attempt == now
    assert worked.next_due is not None
    assert now < worked.next_due < GOOD.effective_expiry
    taken, _ = run(CertState(), Accepted(GOOD, ahead, None, "stored by another process"), now)
    assert taken.next_due is not None
    assert taken.next_due < GOOD.effective_expiry
    restored, _ = run(CertState(), Restored(GOOD, ahead), now)
    assert restored.next_due is not None
    assert restored.next_due < GOOD.effective_expiry


@pytest.mark.parametrize("reason", list(Reason))
def test_a_rejection_reads_back_as_it_was_written(reason: Reason) -> None:
    """A status row keeps a rejection as its code and message: read back, it says the
    same (a code this version does not know is a ValueError)."""
    for detail in ("", "HTTP 500: Internal Server Error", reason.summary):
        written = Rejection(reason, detail)
        assert Rejection.read(written.code, written.message).message == written.message
    assert Rejection.read(reason.code, reason.summary) == Rejection(reason)
    with pytest.raises(ValueError, match="unknown reason code"):
        Rejection.read("no-such-code", "what")


def test_an_expiring_level_is_told_once_per_staple_from_the_level_recorded() -> None:
    """The expiring alert names its staple and level, for the shared state to decide who
    tells it; the level recorded for the staple in hand (another process told it, or the
    process before a restart) is where a state starts, so that level is not said again; a
    level recorded for another staple is not this one's."""
    warning = Alert(GOOD.this_update, GOOD.effective_expiry, Severity.WARNING)
    at_warning = T0 + 3 * DAY + HOUR
    _, effects = run(HELD, Tick(), at_warning)
    (emit,) = effects
    assert isinstance(emit, Emit)
    assert (emit.kind, emit.shared, emit.alert) == ("expiring", True, warning)
    told, effects = run(HELD, Alerted(warning), T0)
    assert (told.alert, effects) == (Severity.WARNING, [])
    assert run(told, Tick(), at_warning)[1] == []
    critical = run(told, Tick(), GOOD.effective_expiry - HOUR)[1]
    assert [e.alert.level for e in critical if isinstance(e, Emit) and e.alert] == [
        Severity.CRITICAL
    ]
    other = Alert(LATER_GOOD.this_update, LATER_GOOD.effective_expiry, Severity.CRITICAL)
    assert run(HELD, Alerted(other), T0)[0] is HELD
    assert run(replace(HELD, alert=Severity.CRITICAL), Alerted(warning), T0)[0].alert == (
        Severity.CRITICAL
    )
    assert warning.news_over(None)
    assert not warning.news_over(warning)
    assert other.news_over(warning)
    assert not warning.news_over(other)


def test_an_expiry_is_the_step_after_critical_told_once_per_staple() -> None:
    """The expiry names its staple for the shared state to decide who tells it (each process
    that saw it told it): it is news over that staple's CRITICAL, not over itself, and a
    newer staple's alerts and expiry are news over it."""
    _, effects = run(HELD, Tick(), GOOD.effective_expiry)
    (emit,) = [e for e in effects if isinstance(e, Emit)]
    expiry = Alert(GOOD.this_update, GOOD.effective_expiry, Severity.CRITICAL, expired=True)
    assert (emit.kind, emit.shared, emit.hook, emit.alert) == ("expired", True, True, expiry)
    critical = Alert(GOOD.this_update, GOOD.effective_expiry, Severity.CRITICAL)
    assert expiry.news_over(critical)
    assert not expiry.news_over(expiry)
    assert not critical.news_over(expiry)
    newer = Alert(LATER_GOOD.this_update, LATER_GOOD.effective_expiry, Severity.WARNING)
    assert newer.news_over(expiry)
    assert replace(newer, expired=True).news_over(newer)
    assert Alert.ranked(expiry.this_update, expiry.expiry, expiry.rank) == expiry
    assert Alert.ranked(critical.this_update, critical.expiry, critical.rank) == critical
    with pytest.raises(ValueError, match="is not a valid Severity"):
        Alert.ranked(T0, T0, 9)  # a rank of a newer version: read as none


def test_the_shared_state_decides_who_tells_a_run() -> None:
    """A failure fetched here, and every good answer taken but another process's that it
    told, leave their hook to the shared state (`shared`): a good answer after no failure
    seen here is said only if its write closes a run another process opened meanwhile
    (`said` False); another process's answer that ends the failures seen here closes the
    run too, with no hook of its own (that process told it, unless the run opened after)."""
    failing = replace(HELD, phase=Phase.FAILING, failures=2, backoff=2)
    cases: list[tuple[CertState, Event, tuple[str, bool, bool, bool]]] = [
        (HELD, FAIL, ("failure", True, True, True)),
        (failing, FAIL, ("failure", False, True, True)),
        (HELD, Accepted(LATER_GOOD, T0), ("recovered", False, True, False)),
        (failing, Accepted(LATER_GOOD, T0), ("recovered", True, True, True)),
        (failing, Accepted(LATER_GOOD, T0, None, "m2"), ("recovered", True, True, True)),
        (failing, Accepted(LATER_GOOD, T0, None, "x", True), ("recovered", False, True, True)),
        (replace(failing, last_attempt=T0), Tried(T0 + HOUR), ("recovered", False, True, True)),
        (HELD, Accepted(REVOKED, T0), ("revoked", True, True, True)),
        (HELD, Accepted(REVOKED, T0, None, "x", True), ("revoked", False, False, True)),
    ]
    for state, event, emitted in cases:
        _, effects = run(state, event, T0 + HOUR)
        (emit,) = [e for e in effects if isinstance(e, Emit)]
        assert (emit.kind, emit.hook, emit.shared, emit.said) == emitted, (event, emit)
    _, effects = run(HELD, Accepted(LATER_GOOD, T0, None, "x", True), T0 + HOUR)
    assert not [e for e in effects if isinstance(e, Emit)]  # nothing seen, the other told


def test_hooks_run_once_per_run_of_failures() -> None:
    state, hooked = HELD, []
    for _ in range(5):
        state, effects = run(state, FAIL)
        hooked += [e.hook for e in effects if isinstance(e, Emit)]
    assert hooked == [True, False, False, False, False]


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(
            ["good", "revoked", "fail", "tick", "stored-good", "stored-revoked", "tried", "ok"]
        ),
        st.integers(min_value=0, max_value=36),  # hours the clock moves before the event
        st.integers(min_value=-24, max_value=24),  # age of the answer relative to now, hours
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_random_lives_keep_the_promises(events: list[tuple[str, int, int]]) -> None:
    """Whatever happens, in any order: never a good staple served while the newest valid
    answer seen says revoked; never an expired staple held; the phase matches the state."""
    state, now = CertState(next_due=T0), T0  # as the keeper begins: due at once
    newest_revoked: Staple | None = None
    for kind, hours, age in events:
        now += timedelta(hours=hours)
        this_update = now - timedelta(hours=abs(age))
        event: Event
        if kind in ("good", "stored-good"):
            event = Accepted(answer(this_update), now, origin="" if kind == "good" else "x")
        elif kind in ("revoked", "stored-revoked"):
            revoked = answer(this_update, good=False)
            event = Accepted(revoked, now, origin="" if kind == "revoked" else "x")
        elif kind == "fail":
            event = FAIL
        elif kind in ("tried", "ok"):  # another process's refresh, `age` hours ago
            at = now - timedelta(hours=abs(age))
            event = Tried(at, REFUSED, 1) if kind == "tried" else Tried(at)
        else:
            event = Tick()
        state, _ = run(state, event, now)
        state, _ = run(state, Tick(), now)
        if state.revoked is not None and (
            newest_revoked is None or state.revoked.this_update >= newest_revoked.this_update
        ):
            newest_revoked = state.revoked
        served = wanted(state, remove_at_expiry=True)
        if newest_revoked is not None and served is not None and served[1] is not None:
            held = state.held
            if held is not None and served[1] == held.der:
                assert held.this_update > newest_revoked.this_update
        if state.held is not None:
            assert state.held.effective_expiry > now
        assert (state.phase is Phase.REVOKED) == (state.revoked is not None)
        assert state.held is None or state.revoked is None
        assert state.next_due is not None


@settings(max_examples=300, deadline=None)
@given(
    EVENTS,
    st.sampled_from([2, 30, 96, 240]),  # hours an answer lives: short ones meet critical_left
    st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=8),
)
def test_a_tick_while_calm_changes_nothing_and_the_calm_ends_when_a_tick_would(
    events: list[tuple[str, int, int]], hours: int, shares: list[float]
) -> None:
    """A keeper skips the certificates whose time is calm (`calm_until`): a tick at any
    time from the last tick's to the calm's end must leave the state as it is, with nothing
    to do; and 2 s after that end, a tick must change something (else the calm ends too
    soon, and a pass judges what it need not)."""
    life = timedelta(hours=hours)
    state, now = CertState(next_due=T0), T0
    for kind, moved, age in events:
        now += timedelta(hours=moved)
        this_update = now - timedelta(hours=abs(age))
        event: Event = Tick()
        if kind in ("good", "stored-good", "revoked", "stored-revoked"):
            good = "good" in kind
            event = Accepted(answer(this_update, good=good, life=life), now, origin="")
        elif kind == "fail":
            event = FAIL
        state, _ = run(state, event, now)
    state, _ = run(state, Tick(), now)  # as the keeper's pass does before it asks
    until = calm_until(state, POLICY)
    end = until if until is not None else now + 400 * DAY
    for share in shares:
        at = now + (end - now) * share
        if at < end:
            assert run(state, Tick(), at) == (state, [])
    if until is not None:
        after, effects = run(state, Tick(), until + timedelta(seconds=2))
        assert after != state or effects


def test_a_month_of_random_faults_under_a_fake_clock() -> None:
    """Seeded: a month of refreshes against a responder that fails a third of the time.
    The staple in hand is never expired, and whenever a valid staple could be held, the gap
    without one stays under a day (the retry cadence after expiry, not an outage's backoff)."""
    rng = random.Random(12)
    state, now = CertState(), T0
    end = T0 + 30 * DAY
    without_since: datetime | None = None
    longest = timedelta(0)
    while now < end:
        due = state.next_due or now
        now = max(now, due)
        if rng.random() < 1 / 3:
            state, _ = step(state, FAIL, now, POLICY, rng.random)
        else:
            state, _ = step(state, Accepted(answer(now), now), now, POLICY, rng.random)
        state, _ = step(state, Tick(), now, POLICY, rng.random)
        if state.held is None:
            without_since = without_since or now
            longest = max(longest, now - without_since)
        else:
            assert state.held.effective_expiry > now
            without_since = None
    assert longest < DAY


def test_an_answer_another_process_fetched_and_told_runs_no_hook_here() -> None:
    """A `prime`'s answer taken from the store (`told`): the recovery or revocation is said
    in the log, and its hook is left to the prime, which ran it; the same answer fetched
    here (or heard from the fleet) runs it."""
    failing = replace(HELD, phase=Phase.FAILING, failures=2, backoff=2)
    cases = [
        (failing, LATER_GOOD, "recovered"),
        (HELD, REVOKED, "revoked"),
    ]
    for state, staple, kind in cases:
        for told, origin in ((True, "stored by another process"), (False, ""), (False, "m2")):
            _, effects = run(state, Accepted(staple, T0 + DAY, None, origin, told), T0 + DAY)
            emitted = [(e.kind, e.hook) for e in effects if isinstance(e, Emit)]
            assert emitted == [(kind, not told)], (kind, origin, emitted)
