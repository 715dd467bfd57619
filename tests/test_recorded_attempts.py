"""The last attempt `mustaple status` shows is the latest by any process, and stays so.

A deploy hook's `mustaple prime` beside a running `mustaple run` on the same state directory:
once the keeper takes in what the prime wrote, its rows (written again from its own view at
the end of its pass) must still say that the prime fetched, when, and with what outcome,
until a newer attempt by any process replaces it; after a restart and a SIGHUP too.

Real processes on loopback: `mustaple run` (a pass a second, counted on a systemd notify
socket; its retries an hour apart, its refreshes days away: it fetches nothing of its own
after its start), `mustaple prime`, a responder the test controls (its requests counted),
and `mustaple status --json` reading the rows. The keeper's own `/status` says the same.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mustaple.core.clock import utc_now
from mustaple.testing import CA, Behaviour, ResponderThread
from outside import end_all, get_json, wait_for
from servers import free_port
from test_owed_reloads import notify_socket, passes

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
NAME = "a.example.test"


@dataclass
class Site:
    """One must-staple certificate in `live/`, its responder, and the `mustaple` processes
    on one state directory."""

    tmp: Path
    ca: CA
    responder: ResponderThread
    sock: socket.socket
    env: dict[str, str]
    http_port: int = field(default_factory=free_port)
    runs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.tmp / "mustaple.toml"

    @property
    def fullchain(self) -> Path:
        return self.tmp / "live" / NAME / "fullchain.pem"

    @property
    def staple(self) -> Path:
        return self.tmp / "staples" / f"{NAME}.der"

    def configure(self) -> None:
        self.config.write_text(
            f'state_dir = "{self.tmp}/state"\n'
            f'[[certificates]]\npaths = ["{self.tmp}/live/*/fullchain.pem"]\n'
            f'[sinks.files]\ntype = "file"\npath = "{self.tmp}/staples/{{name}}.der"\n'
            f'[http]\nlisten = "127.0.0.1:{self.http_port}"\n'
            '[policy]\ntimeout = "2s"\nattempts = 1\nretry_min = "1h"\nretry_base = "1h"\n'
            'watch_interval = "1s"\n'
        )

    def issue(self) -> None:
        """A new leaf for NAME in `live/` (a renewal), known to the responder."""
        leaf = self.ca.issue(NAME, ocsp_urls=[self.responder.url])
        self.responder.add(leaf)
        leaf.write(self.fullchain.parent)

    def run(self) -> subprocess.Popen[str]:
        """`mustaple run`, once its first pass is over (its staple delivered)."""
        with (self.tmp / f"run{len(self.runs)}.err").open("w") as err:
            process = subprocess.Popen(
                [MUSTAPLE, "run", "--config", str(self.config)],
                env=self.env,
                stderr=err,
                text=True,
            )
        self.runs.append(process)
        passes(self.sock, 1)
        return process

    def stop(self, process: subprocess.Popen[str]) -> None:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0

    def passes(self, count: int = 2) -> None:
        """Wait for `count` passes of the keeper from now on (the first may have begun
        before)."""
        passes(self.sock, count)

    @contextmanager
    def paused(self, process: subprocess.Popen[str]) -> Iterator[None]:
        """The keeper stopped (SIGSTOP) right after a pass, while inside: it sees nothing
        before it goes on (SIGCONT)."""
        self.passes(1)
        process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            process.send_signal(signal.SIGCONT)

    def prime(self) -> tuple[int, datetime, datetime]:
        """A real `mustaple prime` of the certificate, started in a second of its own (status
        shows whole seconds: every attempt before it shows as earlier): its exit code, and
        the times just before it started and just after it ended."""
        second = utc_now().replace(microsecond=0) + timedelta(seconds=1)
        wait_for(lambda: utc_now() >= second)
        before = utc_now()
        done = subprocess.run(
            [MUSTAPLE, "prime", "--config", str(self.config), str(self.fullchain)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        after = utc_now()
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, before, after

    def row(self) -> dict[str, Any]:
        """The certificate's row, as `mustaple status --json` says it."""
        done = subprocess.run(
            [MUSTAPLE, "status", "--json", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        (row,) = json.loads(done.stdout)
        assert isinstance(row, dict)
        return row

    def page(self) -> dict[str, Any]:
        """The certificate as the running keeper's `/status` says it."""
        (certificate,) = get_json(f"http://127.0.0.1:{self.http_port}/status")["certificates"]
        assert isinstance(certificate, dict)
        return certificate

    def asked(self) -> int:
        """How many requests the responder answered."""
        return len(self.responder.requests)

    def logs(self) -> str:
        return "".join(path.read_text() for path in sorted(self.tmp.glob("run*.err")))


@contextmanager
def site(
    tmp: Path, clock: Callable[[], datetime] = utc_now, cache_for: timedelta = timedelta(minutes=1)
) -> Iterator[Site]:
    """A `Site` whose responder makes its answers at `clock`'s time (its CA from then on),
    the same one again for `cache_for`."""
    ca = CA(now=min(clock(), utc_now()))
    with (
        ResponderThread(ca, clock=clock, cache_for=cache_for) as responder,
        notify_socket(tmp) as (sock, env),
    ):
        s = Site(tmp, ca, responder, sock, env)
        s.configure()
        s.issue()
        try:
            yield s
        finally:
            end_all(s.runs)
    assert "Traceback" not in s.logs()


def within(value: str | None, before: datetime, after: datetime) -> bool:
    """Whether the time `value` (as status writes it: whole seconds) falls between `before`
    and `after`."""
    if value is None:
        return False
    return before.replace(microsecond=0) <= datetime.fromisoformat(value) <= after


def test_a_prime_after_a_renewal_shows_as_the_last_attempt_once_the_keeper_takes_it(
    tmp_path: Path,
) -> None:
    """The deploy hook: the certificate renewed, then primed, before the running keeper sees
    the new file; its next passes load the new certificate with the prime's staple (no fetch
    of its own), and its row says the prime fetched it, then (it said no attempt at all)."""
    with site(tmp_path) as s:
        keeper = s.run()
        with s.paused(keeper):
            s.issue()  # the renewal
            code, before, after = s.prime()
        assert code == 0
        asked = s.asked()
        s.passes()
        row = s.row()
        assert (row["state"], row["last_error"]) == ("good", None), row
        assert within(row["last_attempt"], before, after), (row, before, after)
        assert s.page()["last_attempt"] == row["last_attempt"]
        assert s.asked() == asked  # the attempt shown is the prime's: the keeper asked nothing
        s.stop(keeper)


def test_a_prime_that_got_the_answer_in_hand_again_shows_as_the_last_attempt(
    tmp_path: Path,
) -> None:
    """The prime gets the answer the keeper holds (the responder's cache): nothing new is
    stored, yet the prime's attempt is the last one (it said the keeper's, at its start)."""
    with site(tmp_path) as s:
        keeper = s.run()
        staple = s.staple.read_bytes()
        code, before, after = s.prime()
        assert code == 0
        assert s.staple.read_bytes() == staple  # the same answer
        asked = s.asked()
        s.passes()
        row = s.row()
        assert (row["state"], row["last_error"], row["failures"]) == ("good", None, 0), row
        assert within(row["last_attempt"], before, after), (row, before, after)
        assert s.page()["last_attempt"] == row["last_attempt"]
        assert s.asked() == asked
        s.stop(keeper)


def test_a_failed_prime_beside_a_keeper_holding_a_good_staple_shows_until_a_newer_attempt(
    tmp_path: Path,
) -> None:
    """The CA fails the prime while the keeper holds a good staple: after the keeper's passes
    (and after a restart of it) the row says the prime's attempt failed, when and why, and
    that the staple in hand is still valid and served; the row and the page agree (they said
    "good", with the keeper's own attempt at its start, as if the prime had not run). Then a
    prime that works replaces it."""
    with site(tmp_path) as s:
        keeper = s.run()
        held = s.row()
        staple = s.staple.read_bytes()
        s.responder.set_behaviour(Behaviour.HTTP_500)
        code, before, after = s.prime()
        assert code == 0  # the staple in hand is still valid
        asked = s.asked()

        def failed_at_prime() -> None:
            row = s.row()
            assert (row["state"], row["health"], row["failures"]) == ("failing", "warning", 1)
            assert row["last_error"] == "http-server-error", row
            assert "500" in row["last_message"], row
            assert within(row["last_attempt"], before, after), (row, before, after)
            # the staple in hand stays valid, and served
            assert (row["this_update"], row["effective_expiry"]) == (
                held["this_update"],
                held["effective_expiry"],
            )
            assert row["seconds_left"] > 0
            assert [(sink["ok"], sink["error"]) for sink in row["sinks"]] == [(True, None)]
            assert s.staple.read_bytes() == staple
            page = s.page()
            shown = ("state", "health", "failures", "last_attempt", "last_error", "next_refresh")
            assert [page[key] for key in shown] == [row[key] for key in shown], (page, row)
            # the attempts kept: the prime's exchanges, newest first, over the keeper's
            prime = [a for a in page["attempts"] if within(a["at"], before, after)]
            assert prime == page["attempts"][: len(prime)], page["attempts"]
            assert {a["http_status"] for a in prime} == {500}, page["attempts"]
            assert page["attempts"][len(prime)]["http_status"] == 200, page["attempts"]

        s.passes()
        failed_at_prime()

        s.stop(keeper)  # a restart: its first rows say the same
        keeper = s.run()
        failed_at_prime()
        assert s.asked() == asked  # the keeper asked nothing: the last attempt is the prime's

        s.responder.set_behaviour(Behaviour.GOOD)
        code, before, after = s.prime()
        assert code == 0
        s.passes()
        row = s.row()
        assert (row["state"], row["health"], row["failures"]) == ("good", "ok", 0), row
        assert (row["last_error"], row["last_message"]) == (None, None), row
        assert within(row["last_attempt"], before, after), (row, before, after)
        assert s.page()["state"] == "good"
        s.stop(keeper)


def test_a_prime_while_the_keeper_is_stopped_shows_after_its_start_and_a_sighup(
    tmp_path: Path,
) -> None:
    """The keeper stopped, a prime, the keeper started again, then a SIGHUP (a new keeper,
    from the state): each one's rows keep the prime's attempt (they said none)."""
    with site(tmp_path) as s:
        s.stop(s.run())
        code, before, after = s.prime()
        assert code == 0
        asked = s.asked()
        keeper = s.run()
        assert within(s.row()["last_attempt"], before, after), s.row()

        keeper.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in s.logs())
        s.passes()
        row = s.row()
        assert within(row["last_attempt"], before, after), (row, before, after)
        assert s.page()["last_attempt"] == row["last_attempt"]
        assert s.asked() == asked
        s.stop(keeper)


def test_a_failed_prime_beside_a_keeper_with_no_staple_stored_yet_is_taken_in(
    tmp_path: Path,
) -> None:
    """The CA fails from the start: the keeper holds nothing and nothing is stored. A prime
    fails too: the keeper's next passes take its attempt in (the failures counted on, the
    prime's time), so its page says what the row says (it never looked at the rows: no
    stored answer, so the store seemed unchanged)."""
    with site(tmp_path) as s:
        s.responder.set_behaviour(Behaviour.HTTP_500)
        keeper = s.run()
        assert s.page()["failures"] == 1
        code, before, after = s.prime()
        assert code == 1  # no staple at all
        s.passes()
        row, page = s.row(), s.page()
        assert (row["state"], row["failures"]) == ("failing", 2), row
        assert within(row["last_attempt"], before, after), (row, before, after)
        shown = ("state", "failures", "last_attempt", "last_error", "next_refresh")
        assert [page[key] for key in shown] == [row[key] for key in shown], (page, row)
        s.stop(keeper)
