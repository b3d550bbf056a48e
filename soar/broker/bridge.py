"""Run asyncio code (nats-py) from trio: one small seam with two implementations.

nats-py is asyncio-only. A bridge runs an asyncio coroutine function and hands its result (or
exception) back to the calling trio task, and lets asyncio-side callbacks (a live subscription's
message handler) run a plain function in the trio thread. Both bridges are async context
managers that own everything they start, so leaving the `async with` leaves nothing behind:

- `thread`: one asyncio event loop in one thread of its own (not from trio's `to_thread` pool,
  so it never takes a slot the store writer needs); leaving the block stops the loop and waits
  for the thread to end. Calls cross with `asyncio.run_coroutine_threadsafe` and come back
  with `TrioToken.run_sync_soon`.
- `trio-asyncio`: asyncio's loop re-implemented on trio (the `trio-asyncio` package), in the
  same thread: no crossing, but every asyncio callback goes through trio's scheduler.

Cancellation: a cancelled trio caller cancels the asyncio task and waits (shielded, at most
`CANCEL_GRACE_S`) for it to unwind, so no asyncio task outlives the trio call that started it.
`python -m soar.bench.broker` measures both; `DEFAULT_BRIDGE` is the faster one here.

May import: nothing of soar
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, ParamSpec, Protocol, TypeVar

import outcome
import structlog
import trio

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

BridgeKind = Literal["thread", "trio-asyncio"]
BRIDGE_KINDS: tuple[BridgeKind, ...] = ("thread", "trio-asyncio")
#: Measured by `python -m soar.bench.broker`: figures in the soar.broker package docstring.
DEFAULT_BRIDGE: BridgeKind = "thread"
#: How long a cancelled call waits for its asyncio task to finish unwinding.
CANCEL_GRACE_S = 5.0


class Bridge(Protocol):
    """What the JetStream link needs from a bridge."""

    kind: BridgeKind

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the asyncio coroutine function `fn(*args, **kwargs)`; return or raise its outcome."""
        ...

    def to_trio(self, fn: Callable[[], object]) -> None:
        """From asyncio code: run the plain function `fn` in the trio thread, soon, in order."""
        ...


@contextlib.asynccontextmanager
async def open_bridge(kind: BridgeKind = DEFAULT_BRIDGE) -> AsyncIterator[Bridge]:
    """The bridge of the given kind, torn down when the block is left."""
    if kind == "thread":
        async with _open_thread_bridge() as thread_bridge:
            yield thread_bridge
    elif kind == "trio-asyncio":
        async with _open_trio_asyncio_bridge() as aio_bridge:
            yield aio_bridge
    else:
        raise ValueError(f"unknown bridge {kind!r}; expected one of {BRIDGE_KINDS}")


# -- one asyncio loop in one thread --------------------------------------------------------------


class _ThreadBridge:
    kind: BridgeKind = "thread"

    def __init__(self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken) -> None:
        self._loop = loop
        self._token = token

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        done = trio.Event()
        tasks: list[asyncio.Task[T]] = []
        result: list[outcome.Outcome[T]] = []

        def finished(task: asyncio.Task[T]) -> None:  # on the loop's thread
            result.append(outcome.capture(task.result))
            self._wake(done)

        def start() -> None:  # on the loop's thread, where nats-py looks up the running loop
            task = self._loop.create_task(_await(fn, *args, **kwargs))
            task.add_done_callback(finished)
            tasks.append(task)

        self._loop.call_soon_threadsafe(start)
        try:
            await done.wait()
        except BaseException:
            # callbacks run in order: `start` has run when this one does
            self._loop.call_soon_threadsafe(lambda: tasks[0].cancel())
            with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_GRACE_S) as late:
                await done.wait()  # the task has unwound, not merely been asked to
            if late.cancelled_caught:
                log.error("broker.bridge_cancel_stuck", fn=getattr(fn, "__qualname__", str(fn)))
            raise
        return result[0].unwrap()

    def _wake(self, done: trio.Event) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # trio is gone: nobody waits any more
            self._token.run_sync_soon(done.set)

    def to_trio(self, fn: Callable[[], object]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)


async def _await(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    # The coroutine is created here, on the loop's thread: nats-py looks up the running loop.
    return await fn(*args, **kwargs)


def _run_loop(loop: asyncio.AbstractEventLoop, ready: Callable[[], object]) -> None:
    try:
        loop.call_soon(ready)
        loop.run_forever()
        # Whatever the link did not close (it should have) is cancelled, as asyncio.run does.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


@contextlib.asynccontextmanager
async def _open_thread_bridge() -> AsyncIterator[_ThreadBridge]:
    # Not asyncio.new_event_loop(): once trio_asyncio is imported anywhere in the process, its
    # loop policy refuses to make a loop from a trio thread.
    loop = asyncio.SelectorEventLoop()
    token = trio.lowlevel.current_trio_token()
    running = trio.Event()
    finished = trio.Event()
    ended: list[outcome.Outcome[None]] = []

    def ready() -> None:
        token.run_sync_soon(running.set)

    def deliver(result: outcome.Outcome[None]) -> None:  # in the thread, once it is done
        ended.append(result)
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(lambda: (running.set(), finished.set()))

    # A thread of our own rather than a nursery task: this block then lets the caller's
    # exceptions through as they are (a nursery would wrap them in an ExceptionGroup), and it
    # still never ends before the thread has: the finally below waits for it.
    trio.lowlevel.start_thread_soon(functools.partial(_run_loop, loop, ready), deliver,
                                    name="soar.broker asyncio loop")
    try:
        await running.wait()
        if ended:
            ended[0].unwrap()
            raise RuntimeError("the asyncio thread of the broker bridge ended at start")
        yield _ThreadBridge(loop, token)
    finally:
        with contextlib.suppress(RuntimeError):  # already closed: the thread has ended
            loop.call_soon_threadsafe(loop.stop)
        with trio.CancelScope(shield=True), trio.move_on_after(2 * CANCEL_GRACE_S) as late:
            await finished.wait()
        if late.cancelled_caught:
            log.error("broker.bridge_thread_stuck")


# -- trio-asyncio ---------------------------------------------------------------------------------


class _TrioAsyncioBridge:
    kind: BridgeKind = "trio-asyncio"

    def __init__(self, aio_as_trio: Callable[[Any], Any]) -> None:
        self._aio_as_trio = aio_as_trio

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        result: T = await self._aio_as_trio(fn)(*args, **kwargs)
        return result

    def to_trio(self, fn: Callable[[], object]) -> None:
        fn()  # asyncio callbacks already run in the trio thread, inside trio's run


@contextlib.asynccontextmanager
async def _open_trio_asyncio_bridge() -> AsyncIterator[_TrioAsyncioBridge]:
    import trio_asyncio

    try:
        async with trio_asyncio.open_loop():
            yield _TrioAsyncioBridge(trio_asyncio.aio_as_trio)
    except BaseExceptionGroup as group:
        # open_loop's nurseries wrap whatever the caller's block raised: hand it back alone
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
