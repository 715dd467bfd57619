"""How times, durations, staples and attempts look to people and in JSON: one way each.

Pure and free of I/O imports; the CLI, the web endpoints, the fleet view and the logs use these,
so a time or a key reads the same wherever it appears:

- `iso` is the time in JSON and in the CLI's one-line verdicts: `2026-11-28T04:00:00Z`.
- `human_time` is the time in sentences of the logs and life cycle: `2026-11-28 04:00:00Z`;
  `short_time` the same in a table or on the status page, where space is short: `28 Nov 04:00Z`.
- `human_duration` is a duration: `3d 4h`, `5h 12m`, `42s`.
- `staple_json`, `validity_json` and `attempt_json` are the JSON shapes of an accepted response,
  of a held staple's life, and of one HTTP exchange with a responder.
- `shown` is a file name as text every output can carry: a byte that is not UTF-8 (a legal
  name on Linux) becomes `\xff`, where it would break a database, a page or a metric;
  `one_line` writes control characters as escapes (`\n`, `\x1b`), where a newline would
  forge a line of a log or of a command's output.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mustaple.core.delivery import SinkHealth
    from mustaple.core.verify import Staple

__all__ = [
    "STAPLE_KEYS",
    "Dated",
    "attempt_json",
    "counted",
    "human_duration",
    "human_time",
    "iso",
    "one_line",
    "seconds_until",
    "short_time",
    "shown",
    "sink_json",
    "staple_json",
    "validity_json",
]


_ESCAPED = {code: repr(chr(code))[1:-1] for code in [*range(32), 127]}


def counted(count: int, word: str, plural: str = "") -> str:
    """`count` and `word`, in the plural unless there is one: '1 sink', '2 sinks', '0 certificate
    entries' (`plural` when adding an s is wrong)."""
    return f"{count} {word}" if count == 1 else f"{count} {plural or word + 's'}"


def one_line(text: str) -> str:
    """`text` with every control character written as an escape: `\n`, `\t`, `\x1b`."""
    return text.translate(_ESCAPED)


def shown(text: object) -> str:
    """`text` (a path, or a message naming one) as valid Unicode: the bytes Python keeps as
    lone surrogates (os.fsdecode of a name that is not UTF-8) written `\xff`."""
    value = str(text)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogateescape") if _escaped_only(value) else None
        if raw is not None:
            return raw.decode("utf-8", "backslashreplace")
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _escaped_only(value: str) -> bool:
    """Whether every lone surrogate in `value` is one `surrogateescape` made (U+DC80-DCFF)."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in value)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 UTC to the second, as JSON and the CLI's verdicts show times; None stays None."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def human_time(value: datetime | None) -> str:
    """A time in a sentence of a log line or a message; 'never' for None."""
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "never"


def short_time(text: str | None, *, year: bool = False) -> str:
    """An `iso` time for a table cell: '28 Nov 04:00Z' ('2026-11-28 04:00Z' with the year);
    '-' for None."""
    if not text:
        return "-"
    return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%MZ" if year else "%d %b %H:%MZ")


def human_duration(seconds: float) -> str:
    """A short duration such as '3d 4h', '5h 12m', '42s' (negative means ago)."""
    sign, left = ("-" if seconds < 0 else ""), int(abs(seconds))
    days, rest = divmod(left, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes}m"
    return f"{sign}{minutes}m {secs}s" if minutes else f"{sign}{secs}s"


def seconds_until(when: datetime, now: datetime) -> int:
    """Whole seconds from `now` to `when` (negative: past)."""
    return round((when - now).total_seconds())


STAPLE_KEYS = (  # staple_json's keys: null when there is no staple
    "produced_at",
    "this_update",
    "next_update",
    "effective_expiry",
    "seconds_left",
    "fraction_left",
    "signer",
    "signer_name",
    "cert_id_hash",
    "revocation_time",
    "revocation_reason",
    "notes",
)


def staple_json(staple: Staple, now: datetime) -> dict[str, Any]:
    """The fields of an accepted response (`fetch --json`, `inspect --json`, `check --json`)."""
    reason = staple.revocation_reason
    return {
        "produced_at": iso(staple.produced_at),
        "this_update": iso(staple.this_update),
        "next_update": iso(staple.next_update),
        "effective_expiry": iso(staple.effective_expiry),
        "seconds_left": round(staple.seconds_left(now)),
        "fraction_left": round(staple.fraction_left(now), 4),
        "signer": staple.signer.value,
        "signer_name": staple.signer_name,
        "cert_id_hash": staple.hash_name,
        "revocation_time": iso(staple.revocation_time),
        "revocation_reason": reason.name if reason else None,
        "notes": [note.code for note in staple.notes],
    }


class Dated(Protocol):
    """A staple as held by this member or by the fleet: when it was made, when it ends."""

    @property
    def this_update(self) -> datetime: ...
    @property
    def effective_expiry(self) -> datetime: ...


def validity_json(held: Dated | None, now: datetime) -> dict[str, Any]:
    """A held staple's life as a certificate's state shows it (`status --json`, `/status`,
    `status --fleet --json`): all three null when no staple is held."""
    return {
        "this_update": iso(held.this_update) if held else None,
        "effective_expiry": iso(held.effective_expiry) if held else None,
        "seconds_left": seconds_until(held.effective_expiry, now) if held else None,
    }


def sink_json(sink: SinkHealth) -> dict[str, Any]:
    """How one sink took one certificate's staple, as `/status` and `status --json` show it."""
    return {
        "sink": sink.sink,
        "ok": sink.ok,
        "last_delivery": iso(sink.last_delivery),
        "error": sink.error,
        "failures": sink.failures,
        "failing_since": iso(sink.since),
        "note": sink.note,
        "reload_owed": sink.reload_owed,
        "trap": {"path": sink.trap.path, "serial": f"{sink.trap.serial:x}"} if sink.trap else None,
    }


def attempt_json(
    *,
    at: datetime,
    url: str,
    method: str,
    http_status: int | None,
    latency: float,
    reason: str | None,
    message: str | None,
) -> dict[str, Any]:
    """One HTTP exchange with a responder, as a certificate's state shows it (`/status`)."""
    return {
        "at": iso(at),
        "url": url,
        "method": method,
        "http_status": http_status,
        "latency": round(latency, 3),
        "reason": reason,
        "message": message,
    }
