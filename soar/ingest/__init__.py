"""Feeds in: reconnecting TCP sources, capture files and the raw archive, as `Envelope`s.

Owns the I/O edge of the feeds (`tcp` the source template, `aprs`, `beast_source`,
`sbs_source`), replayable captures (`capture`), the raw archive (`archive`) and their metrics.
Its modules may import `soar.protocols`, `soar.records`, `soar.hostport`, `soar.backoff`,
`soar.timeconv` and `soar` (the version, for the APRS-IS login); never the tracking core, the
store or the web.
The public names are exported here, loaded on first use: this module imports only its own.

May import: soar.ingest
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soar.ingest.aprs import AprsIsSource
    from soar.ingest.archive import RawArchive
    from soar.ingest.beast_source import BeastSource
    from soar.ingest.capture import (
        CaptureFormat,
        CaptureStats,
        archive_file_protocol,
        beast_first_frame_us,
        detect_format,
        iso_to_us,
        iter_capture,
        receive_time_problem,
    )
    from soar.ingest.metrics import SOURCE_CONNECTED
    from soar.ingest.sbs_source import SbsSource
    from soar.ingest.tcp import EnvelopeSink, wall_clock_us

# name -> module: a name is imported with its module when first asked for, so importing
# the package costs nothing and cannot create an import cycle
_EXPORTS = {
    "AprsIsSource": "aprs",
    "BeastSource": "beast_source",
    "CaptureFormat": "capture",
    "CaptureStats": "capture",
    "EnvelopeSink": "tcp",
    "RawArchive": "archive",
    "SOURCE_CONNECTED": "metrics",
    "SbsSource": "sbs_source",
    "archive_file_protocol": "capture",
    "beast_first_frame_us": "capture",
    "detect_format": "capture",
    "iso_to_us": "capture",
    "iter_capture": "capture",
    "receive_time_problem": "capture",
    "wall_clock_us": "tcp",
}

__all__ = [
    "SOURCE_CONNECTED",
    "AprsIsSource",
    "BeastSource",
    "CaptureFormat",
    "CaptureStats",
    "EnvelopeSink",
    "RawArchive",
    "SbsSource",
    "archive_file_protocol",
    "beast_first_frame_us",
    "detect_format",
    "iso_to_us",
    "iter_capture",
    "receive_time_problem",
    "wall_clock_us",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
