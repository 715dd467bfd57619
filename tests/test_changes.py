"""`Changes`: which entries' certificate files need a look, from real file events on real
directories (a flat directory, certbot's `live` and `archive` links, a Kubernetes secret's
`..data` swap, an `issuer` file elsewhere). Each look is made as the keeper's survey makes it
(the pattern listed, its files handed over); the time is passed in. What it cannot watch: a
file system whose changes the kernel does not see (/proc), the watch limit and no inotify at
all (both set low in a user namespace of its own, a real kernel limit)."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mustaple.keeper.changes import Changes, pattern_dirs
from test_inotify import in_user_namespace

T0 = datetime(2026, 12, 7, tzinfo=UTC)
RESCAN = timedelta(minutes=10)
SECOND = timedelta(seconds=1)


def looked(changes: Changes, number: int, began: datetime, fresh: bool = True) -> None:
    """A look at entry `number` as the survey makes it: its patterns listed, each file
    handed over (all of them `fresh`: new or changed)."""
    names = [name for p in changes.entries[number][0] for name in sorted(glob.glob(p))]
    changes.looked(number, began, names, set(names) if fresh else set(), [number, ""])


def settled(changes: Changes, now: datetime = T0) -> frozenset[int]:
    """Each entry looked at twice (the first look sets the watches up), then what is quiet."""
    for when in (now, now + SECOND):
        changes.quiet(when)
        for number in range(len(changes.entries)):
            looked(changes, number, when)
    return changes.quiet(now + 2 * SECOND)


@pytest.fixture
def opened() -> Iterator[Callable[..., Changes]]:
    made: list[Changes] = []

    def open_changes(*entries: tuple[str, ...] | tuple[str, Path]) -> Changes:
        changes = Changes([((e[0],), Path(e[1]) if len(e) > 1 else None) for e in entries], RESCAN)
        made.append(changes)
        return changes

    yield open_changes
    for changes in made:
        changes.close()


def flat(tmp_path: Path, opened: Callable[..., Changes]) -> tuple[Path, Changes]:
    """`tmp_path/certs/*.pem` with one file, settled: quiet."""
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "a.pem").write_text("a")
    changes = opened((f"{certs}/*.pem",))
    assert settled(changes) == {0}
    return certs, changes


def test_a_flat_directory_is_quiet_until_something_changes_in_it(
    tmp_path: Path, opened: Callable[..., Changes]
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "a.pem").write_text("a")
    changes = opened((f"{certs}/*.pem",))
    assert changes.quiet(T0) == frozenset()  # never looked at
    looked(changes, 0, T0)
    assert changes.quiet(T0 + SECOND) == frozenset()  # the first look set the watches up
    looked(changes, 0, T0 + SECOND)
    assert changes.quiet(T0 + 2 * SECOND) == {0}
    (tmp_path / "beside").write_text("x")  # in a directory above, another name
    assert changes.quiet(T0 + 3 * SECOND) == {0}
    (certs / "b.pem").write_text("b")
    assert changes.quiet(T0 + 4 * SECOND) == frozenset()
    looked(changes, 0, T0 + 4 * SECOND)  # its directories were watched: quiet again
    assert changes.quiet(T0 + 5 * SECOND) == {0}
    assert changes.quiet(T0 + 4 * SECOND + RESCAN - SECOND) == {0}
    assert changes.quiet(T0 + 4 * SECOND + RESCAN) == frozenset()  # the rescan is due


@pytest.mark.parametrize(
    "change",
    [
        "new file",
        "written",
        "touched",
        "removed",
        "replaced by a rename",
        "directory renamed",
        "directory above renamed",
        "issuer written",
    ],
)
def test_each_change_to_a_file_or_its_directories_calls_for_a_look(
    tmp_path: Path, opened: Callable[..., Changes], change: str
) -> None:
    certs, issuers = tmp_path / "etc" / "certs", tmp_path / "issuers"
    certs.mkdir(parents=True)
    issuers.mkdir()
    (certs / "a.pem").write_text("a")
    (issuers / "ca.pem").write_text("ca")
    (tmp_path / "new").write_text("n")
    changes = opened((f"{certs}/*.pem", issuers / "ca.pem"))
    assert settled(changes) == {0}
    changed: dict[str, Callable[[], object]] = {
        "new file": lambda: (certs / "b.pem").write_text("b"),
        "written": lambda: (certs / "a.pem").write_text("A"),
        "touched": lambda: os.utime(certs / "a.pem", (1, 1)),
        "removed": (certs / "a.pem").unlink,
        "replaced by a rename": lambda: (tmp_path / "new").rename(certs / "a.pem"),
        "directory renamed": lambda: certs.rename(certs.with_name("old")),
        "directory above renamed": lambda: (tmp_path / "etc").rename(tmp_path / "old"),
        "issuer written": lambda: (issuers / "ca.pem").write_text("CA"),
    }
    changed[change]()
    assert changes.quiet(T0 + 3 * SECOND) == frozenset()


def test_certbots_links_are_followed_to_their_files(
    tmp_path: Path, opened: Callable[..., Changes]
) -> None:
    live, archive = tmp_path / "live", tmp_path / "archive"
    for name in ("a.example", "b.example"):
        (archive / name).mkdir(parents=True)
        (archive / name / "fullchain1.pem").write_text("1")
        (live / name).mkdir(parents=True)
        os.symlink(f"../../archive/{name}/fullchain1.pem", live / name / "fullchain.pem")
    changes = opened((f"{live}/*/fullchain.pem",))
    assert settled(changes) == {0}
    (archive / "a.example" / "fullchain1.pem").write_text("in place")  # through the link
    assert changes.quiet(T0 + 3 * SECOND) == frozenset()
    assert settled(changes, T0 + 4 * SECOND) == {0}
    (archive / "b.example" / "fullchain2.pem").write_text("2")  # a renewal: the new file
    assert changes.quiet(T0 + 7 * SECOND) == {0}  # names no file of the entry yet,
    (live / "b.example" / "fullchain.pem").unlink()  # then the link is moved to it
    os.symlink("../../archive/b.example/fullchain2.pem", live / "b.example" / "fullchain.pem")
    assert changes.quiet(T0 + 11 * SECOND) == frozenset()
    assert settled(changes, T0 + 12 * SECOND) == {0}
    (live / "c.example").mkdir()  # a new certificate's directory, its link to come
    assert changes.quiet(T0 + 15 * SECOND) == frozenset()
    assert settled(changes, T0 + 16 * SECOND) == {0}  # its directory watched, still empty
    (archive / "c.example").mkdir()
    assert changes.quiet(T0 + 19 * SECOND) == {0}  # the archive alone names nothing
    (archive / "c.example" / "fullchain1.pem").write_text("1")
    os.symlink("../../archive/c.example/fullchain1.pem", live / "c.example" / "fullchain.pem")
    assert changes.quiet(T0 + 20 * SECOND) == frozenset()


def test_a_kubernetes_secrets_swap_is_seen(tmp_path: Path, opened: Callable[..., Changes]) -> None:
    """The kubelet writes a new timestamped directory, points `..data` at it by a rename,
    then removes the old one; `tls.crt` is a link through `..data`."""
    secret = tmp_path / "tls"
    (secret / "..2026_12_07_1").mkdir(parents=True)
    (secret / "..2026_12_07_1" / "tls.crt").write_text("1")
    os.symlink("..2026_12_07_1", secret / "..data")
    os.symlink("..data/tls.crt", secret / "tls.crt")
    changes = opened((f"{secret}/tls.crt",))
    assert settled(changes) == {0}
    (secret / "..2026_12_07_2").mkdir()
    (secret / "..2026_12_07_2" / "tls.crt").write_text("2")
    os.symlink("..2026_12_07_2", secret / "..data_tmp")
    os.rename(secret / "..data_tmp", secret / "..data")
    shutil.rmtree(secret / "..2026_12_07_1")
    assert changes.quiet(T0 + 3 * SECOND) == frozenset()
    assert settled(changes, T0 + 4 * SECOND) == {0}
    (secret / "..2026_12_07_2" / "tls.crt").write_text("written in place")
    assert changes.quiet(T0 + 7 * SECOND) == frozenset()


def test_what_mustaples_sinks_write_beside_the_certificates_calls_for_no_look(
    tmp_path: Path, opened: Callable[..., Changes]
) -> None:
    """HAProxy's `.ocsp` and `.issuer` beside each file of `certs/*`, written through a
    hidden temporary file and a rename; a `file` sink's `{dir}/{stem}.der` beside certbot's
    `live/NAME/fullchain.pem`. A new certificate beside them still counts."""
    haproxy, live = tmp_path / "haproxy", tmp_path / "live" / "a.example"
    haproxy.mkdir()
    (haproxy / "a.pem").write_text("a")
    live.mkdir(parents=True)
    (live / "fullchain.pem").write_text("a")
    changes = opened((f"{haproxy}/*",), (f"{tmp_path}/live/*/fullchain.pem",))
    assert settled(changes) == {0, 1}
    for name in ("a.pem.ocsp", "a.pem.issuer"):
        (haproxy / f".{name}.x1y2z3").write_text("staple")
        (haproxy / f".{name}.x1y2z3").rename(haproxy / name)
    (live / ".fullchain.der.abcdef").write_text("staple")
    (live / ".fullchain.der.abcdef").rename(live / "fullchain.der")
    assert changes.quiet(T0 + 3 * SECOND) == {0, 1}
    (haproxy / "b.pem").write_text("b")
    assert changes.quiet(T0 + 4 * SECOND) == {1}


def test_a_look_that_began_before_a_change_was_read_does_not_make_it_quiet(
    tmp_path: Path, opened: Callable[..., Changes]
) -> None:
    """A look that hung (or was slow) began before the event was read: it may have seen the
    file before the change, so only a look that begins after makes the entry quiet again.
    The same for every entry after an overflow, and for an entry forgotten (its look hung
    or came back)."""
    certs, changes = flat(tmp_path, opened)
    began = T0 + 3 * SECOND
    (certs / "a.pem").write_text("changed")
    assert changes.quiet(T0 + 4 * SECOND) == frozenset()
    looked(changes, 0, began)  # began before the event was read
    assert changes.quiet(T0 + 5 * SECOND) == frozenset()
    looked(changes, 0, T0 + 5 * SECOND)
    assert changes.quiet(T0 + 6 * SECOND) == {0}
    changes.forget(0)
    looked(changes, 0, T0 + 5 * SECOND)
    assert changes.quiet(T0 + 7 * SECOND) == frozenset()
    looked(changes, 0, T0 + 7 * SECOND)
    assert changes.quiet(T0 + 8 * SECOND) == {0}


def test_a_change_in_one_entry_leaves_the_others_quiet(
    tmp_path: Path, opened: Callable[..., Changes]
) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.pem").write_text(name)
    changes = opened((f"{tmp_path}/one/*.pem",), (f"{tmp_path}/two/*.pem",))
    assert settled(changes) == {0, 1}
    (tmp_path / "two" / "a.pem").write_text("changed")
    assert changes.quiet(T0 + 3 * SECOND) == {0}


def test_a_directory_that_goes_and_comes_back(
    tmp_path: Path, opened: Callable[..., Changes]
) -> None:
    certs, changes = flat(tmp_path, opened)
    shutil.rmtree(certs)
    assert changes.quiet(T0 + 3 * SECOND) == frozenset()
    assert settled(changes, T0 + 4 * SECOND) == {0}  # not there: its parent tells
    certs.mkdir()
    assert changes.quiet(T0 + 7 * SECOND) == frozenset()
    assert settled(changes, T0 + 8 * SECOND) == {0}
    (certs / "a.pem").write_text("back")
    assert changes.quiet(T0 + 11 * SECOND) == frozenset()


def test_an_overflow_calls_for_a_look_at_every_entry(
    tmp_path: Path, opened: Callable[..., Changes]
) -> None:
    _, changes = flat(tmp_path, opened)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    for name in ("x0", "x1"):
        (tmp_path / name).write_text("")
    for index in range(limit // 2 + 10):  # events for other names of a watched directory
        os.utime(tmp_path / "x0", (index, index))
        os.utime(tmp_path / "x1", (index, index))
    assert changes.quiet(T0 + 3 * SECOND) == frozenset()


def test_a_file_system_whose_changes_the_kernel_does_not_see_is_looked_at_every_pass(
    opened: Callable[..., Changes], caplog: pytest.LogCaptureFixture
) -> None:
    changes = opened(("/proc/sys/fs/inotify/*",))
    with caplog.at_level(logging.INFO, "mustaple.keeper.changes"):
        assert settled(changes) == frozenset()
        assert settled(changes, T0 + 10 * SECOND) == frozenset()
    (polled,) = changes.polled
    assert polled.paths == ("/proc/sys/fs/inotify/*",)
    assert polled.why.startswith("/proc is on a network or user-space file system")
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == [
        "certificate files: /proc/sys/fs/inotify/* are looked at every watch_interval, not "
        "watched for changes: /proc is on a network or user-space file system, whose "
        "changes file events do not show"
    ]


_IN_NAMESPACE = """
import glob, logging, sys
from datetime import UTC, datetime, timedelta
from mustaple.keeper.changes import Changes
logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
changes = Changes([((sys.argv[1],), None)], timedelta(minutes=10))
t = datetime(2026, 12, 7, tzinfo=UTC)
for step in range(3):
    now = t + timedelta(seconds=step)
    print("quiet", sorted(changes.quiet(now)))
    names = sorted(glob.glob(sys.argv[1]))
    changes.looked(0, now, names, set(names), [0, ""])
