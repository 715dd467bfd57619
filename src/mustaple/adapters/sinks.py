"""The sinks: make TLS servers see staples. `build_sink(name, table)` makes one from its config.

- `file`: writes the DER response atomically to a path made from a template, then runs a
  reload command once per batch if some file changed (nginx `ssl_stapling_file`, lighttpd
  `ssl.stapling-file`, Exim `tls_ocsp_file`).
- `haproxy`: writes `<crt>.ocsp` (and `<crt>.issuer` when the bundle lacks the issuer) for
  HAProxy's next start, and pushes the response to the running HAProxy over its runtime API
  (`set ssl ocsp-response`), so no reload is needed.
- `command`: runs a shell command for each delivery, with the event in its environment.

Every sink keeps the `mustaple.core.delivery` rules: a failure of the outside world (a directory
that cannot be written, a reload that fails, a running HAProxy that does not answer at
`socket`) becomes `Delivered.error`, one line; nothing here raises for it. A server that is
not running is no failure: what it reads at its start is in place (`Delivered.note`).
Commands and socket calls have timeouts. What each server does with the files, and its
quirks, is in docs/integrations/.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
import re
import stat
import string
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography.x509 import ocsp

from mustaple.adapters.config import WATCH_TIMEOUT, TableReader
from mustaple.adapters.files import (
    MAX_INPUT,
    clean_temporaries,
    make_directories,
    os_words,
    read_prefix,
    write_atomic,
    write_atomic_many,
)
from mustaple.adapters.patience import FilesHang, NoThread, Patient, thread_problem
from mustaple.adapters.shell import Ran, run, run_command
from mustaple.adapters.unchanged import Unchanged
from mustaple.core.delivery import Action, Delivered, Delivery, Sink, Trap, staple_serial
from mustaple.core.der import RESPONSE_HEAD, looks_like_ocsp_response
from mustaple.core.render import human_time
from mustaple.core.urls import url_problem

__all__ = [
    "CommandSink",
    "FileSink",
    "HAProxySink",
    "SinkConfigError",
    "SocketAddress",
    "StapleFiles",
    "ask_haproxy",
    "build_sink",
    "build_sinks",
]

DEFAULT_RELOAD_TIMEOUT = timedelta(seconds=60)
DEFAULT_SOCKET_TIMEOUT = timedelta(seconds=10)
DEFAULT_COMMAND_TIMEOUT = timedelta(seconds=60)
# HAProxy stops stapling a response this long before its nextUpdate (2.6 even takes one with
# less left over the socket, and then staples nothing).
HAPROXY_MARGIN = timedelta(seconds=300)
HAPROXY_UPDATED = "OCSP Response updated!"
MAX_ANSWER = 65536  # bytes of a runtime API answer read at most
_UNREACHABLE = "cannot reach HAProxy's runtime API"
_NOT_RUNNING = "HAProxy is not running"
_TEMPLATE_FIELDS = ("name", "stem", "dir")
_FIELDS_TEXT = "{name}, {stem} or {dir}"
_TEMPLATE_CLASH = "the `path` of the sink gives both the same file; add {stem} or {dir} to it"
_OCSP_DIR_CLASH = (
    "`ocsp_dir` gives certificate files of the same name one .ocsp file there; give them "
    "names of their own, or leave ocsp_dir out"
)
MAX_SINK_DURATION = timedelta(days=1)  # the longest timeout or reload_timeout
_UNUSABLE = "unusable"  # a delivery's status (`lifecycle.Phase`): no staple can come
_V = TypeVar("_V")  # what `_each` finds for each delivery
log = logging.getLogger("mustaple")


class SinkConfigError(ValueError):
    """A sink's config table cannot be used.

    The message is one line, "sinks.NAME.KEY: what is wrong and what to do"; show it as is.
    """


# --- Config ---------------------------------------------------------------------------------------


def _reader(name: str, table: Mapping[str, object], kind: str, keys: Sequence[str]) -> TableReader:
    """`[sinks.NAME]` read key by key, with errors that name the key; no key but `keys`."""
    reader = TableReader(None, f"sinks.{name}", dict(table), SinkConfigError)
    reader.only("type", *keys, expected=f"a {kind} sink takes {', '.join(keys)}")
    return reader


def build_sinks(
    tables: Mapping[str, Mapping[str, object]],
    patience: timedelta = WATCH_TIMEOUT,
    rescan: timedelta | None = None,
) -> dict[str, Sink]:
    """Every sink of a configuration (`[sinks.*]`); those that write staple files share one
    `StapleFiles`, so that no two certificates get one file even through two sinks, wait
    `patience` for a file that hangs (`policy.watch_timeout`, see `Patient`) and, given a
    `rescan`, follow file events in their looks at their files (`follow_events`)."""
    files = StapleFiles()
    sinks = {name: build_sink(name, table, files, patience) for name, table in tables.items()}
    for sink in sinks.values():
        if rescan is not None and isinstance(sink, (FileSink, HAProxySink)):
            sink.follow_events(rescan)
    return sinks


def build_sink(
    name: str,
    table: Mapping[str, object],
    files: StapleFiles | None = None,
    patience: timedelta = WATCH_TIMEOUT,
) -> Sink:
    """The sink that `[sinks.NAME]` describes, or SinkConfigError naming the bad key; `files`
    is shared with the other sinks of its configuration (a new one without it)."""
    builders: dict[str, Callable[[str, Mapping[str, object], StapleFiles, timedelta], Sink]] = {
        "file": _file_sink,
        "haproxy": _haproxy_sink,
        "command": _command_sink,
    }
    kind = table.get("type")
    if not isinstance(kind, str) or kind not in builders:
        choices = ", ".join(f'"{k}"' for k in builders)
        problem = "missing" if kind is None else f"{kind!r} is not a sink type"
        raise SinkConfigError(f"sinks.{name}.type: {problem}; use one of {choices}")
    return builders[kind](name, table, files or StapleFiles(), patience)


def _file_sink(
    name: str, table: Mapping[str, object], files: StapleFiles, patience: timedelta
) -> FileSink:
    keys = ("path", "reload", "reload_timeout", "remove", "revoked", "running")
    reader = _reader(name, table, "file", keys)
    hint = 'give the staple file, e.g. "/var/lib/mustaple/staples/{name}.der"'
    path = reader.required("path", hint)
    _check_template(reader, path)
    remove = reader.text("remove") or "delete"
    if remove not in ("delete", "keep"):
        raise reader.error("remove", f'must be "delete" or "keep", not {remove!r}')
    revoked = reader.text("revoked") or "staple"
    if revoked not in ("staple", "remove"):
        raise reader.error("revoked", f'must be "staple" or "remove", not {revoked!r}')
    if revoked == "remove" and remove == "keep":
        raise reader.error(
            "revoked", 'cannot be "remove" with remove = "keep": the good staple would stay'
        )
    return FileSink(
        name,
        path=path,
        reload=reader.text("reload"),
        reload_timeout=reader.duration("reload_timeout", DEFAULT_RELOAD_TIMEOUT, MAX_SINK_DURATION),
        keep_on_remove=remove == "keep",
        remove_revoked=revoked == "remove",
        running=reader.text("running"),
        files=files,
        patience=patience,
    )


def _check_template(reader: TableReader, path: str) -> None:
    """Only plain {name}, {stem} and {dir} may appear in braces: no conversion ("!r") nor
    format spec (":>12"), which would make odd file names (or fail when filled in)."""
    try:
        parsed = list(string.Formatter().parse(path))
    except ValueError as exc:
        raise reader.error("path", f"{exc}; use braces only around {_FIELDS_TEXT}") from None
    for _, field, spec, conversion in parsed:
        if field is not None and field not in _TEMPLATE_FIELDS:
            raise reader.error("path", f"unknown placeholder {{{field}}}; use {_FIELDS_TEXT}")
        if spec or conversion:
            extra = f"!{conversion}" if conversion else f":{spec}"
            raise reader.error(
                "path",
                f"{{{field}{extra}}}: placeholders take no conversion (!) or format (:); "
                f"write {{{field}}} plainly",
            )


def _haproxy_sink(
    name: str, table: Mapping[str, object], files: StapleFiles, patience: timedelta
) -> HAProxySink:
    keys = ("socket", "master", "ocsp_dir", "timeout", "reload", "reload_timeout", "running")
    reader = _reader(name, table, "haproxy", keys)
    socket = reader.required(
        "socket", 'give HAProxy\'s admin socket, e.g. "/run/haproxy/admin.sock"'
    )
    try:
        address = SocketAddress.parse(socket)
    except ValueError as exc:
        raise reader.error("socket", str(exc)) from None
    ocsp_dir = reader.text("ocsp_dir")
    return HAProxySink(
        name,
        socket=address,
        master=reader.flag("master"),
        ocsp_dir=Path(ocsp_dir) if ocsp_dir else None,
        timeout=reader.duration("timeout", DEFAULT_SOCKET_TIMEOUT, MAX_SINK_DURATION),
        reload=reader.text("reload"),
        reload_timeout=reader.duration("reload_timeout", DEFAULT_RELOAD_TIMEOUT, MAX_SINK_DURATION),
        running=reader.text("running"),
        files=files,
        patience=patience,
    )


def _command_sink(
    name: str, table: Mapping[str, object], _: StapleFiles, __: timedelta
) -> CommandSink:
    reader = _reader(name, table, "command", ("command", "timeout"))
    command = reader.required("command", "give a shell command to run for each delivery")
    return CommandSink(
        name,
        command=command,
        timeout=reader.duration("timeout", DEFAULT_COMMAND_TIMEOUT, MAX_SINK_DURATION),
    )


# --- Shared: outcomes, files, commands ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What happened to one delivery before any reload."""

    changed: bool
    error: str | None = None
    needs_reload: bool = False  # the server sees this only after a reload
    note: str | None = None  # in place for the next start; no running server took it
    trap: Trap | None = None  # the file kept holds another certificate's staple
    owed: bool = False  # the running server did not take it (HAProxy's push failed)


