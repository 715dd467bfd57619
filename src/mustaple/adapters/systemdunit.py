"""The systemd unit that runs mustaple, found and read as systemd finds it, for
`run --check-config`: which directories it lets mustaple write (the rules themselves are
`mustaple.core.unitfile`'s; this module only finds and reads the files).

The unit is `mustaple.service` in the first of systemd's unit directories that has it (an
/etc file overrides the package's in /usr/lib), or the file `--unit` names. Its drop-ins are
the `*.conf` files of `NAME.d/` beside it and in each of those directories, read in the order
of their file names; of two with the same name, the one in the earlier directory. A unit or a
drop-in linked to /dev/null, or empty, is masked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from mustaple.adapters.files import read_input
from mustaple.core.errors import InputError
from mustaple.core.unitfile import Sandbox, read_unit, sandbox

__all__ = ["DIRECTORIES", "UNIT", "load_sandbox"]

UNIT = "mustaple.service"
# systemd's system unit directories, the first found first (/lib: before merged /usr)
DIRECTORIES = tuple(
    Path(d)
    for d in (
        "/etc/systemd/system",
        "/run/systemd/system",
        "/usr/local/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    )
)
_MAX_UNIT = 1024 * 1024  # bytes of one unit file or drop-in


def load_sandbox(
    unit_file: Path | None = None, directories: Sequence[Path] = DIRECTORIES
) -> Sandbox | None:
    """The sandbox of `unit_file`, or of mustaple.service as systemd finds it in
    `directories`, with its drop-ins; None when there is no such unit or it is masked.

    Raises InputError for a file that cannot be read, UnitError for one that cannot be
    judged; either says so in one line.
    """
    fragment = unit_file if unit_file is not None else _find(UNIT, directories)
    if fragment is None or _masked(fragment):
        return None
    texts = [(str(path), _text(path)) for path in [fragment, *_drop_ins(fragment, directories)]]
    if not texts[0][1].strip():
        return None  # an empty unit file is masked too
    found = sandbox(read_unit(fragment.name, texts))
    missing = frozenset(path for path in found.listed() if not os.path.exists(path))
    return replace(found, missing=missing)


def _find(name: str, directories: Sequence[Path]) -> Path | None:
    return next((d / name for d in directories if os.path.lexists(d / name)), None)


def _masked(path: Path) -> bool:
    return path.is_symlink() and os.path.realpath(path) == os.devnull


def _drop_ins(fragment: Path, directories: Sequence[Path]) -> list[Path]:
    """The drop-ins of unit `fragment`, in the order systemd reads them."""
    name = f"{fragment.name}.d"
    chosen: dict[str, Path] = {}
    for folder in [fragment.parent / name, *(d / name for d in directories)]:
        for entry in _listing(folder):
            if entry.name.endswith(".conf"):
                chosen.setdefault(entry.name, entry)
    return [chosen[key] for key in sorted(chosen) if not _masked(chosen[key])]


def _listing(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise InputError(f"{folder}: cannot list the unit's drop-ins ({exc.strerror})") from None


def _text(path: Path) -> str:
    data = read_input(path, "systemd unit file", limit=_MAX_UNIT)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InputError(f"{path}: the systemd unit file is not UTF-8 text") from None
