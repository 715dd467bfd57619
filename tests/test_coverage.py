"""Which configured file and entry a given path is: the pattern match agrees with glob itself
on a real tree, the first entry wins, and what no pattern matches as written is found
through the listing, with links and relative paths resolved."""

from __future__ import annotations

import glob
from dataclasses import replace
from pathlib import Path

import pytest

from mustaple.adapters.config import CertEntry, Config
from mustaple.adapters.coverage import Coverage, configured_files
from mustaple.core.errors import InputError

NAMES = [
    "live/a.test/fullchain.pem",
    "live/b.test/fullchain.pem",
    "live/b.test/cert.pem",
    "live/.hidden/fullchain.pem",
    "live/c.test/.fullchain.pem",
    "live/[x]/fullchain.pem",
    "live/d.test/sub/fullchain.pem",
    "live/e?/fullchain.pem",
    "other/a.test.pem",
    "other/A.TEST.pem",
    "other/x.pem.bak",
]
PATTERNS = [
    "live/*/fullchain.pem",
    "live/*/*.pem",
    "live/.*/fullchain.pem",
    "live/*/.*.pem",
    "live/?.test/*",
    "live/[ab].test/fullchain.pem",
    "live/[!a].test/fullchain.pem",
    "live/[[]x]/fullchain.pem",
    "live/**/fullchain.pem",
    "live/*/sub/fullchain.pem",
    "live/e[?]/fullchain.pem",
    "other/*.pem",
    "other/a.*.pem",
    "other/*",
    "*/a.test/fullchain.pem",
    "live/a.test/fullchain.pem",
]


def config(tmp: Path, *entries: tuple[str, ...]) -> Config:
    return Config(
        path=tmp / "mustaple.toml",
        state_dir=tmp / "state",
        certificates=tuple(
            CertEntry(paths=tuple(str(tmp / p) for p in paths)) for paths in entries
        ),
        sinks={},
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in NAMES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    return tmp_path


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_pattern_covers_exactly_what_glob_lists(tree: Path, pattern: str) -> None:
    covered = Coverage(config(tree, (pattern,)))
    entry = covered.config.certificates[0]
    listed = {Path(name) for name in glob.glob(str(tree / pattern))}
    assert listed, f"{pattern} lists nothing here: the tree does not test it"
    for path in listed:
        assert covered.find(path) == (path, entry)
    assert "resolved" not in vars(covered)  # found without listing anything
    for path in {tree / name for name in NAMES} - listed:
        with pytest.raises(InputError, match="covers this file"):
            covered.find(path)


def test_a_path_glob_would_never_list_is_not_covered_by_its_look(tree: Path) -> None:
    """glob lists no "..": a hidden-name pattern does not cover a path climbing out through
    it; a pattern ending with a separator lists directories only, never a file."""
    (tree / "fullchain.pem").write_text("x")  # outside every pattern
    hidden = Coverage(config(tree, ("live/.*/fullchain.pem",)))
    with pytest.raises(InputError, match="covers this file"):
        hidden.find(tree / "live/../fullchain.pem")
    assert str(tree / "live/../fullchain.pem") not in glob.glob(str(tree / "live/.*/*"))
    climbing = tree / "live/b.test/../.hidden/fullchain.pem"
    assert hidden.find(climbing)[0] == tree / "live/.hidden/fullchain.pem"  # resolved
    slashed = (f"{tree}/live/*/", f"{tree}/other/*/")  # as written: a Path drops the slash
    directories = Coverage(replace(config(tree), certificates=(CertEntry(paths=slashed),)))
    assert f"{tree}/live/a.test/" in glob.glob(slashed[0])
    assert glob.glob(slashed[1]) == []  # files only there
    with pytest.raises(InputError, match="covers this file"):
        directories.find(tree / "other/a.test.pem")


def test_the_first_entry_to_cover_a_file_wins(tree: Path) -> None:
    cfg = config(tree, ("other/*.pem",), ("live/*/fullchain.pem", "other/a.*"))
    covered = Coverage(cfg)
    first, second = cfg.certificates
    assert covered.find(tree / "other/a.test.pem")[1] is first
    assert covered.find(tree / "live/a.test/fullchain.pem")[1] is second
    assert configured_files(cfg)[tree / "other/a.test.pem"] is first


def test_a_missing_file_a_pattern_matches_is_covered_and_loading_says_it_is_missing(
    tree: Path,
) -> None:
    covered = Coverage(config(tree, ("live/*/fullchain.pem",)))
    gone = tree / "live/gone.test/fullchain.pem"
    assert covered.find(gone)[0] == gone  # the prime then says "certificate not found"


def test_links_and_relative_paths_are_resolved_against_the_listing(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tree, ("live/*/fullchain.pem",))
    (tree / "archive").symlink_to(tree / "live")
    covered = Coverage(cfg)
    configured = tree / "live/a.test/fullchain.pem"
    assert covered.find(tree / "archive/a.test/fullchain.pem") == (configured, cfg.certificates[0])
    monkeypatch.chdir(tree / "live" / "b.test")
    assert covered.find(Path("fullchain.pem"))[0] == tree / "live/b.test/fullchain.pem"
    with pytest.raises(InputError, match=r"no \[\[certificates\]\] entry .* covers"):
        covered.find(Path("cert.pem"))
    assert Path("cert.pem").exists()  # there, but no entry covers it


def test_a_glob_leaves_out_the_state_and_haproxy_companions(tmp_path: Path) -> None:
    """`paths = [".../certs/*"]` with a HAProxy sink and the state beside: the .ocsp and
    .issuer files the sink writes (and HAProxy's .key and .sctl) next to a matched
    certificate, and the files right in the state directory, are no certificates; one in a
    directory below the state is; a name written out is kept, and a file of such a name
    with no certificate beside it is matched as any other."""
    certs = tmp_path / "certs"
    names = ["a.pem", "a.pem.ocsp", "a.pem.issuer", "a.pem.key", "a.pem.sctl", "b.ocsp"]
    names += ["state/state.db", "state/signatures.key", "state/tls/c.pem"]
    for name in names:
        (certs / name).parent.mkdir(parents=True, exist_ok=True)
        (certs / name).write_text("x")
    patterns = ("certs/*", "certs/state/*", "certs/state/*/*.pem")
    conf = replace(config(tmp_path, patterns), state_dir=certs / "state")
    assert sorted(p.name for p in configured_files(conf)) == ["a.pem", "b.ocsp", "c.pem"]
    written = config(tmp_path, ("certs/a.pem.ocsp",))
    assert list(configured_files(written)) == [certs / "a.pem.ocsp"]
