"""The pure reading of a systemd unit's sandbox (mustaple.core.unitfile): which directories
the service may write, as systemd's mount namespace decides it from the unit file and its
drop-ins."""

from __future__ import annotations

import pytest

from mustaple.core.unitfile import Access, Sandbox, UnitError, read_unit, sandbox
from sandbox import UNIT
from sandbox import read_unit as emulated_unit

NAME = "mustaple.service"
FRAGMENT = "/etc/systemd/system/mustaple.service"


def unit(*texts: str) -> Sandbox:
    """The sandbox of a unit file (the first text) and its drop-ins (the others, in order)."""
    files = [(FRAGMENT, texts[0])]
    files += [(f"{FRAGMENT}.d/{i}.conf", text) for i, text in enumerate(texts[1:], start=10)]
    return sandbox(read_unit(NAME, files))


def writable(box: Sandbox, *directories: str) -> list[bool]:
    return [box.refusal(d) is None for d in directories]


def test_drop_ins_add_to_the_lists_and_an_empty_assignment_resets_them() -> None:
    base = "[Service]\nProtectSystem=strict\nReadWritePaths=/srv/a\n"
    assert writable(unit(base), "/srv/a", "/srv/b") == [True, False]
    added = unit(base, "[Service]\nReadWritePaths=/srv/b\n")
    assert writable(added, "/srv/a", "/srv/b") == [True, True]
    reset = unit(base, "[Service]\nReadWritePaths=\nReadWritePaths=/srv/c\n")
    assert writable(reset, "/srv/a", "/srv/b", "/srv/c") == [False, False, True]
    # a later drop-in undoes ProtectSystem= (an empty assignment: the default, off)
    off = unit(base, "[Service]\nReadWritePaths=/srv/b\n", "[Service]\nProtectSystem=\n")
    assert writable(off, "/srv/a", "/srv/z", "/etc") == [True, True, True]
    # the rule that refuses names the drop-in that decided it
    strict_again = unit(base, "[Service]\nProtectSystem=no\n", "[Service]\nProtectSystem=true\n")
    rule = strict_again.refusal("/usr/local/x")
    assert rule is not None
    assert (rule.setting, rule.source) == ("ProtectSystem=true", f"{FRAGMENT}.d/11.conf")


def test_prefixes_quotes_continuations_and_other_sections() -> None:
    box = unit(
        "[Unit]\nReadWritePaths=/not/service\n[Service]\nProtectSystem=strict\n"
        "# ReadWritePaths=/commented\n; ReadWritePaths=/commented/too\n"
        "ReadWritePaths=-/srv/optional +/srv/rooted -+/srv/both \\\n"
        "# a comment inside a continued line is left out\n"
        '  "/srv/with space"   /srv/trailing/ /srv/a/../dotted\n'
        "ReadWritePaths=relative/ignored\n"
        "[Install]\nReadWritePaths=/not/service/either\n"
    )
    assert (
        writable(
            box,
            "/srv/optional/x",
            "/srv/rooted",
            "/srv/both",
            "/srv/with space/x",
            "/srv/trailing",
            "/srv/dotted",
        )
        == [True] * 6
    )
    assert writable(box, "/not/service", "/commented", "/commented/too", "/relative") == [False] * 4


def test_the_three_levels_of_protect_system() -> None:
    places = ("/usr/lib/x", "/boot/x", "/efi/x", "/etc/x", "/var/x", "/srv/x", "/dev/shm", "/sys")
    levels = {
        "no": [True] * 8,
        "yes": [False, False, False, True, True, True, True, True],
        "true": [False, False, False, True, True, True, True, True],
        "full": [False, False, False, False, True, True, True, True],
        "strict": [False, False, False, False, False, False, True, True],
    }
    for level, expected in levels.items():
        box = unit(f"[Service]\nProtectSystem={level}\n")
        assert writable(box, *places) == expected, level
    assert unit("[Service]\n").rules == ()


