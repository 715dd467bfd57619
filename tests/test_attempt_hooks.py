"""Hooks across processes: each run of failures, each recovery and each revocation is told
once, by the process that made the refresh, whether `mustaple run` or `mustaple prime`.

Real `mustaple run` (a pass a second) and real `mustaple prime`s on one state directory, a
loopback responder the test fails, heals or revokes, and hooks that add a line to a file at
each run, naming the event and the mustaple command that ran the hook: the file is what is
judged, with `mustaple status --json`.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from mustaple.testing import Behaviour
from outside import wait_for
from test_recorded_attempts import MUSTAPLE, Site, site


def hooked(s: Site, keys: tuple[str, ...] = ("on_failure", "on_recovered", "on_revoked")) -> Path:
    """Every hook of `keys` in the site's configuration adds "EVENT COMMAND" as a line to
    a file (COMMAND: `run` or `prime`, read from the mustaple process that started the
    hook); an expiring event adds its level too: "expiring WARNING COMMAND"."""
    told = s.tmp / "told"
    script = s.tmp / "hook.sh"
    script.write_text(
        "#!/bin/sh\n"
        "mustaple=$(ps -o ppid= -p $PPID | tr -d ' ')\n"  # the hook runs under sh -c
        'level=""; [ "$MUSTAPLE_EVENT" = expiring ] && level=" ${MUSTAPLE_MESSAGE%%:*}"\n'
        f'echo "$MUSTAPLE_EVENT$level $(tr "\\0" "\\n" < /proc/$mustaple/cmdline | sed -n 3p)"'
        f" >> {told}\n"
    )
    script.chmod(0o755)
    s.config.write_text(
        s.config.read_text() + "[hooks]\n" + "".join(f'{key} = "{script}"\n' for key in keys)
    )
    return told


def lines(told: Path) -> list[str]:
    return told.read_text().splitlines() if told.exists() else []


def patient(s: Site) -> None:
    """Fetches wait a minute for an answer: the requests the test holds at the responder
    (`hold`) wait for their `release`, not for a timeout."""
    s.config.write_text(s.config.read_text().replace('timeout = "2s"', 'timeout = "60s"', 1))


def started(s: Site, command: str) -> subprocess.Popen[str]:
    """`mustaple COMMAND` (`run`, or `prime` of the certificate) started, not waited for."""
    args = [MUSTAPLE, command, "--config", str(s.config)]
    args += [str(s.fullchain)] if command == "prime" else []
    with (s.tmp / f"run{len(s.runs)}.err").open("w") as err:
        process = subprocess.Popen(args, env=s.env, stderr=err, text=True)
    s.runs.append(process)
    return process


def waiting(s: Site, command: str) -> subprocess.Popen[str]:
    """`started`, once its request is held at the responder (it read the rows before)."""
    held = s.responder.held
    process = started(s, command)
    wait_for(lambda: s.responder.held == held + 1 or process.poll() is not None)
    if process.poll() is not None:  # say why, not "timed out" (CI once waited 20 s here)
        error = (s.tmp / f"run{len(s.runs) - 1}.err").read_text()
        pytest.fail(f"`mustaple {command}` exited {process.returncode}: {error[-2000:]}")
    return process


def test_a_failure_the_keeper_told_while_a_prime_fetched_is_recovered_once(
    tmp_path: Path,
) -> None:
    """The prime reads the rows (no failure), the keeper's fetch fails (on_failure) while
    the prime's is under way, then the prime's works: the prime saw no failure and the
    keeper took its answer as told, so no process ran on_recovered (the pager said failing
    for ever). The prime's write closes the run the keeper opened: told once, by it."""
    with site(tmp_path) as s:
        told = hooked(s)
        patient(s)
        s.responder.hold()
        keeper = waiting(s, "run")
        prime = waiting(s, "prime")
        s.responder.release(Behaviour.TRY_LATER)  # the keeper's (one request: no POST after it)
        wait_for(lambda: lines(told) == ["failure run"])
        wait_for(lambda: s.row()["failures"] == 1)  # the keeper's failure is written
        s.responder.release(Behaviour.GOOD)  # the prime's
        assert prime.wait(60) == 0
        wait_for(lambda: s.page()["state"] == "good")
        s.passes(3)
        assert s.row()["state"] == "good"
        assert lines(told) == ["failure run", "recovered prime"], lines(told)
        s.stop(keeper)


