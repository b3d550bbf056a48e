"""A process as a declared topology: stages joined by edges, under one root supervisor.

An **edge** is a bounded channel between two stages that says what happens when it is full:

    ============  ===================================================================
    policy        a full edge ...
    ============  ===================================================================
    BLOCK         makes the producer wait (back-pressure up to the source's socket)
    SPILL         appends to a disk spool, fed back in order as room returns
                  (`soar.overflow.OverflowSink`; envelopes only)
    DROP_OLDEST   lets go of the oldest waiting item to take the new one
    DROP_NEWEST   refuses the new item
    ============  ===================================================================

Every edge reports the same metrics, labelled by its name: `soar_edge_depth{edge}` (read when
scraped, so the hot path pays nothing for it), `soar_edge_dropped_total{edge,reason}` and
`soar_edge_spilled_total{edge}`. Every edge also counts `sent` (items accepted) and `done`
(items its consumer has finished with: counted when the consumer asks for the next one, or
when it ends; an item let go of is done too), which is what a watermark needs to acknowledge
upstream only what is finished downstream.

A **stage** is a named group of tasks (a supervisor of its own) with the edges it feeds:
when the stage ends, its output edges close, so the next stage drains and ends in turn.
Stages are essential or optional. An essential stage whose tasks keep crashing fails the
process, as a supervisor escalation does. An optional one (the raw archive, the DDB refresh)
is stopped instead: `/healthz` shows it `stopped` with its last error,
`soar_stage_stopped{stage}` turns 1 and `task.stopped` is logged; the rest runs on.

A **topology** is the stages of one process under exactly one root supervisor; a role (`run`,
`replay`, `bench`, and the split-mode roles) is a list of stages.

May import: soar.supervisor
"""

from __future__ import annotations

import enum
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog
import trio
from prometheus_client import Counter, Gauge

from soar.supervisor import ChildSpec, RestartPolicy, Supervisor

log = structlog.get_logger(__name__)

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)

EDGE_DEPTH = Gauge("soar_edge_depth", "Items waiting in an edge between two stages "
                   "(in memory, plus spilled to disk on a spill edge)", ["edge"])
EDGE_DROPPED = Counter("soar_edge_dropped", "Items an edge let go of: reason full (a "
                       "drop-newest edge refused it), evicted (a drop-oldest edge made room), "
                       "closed (its consumer was gone)", ["edge", "reason"])
EDGE_SPILLED = Counter("soar_edge_spilled", "Items a spill edge wrote to its disk spool "
                       "because it was full", ["edge"])


class EdgePolicy(enum.Enum):
    BLOCK = "block"
    SPILL = "spill"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"


class Spill(typing.Protocol[T_contra]):
    """What a spill edge needs of its disk buffer (`soar.overflow.OverflowSink` for envelopes)."""

    def open(self) -> None: ...
    async def send(self, item: T_contra, /) -> None: ...
    async def drain(self) -> None: ...
    async def flush(self) -> None: ...
    @property
    def depth(self) -> int: ...


