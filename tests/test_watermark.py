"""CommitWatermark: inputs are settled only once every level has finished what they caused,
and marks keep advancing under continuous input (the old spool waited for idleness)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from soar.watermark import CommitWatermark, Flow


class Stage:
    """A counting stage: items sent in, items done (a consumer that finishes on command)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent = 0
        self.done = 0

    def flow(self) -> Flow:
        return Flow(self.name, lambda: self.sent, lambda: self.done)


async def test_settles_only_when_every_level_has_caught_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    decoder, shard, writer = Stage("envelopes"), Stage("shard"), Stage("writer")
    settled: list[list[str]] = []

    async def settle(items: list[str]) -> None:
        settled.append(items)

    mark = CommitWatermark([[decoder.flow()], [shard.flow()], [writer.flow()]], settle)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mark.run)
        decoder.sent += 2
        mark.add("m1")
        await trio.sleep(1)
        assert settled == [] and mark.pending == 1
        decoder.done += 2  # decoded: they made 3 shard items
        shard.sent += 3
        await trio.sleep(1)
        assert settled == []
        shard.done += 3
        writer.sent += 3
        # meanwhile more traffic: raises the next mark's targets, not this one's
        decoder.sent += 5
        mark.add("m2")
        await trio.sleep(1)
        assert settled == []
        writer.done += 3
        await trio.sleep(1)
        assert settled == [["m1"]]
        assert mark.pending == 1
        decoder.done += 5
        await trio.sleep(1)
        assert settled == [["m1"], ["m2"]]  # m2 caused nothing further down
        nursery.cancel_scope.cancel()


async def test_continuous_input_never_stalls_acknowledgement(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Input arrives every 10 ms and the pipeline is never idle; inputs still settle, in
    order, a bounded time after they were added."""
    decoder, writer = Stage("envelopes"), Stage("writer")
    added_at: dict[int, float] = {}
    delays: list[float] = []
    order: list[int] = []

    async def settle(items: list[int]) -> None:
        for item in items:
            delays.append(trio.current_time() - added_at[item])
            order.append(item)

    mark = CommitWatermark([[decoder.flow()], [writer.flow()]], settle)

    async def feed() -> None:
        for n in range(2000):
            decoder.sent += 1
            added_at[n] = trio.current_time()
            mark.add(n)
            await trio.sleep(0.01)

    async def work() -> None:  # each item takes 5 ms at each level, one behind the other
        while True:
            if decoder.done < decoder.sent:
                decoder.done += 1
                writer.sent += 1
            if writer.done < writer.sent:
                writer.done += 1
            await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(mark.run)
        nursery.start_soon(work)
        await feed()
        while len(order) < 2000:
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert order == list(range(2000))
    assert max(delays) < 0.5
    assert mark.marks > 100  # many marks, not one at the end


async def test_a_failing_settle_is_not_swallowed() -> None:
    stage = Stage("s")

    async def settle(items: list[int]) -> None:
        raise RuntimeError("broker gone")

    mark = CommitWatermark([[stage.flow()]], settle)
    mark.add(1)
    with pytest.raises(RuntimeError):
        await mark.advance()
    assert mark.pending == 0


def test_needs_a_level() -> None:
    async def settle(items: list[int]) -> None:
        pass

    with pytest.raises(ValueError):
        CommitWatermark([], settle)


async def test_pending_counts_none_of_the_inputs_being_settled() -> None:
    stage = Stage("s")
    seen: list[int] = []
    mark: CommitWatermark[int]

    async def settle(items: list[int]) -> None:
        seen.append(mark.pending)  # e.g. a gauge set from here

    mark = CommitWatermark([[stage.flow()]], settle)
    mark.add(1)
    mark.add(2)
    await mark.advance()
    assert seen == [0] and mark.pending == 0