def test_two_primes_that_end_one_run_of_failures_tell_it_once(tmp_path: Path) -> None:
    """A failed prime (on_failure); two primes that both read its failure work one after
    the other: the first to write its answer closes the run and tells on_recovered; the
    second, which read the same failure, tells nothing (both told it)."""
    with site(tmp_path) as s:
        told = hooked(s)
        patient(s)
        s.responder.set_behaviour(Behaviour.HTTP_500)
        assert s.prime()[0] == 1  # no staple at all
        s.responder.set_behaviour(Behaviour.GOOD)
        s.responder.hold()
        first, second = waiting(s, "prime"), waiting(s, "prime")
        s.responder.release(Behaviour.GOOD)
        assert first.wait(60) == 0
        s.responder.release(Behaviour.GOOD)
        assert second.wait(60) == 0
        assert lines(told) == ["failure prime", "recovered prime"], lines(told)


def test_two_primes_failing_at_once_tell_one_failure_and_one_recovery(tmp_path: Path) -> None:
    """Two primes read the rows (no failure) and both fail: the first to write opens the
    run of failures and tells on_failure, the second continues it (both told it). A prime
    that works then tells on_recovered once; one more tells nothing (no failure before)."""
    with site(tmp_path) as s:
        told = hooked(s)
        patient(s)
        assert s.prime()[0] == 0
        s.responder.hold()
        first, second = waiting(s, "prime"), waiting(s, "prime")
        s.responder.release(Behaviour.TRY_LATER)
        assert first.wait(60) == 0  # the staple in hand is still valid
        s.responder.release(Behaviour.TRY_LATER)
        assert second.wait(60) == 0
        assert lines(told) == ["failure prime"], lines(told)
        s.responder.hold(False)
        for _ in range(2):
            assert s.prime()[0] == 0
        assert lines(told) == ["failure prime", "recovered prime"], lines(told)
        assert (s.row()["state"], s.row()["failures"]) == ("good", 0)


def test_a_prime_that_ends_a_run_of_failures_beside_a_keeper_is_told_once(
    tmp_path: Path,
) -> None:
    """The keeper holds a good staple; a prime fails, a second prime works: each is told
    once, by the prime that saw it (it knows the run of failures from the rows), and not
    again by the keeper that takes the attempt in at its next passes."""
    with site(tmp_path) as s:
        told = hooked(s)
        keeper = s.run()
        s.responder.set_behaviour(Behaviour.HTTP_500)
        assert s.prime()[0] == 0
        s.passes()
        assert (s.row()["state"], s.page()["state"]) == ("failing", "failing")
        s.responder.set_behaviour(Behaviour.GOOD)
        assert s.prime()[0] == 0
        wait_for(lambda: s.page()["state"] == "good")
        s.passes(3)
        assert s.row()["state"] == "good"
        assert lines(told) == ["failure prime", "recovered prime"], lines(told)
        s.stop(keeper)


def test_primes_from_cron_with_no_keeper_count_a_run_of_failures_and_tell_its_end(
    tmp_path: Path,
) -> None:
    """No keeper (a prime from cron): two primes fail, then one works. The second failure
    continues the first's run (failures 2, no second on_failure), and the prime that works
    ends it (on_recovered). They said failures 1 twice, on_failure twice, no recovery."""
    with site(tmp_path) as s:
        told = hooked(s)
        assert s.prime()[0] == 0
        s.responder.set_behaviour(Behaviour.HTTP_500)
        for failures in (1, 2):
            assert s.prime()[0] == 0
            row = s.row()
            assert (row["state"], row["failures"]) == ("failing", failures), row
        s.responder.set_behaviour(Behaviour.GOOD)
        assert s.prime()[0] == 0
        row = s.row()
        assert (row["state"], row["failures"]) == ("good", 0), row
        assert lines(told) == ["failure prime", "recovered prime"], lines(told)


