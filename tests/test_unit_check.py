"""`mustaple run --check-config` knows the systemd unit's sandbox: from a shell every
directory root may write looks writable, so a sink the hardened unit (ProtectSystem=strict)
keeps from writing passed the check and failed at the unit's first delivery.

The unit files are found as systemd finds them (real files in directories of the test's);
end to end, a real `mustaple run --check-config` process reads the real
examples/mustaple.service, so the test follows the example as it changes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mustaple.adapters.config import load_config
from mustaple.adapters.preflight import preflight
from mustaple.adapters.systemdunit import load_sandbox
from mustaple.core.errors import InputError
from mustaple.core.report import ExitCode
from mustaple.testing.pki import CA
from sandbox import UNIT

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
STRICT = "[Service]\nProtectSystem=strict\nStateDirectory=mustaple\n"


@pytest.fixture
def systemd(tmp_path: Path) -> tuple[Path, Path]:
    """Two unit directories, as /etc/systemd/system and /usr/lib/systemd/system."""
    etc, lib = tmp_path / "etc/systemd/system", tmp_path / "usr/lib/systemd/system"
    etc.mkdir(parents=True)
    lib.mkdir(parents=True)
    return etc, lib


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_unit_is_found_as_systemd_finds_it(tmp_path: Path, systemd: tuple[Path, Path]) -> None:
    """/etc overrides /usr/lib; the drop-ins of both are read by file name, /etc's taking the
    place of /usr/lib's of the same name; a masked unit or drop-in is left out."""
    etc, lib = systemd
    srv = {name: tmp_path / "srv" / name for name in ("etc", "lib", "lib-30", "etc-30", "txt")}
    for directory in srv.values():
        directory.mkdir(parents=True)
    assert load_sandbox(directories=systemd) is None  # no unit: nothing to judge
    write(lib / "mustaple.service", "[Service]\nProtectSystem=full\n")
    packaged = load_sandbox(directories=systemd)
    assert packaged is not None
    assert packaged.refusal(str(srv["etc"])) is None
    write(etc / "mustaple.service", f"{STRICT}ReadWritePaths={srv['etc']}\n")
    write(lib / "mustaple.service.d/10-lib.conf", f"[Service]\nReadWritePaths={srv['lib']}\n")
    write(lib / "mustaple.service.d/30-both.conf", f"[Service]\nReadWritePaths={srv['lib-30']}\n")
    write(etc / "mustaple.service.d/20-reset.conf", "[Service]\nReadWritePaths=\n")
    write(etc / "mustaple.service.d/30-both.conf", f"[Service]\nReadWritePaths={srv['etc-30']}\n")
    write(etc / "mustaple.service.d/40-note.txt", f"[Service]\nReadWritePaths={srv['txt']}\n")
    box = load_sandbox(directories=systemd)
    assert box is not None
    allowed = {name: box.refusal(str(path)) is None for name, path in srv.items()}
    assert allowed == {"etc": False, "lib": False, "lib-30": False, "etc-30": True, "txt": False}
    assert box.refusal("/var/lib/mustaple") is None
    rule = box.refusal(str(srv["etc"]))
    assert rule is not None
    assert rule.source == str(etc / "mustaple.service")
    (etc / "mustaple.service.d/30-both.conf").unlink()
    (etc / "mustaple.service.d/30-both.conf").symlink_to(os.devnull)  # masks /usr/lib's too
    masked_drop_in = load_sandbox(directories=systemd)
    assert masked_drop_in is not None
    assert masked_drop_in.refusal(str(srv["lib-30"])) is not None
    srv["etc-30"].rmdir()  # a ReadWritePaths= path that does not exist is left out
    write(etc / "mustaple.service.d/50.conf", f"[Service]\nReadWritePaths=-{srv['etc-30']}\n")
    missing = load_sandbox(directories=systemd)
    assert missing is not None
    assert missing.refusal(str(srv["etc-30"])) is not None
    (etc / "mustaple.service").unlink()
    (etc / "mustaple.service").symlink_to(os.devnull)
    assert load_sandbox(directories=systemd) is None


def test_a_unit_that_cannot_be_read_is_one_warning(
    tmp_path: Path, systemd: tuple[Path, Path]
) -> None:
    """Found where systemd looks, a warning (the rest is checked); named by --unit, an
    error."""
    etc, _ = systemd
    (etc / "mustaple.service").write_bytes(b"[Service]\nReadWritePaths=/srv/\xff\n")
    cert = CA(key_type="ec").issue("a.test").write(tmp_path / "live").fullchain
    entry = f'[[certificates]]\npaths = ["{cert}"]\n'
    config = write(tmp_path / "m.toml", f'state_dir = "{tmp_path}/state"\n{entry}')
    found = preflight(load_config(config), unit_directories=systemd)
    assert found.errors == []
    assert found.warnings == [
        f"{etc}/mustaple.service: the systemd unit file is not UTF-8 text; what the unit lets "
        "mustaple write was not checked"
    ]
    named = preflight(load_config(config), etc / "mustaple.service")
    assert (named.errors, named.warnings) == (found.warnings, [])
    with pytest.raises(InputError, match="systemd unit file not found"):
        load_sandbox(tmp_path / "none.service")


