"""Process-wide runtime set-up for a long-running tracker: the garbage collector and the GIL.

**The cyclic garbage collector.**

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
- young collections run every 5,000 net allocations instead of 700 (about a millisecond);
- a full collection is considered after 200 middle-generation ones instead of 10, i.e.
  after ~10 million net allocations: many minutes apart at full feed rates, not seconds.
  (10,000 for the youngest made middle-generation pauses of up to 90 ms; 5,000 halves them.)

`soar_gc_pause_seconds{generation}` shows what the collector still costs; pauses over 100 ms
are logged as `gc.slow_pause` by `log_slow_gc_pauses`, a task of each process.

**The GIL switch interval.** The store writers convert and COPY rows in worker threads while
the trio thread runs the live path. Every time the trio thread comes back from a system call
(a socket read, epoll) while a writer holds the GIL, it waits up to the switch interval for
it: 5 ms by default, many times a second when thousands of aircraft are new at once. 1 ms
keeps the live path responsive; throughput was unchanged in the benchmark
(docs/performance.md).

May import: nothing of soar
"""

from __future__ import annotations

import gc
import signal
import sys
import time
from collections import deque
from typing import Any

import prometheus_client
import structlog
import trio

log = structlog.get_logger(__name__)

GC_THRESHOLDS = (5_000, 10, 200)
SWITCH_INTERVAL_S = 0.001
#: a pause this long is worth a log line: it is a visible stall in the live view
SLOW_PAUSE_S = 0.1

GC_PAUSE = prometheus_client.Histogram(
    "soar_gc_pause_seconds",
    "Time the process stood still in the cyclic garbage collector, per collection",
    ["generation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

# The callback runs wherever a collection starts, possibly inside code that holds a lock:
# prometheus_client's label lock (held while /metrics copies a dict) or structlog's write
# lock. Neither may be taken in it, so the children are bound here and slow pauses are only
# queued (deque.append takes no lock) for `log_slow_gc_pauses` to write.
_PAUSE_BY_GENERATION = {generation: GC_PAUSE.labels(str(generation)) for generation in range(3)}
_slow_pauses: deque[tuple[int, float, int | None]] = deque(maxlen=100)
_started: list[float] = []


def on_gc_phase(phase: str, info: dict[str, Any]) -> None:
    """The `gc.callbacks` entry: times each collection into the pause histogram and keeps the
    slow ones for `log_slow_gc_pauses` (nothing is logged from inside a collection)."""
    if phase == "start":
        _started[:] = [time.perf_counter()]
        return
    if not _started:
        return
    pause = time.perf_counter() - _started[0]
    generation = min(int(info.get("generation", 2)), 2)
    _PAUSE_BY_GENERATION[generation].observe(pause)
    if pause >= SLOW_PAUSE_S:
        _slow_pauses.append((generation, pause, info.get("collected")))


async def log_slow_gc_pauses(*, interval_s: float = 5.0) -> None:
    """Trio task: log the collector's slow pauses (`gc.slow_pause`), from outside the callback."""
    while True:
        while _slow_pauses:
            generation, pause, collected = _slow_pauses.popleft()
            log.warning("gc.slow_pause", generation=generation, pause_ms=round(pause * 1000, 1),
                        collected=collected)
        await trio.sleep(interval_s)


def settle_runtime() -> None:
    """Freeze what start-up made, set the thresholds and the switch interval above.

    Call once the process is set up (modules imported, database open, web app built).
    Idempotent in effect: a second call freezes what was made since, and installs no second
    callback. Not for test processes that build many pipelines: frozen objects are never
    collected, so their cycles would stay for the life of the process.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if on_gc_phase not in gc.callbacks:
        gc.callbacks.append(on_gc_phase)
    log.info("runtime.settled", gc_frozen=gc.get_freeze_count(),
             gc_thresholds=list(GC_THRESHOLDS), switch_interval_s=SWITCH_INTERVAL_S)


async def watch_signals(shutdown: trio.Event) -> None:
    """SIGTERM or SIGINT sets `shutdown` (every role's orderly stop starts there)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("shutdown.requested", signal=signal.Signals(signum).name)
            shutdown.set()
