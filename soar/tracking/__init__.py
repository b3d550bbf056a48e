"""The tracking core: shards that turn inputs into fixes, flights, tows and enrichments.

Owns the flight state machine (`flight`, `ordered`), the shard (`shard`, `inputs`, `router`),
tows, launches, AGL (`agl`, `terrain`, `airports`) and the privacy registry. Its modules may
import `soar.records`, `soar.protocols`, `soar.channels` and `soar.log`; the store only through
the rows and callbacks its caller passes in. The public names are exported here, loaded on
first use: this module imports only its own.

May import: soar.tracking
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soar.tracking.agl import AglCalculator
    from soar.tracking.airports import default_index
    from soar.tracking.inputs import (
        ClockTick,
        ForgetAircraft,
        ModeSInput,
        RestoreFlights,
        SbsInput,
        ShardInput,
    )
    from soar.tracking.launch import WINCH_WINDOW_S, LaunchFacts, LaunchMethod, launch_method
    from soar.tracking.metrics import FIXES_REJECTED, FLIGHTS_OPENED
    from soar.tracking.privacy import (
        REFRESH_S,
        AircraftInfo,
        PrivacyDirectory,
        PrivacyRegistry,
        read_directory,
    )
    from soar.tracking.router import shard_of
    from soar.tracking.shard import Shard, ShardSinks
    from soar.tracking.terrain import Terrain
    from soar.tracking.tow import TowDetector, TowService

# name -> module: a name is imported with its module when first asked for, so importing
# the package costs nothing and cannot create an import cycle
_EXPORTS = {
    "AglCalculator": "agl",
    "AircraftInfo": "privacy",
    "ClockTick": "inputs",
    "FIXES_REJECTED": "metrics",
    "FLIGHTS_OPENED": "metrics",
    "ForgetAircraft": "inputs",
    "LaunchFacts": "launch",
    "LaunchMethod": "launch",
    "ModeSInput": "inputs",
    "PrivacyDirectory": "privacy",
    "PrivacyRegistry": "privacy",
    "REFRESH_S": "privacy",
    "RestoreFlights": "inputs",
    "SbsInput": "inputs",
    "Shard": "shard",
    "ShardInput": "inputs",
    "ShardSinks": "shard",
    "Terrain": "terrain",
    "TowDetector": "tow",
    "TowService": "tow",
    "WINCH_WINDOW_S": "launch",
    "default_index": "airports",
    "launch_method": "launch",
    "read_directory": "privacy",
    "shard_of": "router",
}

__all__ = [
    "FIXES_REJECTED",
    "FLIGHTS_OPENED",
    "REFRESH_S",
    "WINCH_WINDOW_S",
    "AglCalculator",
    "AircraftInfo",
    "ClockTick",
    "ForgetAircraft",
    "LaunchFacts",
    "LaunchMethod",
    "ModeSInput",
    "PrivacyDirectory",
    "PrivacyRegistry",
    "RestoreFlights",
    "SbsInput",
    "Shard",
    "ShardInput",
    "ShardSinks",
    "Terrain",
    "TowDetector",
    "TowService",
    "default_index",
    "launch_method",
    "read_directory",
    "shard_of",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
