"""The client matrix: mustaple's promise checked against the real clients.

docs/strictness.md records one run: every case x (mustaple, Firefox, GnuTLS, curl, openssl
ocsp). Each client test here builds the cases afresh, serves them to that client through real
TLS handshakes and checks its column against the page, so the page is what the clients do
today. The other tests read the page: whatever mustaple accepts, every client accepts; every
case mustaple refuses while all clients accept is a written deliberate choice; and the client
model of `mustaple check` agrees with what the clients did.

Each client is one test, so pytest-xdist runs Firefox beside the rest of the suite.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mustaple.check import Client, StapleState, client_accepts, client_states
from mustaple.core.certs import Target
from mustaple.core.reasons import Rejection
from mustaple.core.verify import Staple, verify
from mustaple.testing.judges import CLI_JUDGES, Firefox, Verdict, Workspace, judge_with_cli
from mustaple.testing.matrix import OCSP_URL, Case, build_cases, roots_of
from mustaple.testing.pki import CA
from mustaple.testing.strictness import (
    CLIENTS,
    DELIBERATE,
    Table,
    deliberate_cases,
    installed_versions,
    listed_deliberate,
    mustaple_column,
    open_disagreements,
    parse,
    recorded_versions,
    render,
)
from mustaple.testing.tls import StaplingServer

PAGE = Path(__file__).parent.parent / "docs" / "strictness.md"
REGENERATE = "regenerate with: python -m mustaple.testing.strictness --write docs/strictness.md"


@pytest.fixture(scope="module")
def recorded() -> Table:
    return parse(PAGE.read_text())


def fresh_cases() -> tuple[datetime, list[Case]]:
    now = datetime.now(UTC)
    return now, build_cases(now)


def regenerate(client: str) -> str:
    """What to do when `client`'s column differs from the page, and which packages changed."""
    page, here = recorded_versions(PAGE.read_text())[client], installed_versions()[client]
    if page == here:
        return REGENERATE
    return f"{REGENERATE} (the page was judged with {page}; this machine has {here})"


def differences(column: str, run: dict[str, Verdict], recorded: Table) -> list[str]:
    assert set(run) == set(recorded), REGENERATE
    return [
        f"{name}: ran {verdict.cell!r}, page says {recorded[name][column].cell!r}"
        for name, verdict in run.items()
        if verdict != recorded[name][column]
    ]


def no_staple_leaf() -> tuple[CA, StaplingServer]:
    ca = CA(key_type="ec", ocsp_url=OCSP_URL)
    return ca, StaplingServer(ca.issue("localhost"))


# --- The catalogue ------------------------------------------------------------------------------


def test_the_catalogue_covers_every_axis_with_a_leaf_per_case() -> None:
    _, cases = fresh_cases()
    assert len(cases) >= 120
    assert len({case.name for case in cases}) == len(cases)
    assert len({case.leaf.cert.serial_number for case in cases}) == len(cases)
    axes = Counter(case.axis for case in cases)
    for axis in ("certid", "singles", "status", "extensions", "signature", "signer"):
        assert axes[axis] >= 5, axis
    for axis in ("responder-id", "names", "time", "der", "ber", "trailing", "envelope"):
        assert axes[axis] >= 3, axis


# --- Each column is what the judge does today ---------------------------------------------------


def test_mustaples_column_is_the_validators_verdict(recorded: Table) -> None:
    now, cases = fresh_cases()
    assert differences("mustaple", mustaple_column(cases, now), recorded) == [], REGENERATE


NO_STAPLE = {
    "gnutls": Verdict(False, "OCSP status missing"),
    "curl": Verdict(False, "No OCSP response received"),
}


@pytest.mark.parametrize("client", NO_STAPLE)
def test_cli_client_refuses_no_staple_then_its_column_matches(
    client: str, recorded: Table, tmp_path: Path
) -> None:
    ca, server = no_staple_leaf()
    workspace = Workspace(tmp_path, [ca.root.cert])
    with server:
        control = CLI_JUDGES[client](workspace, server.port)
    assert control == NO_STAPLE[client]  # a valid judge: a must-staple certificate needs one
    _, cases = fresh_cases()
    workspace = Workspace(tmp_path / "matrix", roots_of(cases))
    run = judge_with_cli(workspace, cases, client)
    assert differences(client, run, recorded) == [], regenerate(client)


def test_openssl_ocsp_column_matches(recorded: Table, tmp_path: Path) -> None:
    _, cases = fresh_cases()
    run = judge_with_cli(Workspace(tmp_path, roots_of(cases)), cases, "openssl")
    assert differences("openssl", run, recorded) == [], regenerate("openssl")


def test_firefox_refuses_no_staple_then_its_column_matches(recorded: Table) -> None:
    """One browser run: the control first (is Firefox a judge here?), then every case."""
    ca, server = no_staple_leaf()
    _, cases = fresh_cases()

    async def judge() -> tuple[Verdict, dict[str, Verdict]]:
        async with Firefox([ca.root.cert, *roots_of(cases)]) as firefox:
            with server:
                control = await firefox.judge(server.port)
            return control, await firefox.judge_cases(cases)

    control, run = asyncio.run(judge())
    assert control == Verdict(False, "MOZILLA_PKIX_ERROR_REQUIRED_TLS_FEATURE_MISSING")
    assert differences("firefox", run, recorded) == [], regenerate("firefox")


# --- What the page says -------------------------------------------------------------------------


def test_whatever_mustaple_accepts_every_client_accepts(recorded: Table) -> None:
    broken = {
        name: {c: recorded[name][c].words for c in CLIENTS if not recorded[name][c].accepted}
        for name in open_disagreements(recorded)
    }
    assert broken == {}


def test_every_case_refused_only_by_mustaple_is_a_written_choice(recorded: Table) -> None:
    chosen = deliberate_cases(recorded)
    assert chosen, "the matrix should show where mustaple is deliberately stricter"
    assert set(DELIBERATE) == set(chosen)
    assert listed_deliberate(PAGE.read_text()) == {name: DELIBERATE[name] for name in chosen}


def test_the_page_is_rendered_from_its_table(recorded: Table) -> None:
    _, cases = fresh_cases()
    versions = recorded_versions(PAGE.read_text())
    assert set(versions) == set(CLIENTS)  # the page says which packages judged each column
    assert all("(missing)" not in packages for packages in versions.values())
    assert render(recorded, cases, versions) == PAGE.read_text(), REGENERATE


# --- mustaple check's client model --------------------------------------------------------------


def state_of(outcome: Staple | Rejection) -> StapleState:
    if isinstance(outcome, Staple):
        return StapleState.GOOD if outcome.good else StapleState.REVOKED
    return StapleState.EXPIRED if outcome.code == "expired" else StapleState.INVALID


def test_checks_client_model_agrees_with_the_clients(recorded: Table) -> None:
    """Wherever the model makes a prediction, the real client did that."""
    now, cases = fresh_cases()
    wrong, judged = [], 0
    for case in cases:
        target = Target(case.leaf.cert, case.leaf.issuer)
        outcome = verify(case.staple, target, now)
        seen_by = client_states(case.staple, outcome, target, now)
        for client in Client:
            state = seen_by.get(client, state_of(outcome))
            predicted = client_accepts(client, True, state)
            if predicted is None:
                continue
            judged += 1
            actual = recorded[case.name][client.key]
            if predicted != actual.accepted:
                wrong.append(f"{case.name} {client.key}: model {predicted}, real {actual.cell}")
    assert wrong == []
    assert judged > len(cases) * len(Client) // 2  # the model judges most of the matrix