print("quiet", sorted(changes.quiet(t + timedelta(seconds=3))))
"""


@pytest.mark.parametrize(
    ("limit", "said"),
    [
        ("max_inotify_watches=3", "the inotify watch limit is reached at /"),
        ("max_inotify_instances=0", "no file events, the kernel gives no inotify instance"),
    ],
)
def test_without_watches_every_file_is_looked_at_every_pass(
    tmp_path: Path, limit: str, said: str
) -> None:
    certs = tmp_path / "a" / "b" / "c" / "certs"
    certs.mkdir(parents=True)
    (certs / "a.pem").write_text("a")
    done = in_user_namespace([limit], [sys.executable, "-c", _IN_NAMESPACE, f"{certs}/*.pem"])
    lines = done.stdout.splitlines()
    assert [line for line in lines if line.startswith("quiet")] == ["quiet []"] * 4
    warnings = [line for line in lines if not line.startswith("quiet")]
    assert len(warnings) == 1, lines  # said once
    assert warnings[0].startswith("certificate files: ")
    assert said in warnings[0]
    assert "fs.inotify.max_user_" in warnings[0]  # what to raise


def test_the_directories_a_pattern_depends_on(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / "live" / name).mkdir(parents=True)
    (tmp_path / "live" / "file").write_text("")
    parts = list(pattern_dirs(f"{tmp_path}/live/*/fullchain.pem"))
    above = [(str(d.parent), d.name) for d in reversed([tmp_path, *tmp_path.parents][:-1])]
    assert parts[: len(above)] == above  # ("/", "tmp") ... each with the next name
    assert sorted(parts[len(above) :], key=str) == [
        (str(tmp_path), "live"),
        (f"{tmp_path}/live", "*"),
        (f"{tmp_path}/live/a", "fullchain.pem"),
        (f"{tmp_path}/live/b", "fullchain.pem"),
    ]
    fixed = [("/", "etc"), ("/etc", "ssl"), ("/etc/ssl", "a.pem")]
    assert list(pattern_dirs("/etc/ssl/a.pem")) == fixed
