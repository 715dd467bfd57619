"""A storm of SIGHUPs beside a `mustaple prime`: nothing owed is lost, nothing told twice.

Five SIGHUPs, some while the keeper a reload built is still starting (held in its delivery:
its server's reload waits for a file the test creates), while `mustaple prime`s of the same
certificate wait at the responder and are then answered: a failure, a recovery, a
revocation. Judged from outside: the reload command records the bytes of the staple file
each time it runs (the last must be the file's bytes now: the server holds what the file
says), the hooks add a line to a file, `mustaple status --json` is polled throughout (its
times and counts never go back), `ss` counts the listeners, the exit code says the end.

Real processes on loopback: `mustaple run`, `mustaple prime`, `mustaple status`, and a
responder the test controls (`hold`/`release` order the fetches).
"""

from __future__ import annotations

import hashlib
import itertools
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mustaple.core.clock import utc_now
from mustaple.testing import CA, Behaviour, ResponderThread
from outside import end_all, get_json, wait_for
from servers import free_port
from test_owed_reloads import notify_socket, passes
from test_recorded_attempts import within
from test_rows_forward import Site

HOOKS = ("on_failure", "on_recovered", "on_revoked")
SHOWN = ("state", "failures", "last_attempt", "last_error", "this_update", "sinks")


class Storm(Site):
    """A `Site` whose reload command records the staple file's digest at each run, with
    hooks that add "EVENT COMMAND" to `told`, an HTTP endpoint, and patient fetches (the
    requests held at the responder wait for their release, not for a timeout)."""

    port: int = 0

    @property
    def staple(self) -> Path:
        return self.tmp / "files" / "a.example.test.der"

    @property
    def told(self) -> Path:
        return self.tmp / "told"

    def configure(self) -> None:
        super().configure()
        self.port = free_port()
        hook = self.tmp / "hook.sh"
        hook.write_text(
            "#!/bin/sh\n"
            "mustaple=$(ps -o ppid= -p $PPID | tr -d ' ')\n"  # the hook runs under sh -c
            f'echo "$MUSTAPLE_EVENT $(tr "\\0" "\\n" < /proc/$mustaple/cmdline | sed -n 3p)"'
            f" >> {self.told}\n"
        )
        hook.chmod(0o755)
        script = self.tmp / "files.sh"  # the gated reload, recording what the server loads
        script.write_text(
            script.read_text().replace(
                "echo run >>", f"sha256sum < {self.staple} | cut -c1-64 >>", 1
            )
        )
        text = self.config.read_text().replace('timeout = "10s"', 'timeout = "60s"', 1)
        text += f'[http]\nlisten = "127.0.0.1:{self.port}"\n[hooks]\n'
        self.config.write_text(text + "".join(f'{key} = "{hook}"\n' for key in HOOKS))

    def loaded(self) -> list[str]:
        """The staple file's digest at each run of the reload."""
        path = self.tmp / "files.runs"
        return path.read_text().split() if path.exists() else []

    def lines(self) -> list[str]:
        return self.told.read_text().splitlines() if self.told.exists() else []

    def primed(self) -> subprocess.Popen[str]:
        """`mustaple prime` of the certificate, once its request waits at the responder."""
        held = self.responder.held
        process = self.start("prime", "--config", str(self.config), str(self.fullchain))
        wait_for(lambda: self.responder.held == held + 1)
        return process

    def page(self) -> dict[str, Any]:
        """The certificate as the running keeper's `/status` says it."""
        (certificate,) = get_json(f"http://127.0.0.1:{self.port}/status")["certificates"]
        assert isinstance(certificate, dict)
        return certificate

    def listeners(self) -> int:
        """How many sockets listen on the HTTP endpoint's port."""
        done = subprocess.run(
            ["ss", "-Hltn", f"sport = :{self.port}"], capture_output=True, text=True, check=True
        )
        return len(done.stdout.splitlines())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def storm(tmp: Path) -> Iterator[Storm]:
    """A responder that signs every answer afresh (a later fetch is a newer staple)."""
    ca = CA()
    with (
        ResponderThread(ca, cache_for=timedelta(0)) as responder,
        notify_socket(tmp) as (sock, env),
    ):
        s = Storm(tmp, ca, responder, sock, env)
        s.configure()
        s.issue()
        try:
            yield s
        finally:
            s.release()
            end_all(s.started)
    assert "Traceback" not in s.logs()