class Edge(Generic[T]):
    """A bounded channel between two stages, with a policy for when it is full."""

    def __init__(
        self,
        name: str,
        bound: int,
        policy: EdgePolicy = EdgePolicy.BLOCK,
        *,
        spill: Callable[[trio.MemorySendChannel[T]], Spill[T]] | None = None,
    ) -> None:
        if (policy is EdgePolicy.SPILL) != (spill is not None):
            raise ValueError(f"edge {name!r}: a spill buffer is given with, and only with, SPILL")
        if policy in (EdgePolicy.DROP_OLDEST, EdgePolicy.DROP_NEWEST) and bound < 1:
            raise ValueError(f"edge {name!r}: a dropping edge needs a bound of at least 1")
        self.name = name
        self.bound = bound
        self.policy = policy
        self.channel, self._receive = trio.open_memory_channel[T](bound)
        self.spill: Spill[T] | None = spill(self.channel) if spill is not None else None
        #: items accepted into the edge (into memory or the spool), ever
        self.sent = 0
        #: items the consumer has finished with, or that the edge let go of (evicted)
        self.done = 0
        self._closed = False
        self._dropped_full = EDGE_DROPPED.labels(edge=name, reason="full")
        self._dropped_evicted = EDGE_DROPPED.labels(edge=name, reason="evicted")
        self._dropped_closed = EDGE_DROPPED.labels(edge=name, reason="closed")
        self._spilled = EDGE_SPILLED.labels(edge=name)
        EDGE_DEPTH.labels(edge=name).set_function(lambda: float(self.depth))

    @property
    def depth(self) -> int:
        waiting = self.channel.statistics().current_buffer_used
        return waiting + (self.spill.depth if self.spill is not None else 0)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- producer side ------------------------------------------------------------------------

    async def send(self, item: T) -> None:
        """Hand `item` to the edge, as its policy says: wait, spill, or drop (counted)."""
        if self.spill is not None:
            before = self.spill.depth
            await self.spill.send(item)
            self.sent += 1
            if self.spill.depth > before:
                self._spilled.inc()
            return
        if self.policy is EdgePolicy.BLOCK:
            try:
                self.channel.send_nowait(item)
            except trio.WouldBlock:
                await self.channel.send(item)
            self.sent += 1
            return
        self.offer(item)

    def offer(self, item: T) -> bool:
        """Without waiting: True if taken. A BLOCK or SPILL edge refuses when full (the caller
        then awaits `send`); a dropping edge applies its policy and counts what it let go."""
        try:
            self.channel.send_nowait(item)
        except trio.WouldBlock:
            if self.policy is EdgePolicy.DROP_NEWEST:
                self._dropped_full.inc()
                return False
            if self.policy is not EdgePolicy.DROP_OLDEST:
                return False
            try:
                self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):  # pragma: no cover - bound >= 1
                self._dropped_full.inc()
                return False
            self.done += 1
            self._dropped_evicted.inc()
            self.channel.send_nowait(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._dropped_closed.inc()
            return False
        self.sent += 1
        return True

    def send_nowait(self, item: T) -> None:
        """`trio.MemorySendChannel.send_nowait`, counted: `trio.WouldBlock` when full (a
        dropping edge applies its policy instead and never raises it)."""
        if self.policy in (EdgePolicy.DROP_NEWEST, EdgePolicy.DROP_OLDEST):
            self.offer(item)
            return
        self.channel.send_nowait(item)
        self.sent += 1

    def as_sender(self) -> trio.MemorySendChannel[T]:
        """This edge typed as the send channel that stage bodies written against trio channels
        take (the shard's sinks, the tow detector): it has every method they use."""
        return typing.cast("trio.MemorySendChannel[T]", self)

    def sent_count(self) -> int:
        return self.sent

    def done_count(self) -> int:
        return self.done

    async def aclose(self) -> None:
        """No more items: the consumer drains what is waiting, then sees the end."""
        self._closed = True
        await self.channel.aclose()

    # -- consumer side ------------------------------------------------------------------------

    def receiver(self) -> EdgeReceiver[T]:
        """A receive end for one consumer task (a clone: a crashed consumer closing it does not
        close the edge; its restart reads on from where it stopped)."""
        return EdgeReceiver(self, self._receive.clone())


class EdgeReceiver(Generic[T]):
    """The consumer's end of an edge: a `trio.MemoryReceiveChannel` that counts `done`.

    The item handed out last is counted done when the next one is asked for, or when this end
    is closed or exhausted: by then the consumer has finished with it.
    """

    def __init__(self, edge: Edge[T], receive: trio.MemoryReceiveChannel[T]) -> None:
        self.edge = edge
        self._receive = receive
        self._holding = False

    def receive_nowait(self) -> T:
        if self._holding:
            self._holding = False
            self.edge.done += 1
        item = self._receive.receive_nowait()
        self._holding = True
        return item

    async def receive(self) -> T:
        if self._holding:
            self._holding = False
            self.edge.done += 1
        item = await self._receive.receive()
        self._holding = True
        return item

    def finished(self) -> None:
        """The consumer is done with the item it holds (it ends, or crashed)."""
        if self._holding:
            self._holding = False
            self.edge.done += 1

    def statistics(self) -> Any:
        return self._receive.statistics()

    def clone(self) -> EdgeReceiver[T]:
        return EdgeReceiver(self.edge, self._receive.clone())

    def close(self) -> None:
        self.finished()
        self._receive.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> EdgeReceiver[T]:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            try:
                yield await self.receive()
            except trio.EndOfChannel:
                self.finished()
                return

    def as_channel(self) -> trio.MemoryReceiveChannel[T]:
        """This end typed as what the stage bodies written against trio channels take (the
        shard, the store writer, the archive): it has every method they use."""
        return typing.cast("trio.MemoryReceiveChannel[T]", self)


@dataclass
class Stage:
    """Tasks that do one job, and the edges they feed (closed when the stage ends)."""

    name: str
    tasks: list[ChildSpec]
    outputs: Sequence[Edge[Any]] = ()
    essential: bool = True
    #: called once the stage has ended and its outputs are closed
    then: list[Callable[[], None]] = field(default_factory=list)
    #: the stage's own supervisor's limits
    max_restarts: int = 5
    period: float = 60.0
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        tasks = [spec if self.essential else _optional(spec) for spec in self.tasks]
        self.supervisor = Supervisor(self.name, tasks, max_restarts=self.max_restarts,
                                     period=self.period)

    async def run(self) -> None:
        try:
            await self.supervisor.run()
        finally:
            with trio.CancelScope(shield=True):
                for edge in self.outputs:
                    await edge.aclose()
        for hook in self.then:
            hook()

    def stop(self) -> None:
        self.supervisor.stop()


def _optional(spec: ChildSpec) -> ChildSpec:
    return ChildSpec(spec.name, spec.fn, spec.policy, spec.backoff_base, spec.backoff_cap,
                     essential=False)


class _Started:
    """A `trio.TaskStatus` stand-in for a task run by a supervisor: `started()` sets an event."""

    def __init__(self, event: trio.Event) -> None:
        self.event = event
        self.value: Any = None

    def started(self, value: Any = None) -> None:
        self.value = value
        self.event.set()


def when_started(
    fn: Callable[..., Awaitable[None]], ready: trio.Event, *args: Any
) -> Callable[[], Awaitable[None]]:
    """`fn(*args, task_status=...)` as a supervised task that sets `ready` once it reports
    started (what `nursery.start` waited for), so another task can wait for it."""

    async def run() -> None:
        await fn(*args, task_status=_Started(ready))

    return run


def task(name: str, fn: Callable[[], Awaitable[None]],
         policy: RestartPolicy = RestartPolicy.PERMANENT) -> ChildSpec:
    """One supervised task (a shorthand for the declarations)."""
    return ChildSpec(name, fn, policy)


class Topology:
    """The stages of one process under its one root supervisor.

    The root restarts nothing itself: each stage's supervisor restarts its own tasks, and a
    stage that gives up (an essential one: an optional one stops its tasks instead) fails the
    root and so the process, as it always has.
    """

    def __init__(self, role: str, stages: Sequence[Stage]) -> None:
        self.role = role
        self.stages = {stage.name: stage for stage in stages}
        if len(self.stages) != len(stages):
            raise ValueError(f"topology {role!r}: duplicate stage names")
        self.root = Supervisor(
            role,
            [ChildSpec(stage.name, stage.run, RestartPolicy.TRANSIENT, subtree=stage.supervisor)
             for stage in stages],
            max_restarts=0,
        )

    @property
    def edges(self) -> dict[str, Edge[Any]]:
        return {edge.name: edge for stage in self.stages.values() for edge in stage.outputs}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until every stage has ended (or `stop()`)."""
        task_status.started()
        await self.root.run()

    def stop(self) -> None:
        """Cancel every stage still running (after a drain: what is left are services)."""
        self.root.stop()

    def tree(self) -> dict[str, Any]:
        return self.root.tree()
