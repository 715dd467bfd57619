"""Benchmark: what the frozen values given to readers above the keeper cost, per certificate.

A keeper primes N certificates (no socket: a `MemoryFetcher` answers with the CA's good
response, delivered to a recording sink); then, on its real `Managed` files, this times what
the keeper makes for its readers that it did not make before they took frozen values:

* observer: the `CertFile` (key, name, path) each refresh's observers are told, instead of
  the `Managed` itself (once per fetch: the hot path of a 100k prime);
* primed: the `Primed` (path, name, must-staple, `CertState`, sinks, what the sinks confirmed)
  `prime` returns per file.

The goal is under 3 µs per certificate for each. Each figure is the best of several rounds
over all N files, divided by N, with garbage collection off (as `timeit`).

    .venv/bin/python bench/readers.py              # 2,000 certificates, updates the docs
    .venv/bin/python bench/readers.py --no-write   # print only

The figures go to docs/performance.md, between the `<!-- bench:readers -->` markers only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from docsection import cpu_model, markers, write_section
from mustaple.adapters.config import CertEntry, Config, KeeperPolicy
from mustaple.adapters.store import SqliteStore
from mustaple.core.certs import Target
from mustaple.keeper.keeper import CertFile, Keeper
from mustaple.keeper.keeper import _primed as primed_file  # exactly what `prime` makes
from mustaple.testing import CA, RecordingSink, good_spec
from mustaple.testing.craft import craft_response
from mustaple.testing.memory import MemoryFetcher
from mustaple.testing.pki import Leaf

GOAL_US = 3.0
DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--certificates", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(measure(Path(tmp), args.certificates, args.rounds))
    section = render(figures, args.certificates, args.rounds)
    print(section)
    if not args.no_write:
        write_section(DOC, section, *markers("readers"))
    if max(figures.values()) >= GOAL_US:
        raise SystemExit(1)


async def measure(tmp: Path, count: int, rounds: int) -> dict[str, float]:
    """Prime `count` certificates, then time each reader's value over every file."""
    ca = CA(now=datetime.now(UTC) - timedelta(days=1), key_type="ec")
    leaves: dict[int, Leaf] = {}
    for index in range(count):
        leaf = ca.issue(f"c{index}.test", ocsp_urls=["http://127.0.0.1:9/"])
        leaves[leaf.cert.serial_number] = leaf
        leaf.write(tmp / "live" / f"c{index}")

    def answer(target: Target, now: datetime) -> bytes:
        return craft_response(good_spec(leaves[target.serial], ca.issuing, now))

    config = Config(
        path=tmp / "mustaple.toml",
        state_dir=tmp / "state",
        certificates=(CertEntry(paths=(str(tmp / "live" / "*" / "fullchain.pem"),)),),
        sinks={"record": {"type": "record"}},
        policy=KeeperPolicy(),
    )
    store, sink = SqliteStore(tmp / "state" / "state.db"), RecordingSink()
    keeper = Keeper(config, store=store, sinks={sink.name: sink}, fetcher=MemoryFetcher(answer))
    async with keeper:
        primed = await keeper.prime(sorted((tmp / "live").glob("*/fullchain.pem")))
    store.close()
    assert [p.phase for p in primed] == ["good"] * count, "the prime must succeed"
    files = list(keeper.managed.values())

    def told() -> None:
        for m in files:
            CertFile(m.key, m.name, m.path)

    def results() -> None:
        for m in files:
            primed_file(m)

    return {
        "observer": best(told, rounds) / len(files),
        "primed": best(results, rounds) / len(files),
    }


def best(work: Callable[[], None], rounds: int) -> float:
    """The fastest of `rounds` runs of `work`, in µs (garbage collection off, as `timeit`)."""
    times = []
    for _ in range(rounds):
        gc.disable()
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
        gc.enable()
    return min(times) * 1e6


def render(figures: dict[str, float], count: int, rounds: int) -> str:
    begin, end = markers("readers")
    rows = "\n".join(
        f"| {what} | {us:.2f} | {'yes' if us < GOAL_US else 'NO'} |" for what, us in figures.items()
    )
    return f"""{begin}
## Frozen values for the readers above the keeper

What the keeper makes for its readers, per certificate, on {count:,} primed certificates
(`.venv/bin/python bench/readers.py`; best of {rounds} rounds; {cpu_model()}). The goal is
under {GOAL_US:.0f} µs each: *observer* is once per fetch, on the hot path of a large prime.

| value | µs per certificate | under the goal |
| --- | --- | --- |
{rows}

Both are new costs: readers were handed the keeper's `Managed` before.
Measured {datetime.now(UTC):%Y-%m-%d}.
{end}
"""


if __name__ == "__main__":
    main()