class Poller:
    """`mustaple status --json` read again and again in a thread while inside; a read that
    failed fails the test at the exit."""

    def __init__(self, s: Storm) -> None:
        self.s = s
        self.rows: list[dict[str, Any]] = []
        self.failed: AssertionError | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def poll(self) -> None:
        while not self.done.is_set():
            try:
                self.rows.append(self.s.row())
            except AssertionError as exc:
                self.failed = exc
                return

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join(60)
        if self.failed is not None:
            raise self.failed


def leftovers(tmp: Path) -> str:
    """The processes still running a program of `tmp` (a reload command, a hook)."""
    found = subprocess.run(["pgrep", "-af", str(tmp)], capture_output=True, text=True, check=False)
    return found.stdout


def revoked(row: dict[str, Any]) -> bool:
    """A revoked certificate's row shows no staple: none is served."""
    return bool(row["state"] == "revoked")


def forward(rows: list[dict[str, Any]]) -> None:
    """Each snapshot's last attempt and staple (until a revocation) no older than the one
    before; its failures fewer only after an attempt that worked."""
    for before, after in itertools.pairwise(rows):
        pair = [{k: row[k] for k in SHOWN} for row in (before, after)]
        for key in ("last_attempt", "this_update"):
            if before[key] is not None and not (key == "this_update" and revoked(after)):
                assert after[key] is not None, pair
                assert after[key] >= before[key], pair
        if after["failures"] < before["failures"]:
            assert after["last_attempt"] >= before["last_attempt"], pair
            assert after["last_error"] is None, pair


def sighup_while_starting(s: Storm, keeper: subprocess.Popen[str], more: int) -> Path:
    """A SIGHUP whose new keeper is held in its start's delivery (the staple file removed
    first: the start writes it again and reloads the server), then `more` SIGHUPs while it
    is held; the gate that releases it."""
    gate = s.hold("files")
    s.staple.unlink()
    keeper.send_signal(signal.SIGHUP)
    wait_for(lambda: s.holding("files"))
    for _ in range(more):
        keeper.send_signal(signal.SIGHUP)
    return gate


def next_second() -> datetime:
    """Now, once a new second has begun (status shows whole seconds: what came before
    shows as earlier)."""
    second = utc_now().replace(microsecond=0) + timedelta(seconds=1)
    wait_for(lambda: utc_now() >= second)
    return utc_now()


def settled(s: Storm, state: str, failures: int, before: datetime) -> None:
    """After two more passes, the row says `state` and `failures` from the attempt made
    since `before` (the prime's): no keeper wrote its older view back over it."""
    passes(s.sock, 2)
    row = s.row()
    assert (row["state"], row["failures"]) == (state, failures), row
    assert within(row["last_attempt"], before, utc_now()), (row, before)


def test_a_storm_of_sighups_beside_primes_loses_nothing_and_tells_each_hook_once(
    tmp_path: Path,
) -> None:
    """Five SIGHUPs in three bursts, each burst's first new keeper held in its start (it
    read the rows before) while the others arrive, while primes wait at the responder and
    are answered: try later (the prime tells on_failure), good (on_recovered), revoked
    (on_revoked). After each burst the row says the prime's attempt; each hook ran once, by
    the prime; no snapshot of the rows went back; the server's last reload loaded the
    staple file as it is; no reload is owed; one listener; SIGTERM ends it with 0, and no
    reload command or hook is left running."""
    with storm(tmp_path) as s:
        keeper = s.run()
        with Poller(s) as poller:
            s.responder.hold()
            before = next_second()
            failing = s.primed()
            gate = sighup_while_starting(s, keeper, more=2)
            s.responder.release(Behaviour.TRY_LATER)
            assert failing.wait(60) == 0  # the staple in hand is still valid
            s.release(gate)
            settled(s, "failing", 1, before)
            before = next_second()
            recovering = s.primed()
            gate = sighup_while_starting(s, keeper, more=1)
            s.responder.release(Behaviour.GOOD)
            assert recovering.wait(60) == 0
            s.release(gate)
            settled(s, "good", 0, before)
            before = next_second()
            revoked = s.primed()
            keeper.send_signal(signal.SIGHUP)
            s.responder.release(Behaviour.REVOKED)
            assert revoked.wait(60) == 3  # revoked
            wait_for(lambda: s.page()["state"] == "revoked")
            settled(s, "revoked", 0, before)
        forward(poller.rows)
        assert s.lines() == ["failure prime", "recovered prime", "revoked prime"], s.lines()
        (sink,) = s.row()["sinks"]
        assert sink["reload_owed"] is False, sink
        assert s.loaded()[-1] == digest(s.staple), s.loaded()
        assert s.listeners() == 1
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(20) == 0
        assert leftovers(tmp_path) == ""
        assert s.listeners() == 0
    assert len(poller.rows) > 1


