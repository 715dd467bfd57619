"""Which members manage an older leaf of a name than another member (mustaple.core.leaves)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mustaple.core.leaves import LEAF_CRITICAL_LEFT, LeafFacts, by_name, critical_left
from mustaple.core.severity import Severity

NOW = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def leaf(key: str, issued_days_ago: float, lifetime: float = 90, name: str = "a.test") -> LeafFacts:
    not_before = NOW - issued_days_ago * DAY
    return LeafFacts(key, name, key.upper(), not_before, not_before + lifetime * DAY)


OLD, NEW = leaf("old", 60), leaf("new", 1)
RSA, EC = leaf("rsa", 2), leaf("ec", 40)  # one name, two keys, issued at different times


def levels(managed: dict[str, list[LeafFacts]]) -> dict[str, tuple[Severity, tuple[str, ...]]]:
    """Each leaf's level and the members it was renewed on, for the only name."""
    (group,) = by_name(managed, NOW)
    return {s.facts.key: (s.level, s.renewed_on) for s in group.leaves}


def test_a_member_left_behind_after_a_renewal_is_a_warning() -> None:
    found = levels({"web1": [NEW], "web2": [NEW], "web3": [OLD]})
    assert found == {"new": (Severity.OK, ()), "old": (Severity.WARNING, ("web1", "web2"))}
    (group,) = by_name({"web1": [NEW], "web3": [OLD]}, NOW)
    assert [s.facts.key for s in group.leaves] == ["new", "old"]  # the newest first
    assert group.leaves[1].members == ("web3",)
    assert group.level is Severity.WARNING


def test_members_that_agree_are_ok_whatever_the_leaves_of_the_name() -> None:
    """Two leaves of one name on every member (RSA and ECDSA, renewed at different times) are
    no disagreement; neither is a leaf only one member manages."""
    assert levels({"web1": [RSA, EC], "web2": [EC, RSA]}) == {
        "rsa": (Severity.OK, ()),
        "ec": (Severity.OK, ()),
    }
    assert levels({"web1": [OLD]}) == {"old": (Severity.OK, ())}
    new_ec = leaf("ec2", 1)
    assert levels({"web1": [RSA, new_ec], "web2": [RSA, EC]})["ec"] == (
        Severity.WARNING,
        ("web1",),
    )


def test_a_member_holding_both_leaves_does_not_hide_the_one_left_behind() -> None:
    found = levels({"web1": [NEW], "web2": [OLD, NEW], "web3": [OLD]})
    assert found["old"] == (Severity.WARNING, ("web1",))


@pytest.mark.parametrize(
    ("days_left", "level"),
    [
        (8, Severity.WARNING),
        (7, Severity.CRITICAL),
        (0.5, Severity.CRITICAL),
        (-3, Severity.CRITICAL),  # expired
    ],
)
def test_an_older_leaf_expiring_within_a_week_or_expired_is_critical(
    days_left: float, level: Severity
) -> None:
    older = leaf("old", 90 - days_left)
    assert levels({"web1": [NEW], "web3": [older]})["old"][0] is level


def test_a_short_lived_leaf_is_critical_within_an_eighth_of_its_lifetime() -> None:
    short = leaf("short", 4, lifetime=6)  # 2 days left of 6
    assert critical_left(short) == timedelta(hours=18)
    assert critical_left(OLD) == LEAF_CRITICAL_LEFT
    newer = leaf("newer", 1, lifetime=6)
    assert levels({"web1": [newer], "web3": [short]})["short"][0] is Severity.WARNING
    almost = leaf("short", 5.5, lifetime=6)  # 12 hours left
    assert levels({"web1": [newer], "web3": [almost]})["short"][0] is Severity.CRITICAL


def test_names_are_grouped_and_sorted() -> None:
    b_old, b_new = leaf("b1", 60, name="b.test"), leaf("b2", 1, name="b.test")
    groups = by_name({"web1": [b_new, NEW], "web2": [b_old, NEW]}, NOW)
    assert [(g.name, g.level) for g in groups] == [
        ("a.test", Severity.OK),
        ("b.test", Severity.WARNING),
    ]
