"""A shard that raises on every 1,000th input: that input is quarantined and counted, the shard
goes on, and everything else is stored exactly as in the fault-free run."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from soar.pipeline import Pipeline
from soar.protocols.modes import icao_address
from soar.records import AddressType, Fix, aircraft_id
from soar.tracking.flight import Event
from soar.tracking.inputs import ModeSInput, SbsInput, ShardInput
from soar.tracking.metrics import SHARD_QUARANTINED
from soar.tracking.shard import Shard
from tests.faults.faultkit import (
    PROTOCOLS,
    Corpus,
    FixKey,
    Reference,
    fault_settings,
    replay_capture,
    stored,
)


def _quarantined_total() -> float:
    return sum(
        s.value for m in SHARD_QUARANTINED.collect() for s in m.samples if s.name.endswith("_total")
    )


def _key(item: ShardInput) -> FixKey | None:
    """The fix key an input could have become (None for clock ticks and the like)."""
    if isinstance(item, Fix):
        ident, us = item.aircraft_id, item.received_us
    elif isinstance(item, SbsInput):
        ident, us = aircraft_id(AddressType.ICAO, item.msg.icao), item.received_us
    elif isinstance(item, ModeSInput):
        address = icao_address(item.message)
        if address is None:
            return None
        ident, us = aircraft_id(AddressType.ICAO, address), item.received_us
    else:
        return None
    return ident, datetime.fromtimestamp(us / 1e6, UTC)


class FaultyProcess:
    """Wraps `Shard.process`: every `every`-th call (over all shards) raises."""

    def __init__(self, every: int) -> None:
        self.raised: list[ShardInput] = []
        calls = itertools.count(1)
        original = Shard.process
        raised = self.raised

        def process(shard: Shard, item: ShardInput) -> list[Event]:
            if next(calls) % every == 0:
                raised.append(item)
                raise RuntimeError(f"injected fault in shard {shard.index}")
            return original(shard, item)

        self.process = process


async def test_shard_raising_every_1000th_message_quarantines_only_those(
    corpus: Corpus, reference: Reference, db_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for protocol in PROTOCOLS:
        fault = FaultyProcess(1000)
        monkeypatch.setattr(Shard, "process", fault.process)
        before = _quarantined_total()
        pipelines: list[Pipeline] = []

        async def keep(pipeline: Pipeline, pipelines: list[Pipeline] = pipelines) -> None:
            pipelines.append(pipeline)

        await replay_capture(
            fault_settings(tmp_path / protocol.value), db_url, corpus[protocol], during=keep
        )
        monkeypatch.undo()
        raised = fault.raised
        assert raised, f"{protocol.value}: the fault never fired"
        # quarantined and counted: the shards' own count and the metric
        quarantined = sum(shard.quarantined for shard in pipelines[0].shards)
        assert quarantined == len(raised)
        assert _quarantined_total() - before == len(raised)
        # every shard went on: nothing but the quarantined inputs is missing
        have = stored(db_url).fixes.get(protocol, set())
        want = reference.keys(protocol)
        assert have <= want, f"{protocol.value}: fixes the fault-free run does not have"
        missing = want - have
        could_be = {key for key in map(_key, raised) if key is not None}
        assert missing <= could_be, (
            f"{protocol.value}: {len(missing - could_be)} fixes lost that were not quarantined"
        )
        assert len(missing) <= len(raised)
        # flights: the same for every aircraft none of whose inputs was quarantined
        touched = {(protocol, key[0]) for key in map(_key, raised) if key is not None}
        got, ref = stored(db_url).flights_of, reference.per_protocol[protocol].flights_of
        differ = {
            a for a in set(got) | set(ref) if a[0] is protocol and got.get(a, 0) != ref.get(a, 0)
        }
        assert differ <= touched, f"{protocol.value}: flights changed for untouched aircraft"
        print(f"{protocol.value}: {len(raised)} quarantined, {len(missing)} fixes not stored, "
              f"{len(have)} stored of {len(want)}")
