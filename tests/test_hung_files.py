"""A configured file on a file system that hangs (a dead NFS mount; here a real FUSE mount
whose daemon never answers a look-up, tests/hungfs.py) holds up only its own entry: a real
`mustaple run` starts, delivers, and picks up new files of its other entries, names the file
that hangs in one line (once, across a reload), stops at once when told, and looks at the
entry again once its file system answers."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from hungfs import HungFS
from mustaple.keeper.keeper import WORKERS_FROM
from mustaple.testing import CA, ResponderThread
from outside import MUSTAPLE, get_json, http_get, keeping, wait_for
from ports import free_port

STUCK = "has not answered in 2s"  # watch_timeout: wide, a loaded machine is slow


def write_config(tmp_path: Path, hung: Path, port: int, sinks: str = "", beside: str = "") -> Path:
    """The entry on the hung file system first (and `beside`, a path of the same entry),
    then one on the local disk; a file sink (and `sinks`)."""
    config = tmp_path / "mustaple.toml"
    same = f', "{beside}"' if beside else ""
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n'
        f'[[certificates]]\npaths = ["{hung}/hang.pem"{same}]\n'
        f'[[certificates]]\npaths = ["{tmp_path}/live/*/fullchain.pem"]\n'
        f'[sinks.files]\ntype = "file"\npath = "{tmp_path}/staples/{{name}}.der"\n'
        f"{sinks}"
        '[policy]\ntimeout = "2s"\nwatch_interval = "1s"\nwatch_timeout = "2s"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    return config


def gauge(port: int) -> str:
    """mustaple_certificate_files_unanswered, as /metrics says it."""
    _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    (line,) = (
        line
        for line in body.decode().splitlines()
        if line.startswith("mustaple_certificate_files_unanswered ")
    )
    return line.split()[-1]


def test_a_file_that_hangs_holds_up_only_its_own_entry(tmp_path: Path) -> None:
    ca, port = CA(), free_port()
    log = tmp_path / "stderr"
    with HungFS(["hang.pem"]) as hung, ResponderThread(ca) as responder:
        config = write_config(tmp_path, hung.root, port)
        leaves = {name: ca.issue(name, ocsp_urls=[responder.url]) for name in ("a", "b")}
        for leaf in leaves.values():
            responder.add(leaf)
        leaves["a"].write(tmp_path / "live" / "a")
        with keeping(config, log, within=10) as keeper:
            wait_for((tmp_path / "staples" / "a.der").exists)
            keeper.send_signal(signal.SIGHUP)  # the new keeper does not wait on it again
            wait_for(lambda: "configuration reloaded" in log.read_text())
            leaves["b"].write(tmp_path / "live" / "b")  # a new file of the other entry
            wait_for((tmp_path / "staples" / "b.der").exists)
            status = get_json(f"http://127.0.0.1:{port}/status")
            assert {c["name"]: c["state"] for c in status["certificates"]} == {
                "a": "good",
                "b": "good",
            }
            (unanswered,) = status["files_unanswered"]
            assert unanswered["at"] == f"{hung.root}/hang.pem"
            assert unanswered["paths"] == [f"{hung.root}/hang.pem"]
            assert gauge(port) == "1.0"
            _, page = http_get(f"http://127.0.0.1:{port}/")
            assert b"has not answered since" in page
            shown, warnings = tmp_path / "status.json", tmp_path / "status.err"
            with shown.open("wb") as out, warnings.open("wb") as err:
                command = [MUSTAPLE, "status", "--config", str(config), "--json"]
                status_command = subprocess.Popen(command, stdout=out, stderr=err)
            wait_for(lambda: shown.read_bytes().endswith(b"]\n"))  # given in 2 s, not held
            hung.release()  # the file system answers (the file is not there)
            assert status_command.wait(10) == 0
            assert [row["name"] for row in json.loads(shown.read_text())] == ["a", "b"]
            warned = warnings.read_text()
            assert warned.count("\n") == 1
            assert warned.startswith(f"certificate files: the look at {hung.root}/hang.pem has not")
            wait_for(lambda: "has answered" in log.read_text())
            wait_for(lambda: not get_json(f"http://127.0.0.1:{port}/status")["files_unanswered"])
            assert gauge(port) == "0.0"
    said = log.read_text()
    assert said.count(STUCK) == 1, said  # once, though a reload came in between
    assert f"the look at {hung.root}/hang.pem {STUCK}" in said
    assert f"the files of {hung.root}/hang.pem are kept as last seen" in said


def test_a_keeper_whose_files_hang_stops_at_once(tmp_path: Path) -> None:
    """Told to stop while its look at hang.pem still waits, the keeper ends its work at
    once. The process itself can end only once the file system answers: the kernel lets no
    thread go while its call waits on a FUSE daemon that took it."""
    ca, port = CA(), free_port()
    log = tmp_path / "stderr"
    with HungFS(["hang.pem"]) as hung, ResponderThread(ca) as responder:
        config = write_config(tmp_path, hung.root, port)
        leaf = ca.issue("a", ocsp_urls=[responder.url])
        responder.add(leaf)
        leaf.write(tmp_path / "live" / "a")

        def stopped_then_released() -> None:
            wait_for(lambda: "INFO stopped" in log.read_text(), timeout=10)
            hung.release()

        with keeping(config, log, stopping=stopped_then_released, within=10):
            wait_for((tmp_path / "staples" / "a.der").exists)
            wait_for(lambda: STUCK in log.read_text())
    assert log.read_text().count(STUCK) == 1


def test_a_sink_whose_files_hang_holds_up_only_itself(tmp_path: Path) -> None:
    """A file sink whose directory is on the hung file system: its deliveries fail after 2 s
    saying which file hangs (and at once after that), while the other sink gets every
    staple, new certificates included, and the passes go on."""
    ca, port = CA(), free_port()
    log = tmp_path / "stderr"
    with HungFS(["hang.pem"]) as hung, ResponderThread(ca) as responder:
        stuck = f'[sinks.stuck]\ntype = "file"\npath = "{hung.root}/hang.pem/{{name}}.der"\n'
        config = write_config(tmp_path, hung.root, port, stuck)
        leaves = {name: ca.issue(name, ocsp_urls=[responder.url]) for name in ("a", "b")}
        for leaf in leaves.values():
            responder.add(leaf)
        leaves["a"].write(tmp_path / "live" / "a")
        with keeping(config, log, stopping=hung.release, within=10):
            wait_for((tmp_path / "staples" / "a.der").exists)
            leaves["b"].write(tmp_path / "live" / "b")
            wait_for((tmp_path / "staples" / "b.der").exists)
            rows = get_json(f"http://127.0.0.1:{port}/status")["certificates"]
            for row in rows:
                sinks = {sink["sink"]: sink for sink in row["sinks"]}
                assert sinks["files"]["ok"], sinks
                assert not sinks["stuck"]["ok"]
                assert f"{hung.root}/hang.pem/" in sinks["stuck"]["error"]
                assert "has not answered" in sinks["stuck"]["error"]
    said = log.read_text()
    assert f"a: sink stuck: {hung.root}/hang.pem/a.der has not answered" in said
    assert f"b: sink stuck: {hung.root}/hang.pem/a.der has not answered" in said  # at once


def test_a_certificate_file_whose_read_hangs_holds_up_only_itself(tmp_path: Path) -> None:
    """A file whose stat answers but whose read never does (an NFS attribute cache; here a
    FUSE file whose open is never answered): it was read on the event loop, so `run` never
    got to READY and delivered nothing. Now the read waits `watch_timeout` in a thread: one
    line names the file, a file of the same entry waits (one line says why), the other
    entry's certificate is fetched and delivered, a new one too, the local responder
    answers; once the file system answers, the waiting file is read and delivered."""
    ca, port = CA(), free_port()
    log, same = tmp_path / "stderr", tmp_path / "same" / "fullchain.pem"
    with HungFS([], reads=["hang.pem"]) as hung, ResponderThread(ca) as responder:
        config = write_config(tmp_path, hung.root, port, beside=str(same))
        names = ("a", "b", "c")
        leaves = {name: ca.issue(name, ocsp_urls=[responder.url]) for name in names}
        for leaf in leaves.values():
            responder.add(leaf)
        leaves["a"].write(tmp_path / "live" / "a")
        leaves["c"].write(same.parent)
        with keeping(config, log, within=10):
            wait_for((tmp_path / "staples" / "a.der").exists)
            leaves["b"].write(tmp_path / "live" / "b")
            wait_for((tmp_path / "staples" / "b.der").exists)
            rows = get_json(f"http://127.0.0.1:{port}/status")["certificates"]
            states = {row["cert"]: row["state"] for row in rows}
            assert states[f"{hung.root}/hang.pem"] == "unusable", states
            assert states[str(same)] == "unusable", states
            assert list(states.values()).count("good") == 2
            hung.release()  # the file system answers: the file of the same entry is read
            wait_for((tmp_path / "staples" / "c.der").exists)
    said = log.read_text()
    assert said.count(f"{hung.root}/hang.pem: its read has not answered in 2s") == 1, said
    waited = f"{same}: not read while the read of {hung.root}/hang.pem, of the same entry"
    assert said.count(waited) == 1, said


def test_a_held_certificate_whose_read_starts_to_hang_keeps_its_staple(tmp_path: Path) -> None:
    """The file of a certificate held is covered by one whose read hangs (the FUSE file
    bind-mounted over it; file events off, so every pass looks at it): what was held
    stays (its row good, its staple file as written), one line says so, /status, the
    status page and the metric of files that hang list it until it is read again (they
    said nothing of it), and another entry's new certificate is still fetched and
    delivered."""
    ca, port = CA(), free_port()
    log, held = tmp_path / "stderr", tmp_path / "live" / "a" / "fullchain.pem"
    config = tmp_path / "mustaple.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n'
        f'[[certificates]]\npaths = ["{held}"]\n'
        f'[[certificates]]\npaths = ["{tmp_path}/more/*/fullchain.pem"]\n'
        f'[sinks.files]\ntype = "file"\npath = "{tmp_path}/staples/{{name}}.der"\n'
        '[policy]\ntimeout = "2s"\nwatch_interval = "1s"\nwatch_timeout = "2s"\n'
        'rescan_interval = "1s"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    with HungFS([], reads=["hang.pem"]) as hung, ResponderThread(ca) as responder:
        leaves = {name: ca.issue(name, ocsp_urls=[responder.url]) for name in ("a", "b")}
        for leaf in leaves.values():
            responder.add(leaf)
        leaves["a"].write(held.parent)
        staple = tmp_path / "staples" / "a.der"

        def stopped_then_released() -> None:
            wait_for(lambda: "INFO stopped" in log.read_text(), timeout=10)
            hung.release()

        try:
            with keeping(config, log, stopping=stopped_then_released, within=10):
                wait_for(staple.exists)
                written = staple.read_bytes()
                subprocess.run(["mount", "--bind", f"{hung.root}/hang.pem", str(held)], check=True)
                wait_for(lambda: "what it held is kept" in log.read_text())
                leaves["b"].write(tmp_path / "more" / "b")
                wait_for((tmp_path / "staples" / "b.der").exists)
                status = get_json(f"http://127.0.0.1:{port}/status")
                rows = status["certificates"]
                assert {row["name"]: row["state"] for row in rows} == {"a": "good", "b": "good"}
                assert staple.read_bytes() == written
                (unanswered,) = status["files_unanswered"]
                assert (unanswered["at"], unanswered["paths"]) == (str(held), [str(held)])
                assert unanswered["kind"] == "read"
                assert gauge(port) == "1.0"
                _, page = http_get(f"http://127.0.0.1:{port}/")
                assert f"The read of {held} has not answered since".encode() in page
                subprocess.run(["umount", "-l", str(held)], check=True)
                wait_for(lambda: f"{held}: back as it was last read" in log.read_text())
                wait_for(
                    lambda: not get_json(f"http://127.0.0.1:{port}/status")["files_unanswered"]
                )
                assert gauge(port) == "0.0"
        finally:
            subprocess.run(["umount", "-l", str(held)], check=False)
    said = log.read_text()
    assert said.count(f"{held}: its read has not answered in 2s") == 1, said


def test_a_read_that_hangs_in_a_worker_process_holds_up_only_its_file(tmp_path: Path) -> None:
    """A start with WORKERS_FROM files or more reads them in worker processes. A read there
    that hung stopped the worker's loop: silent for 30 s, the worker was ended and its files
    loaded in the keeper's process, on the event loop, where the read hung for good (`run`
    never got to READY). Now a worker's reads wait `watch_timeout` in threads as the
    keeper's do: the same lines, the same file of the same entry waiting, the other entry's
    certificates delivered, no worker ended; released, the waiting file is read."""
    ca, port = CA(), free_port()
    log, same = tmp_path / "stderr", tmp_path / "same" / "fullchain.pem"
    staples = tmp_path / "staples"
    with HungFS([], reads=["hang.pem"]) as hung, ResponderThread(ca) as responder:
        config = write_config(tmp_path, hung.root, port, beside=str(same))
        config.write_text(config.read_text().replace("[policy]\n", "[policy]\nworkers = 2\n"))
        names = [f"w{index:04d}" for index in range(WORKERS_FROM)]
        for name in [*names, "c"]:
            leaf = ca.issue(name, ocsp_urls=[responder.url])
            responder.add(leaf)
            leaf.write(same.parent if name == "c" else tmp_path / "live" / name)
        with keeping(config, log, within=10):
            wait_for(lambda: len(list(staples.glob("w*.der"))) == len(names), timeout=60)
            rows = get_json(f"http://127.0.0.1:{port}/status")["certificates"]
            states = {row["cert"]: row["state"] for row in rows}
            assert states[f"{hung.root}/hang.pem"] == "unusable", states
            assert states[str(same)] == "unusable", states
            assert list(states.values()).count("good") == len(names)
            hung.release()
            wait_for((staples / "c.der").exists)
    said = log.read_text()
    assert said.count(f"{hung.root}/hang.pem: its read has not answered in 2s") == 1, said
    waited = f"{same}: not read while the read of {hung.root}/hang.pem, of the same entry"
    assert said.count(waited) == 1, said
    assert "worker" not in said, said


def test_one_shot_commands_on_a_file_whose_read_hangs_say_so(tmp_path: Path) -> None:
    """`fetch` (its certificate, and its `--out`), `check --cert` and `inspect` read their
    files in a thread given their `--timeout`: a file whose read hangs is one line and the
    command's exit code for bad input; they waited, silent, for good. (A process whose
    thread waits on a FUSE daemon ends only once the daemon answers, or goes: here, once
    released; on NFS a killed read ends at once.)"""
    with HungFS([], reads=["hang.pem"]) as hung:
        stuck = str(hung.root / "hang.pem")
        response = tmp_path / "response.der"
        response.write_bytes(b"\x30\x03\x0a\x01\x01")  # malformedRequest: never judged here
        local = CA().issue("a", ocsp_urls=["http://127.0.0.1:9/"]).write(tmp_path / "a")
        commands = {
            "fetch": ["fetch", stuck, "--timeout", "1"],
            "out": ["fetch", str(local.fullchain), "--out", stuck, "--timeout", "1"],
            "check": ["check", "--cert", stuck, "--timeout", "1"],
            "inspect": ["inspect", str(response), "--cert", stuck, "--timeout", "1"],
        }
        started, running = time.monotonic(), {}
        for name, argv in commands.items():
            out, err = (tmp_path / f"{name}.{kind}" for kind in ("out", "err"))
            with out.open("wb") as stdout, err.open("wb") as stderr:
                running[name] = subprocess.Popen([MUSTAPLE, *argv], stdout=stdout, stderr=stderr)

        def said(name: str, kind: str) -> str:
            return (tmp_path / f"{name}.{kind}").read_text()

        wait_for(lambda: all(said(name, "err" if name != "check" else "out") for name in commands))
        assert time.monotonic() - started < 20
        hung.release()
        codes = {name: process.wait(30) for name, process in running.items()}
    assert codes == {"fetch": 2, "out": 2, "check": 3, "inspect": 2}
    waited = "has not answered in {} (a file system that hangs, such as an NFS server gone away?)"
    assert said("fetch", "err") == f"mustaple: {stuck} {waited.format('1s')}\n"
    assert said("out", "err") == said("fetch", "err")
    assert said("check", "out") == f"UNKNOWN {stuck} {waited.format('1s')}\n"
    assert said("inspect", "err") == f"mustaple: {stuck} {waited.format('1s')}\n"
    assert (
        not said("fetch", "out")
        + said("out", "out")
        + said("check", "err")
        + said("inspect", "out")
    )


def test_prime_all_leaves_out_a_file_whose_read_hangs(tmp_path: Path) -> None:
    """`mustaple prime --all` with a configured file whose read hangs: after `watch_timeout`
    it is left out (one UNUSABLE line says why), every other file is primed and delivered,
    and the exit code is 2 (a file left out). A file given by name that hangs stops the
    prime before anything is fetched, as any unusable file given by name does."""
    ca = CA()
    with HungFS([], reads=["hang.pem"]) as hung, ResponderThread(ca) as responder:
        config = write_config(tmp_path, hung.root, free_port())
        leaf = ca.issue("a", ocsp_urls=[responder.url])
        responder.add(leaf)
        leaf.write(tmp_path / "live" / "a")
        out, err = tmp_path / "prime.out", tmp_path / "prime.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            command = [MUSTAPLE, "prime", "--config", str(config), "--all"]
            prime = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        wait_for((tmp_path / "staples" / "a.der").exists)
        wait_for(lambda: "UNUSABLE" in out.read_text())
        b = ca.issue("b", ocsp_urls=[responder.url])
        responder.add(b)
        b.write(tmp_path / "live" / "b")
        named = [str(tmp_path / "live" / "b" / "fullchain.pem"), f"{hung.root}/hang.pem"]
        with (tmp_path / "named.err").open("wb") as stderr:
            command = [MUSTAPLE, "prime", "--config", str(config), *named]
            by_name = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        wait_for(lambda: "has not answered" in (tmp_path / "named.err").read_text())
        hung.release()
        codes = prime.wait(30), by_name.wait(30)
        asked = [served.serial for served in responder.requests]
    said, printed = err.read_text(), out.read_text()
    assert codes == (2, 2), said
    why = f"{hung.root}/hang.pem: its read has not answered in 2s"
    assert said.count(why) == 1, said
    assert f"UNUSABLE {why}" in printed, printed
    assert "OK a: good staple" in printed, printed
    assert "Traceback" not in said
    assert why in (tmp_path / "named.err").read_text()
    assert b.cert.serial_number not in asked  # stopped before anything was fetched
    assert not (tmp_path / "staples" / "b.der").exists()
