"""What every benchmark script shares: machine facts and its own marked section of a doc.

Each script owns the part of docs/performance.md between its markers
(`<!-- bench:NAME -->` ... `<!-- /bench:NAME -->`) and replaces only that part, so several
benchmarks can share the file.
"""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["INTRO", "cpu_model", "markers", "replace_section", "write_section"]

INTRO = """# Performance

Figures measured by the scripts in `bench/` (see bench/README.md). Each section is written by
one script, between its own markers; run the script again to refresh it.

How to read these figures: they depend on the machine (CPU model and number of cores, given in
each section; the reference machine has 2 cores), on the command (given in each section, so
the run can be repeated) and on the date (versions of Python, OpenSSL and cryptography change
the picture). Compare figures from the same section and run only; the ratios travel better
between machines than the absolute rates.
"""


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of benchmark `name`'s section."""
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo, or what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def replace_section(text: str, new: str, begin: str, end: str) -> str:
    """`text` with the section between `begin` and `end` replaced (or `new` appended)."""
    begins, ends = text.count(begin), text.count(end)
    if (begins, ends) == (0, 0):
        return text.rstrip("\n") + "\n\n" + new
    if (begins, ends) != (1, 1) or text.index(begin) > text.index(end):
        raise ValueError(f"the {begin} markers are broken; fix them by hand")
    head = text[: text.index(begin)]
    tail = text[text.index(end) + len(end) :].lstrip("\n")
    return head + new + ("\n" + tail if tail else "")


def write_section(path: Path, new: str, begin: str, end: str) -> None:
    """Replace the marked section of `path` (created with INTRO if missing); exit on bad markers."""
    text = path.read_text() if path.exists() else INTRO
    try:
        updated = replace_section(text, new, begin, end)
    except ValueError as exc:
        raise SystemExit(f"{path}: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(updated)
