"""Where a systemd unit lets its service write, read from the texts of its files.

`read_unit(name, texts)` reads the [Service] section of a unit file and its drop-ins (the
texts in systemd's order: the unit file, then each drop-in by file name) as systemd does: a
later assignment of a list setting adds to it, an empty one clears it, a line may go on after
a backslash. `sandbox(unit)` turns the settings that shape the file system (ProtectSystem=,
ProtectHome=, PrivateTmp=, DynamicUser=, StateDirectory= and its kin, ReadWritePaths=,
ReadOnlyPaths=, InaccessiblePaths=) into rules, and `Sandbox.refusal(directory)` says which
rule keeps the service from writing there, as systemd's mount namespace would: the most
specific path wins, and at the same path an inaccessible or read-only one wins over a
writable one. `run --check-config` uses it (`mustaple.adapters.preflight` finds and reads the
files). No I/O: `UnitError` says, in one line, what cannot be read or judged.
"""

from __future__ import annotations

import enum
import posixpath
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = ["Access", "Rule", "Sandbox", "Unit", "UnitError", "read_unit", "sandbox"]

_TRUE = ("1", "yes", "y", "true", "t", "on")
_FALSE = ("0", "no", "n", "false", "f", "off")
# ProtectSystem=: what each level makes read-only (strict: everything but the API file systems)
_SYSTEM = {
    "yes": ("/usr", "/boot", "/efi"),
    "full": ("/usr", "/boot", "/efi", "/etc"),
    "strict": ("/",),
}
_API = ("/dev", "/proc", "/sys")
_HOMES = ("/home", "/root", "/run/user")
# the directories systemd makes for a service and leaves writable, under their roots
_OWN_FIXED_SPECIFIERS = {
    "StateDirectory": "/var/lib",
    "CacheDirectory": "/var/cache",
    "LogsDirectory": "/var/log",
    "RuntimeDirectory": "/run",
}
_SPECIFIER = re.compile(r"%(.?)")
# the specifiers of a system service's paths that do not depend on the machine
_FIXED_SPECIFIERS = {
    "S": "/var/lib",
    "C": "/var/cache",
    "L": "/var/log",
    "t": "/run",
    "T": "/tmp",
    "V": "/var/tmp",
    "E": "/etc",
    "%": "%",
}


class UnitError(ValueError):
    """A unit file that cannot be read, or a setting whose effect cannot be told here; the
    message is one line naming the file."""


@dataclass(frozen=True)
class Assignment:
    """One `KEY=value` line of the [Service] section, and the file it is in."""

    value: str
    source: str


@dataclass(frozen=True)
class Unit:
    """A unit's [Service] settings: each key's assignments in order (an empty assignment
    cleared those before it)."""

    name: str
    settings: dict[str, tuple[Assignment, ...]]

    def all(self, key: str) -> tuple[Assignment, ...]:
        return self.settings.get(key, ())

    def last(self, key: str) -> Assignment | None:
        """The assignment in force for a single-valued `key`, None when it is not set."""
        assignments = self.all(key)
        return assignments[-1] if assignments else None


def read_unit(name: str, texts: Sequence[tuple[str, str]]) -> Unit:
    """The [Service] settings of unit `name` from `texts`, (file, text) pairs in systemd's
    order: the unit file, then its drop-ins. Raises UnitError for a line systemd could not
    read either (a section header not closed)."""
    settings: dict[str, list[Assignment]] = {}
    for source, text in texts:
        for key, value in _service_lines(source, text):
            if value:
                settings.setdefault(key, []).append(Assignment(value, source))
            else:
                settings[key] = []
    return Unit(name, {key: tuple(values) for key, values in settings.items()})


