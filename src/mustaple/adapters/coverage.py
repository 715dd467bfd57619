"""Which configured certificate files there are, and which configured file and entry a path
given on the command line is.

`configured_files(config)` lists every configured file that exists now, with its entry (the
first entry to cover a file wins). `Coverage(config).find(given)` names the configured file
and entry of one path: an absolute path is matched against the entries' patterns as `glob`
would match it (part by part; a name starting with '.' only by a pattern part starting with
'.'), with no directory listed, so priming one file costs the same whatever the number of
configured files; a relative path, one with a ".." in it, or one that matches no pattern as
written (reached through a symlink, such as certbot's `live/`), is looked up among every
configured file, relative paths and symlinks resolved on both sides (a listing of every
pattern, and a system call per path component: only then). A pattern ending with a separator
lists directories only, so it is matched only by that listing.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import os
import re
from collections.abc import Callable, Container, Mapping
from pathlib import Path

from mustaple.adapters.config import CertEntry, Config
from mustaple.core.errors import InputError

__all__ = ["Coverage", "configured_files", "configured_names"]


# HAProxy's files beside a certificate file it loads (mustaple's HAProxy sink writes the first two)
COMPANIONS = (".ocsp", ".issuer", ".key", ".sctl")  # HAProxy's files beside a certificate


def configured_files(
    config: Config, known: Mapping[str, Path] | None = None
) -> dict[Path, CertEntry]:
    """Every configured certificate file that exists now, with its entry (first wins). What a
    glob matches that is no certificate by its place is left out: the files right in the
    state directory, and HAProxy's files beside a certificate file the same glob matches
    (`a.pem.ocsp`, `.issuer`, `.key`, `.sctl`): with `paths = ["/etc/haproxy/certs/*"]`
    they would each be an unusable "certificate" once the sink wrote them. A path written
    out is always kept. A name in `known` is given as its `Path` there (none is made)."""
    known = known or {}
    return {
        known.get(name) or Path(name): entry
        for name, entry in configured_names(config, known).items()
    }


def configured_names(
    config: Config,
    known: Mapping[str, object] | None = None,
    skip: Container[int] = (),
    at: list[object] | None = None,
) -> dict[str, CertEntry]:
    """`configured_files` by name, no `Path` made (a pass over 100k files looks up names),
    but for the entries numbered in `skip` (their place in `config.certificates`). Before
    each pattern is listed, `at` (when given) is set to its entry's number and the pattern:
    what a listing that hangs was doing.

    A glob's names are in sorted order when one of them is not in `known` (a pass that finds
    only known files, every 5 s at 100k, does not sort them: 50 ms in one call)."""
    found: dict[str, CertEntry] = {}
    known = known or {}
    for number, entry in enumerate(config.certificates):
        if number in skip:
            continue
        for pattern in entry.paths:
            if at is not None:
                at[:] = (number, pattern)
            names = glob.glob(pattern)  # a name with no magic: if it exists
            if not all(name in known for name in names):  # in steps: another thread runs
                names.sort()
            if glob.has_magic(pattern):
                names = _certificates_only(names, pattern, config.state_dir)
            for name in names:
                found.setdefault(name, entry)
    return found


def _certificates_only(names: list[str], pattern: str, state_dir: Path) -> list[str]:
    """`names` (listed by `pattern`) without `state_dir`, the files right in it (mustaple's
    own: the database, its key, its lock; certificates kept in a directory below it stay),
    and HAProxy's companions of another name. Plain string tests for each of 100k names."""
    state = os.path.normpath(state_dir)
    folder = os.path.dirname(pattern)
    # with no magic above its last part, every name the pattern lists has the same parent
    parent = None if glob.has_magic(folder) else os.path.dirname(os.path.join(folder, "x"))
    if parent == state:
        return []
    companions = [name for name in names if name.endswith(COMPANIONS)]
    if companions:
        listed = set(names)
        dropped = {name for name in companions if name.rpartition(".")[0] in listed}
        names = [name for name in names if name not in dropped]
    if parent is not None:
        return [name for name in names if name != state]
    return [name for name in names if name != state and os.path.dirname(name) != state]


class Coverage:
    """The configured file and entry of a given path (see the module docstring)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # a pattern ending with a separator lists directories only, never a certificate file
        self.patterns = [
            (_parts(pattern), entry)
            for entry in config.certificates
            for pattern in entry.paths
            if not pattern.endswith(("/", os.sep))
        ]

    @functools.cached_property
    def resolved(self) -> dict[Path, tuple[Path, CertEntry]]:
        files = reversed(list(configured_files(self.config).items()))  # the first entry wins
        return {_resolved(path): (path, entry) for path, entry in files}

    def find(self, given: Path) -> tuple[Path, CertEntry]:
        """The configured path and its entry; InputError when no entry covers `given`."""
        if given.is_absolute() and ".." not in given.parts:  # glob never lists ".."
            parts = given.parts
            for pattern, entry in self.patterns:
                if _matches(pattern, parts):
                    return given, entry
        found = self.resolved.get(_resolved(given))
        if found is None:
            raise InputError(
                f"{given}: no [[certificates]] entry of {self.config.path} covers this file: "
                "add it (or a glob matching it) to an entry's `paths`"
            )
        return found


_Part = Callable[[str], bool]  # whether a name matches one part of a pattern


def _parts(pattern: str) -> tuple[_Part, ...]:
    """A pattern as `glob.glob` reads it, part by part: a part with no magic is a name as
    written; any other is an fnmatch pattern, which lists a name starting with '.' only if it
    starts with '.' itself."""
    return tuple(map(_part, Path(pattern).parts))


def _part(want: str) -> _Part:
    if not glob.has_magic(want):
        return want.__eq__
    match = re.compile(fnmatch.translate(want)).match
    if want.startswith("."):
        return lambda name: match(name) is not None
    return lambda name: not name.startswith(".") and match(name) is not None


def _matches(pattern: tuple[_Part, ...], path: tuple[str, ...]) -> bool:
    """Whether `glob.glob` of a pattern would list `path`, were it there (both as parts)."""
    return len(pattern) == len(path) and all(
        test(name) for test, name in zip(pattern, path, strict=True)
    )


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare as given
        return path.absolute()
