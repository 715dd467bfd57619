"""`mustaple run` killed (SIGKILL) in the middle of a pass, and started again at once.

A kill leaves no time to write anything: what the next process does rests on what was
committed before it. A hook starts only after the commit of the write that records its
event (at most once: a process killed in between never ran it, and the next one reads the
event as told); a revocation's hook included, which started before that commit, so that a
process killed while another certificate's fetch was still under way had told it, and the
next one, finding nothing stored, fetched it again and told it again.

Real processes: `mustaple run` twice on one state directory, the test's responder holding
the second certificate's request, hooks that add a line to a file (read by the test).
"""

from __future__ import annotations

import signal
from pathlib import Path

from mustaple.testing import Behaviour
from outside import wait_for
from test_attempt_hooks import hooked, lines, patient
from test_owed_reloads import passes
from test_rows_forward import site

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