def test_state_directories_with_several_names_and_their_kin() -> None:
    box = unit(
        "[Service]\nProtectSystem=strict\nStateDirectory=mustaple other/deep\n"
        "StateDirectory=third:link\nCacheDirectory=c\nLogsDirectory=l\nRuntimeDirectory=r\n"
    )
    inside = ("/var/lib/mustaple/staples", "/var/lib/other/deep", "/var/lib/third")
    assert writable(box, *inside, "/var/cache/c", "/var/log/l", "/run/r") == [True] * 6
    # below by path, not by string: /var/lib/mustaple-other is not below /var/lib/mustaple
    assert writable(box, "/var/lib/mustaple-other", "/var/lib/other", "/var/lib") == [False] * 3


def test_read_only_and_inaccessible_paths_win_for_their_subtrees() -> None:
    box = unit(
        "[Service]\nReadOnlyPaths=/etc/haproxy\nReadWritePaths=/etc/haproxy/certs\n"
        "ReadOnlyPaths=/etc/haproxy/certs/private\nInaccessiblePaths=/srv/secret\n"
        "ReadWritePaths=/srv/secret /srv/same\nReadOnlyPaths=/srv/same\n"
    )
    assert writable(box, "/etc/haproxy", "/etc/haproxy/certs", "/etc/haproxy/certs/private/k") == [
        False,
        True,
        False,
    ]
    secret, same = box.refusal("/srv/secret/x"), box.refusal("/srv/same")
    assert secret is not None
    assert secret.access is Access.INACCESSIBLE
    assert same is not None
    assert same.setting == "ReadOnlyPaths=/srv/same"
    assert writable(box, "/srv/other", "/usr") == [True, True]  # no ProtectSystem=


def test_private_tmp_protect_home_and_dynamic_user() -> None:
    box = unit("[Service]\nProtectSystem=strict\nPrivateTmp=yes\nProtectHome=yes\n")
    assert writable(box, "/tmp/x", "/var/tmp/x", "/root/x", "/home/u") == [True, True, False, False]
    hidden = box.refusal("/root/x")
    assert hidden is not None
    assert hidden.access is Access.INACCESSIBLE
    read_only = unit("[Service]\nProtectHome=read-only\n").refusal("/home/u")
    assert read_only is not None
    assert read_only.access is Access.READ_ONLY
    dynamic = unit("[Service]\nDynamicUser=yes\nStateDirectory=m\n")
    assert writable(dynamic, "/var/lib/m", "/tmp/x", "/etc/x", "/home/u") == [
        True,
        True,
        False,
        False,
    ]
    assert unit("[Service]\nPrivateTmp=no\nProtectSystem=strict\n").refusal("/tmp/x") is not None


def test_specifiers_are_expanded_and_what_cannot_be_judged_is_one_line() -> None:
    box = unit("[Service]\nProtectSystem=strict\nReadWritePaths=%S/%N-extra %t/%n 100%%/x\n")
    assert writable(box, "/var/lib/mustaple-extra", "/run/mustaple.service") == [True, True]
    problems = {
        "[Service]\nReadWritePaths=%h/x\n": "the specifier %h depends on the machine",
        '[Service]\nReadWritePaths="/srv/x\n': 'ReadWritePaths="/srv/x: a quote is left open',
        "[Service]\nRootDirectory=/srv/root\n": "the service runs in another root",
    }
    for text, said in problems.items():
        with pytest.raises(UnitError, match=said) as caught:
            unit("[Service]\nProtectSystem=strict\n", text)
        assert str(caught.value).startswith(f"{FRAGMENT}.d/10.conf: ")
    with pytest.raises(UnitError, match=rf"^{FRAGMENT}, line 2: a section header without"):
        unit("# x\n[Service\nProtectSystem=strict\n")


