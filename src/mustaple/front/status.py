"""What `mustaple prime` and `mustaple status` show: lines, JSON and the status tables
(this member's view from its state; with `--fleet`, the fleet's view from Redis)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mustaple.adapters.config import Config, ConfigError, FleetConfig
from mustaple.adapters.coverage import configured_names
from mustaple.adapters.files import read_input
from mustaple.adapters.store import CertStatus, SqliteStore, StoredStaple, damaged
from mustaple.core.certs import display_name, is_must_staple, parse_certificates
from mustaple.core.delivery import Action
from mustaple.core.errors import InputError
from mustaple.core.health import Facts, judge
from mustaple.core.leaves import NameLeaves, ServedLeaf, by_name
from mustaple.core.lifecycle import Phase
from mustaple.core.render import (
    human_duration,
    human_time,
    iso,
    one_line,
    seconds_until,
    short_time,
    shown,
    sink_json,
    validity_json,
)
from mustaple.core.report import ExitCode
from mustaple.core.schedule import SchedulePolicy, hurried_note
from mustaple.core.severity import Severity
from mustaple.keeper.keeper import FILE_KEY, Primed, Unusable

if TYPE_CHECKING:  # redis and rich load where used: `prime` prints neither tables nor fleets
    import redis
    from rich.console import Console

    from mustaple.adapters.redisstore import FleetRecord, Member

__all__ = [
    "delivered",
    "fleet_view",
    "interrupted_line",
    "prime_exit_code",
    "prime_json",
    "prime_line",
    "print_fleet_tables",
    "print_status_table",
    "skipped_json",
    "status_rows",
    "unusable_json",
    "unusable_line",
]

log = logging.getLogger(__name__)

STALE_BEATS = 3  # a member that missed this many heartbeats is shown stale


def delivered(primed: Primed) -> bool:
    """Whether every sink took the staple held now, or has it in place for its server's start
    (the server not running yet is fine: `prime` before the servers start); never for an
    unusable certificate (one past its notAfter may still hold a valid staple)."""
    held = primed.state.held
    if held is None or primed.state.phase is Phase.UNUSABLE:
        return False
    return primed.sent == (Action.STAPLE, held.der)


def prime_line(primed: Primed, now: datetime) -> str:
    """One line per primed certificate (control characters in a name or an error written as
    escapes: no output line can be forged)."""
    return one_line(_prime_line(primed, now))


def _prime_line(primed: Primed, now: datetime) -> str:
    name, state = primed.name, primed.state
    held = state.held
    if state.revoked is not None:
        failing = _failing(primed)
        if failing:
            return (
                f"REVOKED {name}: the certificate is revoked, and the CA's revoked answer did "
                f"not reach every server ({failing}): one may still staple the good one"
            )
        return (
            f"REVOKED {name}: the certificate is revoked; every server gets the CA's revoked "
            "answer instead of a good staple"
        )
    if held is not None and delivered(primed):
        left = human_duration(held.seconds_left(now))
        notes = sorted({s.note for s in primed.sinks if s.note})
        where = f" ({'; '.join(notes)})" if notes else ""
        return (
            f"OK {name}: good staple until {iso(held.effective_expiry)} ({left} left), "
            f"delivered{where}"
        )
    head = "FAILED" if primed.must_staple else "WARNING"
    if state.next_due is None:  # unusable: nothing to fetch
        return f"{head} {name}: {state.problem or 'unusable'}"
    if held is not None:
        why = _failing(primed) or "see the log"
        return f"{head} {name}: a valid staple is held but a server did not take it ({why})"
    rejection = state.rejection
    why = f"{rejection.message}; {rejection.hint}" if rejection else "no staple"
    return f"{head} {name}: no valid staple: {why}"


def _failing(primed: Primed) -> str:
    """The sinks that failed to take the delivery, and why, in one line ("" when none)."""
    return "; ".join(f"{s.sink}: {s.error}" for s in primed.sinks if s.error)


def prime_json(primed: Primed, now: datetime) -> dict[str, Any]:
    """The object of a primed file; every object `prime --json` prints has the same keys."""
    held, rejection = primed.state.held, primed.state.rejection
    unusable = primed.state.phase is Phase.UNUSABLE  # past its notAfter, with a staple
    return {
        "name": primed.name,
        "cert": shown(primed.path),
        "must_staple": primed.must_staple,
        "state": primed.phase,
        "ok": delivered(primed),
        "effective_expiry": iso(held.effective_expiry) if held else None,
        "reason": rejection.code if rejection and (not held or unusable) else None,
        "message": prime_line(primed, now),
    }


def skipped_json(path: Path, message: str) -> dict[str, Any]:
    """The object of a file no entry covers, skipped (`--skip-uncovered`): it is not read."""
    return {
        "name": None,
        "cert": shown(path),
        "must_staple": None,
        "state": "skipped",
        "ok": True,
        "effective_expiry": None,
        "reason": None,
        "message": message,
    }


def unusable_line(left: Unusable) -> str:
    """The line of a file `prime --all` left out (a newline in a file name cannot forge
    another line)."""
    return one_line(f"UNUSABLE {left.message}")


def unusable_json(left: Unusable) -> dict[str, Any]:
    """The object of a file `prime --all` left out."""
    return {
        "name": left.name,
        "cert": shown(left.path),
        "must_staple": left.must_staple,
        "state": "unusable",
        "ok": False,
        "effective_expiry": None,
        "reason": left.reason.code,
        "message": left.message,
    }


def interrupted_line(
    results: Sequence[Primed], unusable: Sequence[Unusable], given: int, signals: Sequence[int]
) -> str:
    """The one line of a prime that `signals` interrupted: how many of the `given` files were
    done (fetched and delivered, or said unusable) and how many not, and what that leaves."""
    done = sum(p.done for p in results) + len(unusable)
    head = f"mustaple: prime interrupted ({signal.Signals(signals[0]).name}"
    count = f"{done} of {given} certificates done, {max(given - done, 0)} not done"
    if len(signals) == 1:
        return (
            f"{head}): {count}; what was fetched is stored and delivered; prime again for the rest"
        )
    return (
        f"{head}, then {signal.Signals(signals[1]).name}): {count}; what was fetched is "
        "stored, but its delivery was cut short: `mustaple status` shows each server that "
        "did not take its staple; prime again"
    )


def prime_exit_code(results: list[Primed], unusable: Sequence[Unusable] = ()) -> ExitCode:
    """3 if any is revoked; 2 if a file was left out, unusable; 1 if a must-staple
    certificate has no delivered staple; else 0."""
    if any(p.state.revoked is not None for p in results):
        return ExitCode.REVOKED
    if unusable:
        return ExitCode.USAGE
    if any(p.must_staple and not delivered(p) for p in results):
        return ExitCode.NO_STAPLE
    return ExitCode.GOOD


def status_rows(config: Config, now: datetime) -> list[dict[str, Any]]:
    """One row per certificate (a leaf in two files is one row, listing both), from the
    state the keeper and `prime` share, opened read only (a writer holding its lock never
    makes it wait; a damaged database is one InputError, left where it is); configured files
    not seen yet too."""
    db = config.state_dir / "state.db"
    stored = _open_state(db)
    try:
        if stored is not None and stored.outdated():  # an older mustaple's: upgraded first
            stored.close()  # (its rows lack columns this one reads)
            stored = SqliteStore(db)
        schedule = config.policy.schedule
        with stored.snapshot() if stored else contextlib.nullcontext():  # one state, not two
            known = stored.statuses() if stored else {}
            rows = [_row(key, status, stored, now, schedule) for key, status in known.items()]
    except sqlite3.Error as exc:
        fix = (
            ": it is damaged; the first write of `mustaple run` or `prime` that meets the "
            "damage moves it aside and starts afresh (or move it aside yourself); the staples "
            "are fetched again"
            if damaged(exc)
            else ""
        )
        raise InputError(f"{db}: cannot read the state database ({exc}){fix}") from None
    finally:
        if stored:
            stored.close()
    rows += _not_seen(config, {path for row in rows for path in row["paths"]})
    return sorted(rows, key=lambda row: (row["name"], row["paths"]))


def _not_seen(config: Config, seen: set[str]) -> list[dict[str, Any]]:
    """A row for each configured file not in `seen` (no process has handled it yet). They
    are looked at in a daemon thread, waited for while it moves on from file to file: a
    file system that does not answer (an NFS server gone away) would hold `status` for as
    long, so once the look stays at one file for `policy.watch_timeout`, one warning names
    that file and the rows found so far are given."""
    rows: list[dict[str, Any]] = []
    at: list[object] = [None, ""]

    def look() -> None:
        for name in sorted(configured_names(config, at=at)):
            at[1] = name
            if shown(Path(name)) not in seen:
                rows.append(_pending(Path(name)))

    looking = threading.Thread(target=look, name="mustaple-status", daemon=True)
    looking.start()
    patience, place = config.policy.watch_timeout, list[object]()
    while looking.is_alive() and at != place:  # it moves on: waited for
        place = list(at)
        looking.join(patience.total_seconds())
    if looking.is_alive():
        log.warning(
            "certificate files: the look at %s has not answered in %s (a file system that "
            "does not answer, such as an NFS server gone away?); the files no process has "
            "handled yet are listed only as far as it got",
            at[1],
            human_duration(patience.total_seconds()),
        )
    return list(rows)


def _open_state(db: Path) -> SqliteStore | None:
    """The state at `db` opened read only; None when there is none yet, InputError when its
    path cannot be looked up (a name longer than the file system takes, a loop of links)."""
    try:
        db.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise InputError(f"{db}: cannot read the state database ({exc.strerror})") from None
    return SqliteStore.reader(db)


def _row(
    key: str, status: CertStatus, store: SqliteStore | None, now: datetime, policy: SchedulePolicy
) -> dict[str, Any]:
    staple = store.load(key) if store and not key.startswith(FILE_KEY) else None
    held = staple if staple is not None and staple.good and staple.effective_expiry > now else None
    state = _answered(status.state, staple)
    expired = staple is not None and staple.good and held is None
    if expired and state in (Phase.GOOD.value, Phase.FAILING.value):
        state = Phase.EXPIRED.value  # the keeper judges time at its passes; none may run
    revoked = state == Phase.REVOKED.value
    facts = Facts(state, held, revoked, status.failures, status.last_message)
    level, why = judge(facts, status.must_staple, status.sinks, now, policy)
    return {
        "name": status.name,
        "cert": status.cert_path,
        "paths": list(status.paths or (status.cert_path,)),
        "must_staple": status.must_staple,
        "state": state,
        "health": level.word,
        "health_reason": why,
        **validity_json(held, now),
        "next_refresh": iso(status.next_due),
        "schedule_note": hurried_note(held, held.fetched_at, policy) if held else None,
        "last_attempt": iso(status.last_attempt),
        "failures": status.failures,
        "last_error": status.last_reason,
        "last_message": status.last_message,
        "sinks": [sink_json(s) for s in status.sinks],
    }


_ANSWER_STATES = {p.value for p in Phase if p is not Phase.UNUSABLE}


def _answered(state: str, staple: StoredStaple | None) -> str:
    """The row's `state` as the stored answer says it: a process stores the CA's answer
    before it delivers it and writes the row after the delivery, so a row may not say yet
    that the answer is revoked, or good again. An unusable certificate stays so."""
    if staple is None or state not in _ANSWER_STATES:
        return state
    if not staple.good:
        return Phase.REVOKED.value
    return Phase.GOOD.value if state == Phase.REVOKED.value else state


def _pending(path: Path) -> dict[str, Any]:
    """A configured file no process has handled yet, named by its own certificate."""
    try:
        leaf = parse_certificates(read_input(path, "certificate"), source=str(path))[0]
        name, must = display_name(leaf), is_must_staple(leaf)
    except InputError:
        name, must = shown(path.parent.name or path.name), None
    return {
        "name": name,
        "cert": shown(path),
        "paths": [shown(path)],
        "must_staple": must,
        "state": "not yet seen by the keeper",
        "health": Severity.CRITICAL.word if must is not False else Severity.WARNING.word,
        "health_reason": "no process has handled this file yet: run mustaple prime or run",
        "this_update": None,
        "effective_expiry": None,
        "seconds_left": None,
        "next_refresh": None,
        "schedule_note": None,
        "last_attempt": None,
        "failures": 0,
        "last_error": None,
        "last_message": None,
        "sinks": [],
    }


_COLUMNS = (
    "certificate",
    "must-staple",
    "status",
    "thisUpdate",
    "effective expiry",
    "next refresh",
    "last attempt",
    "last error",
)
_TIMES = ("this_update", "effective_expiry", "next_refresh", "last_attempt")


def print_status_table(rows: list[dict[str, Any]]) -> None:
    """The table for people; wide enough to read when piped too. Every value is shown as
    text: a name or an error with brackets (`[emerg]`, `[/x]`) is no markup."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="mustaple status", title_justify="left")
    for column in _COLUMNS:
        table.add_column(column, no_wrap=column not in ("certificate", "last error"))
    for row in rows:
        style = Severity[row["health"].upper()].colour
        must = {True: "yes", False: "no", None: "?"}[row["must_staple"]]
        errors = [f"{row['last_error']}: {row['last_message']}"] if row["last_error"] else []
        errors += [f"sink {s['sink']}: {s['error']}" for s in row["sinks"] if s["error"]]
        errors += [f"note: {row['schedule_note']}"] if row["schedule_note"] else []
        error = "; ".join(errors)
        times = (short_time(row[key]) for key in _TIMES)
        state = f"[{style}]{escape(row['state'])}[/]"
        table.add_row(escape(row["name"]), must, state, *times, escape(error))
    _console().print(table)


