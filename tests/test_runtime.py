"""The process-wide runtime set-up: GC thresholds, freeze, pause metric, GIL switch interval.

`settle_runtime()` changes the whole process (frozen objects are never collected again), so it
runs in a child interpreter, never in the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from soar.runtime import GC_THRESHOLDS, SWITCH_INTERVAL_S

CHILD = textwrap.dedent(
    """
    import gc, json, sys
    import prometheus_client
    from soar.runtime import settle_runtime

    before = gc.get_threshold()
    settle_runtime()
    settle_runtime()  # a second call must not install a second callback

    def full_collections():
        return prometheus_client.REGISTRY.get_sample_value(
            "soar_gc_pause_seconds_count", {"generation": "2"}) or 0

    before_collect = full_collections()
    gc.collect()  # one full collection, observed once by the metric
    pauses = {"2": full_collections() - before_collect}
    print(json.dumps({
        "before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count(),
        "pauses": pauses, "callbacks": len(gc.callbacks), "switch": sys.getswitchinterval(),
    }))
    """
)


def test_settle_runtime_sets_thresholds_freezes_start_up_and_times_every_collection() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, timeout=60)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert tuple(result["before"]) == (700, 10, 10)  # CPython's defaults, for contrast
    assert tuple(result["after"]) == GC_THRESHOLDS
    # the modules and objects of start-up are out of every future collection
    assert result["frozen"] > 10_000
    # a full collection after settling is timed, once (one callback, however often settled)
    assert result["pauses"]["2"] == 1
    assert result["callbacks"] == 1
    assert result["switch"] == SWITCH_INTERVAL_S < 0.005  # CPython's default is 5 ms


def test_a_slow_pause_is_logged_and_a_closed_log_stream_never_raises_from_the_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from soar import runtime

    logged: list[dict[str, object]] = []

    class ClosedStream:
        def warning(self, event: str, **fields: object) -> None:
            logged.append({"event": event, **fields})
            raise ValueError("I/O operation on closed file.")

    monkeypatch.setattr(runtime, "log", ClosedStream())
    monkeypatch.setattr(runtime, "SLOW_PAUSE_S", 0.0)
    runtime._on_gc("start", {"generation": 2})
    runtime._on_gc("stop", {"generation": 2, "collected": 3})  # must not raise
    assert logged and logged[0]["event"] == "gc.slow_pause" and logged[0]["generation"] == 2
