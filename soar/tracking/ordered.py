"""Late and reordered fixes merged into one aircraft's track in time order.

Receivers that lose their uplink deliver minutes of backlog in a second or two, and beacons
relayed by several receivers arrive a few seconds out of order. The flight rules
(`soar.tracking.flight`) need each aircraft's fixes in the order of their own times, so an
`OrderedTrack` stands in front of the aircraft's `FlightStateMachine`:

* A fix at or after the newest one goes straight to the machine.
* A fix older than the newest, by at most `window_us` (10 min), is *merged*: the machine goes
  back to a checkpoint taken before the fix's time and the fixes after it are fed again with
  the late one in its place. Most late fixes are a beacon or two behind (relayed by a slower
  receiver: a tenth of the fixes of a busy trace), so checkpoints are dense near the newest
  fix (one every `checkpoint_every`, 8, accepted fixes, for the last 64) and sparse further
  back (one per 64 fixes, for the window). What the second pass decides replaces what the
  first did: rows of the same flights (flight ids are handed out again in the same order),
  fixes whose flight or active flag changed (`FixRevised`), and flights the first pass made
  that the second does not (closed as `superseded`, marked spurious, never deleted). A
  delayed, shuffled flood thus yields the flights an on-time delivery of the same beacons
  yields.
* A fix older than that, or older than anything the track can go back to (just restored
  after a restart), is late (`FixLate`): stored in the flight it falls in, no state moved.

Duplicates (the same time and position) are dropped before any merge, so the copies a
backlog repeats of beacons already heard live cost nothing.

Everything the machine emits passes through here, which also keeps the row and receive-time
bookkeeping the store needs: `FlightRow.as_of_us` (the aircraft's newest fix time when the
row was made: the store keeps the newest, so a re-decided flight replaces its earlier row
even if its last fix moved back), counting each flight opened and closed once however often
a merge re-decides it, and a receive time unique per aircraft for every stored fix (the
store's key is `(aircraft, received_at)`; one socket read stamps all its lines alike).

Cost: the fixes of the last `window_us` per aircraft are kept (the journal) with about 18
checkpoints, and a merge feeds again the fixes after the checkpoint it goes back to: a few for
a beacon just behind, up to 64 more for one minutes late.

May import: soar.records, soar.tracking.flight
"""

from __future__ import annotations

import bisect
import uuid
from collections import deque
from dataclasses import dataclass

from soar.records import EndReason, Fix, FlightRow, position_time
from soar.tracking.flight import (
    MINUTE,
    EnrichmentDue,
    EnrichmentKind,
    Event,
    FixAccepted,
    FixDropped,
    FixLate,
    FixRevised,
    FlightClosed,
    FlightOpened,
    FlightStateMachine,
    FlightUpdated,
    Opening,
)

REORDER_WINDOW_US = 10 * MINUTE
CHECKPOINT_EVERY = 8
DENSE_CHECKPOINTS = 8  # the newest ones are kept every `checkpoint_every` fixes
SPARSE_EVERY = 64  # older ones, one per this many fixes
SUPERSEDED = EndReason.SUPERSEDED
_BEFORE_ANY = -(1 << 62)


@dataclass(slots=True)
class _Checkpoint:
    time_us: int  # own time of the newest fix in `machine` (_BEFORE_ANY: none yet)
    machine: FlightStateMachine
    seq: int = 0  # accepted fixes before it


