"""Which entries' certificate files may have changed since their last look (file events).

Without file events, each pass of `mustaple run` lists every `[[certificates]]` pattern and
stats every file (about 0.7 s of CPU every `watch_interval` at 100k files). With them, an
entry is looked at only when something changed in a directory its files depend on, or once
`policy.rescan_interval` has passed since its last look (what file events cannot show: a
mount over a directory, a change in a directory no pattern names).

The directories an entry depends on, learned at each of its looks (`needed`), each with the
names whose events count there: each fixed directory of its patterns down to the first one
with a wildcard, with the pattern's next name (a file written beside `/etc` does not matter);
every directory a wildcard lists, with the names it lists (not hidden ones, such as the
temporary files of mustaple's own sinks, nor HAProxy's `.ocsp` and `.issuer` beside a file it
lists); the directory of each file found, with its name and, for a symbolic link, the first
name of a relative link (a Kubernetes secret's `..data`) and the directory and name of the
file it leads to (certbot's `archive/NAME/fullchainN.pem`); the same for the entry's `issuer`
file. An event on a directory itself (removed, moved, unmounted) always counts. The keeper's
look (`_survey`, in its thread) hands them to `looked`, which watches them; an entry is
*quiet* (not looked at) from a look that began with every one of those directories watched
already, until an event that counts in one of them, an overflow of the kernel's queue, or
the rescan interval. A directory that is not there is not watched (its parent's event says
when it comes).

An entry is never quiet (it is looked at at every pass, as without file events) while one of
its directories is on a file system whose changes this kernel does not see (NFS, SMB, FUSE:
`local_file_system`) or cannot be watched (the watch limit, `fs.inotify.max_user_watches`);
one line says which and why. When the kernel gives no inotify instance at all, no entry is.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import logging
import os
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from mustaple.adapters.coverage import COMPANIONS
from mustaple.adapters.inotify import Inotify, local_file_system
from mustaple.core.render import human_duration

__all__ = ["Changes", "Polled", "pattern_dirs"]

log = logging.getLogger(__name__)

_ABSENT = (errno.ENOENT, errno.ENOTDIR)


@dataclass
class Interest:
    """Which events of a directory count for an entry: those of `names`, those of a name
    a wildcard of `parts` lists, and those of the directory itself (name "")."""

    names: set[str] = field(default_factory=set)
    parts: set[str] = field(default_factory=set)

    def counts(self, name: str) -> bool:
        return not name or name in self.names or any(_lists(p, name) for p in self.parts)


@dataclass(frozen=True)
class Polled:
    """An entry looked at every pass for want of file events, and why (for /status)."""

    paths: tuple[str, ...]
    why: str


Needed = dict[str, Interest]  # by directory
Link = tuple[str | None, str, str]  # a link's first name (relative), its file's directory, name


class Changes:
    """The entries not to look at now (`quiet`), from file events (see the module)."""

    def __init__(
        self,
        entries: Sequence[tuple[Sequence[str], Path | None]],
        rescan: timedelta,
        open_inotify: Callable[[], Inotify] = Inotify,
    ) -> None:
        """`entries`: each `[[certificates]]` entry's patterns and `issuer` file, in order."""
        self.entries = [(tuple(paths), issuer) for paths, issuer in entries]
        self.rescan = rescan
        self._open_inotify = open_inotify
        self._inotify: Inotify | None = None
        self._off: str | None = None  # why there is no inotify instance: every entry polled
        self._closed = False
        self._lock = threading.Lock()
        self._wants: dict[str, dict[int, Interest]] = {}  # directory -> entry -> interest
        self._needs: dict[int, Needed] = {}  # entry -> its directories at its last look
        self._armed: dict[int, datetime] = {}  # entry -> when its last look began
        # entry -> the earliest start of a look that may arm it: a look that began before
        # the event that called for it was read (one that hung meanwhile) may not have seen
        # what changed
        self._since: dict[int, datetime] = {}
        self._latest: datetime | None = None  # the last `quiet`'s time
        self._said: dict[int, str] = {}  # entry -> why it is looked at every pass (said)
        self._targets: dict[int, dict[str, Link | None]] = {}  # entry -> file -> its link
        self._absent: set[str] = set()  # needed directories not there at their last try

    def quiet(self, now: datetime) -> frozenset[int]:
        """The entries that need no look now: nothing changed in their directories since a
        look that began watching them all, less than the rescan interval ago. Reads the
        events (never blocks)."""
        with self._lock:
            if self._inotify is None:
                return frozenset()
            try:
                events, overflowed = self._inotify.read()
            except OSError as exc:  # the instance is unusable: back to looking every pass
                self._give_up(f"its events cannot be read ({exc.strerror})")
                return frozenset()
            self._latest = now
            if overflowed:  # changes may have been missed: every entry looked at
                self._armed.clear()
                self._since = dict.fromkeys(range(len(self.entries)), now)
            for directory, name in events:
                for number, interest in self._wants.get(directory, {}).items():
                    if interest.counts(name):
                        self._armed.pop(number, None)
                        self._since[number] = now
            return frozenset(n for n, began in self._armed.items() if now - began < self.rescan)

    @property
    def polled(self) -> tuple[Polled, ...]:
        """The entries looked at every pass for want of file events, with why."""
        with self._lock:
            if self._off is not None:
                return tuple(Polled(paths, self._off) for paths, _ in self.entries)
            return tuple(Polled(self.entries[n][0], why) for n, why in sorted(self._said.items()))

    def forget(self, number: int) -> None:
        """Entry `number` is looked at at the next pass (its look hung, or came back)."""
        with self._lock:
            self._armed.pop(number, None)
            if self._latest is not None:
                self._since[number] = self._latest

    def looked(
        self,
        number: int,
        began: datetime,
        names: Iterable[str],
        fresh: Collection[str],
        at: list[object],
    ) -> None:
        """Entry `number` was looked at from `began` and its files are `names` (`fresh`:
        those new or changed since its last look): watch its directories, and have it quiet
        from now on if they were all watched before `began`, and no event that counts was
        read after `began` (a look that hung meanwhile). Called from the look's thread:
        `at[1]` is kept at the directory or file worked on (a look that hangs names it)."""
        inotify = self._instance()
        if inotify is None:
            return
        paths, issuer = self.entries[number]
        known = self._targets.get(number, {})
        targets = {name: _target(name, name in fresh, known, at) for name in names}
        if issuer is not None:
            targets[str(issuer)] = _target(str(issuer), True, known, at)
        needed = _needed(paths, targets, at)
        before = all(d in inotify or d in self._absent for d in needed)
        why = self._watch(inotify, needed, at)
        with self._lock:
            if self._closed:
                return
            self._targets[number] = targets
            self._want(number, needed)
            if why is None and before and began >= self._since.get(number, began):
                self._armed[number] = began
            else:
                self._armed.pop(number, None)
        self._say(number, why)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._inotify is not None:
                self._inotify.close()

    def _instance(self) -> Inotify | None:
        with self._lock:
            if self._inotify is None and self._off is None and not self._closed:
                try:
                    self._inotify = self._open_inotify()
                except OSError as exc:
                    self._give_up(f"the kernel gives no inotify instance ({exc.strerror})")
                else:
                    log.info(
                        "certificate files: their directories are watched for changes "
                        "(inotify); each file is also looked at every %s",
                        human_duration(self.rescan.total_seconds()),
                    )
            return None if self._closed else self._inotify

    def _give_up(self, why: str) -> None:
        """Called with the lock held."""
        self._off = f"no file events, {why}"
        self._armed.clear()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        log.warning(
            "certificate files: no file events, %s: every file is looked at every "
            "watch_interval (raise fs.inotify.max_user_instances if it is the limit)",
            why,
        )

    def _watch(self, inotify: Inotify, needed: Needed, at: list[object]) -> str | None:
        """Watch the directories of `needed` not watched yet; why one cannot be (None: all
        are, or are not there)."""
        for directory in needed:
            if directory in inotify:
                continue
            at[1] = directory
            try:
                if not local_file_system(directory):
                    return (
                        f"{directory} is on a network or user-space file system, whose "
                        "changes file events do not show"
                    )
                inotify.add(directory)
            except OSError as exc:
                if exc.errno in _ABSENT:
                    self._absent.add(directory)
                    continue
                if exc.errno == errno.ENOSPC:
                    return (
                        f"the inotify watch limit is reached at {directory} (raise "
                        f"fs.inotify.max_user_watches, now {_watch_limit()})"
                    )
                return f"{directory} cannot be watched ({exc.strerror})"
            self._absent.discard(directory)
        return None

    def _want(self, number: int, needed: Needed) -> None:
        """Entry `number` now depends on `needed`; directories no entry needs any more are
        no longer watched. Called with the lock held."""
        old = self._needs.get(number, {})
        self._needs[number] = needed
        for directory in old.keys() - needed.keys():
            wants = self._wants.get(directory, {})
            wants.pop(number, None)
            if not wants:
                self._wants.pop(directory, None)
                self._absent.discard(directory)
                if self._inotify is not None:
                    self._inotify.remove(directory)
        for directory, interest in needed.items():
            self._wants.setdefault(directory, {})[number] = interest

    def _say(self, number: int, why: str | None) -> None:
        """One line when entry `number` starts (or stops) being looked at every pass."""
        with self._lock:
            said = self._said.get(number)
            if why == said:
                return
            if why is None:
                del self._said[number]
            else:
                self._said[number] = why
        paths = ", ".join(self.entries[number][0])
        if why is None:
            log.info("certificate files: %s are watched for changes again", paths)
        else:
            log.warning(
                "certificate files: %s are looked at every watch_interval, not watched for "
                "changes: %s",
                paths,
                why,
            )