def _service_lines(source: str, text: str) -> list[tuple[str, str]]:
    """The (key, value) lines of the [Service] sections of one file."""
    found, section = [], ""
    for number, line in _logical_lines(text):
        if line.startswith("["):
            if not line.endswith("]"):
                raise UnitError(f"{source}, line {number}: a section header without its ']'")
            section = line[1:-1]
        elif section == "Service" and "=" in line:  # systemd ignores a line without "="
            key, _, value = line.partition("=")
            found.append((key.strip(), value.strip()))
    return found


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(number of its first line, line) for each line that is neither empty nor a comment,
    joined with those it goes on to after a closing backslash (a comment line between them
    is left out, as systemd does)."""
    lines: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        start, before = pending if pending is not None else (number, "")
        if line.endswith("\\"):
            pending = (start, before + line[:-1] + " ")
            continue
        pending = None
        lines.append((start, before + line))
    if pending is not None:
        lines.append((pending[0], pending[1].strip()))
    return lines


class Access(enum.IntEnum):
    """What a rule lets the service do below its path; at the same path, the lowest wins."""

    INACCESSIBLE = 0
    READ_ONLY = 1
    WRITABLE = 2


@dataclass(frozen=True)
class Rule:
    """The access below `path`, and the line that decides it: `setting` ("ProtectSystem=strict")
    in the file `source`."""

    path: str
    access: Access
    setting: str
    source: str


@dataclass(frozen=True)
class Sandbox:
    """The file system a unit's service sees: its rules, judged as systemd mounts them.
    `missing`: the ReadWritePaths= paths that do not exist on this machine (systemd leaves
    out one written with "-", and will not start the unit for another)."""

    name: str
    rules: tuple[Rule, ...]
    missing: frozenset[str] = frozenset()

    def listed(self) -> list[str]:
        """The paths of the ReadWritePaths= lines, which must exist when the unit starts."""
        return [r.path for r in self.rules if r.setting.startswith("ReadWritePaths=")]

    def refusal(self, directory: str) -> Rule | None:
        """The rule that keeps the service from writing in absolute `directory`, or None
        when it may write there (as far as the unit decides: the file modes still apply)."""
        path = posixpath.normpath(directory)
        applying = [r for r in self.rules if _below(path, r.path) and r.path not in self.missing]
        if not applying:
            return None
        decisive = max(applying, key=lambda r: (len(PurePosixPath(r.path).parts), -r.access))
        return None if decisive.access is Access.WRITABLE else decisive

    def private(self, directory: str) -> str | None:
        """Why absolute `directory` is the service's own (below the /tmp or /var/tmp that
        PrivateTmp= gives it): the servers, and mustaple run from a shell, see another one,
        and it is emptied at every stop; None when it is not."""
        path = posixpath.normpath(directory)
        for rule in self.rules:
            if rule.setting.startswith(_PRIVATE) and _below(path, rule.path):
                return (
                    f"{path} is private to {self.name} ({rule.setting} in {rule.source}): no "
                    f"server, and no mustaple command run from a shell, sees what it writes in "
                    f"its own {rule.path}, emptied at every stop; choose a directory outside "
                    "/tmp and /var/tmp"
                )
        return None

    def advice(self, directory: str, rule: Rule, *, exists: bool) -> str:
        """One line: why the service cannot write in `directory` (which `rule` refuses), and
        what to do; `exists`: whether the directory exists on this machine."""
        path = posixpath.normpath(directory)
        said = f"{path} is {_ACCESS[rule.access]} {self.name} ({rule.setting} in {rule.source})"
        if rule.access is Access.INACCESSIBLE:
            return f"{said}: choose a directory outside {rule.path}, or remove that setting"
        if rule.path == path and rule.setting.startswith("ReadOnlyPaths="):
            return f"{said}: take {path} out of that line"
        if rule.path == path:  # a writable path there would lose to it
            return f"{said}: choose a directory below it, or elsewhere"
        if path in self.missing:
            return f"{said}: create {path}, which its ReadWritePaths= names (docs/systemd.md)"
        create = "" if exists else f"create {path} (systemd needs it to exist), then "
        return (
            f"{said}: {create}add ReadWritePaths={path} to the unit, e.g. with "
            f"`systemctl edit {self.name}` (docs/systemd.md)"
        )


_ACCESS = {Access.INACCESSIBLE: "inaccessible to", Access.READ_ONLY: "read-only for"}
_PRIVATE = ("PrivateTmp=", "DynamicUser=")  # the settings that give the service its own /tmp


def _below(path: str, top: str) -> bool:
    return PurePosixPath(path).is_relative_to(top)


def sandbox(unit: Unit) -> Sandbox:
    """The rules unit's settings make. Raises UnitError when the file system it sees cannot be
    told here (RootDirectory=, RootImage=: another root; a specifier that depends on the
    machine; a path list with a quote left open)."""
    for key in ("RootDirectory", "RootImage"):
        if unit.last(key) is not None:
            raise UnitError(f"{_where(unit, key)}: the service runs in another root ({key}=)")
    rules = [*_protect_system(unit), *_protect_home(unit), *_private_tmp(unit)]
    for key, root in _OWN_FIXED_SPECIFIERS.items():
        rules += _path_rules(unit, key, Access.WRITABLE, root)
    rules += _path_rules(unit, "ReadWritePaths", Access.WRITABLE)
    rules += _path_rules(unit, "ReadOnlyPaths", Access.READ_ONLY)
    rules += _path_rules(unit, "InaccessiblePaths", Access.INACCESSIBLE)
    return Sandbox(unit.name, tuple(rules))


def _where(unit: Unit, key: str) -> str:
    assignment = unit.last(key)
    return f"{assignment.source}: {key}={assignment.value}" if assignment else key


def _boolean(value: str) -> bool | None:
    word = value.lower()
    return True if word in _TRUE else False if word in _FALSE else None


def _protect_system(unit: Unit) -> list[Rule]:
    """What ProtectSystem= makes read-only (DynamicUser=yes implies ProtectSystem=strict)."""
    decided = _system_level(unit)
    if decided is None:
        return []
    setting, source, level = decided
    rules = [Rule(path, Access.READ_ONLY, setting, source) for path in _SYSTEM[level]]
    if level == "strict":
        rules += [Rule(path, Access.WRITABLE, setting, source) for path in _API]
    return rules


def _system_level(unit: Unit) -> tuple[str, str, str] | None:
    """(setting, file, level) of the ProtectSystem= in force, None when it is off."""
    protect, dynamic = unit.last("ProtectSystem"), unit.last("DynamicUser")
    word = protect.value.lower() if protect else "no"
    level = word if word in ("full", "strict") else "yes" if _boolean(word) else None
    if level != "strict" and dynamic is not None and _boolean(dynamic.value):
        return f"DynamicUser={dynamic.value}", dynamic.source, "strict"
    if protect is None or level is None:
        return None
    return f"ProtectSystem={protect.value}", protect.source, level


def _protect_home(unit: Unit) -> list[Rule]:
    """ProtectHome=: yes hides /home, /root and /run/user, read-only keeps them from
    writes (DynamicUser=yes implies read-only); tmpfs (an empty one of its own) refuses
    nothing."""
    protect, dynamic = unit.last("ProtectHome"), unit.last("DynamicUser")
    word = protect.value.lower() if protect else "no"
    if _boolean(word) is False and dynamic is not None and _boolean(dynamic.value):
        protect, word = dynamic, "read-only"
    if protect is None:
        return []
    setting = f"{'DynamicUser' if protect is dynamic else 'ProtectHome'}={protect.value}"
    if _boolean(word):
        access = Access.INACCESSIBLE
    elif word == "read-only":
        access = Access.READ_ONLY
    else:
        return []
    return [Rule(path, access, setting, protect.source) for path in _HOMES]


def _private_tmp(unit: Unit) -> list[Rule]:
    """PrivateTmp= (implied by DynamicUser=yes): a /tmp and /var/tmp of its own, writable."""
    for key in ("PrivateTmp", "DynamicUser"):
        assignment = unit.last(key)
        if assignment is not None and _boolean(assignment.value):
            setting, source = f"{key}={assignment.value}", assignment.source
            return [Rule(p, Access.WRITABLE, setting, source) for p in ("/tmp", "/var/tmp")]
    return []


def _path_rules(unit: Unit, key: str, access: Access, root: str = "") -> list[Rule]:
    """One rule per path of every `key=` line; a relative path is ignored, as systemd does
    (StateDirectory= and its kin name paths below `root`)."""
    rules = []
    for assignment in unit.all(key):
        for word in _words(assignment, key):
            # "-": no error when missing, "+": below RootDirectory= (refused above);
            # a directory of its own may name a link to make after a ":"
            named = word.split(":")[0] if root else word.lstrip("-+")
            path = _expand(named, unit, assignment)
            path = f"{root}/{path}" if root else path
            if path.startswith("/"):
                rule = Rule(posixpath.normpath(path), access, f"{key}={word}", assignment.source)
                rules.append(rule)
    return rules


def _words(assignment: Assignment, key: str) -> list[str]:
    try:
        return shlex.split(assignment.value)
    except ValueError:
        where = f"{assignment.source}: {key}={assignment.value}"
        raise UnitError(f"{where}: a quote is left open") from None


def _expand(word: str, unit: Unit, assignment: Assignment) -> str:
    """`word` with its specifiers replaced; UnitError for one that depends on the machine."""
    stem = unit.name.rsplit(".", 1)[0]
    known = {**_FIXED_SPECIFIERS, "n": unit.name, "N": stem, "p": stem.split("@")[0]}

    def replace(match: re.Match[str]) -> str:
        letter = match.group(1)
        if letter not in known:
            raise UnitError(
                f"{assignment.source}: {word}: the specifier %{letter} depends on the machine"
            )
        return known[letter]

    return _SPECIFIER.sub(replace, word)
