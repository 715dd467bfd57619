"""An interrupted `mustaple prime` leaves the truth behind, judged from outside: real `mustaple
prime` processes (in process, and with worker processes) against the test responder, which
hangs for some certificates so that the prime is in the middle when the signal comes (sent once
the responder has received the requests that put it there, never after a sleep); then the exit
code, the lines, the staple directory (which staples, no temporary file), the requests the
responder saw, the processes left and `mustaple status --json`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mustaple.keeper.keeper import WORKERS_FROM
from mustaple.testing import CA, Behaviour, ResponderThread
from mustaple.testing.responder import Served
from outside import wait_for

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
NOT_DELIVERED = "not delivered: the prime was interrupted"


@dataclass
class Site:
    """Certificate files, the responder that answers for them (hanging for some), a file
    sink with a reload command, and the configuration of both."""

    tmp: Path
    responder: ResponderThread
    names: list[str]
    serials: list[int]
    ca: CA

    @property
    def config(self) -> Path:
        return self.tmp / "mustaple.toml"

    @property
    def staples(self) -> Path:
        return self.tmp / "staples"

    @property
    def reloads(self) -> Path:
        return self.tmp / "reloads.log"

    def configure(self, *, workers: int, reload: str) -> None:
        self.config.write_text(
            f'state_dir = "{self.tmp / "state"}"\n'
            f"[policy]\nworkers = {workers}\nconcurrency = 2\nper_host = {workers or 1}\n"
            'timeout = "10m"\nattempts = 1\n'
            f'[[certificates]]\npaths = ["{self.tmp}/live/*/fullchain.pem"]\n'
            f'[sinks.files]\ntype = "file"\npath = "{self.staples}/{{name}}.der"\n'
            f"reload = {json.dumps(reload)}\n"
        )

    def asked(self) -> int:
        """The requests the responder received for these certificates: a stray process of
        another test, its responder's port used again by this one, may ask it for its own
        (answered unauthorized: another CA, whatever the serial number)."""
        return sum(map(self.ours, self.responder.requests))

    def ours(self, served: Served) -> bool:
        """Whether the responder's request was for one of these certificates."""
        return served.serial in self.serials and served.behaviour is not Behaviour.UNAUTHORIZED

    def files(self) -> list[str]:
        return sorted(str(p) for p in (self.tmp / "live").glob("*/fullchain.pem"))

    def prime(self, *, own_group: bool = False) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [MUSTAPLE, "prime", "--config", str(self.config), *self.files()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=own_group,
        )

    def rows(self) -> dict[str, dict[str, Any]]:
        """`mustaple status --json`, by certificate name."""
        shown = subprocess.run(
            [MUSTAPLE, "status", "--config", str(self.config), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return {row["name"]: row for row in json.loads(shown.stdout)}

    def delivered(self) -> set[str]:
        """The certificates whose staple file is in the sink's directory."""
        return {p.name.removesuffix(".der") for p in self.staples.glob("*.der")}

    def temporaries(self) -> list[str]:
        """Files the atomic writes left (`.NAME.XXXXXXXX`), or anything else unexpected."""
        if not self.staples.exists():
            return []
        return [p.name for p in self.staples.iterdir() if not p.name.endswith(".der")]


@contextmanager
def site(tmp: Path, count: int, hanging_from: int) -> Iterator[Site]:
    """`count` must-staple certificates `w0.example`...; from `hanging_from` on, the responder
    never answers for them. A good answer is the same bytes for an hour."""
    ca = CA()
    with ResponderThread(ca, cache_for=timedelta(hours=1)) as responder:
        names, serials = [], []
        for index in range(count):
            leaf = ca.issue(f"w{index}.example", ocsp_urls=[responder.url])
            responder.add(leaf)
            if index >= hanging_from:
                responder.set_behaviour(Behaviour.HANG, serial=leaf.cert.serial_number)
            leaf.write(tmp / "live" / f"w{index:04d}")
            names.append(f"w{index}.example")
            serials.append(leaf.cert.serial_number)
        yield Site(tmp, responder, names, serials, ca)


def interrupted(process: subprocess.Popen[str], signum: int, *, group: bool) -> tuple[str, str]:
    """Send `signum` (to the process group, as a terminal's Ctrl-C or systemd does, if
    `group`); its output once it has exited, which it must."""
    if group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return out, err


def done_and_not(err: str) -> tuple[int, int, int]:
    """(done, of, not done) from the one line an interrupted prime prints on stderr."""
    (line,) = [line for line in err.splitlines() if "prime interrupted" in line]
    words = line.split(": ", 2)[2].split()
    return int(words[0]), int(words[2]), int(words[5])


def assert_rows_tell_the_truth(s: Site, delivered: set[str]) -> None:
    """A row says good with every sink taking its staple only where the staple file is; the
    others say that nothing was fetched yet (these certificates had no stored staple)."""
    rows = s.rows()
    assert set(rows) == set(s.names)
    for name, row in rows.items():
        if name in delivered:
            assert row["state"] == "good", row
            assert row["health"] == "ok", row
            assert [(k["sink"], k["ok"]) for k in row["sinks"]] == [("files", True)], row
        else:
            assert row["state"] == "pending", row
            assert row["health"] == "critical", row
            assert row["sinks"] == [], row


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_prime_interrupted_while_fetching_delivers_what_it_fetched_and_says_so(
    tmp_path: Path, signum: signal.Signals
) -> None:
    with site(tmp_path, 5, hanging_from=3) as s:
        s.configure(workers=0, reload=f"echo reloaded >> {s.reloads}")
        process = s.prime()
        # one request at a time, in order: the fourth hangs, so the first three are done
        wait_for(lambda: s.asked() == 4, timeout=60)
        out, err = interrupted(process, signum, group=False)
        assert process.returncode == CODES[signum], err
        assert s.asked() == 4  # no fetch started after the signal
    assert "Traceback" not in err
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["OK", "w0.example:"],
        ["OK", "w1.example:"],
        ["OK", "w2.example:"],
    ]
    assert done_and_not(err) == (3, 5, 2)
    assert signum.name in err
    assert s.delivered() == {"w0.example", "w1.example", "w2.example"}
    assert s.temporaries() == []
    assert s.reloads.read_text() == "reloaded\n"  # one batch, as at a normal end
    assert_rows_tell_the_truth(s, s.delivered())


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c-to-the-group", "sigterm-to-prime"],
)
def test_a_prime_in_worker_processes_interrupted_leaves_no_worker_and_tells_the_truth(
    tmp_path: Path, signum: signal.Signals, group: bool
) -> None:
    count, good = WORKERS_FROM + 20, WORKERS_FROM // 2
    with site(tmp_path, count, hanging_from=good) as s:
        s.configure(workers=2, reload=f"echo reloaded >> {s.reloads}")
        process = s.prime(own_group=group)
        # each worker fetches one at a time: once both hang, no request can come
        wait_for(lambda: s.asked() == good + 2, timeout=120)
        workers = _children(process.pid)
        assert len(workers) == 2
        out, err = interrupted(process, signum, group=group)
        assert process.returncode == CODES[signum], err
        assert s.asked() == good + 2  # none started after the signal
    assert "Traceback" not in err
    assert [p for p in workers if Path(f"/proc/{p}").exists()] == []
    done, of, not_done = done_and_not(err)
    assert (of, done + not_done) == (count, count)
    delivered = s.delivered()
    assert 0 < len(delivered) == done <= good
    assert {line.split()[1].rstrip(":") for line in out.splitlines()} == delivered
    assert all(line.startswith("OK ") for line in out.splitlines())
    assert s.temporaries() == []
    assert s.reloads.read_text() == "reloaded\n"
    assert_rows_tell_the_truth(s, delivered)


