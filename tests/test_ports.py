"""The suite's port helper: ports below the ephemeral range, in this worker's block, never
one that is taken, never the same one twice."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest

import ports


def test_free_ports_are_distinct_and_in_this_workers_block() -> None:
    handed = [ports.free_port() for _ in range(50)]
    assert len(set(handed)) == 50
    start = ports.FIRST + ports.BLOCK * ports._worker_index()
    assert all(start <= port < start + ports.BLOCK for port in handed)
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
    low, _ = map(int, ephemeral.split())
    assert max(handed) < low


def test_a_taken_port_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken, socket.socket() as free:
        taken.bind(("127.0.0.1", 0))
        free.bind(("127.0.0.1", 0))
        wanted = free.getsockname()[1]
        free.close()
        order = itertools.chain([taken.getsockname()[1], wanted], itertools.count(wanted + 1))
        monkeypatch.setattr(ports, "_next", order)
        assert ports.free_port() == wanted
