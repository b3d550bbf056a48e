"""Pure codecs: bytes or str in, records out; no I/O, no clock, no soar state.

Owns the feed formats (`ogn` APRS lines, `sbs` BaseStation CSV, `beast` framing, `modes` Mode S
messages, `text` line splitting, `icao_fix` the Fix of an ICAO aircraft's state that `modes`
and `sbs` share) and the live-fix wire format (`live_wire`). Its modules may import only
`soar.records` and each other (and the standard library, pyModeS, aprslib); every other layer may
import them. The public names are exported here, loaded on first use: this module imports only
its own.

May import: soar.protocols
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soar.protocols.beast import BeastDeframer, BeastFrame
    from soar.protocols.live_wire import (
        MAX_AIRCRAFT_PER_CLIENT,
        MAX_SQUARES_PER_CLIENT,
        PYNNG_TOPICS,
        TOPIC_END,
        AircraftRequest,
        AreaRequest,
        BadRequest,
        LiveWireError,
        Rejection,
        SetOptions,
        Square,
        TopicNames,
        acknowledgement,
        decode_fixes,
        decode_message,
        encode_batches,
        fix_to_wire,
        group_by_topic,
        parse_client_message,
        squares_in_bounds,
        unframe,
        wire_square,
    )
    from soar.protocols.modes import ModeSAccumulator, crc_remainder
    from soar.protocols.sbs import SbsAccumulator, SbsMessage, parse_line

# name -> module: a name is imported with its module when first asked for, so importing
# the package costs nothing and cannot create an import cycle
_EXPORTS = {
    "AircraftRequest": "live_wire",
    "AreaRequest": "live_wire",
    "BadRequest": "live_wire",
    "BeastDeframer": "beast",
    "BeastFrame": "beast",
    "LiveWireError": "live_wire",
    "MAX_AIRCRAFT_PER_CLIENT": "live_wire",
    "MAX_SQUARES_PER_CLIENT": "live_wire",
    "ModeSAccumulator": "modes",
    "PYNNG_TOPICS": "live_wire",
    "Rejection": "live_wire",
    "SbsAccumulator": "sbs",
    "SbsMessage": "sbs",
    "SetOptions": "live_wire",
    "Square": "live_wire",
    "TOPIC_END": "live_wire",
    "TopicNames": "live_wire",
    "acknowledgement": "live_wire",
    "crc_remainder": "modes",
    "decode_fixes": "live_wire",
    "decode_message": "live_wire",
    "encode_batches": "live_wire",
    "fix_to_wire": "live_wire",
    "group_by_topic": "live_wire",
    "parse_client_message": "live_wire",
    "parse_line": "sbs",
    "squares_in_bounds": "live_wire",
    "unframe": "live_wire",
    "wire_square": "live_wire",
}

__all__ = [
    "MAX_AIRCRAFT_PER_CLIENT",
    "MAX_SQUARES_PER_CLIENT",
    "PYNNG_TOPICS",
    "TOPIC_END",
    "AircraftRequest",
    "AreaRequest",
    "BadRequest",
    "BeastDeframer",
    "BeastFrame",
    "LiveWireError",
    "ModeSAccumulator",
    "Rejection",
    "SbsAccumulator",
    "SbsMessage",
    "SetOptions",
    "Square",
    "TopicNames",
    "acknowledgement",
    "crc_remainder",
    "decode_fixes",
    "decode_message",
    "encode_batches",
    "fix_to_wire",
    "group_by_topic",
    "parse_client_message",
    "parse_line",
    "squares_in_bounds",
    "unframe",
    "wire_square",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
