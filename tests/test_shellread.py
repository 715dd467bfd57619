"""`read_command` reads a reload or hook command as /bin/sh does: which programs it looks up.

The table is checked twice: against what the reader says, and, for the commands it reads
whole, against the real /bin/sh, which runs them with stub programs that write down their
names (each program the shell ran must be one the reader named).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mustaple.core.shellread import Reading, read_command

# (command, the programs read, in order)
READ_WHOLE = [
    # quoting: a quoted operator is an argument, not a separator
    ("echo ';' && a", ("a",)),
    ('echo "a;b" && b', ("b",)),
    ("printf '%s\\n' '|' && a x", ("a",)),
    ("a '&&' b", ("a",)),
    ("a \\; b", ("a",)),
    ('a "x \\" ; y"; b', ("a", "b")),
    ("'a' x; \"b\" y", ("a", "b")),
    ("a\\\n x; b", ("a", "b")),
    # separators
    ("a && b || c; d | e & f", ("a", "b", "c", "d", "e", "f")),
    ("a&&b||c;d|e&f", ("a", "b", "c", "d", "e", "f")),
    ("a\nb\n\nc", ("a", "b", "c")),
    ("a |& b", ("a", "b")),
    ("a # && no-such-program\nb", ("a", "b")),
    ("a x#y && b", ("a", "b")),
    # redirections, descriptors, assignments
    ("a >/dev/null 2>&1 && b </dev/null", ("a", "b")),
    ("2>/dev/null a && >>/tmp/x b", ("a", "b")),
    ("a &>/dev/null; b 3<>/dev/null", ("a", "b")),
    ("FOO=1 BAR='x y' a -s reload", ("a",)),
    ("X=1 && a", ("a",)),
    # compound commands: the commands inside, never the keywords
    ("if a -t; then b reload; fi", ("a", "b")),
    ("if a; then b; elif c; then d; else e; fi", ("a", "b", "c", "d", "e")),
    ("if ! a; then b; fi >/dev/null", ("a", "b")),
    ("while a; do b; done", ("a", "b")),
    ("until a; do b; done", ("a", "b")),
    ("for x in one two; do a $x; done; b", ("a", "b")),
    ("for x\ndo a; done", ("a",)),
    ("{ a; b; } && (c; (d)) || ! e", ("a", "b", "c", "d", "e")),
    ("(a)&&b", ("a", "b")),
    ("[ -f /x ] && a; test -s /y || b", ("a", "b")),
    ("[[ -f /x && -f /y || -n z ]] && a", ("a",)),
    ("echo fi then done; a if", ("a",)),
    # built-ins that run nothing: no program
    (": ; true; false; echo; printf x; kill -HUP 1; pwd", ()),
    # sh -c and $(...): the commands inside are read too
    ("sh -c 'a -t && b -s reload'", ("sh", "a", "b")),
    ('bash -c "a; b | c"', ("bash", "a", "b", "c")),
    ("/bin/sh -ec 'a' sh arg", ("/bin/sh", "a")),
    ("dash -o errexit -c 'a && b'", ("dash", "a", "b")),
    ("sh /etc/x.sh && a", ("sh", "a")),
    ("kill -HUP $(a /run/x.pid)", ("a",)),
    ('b "$(a ")" x)" && c', ("a", "b", "c")),
    ("X=$(a) b; c >$(d)", ("a", "b", "d", "c")),
    ("b $(a $(c))", ("c", "a", "b")),
    ("echo $((1 + 2)) ${X:-y}; a", ("a",)),
    # prefixes: the program they start
    ("exec a -g 'daemon off;'", ("a",)),
    ("exec >/dev/null; a", ("a",)),
    ("command a && c", ("a", "c")),
    ("env -- A=1 a", ("env", "a")),
    ("env -u X a", ("env", "a")),
    ("nice -n 5 a; nice -10 b; nice --adjustment=3 c", ("nice", "a", "nice", "b", "nice", "c")),
    ("timeout 10 a; timeout -s KILL -k 5 10s b", ("timeout", "a", "timeout", "b")),
    ("timeout --preserve-status 5 sh -c 'a'", ("timeout", "sh", "a")),
    ("nohup a; setsid -w b", ("nohup", "a", "setsid", "b")),
    ("nice env A=1 timeout 5 a", ("nice", "env", "timeout", "a")),
    # case: the commands of every clause, not the word nor the patterns
    ("a; case x in x) b;; *) c;; esac", ("a", "b", "c")),
    (
        'case "$MUSTAPLE_EVENT" in\n  failure|expired) a -s;;\n  (revoked) b; c ;;\nesac; d',
        ("a", "b", "c", "d"),
    ),
    ("case $(a) in y) b ;& z) c; esac", ("a", "b", "c")),
    ("case in in\n\nin) b;;\nesac", ("b",)),
    ("case x in x) cd /y; b;; esac; c", ()),
]

# The reader stops there, saying nothing: only running tells what comes after.
STOPS = [
    ("cd /etc && a", ()),
    ("a; cd /etc; b", ("a",)),
    ("a; export PATH=/x; b", ("a",)),
    ("PATH=/x; a", ()),
    ("PATH=/x a; b", ("b",)),  # PATH= for one command: that one alone is not judged
    ("PATH=/x /bin/a; b", ("/bin/a", "b")),  # a name with a / does not use PATH
    ("$X -s reload; a", ()),
    ('"$X"; a', ()),
    ("~/bin/x; a", ()),
    ("/usr/*/x; a", ()),
    ("{a,b}; c", ()),
    ("a; . /etc/profile; b", ("a",)),
    ('eval "$CMD"; a', ()),
    ("exec a; b", ("a",)),
    ("exit 0; a", ()),
    ("(cd /etc && a) && b", ("b",)),  # a subshell's cd stays in it
    ("(a; (cd /x; c); d) && b", ("a", "d", "b")),
    ("sh -c 'cd /x; a' && b", ("sh", "b")),
    ("b $(cd /x; a) && c", ("b", "c")),
    ("for PATH in /x; do a; done", ()),
    ("command -p a; b", ("b",)),
    ("env -i a; env PATH=/x b; env -i /bin/c", ("env", "env", "env", "/bin/c")),
    ("sudo a; sudo -u www /usr/sbin/b; sudo -i c", ("sudo", "sudo", "/usr/sbin/b", "sudo")),
    ("bash -lc a; sh -nc b; bash --norc -c c", ("bash", "sh", "bash")),
    ("time a; b", ()),
]

# What the reader does not read: said, with the programs before it.
UNREAD = [
    ("cat <<EOF\nhi\nEOF", (), "it has a here-document (<<)"),
    ("a; b <<-EOF\n\tx\n\tEOF", (), "it has a here-document (<<)"),
    ("echo `a`; b", (), "it has a command substitution in backquotes (`...`)"),
    ('a "`b`"', (), "it has a command substitution in backquotes (`...`)"),
    ("a; f() { b; }; f", ("a",), "it defines a function"),
    ("function f { b; }; f", (), "it defines a function"),
    ("a; x=(1 2) b", ("a",), "it assigns a bash array (NAME=(...))"),
    ("a; case $1 in x) b", ("a", "b"), "a case without esac"),
    ("case x y in x) a;; esac", (), "a case without in"),
    ("case x in x a;; esac", (), "a case pattern without ) (a case inside $(...) is not read)"),
    (
        "echo $(case x in a) b;; esac)",
        (),
        "a case pattern without ) (a case inside $(...) is not read)",
    ),
    ("(cd /x; case y in z) a;; esac); b", (), "it has a case statement"),
    ("select x in a b; do c; done", (), "it has a select loop"),
    ("a && ((n > 1)) && b", ("a",), "it has an arithmetic command ((...))"),
    ("diff <(a) b", (), "it has a process substitution (<(...))"),
    ("a 'x", (), "a ' quote is never closed"),
    ('a "x', (), 'a " quote is never closed'),
    ("a $(b", (), "a $( is never closed"),
    ("a ${X", (), "a ${ is never closed"),
    ("a; b)", ("a", "b"), "a ) closes nothing"),
    ("a ;; b", ("a",), ";; outside a case statement"),
    ("a; b >", ("a",), "a redirection names no file"),
    ("for x in y", (), "a for loop without do"),
    ("[[ -f x", (), "a [[ without ]]"),
    (
        'a; sh -c "b $X"',
        ("a", "sh"),
        "its sh -c string holds an expansion ($...) that the outer shell makes first",
    ),
]


# Names the command looks for before it runs them: (command, programs, probed).
PROBES = [
    ("command a && command -v b && c", ("a", "c"), {"b"}),
    ("command -v a >/dev/null && a reload || true", ("a",), {"a"}),
    ("if command -v a; then a reload; else b reload; fi", ("a", "b"), {"a"}),
    ("command -pv a b; c", ("c",), {"a", "b"}),
    ("which -s a && a; /usr/bin/which b", ("which", "a", "/usr/bin/which"), {"a", "b"}),
    ("command -v $X && a", ("a",), set()),
]


@pytest.mark.parametrize(("command", "programs"), READ_WHOLE + STOPS)
def test_the_programs_the_shell_looks_up(command: str, programs: tuple[str, ...]) -> None:
    assert read_command(command) == Reading(programs)


@pytest.mark.parametrize(("command", "programs", "probed"), PROBES)
def test_the_names_a_command_looks_for_first(
    command: str, programs: tuple[str, ...], probed: set[str]
) -> None:
    assert read_command(command) == Reading(programs, probed=frozenset(probed))


@pytest.mark.parametrize(("command", "programs", "why"), UNREAD)
def test_what_is_not_read_is_said(command: str, programs: tuple[str, ...], why: str) -> None:
    assert read_command(command) == Reading(programs, why)


# Commands of READ_WHOLE that the real sh runs here, to their end, with stubs for the
# programs a to f: not bash's |& and [[, nor a loop that never ends or never starts.
STUBS = "abcdef"
REAL = {"/bin/sh", "sh", "bash", "dash", "env", "nice", "timeout", "nohup", "setsid"}
RUNNABLE = [
    (command, programs)
    for command, programs in READ_WHOLE
    if set(programs) <= set(STUBS) | REAL and set(programs) & set(STUBS)
    if not any(word in command for word in ("|&", "[[", "while", "for x\n", "/etc/", ";&"))
]


@pytest.mark.parametrize(("command", "programs"), RUNNABLE)
def test_every_program_the_real_shell_runs_was_read(
    tmp_path: Path, command: str, programs: tuple[str, ...]
) -> None:
    """/bin/sh runs the command with stub programs (a, b, ... first in PATH) that each write
    their name down and succeed: each name written is one the reader gave."""
    stubs, log = tmp_path / "bin", tmp_path / "ran"
    stubs.mkdir()
    for name in STUBS:
        (stubs / name).write_text(f'#!/bin/sh\necho {name} >>"{log}"\n')
        (stubs / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
    subprocess.run(["sh", "-c", command], env=env, cwd=tmp_path, check=False, timeout=30)
    ran = log.read_text().split() if log.exists() else []
    assert ran, "the shell ran none of the stubs"
    assert set(ran) <= set(programs)


SHELL_TEXT = st.text(alphabet=st.sampled_from(list("ab c;&|()<>'\"\\$`{}!#=~*\n-")), max_size=40)
WORDS = st.sampled_from(["if", "then", "fi", "do", "done", "for", "x", "in", "sh", "-c", "exec"])


@settings(max_examples=2000, deadline=None)
@given(st.lists(SHELL_TEXT | WORDS, max_size=8).map(" ".join))
def test_any_text_is_read_without_raising(command: str) -> None:
    """Whatever the text, a Reading: an exception would be a traceback in check-config."""
    reading = read_command(command)
    assert all(isinstance(program, str) for program in reading.programs)
