"""The client matrix run: mustaple and the real clients judge every case; docs/strictness.md.

    python -m mustaple.testing.strictness --write docs/strictness.md

builds the cases (`mustaple.testing.matrix`), validates each with mustaple at the time it was
made, serves each to the real clients (`mustaple.testing.judges`) and writes the table: case x
(mustaple, Firefox, GnuTLS, curl, openssl ocsp). tests/test_client_matrix.py runs each client
again and checks its column against the document, so the document is the record of a run.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from mustaple.core.certs import Target
from mustaple.core.verify import Staple, verify
from mustaple.testing.judges import Firefox, Verdict, Workspace, judge_with_cli
from mustaple.testing.matrix import Case, build_cases, roots_of

__all__ = [
    "CLIENTS",
    "DELIBERATE",
    "PACKAGES",
    "Table",
    "installed_versions",
    "mustaple_verdict",
    "parse",
    "recorded_versions",
    "render",
    "run",
]

CLIENTS = {
    "firefox": "Firefox",
    "gnutls": "GnuTLS",
    "curl": "curl",
    "openssl": "openssl ocsp",
}
COLUMNS = {"mustaple": "mustaple", **CLIENTS}
# The Debian packages whose code makes each client's verdict: a client's column changes with
# them (openssl's security update 3.0.19-1~deb12u2 changed six of its cells), so the page says
# which versions judged, and the tests say which changed when a column differs.
PACKAGES = {
    "firefox": ("firefox-esr", "libnss3"),
    "gnutls": ("gnutls-bin", "libgnutls30"),
    "curl": ("curl", "libcurl4", "libssl3"),
    "openssl": ("openssl", "libssl3"),
}
Table = dict[str, dict[str, Verdict]]  # case name -> column -> verdict

# Why mustaple refuses a staple that every client accepts: one entry per such case.
# (docs/reasons.md, "Deliberate choices", says the same per reason code)
_CLOCKS = (
    "a response signed in our future means this machine's clock or the responder's is wrong; "
    "until that is fixed, every other time judgement is in doubt (retryable: it is taken once "
    "the clocks agree)"
)
_NO_NEXT_UPDATE = (
    "the CA promises nothing about how long its answer holds, so no refresh can be planned "
    "against it (Firefox takes it for a day, GnuTLS for 15 days, curl for ever); not "
    "retryable, `--allow-missing-next-update` lifts it and then treats it as Firefox does"
)
_PARSER = (
    "the parser mustaple validates with (cryptography's) refuses the response, so mustaple "
    "cannot check it; no known responder sends this, and a staple it cannot check is not "
    "served (`malformed`: if it lasts, report it to the CA)"
)
_ONE_EXPIRY = (
    "a staple has one expiry; judging every entry for our certificate by the same strict time "
    "rules keeps that date one every client honours (GnuTLS and curl read only the first "
    "entry, mozpkix allows a day of slop)"
)
DELIBERATE: dict[str, str] = {
    "singles/ours-then-md5-entry": (
        "mustaple cannot tell whose certificate an entry hashed with an algorithm it does not "
        "compute is about, so it cannot rule out another issuer's, which OpenSSL refuses"
    ),
    "singles/good-then-expired-hour": _ONE_EXPIRY,
    "singles/good-then-from-future": _ONE_EXPIRY,
    "extensions/response-duplicate-nonce": "an extension appears at most once (RFC 5280 4.2); "
    + _PARSER,
    "signature/ecdsa-with-null": "ecdsa-with-SHA256 takes no parameters (RFC 5758 3.2); " + _PARSER,
    "time/produced-hour-ahead": _CLOCKS,
    "time/produced-2-days-ahead": _CLOCKS,
    "time/no-next-update": _NO_NEXT_UPDATE,
    "time/no-next-update-20h": _NO_NEXT_UPDATE,
}


def mustaple_verdict(case: Case, now: datetime) -> Verdict:
    """mustaple's verdict: accepted when it would staple the response (valid and good)."""
    outcome = verify(case.staple, Target(case.leaf.cert, case.leaf.issuer), now)
    if isinstance(outcome, Staple):
        return Verdict(True) if outcome.good else Verdict(False, f"`{outcome.status.name.lower()}`")
    return Verdict(False, f"`{outcome.code}`")


