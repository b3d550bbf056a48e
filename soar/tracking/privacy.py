"""Who may be tracked and who may be named: the one privacy authority, read from `aircraft`.

Owns the privacy query (`PRIVACY_QUERY`), the frozen snapshot it yields (`PrivacyDirectory`)
and the holder that refreshes it (`PrivacyRegistry`). The shards ask it whether to store and
publish a fix and whether to mark it anonymous; the live hub asks it (`PrivacyRegistry.get`)
whether to stream a fix and what identity to show. Both read the same query and refresh the
same way (`PrivacyRegistry.run`, every `every_s` seconds, keeping the last good copy when the
database is away); the SQL guards in `soar.web.queries` stay a second, independent defence.
Imports trio and structlog; psycopg only inside the loader.

A refresh builds a new directory off the hot path and swaps it in with one assignment, so a
shard sees either the old snapshot or the new one, never half of each (trio runs one task at a
time).

* `tracked = N` in the DDB (like the beacon's no-track bit): the aircraft's fixes are neither
  stored nor published, and make no flight.
* `identified = N` (like the beacon's stealth bit): stored and published without identity —
  the shard marks the fix `anonymous` and blanks its callsign; the API and the live view
  omit registration and competition number for it. Stealth fixes are, besides, never
  published live. Only rows the DDB wrote (device_type set) say anything about `identified`:
  a row the tracker made for an aircraft it merely saw is no one's request.
* named: identified by its owner, its latest beacon not stealth, and something to show
  (registration, competition number, model or category). Only these are held with their
  identity: every aircraft ever seen would cost memory for nothing the view shows.

May import: nothing of soar
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
import structlog
import trio

log = structlog.get_logger(__name__)

PRIVACY_REFRESH = prometheus_client.Counter(
    "soar_privacy_refresh_total", "Reads of the privacy directory from the aircraft table",
    ["result"],
)

#: The one query every holder of a directory reads (columns in `from_rows` order).
PRIVACY_QUERY = """
SELECT id,
       tracked,
       identified OR device_type IS NULL AS owner_allows_identity,
       identified AND NOT stealth AS named,
       registration, competition_number, model, category
FROM aircraft
WHERE NOT tracked
   OR (NOT identified AND device_type IS NOT NULL)
   OR (identified AND NOT stealth
       AND num_nonnulls(registration, competition_number, model, category) > 0)
"""

#: How often a holder re-reads the table (an operator's `UPDATE aircraft SET tracked = false`
#: takes effect within this; a DDB import also swaps a new snapshot in at once).
REFRESH_S = 30.0

PrivacyRow = tuple[int, bool, bool, bool, str | None, str | None, str | None, str | None]


@dataclass(frozen=True, slots=True)
class AircraftInfo:
    """What the live view may show of one aircraft."""

    tracked: bool = True
    identified: bool = True
    registration: str | None = None
    competition_number: str | None = None
    model: str | None = None
    category: str | None = None


_HIDDEN = AircraftInfo(tracked=False, identified=False)


@dataclass(slots=True, frozen=True)
class PrivacyDirectory:
    not_tracked: frozenset[int] = field(default_factory=frozenset)
    not_identified: frozenset[int] = field(default_factory=frozenset)
    #: identity to show, per named aircraft. Display data, not a privacy decision: directories
    #: compare equal when their decisions (the two sets) are equal.
    named: Mapping[int, AircraftInfo] = field(default_factory=dict, compare=False)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, bool, bool]]) -> PrivacyDirectory:
        """From `(aircraft_id, tracked, identified)` rows (no identities to show)."""
        hidden: set[int] = set()
        anonymous: set[int] = set()
        for ident, tracked, identified in rows:
            if not tracked:
                hidden.add(ident)
            if not identified:
                anonymous.add(ident)
        return cls(frozenset(hidden), frozenset(anonymous))

    @classmethod
    def from_query(cls, rows: Iterable[PrivacyRow]) -> PrivacyDirectory:
        """From the rows of PRIVACY_QUERY."""
        hidden: set[int] = set()
        anonymous: set[int] = set()
        named: dict[int, AircraftInfo] = {}
        for ident, tracked, allows, is_named, registration, competition, model, category in rows:
            ident = int(ident)
            if not tracked:
                hidden.add(ident)
            if not allows:
                anonymous.add(ident)
            if tracked and allows and is_named:
                named[ident] = AircraftInfo(
                    True, True, registration, competition, model, category
                )
        return cls(frozenset(hidden), frozenset(anonymous), named)

    def tracked(self, aircraft_id: int) -> bool:
        return aircraft_id not in self.not_tracked

    def identified(self, aircraft_id: int) -> bool:
        return aircraft_id not in self.not_identified

    def info(self, aircraft_id: int) -> AircraftInfo | None:
        """For the live view: hidden, named (with its identity), or None (shown unnamed)."""
        if aircraft_id in self.not_tracked:
            return _HIDDEN
        return self.named.get(aircraft_id)

    def __len__(self) -> int:
        return len(self.not_tracked | self.not_identified)


def read_directory(conn: Any) -> PrivacyDirectory:
    """The directory from an open psycopg connection (any row factory). Blocking."""
    from psycopg.rows import tuple_row

    with conn.cursor(row_factory=tuple_row) as cur:
        return PrivacyDirectory.from_query(cur.execute(PRIVACY_QUERY).fetchall())


class PrivacyRegistry:
    """The current directory; `replace` swaps a new one in (a DDB import's `on_update`)."""

    def __init__(self, directory: PrivacyDirectory | None = None) -> None:
        self.directory = directory or PrivacyDirectory()
        self.loaded = False  # a snapshot came from the database (not only the empty default)
        self.refreshes = 0  # reads by `run`, ok
        self.failures = 0  # reads by `run` that failed (the last good snapshot kept)

    def replace(self, directory: PrivacyDirectory) -> None:
        self.directory = directory
        self.loaded = True

    def get(self, aircraft_id: int) -> AircraftInfo | None:
        """The live hub's question (`LiveHub(directory=registry.get)`)."""
        return self.directory.info(aircraft_id)

    def load(self, pool: Any) -> None:
        """Read the table now through a psycopg pool. Blocking; raises what psycopg raises."""
        with pool.connection() as conn:
            self.replace(read_directory(conn))

    async def run(
        self, pool: Any, *, every_s: float = REFRESH_S,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Re-read the table every `every_s` seconds; started once the first attempt is over.
        A failed read (the database away) is logged and the last good snapshot kept."""
        started = False
        failing = False
        while True:
            try:
                await trio.to_thread.run_sync(self.load, pool, abandon_on_cancel=True)
            except Exception as exc:  # psycopg, pool timeout: keep the last good copy
                self.failures += 1
                PRIVACY_REFRESH.labels("failed").inc()
                (log.debug if failing else log.warning)(
                    "privacy.refresh_failed", error=str(exc).strip().split("\n")[0])
                failing = True
            else:
                self.refreshes += 1
                PRIVACY_REFRESH.labels("ok").inc()
                if failing:
                    log.info("privacy.refresh_recovered")
                failing = False
                log.debug("privacy.loaded", hidden=len(self.directory.not_tracked),
                          anonymous=len(self.directory.not_identified),
                          named=len(self.directory.named))
            if not started:
                task_status.started()
                started = True
            await trio.sleep(every_s)
