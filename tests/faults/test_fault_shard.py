"""A shard that raises on every 1,000th input: that input is quarantined and counted, the shard
goes on, and everything else is stored exactly as if the quarantined inputs had never arrived.

Which inputs fail is counted per shard: each shard's inputs come from one decoder in one order,
so its 1,000th input is the same in every run. (Counted over all shards, the 1,000th call was
whichever shard trio ran then: one run quarantined a Beast position 100 µs before the next, and
that next one, thinned in the fault-free run, was stored instead.)

Quarantining an input is not "lose that fix and nothing else": an ADS-B position thinned because
a position within 1 s was accepted is accepted when that one never comes, and the fixes after it
are thinned against it. So the expectation is computed, not guessed: the same shards fed the
same inputs in the pipeline's order (`simulate`), with the same inputs raising, in memory; the
fault-free simulation must give the reference replay's fixes, which checks the simulation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from soar.decode import Decoder
from soar.pipeline import TICK_EVERY_US, Pipeline
from soar.protocols.modes import icao_address
from soar.records import AddressType, Fix, Protocol, aircraft_id
from soar.tracking.agl import AglCalculator
from soar.tracking.airports import default_index
from soar.tracking.flight import Event, FixAccepted, FixLate
from soar.tracking.inputs import ClockTick, ModeSInput, SbsInput, ShardInput
from soar.tracking.metrics import SHARD_QUARANTINED
from soar.tracking.router import shard_of
from soar.tracking.shard import Shard
from tests.faults.faultkit import (
    PROTOCOLS,
    Capture,
    Corpus,
    FixKey,
    Reference,
    fault_settings,
    replay_capture,
    stored,
)

EVERY = 1000
SHARDS = fault_settings(Path("unused")).shard_count

#: what the fault-injection suite replays into 4 shards: the pipeline's order of inputs
Routed = list[tuple[int, ShardInput]]


def _quarantined_total() -> float:
    return sum(
        s.value for m in SHARD_QUARANTINED.collect() for s in m.samples if s.name.endswith("_total")
    )


def _fix_key(fix: Fix) -> FixKey:
    return fix.aircraft_id, datetime.fromtimestamp(fix.received_us / 1e6, UTC)


def _aircraft(item: ShardInput) -> int | None:
    """The aircraft an input is about (None for clock ticks and the like)."""
    if isinstance(item, Fix):
        return item.aircraft_id
    if isinstance(item, SbsInput):
        return aircraft_id(AddressType.ICAO, item.msg.icao)
    if isinstance(item, ModeSInput):
        address = icao_address(item.message)
        return None if address is None else aircraft_id(AddressType.ICAO, address)
    return None


def _data(item: ShardInput) -> bool:
    """An input from the decoder (its position in the shard's input is the same in every run),
    not a control input such as a tow release, which comes when the tow task runs."""
    return isinstance(item, Fix | ModeSInput | SbsInput | ClockTick)


class FaultyProcess:
    """Wraps `Shard.process`: every `every`-th data input of each shard raises."""

    def __init__(self, every: int) -> None:
        #: (shard, input) of every input that raised
        self.raised: list[tuple[int, ShardInput]] = []
        counts: dict[int, int] = {}
        original = Shard.process
        raised = self.raised

        def process(shard: Shard, item: ShardInput) -> list[Event]:
            if _data(item):
                n = counts[shard.index] = counts.get(shard.index, 0) + 1
                if n % every == 0:
                    raised.append((shard.index, item))
                    raise RuntimeError(f"injected fault in shard {shard.index}")
            return original(shard, item)

        self.process = process


def routed(capture: Capture, shards: int = SHARDS) -> Routed:
    """The capture's inputs as `Pipeline._decode` hands them to the shards, in its order."""
    decoder = Decoder(capture.protocol)
    out: Routed = []
    last_tick_us = 0
    for env in capture.envelopes:
        if env.received_us - last_tick_us >= TICK_EVERY_US:
            last_tick_us = env.received_us
            out.extend((index, ClockTick(env.received_us)) for index in range(shards))
        out.extend((shard_of(ident, shards), item) for ident, item in decoder.decode(env).shard_items)
    return out


def in_order(inputs: Routed) -> Iterator[tuple[int, ShardInput]]:
    return iter(inputs)


def shard_by_shard(inputs: Routed) -> Iterator[tuple[int, ShardInput]]:
    """Another order trio may run them in: each shard's inputs in their order, the shards one
    after the other (the decoder far ahead of the shards, which buffers allow)."""
    return iter(sorted(inputs, key=lambda pair: pair[0]))


def last_shard_first(inputs: Routed) -> Iterator[tuple[int, ShardInput]]:
    return iter(sorted(inputs, key=lambda pair: -pair[0]))


@dataclass
class Simulated:
    keys: set[FixKey]
    quarantined: int


def simulate(
    inputs: Routed,
    schedule: Callable[[Routed], Iterator[tuple[int, ShardInput]]] = in_order,
    shards: int = SHARDS,
) -> Simulated:
    """The fixes the pipeline's shards store for `inputs`: real shards, in memory, each input
    quarantined as `Shard.run` does when `process` raises."""
    agl = AglCalculator(airports=default_index())
    owners = [Shard(i, agl=agl) for i in range(shards)]
    keys: set[FixKey] = set()

    def take(events: list[Event]) -> None:
        keys.update(_fix_key(e.fix) for e in events if isinstance(e, FixAccepted | FixLate))

    quarantined = 0
    for index, item in schedule(inputs):
        try:
            take(owners[index].process(item))
        except RuntimeError:
            quarantined += 1
    for shard in owners:
        take(shard.release_held())
    return Simulated(keys, quarantined)


def test_which_inputs_a_fault_hits_does_not_depend_on_how_trio_runs_the_shards(
    corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Beast capture's inputs run in two orders trio may choose: the same inputs fail and
    the same fixes are stored. (Counted over all shards, the 2,000th call was the position at
    15:07:58.1905 in one order and not in the other, and the position 100 µs after it, thinned
    in the fault-free run, was stored: the flaky `fixes the fault-free run does not have`.)"""
    inputs = routed(corpus[Protocol.BEAST])
    runs = []
    for schedule in (in_order, shard_by_shard, last_shard_first):
        fault = FaultyProcess(EVERY)
        monkeypatch.setattr(Shard, "process", fault.process)
        runs.append((simulate(inputs, schedule).keys, [id(item) for _i, item in fault.raised]))
        monkeypatch.undo()
    keys, raised = runs[0]
    assert raised, "the fault never fired"
    for other_keys, other_raised in runs[1:]:
        assert other_raised == raised
        assert other_keys == keys


def test_a_quarantined_position_lets_the_one_it_thinned_be_stored(corpus: Corpus) -> None:
    """Why the expectation is simulated: without the position at 15:07:58.1905 of 406B90, the
    one received 100 µs later is no longer thinned (the fault-free run stores only the first)."""
    inputs = routed(corpus[Protocol.BEAST])
    first = next(
        n for n, (_i, item) in enumerate(inputs)
        if isinstance(item, ModeSInput) and item.received_us == 1_771_945_678_190_500
    )
    second = (0x1406B90, datetime(2026, 2, 24, 15, 7, 58, 190600, tzinfo=UTC))
    assert second not in simulate(inputs).keys
    assert second in simulate(inputs[:first] + inputs[first + 1:]).keys


async def test_shard_raising_every_1000th_message_quarantines_only_those(
    corpus: Corpus, reference: Reference, db_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for protocol in PROTOCOLS:
        inputs = routed(corpus[protocol])
        # the simulation stores what the fault-free replay stored: it is the pipeline's shards
        assert simulate(inputs).keys == reference.keys(protocol), (
            f"{protocol.value}: the in-memory shards disagree with the fault-free replay"
        )
        fault = FaultyProcess(EVERY)
        monkeypatch.setattr(Shard, "process", fault.process)
        expected = simulate(inputs)
        monkeypatch.undo()
        assert expected.quarantined == len(fault.raised)

        fault = FaultyProcess(EVERY)
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
        assert len(raised) == expected.quarantined
        # quarantined and counted: the shards' own count and the metric
        quarantined = sum(shard.quarantined for shard in pipelines[0].shards)
        assert quarantined == len(raised)
        assert _quarantined_total() - before == len(raised)
        # every shard went on: stored is what the same shards store without those inputs
        have = stored(db_url).fixes.get(protocol, set())
        want = reference.keys(protocol)
        assert have == expected.keys, (
            f"{protocol.value}: {len(expected.keys - have)} fixes lost "
            f"(e.g. {sorted(expected.keys - have)[:3]}), {len(have - expected.keys)} not "
            f"expected (e.g. {sorted(have - expected.keys)[:3]})"
        )
        assert len(want - have) <= len(raised)
        # flights: the same for every aircraft none of whose inputs was quarantined
        touched = {(protocol, key[0]) for key in expected.keys ^ want} | {
            (protocol, ident) for ident in map(_aircraft, (item for _i, item in raised))
            if ident is not None
        }
        got, ref = stored(db_url).flights_of, reference.per_protocol[protocol].flights_of
        differ = {
            a for a in set(got) | set(ref) if a[0] is protocol and got.get(a, 0) != ref.get(a, 0)
        }
        assert differ <= touched, f"{protocol.value}: flights changed for untouched aircraft"
        print(f"{protocol.value}: {len(raised)} quarantined, {len(want - have)} fixes not "
              f"stored, {len(have - want)} stored instead, {len(have)} stored of {len(want)}")