def fleet_view(config: Config, now: datetime) -> dict[str, Any]:
    """The fleet's view from Redis: its members; per certificate who fetched what, when,
    who holds the lease now and when the fleet retries; per name, which leaf each member
    (that has not left) manages, and which of them are older than another member's.
    InputError if Redis cannot answer."""
    if config.fleet is None:
        raise ConfigError(f"{config.path}: no [fleet] table: this member is not in a fleet")
    import redis

    from mustaple.adapters.redisstore import RedisStore

    shared = RedisStore(config.fleet.url, prefix=config.fleet.prefix)
    try:
        silent = timedelta(seconds=STALE_BEATS * config.fleet.beat_interval)
        members = [_member_json(m, now, silent) for m in shared.members()]
        leaves = shared.leaves([m["member"] for m in members if m["state"] != "left"])
        shared_keys = shared.keys()
        records = [shared.record(key) for key in shared_keys]
        history = {r.key: shared.history_by_member(r.key, limit=1) for r in records}
    except redis.RedisError as exc:
        raise InputError(_unreachable(config.fleet, exc)) from None
    finally:
        shared.close()
    certificates = [_record_json(r, history[r.key], now) for r in records]
    certificates.sort(key=lambda row: str(row["name"]))
    names = [_name_json(group, now) for group in by_name(leaves, now)]
    return {"members": members, "certificates": certificates, "names": names}


