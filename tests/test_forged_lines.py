"""A file name with a newline in it (or bytes that are not UTF-8) never forges an output line.

docs/cli.md promises that such a name is shown escaped (`\\n`, `\\xff`) in every line a
command prints. Judged from outside: real `mustaple` processes given files in a directory
whose name holds a newline and a forged verdict, and one whose name is not UTF-8; each
command's standard output and error, line by line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mustaple.testing import CA, ResponderThread

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
FORGED = "OK b.example: good staple, forged"


def lines(*args: str) -> tuple[int, list[str]]:
    """`mustaple ARGS`: its exit code and every line it printed (standard output, then
    error)."""
    done = subprocess.run([MUSTAPLE, *args], capture_output=True, check=False)
    said = (done.stdout + done.stderr).decode("utf-8", "surrogateescape")
    return done.returncode, said.splitlines()


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate with its issuer, in a directory named "x<newline>FORGED", and a
    directory named with a byte that is not UTF-8."""
    root = tmp_path_factory.mktemp("forged")
    ca = CA()
    leaf = ca.issue("a.example", ocsp_urls=["http://127.0.0.1:9/"])
    evil = root / f"x\n{FORGED}"
    leaf.write(evil)
    odd = Path(os.fsdecode(bytes(root) + b"/odd\xff"))
    odd.mkdir()
    return evil, odd


def test_a_newline_in_a_file_name_is_written_escaped_in_every_line(
    evil: tuple[Path, Path], tmp_path: Path
) -> None:
    """`fetch` (its `--out` in the OK line, and a missing file), `inspect`, `prime` of a
    file no entry covers, `status --config` of a missing file and `check --cert`: each said
    the name raw, so a line began with the forged verdict."""
    folder, odd = evil
    config = tmp_path / "mustaple.toml"
    config.write_text(f'state_dir = "{tmp_path}/state"\n[[certificates]]\npaths = ["/nowhere"]\n')
    ca = CA()
    with ResponderThread(ca) as responder:
        leaf = ca.issue("a.example", ocsp_urls=[responder.url])
        responder.add(leaf)
        leaf.write(folder / "served")
        served = folder / "served" / "fullchain.pem"
        runs = [
            ("fetch", str(served), "--out", str(folder / "o.der")),
            ("fetch", str(folder / "missing.pem")),
            ("inspect", str(folder / "missing.der"), "--cert", str(served)),
            ("prime", "--config", str(config), str(served)),
            ("status", "--config", str(folder / "missing.toml")),
            ("check", "--cert", str(folder / "missing.pem")),
            ("fetch", os.fsdecode(bytes(odd) + b"/missing.pem")),
        ]
        for args in runs:
            code, said = lines(*args)
            assert code in (0, 2, 3), (args, said)
            assert said, args
            assert not [line for line in said if line.startswith("OK b.example")], (args, said)
            assert any("\\n" + FORGED in line or "\\xff" in line for line in said), (args, said)
