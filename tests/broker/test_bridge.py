"""The asyncio bridges: results, errors, cancellation and teardown, with no server needed."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from soar.broker.bridge import BRIDGE_KINDS, BridgeKind, open_bridge

each_bridge = pytest.mark.parametrize("kind", BRIDGE_KINDS)


@each_bridge
async def test_results_errors_and_callbacks_cross(kind: BridgeKind) -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        asyncio.get_running_loop()  # really inside an asyncio loop
        return a + b

    async def fail() -> None:
        raise KeyError("from asyncio")

    seen: list[int] = []

    async def callbacks() -> None:
        for i in range(100):
            bridge.to_trio(lambda i=i: seen.append(i))  # type: ignore[misc]

    async with open_bridge(kind) as bridge:
        assert bridge.kind == kind
        assert await bridge.call(add, 2, b=3) == 5
        with pytest.raises(KeyError, match="from asyncio"):
            await bridge.call(fail)
        await bridge.call(callbacks)
        with trio.fail_after(10):
            while len(seen) < 100:
                await trio.sleep(0.001)
        assert seen == list(range(100))


@each_bridge
async def test_cancelling_a_call_cancels_the_asyncio_task(kind: BridgeKind) -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with open_bridge(kind) as bridge:
        with trio.move_on_after(0.1) as scope:
            await bridge.call(forever)
        assert scope.cancelled_caught
        assert cancelled.is_set()  # unwound before the trio call returned
        assert await bridge.call(asyncio.sleep, 0, "still works") == "still works"


@each_bridge
async def test_the_callers_exception_leaves_the_block_unwrapped(kind: BridgeKind) -> None:
    with pytest.raises(ValueError, match="mine"):
        async with open_bridge(kind):
            raise ValueError("mine")


async def test_the_thread_bridge_leaves_no_loop_running() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def grab() -> None:
        loops.append(asyncio.get_running_loop())

    async with open_bridge("thread") as bridge:
        await bridge.call(grab)
        names = {t.name for t in threading.enumerate()}
        assert "soar.broker asyncio loop" in names
    assert loops[0].is_closed()
    assert "soar.broker asyncio loop" not in {t.name for t in threading.enumerate()}