def _unreachable(fleet: FleetConfig, exc: redis.RedisError) -> str:
    import redis

    from mustaple.adapters.redisstore import shown_url, wrong_type

    where = shown_url(fleet.url)
    problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if wrong_type(exc):
        said = (
            f"Redis at {where} refused a read ({problem}: a key under the prefix holds "
            "something mustaple did not write)"
        )
    elif isinstance(exc, redis.ResponseError):  # no permission, ...
        said = f"Redis at {where} refused a read ({problem})"
    else:
        said = f"cannot reach Redis at {where} ({problem})"
    return f"fleet: {said}; `mustaple status` without --fleet shows this member's own view"


def _member_json(member: Member, now: datetime, silent: timedelta) -> dict[str, Any]:
    """A member's heartbeat, and its state: "left" (it said so when it stopped), "stale" (no
    heartbeat for `silent`: dead, paused or cut off from Redis) or "alive"."""
    if member.info.get("left"):
        state = "left"
    else:
        state = "stale" if now - member.seen > silent else "alive"
    return {
        "member": member.name,
        "last_seen": iso(member.seen),
        "seconds_since_seen": round((now - member.seen).total_seconds()),
        **member.info,
        "state": state,
    }


def _record_json(record: FleetRecord, last: list[Any], now: datetime) -> dict[str, Any]:
    staple, retry = record.staple, record.retry
    attempt, by = last[0] if last else (None, None)
    return {
        "key": record.key,
        "name": staple.name if staple else record.key[:12],
        "fetched_by": record.fetched_by,
        "fetched_at": iso(staple.fetched_at) if staple else None,
        **validity_json(staple, now),
        "lease_holder": record.lease_holder,
        "retry_at": iso(retry.at) if retry else None,
        "retry_reason": retry.reason if retry else None,
        "last_attempt_by": by,
        "last_attempt": iso(attempt.at) if attempt else None,
        "last_attempt_reason": attempt.reason if attempt else None,
    }


