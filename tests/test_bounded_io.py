"""Every read of a user's file is bounded, and nothing but a regular file is written over:
devices, FIFOs and directories are one clear line (a FIFO with no writer is never waited for),
the size cap holds even where `st_size` says 0, and a leftover temporary file from an
interrupted write is cleaned at the next start. Commands run as real `mustaple` processes
where a hang or a runaway read would show."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mustaple.adapters.files import NotRegularFileError, clean_temporaries, read_input, write_atomic
from mustaple.adapters.sinks import FileSink
from mustaple.cli import main
from mustaple.core.delivery import Action, Delivery
from mustaple.core.errors import InputError
from mustaple.core.report import ExitCode
from mustaple.testing import CA, LeafFiles, ResponderThread

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
HOUR = 3600


@pytest.fixture(scope="module")
def responder() -> Iterator[ResponderThread]:
    with ResponderThread(CA()) as thread:
        yield thread


@pytest.fixture
def files(tmp_path: Path, responder: ResponderThread) -> LeafFiles:
    leaf = responder.responder.ca.issue("io.test", ocsp_urls=[responder.url])
    responder.add(leaf)
    return leaf.write(tmp_path / "cert")


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def null_device(path: Path) -> Path:
    """A character device node like /dev/null, made where the test wants it (we are root)."""
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return path


def mustaple(*args: str) -> subprocess.CompletedProcess[str]:
    """A real process, so a blocking or runaway read shows as a timeout, not a stuck test."""
    return subprocess.run(
        [MUSTAPLE, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def one_line(process: subprocess.CompletedProcess[str], *words: str) -> None:
    assert process.returncode == ExitCode.USAGE, process.stderr
    assert process.stderr.count("\n") == 1, process.stderr
    assert "Traceback" not in process.stderr
    for word in words:
        assert word in process.stderr


@pytest.mark.parametrize(
    ("path", "kind"), [("/dev/zero", "character device"), ("/tmp", "directory")]
)
def test_read_input_refuses_what_is_not_a_regular_file(path: str, kind: str) -> None:
    with pytest.raises(InputError, match=kind):
        read_input(path, "certificate")


def test_read_input_does_not_wait_for_a_fifo_writer(fifo: Path) -> None:
    started = time.monotonic()
    with pytest.raises(InputError, match="FIFO"):
        read_input(fifo, "certificate")
    assert time.monotonic() - started < 5


def test_the_size_cap_holds_where_st_size_is_zero() -> None:
    maps = Path("/proc/self/maps")  # a regular file whose st_size is 0
    assert maps.stat().st_size == 0
    with pytest.raises(InputError, match="larger than 100 bytes"):
        read_input(maps, "certificate", limit=100)
    assert len(read_input(maps, "certificate")) > 100


@pytest.mark.parametrize("config", ["/dev/zero", "/dev/urandom", "/tmp"])
def test_run_with_an_unreadable_config_is_one_line(config: str) -> None:
    one_line(mustaple("run", "--config", config), config, "not a regular file")


def test_run_with_a_fifo_config_does_not_block(fifo: Path) -> None:
    one_line(mustaple("run", "--config", str(fifo)), "FIFO")


def test_fetch_and_inspect_refuse_devices(files: LeafFiles, fifo: Path) -> None:
    one_line(mustaple("fetch", "/dev/urandom"), "character device")
    one_line(mustaple("fetch", str(files.fullchain), "--issuer", "/dev/zero"), "device")
    one_line(mustaple("inspect", "/dev/zero", "--cert", str(files.fullchain)), "device")
    one_line(mustaple("inspect", str(fifo), "--cert", str(files.fullchain)), "FIFO")
    one_line(mustaple("inspect", str(files.key), "--cert", str(fifo)), "FIFO")


def test_fetch_out_never_replaces_a_device_node(
    files: LeafFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = null_device(tmp_path / "null")
    code = main(["fetch", str(files.fullchain), "--out", str(node)])
    _, err = capsys.readouterr()
    assert code == ExitCode.USAGE
    assert "character device" in err
    assert err.count("\n") == 1
    assert stat.S_ISCHR(node.stat().st_mode)


def test_write_atomic_leaves_a_fifo_alone(fifo: Path) -> None:
    with pytest.raises(NotRegularFileError):
        write_atomic(fifo, b"x")
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in fifo.parent.iterdir()) == ["fifo"]  # no temporary left


def _delivery(tmp_path: Path, name: str = "io.test") -> Delivery:
    return Delivery(
        key="k",
        name=name,
        cert_path=tmp_path / "cert" / "fullchain.pem",
        action=Action.STAPLE,
        der=b"\x30\x03\x0a\x01\x00",
        status="good",
        bundle_has_issuer=True,
        issuer_pem=b"",
    )


def test_the_file_sink_never_writes_over_a_device(tmp_path: Path) -> None:
    staples = tmp_path / "staples"
    staples.mkdir()
    node = null_device(staples / "io.test.der")
    sink = FileSink("files", path=f"{staples}/{{name}}.der")
    [done] = asyncio.run(sink.deliver([_delivery(tmp_path)]))
    assert done.error is not None
    assert "character device" in done.error
    assert stat.S_ISCHR(node.stat().st_mode)


def test_temporaries_from_before_the_start_are_cleaned(tmp_path: Path) -> None:
    staples = tmp_path / "staples"
    staples.mkdir()
    old = staples / ".io.test.der.a1b2c3_4"  # what write_atomic makes, left by kill -9
    fresh = staples / ".other.der.zz99xx00"  # a write of ours under way (made after start)
    foreign = [staples / ".bashrc.a1b2c3d4", staples / ".io.test.pem.a1b2c3d4"]
    for path in (old, fresh, *foreign):
        path.write_bytes(b"partial")
    for path in (old, *foreign):
        os.utime(path, (time.time() - HOUR, time.time() - HOUR))
    os.utime(fresh, (time.time() + HOUR, time.time() + HOUR))
    sink = FileSink("files", path=f"{staples}/{{name}}.der")
    [done] = asyncio.run(sink.deliver([_delivery(tmp_path)]))
    assert done.error is None
    assert not old.exists()
    assert fresh.exists()
    assert all(path.exists() for path in foreign)
    assert (staples / "io.test.der").read_bytes() == b"\x30\x03\x0a\x01\x00"


def test_clean_temporaries_skips_what_is_not_a_regular_file(tmp_path: Path) -> None:
    directory = tmp_path / ".x.der.abcdefgh"
    directory.mkdir()
    pattern = re.compile(r".+\.der")
    assert clean_temporaries(tmp_path, pattern, before=time.time() + HOUR) == []
    assert directory.is_dir()