def mustaple_column(cases: Sequence[Case], now: datetime) -> dict[str, Verdict]:
    return {case.name: mustaple_verdict(case, now) for case in cases}


def client_columns(cases: Sequence[Case], clients: Sequence[str]) -> dict[str, dict[str, Verdict]]:
    """Each client's verdict on every case (the CLI clients and Firefox side by side)."""
    with tempfile.TemporaryDirectory(prefix="mustaple-matrix-") as directory:
        workspace = Workspace(Path(directory), roots_of(cases))

        async def all_clients() -> list[dict[str, Verdict]]:
            jobs = [
                _firefox(cases) if client == "firefox"
                else asyncio.to_thread(judge_with_cli, workspace, cases, client)
                for client in clients
            ]  # fmt: skip
            return list(await asyncio.gather(*jobs))

        return dict(zip(clients, asyncio.run(all_clients()), strict=True))


async def _firefox(cases: Sequence[Case]) -> dict[str, Verdict]:
    async with Firefox(roots_of(cases)) as firefox:
        return await firefox.judge_cases(cases)


def run(clients: Sequence[str] = tuple(CLIENTS)) -> tuple[list[Case], Table]:
    """Build the cases now and have mustaple and `clients` judge them."""
    now = datetime.now(UTC)
    cases = build_cases(now)
    columns = {"mustaple": mustaple_column(cases, now), **client_columns(cases, clients)}
    table = {
        case.name: {column: columns[column][case.name] for column in columns} for case in cases
    }
    return cases, table


# --- The document -------------------------------------------------------------------------------


def all_clients_accept(row: Mapping[str, Verdict]) -> bool:
    return all(row[client].accepted for client in CLIENTS)


def deliberate_cases(table: Table) -> list[str]:
    """Cases mustaple refuses while every client accepts."""
    return [
        name
        for name, row in table.items()
        if not row["mustaple"].accepted and all_clients_accept(row)
    ]


def open_disagreements(table: Table) -> list[str]:
    """Cases mustaple accepts while some client refuses: a broken promise."""
    return [
        name
        for name, row in table.items()
        if row["mustaple"].accepted and not all_clients_accept(row)
    ]


_INTRO = """\
# Strictness: mustaple against the real clients

mustaple promises that a staple it accepts is accepted by the strict clients, so a
must-staple handshake never fails because of what it stapled. This page is the record of the
client matrix that checks the promise: {count} hand-made OCSP responses
(`mustaple.testing.matrix`), each for its own must-staple certificate, each served through a
real TLS handshake on loopback to

- **Firefox**: Debian's firefox-esr, headless, a fresh profile trusting the test roots,
  driven over WebDriver BiDi (the cell is the navigation's NSS or mozpkix error code). OCSP is
  on (`security.OCSP.enabled` 1, `security.OCSP.require` false) and the leaves' OCSP URL is a
  closed loopback port, so every staple problem shows; with OCSP off, Firefox lets a few
  staple errors pass (a staple for another certificate, an expired one);
- **GnuTLS**: `gnutls-cli --ocsp`;
- **curl**: `curl --cert-status` (OpenSSL);
- **openssl ocsp**: `openssl ocsp -respin ... -CAfile ... -issuer ... -cert ...` on the same
  bytes (accepted when the signature verifies, the status is good and the times are valid).

mustaple "accepts" a response it would staple: valid and good. Before judging, each client
is shown to refuse a must-staple certificate served with no staple (tests/test_client_matrix.py).

Regenerate with `python -m mustaple.testing.strictness --write docs/strictness.md`; the tests
run every client again and compare its column with this page. A client's verdicts change with
its packages (a Debian security update can change them), so the page says which versions
judged:

| client | judged with (Debian packages) |
| --- | --- |
{versions}
"""


