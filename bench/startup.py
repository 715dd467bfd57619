"""Benchmark: what one `mustaple` command costs as a whole process, start-up included.

A deploy hook runs `mustaple prime` once per renewal and a monitoring system runs `mustaple
check` every few minutes: for them the interpreter's start-up and the imports are most of the
cost. For each command below this script runs the `mustaple` console script as a new process,
`--runs` times after one warm-up, and takes the medians of its CPU time (user + system, from
the operating system's accounting of the finished child) and its wall time. The bytecode is
compiled once, at the warm-up, into a cache of the run's own (PYTHONPYCACHEPREFIX), as an
installed package has it: PYTHONDONTWRITEBYTECODE, if set, is not passed on, since compiling
every module of mustaple again at each start costs about 0.1 s on the reference machine.

* `--help`, `prime --help`: the group's and one command's help;
* `fetch CERT`: one certificate's staple from a throwaway CA responder on loopback;
* `prime --config FILE CERT`: the same certificate, stored and written by a file sink;
* `status --config FILE`: the table of the state just written.

With `--against REF` (a git commit, branch or tag), the same commands run with REF's src/ first
on the path, alternating with this tree's run by run (A B A B ...); the ratio is taken pair by
pair, so that the machine's drift affects both alike. The section also gives, for `prime`, the
import time of each top-level package (`python -X importtime`, self times, median of the runs).

    .venv/bin/python bench/startup.py                     # about 30 s; updates docs/performance.md
    .venv/bin/python bench/startup.py --against main      # this tree against main
    .venv/bin/python bench/startup.py --no-write          # print only
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from docsection import cpu_model, markers, write_section
from mustaple.testing import CA, ResponderThread

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = markers("startup")
PROGRAM = Path(sys.executable).parent / "mustaple"
TOP_PACKAGES = 8  # rows of the import table


@dataclass
class Side:
    """One copy of mustaple: this tree (no PYTHONPATH) or REF's src/ first on the path."""

    label: str
    pythonpath: str | None
    pycache: Path  # where its bytecode is cached
    cpu: dict[str, list[float]] = field(default_factory=dict)
    wall: dict[str, list[float]] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: pip compiles the bytecode
        env["PYTHONPYCACHEPREFIX"] = str(self.pycache)  # written at the warm-up, not in src/
        if self.pythonpath is not None:
            env["PYTHONPATH"] = self.pythonpath
        return env


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(side: Side, argv: Sequence[str]) -> tuple[float, float]:
    """CPU and wall seconds of one `mustaple ARGV` process; exit if it fails."""
    cpu, start = children_cpu(), time.perf_counter()
    done = subprocess.run(
        [str(PROGRAM), *argv], capture_output=True, env=side.environment(), check=False
    )
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(
            f"{side.label}: mustaple {' '.join(argv)} exited {done.returncode}:\n"
            f"{done.stderr.decode(errors='replace')[-2000:]}"
        )
    return cpu, wall


def measure(sides: Sequence[Side], commands: dict[str, list[str]], runs: int) -> None:
    for name, argv in commands.items():
        for side in sides:
            run_once(side, argv)  # warm-up: the disk cache, the .pyc files
            side.cpu[name], side.wall[name] = [], []
        for turn in range(runs):
            for side in sides if turn % 2 == 0 else list(reversed(sides)):
                cpu, wall = run_once(side, argv)
                side.cpu[name].append(cpu)
                side.wall[name].append(wall)
        print(
            f"  {name}: "
            + ", ".join(f"{s.label} CPU {statistics.median(s.cpu[name]):.3f} s" for s in sides),
            flush=True,
        )


def import_profile(
    side: Side, argv: Sequence[str], runs: int
) -> tuple[float, list[tuple[str, float]]]:
    """Median total self import time (ms) of `mustaple ARGV`, and each top package's median,
    largest first."""
    code = f"import sys; from mustaple.cli import main; sys.exit(main({list(argv)!r}))"
    totals: list[float] = []
    packages: dict[str, list[float]] = {}
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            capture_output=True,
            text=True,
            env=side.environment(),
            check=False,
        )
        found: Counter[str] = Counter()  # microseconds
        for line in done.stderr.splitlines():  # import time: SELF | CUMULATIVE | NAME
            own, _, name = line.removeprefix("import time:").partition("|")
            if line.startswith("import time:") and own.strip().isdigit():
                found[name.rpartition("|")[2].strip().split(".")[0]] += int(own)
        totals.append(sum(found.values()) / 1000)
        for package, us in found.items():
            packages.setdefault(package, []).append(us / 1000)
    medians = [(p, statistics.median(v + [0.0] * (runs - len(v)))) for p, v in packages.items()]
    return statistics.median(totals), sorted(medians, key=lambda pm: -pm[1])


