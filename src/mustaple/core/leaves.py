"""Which leaf each member of a fleet manages for each certificate name, and which members are
left behind after a renewal.

A fleet renews a certificate host by host (certbot on each, a configuration push): a member
whose deploy hook did not run still serves the old leaf, and nobody sees it until that leaf
expires. Each member records the leaves it manages (`LeafFacts`, in Redis); `by_name` groups
them by name: a leaf is *older* when another member manages a newer leaf of the same name
(issued later) and not this one. That leaves alone the names whose leaves differ on purpose
(an RSA and an ECDSA certificate of one name, issued at different times, on every member).

An older leaf is a WARNING; CRITICAL once it expires within `LEAF_CRITICAL_LEFT` (or within an
eighth of its lifetime, for a short-lived leaf), or has expired. Pure: `now` is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from mustaple.core.severity import Severity

__all__ = [
    "LEAF_CRITICAL_LEFT",
    "LeafFacts",
    "NameLeaves",
    "ServedLeaf",
    "by_name",
    "critical_left",
]

LEAF_CRITICAL_LEFT = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class LeafFacts:
    """A leaf certificate a member manages, as the fleet records it."""

    key: str  # the SHA-256 fingerprint of the leaf, in hex
    name: str  # `certs.display_name`
    serial: str  # lowercase hex
    not_before: datetime
    not_after: datetime

    def newer_than(self, other: LeafFacts) -> bool:
        """Issued later (the later notAfter decides between two issued at once)."""
        return (self.not_before, self.not_after) > (other.not_before, other.not_after)


@dataclass(frozen=True, slots=True)
class ServedLeaf:
    """One leaf of a name, the members that manage it and how worried to be."""

    facts: LeafFacts
    members: tuple[str, ...]
    renewed_on: tuple[str, ...]  # members with a newer leaf of the name and not this one
    level: Severity  # OK unless `renewed_on`


@dataclass(frozen=True, slots=True)
class NameLeaves:
    """Every leaf the members manage for one name, the newest first."""

    name: str
    leaves: tuple[ServedLeaf, ...]

    @property
    def level(self) -> Severity:
        return max((leaf.level for leaf in self.leaves), default=Severity.OK)


def critical_left(facts: LeafFacts) -> timedelta:
    """How little time left makes an older leaf CRITICAL: `LEAF_CRITICAL_LEFT`, or an eighth
    of the leaf's lifetime when that is shorter (a 6-day leaf: 18 hours)."""
    return min(LEAF_CRITICAL_LEFT, (facts.not_after - facts.not_before) / 8)


def by_name(managed: Mapping[str, Iterable[LeafFacts]], now: datetime) -> list[NameLeaves]:
    """The leaves of `managed` (by member) grouped by name, sorted by name."""
    holders: dict[str, set[str]] = {}
    facts: dict[str, LeafFacts] = {}
    for member, leaves in managed.items():
        for leaf in leaves:
            facts.setdefault(leaf.key, leaf)
            holders.setdefault(leaf.key, set()).add(member)
    names: dict[str, list[LeafFacts]] = {}
    for leaf in facts.values():
        names.setdefault(leaf.name, []).append(leaf)
    return [_judged(name, names[name], holders, now) for name in sorted(names)]


def _judged(
    name: str, leaves: list[LeafFacts], holders: Mapping[str, set[str]], now: datetime
) -> NameLeaves:
    leaves.sort(key=lambda leaf: (leaf.not_before, leaf.not_after, leaf.key), reverse=True)
    served = []
    for leaf in leaves:
        ahead = set().union(*(holders[o.key] for o in leaves if o.newer_than(leaf)))
        renewed_on = tuple(sorted(ahead - holders[leaf.key]))
        level = _level(leaf, now) if renewed_on else Severity.OK
        served.append(ServedLeaf(leaf, tuple(sorted(holders[leaf.key])), renewed_on, level))
    return NameLeaves(name, tuple(served))


def _level(older: LeafFacts, now: datetime) -> Severity:
    """An older leaf: CRITICAL once it expires soon (or has expired), else WARNING."""
    if older.not_after - now <= critical_left(older):
        return Severity.CRITICAL
    return Severity.WARNING
