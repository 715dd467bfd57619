"""Readers above the keeper (metrics, progress, `prime`'s lines) are given frozen values: what
they hold cannot change the keeper, and the keeper's later work does not change what they hold."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from mustaple.core.lifecycle import CertState, Phase
from mustaple.core.verify import Staple
from mustaple.keeper.keeper import CertFile, Primed
from mustaple.testing import Behaviour
from mustaple.testing.world import keeper_world


def test_an_observer_is_told_a_frozen_certificate_file(tmp_path: Path) -> None:
    told: list[CertFile] = []

    async def scenario() -> None:
        async with keeper_world(tmp_path) as w:
            w.keeper.observers.append(lambda cert, _: told.append(cert))
            w.issue("a.test")
            await w.keeper.scan()
            await w.keeper.tick()
            (managed,) = w.keeper.managed.values()
            assert told == [CertFile(managed.key, "a.test", managed.path)]
            with pytest.raises(dataclasses.FrozenInstanceError):
                told[0].path = tmp_path  # type: ignore[misc]
            with pytest.raises(dataclasses.FrozenInstanceError):
                w.results[0].staple = None  # type: ignore[misc]
            assert managed.path != tmp_path
            assert w.keeper.managed[managed.path] is managed

    asyncio.run(scenario())


def test_prime_returns_frozen_results_that_later_work_does_not_change(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with keeper_world(tmp_path) as w:
            w.issue("a.test")
            path = tmp_path / "live" / "a.test" / "fullchain.pem"
            (primed,) = await w.keeper.prime([path])
            assert isinstance(primed, Primed)
            held = primed.state.held
            assert isinstance(held, Staple)
            assert (primed.path, primed.name, primed.phase) == (path, "a.test", "good")
            assert primed.sent is not None
            assert primed.sent[1] == held.der
            changes: list[Callable[[], None]] = [
                lambda: setattr(primed, "sent", None),
                lambda: setattr(primed, "state", CertState()),
                lambda: setattr(primed.state, "held", None),
                lambda: setattr(primed.sinks[0], "error", "broken"),
            ]
            for change in changes:
                with pytest.raises(dataclasses.FrozenInstanceError):
                    change()
            (life,) = w.keeper.lives.values()
            assert life.state.held is held
            assert life.sinks["record"].ok
            w.responder.set_behaviour(Behaviour.REVOKED)
            w.clock.now = life.state.next_due or w.clock.now
            await w.keeper.tick()
            assert life.state.phase is Phase.REVOKED  # the keeper moved on
            assert (primed.phase, primed.state.held) == ("good", held)

    asyncio.run(scenario())
