"""`mustaple run --check-config` catches what would fail only at run time.

Unwritable directories are made for real with `chattr +i` (immutable: not even root may write
there); programs are looked up on this machine's PATH and file system.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mustaple.cli import main
from mustaple.core.report import ExitCode
from mustaple.testing.pki import CA

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody, root included, can create anything in."""
    directory = tmp_path / "immutable"
    directory.mkdir()
    subprocess.run(["chattr", "+i", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


@pytest.fixture
def cert(tmp_path: Path) -> Path:
    return (
        CA(key_type="ec", ocsp_url="http://127.0.0.1:9/")
        .issue("a.test")
        .write(tmp_path / "live/a.test")
        .fullchain
    )


def _check(
    tmp_path: Path, body: str, capsys: pytest.CaptureFixture[str], state: Path | None = None
) -> tuple[int, str, str]:
    config = tmp_path / "mustaple.toml"
    config.write_text(f'state_dir = "{state or tmp_path / "state"}"\n{body}')
    code = main(["run", "--check-config", "--config", str(config)])
    out, err = capsys.readouterr()
    return code, out, err.replace(f"{config}: ", "")


def _entry(paths: str) -> str:
    return f"[[certificates]]\npaths = [{paths}]\n"


def test_a_glob_that_matches_nothing_is_a_warning(
    tmp_path: Path, cert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = _entry(f'"{cert}", "{tmp_path}/none/*.pem"')
    code, out, err = _check(tmp_path, body, capsys)
    assert code == ExitCode.GOOD
    assert "OK (1 certificate entry, 0 sinks)" in out
    glob = f"'{tmp_path}/none/*.pem'"
    assert err == f"mustaple: warning: certificates[0].paths: {glob} matches no file yet\n"
    code, out, err = _check(tmp_path, _entry(f'"{cert}"'), capsys)
    assert (code, err) == (ExitCode.GOOD, "")


@pytest.mark.parametrize("where", ["under-a-file", "immutable", "immutable-itself"])
def test_a_state_dir_that_cannot_be_created_or_written(
    tmp_path: Path, cert: Path, immutable: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = {
        "under-a-file": cert / "state",
        "immutable": immutable / "state",
        "immutable-itself": immutable,
    }[where]
    code, out, err = _check(tmp_path, _entry(f'"{cert}"'), capsys, state=state)
    assert code == ExitCode.USAGE
    assert out == ""
    assert err.startswith(f"mustaple: state_dir: {state} cannot be ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("kind", ["directory", "device"])
def test_a_state_database_that_is_no_regular_file_is_found_before_the_start(
    tmp_path: Path, cert: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--check-config` said OK, then `run` and `prime` stopped at the state database (a
    directory, a link to /dev/zero): the check now says what they say, exit 2."""
    (tmp_path / "state").mkdir()
    db = tmp_path / "state" / "state.db"
    if kind == "directory":
        db.mkdir()
    else:
        db.symlink_to("/dev/zero")
    code, out, err = _check(tmp_path, _entry(f'"{cert}"'), capsys)
    assert (code, out) == (ExitCode.USAGE, "")
    assert (
        err == f"mustaple: state_dir: {db}: not a regular file (a directory, a FIFO or a "
        "device), so no state database; move it away: prime or run makes a new one\n"
    )


def test_a_state_dir_that_is_a_file_is_said_so_by_run_and_prime(tmp_path: Path, cert: Path) -> None:
    """It said only "(File exists)" (`run`), or "([Errno 17] File exists: ...)" (`prime`)."""
    state = tmp_path / "state"
    state.write_text("")
    config = tmp_path / "mustaple.toml"
    config.write_text(f'state_dir = "{state}"\n{_entry(repr(str(cert)))}')
    for command in (["run"], ["prime", str(cert)]):
        done = subprocess.run(
            [MUSTAPLE, *command, "--config", str(config)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == ExitCode.USAGE, done.stderr
        assert f"File exists: {state} is a file, not a directory)\n" in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1


def test_sink_directories_reload_programs_and_hooks(
    tmp_path: Path, cert: Path, immutable: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o644)
    body = _entry(f'"{cert}"') + (
        f'[sinks.files]\ntype = "file"\npath = "{immutable}/staples/{{name}}.der"\n'
        'reload = "no-such-reloader --now"\n'
        f'[sinks.ha]\ntype = "haproxy"\nsocket = "/run/x.sock"\nocsp_dir = "{immutable}"\n'
        'reload = "/nonexistent/haproxy-reload"\n'
        '[sinks.cmd]\ntype = "command"\ncommand = "PATH=/bin /bin/true && exit 0"\n'
        f'[hooks]\non_revoked = "{hook} now"\non_failure = "{tmp_path}/gone.sh"\n'
        'on_expiring = "logger -t mustaple \\"$MUSTAPLE_NAME\\""\n'
    )
    code, _, err = _check(tmp_path, body, capsys)
    assert code == ExitCode.USAGE
    lines = err.splitlines()
    assert lines[0].startswith("mustaple: sinks.files.reload: 'no-such-reloader' is not found")
    assert lines[1].startswith(f"mustaple: sinks.files.path: {immutable}/staples cannot be created")
    assert lines[2:] == [
        "mustaple: sinks.ha.reload: /nonexistent/haproxy-reload does not exist",
        f"mustaple: sinks.ha.ocsp_dir: {immutable} cannot be written to: Operation not permitted",
        f"mustaple: hooks.on_revoked: {hook} is not executable (chmod +x {hook})",
        f"mustaple: hooks.on_failure: {tmp_path}/gone.sh does not exist",
    ]


def test_commands_the_shell_would_find_are_not_refused(
    tmp_path: Path, cert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the shell expands or looks up elsewhere cannot be judged here: a program found
    through a PATH= prefix, one named through $VAR or ~, and an argument holding "=" are
    not called missing (each runs under sh -c)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "notify.sh").write_text("#!/bin/sh\n")
    (bin_dir / "notify.sh").chmod(0o755)
    body = _entry(f'"{cert}"') + (
        f'[sinks.files]\ntype = "file"\npath = "{tmp_path}/staples/{{name}}.der"\n'
        f'reload = "PATH={bin_dir}:$PATH notify.sh"\n'
        f'[hooks]\non_failure = "D={tmp_path} $D/bin/notify.sh"\n'
        'on_revoked = "~/notify.sh"\n'
        'on_expiring = "env MUSTAPLE=1 true"\n'
    )
    code, _, err = _check(tmp_path, body, capsys)
    assert (code, err) == (ExitCode.GOOD, "")


def test_haproxy_writes_beside_the_certificates(
    tmp_path: Path, immutable: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subprocess.run(["chattr", "-i", str(immutable)], check=True)
    cert = CA(key_type="ec").issue("b.test").write(immutable).fullchain
    subprocess.run(["chattr", "+i", str(immutable)], check=True)
    body = _entry(f'"{cert}"') + '[sinks.ha]\ntype = "haproxy"\nsocket = "/run/x.sock"\n'
    code, _, err = _check(tmp_path, body, capsys)
    assert code == ExitCode.USAGE
    problem = f"{immutable} cannot be written to: Operation not permitted"
    assert err == f"mustaple: sinks.ha.ocsp_dir (not set: beside the certificates): {problem}\n"


def test_a_name_too_long_for_the_file_system_is_one_line(
    tmp_path: Path, cert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Looking such a path up raises ENAMETOOLONG, which crashed check-config and status."""
    long = tmp_path / ("n" * 300)
    body = _entry(f'"{cert}"') + (
        f'[sinks.files]\ntype = "file"\npath = "{long}/{{name}}.der"\n'
        f'[sinks.ha]\ntype = "haproxy"\nsocket = "/run/x.sock"\nocsp_dir = "{long}"\n'
    )
    code, out, err = _check(tmp_path, body, capsys, state=long)
    assert (code, out) == (ExitCode.USAGE, "")
    assert err.splitlines() == [
        f"mustaple: {key}: {long} cannot be used: File name too long"
        for key in ("state_dir", "sinks.files.path", "sinks.ha.ocsp_dir")
    ]
    code = main(["status", "--config", str(tmp_path / "mustaple.toml")])
    out, err = capsys.readouterr()
    assert (code, out) == (ExitCode.USAGE, "")
    assert (
        err == f"mustaple: {long}/state.db: cannot read the state database (File name too long)\n"
    )


@pytest.mark.parametrize("below", ["", "/state"])
def test_a_symbolic_link_loop_is_called_a_loop(
    tmp_path: Path, cert: Path, below: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was called a dangling link (or, under it, not seen at all by status)."""
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "round")
    (tmp_path / "round").symlink_to(loop)
    code, out, err = _check(tmp_path, _entry(f'"{cert}"'), capsys, state=Path(f"{loop}{below}"))
    assert (code, out) == (ExitCode.USAGE, "")
    assert (
        err
        == f"mustaple: state_dir: {loop} is a loop of symbolic links (it leads back to itself)\n"
    )
    assert main(["status", "--config", str(tmp_path / "mustaple.toml")]) == ExitCode.USAGE
    problem = "cannot read the state database (Too many levels of symbolic links)"
    assert capsys.readouterr().err == f"mustaple: {loop}{below}/state.db: {problem}\n"


@pytest.mark.parametrize(
    "command",
    [
        "umask 022; true",
        "ulimit -n 100; true",
        "readonly X=1; times",
        "(cd /tmp && true)",
        "{ umask 077; true; }",
        ">>TMP/hook.log echo hi",
        "2>/dev/null A=1 true",
        "! false",
        "LC_ALL=C; true",
        "X=1 && true",
        # what a command before changes for the ones after it cannot be judged here
        "cd / && bin/true",
        "PATH=/bin; export PATH; true && true",
        # a quoted separator is an argument: what follows it is no program
        'echo ";" no-such-program',
        'printf "%s\\n" "&&" no-such-program',
        "echo a \\| no-such-program",
        # compound commands: the keywords are no programs
        "if true; then true; else false; fi",
        "while false; do :; done; until true; do :; done",
        "for x in a b; do true $x; done",
        # prefixes and shells: the programs they start
        "exec true",
        "nice -n 5 timeout 10 env A=1 true",
        'sh -c "true && echo ok"',
    ],
)
def test_built_ins_subshells_and_redirections_are_not_called_missing(
    tmp_path: Path, cert: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each runs under sh -c; check-config said their first word was no program."""
    command = command.replace("TMP", str(tmp_path))
    assert subprocess.run(["sh", "-c", command], check=False).returncode == 0
    body = _entry(f'"{cert}"') + f"[hooks]\non_failure = '{command}'\n"
    code, _, err = _check(tmp_path, body, capsys)
    assert (code, err) == (ExitCode.GOOD, "")


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        ("2>/dev/null no-such-program --now", "'no-such-program' is not found in PATH"),
        ("( /nonexistent/reload )", "/nonexistent/reload does not exist"),
        ("{ no-such-program; }", "'no-such-program' is not found in PATH"),
        (">/dev/null A=1 /nonexistent/reload", "/nonexistent/reload does not exist"),
        ("LC_ALL=C; no-such-program reload", "'no-such-program' is not found in PATH"),
        # every simple command of a chain, not only the first one
        ("sh -c : && no-such-program reload nginx", "'no-such-program' is not found in PATH"),
        ("sh -n /dev/null||/nonexistent/reload", "/nonexistent/reload does not exist"),
        ("echo reloading; no-such-program reload", "'no-such-program' is not found in PATH"),
        ("sh -c : 2>&1 | no-such-logger -t x", "'no-such-logger' is not found in PATH"),
        ("(sh -c :) && { no-such-program; }", "'no-such-program' is not found in PATH"),
        # the commands inside compound commands, sh -c and $(...)
        ("if true; then no-such-program reload; fi", "'no-such-program' is not found in PATH"),
        ("if ! no-such-check; then :; fi", "'no-such-check' is not found in PATH"),
        ("while false; do /nonexistent/reload; done", "/nonexistent/reload does not exist"),
        ('sh -c "true && no-such-program reload"', "'no-such-program' is not found in PATH"),
        ("kill -HUP $(no-such-cat /run/x.pid)", "'no-such-cat' is not found in PATH"),
        ('echo "&&"; no-such-program', "'no-such-program' is not found in PATH"),
        ("FOO=1 timeout 5 no-such-program", "'no-such-program' is not found in PATH"),
    ],
)
def test_the_program_after_redirections_and_subshells_is_checked(
    tmp_path: Path, cert: Path, command: str, missing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    body = _entry(f'"{cert}"') + f"[hooks]\non_failure = '{command}'\n"
    code, _, err = _check(tmp_path, body, capsys)
    assert code == ExitCode.USAGE
    assert err.startswith(f"mustaple: hooks.on_failure: {missing}")


def test_a_hook_that_does_one_thing_per_event_is_judged_clause_by_clause(
    tmp_path: Path, cert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`case "$MUSTAPLE_EVENT" in ...`: each clause's programs, as the shell may run any of
    them. It was one warning (not judged), and the typo failed at the first failure."""
    hook = 'case "$MUSTAPLE_EVENT" in failure|expired) no-such-pager --page;; *) true;; esac'
    body = _entry(f'"{cert}"') + f"[hooks]\non_failure = '''{hook}'''\n"
    code, _, err = _check(tmp_path, body, capsys)
    assert code == ExitCode.USAGE
    assert err.startswith("mustaple: hooks.on_failure: 'no-such-pager' is not found in PATH")
    body = body.replace("no-such-pager", "logger")
    assert _check(tmp_path, body, capsys)[::2] == (ExitCode.GOOD, "")


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("cat <<EOF\nreloading\nEOF", "it has a here-document (<<)"),
        ("logger `date`", "it has a command substitution in backquotes (`...`)"),
        ("f() { :; }; f", "it defines a function"),
        ("true && f() { :; } && f", "it defines a function"),
        (
            "logger $(case x in x) echo y;; esac)",
            "a case pattern without ) (a case inside $(...) is not read)",
        ),
        (
            'sh -c "true $PWD"',
            "its sh -c string holds an expansion ($...) that the outer shell makes first",
        ),
    ],
)
def test_what_cannot_be_read_is_one_warning_line(
    tmp_path: Path, cert: Path, command: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a verdict either way: one line saying the command was not judged, and why."""
    body = _entry(f'"{cert}"') + f"[hooks]\non_failure = '''{command}'''\n"
    code, out, err = _check(tmp_path, body, capsys)
    assert code == ExitCode.GOOD
    assert "OK (1 certificate entry, 0 sinks)" in out
    assert err == (
        "mustaple: warning: hooks.on_failure: check-config could not judge this command: "
        f"{why}; run it once by hand to check it\n"
    )


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ('echo "unclosed', "Syntax error: Unterminated quoted string"),
        (
            "if nginx -t; then nginx -s reload",
            'Syntax error: end of file unexpected (expecting "fi")',
        ),
        ("nginx -t && (nginx -s reload", 'Syntax error: end of file unexpected (expecting ")")'),
        ("nginx -t && && nginx -s reload", 'Syntax error: "&&" unexpected'),
    ],
)
def test_a_command_the_shell_cannot_read_is_an_error(
    tmp_path: Path, cert: Path, command: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """/bin/sh, which runs every command, reads it (`sh -n`: nothing runs) and refuses it:
    the reload or hook would fail at every run, whatever its programs, so check-config says
    so, in the shell's own words (it used to pass, or say only that it was not judged)."""
    body = _entry(f'"{cert}"') + f"[hooks]\non_failure = '''{command}'''\n"
    code, out, err = _check(tmp_path, body, capsys)
    assert (code, out) == (ExitCode.USAGE, "")
    assert err == (
        f"mustaple: hooks.on_failure: /bin/sh cannot read this command ({why}): it would fail "
        "at every run; fix it\n"
    )


def test_the_real_command_reads_commands_as_the_shell_does(tmp_path: Path, cert: Path) -> None:
    """`mustaple run --check-config` as a process: a typo inside `if` is found, a quoted
    separator is no separator, a here-document is said to be not judged."""
    config = tmp_path / "mustaple.toml"
    head = f'state_dir = "{tmp_path}/state"\n' + _entry(f'"{cert}"')
    sink = f'[sinks.web]\ntype = "file"\npath = "{tmp_path}/staples/{{name}}.der"\n'
    hooks = (
        "[hooks]\non_failure = '''cat <<EOF\nfailed\nEOF'''\n"
        """on_revoked = 'echo "a;b" "&&" no-such-program && sh -c "true; true"'\n"""
    )

    def check(reload: str) -> subprocess.CompletedProcess[str]:
        config.write_text(f"{head}{sink}reload = '{reload}'\n{hooks}")
        command = [MUSTAPLE, "run", "--check-config", "--config", str(config)]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)

    warning = (
        f"mustaple: warning: {config}: hooks.on_failure: check-config could not judge this "
        "command: it has a here-document (<<); run it once by hand to check it"
    )
    typo = check("if nginx-typo -t; then systemctl reload nginx; fi")
    assert (typo.returncode, typo.stdout) == (ExitCode.USAGE, "")
    lines = typo.stderr.splitlines()
    assert lines[0].startswith(
        f"mustaple: {config}: sinks.web.reload: 'nginx-typo' is not found in PATH ("
    )
    assert lines[1:] == [warning]
    fixed = check('if true; then sh -c "true && echo reloaded"; fi')
    assert (fixed.returncode, fixed.stderr) == (ExitCode.GOOD, warning + "\n")
    assert fixed.stdout == f"{config}: OK (1 certificate entry, 1 sink)\n"


def test_a_program_the_command_looks_for_first_is_not_required(tmp_path: Path, cert: Path) -> None:
    """A portable reload that looks for a program before it runs it (`command -v`, `which`)
    passes where that program is not installed: it exited 2 before, naming the program the
    command itself guards. An unguarded program is still said."""
    config = tmp_path / "mustaple.toml"
    head = f'state_dir = "{tmp_path}/state"\n' + _entry(f'"{cert}"')
    sink = f'[sinks.web]\ntype = "file"\npath = "{tmp_path}/staples/{{name}}.der"\n'

    def check(reload: str) -> subprocess.CompletedProcess[str]:
        config.write_text(f"{head}{sink}reload = '{reload}'\n")
        command = [MUSTAPLE, "run", "--check-config", "--config", str(config)]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)

    for guarded in (
        "if command -v no-such-ctl >/dev/null; then no-such-ctl reload web; else true; fi",
        "command -v no-such-ctl >/dev/null && no-such-ctl reload web || true",
        "which no-such-ctl >/dev/null 2>&1 && no-such-ctl reload web || true",
    ):
        done = check(guarded)
        assert (done.returncode, done.stderr) == (ExitCode.GOOD, ""), guarded
    unguarded = check("command -v true >/dev/null && no-such-ctl reload web")
    assert unguarded.returncode == ExitCode.USAGE
    assert "sinks.web.reload: 'no-such-ctl' is not found in PATH" in unguarded.stderr


def test_a_file_sinks_running_check_is_checked_like_its_reload(
    tmp_path: Path, cert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo there fails the check every time, so every reload is skipped, silently."""
    body = _entry(f'"{cert}"') + (
        f'[sinks.files]\ntype = "file"\npath = "{tmp_path}/staples/{{name}}.der"\n'
        'reload = "true"\nrunning = "systemctl-typo is-active --quiet nginx"\n'
    )
    code, _, err = _check(tmp_path, body, capsys)
    assert code == ExitCode.USAGE
    assert err.startswith("mustaple: sinks.files.running: 'systemctl-typo' is not found in PATH")
    assert err.count("\n") == 1


@pytest.mark.parametrize("kind", ["missing", "fifo", "device", "directory"])
def test_an_issuer_file_that_cannot_be_read_is_named_by_its_key(
    tmp_path: Path, cert: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config passed it; `prime --all` then said only "issuer certificate not found".
    A FIFO is not opened (it would block the check until a writer came)."""
    issuer = {"missing": tmp_path / "gone.pem", "fifo": tmp_path / "fifo.pem",
              "device": Path("/dev/null"), "directory": tmp_path}[kind]  # fmt: skip
    if kind == "fifo":
        os.mkfifo(issuer)
    body = _entry(f'"{cert}"') + f'issuer = "{issuer}"\n'
    code, out, err = _check(tmp_path, body, capsys)
    assert (code, out) == (ExitCode.USAGE, "")
    said = {
        "missing": "does not exist",
        "fifo": "is a FIFO, a device or a socket, not a regular file",
        "device": "is a FIFO, a device or a socket, not a regular file",
        "directory": "is a directory",
    }[kind]
    assert err == (
        f"mustaple: certificates[0].issuer: {issuer} {said}; give the issuer's certificate file\n"
    )
    issuer_file = CA(key_type="ec").issue("c.test").write(tmp_path / "c").issuer
    code, _, err = _check(tmp_path, _entry(f'"{cert}"') + f'issuer = "{issuer_file}"\n', capsys)
    assert (code, err) == (ExitCode.GOOD, "")