def test_a_second_signal_cuts_the_delivery_short_and_the_rows_say_what_no_server_took(
    tmp_path: Path,
) -> None:
    with site(tmp_path, 3, hanging_from=2) as s:
        started = tmp_path / "reload-started"
        s.configure(workers=0, reload=f"touch {started}; sleep 600")  # a reload that hangs
        process = s.prime()
        wait_for(lambda: s.asked() == 3, timeout=60)
        process.send_signal(signal.SIGTERM)  # stop fetching: deliver what was fetched
        wait_for(started.exists, timeout=60)  # the files are in place, the reload hangs
        out, err = interrupted(process, signal.SIGINT, group=False)
        assert process.returncode == 143, err  # the first signal's
        assert "Traceback" not in err
        assert out == ""  # nothing was done to the end
        assert done_and_not(err) == (0, 3, 3)
        assert s.temporaries() == []
        rows = s.rows()
        for name in ("w0.example", "w1.example"):  # fetched and stored, no server took them
            assert rows[name]["state"] == "good"
            assert rows[name]["health"] == "warning"
            (sink,) = rows[name]["sinks"]
            assert not sink["ok"]
            assert sink["error"].startswith(NOT_DELIVERED)
        assert rows["w2.example"]["state"] == "pending"
        assert rows["w2.example"]["sinks"] == []
        # the next prime reloads the server, though the files it writes are in place already
        s.configure(workers=0, reload=f"echo reloaded >> {s.reloads}")
        again = subprocess.run(
            [MUSTAPLE, "prime", "--config", str(s.config), *s.files()[:2]],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert s.reloads.read_text() == "reloaded\n"
        rows = s.rows()
        assert [rows[name]["health"] for name in ("w0.example", "w1.example")] == ["ok", "ok"]


def hanging(s: Site) -> int:
    """How many requests the responder holds, never answering."""
    return sum(request.behaviour is Behaviour.HANG for request in s.responder.requests)


@contextmanager
def running(s: Site) -> Iterator[subprocess.Popen[str]]:
    """`mustaple run` in a process group of its own (a unit's processes), killed if the
    test leaves it running."""
    process = subprocess.Popen(
        [MUSTAPLE, "run", "--config", str(s.config)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def stopped(process: subprocess.Popen[str]) -> str:
    """SIGTERM to the process group of `mustaple run` (as `systemctl stop`); its stderr once
    it has exited 0, which it must, without a traceback."""
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "worker-processes"])
def test_systemctl_stop_during_a_pass_on_a_hanging_ca_stops_run_without_waiting_for_it(
    tmp_path: Path, workers: int
) -> None:
    """SIGTERM to every process of a `mustaple run` (as `systemctl stop` sends it), while its
    pass waits on a responder that hangs (10 minutes a request): it ran on until systemd's
    stop timeout killed it. It stops fetching at once, delivers what it fetched, and exits 0,
    leaving no worker behind."""
    count = WORKERS_FROM + 20 if workers else 5
    with site(tmp_path, count, hanging_from=count // 2) as s:
        s.configure(workers=workers, reload=f"echo reloaded >> {s.reloads}")
        with running(s) as process:
            # one request at a time per worker (or in process): once each hangs, none can come
            wait_for(lambda: hanging(s) == max(workers, 1), timeout=120)
            asked = s.asked()
            helpers = _children(process.pid)
            assert len(helpers) == workers
            stopped(process)
        assert s.asked() == asked  # none started after the signal
    assert [p for p in helpers if Path(f"/proc/{p}").exists()] == []
    assert len(s.delivered()) == asked - max(workers, 1)  # every staple fetched is delivered
    assert s.temporaries() == []
    assert s.reloads.read_text() == "reloaded\n"
    assert_rows_tell_the_truth(s, s.delivered())


def test_systemctl_stop_while_a_pass_loads_a_new_file_over_a_hanging_aia_url(
    tmp_path: Path,
) -> None:
    """A certificate file added while `mustaple run` runs names a caIssuers URL that never
    answers (10 minutes a request): SIGTERM while the pass's scan waits on it stops the
    keeper at once, exit 0; the file is read at the next start."""
    with site(tmp_path, 1, hanging_from=1) as s, socket.socket() as aia:
        aia.bind(("127.0.0.1", 0))
        aia.listen()
        aia.settimeout(60)
        s.configure(workers=0, reload="true")
        with running(s) as process:
            wait_for(lambda: s.delivered() == {"w0.example"}, timeout=60)
            url = f"http://127.0.0.1:{aia.getsockname()[1]}/ca.der"
            leaf = s.ca.issue("new.example", ocsp_urls=[s.responder.url], ca_issuer_urls=[url])
            (s.tmp / "live" / "new").mkdir()
            (s.tmp / "live" / "new" / "fullchain.pem").write_bytes(leaf.cert_pem)
            connection, _ = aia.accept()  # the pass's scan waits on the download
            with connection:
                stopped(process)


def test_sighup_during_a_pass_on_a_hanging_ca_reloads_at_once_and_reaches_those_behind_it(
    tmp_path: Path,
) -> None:
    """SIGHUP to `mustaple run` while its pass waits on a responder that hangs (10 minutes a
    request) for the second of four certificates: the reload waited for the pass's end. It
    ends the fetching as a stop does (the first staple is delivered), the new configuration's
    sink gets the staples at once, and the new pass asks first for the two certificates the
    cut pass never reached, then again for the hanging one: SIGHUPs however frequent cannot
    keep a pass from reaching the certificates behind a hanging one."""
    with site(tmp_path, 4, hanging_from=4) as s:
        s.responder.set_behaviour(Behaviour.HANG, serial=s.serials[1])
        s.configure(workers=0, reload=f"echo reloaded >> {s.reloads}")
        with running(s) as process:
            wait_for(lambda: hanging(s) == 1, timeout=120)  # one request at a time, in order
            moved = tmp_path / "staples2"
            s.config.write_text(s.config.read_text().replace(str(s.staples), str(moved)))
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: hanging(s) == 2, timeout=60)  # the new keeper's pass hangs too
            asked = [r.serial for r in s.responder.requests if s.ours(r)]
            assert asked == [s.serials[i] for i in (0, 1, 2, 3, 1)]
            assert s.delivered() == {"w0.example"}  # cut short: what it fetched, delivered
            assert {p.name for p in moved.iterdir()} == {"w0.example.der"}  # reloaded
            stopped(process)
    assert {p.name for p in moved.iterdir()} == {
        "w0.example.der",
        "w2.example.der",
        "w3.example.der",
    }


def test_a_stop_during_the_delivery_of_a_start_leaves_a_reload_owed_that_the_next_start_pays(
    tmp_path: Path,
) -> None:
    """`mustaple run` writes the stored staples at its start (the staple files were removed)
    and its reload hangs: SIGTERM kills the reload, and nothing recorded that it was owed, so
    the next start found the files in place and did not reload (the server kept an older
    staple, or none, while status said OK). The rows now say that the sink did not take the
    staples, and the next start reloads over the unchanged files."""
    with site(tmp_path, 2, hanging_from=2) as s:
        s.configure(workers=0, reload=f"echo reloaded >> {s.reloads}")
        primed = subprocess.run(
            [MUSTAPLE, "prime", "--config", str(s.config), *s.files()],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert primed.returncode == 0, primed.stdout + primed.stderr
        for staple in s.staples.glob("*.der"):
            staple.unlink()
        started = tmp_path / "reload-started"
        s.configure(workers=0, reload=f"touch {started}; sleep 600")  # a reload that hangs
        with running(s) as process:
            wait_for(started.exists, timeout=60)  # the files are in place, the reload hangs
            stopped(process)
        assert s.delivered() == {"w0.example", "w1.example"}
        for row in s.rows().values():
            assert row["state"] == "good", row
            (sink,) = row["sinks"]
            assert not sink["ok"], row
            assert sink["error"].startswith("not delivered: `mustaple run` was stopped"), row
        s.configure(workers=0, reload=f"echo reloaded >> {s.reloads}")
        with running(s) as process:
            # the reload ran, and the keeper recorded it (a stop in between is a stop during
            # the delivery again: rows that owe it, rightly)
            wait_for(lambda: [row["health"] for row in s.rows().values()] == ["ok", "ok"], 60)
            stopped(process)
        assert s.reloads.read_text() == "reloaded\n" * 2