def _target(
    name: str, fresh: bool, known: Mapping[str, Link | None], at: list[object]
) -> Link | None:
    """Where the file `name` leads when it is a symbolic link (`known` from the last look,
    worked out again when the file is new or changed)."""
    if not fresh and name in known:
        return known[name]
    at[1] = name
    try:
        text = os.readlink(name)
    except OSError:  # not a link (or not there)
        return None
    first = text.split(os.sep, 1)[0]
    real = os.path.realpath(name)
    relative = not os.path.isabs(text) and first not in ("", ".", "..")
    return (first if relative else None, os.path.dirname(real), os.path.basename(real))


def _watch_limit() -> str:
    try:
        return Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    except OSError:
        return "unknown"


def _needed(
    patterns: Iterable[str], targets: Mapping[str, Link | None], at: list[object]
) -> Needed:
    """The directories an entry's files depend on, each with the events that count there
    (see the module)."""
    needed: Needed = {}
    for pattern in patterns:
        at[1] = pattern
        for directory, part in pattern_dirs(pattern):
            interest = needed.setdefault(directory, Interest())
            (interest.parts if glob.has_magic(part) else interest.names).add(part)
    for file, link in targets.items():
        directory, name = os.path.split(file)
        needed.setdefault(directory, Interest()).names.add(name)
        if link is not None:
            first, real_directory, real_name = link
            if first is not None:
                needed[directory].names.add(first)
            needed.setdefault(real_directory, Interest()).names.add(real_name)
    return needed


def _lists(part: str, name: str) -> bool:
    """Whether a glob's wildcard `part` lists `name` as a certificate file: not a hidden
    name unless `part` starts with a dot, nor a HAProxy companion of a name it lists."""
    if name.startswith(".") and not part.startswith("."):
        return False
    if not fnmatch.fnmatchcase(name, part):
        return False
    stem, _, suffix = name.rpartition(".")
    return not (stem and f".{suffix}" in COMPANIONS and fnmatch.fnmatchcase(stem, part))


def pattern_dirs(pattern: str) -> Iterable[tuple[str, str]]:
    """The directories whose events may change what `pattern` (absolute) lists, each with
    the part of the pattern that names what is in it: each fixed directory down to the first
    wildcard, then every directory the wildcards list."""
    parts = pattern.split(os.sep)
    for index in range(1, len(parts)):
        yield os.sep.join(parts[:index]) or os.sep, parts[index]
        if glob.has_magic(parts[index]):
            break
    else:
        return
    for deeper in range(index + 1, len(parts)):
        for directory in glob.glob(os.sep.join(parts[:deeper]) + os.sep):
            yield directory.rstrip(os.sep) or os.sep, parts[deeper]
