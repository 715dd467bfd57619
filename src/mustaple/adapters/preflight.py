"""What `mustaple run --check-config` checks beyond the file itself: will it work on this machine?

`preflight(config)` looks at the machine as the keeper will find it, and returns the problems
that would otherwise show only at run time, each one line naming the config key:
- errors: a state or sink directory that cannot be created or written, a reload, running or
  sink command whose program does not exist, a hook that is not executable;
- warnings: certificate paths or globs that match no file (yet).
It writes nothing: a directory's writability is tried with a temporary file in the nearest
directory that exists, removed at once.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import shlex
import shutil
import stat
import string
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mustaple.adapters.config import HOOK_EVENTS, Config

__all__ = ["Preflight", "preflight"]

# Shell words that are not programs looked up in PATH: the POSIX special and regular
# built-ins, the reserved words, and what dash and bash build in besides (a command starting
# with one runs whatever PATH holds).
_BUILT_IN = """
    } ) [ [[ . : alias bg break builtin case cd command continue declare do done echo elif
    else esac eval exec exit export false fc fg fi for function getopts hash if in jobs kill
    let local newgrp printf pwd read readonly return select set shift source test then time
    times trap true type typeset ulimit umask unalias unset until wait while
"""
_SHELL_WORDS = frozenset(_BUILT_IN.split())
_OPENERS = frozenset(["(", "{", "!"])  # a subshell, a group, a negation: the command follows
_CLOSERS = frozenset([")", "}"])  # the end of a subshell or a group: the next command follows
# Built-ins that change nothing for the commands after them (no directory, PATH, function)
_HARMLESS = frozenset([":", "true", "false", "echo", "printf", "test", "[", "[[", "kill", "pwd"])
# Redirection operators, as shlex reads them (punctuation runs); a word follows each.
_REDIRECTIONS = frozenset(["<", ">", ">>", "<<", "<&", ">&", "<>", ">|", "&>", "&>>"])


@dataclass
class Preflight:
    """Problems that would stop the keeper (errors) or that it would only log (warnings)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def preflight(config: Config) -> Preflight:
    """Check `config` against this machine; each finding names the file and the key."""
    found = Preflight()
    where = f"{config.path}: "
    matched = _certificates(config, found)
    problem = _unwritable(config.state_dir)
    if problem:
        found.errors.append(f"{where}state_dir: {problem}")
    for name, table in config.sinks.items():
        found.errors += [f"{where}sinks.{name}.{p}" for p in _sink(table, matched.get(name, []))]
    for event in HOOK_EVENTS:
        command = config.hooks.command(event)
        problem = _missing_program(command) if command else None
        if problem:
            found.errors.append(f"{where}hooks.{event}: {problem}")
    return found


def _certificates(config: Config, found: Preflight) -> dict[str, list[Path]]:
    """Note what the [[certificates]] entries name that is not there (a glob matching no file
    yet, an issuer file that cannot be read); return the files each sink is given."""
    matched: dict[str, list[Path]] = {}
    for i, entry in enumerate(config.certificates):
        key = f"{config.path}: certificates[{i}]"
        for pattern in entry.paths:
            files = _matches(pattern)
            if not files:
                found.warnings.append(f"{key}.paths: {pattern!r} matches no file yet")
            for sink in entry.sinks if entry.sinks is not None else tuple(config.sinks):
                matched.setdefault(sink, []).extend(files)
        problem = _unreadable(entry.issuer) if entry.issuer is not None else None
        if problem:
            found.errors.append(f"{key}.issuer: {problem}")
    return matched


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


def _sink(table: Mapping[str, object], certs: list[Path]) -> Iterator[str]:
    """'KEY: problem' for each problem of one sink."""
    for key in ("reload", "command", "running"):
        command = table.get(key)
        problem = _missing_program(command) if isinstance(command, str) else None
        if problem:
            yield f"{key}: {problem}"
    for key, directory in _sink_dirs(table, certs):
        problem = _unwritable(directory)
        if problem:
            yield f"{key}: {problem}"


def _sink_dirs(table: Mapping[str, object], certs: list[Path]) -> Iterator[tuple[str, Path]]:
    """The directories a sink writes into, as far as they are known before any certificate."""
    kind, path, ocsp_dir = table.get("type"), table.get("path"), table.get("ocsp_dir")
    if kind == "file" and isinstance(path, str):
        fixed = _fixed_prefix(path)
        if fixed is not None:
            yield "path", fixed
    elif kind == "haproxy" and isinstance(ocsp_dir, str):
        yield "ocsp_dir", Path(ocsp_dir)
    elif kind == "haproxy":
        for directory in sorted({cert.parent for cert in certs}):
            yield "ocsp_dir", directory  # beside each certificate (no ocsp_dir)


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
        return f"{directory} cannot be {verb}: {exc.strerror}"
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


_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def _missing_program(command: str) -> str | None:
    """Why a program a shell command starts cannot run (the first such), or None if each can
    (or this cannot tell)."""
    for program in _programs(command):
        problem = _cannot_run(program)
        if problem is not None:
            return problem
    return None


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


def _programs(command: str) -> list[str]:
    """The programs the shell looks up for `command`: one for each simple command of its
    `&&`, `||`, `;`, `|` and `&` chains, in order, up to the first command that may change
    how the next ones are found or that only running tells (see `_program`). A small
    reader, no shell: bad quoting gives none (the shell will say)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:
        return []
    programs = []
    while words:
        program, go_on = _program(words)
        while words and not _separator(words.pop(0)):
            pass  # its arguments, up to and with the separator
        if program is not None:
            programs.append(program)
        if not go_on:
            break
    return programs


def _program(words: list[str]) -> tuple[str | None, bool]:
    """The program of the simple command `words` begin with, past a subshell's "(" (a
    group's "{", a "!"), leading redirections and VAR=value words (None for a command of
    nothing else, or of a built-in that changes nothing for the next: `echo`, `true`), and
    whether the commands after it can still be judged: not after a built-in or reserved
    word that may (`cd`, `export`, `if`), a function it defines, a PATH= word, or a name the
    shell expands first. Takes the words read off `words`."""
    while words and not _separator(words[0]):
        word = words.pop(0)
        if word.isdigit() and words and words[0] in _REDIRECTIONS:
            word = words.pop(0)  # 2>FILE: the descriptor's number, then its operator
        if word in _REDIRECTIONS:
            del words[:1]  # the file it names
        elif word in _OPENERS or word in _CLOSERS:
            continue
        elif _ASSIGNMENT.match(word) and word.startswith("PATH="):
            return None, False  # looked up in another PATH than ours
        elif word in _HARMLESS:
            return None, True
        elif word in _SHELL_WORDS or word.startswith("~") or any(c in word for c in "$`*?["):
            return None, False  # a built-in, or a name the shell expands first: cannot tell
        elif words and words[0] in ("(", "()"):
            return None, False  # `f() { ...; }`: a function, defined by the command itself
        elif not _ASSIGNMENT.match(word):
            return word, True
    return None, True


def _separator(word: str) -> bool:
    """Whether `word` ends a simple command: `;`, `&&`, `||`, `|`, `&`, as shlex reads them
    (with a ")" run into them: `(a)&&b`), never a redirection such as `>&`."""
    return word not in _REDIRECTIONS and set(word) <= set("();&|") and any(c in word for c in ";&|")