def _name_json(group: NameLeaves, now: datetime) -> dict[str, Any]:
    """The leaves the members manage for one name; `health_reason` names the older ones."""
    older = [_older_line(served, now) for served in group.leaves if served.renewed_on]
    return {
        "name": group.name,
        "health": group.level.word,
        "health_reason": "; ".join(older) or None,
        "leaves": [_served_json(served, now) for served in group.leaves],
    }


def _served_json(served: ServedLeaf, now: datetime) -> dict[str, Any]:
    leaf = served.facts
    return {
        "key": leaf.key,
        "serial": leaf.serial,
        "not_before": iso(leaf.not_before),
        "not_after": iso(leaf.not_after),
        "seconds_left": seconds_until(leaf.not_after, now),
        "members": list(served.members),
        "older": bool(served.renewed_on),
        "renewed_on": list(served.renewed_on),
        "health": served.level.word,
    }


def _older_line(served: ServedLeaf, now: datetime) -> str:
    """Which members manage an older leaf, until when, and where it was renewed."""
    leaf = served.facts
    expiry = _expiry(seconds_until(leaf.not_after, now))
    return one_line(
        f"older leaf on {', '.join(served.members)}: serial {leaf.serial}, notAfter "
        f"{human_time(leaf.not_after)} ({expiry}); renewed on {', '.join(served.renewed_on)}"
    )


