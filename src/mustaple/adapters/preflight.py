"""What `mustaple run --check-config` checks beyond the file itself: will it work on this machine?

`preflight(config)` looks at the machine as the keeper will find it, and returns the problems
that would otherwise show only at run time, each one line naming the config key:
- errors: a state or sink directory that cannot be created or written, or that the systemd
  unit that runs mustaple keeps it from writing (ProtectSystem= and the rest, read by
  `mustaple.adapters.systemdunit`: from a shell, outside the unit's sandbox, every directory
  root may write looks writable), a reload, running or
  sink command or a hook that /bin/sh (which runs them) cannot read (`sh -n`, which reads
  and runs nothing: a quote left open, an `if` with no `fi`), or that starts a program that
  does not exist or is not executable (the command read as the shell reads it:
  `mustaple.core.shellread`);
- warnings: certificate paths or globs that match no file (yet), a command with a part
  that cannot be read (a here-document, backquotes, a function...), so was not judged, and a
  unit that cannot be read or judged (an error when `--unit` named it).
It writes nothing: a directory's writability is tried with a temporary file in the nearest
directory that exists, removed at once.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import stat
import string
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mustaple.adapters.config import HOOK_EVENTS, Config
from mustaple.adapters.files import os_words
from mustaple.adapters.store import regular_or_none
from mustaple.adapters.systemdunit import DIRECTORIES, load_sandbox
from mustaple.core.errors import InputError
from mustaple.core.render import one_line
from mustaple.core.shellread import read_command
from mustaple.core.unitfile import Sandbox, UnitError

__all__ = ["Preflight", "preflight"]

SHELL = "/bin/sh"  # what runs every command (asyncio's create_subprocess_shell)
_SYNTAX_SECONDS = 10.0  # for `sh -n` to read one command (it runs nothing)
# how a shell starts its complaint: dash's "/bin/sh: 1: ", bash's "/bin/sh: -c: line 1: "
_SHELL_PREFIX = re.compile(r"^\S+: (?:-c: )?(?:line )?\d+: ")


@dataclass
class Preflight:
    """Problems that would stop the keeper (errors) or that it would only log (warnings)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _database(key: str, path: Path, found: Preflight) -> None:
    """The state database, when there, must be a regular file (`run` and `prime` stop at
    anything else, with the same line)."""
    try:
        regular_or_none(path)
    except InputError as exc:
        found.errors.append(f"{key}: {exc}")


def preflight(
    config: Config,
    unit_file: Path | None = None,
    unit_directories: Sequence[Path] = DIRECTORIES,
) -> Preflight:
    """Check `config` against this machine, and against the systemd unit that runs mustaple
    (`unit_file`, else mustaple.service in `unit_directories`, systemd's); each finding
    names the file and the key."""
    found = Preflight()
    where = f"{config.path}: "
    unit = _unit(unit_file, unit_directories, found)
    matched = _certificates(config, found)
    _directory(f"{where}state_dir", config.state_dir, unit, found)
    _database(f"{where}state_dir", config.state_dir / "state.db", found)
    for name, table in config.sinks.items():
        _sink(f"{where}sinks.{name}.", table, matched.get(name, set()), unit, found)
    for event in HOOK_EVENTS:
        command = config.hooks.command(event)
        if command:
            _command(f"{where}hooks.{event}", command, found)
    return found


def _unit(unit_file: Path | None, directories: Sequence[Path], found: Preflight) -> Sandbox | None:
    """The unit's sandbox; None when there is no unit, or it cannot be read (noted: an error
    for the file `--unit` named, a warning for one found)."""
    try:
        return load_sandbox(unit_file, directories)
    except (InputError, UnitError) as exc:
        line = f"{exc}; what the unit lets mustaple write was not checked"
        (found.errors if unit_file is not None else found.warnings).append(line)
        return None


def _directory(key: str, directory: Path, unit: Sandbox | None, found: Preflight) -> None:
    """Note why `directory` cannot be written, from here or by the unit's service."""
    problem = _unwritable(directory) or _refused(directory, unit)
    if problem:
        found.errors.append(f"{key}: {problem}")


