"""A server install as README.md "Install on a server" describes it: a wheel in a fresh venv.

The wheel is built from this tree (`pip wheel --no-deps`, without build isolation: no network),
installed into a new venv, and `mustaple demo` is run from another directory, so nothing of the
source tree can stand in for what the wheel holds. The dependencies come from the test venv
through a path file, as a server's pip would have installed them from the index. The systemd
unit is checked with `systemd-analyze verify`, its ExecStart against the documented path, and
its sandbox scored by `systemd-analyze security` (tests/test_systemd_unit.py runs it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "examples/mustaple.service"


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`args` run in `cwd` without PYTHONPATH, which would put a source tree before the
    installed wheel."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip


def _install_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Install on a server", 1)[1].split("\n## ", 1)[0]


def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_demo(tmp_path: Path) -> None:
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "-w", tmp_path / "wheels", ROOT, cwd=tmp_path)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheels").glob("mustaple-*.whl")
    venv = tmp_path / "opt-mustaple"
    assert _run(sys.executable, "-m", "venv", venv, cwd=tmp_path).returncode == 0
    site = _run(venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                cwd=tmp_path).stdout.strip()  # fmt: skip
    Path(site, "deps-from-the-test-venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = _run(venv / "bin/python", "-m", "pip", "install", "--no-deps", "--no-index", wheel,
               cwd=tmp_path)  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(venv / "bin/python", "-c", "import mustaple; print(mustaple.__file__)",
                 cwd=elsewhere)  # fmt: skip
    assert where.stdout.startswith(site), where  # the wheel's copy, not the source tree
    demo = _run(venv / "bin/mustaple", "demo", cwd=elsewhere)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "Done in" in demo.stdout
    _verify_unit(venv / "bin/mustaple", tmp_path)


def _verify_unit(installed: Path, tmp_path: Path) -> None:
    """The unit's ExecStart is the documented path, and systemd accepts every line of it."""
    text = UNIT.read_text()
    exec_start = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert exec_start is not None
    program = exec_start[1]
    assert program == "/usr/local/bin/mustaple"
    assert f"{program}\n" in _install_section() or f" {program}" in _install_section()
    assert re.search(r"^StateDirectory=mustaple$", text, re.M)
    assert re.search(r"^StateDirectoryMode=0755$", text, re.M)
    unit = tmp_path / "mustaple.service"
    unit.write_text(text.replace(program, str(installed)))
    verified = _run("systemd-analyze", "verify", unit, cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert "Unknown" not in verified.stderr
    # systemd's own score of the sandbox, 0 (locked down) to 10: at most 2 (it was 9.6)
    scored = _run("systemd-analyze", "security", "--offline=true", "--threshold=20", unit,
                  cwd=tmp_path)  # fmt: skip
    assert scored.returncode == 0, scored.stdout