@pytest.fixture
def certs() -> Iterator[Path]:
    """A certificate directory outside /tmp (the unit's private /tmp is writable), as
    /etc/haproxy/certs; /var/lib/mustaple-..., next to but not below the StateDirectory=."""
    assert os.geteuid() == 0, "writes a directory in /var/lib: as root (as CI runs)"
    top = Path(tempfile.mkdtemp(prefix="mustaple-unit-check-", dir="/var/lib"))
    try:
        CA(key_type="ec").issue("ha.test").write(top / "haproxy/certs")
        yield top / "haproxy/certs"
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=True)


def check(config: Path, unit: Path) -> subprocess.CompletedProcess[str]:
    command = [MUSTAPLE, "run", "--check-config", "--config", str(config), "--unit", str(unit)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def test_check_config_says_what_the_example_unit_keeps_from_being_written(
    tmp_path: Path, certs: Path
) -> None:
    """A HAProxy sink writing beside certificates the example unit keeps read-only: exit 2 and
    one line naming the key, the directory, the unit and the line to add; with a drop-in
    adding that line, exit 0. From the same shell, without the unit, the directory is
    writable: the check passed, and the unit failed at its first delivery."""
    config = write(
        tmp_path / "mustaple.toml",
        f'state_dir = "/var/lib/mustaple"\n[[certificates]]\npaths = ["{certs}/fullchain.pem"]\n'
        '[sinks.haproxy]\ntype = "haproxy"\nsocket = "/run/haproxy/admin.sock"\n',
    )
    refused = check(config, UNIT)
    assert (refused.returncode, refused.stdout) == (ExitCode.USAGE, ""), refused.stderr
    assert refused.stderr == (
        f"mustaple: {config}: sinks.haproxy.ocsp_dir (not set: beside the certificates): "
        f"{certs} is read-only for "
        f"mustaple.service (ProtectSystem=strict in {UNIT}): add ReadWritePaths={certs} to "
        "the unit, e.g. with `systemctl edit mustaple.service` (docs/systemd.md)\n"
    )
    installed = tmp_path / "system/mustaple.service"  # the example, as installed, with a drop-in
    installed.parent.mkdir()
    installed.symlink_to(UNIT)
    write(
        tmp_path / "system/mustaple.service.d/override.conf", f"[Service]\nReadWritePaths={certs}\n"
    )
    allowed = check(config, installed)
    assert (allowed.returncode, allowed.stderr) == (ExitCode.GOOD, "")
    assert allowed.stdout == f"{config}: OK (1 certificate entry, 1 sink)\n"


def test_check_config_says_a_sink_in_the_units_private_tmp_reaches_no_server(
    tmp_path: Path, certs: Path
) -> None:
    """A file sink writing below /tmp: from a shell it is writable, and under the example
    unit too (PrivateTmp=), but into the service's own /tmp, which nginx never sees: exit 2
    and one line saying so (it passed: every staple would have been lost)."""
    config = write(
        tmp_path / "mustaple.toml",
        f'state_dir = "/var/lib/mustaple"\n[[certificates]]\npaths = ["{certs}/fullchain.pem"]\n'
        '[sinks.nginx]\ntype = "file"\npath = "/tmp/mustaple-staples/{name}.der"\n',
    )
    refused = check(config, UNIT)
    assert (refused.returncode, refused.stdout) == (ExitCode.USAGE, ""), refused.stderr
    assert refused.stderr == (
        f"mustaple: {config}: sinks.nginx.path: /tmp/mustaple-staples is private to "
        f"mustaple.service (PrivateTmp=true in {UNIT}): no server, and no mustaple command run "
        "from a shell, sees what it writes in its own /tmp, emptied at every stop; choose a "
        "directory outside /tmp and /var/tmp\n"
    )


def test_check_config_judges_the_directory_of_certificates_not_there_yet(
    tmp_path: Path, certs: Path
) -> None:
    """A HAProxy sink given `DIR/*.pem` before any certificate is in DIR (the examples'
    /etc/haproxy/certs/*.pem on a new server): DIR is where it will write, so the unit's
    read-only DIR is said now (it was not looked at until certificates came: the check
    passed, with a warning only, and the unit failed later)."""
    pending = certs.parent / "pending"
    pending.mkdir()
    config = write(
        tmp_path / "mustaple.toml",
        f'state_dir = "/var/lib/mustaple"\n[[certificates]]\npaths = ["{pending}/*.pem"]\n'
        '[sinks.haproxy]\ntype = "haproxy"\nsocket = "/run/haproxy/admin.sock"\n',
    )
    refused = check(config, UNIT)
    assert (refused.returncode, refused.stdout) == (ExitCode.USAGE, ""), refused.stderr
    assert refused.stderr.splitlines() == [
        f"mustaple: {config}: sinks.haproxy.ocsp_dir (not set: beside the certificates): "
        f"{pending} is read-only for "
        f"mustaple.service (ProtectSystem=strict in {UNIT}): add ReadWritePaths={pending} to "
        "the unit, e.g. with `systemctl edit mustaple.service` (docs/systemd.md)",
        f"mustaple: warning: {config}: certificates[0].paths: '{pending}/*.pem' matches no "
        "file yet",
    ]
