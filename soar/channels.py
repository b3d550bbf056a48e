"""Memory-channel helpers for the hot loops (decoders, shards).

May import: nothing of soar
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import trio

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Receiving(Protocol[T_co]):
    """A memory channel's receive end, or an edge's (`soar.topology.EdgeReceiver`)."""

    def receive_nowait(self) -> T_co: ...
    async def receive(self) -> T_co: ...


async def receive_buffered(receive: Receiving[T]) -> T | None:
    """The next item, or None once the channel is closed and empty (its items are never None).

    `receive()` is a trio checkpoint (~10 µs here); what is already buffered is taken without
    one, and the caller checkpoints every so many items instead. It waits only when the
    channel is empty.
    """
    try:
        return receive.receive_nowait()
    except trio.WouldBlock:
        try:
            return await receive.receive()
        except trio.EndOfChannel:
            return None
    except trio.EndOfChannel:
        return None