def test_the_advice_names_the_directory_the_line_and_the_fix() -> None:
    box = unit(
        "[Service]\nProtectSystem=strict\nReadOnlyPaths=/srv/ro\nReadWritePaths=-/srv/gone\n"
        "InaccessiblePaths=/srv/hidden\n"
    )
    box = Sandbox(box.name, box.rules, missing=frozenset({"/srv/gone"}))

    def said(directory: str, exists: bool = True) -> str:
        rule = box.refusal(directory)
        assert rule is not None, directory
        return box.advice(directory, rule, exists=exists)

    strict = f"(ProtectSystem=strict in {FRAGMENT})"
    edit = "to the unit, e.g. with `systemctl edit mustaple.service` (docs/systemd.md)"
    assert said("/etc/haproxy/certs/") == (
        f"/etc/haproxy/certs is read-only for mustaple.service {strict}: "
        f"add ReadWritePaths=/etc/haproxy/certs {edit}"
    )
    assert said("/etc/exim4/staples", exists=False) == (
        f"/etc/exim4/staples is read-only for mustaple.service {strict}: create "
        f"/etc/exim4/staples (systemd needs it to exist), then add "
        f"ReadWritePaths=/etc/exim4/staples {edit}"
    )
    assert said("/srv/gone", exists=False) == (
        f"/srv/gone is read-only for mustaple.service {strict}: create /srv/gone, which its "
        "ReadWritePaths= names (docs/systemd.md)"
    )
    assert said("/srv/ro") == (
        f"/srv/ro is read-only for mustaple.service (ReadOnlyPaths=/srv/ro in {FRAGMENT}): "
        "take /srv/ro out of that line"
    )
    full = unit("[Service]\nProtectSystem=full\nReadWritePaths=/etc\n")
    etc = full.refusal("/etc")  # at the same path, read-only wins over ReadWritePaths=
    assert etc is not None
    assert full.advice("/etc", etc, exists=True) == (
        f"/etc is read-only for mustaple.service (ProtectSystem=full in {FRAGMENT}): "
        "choose a directory below it, or elsewhere"
    )
    assert said("/srv/hidden/x") == (
        f"/srv/hidden/x is inaccessible to mustaple.service (InaccessiblePaths=/srv/hidden in "
        f"{FRAGMENT}): choose a directory outside /srv/hidden, or remove that setting"
    )


def test_the_example_unit_lets_write_what_the_emulated_sandbox_binds_writable() -> None:
    """tests/sandbox.py mounts the example's writable paths read-write and the rest of the
    file system read-only, with a private /tmp: check-config's reading agrees."""
    box = sandbox(read_unit(NAME, [(str(UNIT), UNIT.read_text())]))
    emulated = emulated_unit()
    assert emulated.one("ProtectSystem") == "strict"
    for path, _ in emulated.writable():
        assert box.refusal(f"{path}/staples") is None, path
    assert emulated.yes("PrivateTmp")
    assert box.refusal("/tmp/x") is None
    for outside in ("/etc/haproxy/certs", "/srv/x", "/var/lib", "/opt/mustaple"):
        assert box.refusal(outside) is not None, outside


def test_a_directory_in_the_private_tmp_is_said_to_be_the_services_own() -> None:
    """Writable under PrivateTmp=, but in a /tmp no server and no shell sees, emptied at each
    stop: a staple written there never reaches a server."""
    box = unit("[Service]\nProtectSystem=strict\nPrivateTmp=yes\n")
    said = box.private("/var/tmp/staples/")
    assert said == (
        f"/var/tmp/staples is private to mustaple.service (PrivateTmp=yes in {FRAGMENT}): "
        "no server, and no mustaple command run from a shell, sees what it writes in its own "
        "/var/tmp, emptied at every stop; choose a directory outside /tmp and /var/tmp"
    )
    assert box.private("/srv/staples") is None
    assert box.private("/tmpfiles") is None
    assert unit("[Service]\nPrivateTmp=no\n").private("/tmp/x") is None
    assert unit("[Service]\nDynamicUser=yes\n").private("/tmp/x") is not None
