"""Prometheus metrics of the tracking core (one registry per process, defined once here).

May import: nothing of soar
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

FIXES_PROCESSED = Counter(
    "soar_fixes_processed_total", "Fixes accepted by the flight tracker", ["protocol"]
)
FIXES_REJECTED = Counter(
    "soar_fixes_rejected_total",
    "Fixes (or raw ADS-B messages) the tracker did not use, by reason",
    ["reason"],
)
FLIGHTS_OPENED = Counter(
    "soar_flights_opened_total", "New flights (takeoff, or first seen airborne)"
)
FLIGHTS_RESUMED = Counter(
    "soar_flights_resumed_total", "Timed-out flights resumed when the aircraft came back in time"
)
FLIGHTS_CLOSED = Counter("soar_flights_closed_total", "Flights closed", ["reason"])
SHARD_AIRCRAFT = Gauge("soar_shard_aircraft", "Aircraft whose state a shard holds", ["shard"])
SHARD_QUARANTINED = Counter(
    "soar_shard_quarantined_total", "Inputs whose processing raised, set aside", ["shard"]
)
SINK_DROPPED = Counter(
    "soar_shard_sink_dropped_total",
    "Items a shard dropped because a non-blocking sink was full",
    ["sink"],
)
SINK_BACKPRESSURE = Counter(
    "soar_shard_sink_backpressure_total", "Times a shard waited on a full store sink", ["sink"]
)
ENRICHMENT = Counter("soar_enrichment_total", "Flight enrichment requests by outcome", ["result"])
CLOCK_STEPS = Counter(
    "soar_shard_clock_steps_total",
    "Jumps of the receive clock a shard held back: followed (the clock had moved) or ignored"
    " (it came back; the fixes received meanwhile are rejected as clock_step)",
    ["outcome"],
)
LATE_FIXES = Counter(
    "soar_fixes_late_total",
    "Fixes older than their aircraft's newest, stored without changing its state",
)