def source_tree(ref: str, into: Path) -> Path:
    """REF's src/ exported into `into`."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def setup(directory: Path) -> tuple[ResponderThread, Path, Path]:
    """A CA responder on loopback, one must-staple leaf's fullchain and a config for it."""
    ca = CA(key_type="ec", name="mustaple startup bench")
    responder = ResponderThread(ca)
    responder.start()
    leaf = ca.issue("startup.test", ocsp_urls=[responder.url])
    responder.add(leaf)
    files = leaf.write(directory / "live")
    config = directory / "mustaple.toml"
    config.write_text(
        f'state_dir = "{directory / "state"}"\n'
        f'[[certificates]]\npaths = ["{files.fullchain}"]\n'
        f'[sinks.files]\ntype = "file"\npath = "{directory / "staples"}/{{name}}.der"\n'
    )
    return responder, files.fullchain, config


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def row(name: str, sides: Sequence[Side]) -> str:
    """One command's table row: each side's medians, then this tree's ratios to the other."""
    cells = [f"`mustaple {name}`"]
    for side in sides:
        cells += [
            f"{statistics.median(side.cpu[name]):.3f}",
            f"{statistics.median(side.wall[name]):.3f}",
        ]
    if len(sides) > 1:
        ours, other = sides
        cells += [
            f"**{median_ratio(ours.cpu[name], other.cpu[name]):.2f}**",
            f"{median_ratio(ours.wall[name], other.wall[name]):.2f}",
        ]
    return "| " + " | ".join(cells) + " |"


def table(sides: Sequence[Side]) -> list[str]:
    header = ["command"] + [
        f"{side.label}: {what}" for side in sides for what in ("CPU (s)", "wall (s)")
    ]
    if len(sides) > 1:
        header += [f"this / {sides[1].label}: CPU", "wall"]
    rule = "|---|" + "---:|" * (len(header) - 1)
    return ["| " + " | ".join(header) + " |", rule, *(row(name, sides) for name in sides[0].cpu)]


def section(
    sides: Sequence[Side], profile: tuple[float, list[tuple[str, float]]], runs: int, load: str
) -> str:
    against = f" --against {sides[1].label}" if len(sides) > 1 else ""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    total, packages = profile
    how = (
        f"Each command is the `mustaple` console script started as a new process, {runs} runs "
        "after one warm-up (which compiles the bytecode, as an install does)"
        + (", the two sides alternating run by run" if against else "")
        + "; medians of CPU time (user + system of the finished process) and wall time. `fetch` "
        "and `prime` ask a throwaway CA responder on loopback for one certificate's staple; "
        "`prime` also stores it and a file sink writes it; `status` reads the state back."
        + (" The ratios are medians of the run-by-run ratios." if against else "")
    )
    return "\n".join(
        [
            BEGIN,
            "## Start-up: one command as a whole process",
            "",
            f"Written by `bench/startup.py` on {when}. Command, from the repository root:",
            "",
            f"    .venv/bin/python bench/startup.py{against}",
            "",
            f"- CPU: {cpu_model()}, {os.cpu_count()} cores visible",
            f"- load average before the run: {load}",
            f"- Python {platform.python_version()}; *this tree*: src/ at commit {git_head()}"
            + (f"; *{sides[1].label}*: its src/ first on the path" if against else ""),
            "",
            *textwrap.wrap(how, 95),
            "",
            *table(sides),
            "",
            *textwrap.wrap(
                "Import time of `mustaple prime --config FILE CERT` in this tree (`python -X "
                "importtime`, self times summed per top-level package, medians of "
                f"{runs} runs): {total:.0f} ms in all, of which:",
                95,
            ),
            "",
            "| package | ms |",
            "|---|---:|",
            *(f"| {p} | {ms:.1f} |" for p, ms in packages[:TOP_PACKAGES]),
            END,
            "",
        ]
    )


def git_head() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per command and side")
    parser.add_argument("--against", help="a git ref whose src/ to compare with")
    parser.add_argument("--doc", type=Path, default=DOC, help="where to write the figures")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="mustaple-startup-") as tmp:
        sides = [Side("this tree", None, Path(tmp) / "pycache")]
        if args.against:
            tree = source_tree(args.against, Path(tmp))
            sides.append(Side(args.against, str(tree), Path(tmp) / "pycache-against"))
        responder, cert, config = setup(Path(tmp) / "site")
        try:
            commands = {
                "--help": ["--help"],
                "prime --help": ["prime", "--help"],
                "fetch CERT": ["fetch", str(cert)],
                "prime --config FILE CERT": ["prime", "--config", str(config), str(cert)],
                "status --config FILE": ["status", "--config", str(config)],
            }
            measure(sides, commands, args.runs)
            profile = import_profile(sides[0], commands["prime --config FILE CERT"], args.runs)
        finally:
            responder.stop()
    text = section(sides, profile, args.runs, load)
    print(text)
    if not args.no_write:
        write_section(args.doc, text, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