class _Reloader:
    """Runs a sink's reload command once per batch, and again next time if it failed.

    With a `running` check (a command that exits 0 while the server runs), a server that is
    not running is not reloaded: what was written is in place for its start, which is not an
    error (`mustaple prime` before the servers start). A check that cannot run at all (its
    program not found: a typo) is an error, and the server is reloaded as without it."""

    def __init__(self, command: str | None, timeout: timedelta, running: str | None = None):
        self.command = command
        self.timeout = timeout
        self.running = running
        self.owed = False  # the last reload failed: the server may not see what was written

    async def finish(
        self,
        sink: str,
        batch: Sequence[Delivery],
        outcomes: Sequence[_Outcome],
        held_back: str | None = None,
        *,
        look: bool = False,
    ) -> list[Delivered]:
        """Reload if some delivery needs it (or a failed reload is owed) and nothing holds
        the reload back (`held_back`: why, a sprung `Trap`; owed then); report each one.
        With `look`, a batch that needs no reload still asks the `running` check, so that
        a file left as it was is noted as not taken by a server that is not running."""
        waiting = [o.needs_reload or (self.owed and o.error is None) for o in outcomes]
        problem = note = None
        if self.command is not None and any(waiting):
            problem, note = await self._reload(held_back)
        elif look and self.command is not None and any(o.error is None for o in outcomes):
            note = await self._stopped()
        done = []
        for delivery, outcome, waits in zip(batch, outcomes, waiting, strict=True):
            error, noted = outcome.error, outcome.note
            if self.command is not None and waits:
                error = _joined(outcome.error, problem) if problem else None
            if error is None:
                noted = noted or note
            owed = outcome.owed or (self.owed and waits and self.command is not None)
            done.append(
                Delivered(delivery.key, sink, outcome.changed, error, noted, owed, outcome.trap)
            )
        return done

    async def _reload(self, held_back: str | None) -> tuple[str | None, str | None]:
        """Reload the server unless it is not running (a note) or `held_back` (owed): the
        problem, if any, and the note."""
        assert self.command is not None
        checked = await run(self.running, self.timeout) if self.running else None
        if checked is not None and checked.problem and not checked.unrunnable:
            self.owed = False  # the server reads every file at its start
            return None, _not_running(checked.problem)
        if held_back is not None:
            self.owed = True
            return f"reload held back: {held_back}", None
        failed = await run_command(self.command, self.timeout)
        problem = f"reload failed: {failed}" if failed else None
        if checked is not None and checked.unrunnable:
            fix = f"the `running` check cannot run ({checked.problem}); fix it"
            problem = _joined(problem, fix)
        self.owed = problem is not None
        return problem, None

    async def _stopped(self) -> str | None:
        """The note when the `running` check says the server is not running, else None (a
        check that cannot run says nothing here: no reload depends on it)."""
        if self.running is None:
            return None
        checked = await run(self.running, self.timeout)
        if checked.problem and not checked.unrunnable:
            return _not_running(checked.problem)
        return None


