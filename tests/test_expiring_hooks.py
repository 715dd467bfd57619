"""on_expiring across processes: each level is told once per staple, by whichever process
writes it first, and not again by a restarted keeper, a SIGHUP's keeper or a `prime` beside
it that gets the same answer again; a new staple's own decline is told again.

Real `mustaple run` and `mustaple prime` on one state directory, a loopback responder whose
clock the test sets (answers of 4 days made 3.5 days ago: 12 hours left, WARNING from the
start; the same answer again, from its cache, while that clock stands still), and the hook
script of test_attempt_hooks, whose file of lines ("expiring WARNING run") is judged.
"""

from __future__ import annotations

import signal
from datetime import datetime, timedelta
from pathlib import Path

from mustaple.core.clock import utc_now
from outside import wait_for
from test_attempt_hooks import hooked, lines
from test_recorded_attempts import Site, site

RUNNING_OUT = timedelta(days=3.5)  # of a 4-day answer: 12 hours left, WARNING, not CRITICAL


def warned(s: Site) -> Path:
    """The keeper started with the site's staple at WARNING, told once by it."""
    told = hooked(s, ("on_expiring",))
    s.run()
    wait_for(lambda: lines(told) == ["expiring WARNING run"])
    return told


def reloaded(s: Site, times: int) -> None:
    """Wait until the keeper said its `times`-th SIGHUP reload, then for passes after it."""
    wait_for(lambda: s.logs().count("configuration reloaded") == times)
    s.passes(3)


def test_a_restart_and_a_sighup_do_not_tell_the_same_level_again(tmp_path: Path) -> None:
    """Each `systemctl restart` or `reload` while a staple runs out paged the operator
    again: the new keeper started at alert OK and its first pass raised WARNING again."""
    made = utc_now() - RUNNING_OUT
    with site(tmp_path, clock=lambda: made) as s:
        told = warned(s)
        s.stop(s.runs[-1])
        keeper = s.run()
        s.passes(3)
        assert lines(told) == ["expiring WARNING run"], "told again after a restart"
        for times in (1, 2):
            keeper.send_signal(signal.SIGHUP)
            reloaded(s, times)
        assert lines(told) == ["expiring WARNING run"], "told again after a SIGHUP"
        assert s.asked() == 1  # the same staple throughout: no refresh was due
        s.stop(keeper)


def test_a_prime_beside_the_keeper_tells_only_a_new_staples_decline(tmp_path: Path) -> None:
    """A `prime` (a deploy hook, cron) that gets the same answer again told WARNING again;
    one that gets a newer answer, itself running out, tells its WARNING once, and the keeper
    that takes that answer in does not tell it again."""
    made = [utc_now() - RUNNING_OUT]

    def clock() -> datetime:
        return made[0]

    with site(tmp_path, clock=clock) as s:
        told = warned(s)
        for _ in range(2):
            assert s.prime()[0] == 0
        assert lines(told) == ["expiring WARNING run"], "told again by a prime"
        made[0] += timedelta(hours=1)  # a newer answer, 13 hours left: WARNING too
        assert s.prime()[0] == 0
        assert lines(told) == ["expiring WARNING run", "expiring WARNING prime"]
        stored = s.row()["this_update"]  # the keeper takes the prime's answer in
        wait_for(lambda: s.page()["this_update"] == stored)
        s.passes(3)
        assert lines(told) == ["expiring WARNING run", "expiring WARNING prime"], "by the keeper"
        s.stop(s.runs[0])
