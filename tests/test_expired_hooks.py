"""MUSTAPLE_EVENT=expired across processes: a staple's expiry is told once, by the process
whose write records it first, whatever processes see it (a `mustaple run`, a `mustaple prime`
beside it, the keeper after a restart); a newer staple that expires in turn is told again.

Real `mustaple run` and `mustaple prime` on one state directory. The certificate's responder
makes its answers at a clock the test sets: 4-day answers made so long ago that they expire
`LEFT` from now; it then says try later, so no fresh one comes. For a `prime` to hold the
staple while it expires, it primes a second certificate too, whose responder (another one)
holds its request until the keeper has told the expiry: the prime's first fetch failed at
once, the staple was still valid then, and the prime judges the time only once both fetches
are over. The hook script of test_attempt_hooks adds "expired run" or "expired prime".
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from mustaple.core.clock import utc_now
from mustaple.testing import Behaviour, ResponderThread
from mustaple.testing.craft import DEFAULT_VALIDITY
from outside import wait_for
from test_attempt_hooks import hooked, lines, patient
from test_recorded_attempts import MUSTAPLE, Site, site

LEFT = timedelta(seconds=20)  # an answer's time left when fetched: a start and a prime fit


def until(s: Site, condition: Callable[[], object], timeout: timedelta) -> None:
    """Until `condition()` is true, reading the keeper's passes meanwhile (a keeper whose
    notify socket is full waits for it to be read); fail after `timeout`."""
    deadline = utc_now() + timeout
    while not condition():
        assert utc_now() < deadline, "timed out"
        s.passes(1)


def expiries(told: Path) -> list[str]:
    """The expiries told, in order ("expired COMMAND")."""
    return [line for line in lines(told) if line.startswith("expired ")]


@contextmanager
def beside(s: Site) -> Iterator[tuple[ResponderThread, Path]]:
    """A second certificate in `live/`, answered by a responder of its own (fresh answers):
    that responder, and the certificate's file."""
    with ResponderThread(s.ca) as other:
        leaf = s.ca.issue("b.example.test", ocsp_urls=[other.url])
        other.add(leaf)
        folder = s.tmp / "live" / "b.example.test"
        leaf.write(folder)
        yield other, folder / "fullchain.pem"


def running_out(s: Site, made: list[datetime]) -> datetime:
    """A fresh answer for the certificate, stored by a prime, that expires `LEFT` from now;
    the responder then says try later. Returns when it expires."""
    made[0] = utc_now() - DEFAULT_VALIDITY + LEFT
    s.responder.set_behaviour(Behaviour.GOOD)
    assert s.prime()[0] == 0
    s.responder.set_behaviour(Behaviour.TRY_LATER)
    return made[0] + DEFAULT_VALIDITY


def seen_by_both(s: Site, other: ResponderThread, second: Path, told: Path) -> int:
    """A prime of both certificates holds the staple while it expires (its other fetch held
    until the keeper told the expiry); returns the prime's exit code once it is over."""
    other.hold()
    args = [MUSTAPLE, "prime", "--config", str(s.config), str(s.fullchain), str(second)]
    with (s.tmp / f"run{len(s.runs)}.err").open("w") as err:
        prime = subprocess.Popen(args, env=s.env, stderr=err, text=True)
    s.runs.append(prime)
    wait_for(lambda: other.held == 1)
    before = len(expiries(told))
    until(s, lambda: len(expiries(told)) > before, LEFT + timedelta(seconds=30))
    other.hold(False)
    other.release(Behaviour.GOOD)
    return prime.wait(60)


def test_a_keeper_and_a_prime_that_both_see_the_expiry_tell_it_once(tmp_path: Path) -> None:
    """Both held the staple as it expired and both ran on_expiring with
    MUSTAPLE_EVENT=expired: the operator was paged twice for one expiry. The keeper wrote
    it first: the prime tells nothing, and neither does the keeper after a restart."""
    made = [utc_now()]
    with site(tmp_path, clock=lambda: made[0]) as s, beside(s) as (other, second):
        told = hooked(s, ("on_expiring",))
        patient(s)
        running_out(s, made)
        keeper = s.run()
        assert seen_by_both(s, other, second, told) == 1  # no valid staple: the gate fails
        assert expiries(told) == ["expired run"], lines(told)
        s.stop(keeper)
        s.run()
        s.passes(3)
        assert expiries(told) == ["expired run"], lines(told)
        s.stop(s.runs[-1])


def test_a_newer_staple_that_expires_in_turn_is_told_again_once(tmp_path: Path) -> None:
    """A staple expires (told once, by the keeper, though a prime saw it too); a prime then
    stores a newer answer, which runs out in turn: its expiry is news, told once more."""
    made = [utc_now()]
    fresh = timedelta(0)  # no answer from the responder's cache: the newer one is made
    with site(tmp_path, lambda: made[0], fresh) as s, beside(s) as (other, second):
        told = hooked(s, ("on_expiring",))
        patient(s)
        running_out(s, made)
        keeper = s.run()
        seen_by_both(s, other, second, told)
        assert expiries(told) == ["expired run"], lines(told)
        running_out(s, made)  # the keeper takes the newer answer in at its next pass
        seen_by_both(s, other, second, told)
        assert expiries(told) == ["expired run", "expired run"], lines(told)
        s.stop(keeper)
