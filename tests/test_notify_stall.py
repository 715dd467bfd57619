"""A notify socket nobody reads (a supervisor that hangs, a NOTIFY_SOCKET left in the
environment) never stalls `mustaple run`: Linux queues 10 datagrams on a Unix socket
(`net.unix.max_dgram_qlen`), and a blocking send then waited for ever, so after ten passes
the whole loop stopped: no refresh, no delivery, no answer on the HTTP endpoint. A status
notice that finds the queue full is dropped instead. Judged from outside: a real
`mustaple run` told to notify a socket the test does not read, and its `/status`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from mustaple.core.clock import utc_now
from outside import get_json, wait_for
from test_owed_reloads import passes
from test_recorded_attempts import site


def test_a_notify_socket_nobody_reads_does_not_stall_the_keeper(tmp_path: Path) -> None:
    with site(tmp_path) as s:
        keeper = s.run()  # watch_interval 1 s: a notice a second, none of them read from here
        later = utc_now() + timedelta(seconds=15)
        wait_for(lambda: utc_now() > later)
        page = get_json(f"http://127.0.0.1:{s.http_port}/status")  # it answered within 5 s
        assert page["certificates"][0]["state"] == "good"
        passes(s.sock, 2)  # and it goes on passing
        s.stop(keeper)
