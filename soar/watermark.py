"""The commit watermark: when an input is committed, from a cascade over the pipeline's counters.

A track process acknowledges a JetStream message only when every row it caused is committed
to PostgreSQL (or durably spooled by the store writer). Tagging each row with the message it
came from would cost on every fix; instead each stage already counts what it was given and
what it has finished, and a *mark* follows those counts down the pipeline:

    level 0   envelope edges      sent (by the feed)  ->  done (by the decoders)
    level 1   shard edges, ...    sent (by decoders)  ->  done (by the shards)
    level 2   writer edges        sent (by shards)    ->  settled (committed or spooled)

To settle mark k: snapshot level 0's `sent` counts; wait until level 0's `done` counts reach
them (the decoders have handed on everything fed before the mark); then snapshot level 1's
`sent` (which now includes everything those envelopes produced) and wait for its `done`; and
so on. When the last level is reached, everything fed before the mark is committed: the
inputs registered before the mark are acknowledged.

Under continuous load this always advances (the counts a mark waits for are fixed when it is
taken; later traffic only raises the next mark's), unlike waiting for the pipeline to be idle.
Items produced later by timers (a flight timed out by the clock) belong to no input and need
no acknowledgement. Counters are monotonic; a stage that restarts after a crash keeps them.

May import: nothing of soar
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog
import trio

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: how often a waiting mark looks at the counters again (a stage finishing is not an event)
POLL_S = 0.02
#: a mark waiting this long on one level is logged (once per mark): a stuck stage, not load
STALL_LOG_S = 60.0


@dataclass(frozen=True, slots=True)
class Flow:
    """One edge of the cascade: how much went in, how much has been finished with."""

    name: str
    sent: Callable[[], int]
    done: Callable[[], int]


class CommitWatermark(Generic[T]):
    """Inputs registered with `add` are handed to `settle` once all they caused is committed.

    `levels` are the flows of each level, in pipeline order. `settle` receives the inputs of
    one mark, in the order they were added (it acknowledges them).
    """

    def __init__(
        self,
        levels: Sequence[Sequence[Flow]],
        settle: Callable[[list[T]], Awaitable[None]],
        *,
        poll_s: float = POLL_S,
    ) -> None:
        if not levels:
            raise ValueError("a watermark needs at least one level")
        self.levels = [list(level) for level in levels]
        self.settle = settle
        self.poll_s = poll_s
        self._pending: list[T] = []
        self._arrived = trio.Event()
        self._in_mark = 0
        self.marks = 0
        self.settled = 0

    @property
    def pending(self) -> int:
        """Inputs added and not yet settled (including those of the mark in progress)."""
        return len(self._pending) + self._in_mark

    def add(self, item: T) -> None:
        """Register an input whose whole content has been sent into level 0."""
        self._pending.append(item)
        self._arrived.set()

    async def run(self) -> None:
        """Mark, wait down the cascade, settle; for ever (cancel to stop)."""
        while True:
            if not self._pending:
                self._arrived = trio.Event()
                await self._arrived.wait()
            await self.advance()

    async def advance(self) -> None:
        """Settle everything added so far (one mark)."""
        batch, self._pending = self._pending, []
        self._in_mark = len(batch)
        try:
            for level in self.levels:
                await self._reach(level, [flow.sent() for flow in level])
        finally:
            self._in_mark = 0
        # committed: no longer pending while `settle` runs (it may report `pending`)
        if batch:
            await self.settle(batch)
        self.marks += 1
        self.settled += len(batch)

    async def _reach(self, level: list[Flow], targets: list[int]) -> None:
        waited = 0.0
        logged = False
        while True:
            behind = [(flow, target) for flow, target in zip(level, targets, strict=True)
                      if flow.done() < target]
            if not behind:
                return
            if waited >= STALL_LOG_S and not logged:
                logged = True
                log.error("watermark.stalled", waited_s=waited,
                          behind={flow.name: target - flow.done() for flow, target in behind})
            await trio.sleep(self.poll_s)
            waited += self.poll_s
