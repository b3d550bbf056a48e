"""Process-wide runtime set-up: the cyclic garbage collector, tuned for a long-running tracker.

CPython's defaults (700, 10, 10) run a *full* collection whenever the heap has grown by a
quarter since the last one. A tracker's heap grows in bursts — 10,000 aircraft seen for the
first time within a second each bring a state machine, a flight row and recent fixes — so
the defaults ran full collections back to back exactly then, each one longer than the last
(measured in `soar bench pipeline`, Beast, 10,000 aircraft: 30, 58, 66, 95, 132, 158 ms, the
trio loop stopped for each). Nearly every object soar makes is freed by reference counting;
the cycles (exceptions with their tracebacks, trio's task bookkeeping) are young and die in
the young generations. So:

- what start-up made (modules, the airport index, settings, the web app) is frozen out of
  every future collection (`gc.freeze()` after a `gc.collect()`);
- young collections run every 10,000 net allocations instead of 700 (a few ms each);
- a full collection is considered after 100 middle-generation ones instead of 10, i.e.
  after ~10 million net allocations: minutes apart at full feed rates, not seconds.

`soar_gc_pause_seconds{generation}` shows what the collector still costs.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import prometheus_client
import structlog

log = structlog.get_logger(__name__)

GC_THRESHOLDS = (10_000, 10, 100)
#: a pause this long is worth a log line: it is a visible stall in the live view
SLOW_PAUSE_S = 0.1

GC_PAUSE = prometheus_client.Histogram(
    "soar_gc_pause_seconds",
    "Time the process stood still in the cyclic garbage collector, per collection",
    ["generation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

_started: list[float] = []


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
        return
    if not _started:
        return
    pause = time.perf_counter() - _started[0]
    generation = int(info.get("generation", 2))
    GC_PAUSE.labels(str(generation)).observe(pause)
    if pause >= SLOW_PAUSE_S:
        log.warning("gc.slow_pause", generation=generation, pause_ms=round(pause * 1000, 1),
                    collected=info.get("collected"))


def settle_gc() -> None:
    """Freeze what start-up made and set the thresholds above; call once the process is set up.

    Idempotent in effect: a second call freezes what was made since, and installs no second
    callback. Not for test processes that build many pipelines: frozen objects are never
    collected, so their cycles would stay for the life of the process.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)
    log.info("gc.settled", frozen=gc.get_freeze_count(), thresholds=list(GC_THRESHOLDS))
