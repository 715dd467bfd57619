"""Certificate files read ahead of their loads, a daemon thread per group (a
`[[certificates]]` entry) given a patience, so that a read that hangs holds up only its group.

A file whose stat answers may still hang on its read (an NFS attribute cache, a FUSE daemon
that answers look-ups only), and nothing cuts a read short: made on an event loop, it holds
up everything the loop does (the keeper's passes, the local responder, a worker process's
fetches and signs of life) for as long. So the keeper's process and each worker process read
the files a batch of loads needs first, group by group, each group's reads in a thread of its
`Patient` (`mustaple.adapters.patience`), and the loads take the bytes (`Reader`). A file the
reads did not reach (its read did not answer within the patience, or an earlier one of its
group did not, or still does not from an earlier batch) fails its load with `FilesHang`
saying which; an error reading a file is raised by its own load, as a read there would, and
so is a thread that could not be started for its group.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path

from mustaple.adapters.files import read_input
from mustaple.adapters.loader import Reader
from mustaple.adapters.patience import FilesHang, NoThread, Patient
from mustaple.core.render import human_duration

__all__ = ["Group", "ReadAhead", "by_entry"]

Got = dict[str, bytes | Exception]  # a path: its bytes, or the error its load raises
Group = tuple[str, ...]  # the files' `[[certificates]]` entry (its paths)


class ReadAhead:
    """The reads of certificate files, a `Patient` per group of files (see the module)."""

    def __init__(self) -> None:
        self._patients: dict[Group, Patient] = {}

    async def read(self, groups: Mapping[Group, Mapping[str, str]], patience: timedelta) -> Reader:
        """Every file of `groups` (group: {path: what it is, for its error line}) read now,
        one group after another, each given `patience` (a group met for the first time
        keeps it); the `Reader` of what was read."""
        got: Got = {}
        patients: dict[str, Patient] = {}
        for group, files in groups.items():
            patient = self._patients.get(group)
            if patient is None:
                patient = self._patients[group] = Patient(patience)
            patients.update(dict.fromkeys(files, patient))
            try:
                await patient.run(functools.partial(_read_into, got, files), next(iter(files)))
            except NoThread as exc:  # not read: each file's load fails saying why
                got.update((path, exc) for path in files if path not in got)
            except FilesHang:
                pass  # what was read before it is in `got`
        return functools.partial(_taken, got, patients)


def by_entry(
    files: Iterable[tuple[str | Path, str | Path | None, Group]],
) -> dict[Group, dict[str, str]]:
    """What `ReadAhead.read` reads for the loads of `files` (certificate file, its issuer
    file or None, its entry)."""
    groups: dict[Group, dict[str, str]] = {}
    for cert, issuer, group in files:
        wanted = groups.setdefault(group, {})
        wanted[str(cert)] = "certificate"
        if issuer is not None:
            wanted[str(issuer)] = "issuer certificate"
    return groups


def _read_into(got: Got, files: Mapping[str, str], at: list[object]) -> None:
    """Each of `files` read into `got`, in order, `at[0]` at the file being read."""
    for path, what in files.items():
        at[0] = path
        try:
            got[path] = read_input(path, what)
        except Exception as exc:  # raised by its load: a fault in one file stays there
            got[path] = exc


async def _taken(got: Got, patients: dict[str, Patient], path: str | Path, what: str) -> bytes:
    """A `Reader` of what `_read_into` read: FilesHang, saying why, for a file not reached."""
    found = got.get(str(path))
    if found is None:
        raise FilesHang(_not_read(str(path), patients.get(str(path))))
    if isinstance(found, Exception):
        raise found.with_traceback(None)  # one issuer file's error, raised for each leaf
    return found


def _not_read(path: str, patient: Patient | None) -> str:
    """Why `path` was not read: its read did not answer, or an earlier one of its group."""
    if patient is None:
        return "it was not read"
    waiting = patient.waiting_at
    if waiting is None or str(waiting) == path:
        waited = human_duration(patient.patience.total_seconds())
        return f"its read has not answered in {waited} {_HANG}"
    return f"not read while the read of {waiting}, of the same entry, has not answered {_HANG}"


_HANG = "(a file system that hangs, such as an NFS server gone away?)"
