"""OverflowSink: a full channel spills to the disk spool, order is kept, a restart replays."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.lowlevel

from soar.overflow import OverflowSink, decode_envelope, encode_envelope
from soar.records import Envelope, Protocol


def ogn_envelopes(testdata: Path, limit: int = 300) -> list[Envelope]:
    lines = (testdata / "ogn" / "soar-flight-descended-out-of-range-then-took-off.txt").read_bytes()
    envs = []
    for i, raw in enumerate(lines.splitlines()[:limit]):
        _stamp, _sep, line = raw.partition(b" ")
        envs.append(Envelope(Protocol.OGN, 1_766_528_295_956_000 + i * 1000, line, "test"))
    return envs


def test_envelope_round_trip(testdata: Path) -> None:
    for env in ogn_envelopes(testdata, 50):
        assert decode_envelope(encode_envelope(env)) == env


async def test_full_channel_spills_and_drains_in_order(testdata: Path, tmp_path: Path) -> None:
    envs = ogn_envelopes(testdata)
    send, receive = trio.open_memory_channel[Envelope](5)
    sink = OverflowSink(Protocol.OGN, send, tmp_path / "spool", 10 * 1024 * 1024)
    sink.open()
    for env in envs:
        await sink.send(env)  # never blocks: nobody reads yet
    assert sink.depth == len(envs) - 5
    got: list[Envelope] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.drain)
        while len(got) < len(envs):
            got.append(await receive.receive())
        nursery.cancel_scope.cancel()
    assert got == envs
    assert sink.depth == 0


async def test_spool_survives_restart(testdata: Path, tmp_path: Path) -> None:
    envs = ogn_envelopes(testdata)
    send, receive = trio.open_memory_channel[Envelope](10)
    sink = OverflowSink(Protocol.OGN, send, tmp_path / "spool", 10 * 1024 * 1024)
    sink.open()
    for env in envs:
        await sink.send(env)
    first = [receive.receive_nowait() for _ in range(10)]
    # the process stops here; a new one opens the same spool
    send2, receive2 = trio.open_memory_channel[Envelope](len(envs))
    again = OverflowSink(Protocol.OGN, send2, tmp_path / "spool", 10 * 1024 * 1024)
    again.open()
    assert again.depth == len(envs) - 10
    await again.flush()
    rest = [receive2.receive_nowait() for _ in range(len(envs) - 10)]
    assert first + rest == envs


async def test_unusable_spool_falls_back_to_waiting(testdata: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should be")
    envs = ogn_envelopes(testdata, 20)
    send, receive = trio.open_memory_channel[Envelope](2)
    sink = OverflowSink(Protocol.OGN, send, blocker / "spool", 1024 * 1024)
    sink.open()  # logs and counts, does not raise
    got: list[Envelope] = []

    async def consume() -> None:
        async for env in receive:
            got.append(env)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        for env in envs:
            await sink.send(env)
        await send.aclose()
    assert got == envs


async def test_drain_cancelled_mid_batch_then_flush_loses_and_repeats_nothing(
    testdata: Path, tmp_path: Path
) -> None:
    envs = ogn_envelopes(testdata, 1000)
    send, receive = trio.open_memory_channel[Envelope](5)
    sink = OverflowSink(Protocol.OGN, send, tmp_path / "spool", 10 * 1024 * 1024)
    sink.open()
    for env in envs:
        await sink.send(env)
    got: list[Envelope] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.drain)
        while len(got) < 100:  # part-way through a batch of 256 read from the spool
            got.append(await receive.receive())
        nursery.cancel_scope.cancel()  # shutdown stops the drainer here

    async def consume() -> None:
        async for env in receive:
            got.append(env)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await sink.flush()
        await send.aclose()
    assert got == envs


async def test_flush_while_the_drain_still_runs_loses_and_repeats_nothing(
    testdata: Path, tmp_path: Path
) -> None:
    """A role may flush before its drain task has seen its cancellation (or without stopping
    it): both then send what is in flight. Before they took turns, both sent the first record
    and both popped it (one envelope twice, the next never, or "pop from an empty deque")."""
    envs = ogn_envelopes(testdata, 1000)
    send, receive = trio.open_memory_channel[Envelope](5)
    sink = OverflowSink(Protocol.OGN, send, tmp_path / "spool", 10 * 1024 * 1024)
    sink.open()
    for env in envs:
        await sink.send(env)
    got: list[Envelope] = []

    async def consume() -> None:
        async for env in receive:
            got.append(env)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.drain)
        nursery.start_soon(consume)
        while len(got) < 100:  # the drain is part-way through a batch, blocked on the channel
            await trio.lowlevel.checkpoint()
        await sink.flush()  # beside it, not after it
        nursery.cancel_scope.cancel()
    await send.aclose()
    async for env in receive:
        got.append(env)
    assert got == envs
