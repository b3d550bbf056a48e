"""Prometheus metrics of the ingest edge, one series per source (label `source`).

Live TCP sources and capture replays share them: a replayed file is a source named after it.

May import: nothing of soar
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SOURCE_CONNECTED = Gauge(
    "soar_source_connected",
    "1 while the source has a live connection to its feed, else 0",
    ["source", "protocol"],
)
SOURCE_MESSAGES = Counter(
    "soar_source_messages_total",
    "Messages (lines or Beast frames) a source handed on as envelopes",
    ["source", "protocol"],
)
SOURCE_RECONNECTS = Counter(
    "soar_source_reconnects_total",
    "Times a source lost or failed to open its connection and scheduled a reconnect",
    ["source", "protocol"],
)
SOURCE_SOCKET_ERRORS = Counter(
    "soar_source_socket_errors_total",
    "Connection attempts that could not even create a socket (EMFILE: out of descriptors)",
    ["source", "protocol", "errno"],
)
SOURCE_REJECTS = Counter(
    "soar_source_rejects_total",
    "Input a source could not turn into an envelope, by reason",
    ["source", "protocol", "reason"],
)
SOURCE_BYTES = Counter(
    "soar_source_bytes_total",
    "Bytes read from the feed (before deframing)",
    ["source", "protocol"],
)
SOURCE_GARBAGE_BYTES = Counter(
    "soar_source_garbage_bytes_total",
    "Beast bytes that belonged to no frame",
    ["source", "protocol"],
)
ARCHIVE_WITHHELD = Counter(
    "soar_archive_withheld_total",
    "Envelopes kept out of the raw archive: OGN beacons whose sender asked not to be tracked",
    ["protocol"],
)
ARCHIVE_MESSAGES = Counter(
    "soar_archive_messages_total",
    "Envelopes written to the raw archive",
    ["protocol"],
)
ARCHIVE_COMPRESSED_FILES = Counter(
    "soar_archive_compressed_files_total",
    "Raw archive day files compressed",
    [],
)