def _refused(directory: Path, unit: Sandbox | None) -> str | None:
    """Why the unit's service may not write in `directory`, or writes in its own private
    copy of it (what it may write there is not known from a shell: `_unwritable` judged
    root's rights outside it)."""
    if unit is None or not directory.is_absolute():
        return None
    rule = unit.refusal(str(directory))
    if rule is None:
        return unit.private(str(directory))
    return unit.advice(str(directory), rule, exists=directory.is_dir())


def _certificates(config: Config, found: Preflight) -> dict[str, set[Path]]:
    """Note what the [[certificates]] entries name that is not there (a glob matching no file
    yet, an issuer file that cannot be read); return the directories of the certificates each
    sink is given: of the files matched, or, for a path matching none yet, the directory its
    files will be in, when that is fixed (`/etc/haproxy/certs/*.pem`: /etc/haproxy/certs)."""
    matched: dict[str, set[Path]] = {}
    for i, entry in enumerate(config.certificates):
        key = f"{config.path}: certificates[{i}]"
        for pattern in entry.paths:
            directories = {file.parent for file in _matches(pattern)}
            if not directories:
                found.warnings.append(f"{key}.paths: {pattern!r} matches no file yet")
                directories = _directory_of(pattern)
            for sink in entry.sinks if entry.sinks is not None else tuple(config.sinks):
                matched.setdefault(sink, set()).update(directories)
        problem = _unreadable(entry.issuer) if entry.issuer is not None else None
        if problem:
            found.errors.append(f"{key}.issuer: {problem}")
    return matched


def _directory_of(pattern: str) -> set[Path]:
    """The directory the files of absolute `pattern` will be in, when no glob is in it."""
    directory = Path(pattern).parent
    if not directory.is_absolute() or any(c in str(directory) for c in "*?["):
        return set()
    return {directory}


def _unreadable(path: Path) -> str | None:
    """Why issuer file `path` is no regular file this process can read, or None. It is never
    opened: a FIFO or a device could block the check."""
    give = "give the issuer's certificate file"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path} does not exist; {give}"
    except OSError as exc:
        return f"{path} cannot be used ({exc.strerror}); {give}"
    if stat.S_ISDIR(mode):
        return f"{path} is a directory; {give}"
    if not stat.S_ISREG(mode):
        return f"{path} is a FIFO, a device or a socket, not a regular file; {give}"
    if not os.access(path, os.R_OK):
        return f"{path} cannot be read (permission denied)"
    return None


def _matches(pattern: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())


def _sink(
    prefix: str,
    table: Mapping[str, object],
    certs: set[Path],
    unit: Sandbox | None,
    found: Preflight,
) -> None:
    """Note the problems of one sink, each as `prefix` + 'KEY: problem'."""
    for key in ("reload", "command", "running"):
        command = table.get(key)
        if isinstance(command, str):
            _command(prefix + key, command, found)
    for key, directory in _sink_dirs(table, certs):
        _directory(prefix + key, directory, unit, found)


# how a problem names the directory of a HAProxy sink's certificates, where it writes when it
# has no `ocsp_dir`: the key that would move it, said to be unset (not a key in the file)
BESIDE_CERTIFICATES = "ocsp_dir (not set: beside the certificates)"


def _sink_dirs(table: Mapping[str, object], certs: set[Path]) -> Iterator[tuple[str, Path]]:
    """The directories a sink writes into, as far as they are known before any certificate
    (`certs`: the directories of the certificates it is given)."""
    kind, path, ocsp_dir = table.get("type"), table.get("path"), table.get("ocsp_dir")
    if kind == "file" and isinstance(path, str):
        fixed = _fixed_prefix(path)
        if fixed is not None:
            yield "path", fixed
    elif kind == "haproxy" and isinstance(ocsp_dir, str):
        yield "ocsp_dir", Path(ocsp_dir)
    elif kind == "haproxy":
        for directory in sorted(certs):
            yield BESIDE_CERTIFICATES, directory