def test_a_reload_a_prime_failed_during_sighups_is_paid_once_by_the_last_keeper(
    tmp_path: Path,
) -> None:
    """The certificate renewed: the keeper's fetch is held, a SIGHUP cuts it (no failure
    told for it), the new keeper's fetch fails (it tells on_failure); a prime's works
    (on_recovered) and its server reload is held while two SIGHUPs come, then fails. The
    keeper that runs then owes it (read from the rows), pays it once, and the server loads
    the file as it is."""
    with storm(tmp_path) as s:
        keeper = s.run()
        s.responder.hold()
        s.issue()  # the renewal: the keeper's next pass fetches it
        wait_for(lambda: s.responder.held == 1)
        keeper.send_signal(signal.SIGHUP)
        wait_for(lambda: s.logs().count("started:") == 2 and s.responder.held == 1)
        prime = s.primed()
        s.responder.release(Behaviour.TRY_LATER)  # the new keeper's
        wait_for(lambda: s.lines() == ["failure run"] and s.row()["failures"] == 1)
        with Poller(s) as poller:
            gate = s.hold("files")
            s.fail("files")
            s.responder.release(Behaviour.GOOD)  # the prime's
            wait_for(lambda: s.holding("files"))
            keeper.send_signal(signal.SIGHUP)
            keeper.send_signal(signal.SIGHUP)
            wait_for(lambda: s.logs().count("started:") >= 3)
            s.release(gate)
            assert prime.wait(60) == 1  # its sink's reload failed
            passes(s.sock, 3)
        forward(poller.rows)
        assert s.lines() == ["failure run", "recovered prime"], s.lines()
        (sink,) = s.row()["sinks"]
        assert (sink["ok"], sink["reload_owed"]) == (True, False), sink
        assert len(s.loaded()) == 3  # the start's, the prime's that failed, the one owed
        assert s.loaded()[-1] == digest(s.staple), s.loaded()
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(20) == 0


def test_two_primes_at_once_count_only_the_failures_after_the_one_that_worked(
    tmp_path: Path,
) -> None:
    """A failed prime (1 failure in a row), then two primes at once, held at the
    responder: A's is answered good (its row: 0), then B's try later. B counted on from the
    1 it read at its start and ignored A's success, no later than its own attempt: its row
    said 2 failures in a row (and the health "2 in a row") for fail, good, fail. Now 1;
    each hook told once."""
    with storm(tmp_path) as s:
        primed = ("prime", "--config", str(s.config), str(s.fullchain))
        assert s.start(*primed).wait(60) == 0  # a good staple in hand
        next_second()
        s.responder.set_behaviour(Behaviour.TRY_LATER)
        assert s.start(*primed).wait(60) == 0  # it is still valid
        assert (s.row()["state"], s.row()["failures"]) == ("failing", 1)
        s.responder.hold()
        a, b = s.primed(), s.primed()
        next_second()  # status shows whole seconds: A's answer a second after the failure
        s.responder.release(Behaviour.GOOD)
        assert a.wait(60) == 0
        assert (s.row()["state"], s.row()["failures"]) == ("good", 0)
        next_second()
        s.responder.release(Behaviour.TRY_LATER)
        assert b.wait(60) == 0  # the staple in hand is still valid
        row = s.row()
        assert (row["state"], row["failures"]) == ("failing", 1), row
        assert "2 in a row" not in row["health_reason"], row
        assert s.lines() == ["failure prime", "recovered prime", "failure prime"], s.lines()
