"""The web worker's metrics in soar's /metrics: its exposition parsed, the families soar shows
merged into soar's own by name (the format allows one HELP and TYPE per name), each of its
samples labelled worker="web", and the counters of workers that retired carried on.

May import: soar.web.worker
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

if TYPE_CHECKING:
    from soar.web.worker import WebWorker

#: The label every sample of the worker's metrics carries in the parent's /metrics.
WORKER_LABEL = ("worker", "web")
#: The worker's families the parent shows: what the worker does (HTTP, its WebSocket clients,
#: its hub, its directory) and its process; not the zero counters of every module a worker
#: happens to import, nor what only the parent does (the front door, the descriptor limit).
WORKER_FAMILIES = ("soar_websocket_", "soar_live_dropped", "soar_live_hub_", "soar_http_",
                   "soar_privacy_", "process_")
NOT_WORKER_FAMILIES = ("soar_http_door_", "soar_http_accept_", "soar_http_connection_limit")


CUMULATIVE = ("counter", "histogram", "summary")
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _sample_key(sample: Sample) -> SampleKey:
    return sample.name, tuple(sorted(sample.labels.items()))


def summed(groups: list[list[Metric]]) -> list[Metric]:
    """The families of `groups`, those of one name made one, their samples of the same name
    and labels added up (workers' connections, counters carried on)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[SampleKey, float]] = {}
    for group in groups:
        for family in group:
            if family.name not in families:
                families[family.name] = family
                values[family.name] = {}
            elif families[family.name].type != family.type:
                continue
            totals = values[family.name]
            for sample in family.samples:
                key = _sample_key(sample)
                totals[key] = totals.get(key, 0.0) + sample.value
    out = []
    for name, first in families.items():
        family = Metric(first.name, first.documentation, first.type, first.unit)
        family.samples = [Sample(sample, dict(labels), value)
                          for (sample, labels), value in values[name].items()]
        out.append(family)
    return out


def labelled(family: Metric) -> Metric:
    copy = Metric(family.name, family.documentation, family.type, family.unit)
    copy.samples = [sample._replace(labels={**sample.labels, WORKER_LABEL[0]: WORKER_LABEL[1]})
                    for sample in family.samples if not sample.name.endswith("_created")]
    return copy


class _Merged:
    """This process's registry with the worker's families merged in by name: a family of the
    same name gains their samples (the format allows one HELP and TYPE per name)."""

    def __init__(self, extra: list[Metric]) -> None:
        self._extra = {family.name: family for family in extra}

    def collect(self) -> Iterator[Metric]:
        extra = dict(self._extra)
        for family in prometheus_client.REGISTRY.collect():
            more = extra.pop(family.name, None)
            if more is not None and more.type == family.type:
                family.samples = [*family.samples, *more.samples]
            yield family
        yield from extra.values()


def shown_families(body: bytes) -> list[Metric]:
    """The families of a worker's exposition text the parent shows."""
    return [family for family in text_string_to_metric_families(body.decode())
            if family.name.startswith(WORKER_FAMILIES)
            and not family.name.startswith(NOT_WORKER_FAMILIES)
            and not family.name.endswith("_created")]


def exposition(worker: WebWorker | None) -> bytes:
    """The body of /metrics: this process's registry and, with a web worker, its families
    (samples labelled worker="web"). Blocks up to METRICS_TIMEOUT_S: call it from a thread."""
    if worker is None:
        return prometheus_client.generate_latest(prometheus_client.REGISTRY)
    return prometheus_client.generate_latest(_Merged(worker.families()))