def _expiry(left: int) -> str:
    """When a leaf with `left` seconds left expires, in words."""
    return (
        f"expired {human_duration(-left)} ago"
        if left <= 0
        else f"expires in {human_duration(left)}"
    )


def print_fleet_tables(view: dict[str, Any]) -> None:
    """The members, the certificates, then the names whose members manage different leaves,
    for people (every value shown as text: other members write them)."""
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    members = Table(title="mustaple fleet: members", title_justify="left")
    for column in ("member", "last seen", "host", "pid", "certificates", "good", "failing"):
        members.add_column(column, no_wrap=True)
    for m in view["members"]:
        ago = f"{human_duration(m['seconds_since_seen'])} ago"
        seen = ago if m["state"] == "alive" else f"{m['state']}, {ago}"
        cells = (m.get(k, "-") for k in ("host", "pid", "certificates", "good", "failing"))
        members.add_row(escape(str(m["member"])), seen, *(escape(str(c)) for c in cells))
    console.print(members)
    certificates = Table(title="mustaple fleet: certificates", title_justify="left")
    for column in ("certificate", "fetched by", "fetched at", "effective expiry", "lease", "retry"):
        certificates.add_column(column, no_wrap=column != "retry")
    for c in view["certificates"]:
        retry = f"{short_time(c['retry_at'])} ({c['retry_reason']})" if c["retry_at"] else ""
        certificates.add_row(
            escape(c["name"]),
            escape(c["fetched_by"] or "-"),
            short_time(c["fetched_at"]),
            short_time(c["effective_expiry"]),
            escape(c["lease_holder"] or ""),
            escape(retry),
        )
    console.print(certificates)
    _print_split_names(console, view["names"])


def _print_split_names(console: Console, names: list[dict[str, Any]]) -> None:
    """The names whose members manage different leaves, one row per leaf; one line when the
    members agree on every name."""
    from rich.markup import escape
    from rich.table import Table

    split = [name for name in names if name["health"] != Severity.OK.word]
    if not split:
        console.print("mustaple fleet: leaves: no member manages an older leaf than another's")
        return
    table = Table(title="mustaple fleet: leaves members disagree on", title_justify="left")
    for column in ("certificate", "serial", "not after", "members", "leaf"):
        table.add_column(column, no_wrap=column not in ("members", "leaf"))
    for name in split:
        for leaf in name["leaves"]:
            style = Severity[leaf["health"].upper()].colour
            said = _leaf_word(leaf)
            table.add_row(
                escape(one_line(name["name"])),
                escape(one_line(leaf["serial"])),
                short_time(leaf["not_after"], year=True),
                escape(one_line(", ".join(leaf["members"]))),
                f"[{style}]{escape(one_line(said))}[/]",
            )
    console.print(table)


def _leaf_word(leaf: dict[str, Any]) -> str:
    """'current', or 'older, ...: renewed on web-1'."""
    if not leaf["older"]:
        return "current"
    return f"older, {_expiry(leaf['seconds_left'])}: renewed on {', '.join(leaf['renewed_on'])}"


def _console() -> Console:
    """Wide enough to read when piped too."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)
