"""The process-wide runtime set-up: garbage collector thresholds, freeze and pause metric.

`settle_gc()` changes the whole process (frozen objects are never collected again), so it
runs in a child interpreter, never in the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from soar.runtime import GC_THRESHOLDS

CHILD = textwrap.dedent(
    """
    import gc, json
    import prometheus_client
    from soar.runtime import settle_gc

    before = gc.get_threshold()
    settle_gc()
    settle_gc()  # a second call must not install a second callback

    def full_collections():
        return prometheus_client.REGISTRY.get_sample_value(
            "soar_gc_pause_seconds_count", {"generation": "2"}) or 0

    before_collect = full_collections()
    gc.collect()  # one full collection, observed once by the metric
    pauses = {"2": full_collections() - before_collect}
    print(json.dumps({
        "before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count(),
        "pauses": pauses, "callbacks": len(gc.callbacks),
    }))
    """
)


def test_settle_gc_sets_thresholds_freezes_start_up_and_times_every_collection() -> None:
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