class OrderedTrack:
    """One aircraft's fixes, put in time order before its `FlightStateMachine` sees them."""

    def __init__(
        self,
        machine: FlightStateMachine,
        window_us: int = REORDER_WINDOW_US,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        self.machine = machine
        self.window_us = window_us
        self.checkpoint_every = checkpoint_every
        self.merges = 0  # late fixes merged in time order
        self._new_id = machine._new_id
        machine._new_id = self._allocate
        self._reuse: deque[uuid.UUID] = deque()
        #: flight ids in the order they were handed out, with the own time of the fix that
        #: opened each: the ids a merge hands out again
        self._allocations: list[tuple[int, uuid.UUID]] = []
        self._processing_us = _BEFORE_ANY
        self._clock_us = machine.last_received_us
        self._journal: list[Fix] = []  # accepted fixes newer than the oldest checkpoint
        newest = machine.newest_us
        self._checkpoints = [
            _Checkpoint(_BEFORE_ANY if newest is None else newest, machine.clone())
        ]
        self._since_checkpoint = 0
        self._accepted = 0
        self._opened: set[uuid.UUID] = set()
        self._closed: set[uuid.UUID] = set()
        self._as_of_floor = 0
        if machine.flight is not None:  # restored: it was opened (and counted) before
            self._opened.add(machine.flight.id)
            self._as_of_floor = machine.flight.as_of_us
        self._emitted: dict[uuid.UUID, FlightRow] = {}
        self._annotations: dict[tuple[uuid.UUID, str], tuple[object, ...]] = {}
        # receive times given to stored fixes: [_received_from, _received_next) is taken
        self._received_from = 0
        self._received_next = 0

    # -- inputs (the machine's, in time order)

    def on_fix(self, fix: Fix) -> list[Event]:
        t = position_time(fix)
        machine = self.machine
        if fix.received_us > self._clock_us:
            self._clock_us = fix.received_us
        newest = machine.newest_us
        if newest is None or t >= newest:
            return self._finish(self._step(fix))
        if t < newest - self.window_us or t <= self._checkpoints[0].time_us:
            return self._finish([machine.late(fix)])
        reason = machine.repeat_of_accepted(fix)
        if reason is not None:
            return [FixDropped(fix, reason)]
        return self._finish(self._merge(fix))

    def on_clock(self, now_us: int) -> list[Event]:
        if now_us > self._clock_us:
            self._clock_us = now_us
        return self._finish(self.machine.on_clock(now_us))

    def settle(self, now_us: int) -> None:
        """Forget what only merges need once nothing has arrived for the aircraft for the
        window (receive clock `now_us`): most aircraft a shard holds are parked or gone, and
        their journals would be most of its memory. A fix for it arriving later with an own
        time before its newest is then late."""
        if len(self._checkpoints) == 1 and not self._journal:
            return
        machine = self.machine
        if now_us - machine.last_received_us <= self.window_us or machine.newest_us is None:
            return
        self._journal.clear()
        self._since_checkpoint = 0
        self._checkpoints = [_Checkpoint(machine.newest_us, machine.clone(), self._accepted)]
        self._prune(machine.newest_us)

    def handover(self) -> list[Event]:
        """The open flight's latest row, for the next owner of the aircraft to restore: a
        merged fix changes a row without an event of its own (updates are periodic)."""
        row = self.machine.open_flight
        return [] if row is None else self._finish([FlightUpdated(row.snapshot())])

    def flush_pending(self) -> list[Event]:
        return self._finish(self.machine.flush_pending())

    def apply_enrichment(
        self,
        flight_id: uuid.UUID,
        kind: EnrichmentKind,
        airport: str | None,
        runway: str | None,
    ) -> list[Event]:
        self._annotations[(flight_id, kind)] = (airport, runway)
        return self._finish(self.machine.apply_enrichment(flight_id, kind, airport, runway))

    def apply_tow(
        self,
        flight_id: uuid.UUID,
        tow_aircraft_id: int,
        release_us: int,
        altitude_ft: float | None,
        height_ft: float | None,
    ) -> list[Event]:
        self._annotations[(flight_id, "tow")] = (
            tow_aircraft_id, release_us, altitude_ft, height_ft,
        )
        return self._finish(
            self.machine.apply_tow(flight_id, tow_aircraft_id, release_us, altitude_ft, height_ft)
        )

    # -- in order

    def _allocate(self) -> uuid.UUID:
        ident = self._reuse.popleft() if self._reuse else self._new_id()
        self._allocations.append((self._processing_us, ident))
        return ident

    def _step(self, fix: Fix) -> list[Event]:
        self._processing_us = fix.time_us
        events = self.machine.on_fix(fix)
        if events and isinstance(events[-1], FixAccepted) and events[-1].fix is fix:
            self._journal.append(fix)
            self._accepted += 1
            self._since_checkpoint += 1
            if self._since_checkpoint >= self.checkpoint_every:
                self._checkpoint()
        return events

    def _checkpoint(self) -> None:
        machine = self.machine
        newest = machine.newest_us
        assert newest is not None
        self._since_checkpoint = 0
        points = self._checkpoints
        points.append(_Checkpoint(newest, machine.clone(), self._accepted))
        # thin the ones behind the dense tail to one per SPARSE_EVERY fixes
        tail = len(points) - DENSE_CHECKPOINTS
        if tail > 1 and points[tail - 1].seq - points[tail - 2].seq < SPARSE_EVERY:
            del points[tail - 1]
        horizon = newest - self.window_us
        # keep the newest checkpoint from before the window: everything in it can be merged
        drop = 0
        while drop + 1 < len(points) and points[drop + 1].time_us < horizon:
            drop += 1
        if not drop:
            return
        del points[:drop]
        base = points[0].time_us
        cut = 0
        while cut < len(self._journal) and self._journal[cut].time_us <= base:
            cut += 1
        del self._journal[:cut]
        self._prune(base)

    def _prune(self, base: int) -> None:
        """Drop the bookkeeping of flights no merge back to `base` can touch any more."""
        machine = self.machine
        cut = 0
        while cut < len(self._allocations) and self._allocations[cut][0] <= base:
            cut += 1
        del self._allocations[:cut]
        live = {ident for _t, ident in self._allocations}
        live.update(machine.flights())
        for ident in [i for i in self._emitted if i not in live]:
            del self._emitted[ident]
        for key in [k for k in self._annotations if k[0] not in live]:
            del self._annotations[key]
        self._opened &= live
        self._closed &= live

    # -- merging

    def _merge(self, fix: Fix) -> list[Event]:
        """Go back to the last checkpoint before `fix` and feed it and the later ones again."""
        self.merges += 1
        t = fix.time_us
        points = self._checkpoints
        index = bisect.bisect_left(points, t, key=_checkpoint_time) - 1
        point = points[index]
        del points[index + 1 :]
        self._accepted = point.seq
        cut = bisect.bisect_right(self._journal, point.time_us, key=_fix_time)
        again = self._journal[cut:]
        del self._journal[cut:]
        bisect.insort(again, fix, key=_fix_time)
        before = {id(f): (f.flight_id, f.is_active) for f in again}
        self._reuse = deque(ident for at, ident in self._allocations if at > point.time_us)
        self._allocations = [a for a in self._allocations if a[0] <= point.time_us]
        self.machine = point.machine.clone()
        self._since_checkpoint = 0
        raw: list[Event] = []
        for f in again:
            raw.extend(self._step(f))
        for (flight_id, kind), args in self._annotations.items():
            if kind == "tow":
                tow, release, altitude, height = args
                assert isinstance(tow, int) and isinstance(release, int)
                assert altitude is None or isinstance(altitude, float | int)
                assert height is None or isinstance(height, float | int)
                raw.extend(self.machine.apply_tow(flight_id, tow, release, altitude, height))
            else:
                airport, runway = args
                assert airport is None or isinstance(airport, str)
                assert runway is None or isinstance(runway, str)
                raw.extend(
                    self.machine.apply_enrichment(
                        flight_id, EnrichmentKind(kind), airport, runway
                    )
                )
        raw.extend(self.machine.on_clock(self._clock_us))
        unused, self._reuse = list(self._reuse), deque()
        return self._reconcile(raw, fix, before, unused)

    def _reconcile(
        self,
        raw: list[Event],
        fix: Fix,
        before: dict[int, tuple[uuid.UUID | None, bool | None]],
        unused: list[uuid.UUID],
    ) -> list[Event]:
        """What the second pass changed, as the events the first pass's would be followed by."""
        rows: dict[uuid.UUID, FlightRow] = {}
        hows: dict[uuid.UUID, Opening] = {}
        own: list[Event] = []
        revised: list[Event] = []
        requests: list[Event] = []
        for event in raw:
            if isinstance(event, FixAccepted | FixDropped | FixLate):
                if event.fix is fix:
                    own.append(event)
                elif isinstance(event, FixAccepted) and before.get(id(event.fix)) != (
                    event.fix.flight_id,
                    event.fix.is_active,
                ):
                    revised.append(FixRevised(event.fix))
            elif isinstance(event, FlightOpened):
                rows[event.row.id] = event.row
                hows.setdefault(event.row.id, event.how)
            elif isinstance(event, FlightUpdated | FlightClosed):
                rows[event.row.id] = event.row
            else:
                requests.append(event)
        # the rows as the machine holds them now: a merged fix changes a flight's counts and
        # bounds without an event of its own (updates are periodic)
        current = self.machine.flights()
        if self.machine.flight is not None:
            rows.setdefault(self.machine.flight.id, self.machine.flight)
        for ident in rows:
            now = current.get(ident)
            if now is not None:
                rows[ident] = now.snapshot()
        out: list[Event] = []
        for ident in unused:
            emitted = self._emitted.get(ident)
            if emitted is not None and ident not in rows:
                del self._emitted[ident]
                gone = emitted.snapshot()
                gone.end_reason = SUPERSEDED
                gone.spurious_reason = SUPERSEDED
                out.append(FlightUpdated(gone))
        for row in sorted(rows.values(), key=lambda r: r.is_open):  # closed rows first
            if row.id not in self._opened:
                out.append(FlightOpened(row, hows.get(row.id, Opening.FIRST_SEEN)))
            if not row.is_open and row.id not in self._closed:
                out.append(FlightClosed(row, row.end_reason or EndReason.LANDED))
            elif row.id in self._opened:
                out.append(FlightUpdated(row))
        return [*out, *own, *revised, *requests]

    # -- bookkeeping of everything emitted

    def _finish(self, events: list[Event]) -> list[Event]:
        as_of = max(self.machine.newest_us or 0, self._as_of_floor)
        for event in events:
            if isinstance(event, FlightOpened | FlightUpdated | FlightClosed):
                row = event.row
                row.as_of_us = as_of
                if row.end_reason != SUPERSEDED:
                    self._emitted[row.id] = row
                    self._opened.add(row.id)
                if isinstance(event, FlightClosed):
                    self._closed.add(row.id)
            elif isinstance(event, FixAccepted | FixLate):
                self._unique_receive_time(event.fix)
        return events

    def _unique_receive_time(self, fix: Fix) -> None:
        """Make the fix's receive time one no other stored fix of the aircraft has: the fixes
        of one socket read share a receive time, and get the next microseconds."""
        received = fix.received_us
        if self._received_from <= received < self._received_next:
            fix.received_us = self._received_next
            self._received_next += 1
        else:
            self._received_from, self._received_next = received, received + 1


def _checkpoint_time(point: _Checkpoint) -> int:
    return point.time_us


def _fix_time(fix: Fix) -> int:
    return fix.time_us


__all__ = ["REORDER_WINDOW_US", "SUPERSEDED", "EnrichmentDue", "OrderedTrack"]