def test_a_revocation_a_prime_fetched_beside_a_keeper_is_told_once(tmp_path: Path) -> None:
    """The keeper holds a good staple; a prime fetches the CA's revoked answer: on_revoked
    runs once, in the prime, not again in the keeper that takes the stored answer in."""
    with site(tmp_path) as s:
        told = hooked(s)
        keeper = s.run()
        s.responder.set_behaviour(Behaviour.REVOKED)
        s.prime()
        wait_for(lambda: s.page()["state"] == "revoked")
        s.passes(3)
        assert lines(told) == ["revoked prime"], lines(told)
        s.stop(keeper)


def test_a_keepers_failures_ended_by_a_prime_are_told_once(tmp_path: Path) -> None:
    """The keeper fails from its start (no staple); a prime that works ends the run: told
    once, by the prime, which read the keeper's failures in the rows."""
    with site(tmp_path) as s:
        told = hooked(s)
        s.responder.set_behaviour(Behaviour.HTTP_500)
        keeper = s.run()
        wait_for(lambda: lines(told) == ["failure run"])
        s.responder.set_behaviour(Behaviour.GOOD)
        assert s.prime()[0] == 0
        wait_for(lambda: s.page()["state"] == "good")
        s.passes(3)
        assert lines(told) == ["failure run", "recovered prime"], lines(told)
        s.stop(keeper)


def failure_told_then_state(s: Site) -> tuple[Path, sqlite3.Connection]:
    """A good prime, then a failed one (on_failure told, its run recorded); the hooks' file
    and the state database opened, for a test to make it what another version left."""
    told = hooked(s)
    assert s.prime()[0] == 0
    s.responder.set_behaviour(Behaviour.HTTP_500)
    assert s.prime()[0] == 0
    assert lines(told) == ["failure prime"]
    return told, sqlite3.connect(s.tmp / "state" / "state.db", isolation_level=None)


def test_a_run_of_failures_told_before_an_upgrade_is_told_recovered_after_it(
    tmp_path: Path,
) -> None:
    """A prime of an older mustaple (schema 3: no runs table) told on_failure; after the
    upgrade, the first prime that works must tell on_recovered. The runs table started empty,
    so nobody did, and the pager stayed on "failing"; the upgrade now takes the open runs
    from the status rows."""
    with site(tmp_path) as s:
        told, db = failure_told_then_state(s)
        db.execute("DROP TABLE runs")  # as schema 3 left it: its status row says failing
        db.execute("DROP TABLE alerts")
        db.execute("PRAGMA user_version = 3")
        db.close()
        s.responder.set_behaviour(Behaviour.GOOD)
        assert s.prime()[0] == 0
        assert lines(told) == ["failure prime", "recovered prime"], lines(told)
        assert s.prime()[0] == 0  # no run open now: nothing more to tell
        assert lines(told) == ["failure prime", "recovered prime"], lines(told)


def test_a_recovery_an_older_mustaple_told_after_a_downgrade_is_not_told_again(
    tmp_path: Path,
) -> None:
    """A failure told by this version (its run recorded), then a downgrade: the older
    mustaple got a good answer and told on_recovered itself, leaving its status row good
    and the schema at 3 (it knows no runs table). Upgraded again, the next good answer must
    not tell on_recovered a second time: the stale run goes at the upgrade."""
    with site(tmp_path) as s:
        told, db = failure_told_then_state(s)
        db.execute("UPDATE status SET state = 'good', failures = 0")  # as the older one left it
        db.execute("PRAGMA user_version = 3")
        db.close()
        s.responder.set_behaviour(Behaviour.GOOD)
        assert s.prime()[0] == 0
        assert lines(told) == ["failure prime"], lines(told)
