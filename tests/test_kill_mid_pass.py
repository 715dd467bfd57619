"""`mustaple run` killed (SIGKILL) in the middle of a pass, and started again at once.

A kill leaves no time to write anything: what the next process does rests on what was
committed before it. A hook starts only after the commit of the write that records its
event (at most once: a process killed in between never ran it, and the next one reads the
event as told); a revocation's hook included, which started before that commit, so that a
process killed while another certificate's fetch was still under way had told it, and the
next one, finding nothing stored, fetched it again and told it again.

A process killed after its file sink wrote the new staple files, before the sink's reload
ended (its reload command killed with it, as a stop of the systemd unit does), leaves the
server unreloaded with files that the next process finds unchanged: that process (a start of
`run`, or a running keeper's next pass) reloads the server once, for the process gone.

Real processes: `mustaple run` twice on one state directory (or `prime` and `run`), the
test's responder holding the second certificate's request, hooks that add a line to a file,
and a reload command that counts its runs and can be held (all read by the test).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from mustaple.testing import Behaviour
from outside import wait_for
from test_attempt_hooks import hooked, lines, patient
from test_owed_reloads import passes
from test_rows_forward import Site, site

SECOND = "z.example.test"  # configured after the site's certificate: fetched second


def test_a_revocation_is_told_once_across_a_kill_before_its_answer_was_stored(
    tmp_path: Path,
) -> None:
    """One fetch at a time: the first certificate's answer is revoked, the second's request
    is held; the keeper is killed then, before the pass stored anything, and started again.
    on_revoked runs once, in the keeper that stored the revocation (it ran twice)."""
    with site(tmp_path) as s:
        second = s.ca.issue(SECOND, ocsp_urls=[s.responder.url])
        s.responder.add(second)
        second.write(tmp_path / "live" / SECOND)
        s.config.write_text(s.config.read_text() + "per_host = 1\n")
        told = hooked(s)  # type: ignore[arg-type]
        patient(s)  # type: ignore[arg-type]
        s.responder.hold()
        first = s.start("run", "--config", str(s.config), env=s.env)
        wait_for(lambda: s.responder.held == 1)
        s.responder.release(Behaviour.REVOKED)
        wait_for(lambda: s.responder.held == 1)  # the second's: the first's answer is in
        first.send_signal(signal.SIGKILL)
        assert first.wait(20) == -signal.SIGKILL
        s.responder.hold(False)
        s.responder.set_behaviour(Behaviour.REVOKED)  # the first certificate's, as before
        s.responder.set_behaviour(Behaviour.GOOD, serial=second.cert.serial_number)
        again = s.start("run", "--config", str(s.config), env=s.env)
        passes(s.sock, 2)
        assert lines(told) == ["revoked run"], lines(told)
        again.send_signal(signal.SIGTERM)
        assert again.wait(20) == 0


def killed_in_its_reload(s: Site, sink: str, process: subprocess.Popen[str]) -> None:
    """Kill `process` (SIGKILL) while it waits for the held reload of `sink`, and that reload
    too (its process group), as a stop of the systemd unit kills every process of it."""
    wait_for(lambda: s.holding(sink))
    (held,) = s.tmp.glob(f"{sink}.held.*")
    group = os.getpgid(int(held.name.rsplit(".", 1)[1]))
    process.send_signal(signal.SIGKILL)
    assert process.wait(20) == -signal.SIGKILL
    os.killpg(group, signal.SIGKILL)


def owes_nothing(s: Site, sink: str) -> None:
    """The certificate's row, as `mustaple status --json` says it: `sink` took the staple
    and owes no reload."""
    taken = {each["sink"]: each for each in s.row()["sinks"]}[sink]
    assert (taken["ok"], taken["reload_owed"]) == (True, False), taken


def test_a_reload_a_kill_cut_short_is_made_by_the_next_start(tmp_path: Path) -> None:
    """The certificate renewed: the running keeper writes the new staple's file, and its
    reload is held; the keeper is killed then, with the reload, and started again. The new
    start finds the file as it should be, yet the server never read it: its reload runs
    once, and the row owes nothing (it never ran: the server kept the old staple until the
    next refresh, hours or days later)."""
    with site(tmp_path) as s:
        keeper = s.run()
        s.hold("files")
        s.issue()  # the renewal: the next pass fetches, writes the file, and is held
        killed_in_its_reload(s, "files", keeper)
        before = s.runs("files")  # the start's, and the one killed
        again = s.run()
        assert s.runs("files") == before + 1
        passes(s.sock, 2)
        assert s.runs("files") == before + 1  # once
        owes_nothing(s, "files")
        again.send_signal(signal.SIGTERM)
        assert again.wait(20) == 0


def test_a_prime_killed_in_its_reload_beside_a_keeper_is_paid_for_by_the_keeper(
    tmp_path: Path,
) -> None:
    """A deploy hook's prime writes the staple's file, and its reload is held; a keeper
    starts meanwhile (it finds the file as it should be, and the prime still at work). The
    prime is killed then, with its reload: the keeper reloads the server at its next pass,
    once, and the row owes nothing."""
    with site(tmp_path) as s:
        s.hold("files")
        prime = s.start("prime", "--config", str(s.config), str(s.fullchain))
        wait_for(lambda: s.holding("files"))
        keeper = s.run()
        killed_in_its_reload(s, "files", prime)
        before = s.runs("files")  # the prime's: the keeper's start found the file unchanged
        passes(s.sock, 1)
        assert s.runs("files") == before + 1
        passes(s.sock, 2)
        assert s.runs("files") == before + 1  # once
        owes_nothing(s, "files")
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(20) == 0
