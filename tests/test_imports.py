"""The pure core stays pure: its modules load no I/O library, so they can be read, tested and
used without an event loop, a network stack or a server; and the packages stay layered: the core
imports only the core, the adapters only the core and each other (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mustaple

PACKAGE = Path(mustaple.__file__).parent


def modules_of(package: str) -> tuple[str, ...]:
    """Every module of mustaple.`package`, as "package.module"."""
    found = (PACKAGE / package).glob("*.py")
    return tuple(sorted(f"{package}.{p.stem}" for p in found if p.stem != "__init__"))


# Every module of mustaple.core is pure: a module placed there is checked without being listed.
PURE = modules_of("core")
ADAPTERS = modules_of("adapters")
IO_LIBRARIES = ("aiohttp", "asyncio", "redis", "click", "rich", "prometheus_client")
# socket comes in with the standard library's email.utils, which cryptography loads, so it
# is checked where we can answer for it: no pure module imports it itself.
OWN_IMPORTS_BANNED = {*IO_LIBRARIES, "socket", "ssl", "sqlite3", "subprocess"}


# what the start-up paths of `prime`, `fetch` and the workers do without (aiohttp is loaded
# when an exchange first needs it: https://, an AIA download)
HTTP_CLIENT = ("aiohttp", "yarl", "multidict")
START_UP = (
    "adapters.workers",
    "keeper.keeper",
    "keeper.daemon",
    "front.progress",
    "cli.prime",
    "cli.fetch",
)


def loaded_after_importing(*modules: str, libraries: tuple[str, ...] = IO_LIBRARIES) -> set[str]:
    """The `libraries` in sys.modules after a fresh interpreter imported `modules`."""
    code = (
        "import sys\n"
        + "".join(f"import mustaple.{m}\n" for m in modules)
        + f"print(' '.join(m for m in {libraries!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def imported_names(module: str) -> set[str]:
    """The modules that `module` (a path below mustaple, such as "core.verify") imports at
    run time, by their full names (imports under TYPE_CHECKING are not at run time)."""
    tree = ast.parse((PACKAGE / f"{module.replace('.', '/')}.py").read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def own_imports(module: str) -> set[str]:
    """The top-level packages that `module`'s source imports at run time."""
    return {name.split(".")[0] for name in imported_names(module)}


def test_the_pure_core_loads_no_io_library() -> None:
    assert loaded_after_importing(*PURE) == set()


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_no_io_itself(module: str) -> None:
    assert own_imports(module) & OWN_IMPORTS_BANNED == set()


def outside(module: str, allowed: tuple[str, ...]) -> set[str]:
    """The modules of mustaple that `module` imports at run time from outside `allowed` (the
    package itself, which holds the version and the core's main names, is allowed)."""
    ours = {name for name in imported_names(module) if name.startswith("mustaple.")}
    return {name for name in ours if not f"{name}.".startswith(allowed)}


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_only_the_core(module: str) -> None:
    assert outside(module, ("mustaple.core.",)) == set()


@pytest.mark.parametrize("module", ADAPTERS)
def test_an_adapter_imports_only_the_core_and_adapters(module: str) -> None:
    assert outside(module, ("mustaple.core.", "mustaple.adapters.")) == set()


def test_the_check_finds_an_io_import() -> None:
    """The I/O checks above can fail: the web server loads aiohttp, and imports it itself."""
    assert {"aiohttp", "asyncio"} <= loaded_after_importing("serve.web")
    assert "aiohttp" in own_imports("serve.web")


@pytest.mark.parametrize("module", START_UP)
def test_the_start_up_paths_load_no_http_client_library(module: str) -> None:
    assert loaded_after_importing(module, libraries=HTTP_CLIENT) == set()


def test_the_http_client_check_can_fail() -> None:
    assert loaded_after_importing("serve.web", libraries=HTTP_CLIENT) == set(HTTP_CLIENT)


def test_config_loads_no_io_library() -> None:
    """config builds a `FetchPolicy`, which lives in fetchtypes, not beside aiohttp in fetch.
    (config reads its file, so it is an adapter, not part of the core.)"""
    assert loaded_after_importing("adapters.config") == set()


def test_the_packages_are_all_there() -> None:
    """The listings above found the modules: an empty one would make its checks pass."""
    assert {"core.certs", "core.request", "core.verify", "core.schedule"} <= set(PURE)
    assert {"adapters.fetch", "adapters.store", "adapters.config"} <= set(ADAPTERS)


def test_the_layering_check_finds_an_upward_import() -> None:
    """The keeper imports the adapters, which the core may not."""
    assert "mustaple.adapters.store" in outside("keeper.keeper", ("mustaple.core.",))
