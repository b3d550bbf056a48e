"""A stealth aircraft is never named in a log line or a metric label (issue 18, point 7).

The full-feed capture carries two real stealth gliders (`id86…`: FLRDD8436 and FLRDDD953). Their
flights are logged by flight id alone; everyone else's by aircraft as before.
"""

from __future__ import annotations

import copy
from pathlib import Path

from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from soar.decode import Decoder
from soar.ingest.capture import iter_capture
from soar.records import Fix, Protocol
from soar.tracking.inputs import ShardInput
from soar.tracking.shard import Shard

from .helpers import Sinks, ids, run_shard

FULL_FEED = "ogn/svoop-ogn-full-feed-5000-20170419.txt"
STEALTH = ("dd8436", "ddd953")


def named(value: object) -> bool:
    text = str(value).lower()
    return any(address in text for address in STEALTH)


async def test_stealth_aircraft_appear_in_no_log_line_and_no_metric(testdata: Path) -> None:
    decoder = Decoder(Protocol.OGN)
    items: list[ShardInput] = []
    with capture_logs() as decoding:
        for envelope in iter_capture(testdata / FULL_FEED):
            items += [item for _ident, item in decoder.decode(envelope).shard_items]
    stealthy = [i for i in items if isinstance(i, Fix) and i.stealth]
    assert {f"{f.address:06x}" for f in stealthy} == set(STEALTH)
    # one of their fixes poisons the shard: the quarantine log shows what it can, not who
    poison = copy.copy(stealthy[0])
    poison.lat = "not a latitude"  # type: ignore[assignment]

    sinks = Sinks()
    with capture_logs() as logs:
        await run_shard(Shard(new_id=ids()), [*items, poison], sinks)
    rows = sinks.rows().values()
    hidden = {row.id for row in rows if row.aircraft_id & 0xFFFFFF in (0xDD8436, 0xDDD953)}
    assert hidden, "the stealth gliders are flying: they have flights"

    opened = [e for e in logs if e["event"] == "flight.opened"]
    assert {e["flight"] for e in opened if "aircraft" not in e} == {str(i) for i in hidden}
    assert len([e for e in opened if "aircraft" in e]) > 100  # the others are named
    assert [e for e in logs if e["event"] == "shard.quarantined"]
    leaks = [e for e in [*decoding, *logs] if any(named(v) for v in e.values())]
    assert leaks == []

    labels = [
        value
        for metric in REGISTRY.collect()
        for sample in metric.samples
        for value in sample.labels.values()
    ]
    assert labels and not [value for value in labels if named(value)]
