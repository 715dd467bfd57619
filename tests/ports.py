"""Free TCP ports for servers a test starts later, chosen so that nothing else takes them
meanwhile.

A port bound to 0 and released comes from the kernel's ephemeral range, where every
outgoing connection of the suite also takes its local port, and where the other xdist
worker draws too: between the choice and the server's bind, either could take it (a
`mustaple run` whose `[http]` port was taken exits, and its test waits for nothing).
`free_port` hands out ports below that range instead, from a block of its own to each
xdist worker, never the same one twice in a process, each checked free by binding it.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator

__all__ = ["free_port"]

FIRST = 10_000  # below Linux's ephemeral range (32768 to 60999 by default)
BLOCK = 4_000  # ports for each xdist worker: a whole suite uses a few hundred
BLOCKS = 5  # 10000 to 29999


def _worker_index() -> int:
    """0 for gw0 (or no xdist), 1 for gw1, ...; wrapped to the blocks there are."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = name.removeprefix("gw")
    return int(digits) % BLOCKS if digits.isdigit() else 0


def _candidates() -> Iterator[int]:
    start = FIRST + BLOCK * _worker_index()
    # a process's pid picks where it starts in its block, so that two runs in a row do not
    # walk the same ports in the same order (a server of the last run may linger)
    offset = os.getpid() % BLOCK
    ports = itertools.chain(range(start + offset, start + BLOCK), range(start, start + offset))
    return itertools.cycle(ports)


_next = _candidates()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port of `host` that nothing listens on, in this xdist worker's block, not
    handed out before by this process (until the block wraps). Checked without SO_REUSEADDR:
    a port some connection just closed (TIME_WAIT) is passed over too."""
    for _ in range(BLOCK):
        port = next(_next)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {FIRST + BLOCK * _worker_index()} + {BLOCK}")
