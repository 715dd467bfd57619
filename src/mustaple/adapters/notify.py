"""systemd's sd_notify protocol, without libsystemd: READY, WATCHDOG, STOPPING, STATUS.

When NOTIFY_SOCKET is not set (not run by systemd with Type=notify), every call does nothing.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

__all__ = ["notify", "watchdog_interval"]


def notify(*lines: str) -> bool:
    """Send state lines such as 'READY=1'; True when a notify socket took them. Never waits:
    a socket whose queue is full (a supervisor that does not read it: Linux queues 10
    datagrams) drops them, where a blocking send would stop the whole daemon."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto("\n".join(lines).encode(), address)
    except OSError:
        return False
    return True


MAX_WATCHDOG = timedelta(days=1)  # a longer WATCHDOG_USEC is pinged at least this often


def watchdog_interval() -> timedelta | None:
    """How often to send WATCHDOG=1 (half of WATCHDOG_USEC, at most MAX_WATCHDOG), or None
    when not asked (not set, 0 as systemd sets for "off", not a number, another pid's)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not (usec.isascii() and usec.isdigit()) or (pid and pid != str(os.getpid())):
        return None
    longest = MAX_WATCHDOG // timedelta(microseconds=1)
    micros = min(int(usec), longest) if len(usec) <= len(str(longest)) else longest
    return timedelta(microseconds=micros / 2) if micros else None
