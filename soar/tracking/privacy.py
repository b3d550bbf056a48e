"""Who may be tracked and who may be named: a read-only snapshot of the device database.

The shards consult a `PrivacyRegistry`, which holds one frozen `PrivacyDirectory`; a refresh
builds a new directory off the hot path and swaps it in with one assignment, so a shard sees
either the old snapshot or the new one, never half of each (trio runs one task at a time).

* `tracked = N` in the DDB (like the beacon's no-track bit): the aircraft's fixes are neither
  stored nor published, and make no flight.
* `identified = N` (like the beacon's stealth bit): stored and published without identity —
  the shard marks the fix `anonymous` and blanks its callsign; the API and the live view
  omit registration and competition number for it. Stealth fixes are, besides, never
  published live.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class PrivacyDirectory:
    not_tracked: frozenset[int] = field(default_factory=frozenset)
    not_identified: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, bool, bool]]) -> PrivacyDirectory:
        """From `(aircraft_id, tracked, identified)` rows."""
        hidden: set[int] = set()
        anonymous: set[int] = set()
        for ident, tracked, identified in rows:
            if not tracked:
                hidden.add(ident)
            if not identified:
                anonymous.add(ident)
        return cls(frozenset(hidden), frozenset(anonymous))

    def tracked(self, aircraft_id: int) -> bool:
        return aircraft_id not in self.not_tracked

    def identified(self, aircraft_id: int) -> bool:
        return aircraft_id not in self.not_identified

    def __len__(self) -> int:
        return len(self.not_tracked | self.not_identified)


class PrivacyRegistry:
    """The current directory; `replace` is the refresh task's `on_update`."""

    def __init__(self, directory: PrivacyDirectory | None = None) -> None:
        self.directory = directory or PrivacyDirectory()

    def replace(self, directory: PrivacyDirectory) -> None:
        self.directory = directory