def render(table: Table, cases: Sequence[Case], versions: Mapping[str, str]) -> str:
    """docs/strictness.md for `table`, judged by the clients' packages `versions`."""
    what = {case.name: case.what for case in cases}
    judged = "\n".join(f"| {label} | {versions[client]} |" for client, label in CLIENTS.items())
    lines = [_INTRO.format(count=len(table), versions=judged), "## Deliberate choices", ""]
    lines.append(
        "Cases mustaple refuses although every client accepts them, and why (per reason code: "
        "[reasons.md](reasons.md#deliberate-choices)). Anything else mustaple refuses, at "
        "least one client refuses too."
    )
    lines.append("")
    for name in deliberate_cases(table):
        reason = DELIBERATE.get(name, "NO REASON WRITTEN DOWN")
        lines.append(f"- `{name}` ({table[name]['mustaple'].words}): {reason}")
    lines += ["", "## Open disagreements", ""]
    broken = open_disagreements(table)
    if broken:
        lines.append("mustaple accepts these, and a client refuses them; each is a bug:")
        lines.append("")
        for name in broken:
            refusals = [
                f"{label} refuses ({table[name][client].words})"
                for client, label in CLIENTS.items()
                if not table[name][client].accepted
            ]
            lines.append(f"- `{name}`: " + ", ".join(refusals))
    else:
        lines.append("None: every response mustaple accepts, every client accepts.")
    lines += ["", "## The matrix", ""]
    lines.append("| case | what | " + " | ".join(COLUMNS.values()) + " |")
    lines.append("| --- | --- |" + " --- |" * len(COLUMNS))
    for name, row in table.items():
        cells = " | ".join(row[column].cell for column in COLUMNS)
        lines.append(f"| `{name}` | {what[name]} | {cells} |")
    return "\n".join(lines) + "\n"


_ROW = re.compile(r"^\| `(?P<name>[^`]+)` \| (?P<rest>.*) \|$")


def parse(text: str) -> Table:
    """The matrix table of a docs/strictness.md."""
    table: Table = {}
    for line in text.splitlines():
        found = _ROW.match(line)
        if found is None:
            continue
        cells = found.group("rest").split(" | ")[1:]
        if len(cells) != len(COLUMNS):
            raise ValueError(f"row {found.group('name')} has {len(cells)} verdicts")
        table[found.group("name")] = {
            column: Verdict.from_cell(cell) for column, cell in zip(COLUMNS, cells, strict=True)
        }
    return table


def installed_versions() -> dict[str, str]:
    """Each client's packages on this machine, as the page writes them: "name version, ..."."""
    return {
        client: ", ".join(f"{name} {_package_version(name)}" for name in names)
        for client, names in PACKAGES.items()
    }


def _package_version(name: str) -> str:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "(missing)"


def recorded_versions(text: str) -> dict[str, str]:
    """The packages a docs/strictness.md says judged: client -> "name version, ..."."""
    labels = {label: client for client, label in CLIENTS.items()}
    found = re.findall(r"^\| ([^`|]+?) \| (\S[^|]*?) \|$", text, re.M)
    return {labels[label]: packages for label, packages in found if label in labels}


def listed_deliberate(text: str) -> dict[str, str]:
    """The deliberate choices a docs/strictness.md lists: case -> reason."""
    section = text.split("## Deliberate choices", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"^- `([^`]+)` \([^)]*\): (.+)$", section, re.M)
    return dict(found)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the client matrix and write the table.")
    parser.add_argument("--write", type=Path, help="where to write the page (docs/strictness.md)")
    parser.add_argument("--clients", nargs="*", default=list(CLIENTS), choices=list(CLIENTS))
    args = parser.parse_args(argv)
    started = time.monotonic()
    cases, table = run(args.clients)
    if set(args.clients) != set(CLIENTS):
        for name, row in table.items():
            print(name, *(f"{c}={v.cell}" for c, v in row.items()), sep="  ")
        return 0
    page = render(table, cases, installed_versions())
    if args.write:
        args.write.write_text(page)
    else:
        sys.stdout.write(page)
    seconds = time.monotonic() - started
    print(f"{len(cases)} cases judged in {seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
