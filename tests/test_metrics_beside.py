"""/metrics of a running keeper agrees with `mustaple status --json` after a `prime` beside it.

Real `mustaple run` (a pass a second) and `mustaple prime` on one state directory, with a
loopback responder the test controls: after a prime renews, fails or gets a revoked answer,
the keeper's next passes take what it wrote, and its /metrics (scraped over HTTP) says what
`status --json` (read from the state) says: the state, the time the staple in hand has
left, whether one is valid, and whether refreshes come sooner than `min_interval`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mustaple.testing import Behaviour
from outside import http_get
from test_recorded_attempts import Site, site

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scraped(s: Site) -> Series:
    """Every series of the keeper's /metrics: (name, sorted labels) -> value."""
    status, body = http_get(f"http://127.0.0.1:{s.http_port}/metrics")
    assert status == 200, body[:200]
    found: Series = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def of(series: Series, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric `name` whose labels include `labels`."""
    return [
        (dict(have), value)
        for (metric, have), value in series.items()
        if metric == name and labels.items() <= dict(have).items()
    ]


def agree(s: Site) -> dict[str, Any]:
    """The row of `status --json`, once checked against the keeper's /metrics."""
    row, series = s.row(), scraped(s)
    serial = s.page()["serial"]
    states = {
        labels["state"]: value for labels, value in of(series, "mustaple_status", serial=serial)
    }
    assert [state for state, value in states.items() if value == 1] == [row["state"]], (
        states,
        row,
    )
    assert [labels["serial"] for labels, _ in of(series, "mustaple_status", state="good")] == [
        serial
    ]  # one certificate: the renewed one's series only
    left = of(series, "mustaple_seconds_until_expiry", serial=serial)
    if row["seconds_left"] is None:
        assert left == [], left
    else:
        ((_, value),) = left
        assert abs(value - row["seconds_left"]) < 5, (value, row)
    ((_, valid),) = of(series, "mustaple_staple_valid", serial=serial)
    assert valid == float(row["seconds_left"] is not None), (valid, row)
    ((_, hurried),) = of(series, "mustaple_refresh_hurried", serial=serial)
    assert hurried == float(row["schedule_note"] is not None), (hurried, row)
    return row


def test_metrics_agree_with_status_after_a_prime_beside_the_keeper(tmp_path: Path) -> None:
    """A renewal primed, a failed prime, a revoked answer primed: each time, within a pass
    or two, the keeper's /metrics says what `status --json` says."""
    with site(tmp_path) as s:
        keeper = s.run()
        assert agree(s)["state"] == "good"

        s.issue()  # the renewal
        assert s.prime()[0] == 0
        s.passes()
        assert agree(s)["state"] == "good"

        s.responder.set_behaviour(Behaviour.HTTP_500)
        assert s.prime()[0] == 0
        s.passes()
        row = agree(s)
        assert (row["state"], row["failures"]) == ("failing", 1), row

        s.responder.set_behaviour(Behaviour.REVOKED)
        assert s.prime()[0] == 3
        s.passes()
        assert agree(s)["state"] == "revoked"
        s.stop(keeper)