def _not_running(problem: str) -> str:
    return f"the server is not running ({problem}): it reads this at its start"


def _joined(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


class StapleFiles:
    """Which certificate file each staple file holds the staple of, across the sinks of one
    configuration, so that two certificates are never given one file: a path template or an
    `ocsp_dir` that gives both the same, or two sinks whose paths meet."""

    def __init__(self) -> None:
        self._owners: dict[Path, tuple[str, str, Path]] = {}  # file -> (sink, key, cert file)
        self._placed: dict[tuple[str, Path], Path] = {}  # (sink, cert file) -> its last file
        self._lock = threading.Lock()  # file sinks deliver in threads, side by side

    def clash(self, sink: str, delivery: Delivery, path: Path, fix: str) -> str | None:
        """Why `delivery` must not touch `path` through `sink`: another certificate's file,
        still there, has its staple in it (`fix` says what to change when that certificate
        is the same sink's); else None, and `path` is this certificate file's from now on."""
        with self._lock:
            owner = self._owners.get(path)
            if owner is not None and owner[1] != delivery.key and owner[2] != delivery.cert_path:
                other_sink, _, other = owner
                if self._placed.get((other_sink, other)) == path and other.exists():
                    if other_sink != sink:
                        fix = (
                            f"sink {other_sink} writes it too; give the two sinks paths of "
                            "their own"
                        )
                    return f"{path} holds the staple of another certificate, {other}: {fix}"
            self._owners[path] = (sink, delivery.key, delivery.cert_path)
            self._placed[(sink, delivery.cert_path)] = path
            return None


class _Cleaner:
    """Removes, once per directory and process, the temporary files that an interrupted
    write (kill -9, power loss) left there: `.NAME.XXXXXXXX` where NAME is a file of ours."""

    def __init__(self, names: re.Pattern[str]) -> None:
        self.names = names
        self.done: set[Path] = set()

    def once(self, directory: Path) -> None:
        if directory in self.done:
            return
        self.done.add(directory)
        for path in clean_temporaries(directory, self.names):
            log.warning("%s: removed, left by an interrupted write", path)


def _file_names(template: str) -> re.Pattern[str]:
    """The file names a path template can make, e.g. '{name}.der' gives '.+\\.der'."""
    parts = string.Formatter().parse(Path(template).name)
    return re.compile(
        "".join(re.escape(text) + (".+" if f is not None else "") for text, f, _, _ in parts)
    )


class NotAStapleError(OSError):
    """A file a sink would replace or remove holds something other than an OCSP response:
    the sink's path names a certificate, a key, the state database... It is left alone."""

    def __init__(self) -> None:
        super().__init__(
            0,
            "holds something other than an OCSP response (a certificate, a key, the state "
            "database?): left as it is; give the sink a path of its own",
        )


def _staple_file(held: bytes | None) -> None:
    """NotAStapleError unless `held`, a file's first bytes (or None: no file), is nothing, or
    the start of an OCSP response."""
    if held and not looks_like_ocsp_response(held):
        raise NotAStapleError()


def _replace(path: Path, data: bytes, *, staple: bool = True) -> bool:
    """Write `data` to `path` atomically unless it already holds it; whether it changed.
    A `staple` file replaces only a staple (NotAStapleError)."""
    held = read_prefix(path, len(data) + 1)
    if held == data:
        return False
    if staple:
        _staple_file(held)
    make_directories(path.parent)
    write_atomic(path, data)
    return True


def _delete(path: Path) -> bool:
    """Remove `path`, a staple file (NotAStapleError otherwise); whether it existed."""
    try:
        _staple_file(read_prefix(path, RESPONSE_HEAD))
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _os_problem(path: Path, exc: OSError) -> str:
    return f"{path}: {os_words(exc, path.parent)}"


def _astray(path: Path, wanted: bytes | None) -> str | None:
    """Why `path` no longer holds `wanted` (None: no staple), what a sink left there; None
    when it does (`Watches`)."""
    try:
        held = read_prefix(path, RESPONSE_HEAD if wanted is None else len(wanted) + 1)
    except OSError as exc:
        return _os_problem(path, exc)
    if wanted is None:
        return f"{path} holds a staple again" if held and looks_like_ocsp_response(held) else None
    if held == wanted:
        return None
    return f"{path} is gone" if held is None else f"{path} holds other bytes than were written"


_SETTLED_NS = 2_000_000_000  # a file modified this long ago looks different if modified again


class _Looks:
    """The sink's files as they looked when last found as it left them (`_astray`: None),
    by a hash of device, inode, size and modification time, and of what the file was to hold
    (bytes keep their hash: one computation per staple): the keeper asks at every pass,
    about every staple file (100k of them), and a file that still looks the same is not
    read again (a stat costs a fifth of a read). A file modified in the last `_SETTLED_NS`
    is read each time: a file system's clock moves in steps (a few milliseconds; FAT's two
    seconds), and a file written again within one step keeps its modification time."""

    def __init__(self, unchanged: Unchanged | None = None) -> None:
        self._seen: dict[str, int] = {}
        self._unchanged = unchanged  # file events: a file nothing touched is not stat-ed

    def begin(self) -> None:
        """At the start of a look at every file (`Unchanged.begin`)."""
        if self._unchanged is not None:
            self._unchanged.begin()

    def astray(self, path: Path | str, wanted: bytes | None) -> str | None:
        """`_astray`, read only when the file does not look as it did when last found so;
        not even stat-ed when file events say nothing touched it since (`Unchanged`)."""
        name = os.fspath(path)
        unchanged = self._unchanged
        if unchanged is not None and unchanged.unchanged(name, wanted):
            return None
        try:
            info = os.stat(name)
        except FileNotFoundError:
            self._not_as_left(name)
            return _astray(Path(path), wanted)
        except OSError as exc:
            return _os_problem(Path(path), exc)
        look = hash((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, wanted))
        if self._seen.get(name) == look:
            if unchanged is not None:
                unchanged.found(name, wanted)
            return None
        why = _astray(Path(path), wanted)
        if why is None and time.time_ns() - info.st_mtime_ns > _SETTLED_NS:
            self._seen[name] = look
            if unchanged is not None:
                unchanged.found(name, wanted)
        else:
            self._not_as_left(name)
        return why

    def _not_as_left(self, name: str) -> None:
        self._seen.pop(name, None)
        if self._unchanged is not None:
            self._unchanged.forget(name)


# --- file -----------------------------------------------------------------------------------------

PATHS_KEPT = 1 << 20  # staple file names a file sink keeps made (`FileSink._file_name`)


class FileSink:
    """Writes each staple to a file made from `path` and reloads the server once per batch.

    STAPLE writes the DER atomically (creating the directory); REVOKED writes the CA's revoked
    answer the same way (or, with `revoked = "remove"`, deletes the file: Exim's GnuTLS refuses
    TLS altogether with a revoked answer in `tls_ocsp_file`); REMOVE deletes the file (or,
    with `remove = "keep"`, leaves it: nginx cannot reload without its stapling file); the
    reload command runs only if some file changed (or a previous reload failed), and its
    failure is reported on each delivery it was meant to make visible.
    """

    def __init__(
        self,
        name: str,
        *,
        path: str,
        reload: str | None = None,
        reload_timeout: timedelta = DEFAULT_RELOAD_TIMEOUT,
        keep_on_remove: bool = False,
        remove_revoked: bool = False,
        running: str | None = None,
        files: StapleFiles | None = None,
        patience: timedelta = WATCH_TIMEOUT,
    ) -> None:
        self.name = name
        self.path = path
        self.keep_on_remove = keep_on_remove
        self.remove_revoked = remove_revoked
        self._reloader = _Reloader(reload, reload_timeout, running)
        self._cleaner = _Cleaner(_file_names(path))
        self._files = files or StapleFiles()
        self._traps: dict[Path, int] = {}  # kept file -> the other certificate's serial in it
        self._looks = _Looks()
        # (name, certificate file) -> its staple file's name: the look at 100k copies made
        # 100k paths from the template each time (the most of its CPU once file events spare
        # it the stat); dropped whole when it outgrows PATHS_KEPT
        self._names: dict[tuple[str, Path], str] = {}
        self._patient = Patient(patience, _named_by(self.path_for))  # its files may hang

    def owe_reload(self) -> None:
        """The next delivery reloads the server, even when no file changes (`Reloads`)."""
        self._reloader.owed = True

    def hold_back(self, trap: Trap) -> None:
        """No reload while `trap` is sprung (`HoldsBack`)."""
        self._traps[Path(trap.path)] = trap.serial

    def let_go(self, trap: Trap) -> None:
        """Reloads again, whatever `trap`'s file holds: its certificate is not kept any more."""
        if self._traps.get(Path(trap.path)) == trap.serial:
            del self._traps[Path(trap.path)]

    def path_for(self, delivery: Delivery) -> Path:
        """The staple file for `delivery`: the template filled in (a name that is no file
        name, such as ".." or "", becomes "_": it never climbs out of the directory)."""
        return Path(self._file_name(delivery))

    def _file_name(self, delivery: Delivery) -> str:
        """`path_for` as a string, made once per (name, certificate file)."""
        key = (delivery.name, delivery.cert_path)
        made = self._names.get(key)
        if made is None:
            if len(self._names) >= PATHS_KEPT:
                self._names.clear()
            made = self._names[key] = self._fill(*key)
        return made

    def _fill(self, name: str, cert_path: Path) -> str:
        name = name.replace("/", "_").replace("\0", "_")
        return os.fspath(
            Path(
                self.path.format(
                    name=name if name.strip(".") else name.replace(".", "_") or "_",
                    stem=cert_path.stem,
                    dir=cert_path.parent,
                )
            )
        )

    async def astray(self, batch: Sequence[Delivery]) -> list[str | None]:
        """Which staple files of deliveries made are no longer as this sink left them
        (none known while its files hang: the deliveries say so)."""
        return await _each(self._patient, batch, self._astray_one, self._looks.begin)

    def follow_events(self, rescan: timedelta) -> None:
        """Its look at its files skips those no file event touched since they were found
        as it left them (`Unchanged`), and looks at every one every `rescan`."""
        self._looks = _Looks(Unchanged(rescan.total_seconds()))

    def _astray_one(self, delivery: Delivery) -> str | None:
        if delivery.action is Action.REMOVE and self.keep_on_remove:
            return None  # left as it was (a `Trap` looks after it)
        return self._looks.astray(self._file_name(delivery), self._writes(delivery))

    async def deliver(self, batch: Sequence[Delivery]) -> list[Delivered]:
        """The batch applied in a thread (`_apply_all`), then the reload. While a file
        hangs (`Patient`), every delivery of the batch fails saying which, and the reload
        is owed: what the waiting thread writes in the end is read at the next one."""
        try:
            work = functools.partial(self._apply_and_look, batch)
            outcomes, held_back = await self._patient.run(work, self.path)
        except FilesHang as hang:
            self._reloader.owed = True
            outcomes, held_back = [_Outcome(False, str(hang)) for _ in batch], None
        return await self._reloader.finish(self.name, batch, outcomes, held_back, look=True)

    def _apply_and_look(
        self, batch: Sequence[Delivery], at: list[object]
    ) -> tuple[list[_Outcome], str | None]:
        return self._apply_all(batch, at), self._sprung(at)

    def _sprung(self, at: list[object]) -> str | None:
        """Why the server must not be reloaded: a trap still sprung (its file still holds
        that staple); or None. The others are forgotten. `at[0]`: the file looked at."""
        for path, serial in list(self._traps.items()):
            at[0] = path
            try:
                held = staple_serial(read_prefix(path, MAX_INPUT))
            except OSError as exc:  # cannot tell: still sprung, as far as we know
                return (
                    f"{_os_problem(path, exc)}, and it held the staple of a certificate since "
                    f"renewed (serial {serial:X}): it may hold it still, and a reload would "
                    "then serve the new certificate with it, which clients refuse; the reload "
                    f"comes when {path} can be read without it, or is removed"
                )
            if held == serial:
                return (
                    f"{path} holds the staple of a certificate since renewed (serial "
                    f"{serial:X}) and none is fetched for the new one yet: a reload would "
                    "serve the new certificate with it, which clients refuse; the reload "
                    f"comes when that staple is written, or {path} removed"
                )
            del self._traps[path]
        return None

    async def held(self, batch: Sequence[Delivery]) -> list[bytes | None]:
        """The bytes of each delivery's staple file (at most MAX_INPUT), or None where there
        is none or it cannot be read; read in a thread, all None while its files hang."""
        return await _each(self._patient, batch, self._held_one)

    def _held_one(self, delivery: Delivery) -> bytes | None:
        try:
            return read_prefix(self.path_for(delivery), MAX_INPUT)
        except OSError:
            return None

    def _apply_all(self, batch: Sequence[Delivery], at: list[object]) -> list[_Outcome]:
        """Each delivery, in order, with the same outcome as one at a time; the files to write
        are written together (`write_atomic_many`), before any removal and before a file
        would be written a second time. `at[0]`: the file worked on."""
        outcomes: list[_Outcome] = []
        pending: dict[Path, tuple[int, bytes]] = {}  # to write: place in the batch, bytes
        made: set[Path] = set()  # directories made (or found) in this batch
        for delivery in batch:
            path = self.path_for(delivery)
            at[0] = path
            clash = self._files.clash(self.name, delivery, path, _TEMPLATE_CLASH)
            if clash is not None:
                outcomes.append(_Outcome(False, clash))
                continue
            der = self._writes(delivery)
            if der is None or path in pending:
                _write_pending(pending, outcomes, self._failed, at)
            if der is None:
                outcomes.append(self._apply(delivery, path))
                continue
            outcome = self._unchanged(path, der, made)
            if outcome is None:
                pending[path] = (len(outcomes), der)
                outcome = _Outcome(True, needs_reload=True)
            outcomes.append(outcome)
        _write_pending(pending, outcomes, self._failed, at)
        return outcomes

    def _writes(self, delivery: Delivery) -> bytes | None:
        """The bytes `delivery` writes to its file, or None when it writes nothing."""
        if delivery.action is Action.REMOVE or (
            delivery.action is Action.REVOKED and self.remove_revoked
        ):
            return None
        return delivery.der

    def _apply(self, delivery: Delivery, path: Path) -> _Outcome:
        """A delivery that writes nothing: a removal, or one without a response."""
        revoked = delivery.action is Action.REVOKED
        try:
            self._cleaner.once(path.parent)
            if revoked and self.remove_revoked:
                changed = _delete(path)
            elif delivery.action is Action.REMOVE:
                if self.keep_on_remove:
                    return self._kept(delivery, path)
                changed = _delete(path)
            else:
                return _Outcome(False, "nothing to staple: the delivery carries no response")
        except OSError as exc:
            return self._failed(path, exc)
        return _Outcome(changed, needs_reload=changed)

    def _failed(self, path: Path, exc: OSError) -> _Outcome:
        """A delivery that `exc` stopped at `path`. A trap known there (found by this sink,
        or handed over from the status rows) stays: a file that cannot be read, or was not
        replaced, is no proof that it does not hold that staple any more, and the status rows
        must go on telling every other process not to reload."""
        problem = _os_problem(path, exc)
        serial = self._traps.get(path)
        if serial is None:
            return _Outcome(False, problem)
        problem = (
            f"{problem}; it held the staple of the certificate this one renewed (serial "
            f"{serial:X}), and may hold it still: sink {self.name} does not reload until "
            f"{path} can be read without it, or is removed"
        )
        return _Outcome(False, problem, trap=Trap(str(path), serial))

    def _kept(self, delivery: Delivery, path: Path) -> _Outcome:
        """A removal with `remove = "keep"`: the file stays. One that holds the staple of
        another certificate (the one at this path before a renewal) is a `Trap` (one that
        cannot be read keeps a trap known there: `_failed`)."""
        held = staple_serial(read_prefix(path, MAX_INPUT))
        if held is None or delivery.serial is None or held == delivery.serial:
            return _Outcome(False)
        self._traps[path] = held
        before = (
            f"{path} still holds the staple of the certificate this one renewed (serial {held:X})"
        )
        if delivery.status == _UNUSABLE:  # no OCSP URL, expired...: no staple will come
            problem = (
                f"{before}, and this one can have none (its status says why): a reload would "
                f"serve it with that staple, which clients refuse; take {path} out of the "
                f"server's configuration for this certificate and remove it: sink {self.name} "
                "does not reload until then"
            )
        else:
            problem = (
                f'{before}, and none is fetched for this one yet: kept (remove = "keep"), '
                "but a reload would serve this certificate with it, which clients refuse; "
                f"sink {self.name} does not reload until this certificate's staple is written"
            )
        return _Outcome(False, problem, trap=Trap(str(path), held))

    def _unchanged(self, path: Path, der: bytes, made: set[Path]) -> _Outcome | None:
        """The outcome when `path` needs no write (it holds `der`, or cannot be written);
        None when it is to be written (its directory then exists: made once per batch,
        recorded in `made`)."""
        try:
            directory = path.parent
            self._cleaner.once(directory)
            held = read_prefix(path, len(der) + 1)
            if held == der:
                return _Outcome(False)
            _staple_file(held)
            if directory not in made:
                make_directories(directory)
                made.add(directory)
        except OSError as exc:
            return self._failed(path, exc)
        return None


def _named_by(path_for: Callable[[Delivery], Path]) -> Callable[[object], str]:
    """What a sink's `Patient` says a file is: a delivery's file (`path_for`), or a path."""
    return lambda where: str(path_for(where) if isinstance(where, Delivery) else where)


async def _each(
    patient: Patient,
    batch: Sequence[Delivery],
    one: Callable[[Delivery], _V | None],
    first: Callable[[], None] = lambda: None,
) -> list[_V | None]:
    """`first()`, then `one(delivery)` for each delivery of `batch`, in a thread
    (`patient`); all None while the sink's files hang."""
    work = functools.partial(_each_of, batch, one, first)
    try:
        return await patient.run(work, batch[0] if batch else "")
    except FilesHang:
        return [None] * len(batch)


def _each_of(
    batch: Sequence[Delivery],
    one: Callable[[Delivery], _V | None],
    first: Callable[[], None],
    at: list[object],
) -> list[_V | None]:
    first()
    found = []
    for delivery in batch:
        at[0] = delivery
        found.append(one(delivery))
    return found


def _write_pending(
    pending: dict[Path, tuple[int, bytes]],
    outcomes: list[_Outcome],
    failed: Callable[[Path, OSError], _Outcome],
    at: list[object],
) -> None:
    """Write the pending files together; a file that could not be written says why
    (`failed`). `at[0]`: the file worked on."""
    if not pending:
        return
    files = [(path, der) for path, (_, der) in pending.items()]
    problems = write_atomic_many(files, at=at)
    for (path, (index, _)), problem in zip(pending.items(), problems, strict=True):
        if problem is not None:
            outcomes[index] = failed(path, problem)
    pending.clear()


# --- haproxy --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """Where HAProxy's runtime API listens: a unix socket path, or a TCP host and port."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> SocketAddress:
        """Read "/run/haproxy/admin.sock", "unix@/path", "127.0.0.1:9999" or "[::1]:9999"."""
        text = text.strip()
        for prefix in ("unix@", "ipv4@", "ipv6@"):
            text = text.removeprefix(prefix)
        if text.startswith("/"):
            return cls(path=text)
        host, _, port = text.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(
                f"{text!r} is neither a unix socket path (starting with /) nor HOST:PORT"
            )
        literal = f"[{host}]" if ":" in host else host  # HAProxy writes ipv6@::1:9999
        if url_problem(f"http://{literal}:{port}/") is not None:
            raise ValueError(f"{text!r}: the host is not a name or address to connect to")
        return cls(host=host, port=int(port))

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


def _not_a_socket(address: SocketAddress) -> str | None:
    """What a unix socket path is when it is no socket ("is a directory"), else None (a
    socket, or nothing there: HAProxy not running)."""
    if address.path is None:
        return None
    try:
        mode = os.stat(address.path).st_mode
    except OSError:
        return None
    if stat.S_ISSOCK(mode):
        return None
    return "is a directory" if stat.S_ISDIR(mode) else "is a file"


async def ask_haproxy(address: SocketAddress, command: str, timeout: timedelta) -> str:
    """Send one command to HAProxy's runtime API and return its answer.

    Raises OSError (or TimeoutError) when HAProxy cannot be reached or does not answer in time.
    """
    async with asyncio.timeout(timeout.total_seconds()):
        if address.path is not None:
            reader, writer = await asyncio.open_unix_connection(address.path)
        else:
            reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            answer = await _read_answer(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return answer.decode(errors="replace")


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    """Up to the empty line that ends every answer (the master CLI keeps the connection open),
    at most MAX_ANSWER bytes: an answer to `set ssl ocsp-response` is one line."""
    answer = b""
    while not answer.endswith(b"\n\n"):
        chunk = await reader.read(4096)
        if not chunk:
            break
        answer += chunk
        if len(answer) > MAX_ANSWER:
            raise ConnectionError(f"an answer of over {MAX_ANSWER} bytes, not HAProxy's")
    return answer


class _Liveness:
    """Whether HAProxy runs, by the sink's `running` command: asked only when the socket did
    not let a push in, at most once per batch."""

    def __init__(self, command: str | None, timeout: timedelta) -> None:
        self.command = command
        self.timeout = timeout
        self._ran: Ran | None = None

    async def check(self) -> Ran | None:
        """How the check ended; None without one."""
        if self.command is None:
            return None
        if self._ran is None:
            self._ran = await run(self.command, self.timeout)
        return self._ran


@dataclass(frozen=True, slots=True)
class _Shut:
    """The socket did not let a push in: nothing listens there (no socket file, or a
    refusal: a stopped HAProxy leaves its socket file), or it refused mustaple's user."""

    why: str  # e.g. "nothing listens at /run/haproxy/admin.sock: Connection refused"
    denied: bool = False


_UNKNOWN_CERT = "does not match any certificate"  # HAProxy loaded the certificate without .ocsp


class HAProxySink:
    """Keeps `<crt>.ocsp` (and `<crt>.issuer`) for HAProxy's next start and pushes each staple
    to the running HAProxy over its runtime API.

    A push the socket does not let in is HAProxy not running (a note) when the `running`
    check fails, or, without one, when nothing listens there; otherwise (HAProxy runs, the
    socket refuses mustaple's user, no answer, an error answer) it is an error, owed: the
    next delivery pushes again, and a start or a `prime` learns it from the status rows.

    HAProxy 2.6 has no runtime command to drop a staple: REMOVE empties `<crt>.ocsp` (stapling
    stays enabled for the certificate, with nothing to send, and later pushes still work) and
    runs `reload` if configured; without it, the error says until when HAProxy goes on
    serving the previous staple from memory.
    """

    def __init__(
        self,
        name: str,
        *,
        socket: SocketAddress,
        master: bool = False,
        ocsp_dir: Path | None = None,
        timeout: timedelta = DEFAULT_SOCKET_TIMEOUT,
        reload: str | None = None,
        reload_timeout: timedelta = DEFAULT_RELOAD_TIMEOUT,
        running: str | None = None,
        files: StapleFiles | None = None,
        patience: timedelta = WATCH_TIMEOUT,
    ) -> None:
        self.name = name
        self.socket = socket
        self.master = master  # the master CLI: send commands to the current worker with "@1"
        self.ocsp_dir = ocsp_dir
        self.timeout = timeout
        self.running = running  # a command that exits 0 while HAProxy runs
        self._reloader = _Reloader(reload, reload_timeout, running)
        self._cleaner = _Cleaner(re.compile(r".+\.(?:ocsp|issuer)"))
        self._files = files or StapleFiles()
        # .ocsp file emptied -> until when the running HAProxy staples what it held (None:
        # unknown), kept until that time, a reload, or a new staple pushed
        self._serving: dict[Path, datetime | None] = {}
        self._looks = _Looks()
        self._patient = Patient(patience, _named_by(self.path_for))  # files beside the certs

    def owe_reload(self) -> None:
        """An earlier process's push or reload failed (`Reloads`): the next delivery pushes
        as always, and runs `reload`, if any, so that HAProxy reads every file again."""
        self._reloader.owed = True

    def path_for(self, delivery: Delivery, suffix: str = ".ocsp") -> Path:
        """`<crt>.ocsp` beside the certificate HAProxy loads, or in `ocsp_dir`."""
        directory = self.ocsp_dir or delivery.cert_path.parent
        return directory / f"{delivery.cert_path.name}{suffix}"

    async def astray(self, batch: Sequence[Delivery]) -> list[str | None]:
        """Which `.ocsp` (and `.issuer`) files of staples pushed are no longer as this sink
        wrote them: a HAProxy started without them staples nothing for that certificate
        (none known while its files hang: the deliveries say so)."""
        return await _each(self._patient, batch, self._astray_one, self._looks.begin)

    def follow_events(self, rescan: timedelta) -> None:
        """As `FileSink.follow_events`."""
        self._looks = _Looks(Unchanged(rescan.total_seconds()))

    def _astray_one(self, delivery: Delivery) -> str | None:
        if delivery.action is Action.REMOVE or delivery.der is None:
            return None  # emptied: a HAProxy started since staples nothing, as wanted
        if not delivery.bundle_has_issuer:
            issuer = self._looks.astray(self.path_for(delivery, ".issuer"), delivery.issuer_pem)
            if issuer is not None:
                return issuer
        return self._looks.astray(self.path_for(delivery), delivery.der)

    async def deliver(self, batch: Sequence[Delivery]) -> list[Delivered]:
        liveness = _Liveness(self.running, self.timeout)
        outcomes = [await self._deliver_one(d, liveness) for d in batch]
        done = await self._reloader.finish(self.name, batch, outcomes)
        for delivery, delivered in zip(batch, done, strict=True):
            if delivery.action is Action.REMOVE and delivered.ok:  # reloaded, or none served
                self._serving.pop(self.path_for(delivery), None)
        return done

    async def _deliver_one(self, delivery: Delivery, liveness: _Liveness) -> _Outcome:
        path = self.path_for(delivery)
        clash = self._files.clash(self.name, delivery, path, _OCSP_DIR_CLASH)
        if clash is not None:  # the running HAProxy still takes it: it matches by CertID
            if delivery.der is None:
                return _Outcome(False, clash)
            return _also(await self._hand(delivery.der, path, liveness), clash)
        if delivery.action is Action.REMOVE:
            try:
                return await self._patient.run(functools.partial(self._remove, delivery), path)
            except FilesHang as hang:
                return _Outcome(False, str(hang))
        if delivery.der is None:
            return _Outcome(False, "nothing to staple: the delivery carries no response")
        try:
            write = functools.partial(self._write, delivery, delivery.der)
            changed = await self._patient.run(write, path)
        except OSError as exc:  # FilesHang too: the push goes on
            problem = f"{_os_problem(path, exc)}: HAProxy will not have it after a reload"
            return _also(await self._hand(delivery.der, path, liveness), problem)
        handed = await self._hand(delivery.der, path, liveness)
        if handed.error is None and handed.note is None:  # the running HAProxy took it
            self._serving.pop(path, None)
        return replace(handed, changed=changed)

    def _write(self, delivery: Delivery, data: bytes, at: list[object]) -> bool:
        """Write `.issuer` first when needed: HAProxy refuses to start with a `.ocsp` file it
        cannot match to an issuer. (`at` stays at the `.ocsp` file's path.)"""
        self._cleaner.once(self.path_for(delivery).parent)
        if not delivery.bundle_has_issuer:
            _replace(self.path_for(delivery, ".issuer"), delivery.issuer_pem, staple=False)
        return _replace(self.path_for(delivery), data)

    async def _hand(self, der: bytes, path: Path, liveness: _Liveness) -> _Outcome:
        """Push `der` (whose file is `path`) to the running HAProxy: no error when it took
        it, a note when it is not running, else the error, owed."""
        pushed = await self._push(der, path)
        if pushed is None:
            return _Outcome(False)
        if isinstance(pushed, _Shut):
            return await self._shut(pushed, path, liveness)
        if pushed.startswith(_UNREACHABLE):
            pushed += f"; {path} is written: HAProxy reads it at its next start or reload"
        if _UNKNOWN_CERT in pushed:  # started without the file: a reload makes it read it
            return _Outcome(False, pushed, needs_reload=True, owed=self._reloader.command is None)
        return _Outcome(False, pushed, owed=True)

    async def _shut(self, shut: _Shut, path: Path, liveness: _Liveness) -> _Outcome:
        """The socket did not let a push in: HAProxy is not running when the `running` check
        fails, or, without one, when nothing listens there; else an error saying what to fix."""
        ran = await liveness.check()
        if ran is not None and ran.problem is not None and not ran.unrunnable:
            why = f"{_NOT_RUNNING} ({ran.problem}; {shut.why})"
            return _Outcome(False, note=f"{why}: it reads {path} at its start")
        if ran is None and not shut.denied:
            why = f"{_NOT_RUNNING} ({shut.why})"
            return _Outcome(False, note=f"{why}: it reads {path} at its start")
        if ran is not None and ran.unrunnable:
            problem = (
                f"the `running` check cannot run ({ran.problem}): fix it, it tells a stopped "
                f"HAProxy from a wrong `socket` ({shut.why})"
            )
        elif shut.denied:
            problem = (
                f"{shut.why}; give it access with the `mode`, `user` or `group` of that "
                "`stats socket` line in haproxy.cfg, then reload HAProxy"
            )
        else:
            problem = (
                f"HAProxy runs (its `running` check exits 0) but {shut.why}; set `socket` to "
                "the path or address of its `stats socket ... level admin` line, or add that "
                "line to haproxy.cfg and reload HAProxy"
            )
        written = f"{path} is written: HAProxy reads it at its next start or reload"
        return _Outcome(False, f"{problem}; {written}", owed=True)

    async def _push(self, der: bytes, path: Path) -> str | _Shut | None:
        """None when the running HAProxy took the staple, `_Shut` when the socket did not
        let it in, else what went wrong."""
        command = f"set ssl ocsp-response {base64.b64encode(der).decode()}"
        if self.master:
            command = f"@1 {command}"
        kind = _not_a_socket(self.socket)
        if kind is not None:
            return f"{_UNREACHABLE}: {self.socket} {kind}, not a socket; fix `socket`"
        try:
            answer = await ask_haproxy(self.socket, command, self.timeout)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            return _Shut(f"nothing listens at {self.socket}: {_describe(exc)}")
        except PermissionError as exc:
            why = f"HAProxy's runtime API at {self.socket} refuses mustaple's user"
            return _Shut(f"{why}: {_describe(exc)}", denied=True)
        except (OSError, TimeoutError, UnicodeError) as exc:
            return f"{_UNREACHABLE} at {self.socket} ({_describe(exc)})"
        first = answer.strip().splitlines()[0] if answer.strip() else "no answer"
        if first == HAPROXY_UPDATED:
            return None
        if _UNKNOWN_CERT in first:
            return (
                f"HAProxy refused the staple: {first} (it knows only certificates it loaded "
                f"with a .ocsp file, by SHA-1 CertID: if it started without {path}, reload it)"
            )
        return f"HAProxy refused the staple: {first}"

    def _remove(self, delivery: Delivery, at: list[object]) -> _Outcome:
        path = self.path_for(delivery)  # (`at` stays there)
        try:
            self._cleaner.once(path.parent)
            previous = read_prefix(path, MAX_INPUT)
            _staple_file(previous)
            if not delivery.bundle_has_issuer:
                _replace(self.path_for(delivery, ".issuer"), delivery.issuer_pem, staple=False)
            _replace(path, b"", staple=False)  # checked: `previous` is a staple
        except OSError as exc:
            return _Outcome(False, _os_problem(path, exc))
        if previous:
            self._serving[path] = _served_until(previous)
        if path not in self._serving:
            return _Outcome(False)
        until = self._serving[path]
        if until is not None and until <= datetime.now(UTC):  # HAProxy's own clock
            del self._serving[path]  # it stopped stapling the previous one by itself
            return _Outcome(bool(previous))
        when = f"until {human_time(until)}" if until else "until it expires"
        error = (
            "HAProxy cannot drop a staple at run time: it goes on serving the previous one "
            f"{when} or until it is reloaded ({path} is now empty)"
        )
        return _Outcome(bool(previous), error, needs_reload=True)


def _also(handed: _Outcome, problem: str) -> _Outcome:
    """A push's outcome when the file could not be written too (`problem`): an error."""
    return _Outcome(False, _joined(handed.error, problem), owed=handed.owed)


def _served_until(der: bytes) -> datetime | None:
    """When HAProxy stops stapling `der` by itself: 300 s before its nextUpdate."""
    try:
        next_update = ocsp.load_der_ocsp_response(der).next_update_utc
    except ValueError:
        return None
    return next_update - HAPROXY_MARGIN if next_update else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


# --- command --------------------------------------------------------------------------------------


class CommandSink:
    """Runs `command` through the shell once per delivery, with the event in its environment:
    MUSTAPLE_EVENT ("staple" or "remove"), MUSTAPLE_CERT, MUSTAPLE_NAME, MUSTAPLE_STATUS and
    MUSTAPLE_STAPLE (a temporary file holding the DER, removed afterwards; empty for remove).

    A delivery identical to the last one this sink ran successfully for the same certificate
    is not run again (changed=False).
    """

    def __init__(
        self, name: str, *, command: str, timeout: timedelta = DEFAULT_COMMAND_TIMEOUT
    ) -> None:
        self.name = name
        self.command = command
        self.timeout = timeout
        self._done: dict[tuple[str, str], tuple[Action, bytes | None]] = {}  # (key, file)

    async def deliver(self, batch: Sequence[Delivery]) -> list[Delivered]:
        return [await self._deliver_one(d) for d in batch]

    async def _deliver_one(self, delivery: Delivery) -> Delivered:
        wanted = (delivery.action, delivery.der)
        done = (delivery.key, str(delivery.cert_path))  # each file: its own server may read it
        if self._done.get(done) == wanted:
            return Delivered(delivery.key, self.name, changed=False)
        try:
            problem = await self._run(delivery)
        except OSError as exc:
            problem = f"cannot write the temporary staple file ({exc.strerror or exc})"
        if problem is not None:
            return Delivered(delivery.key, self.name, changed=False, error=problem)
        self._done[done] = wanted
        return Delivered(delivery.key, self.name, changed=True)

    async def _run(self, delivery: Delivery) -> str | None:
        staple = ""
        if delivery.action is not Action.REMOVE and delivery.der is not None:
            try:
                staple = await asyncio.to_thread(_temporary_file, delivery.der)
            except RuntimeError as exc:  # a sink failure, saying why
                if thread_problem(exc) is None:
                    raise
                raise NoThread(exc) from None
        env = {
            **os.environ,
            "MUSTAPLE_EVENT": delivery.action.value,
            "MUSTAPLE_CERT": str(delivery.cert_path),
            "MUSTAPLE_NAME": delivery.name,
            "MUSTAPLE_STATUS": delivery.status,
            "MUSTAPLE_STAPLE": staple,
        }
        try:
            return await run_command(self.command, self.timeout, env)
        finally:
            if staple:
                Path(staple).unlink(missing_ok=True)


def _temporary_file(data: bytes) -> str:
    fd, name = tempfile.mkstemp(prefix="mustaple-", suffix=".der")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return name
