"""PostgreSQL: schema, migrations, partitions, the batching writer, the embedded server.

Owns every SQL statement that writes (`writer`, `tables`, `partitions`, `migrate`), the
restore-time reads (`queries`) and `embedded` PostgreSQL. (`migrate` is both a module and
its function, so it is imported from `soar.store.migrate`.) Its modules may import
`soar.records`, `soar.spool`, `soar.backoff`, `soar.log`, `soar.timeconv` and `soar.processes`;
never the tracking core or the web.
The public names are exported here, loaded on first use: this module imports only its own.

May import: soar.store
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soar.store.embedded import EmbeddedPostgres
    from soar.store.partitions import ensure_partitions, maintain_partitions, wall_now
    from soar.store.queries import FIX_TIME, open_flight_rows, open_flights, with_last_fixes
    from soar.store.tables import (
        FIXES,
        AircraftFamily,
        FixFamily,
        FlightFamily,
        ReceiverFamily,
        fix_row,
    )
    from soar.store.writer import CommitReport, StoreWriter, open_pool

# name -> module: a name is imported with its module when first asked for, so importing
# the package costs nothing and cannot create an import cycle
_EXPORTS = {
    "AircraftFamily": "tables",
    "CommitReport": "writer",
    "EmbeddedPostgres": "embedded",
    "FIXES": "tables",
    "FIX_TIME": "queries",
    "FixFamily": "tables",
    "FlightFamily": "tables",
    "ReceiverFamily": "tables",
    "StoreWriter": "writer",
    "ensure_partitions": "partitions",
    "fix_row": "tables",
    "maintain_partitions": "partitions",
    "open_flight_rows": "queries",
    "open_flights": "queries",
    "open_pool": "writer",
    "wall_now": "partitions",
    "with_last_fixes": "queries",
}

__all__ = [
    "FIXES",
    "FIX_TIME",
    "AircraftFamily",
    "CommitReport",
    "EmbeddedPostgres",
    "FixFamily",
    "FlightFamily",
    "ReceiverFamily",
    "StoreWriter",
    "ensure_partitions",
    "fix_row",
    "maintain_partitions",
    "open_flight_rows",
    "open_flights",
    "open_pool",
    "wall_now",
    "with_last_fixes",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
