"""The pure core stays pure: its modules load no I/O library, so they can be read, tested and
used without an event loop, a network stack or a server (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mustaple

PURE = (
    "certs",
    "checkjudge",
    "checkrender",
    "clock",
    "fetchplan",
    "fetchtypes",
    "issuers",
    "lifecycle",
    "reasons",
    "render",
    "report",
    "request",
    "schedule",
    "verify",
)
IO_LIBRARIES = ("aiohttp", "asyncio", "redis", "click", "rich", "prometheus_client")
# socket comes in with the standard library's email.utils, which cryptography loads, so it
# is checked where we can answer for it: no pure module imports it itself.
OWN_IMPORTS_BANNED = {*IO_LIBRARIES, "socket", "ssl", "sqlite3", "subprocess"}
PACKAGE = Path(mustaple.__file__).parent


def loaded_after_importing(*modules: str) -> set[str]:
    """The I/O libraries in sys.modules after a fresh interpreter imported `modules`."""
    code = (
        "import sys\n"
        + "".join(f"import mustaple.{m}\n" for m in modules)
        + f"print(' '.join(m for m in {IO_LIBRARIES!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def own_imports(module: str) -> set[str]:
    """The top-level packages that `module`'s source imports at run time (not under
    TYPE_CHECKING)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_the_pure_core_loads_no_io_library() -> None:
    assert loaded_after_importing(*PURE) == set()


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_no_io_itself(module: str) -> None:
    assert own_imports(module) & OWN_IMPORTS_BANNED == set()


def test_the_check_finds_an_io_import() -> None:
    """The two checks above can fail: the keeper loads aiohttp, fetch imports it itself."""
    assert {"aiohttp", "asyncio"} <= loaded_after_importing("keeper")
    assert "aiohttp" in own_imports("fetch")


def test_config_loads_no_io_library() -> None:
    """config builds a `FetchPolicy`, which lives in fetchtypes, not beside aiohttp in fetch."""
    assert loaded_after_importing("config") == set()
