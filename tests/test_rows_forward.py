"""Status rows only go forward in time, whichever `mustaple` process writes them.

Two processes on one state directory each write a certificate's status row from their own
view: a running keeper (and the keeper a SIGHUP builds in its place) and a `prime` from a
deploy hook or cron. A process that took in the others' rows at the start of its work and
writes its own at the end must not write back an older view over what another process
recorded meanwhile (a later attempt, a failure, a reload owed): a poller of `mustaple status`
would see time go backwards, and the later facts would be lost for good.

Real processes on loopback: `mustaple run`, `mustaple prime`, `mustaple status --json`, a
responder the test controls, and a reload command that counts its runs and can be held
(it waits for a file the test creates): that is how a process is kept in the middle of its
work, deterministically, while another one writes.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mustaple.core.clock import utc_now
from mustaple.testing import CA, Behaviour, ResponderThread
from outside import end_all, wait_for
from test_owed_reloads import notify_socket, passes
from test_recorded_attempts import within

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
NAME = "a.example.test"


def gated_reload(tmp: Path, sink: str) -> str:
    """A reload command for `sink` that adds a line to `tmp/SINK.runs` at each run; the first
    run after `tmp/SINK.hold` appears takes it (`tmp/SINK.held.PID` while it waits) and
    waits until the file the hold names exists; the first run after `tmp/SINK.fail`
    appears takes it and fails."""
    script = tmp / f"{sink}.sh"
    at = f"{tmp}/{sink}"
    script.write_text(
        "#!/bin/sh\n"
        f"echo run >> {at}.runs\n"
        f"if mv {at}.hold {at}.held.$$ 2>/dev/null; then\n"
        f'  while [ ! -e "$(cat {at}.held.$$)" ]; do sleep 0.02; done\n'
        f"  rm {at}.held.$$\n"
        "fi\n"
        f"if rm {at}.fail 2>/dev/null; then exit 1; fi\n"
    )
    script.chmod(0o755)
    return str(script)


@dataclass
class Site:
    """One must-staple certificate in `live/`, its responder, and the `mustaple` processes
    on one state directory (file sinks, each reloading with a `gated_reload`)."""

    tmp: Path
    ca: CA
    responder: ResponderThread
    sock: socket.socket
    env: dict[str, str]
    started: list[subprocess.Popen[str]] = field(default_factory=list)
    sinks: tuple[str, ...] = ("files",)
    gates: list[Path] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.tmp / "mustaple.toml"

    @property
    def fullchain(self) -> Path:
        return self.tmp / "live" / NAME / "fullchain.pem"

    def configure(self) -> None:
        sinks = "".join(
            f'[sinks.{sink}]\ntype = "file"\npath = "{self.tmp}/{sink}/{{name}}.der"\n'
            f'reload = "{gated_reload(self.tmp, sink)}"\n'
            for sink in self.sinks
        )
        self.config.write_text(
            f'state_dir = "{self.tmp}/state"\n'
            f'[[certificates]]\npaths = ["{self.tmp}/live/*/fullchain.pem"]\n{sinks}'
            # a generous timeout: a fetch timed out under load keeps the stored staple, and
            # a prime then delivers the keeper's bytes again (unchanged: no reload to fail)
            '[policy]\ntimeout = "10s"\nattempts = 1\nretry_min = "1h"\nretry_base = "1h"\n'
            'watch_interval = "1s"\n'
        )

    def issue(self) -> None:
        """A new leaf for NAME in `live/` (a renewal), known to the responder."""
        leaf = self.ca.issue(NAME, ocsp_urls=[self.responder.url])
        self.responder.add(leaf)
        leaf.write(self.fullchain.parent)

    def run(self) -> subprocess.Popen[str]:
        """`mustaple run`, once its first pass is over (its staple delivered)."""
        process = self.start("run", "--config", str(self.config), env=self.env)
        passes(self.sock, 1)
        return process

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        with (self.tmp / f"{args[0]}{len(self.started)}.err").open("w") as err:
            process = subprocess.Popen(
                [MUSTAPLE, *args], env=env, stdout=subprocess.DEVNULL, stderr=err, text=True
            )
        self.started.append(process)
        return process

    def prime(self) -> tuple[int, datetime, datetime]:
        """A real `mustaple prime` of the certificate, started in a second of its own (status
        shows whole seconds): its exit code, and the times just before and after it."""
        second = utc_now().replace(microsecond=0) + timedelta(seconds=1)
        wait_for(lambda: utc_now() >= second)
        before = utc_now()
        process = self.start("prime", "--config", str(self.config), str(self.fullchain))
        code = process.wait(60)
        return code, before, utc_now()

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

    def hold(self, sink: str) -> Path:
        """The next reload of `sink` waits (inside its process's delivery) until the file
        returned exists (`release`)."""
        gate = self.tmp / f"open.{len(self.gates)}"
        self.gates.append(gate)
        (self.tmp / f"{sink}.hold").write_text(str(gate))
        return gate

    def holding(self, sink: str) -> bool:
        return any(self.tmp.glob(f"{sink}.held.*"))

    def release(self, gate: Path | None = None) -> None:
        """Let the reload held at `gate` (every one, by default) go on."""
        for each in [gate] if gate else self.gates:
            each.touch()

    def fail(self, sink: str) -> None:
        """The next reload of `sink` fails."""
        (self.tmp / f"{sink}.fail").touch()

    def runs(self, sink: str) -> int:
        """How often the reload of `sink` ran."""
        path = self.tmp / f"{sink}.runs"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def logs(self) -> str:
        return "".join(path.read_text() for path in sorted(self.tmp.glob("*.err")))


@contextmanager
def site(
    tmp: Path, sinks: tuple[str, ...] = ("files",), *, same_age: bool = False
) -> Iterator[Site]:
    """With `same_age`, the responder signs every answer afresh with the same times: each
    one's bytes differ, none is newer than another (a file sink writes it, the store keeps
    the first)."""
    ca = CA()
    frozen = utc_now().replace(microsecond=0)
    timing: dict[str, Any] = {"cache_for": timedelta(0), "clock": lambda: frozen}
    with (
        ResponderThread(ca, **(timing if same_age else {})) as responder,
        notify_socket(tmp) as (sock, env),
    ):
        s = Site(tmp, ca, responder, sock, env, sinks=sinks)
        s.configure()
        s.issue()
        try:
            yield s
        finally:
            s.release()  # no reload left waiting
            end_all(s.started)
    assert "Traceback" not in s.logs()


def test_a_keeper_finishing_its_pass_does_not_write_back_over_a_prime_made_meanwhile(
    tmp_path: Path,
) -> None:
    """The certificate renewed: the running keeper fetches the new one's staple and is held
    in its delivery (its reload waits); meanwhile the deploy hook's prime asks the CA, which
    fails it. The latest attempt is the prime's failure: once the keeper's pass ends, and at
    its later passes, the row must still say so (it said the keeper's older success: the
    prime's facts written over, and lost for good)."""
    with site(tmp_path) as s:
        keeper = s.run()
        s.hold("files")
        s.issue()  # the renewal: the keeper's next pass fetches its staple
        wait_for(lambda: s.holding("files"))
        s.responder.set_behaviour(Behaviour.HTTP_500)
        code, before, after = s.prime()
        asked = len(s.responder.requests)
        assert code == 0  # the keeper's staple, stored before its delivery, is in hand
        row = s.row()
        assert (row["state"], row["failures"], row["last_error"]) == (
            "failing",
            1,
            "http-server-error",
        ), row
        assert within(row["last_attempt"], before, after), row
        s.release()
        seen = []
        for _ in range(3):
            passes(s.sock, 1)
            seen.append(s.row())
        for row in seen:
            assert (row["state"], row["failures"], row["last_error"]) == (
                "failing",
                1,
                "http-server-error",
            ), row
            assert within(row["last_attempt"], before, after), row
        assert len(s.responder.requests) == asked  # the keeper asked nothing more
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(20) == 0


def test_a_reload_a_prime_failed_while_the_keeper_delivered_stays_owed_and_is_paid_once(
    tmp_path: Path,
) -> None:
    """Two sinks. The certificate renewed: the running keeper delivers the new staple to
    both; `quick` reloads its server at once, `slow`'s reload is held. Meanwhile the deploy
    hook's prime delivers an answer as old (its bytes differ), and `quick`'s reload fails
    (its server was given the prime's file and not reloaded after it). Once the keeper's
    pass ends the debt must still be in the row, and the keeper pays it once (its row said
    `quick` took it: no reload followed, ever)."""
    with site(tmp_path, sinks=("quick", "slow"), same_age=True) as s:
        keeper = s.run()
        s.hold("slow")
        s.issue()
        wait_for(lambda: s.holding("slow"))
        assert s.runs("quick") == 2  # the start's, the renewal's
        s.fail("quick")
        code, _, _ = s.prime()
        assert code == 1  # a sink did not take it
        assert s.runs("quick") == 3
        quick = {sink["sink"]: sink for sink in s.row()["sinks"]}["quick"]
        assert quick["reload_owed"] is True, quick
        s.release()
        wait_for(lambda: s.runs("quick") == 4)  # paid
        passes(s.sock, 3)
        assert s.runs("quick") == 4  # once
        quick = {sink["sink"]: sink for sink in s.row()["sinks"]}["quick"]
        assert (quick["ok"], quick["reload_owed"]) == (True, False), quick
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(20) == 0


def test_a_second_run_is_refused_while_a_sighup_switches_keepers(tmp_path: Path) -> None:
    """A pass in flight (its delivery held) when a SIGHUP comes, then the new keeper's start
    (its delivery held too): a second `mustaple run` on the same state, started at each of
    these moments, stops at once (exit 2, one line naming the running one's pid) and
    delivers nothing; the lock is never free during the reload."""
    with site(tmp_path) as s:
        keeper = s.run()

        def refused() -> None:
            runs = s.runs("files")
            second = subprocess.run(
                [MUSTAPLE, "run", "--config", str(s.config)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            lines = second.stderr.strip().splitlines()
            assert second.returncode == 2, second.stderr
            assert len(lines) == 1, lines
            assert f"another `mustaple run` (pid {keeper.pid}) keeps" in lines[0], lines
            assert s.runs("files") == runs

        in_pass = s.hold("files")
        s.issue()  # the renewal: the next pass fetches and delivers, and is held
        wait_for(lambda: s.holding("files"))
        keeper.send_signal(signal.SIGHUP)
        refused()
        s.hold("files")  # the new keeper's start delivers, and is held
        s.issue()  # (a renewal it sees first: it takes the old leaf's staple away)
        s.release(in_pass)
        wait_for(lambda: "configuration reloaded" in s.logs() and s.holding("files"))
        refused()
        s.release()
        passes(s.sock, 2)
        assert keeper.poll() is None
        assert s.row()["state"] == "good"
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(20) == 0
