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


async def test_a_slow_pause_is_queued_by_the_callback_and_logged_by_the_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import trio

    from soar import runtime

    logged: list[dict[str, object]] = []

    class Recorder:
        def warning(self, event: str, **fields: object) -> None:
            logged.append({"event": event, **fields})

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the collector's callback must not take the metric's label lock")

    monkeypatch.setattr(runtime, "log", Recorder())
    monkeypatch.setattr(runtime, "SLOW_PAUSE_S", 0.0)
    monkeypatch.setattr(runtime.GC_PAUSE, "labels", forbidden)
    runtime.on_gc_phase("start", {"generation": 2})
    runtime.on_gc_phase("stop", {"generation": 2, "collected": 3})
    assert logged == []  # nothing written from inside a collection
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime.log_slow_gc_pauses)
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert len(logged) == 1
    assert logged[0]["event"] == "gc.slow_pause"
    assert logged[0]["generation"] == 2 and logged[0]["collected"] == 3
