"""Split-mode link: every batch is resent until it is acknowledged itself."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from soar.records import Envelope, Protocol
from soar.transport import TrackLink, decode_batch, encode_ack, encode_batch


def ogn_envelopes(testdata: Path, n: int) -> list[Envelope]:
    path = testdata / "ogn" / "soar-flight-descended-out-of-range-then-took-off.txt"
    lines = path.read_bytes().splitlines()[:n]
    return [Envelope(Protocol.OGN, 1_766_528_000_000_000 + i, line.partition(b" ")[2], "t")
            for i, line in enumerate(lines)]


class LosingTrack:
    """Stands in for the pynng socket: loses the first batch (the track died with it), then
    acknowledges everything it receives — like a restarted track, which knows no history."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.acks_send, self.acks_receive = trio.open_memory_channel[bytes](100)
        self.lost_one = False

    async def asend(self, data: bytes) -> None:
        session, seq, _records = decode_batch(data)
        if not self.lost_one:
            self.lost_one = True
            return
        self.received.append(seq)
        await self.acks_send.send(encode_ack(session, seq))

    async def arecv(self) -> bytes:
        return await self.acks_receive.receive()


def test_batch_round_trip(testdata: Path) -> None:
    envs = ogn_envelopes(testdata, 5)
    from soar.overflow import decode_envelope

    session, seq, records = decode_batch(encode_batch(7, 3, envs))
    assert (session, seq) == (7, 3)
    assert [decode_envelope(r) for r in records] == envs


async def test_lost_older_batch_is_resent_although_newer_ones_were_acked(
    testdata: Path, autojump_clock: trio.testing.MockClock
) -> None:
    link = TrackLink("inproc://unused", batch_size=10, resend_after=3.0)
    sock = LosingTrack()
    for env in ogn_envelopes(testdata, 20):  # two batches of 10
        link.offer(env)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link._receive_acks, sock)
        nursery.start_soon(link._send_loop, sock)
        await trio.sleep(1.0)
        assert sock.received == [2] and link.unacked == 10  # batch 1 lost, batch 2 acked
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    assert sock.received == [2, 1]
    assert link.unacked == 0


class DeadTrack:
    """Stands in for the socket of a track that takes batches and never acknowledges one."""

    async def asend(self, data: bytes) -> None:
        return None

    async def arecv(self) -> bytes:
        await trio.sleep_forever()
        raise AssertionError


async def test_a_track_that_never_acknowledges_is_not_keeping_up_while_batches_are_dropped(
    testdata: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from soar.transport import LINK_DROPPED

    def dropped() -> float:
        return LINK_DROPPED.labels(track="inproc://dead")._value.get()

    link = TrackLink("inproc://dead", batch_size=10, max_unacked=100)
    sock = DeadTrack()
    before = dropped()
    envelopes = ogn_envelopes(testdata, 50)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link._receive_acks, sock)
        nursery.start_soon(link._send_loop, sock)
        assert link.keeping_up()
        for round_ in range(10):  # 500 envelopes offered against a window of 100
            for env in envelopes:
                link.offer(env)
            await trio.sleep(1.0)
            if round_ >= 2:
                # full and dropping: the count sits just under the limit, never at it
                assert dropped() > before
                assert link.unacked <= link.max_unacked
                assert not link.keeping_up()
        nursery.cancel_scope.cancel()