def _fixed_prefix(template: str) -> Path | None:
    """The directory of a path template up to its first placeholder ('{dir}/x' has none)."""
    literal = next(iter(string.Formatter().parse(template)), ("", None, None, None))[0]
    fixed = Path(literal) if "{" in template else Path(template).parent
    if "{" in template and not literal.endswith("/"):
        fixed = fixed.parent
    return fixed if fixed.is_absolute() and str(fixed) != "/" else None


def _unwritable(directory: Path) -> str | None:
    """Why `directory` cannot be created or written to, or None if it can."""
    try:
        existing = _nearest_existing(directory)
    except _Unusable as exc:
        return str(exc)
    if not existing.is_dir():
        return f"{directory} cannot be created: {existing} is not a directory"
    try:
        fd, name = tempfile.mkstemp(prefix=".mustaple-check-", dir=existing)
    except OSError as exc:
        verb = "written to" if existing == directory else f"created ({existing} is not writable)"
        return f"{directory} cannot be {verb}: {os_words(exc, directory)}"
    os.close(fd)
    os.unlink(name)
    return None


class _Unusable(Exception):
    """A path that cannot be created nor used, and why (one line)."""


def _nearest_existing(directory: Path) -> Path:
    """`directory`, or the nearest of its parents that exists; _Unusable when the path cannot
    be looked up (a name longer than the file system takes, a loop of symbolic links) or ends
    in a dangling link."""
    existing, loop = directory, None
    while True:
        try:
            existing.stat()
            break
        except (FileNotFoundError, NotADirectoryError):
            if loop is None and existing.is_symlink():
                raise _Unusable(f"{existing} is a dangling symbolic link") from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise _Unusable(f"{directory} cannot be used: {exc.strerror}") from None
            loop = existing  # the outermost path that loops is the link to fix
        existing = existing.parent
    if loop is not None:
        raise _Unusable(f"{loop} is a loop of symbolic links (it leads back to itself)")
    return existing


def _command(key: str, command: str, found: Preflight) -> None:
    """Note, as an error, that /bin/sh cannot read `command`, or else the first program it
    starts that cannot run (not one it looks for first: `command -v NAME`, `which NAME`);
    else, when part of it could not be read here, that it could not be judged, as a
    warning."""
    problem = _syntax_error(command)
    if problem is not None:
        found.errors.append(f"{key}: {problem}")
        return
    reading = read_command(command)
    for program in reading.programs:
        problem = None if program in reading.probed else _cannot_run(program)
        if problem is not None:
            found.errors.append(f"{key}: {problem}")
            return
    if reading.unread is not None:
        found.warnings.append(
            f"{key}: check-config could not judge this command: {reading.unread}; "
            "run it once by hand to check it"
        )


def _syntax_error(command: str) -> str | None:
    """Why /bin/sh cannot read `command` (it would fail at every run, whatever the programs),
    by `sh -n -c`, which reads it and runs nothing; None when it can, or when that cannot be
    told (no /bin/sh, a shell that hangs)."""
    try:
        done = subprocess.run(
            [SHELL, "-n", "-c", command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_SYNTAX_SECONDS,
            check=False,
        )
    except (OSError, ValueError, subprocess.TimeoutExpired):  # ValueError: a NUL byte
        return None
    if done.returncode == 0:
        return None
    said = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
    why = f" ({one_line(_SHELL_PREFIX.sub('', said[-1].strip()))})" if said else ""
    return f"{SHELL} cannot read this command{why}: it would fail at every run; fix it"


def _cannot_run(program: str) -> str | None:
    if "/" not in program:
        if shutil.which(program) is None:
            return f"{program!r} is not found in PATH ({os.environ.get('PATH', '')})"
        return None
    path = Path(program)
    if not path.exists():
        return f"{program} does not exist"
    if path.is_dir() or not os.access(path, os.X_OK):
        return f"{program} is not executable (chmod +x {program})"
    return None
