"""Who made the last refresh, as the keeper a SIGHUP builds says it: this process, before
its reload, not "another mustaple process"; a `prime`'s is another process's.

After `systemctl reload`, the new keeper in the same process takes in the status rows its
predecessor wrote; its log said of its predecessor's failed refresh that another mustaple
process made it, which sends an operator looking for a process that does not exist. Real
`mustaple run` and `mustaple prime` on loopback, judged by the lines `run` prints (its
refreshes fail, retried an hour later: the only refreshes are its first one and the prime's).
"""

from __future__ import annotations

import signal
from pathlib import Path

from mustaple.testing import Behaviour
from outside import wait_for
from test_expiring_hooks import reloaded
from test_recorded_attempts import site

OURS = "the last refresh, by this process before its reload at "
OTHERS = "the last refresh, by another mustaple process at "


def test_a_reload_says_the_failed_refresh_before_it_was_its_own_and_a_primes_another(
    tmp_path: Path,
) -> None:
    with site(tmp_path) as s:
        s.responder.set_behaviour(Behaviour.HTTP_500)
        keeper = s.run()
        wait_for(lambda: s.row()["state"] == "failing")
        keeper.send_signal(signal.SIGHUP)
        reloaded(s, 1)
        log = s.logs()
        assert log.count(OURS) == 1, log
        assert OTHERS not in log, log
        assert s.prime()[0] == 1  # no staple: its refresh fails too
        wait_for(lambda: OTHERS in s.logs())  # the running keeper takes the prime's in
        keeper.send_signal(signal.SIGHUP)  # the latest refresh the rows say is the prime's
        reloaded(s, 2)
        log = s.logs()
        assert (log.count(OURS), log.count(OTHERS)) == (1, 2), log
        s.stop(keeper)
