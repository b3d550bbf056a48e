"""Late and reordered fixes merged into one aircraft's track in time order.

Receivers that lose their uplink deliver minutes of backlog in a second or two, and beacons
relayed by several receivers arrive a few seconds out of order. The flight rules
(`soar.tracking.flight`) need each aircraft's fixes in the order of their own times, so an
`OrderedTrack` stands in front of the aircraft's `FlightStateMachine`:

* A fix at or after the newest one goes straight to the machine.
* A fix older than the newest, by at most `window_us` (10 min), is *merged*: the machine goes
  back to a checkpoint taken before the fix's time (one every `checkpoint_every` accepted
  fixes, kept for the window) and the fixes after it are fed again with the late one in its
  place. What the second pass decides replaces what the first did: rows of the same flights
  (flight ids are handed out again in the same order), fixes whose flight or active flag
  changed (`FixRevised`), and flights the first pass made that the second does not
  (closed as `superseded`, marked spurious, never deleted). A delayed, shuffled flood thus
  yields the flights an on-time delivery of the same beacons yields.
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

Cost: the fixes of the last `window_us` per aircraft are kept (the journal), and a merge
feeds again at most the fixes after the checkpoint it goes back to.
"""

from __future__ import annotations

import bisect
import uuid
from collections import deque
from dataclasses import dataclass

from soar.records import Fix, FlightRow, position_time
from soar.tracking.flight import (
    MINUTE,
    EnrichmentDue,
    Event,
    FixAccepted,
    FixDropped,
    FixLate,
    FixRevised,
    FlightClosed,
    FlightOpened,
    FlightStateMachine,
    FlightUpdated,
)

REORDER_WINDOW_US = 10 * MINUTE
CHECKPOINT_EVERY = 32
RECEIVE_KEYS = 256
SUPERSEDED = "superseded"
_BEFORE_ANY = -(1 << 62)


@dataclass(slots=True)
class _Checkpoint:
    time_us: int  # own time of the newest fix in `machine` (_BEFORE_ANY: none yet)
    machine: FlightStateMachine


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
        self._opened: set[uuid.UUID] = set()
        self._closed: set[uuid.UUID] = set()
        self._as_of_floor = 0
        if machine.flight is not None:  # restored: it was opened (and counted) before
            self._opened.add(machine.flight.id)
            self._as_of_floor = machine.flight.as_of_us
        self._emitted: dict[uuid.UUID, FlightRow] = {}
        self._annotations: dict[tuple[uuid.UUID, str], tuple[object, ...]] = {}
        self._received: set[int] = set()
        self._received_order: deque[int] = deque()

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

    def flush_pending(self) -> list[Event]:
        return self._finish(self.machine.flush_pending())

    def apply_enrichment(
        self, flight_id: uuid.UUID, kind: str, airport: str | None, runway: str | None
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
            self._since_checkpoint += 1
            if self._since_checkpoint >= self.checkpoint_every:
                self._checkpoint()
        return events

    def _checkpoint(self) -> None:
        machine = self.machine
        newest = machine.newest_us
        assert newest is not None
        self._since_checkpoint = 0
        self._checkpoints.append(_Checkpoint(newest, machine.clone()))
        horizon = newest - self.window_us
        points = self._checkpoints
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
        index = bisect.bisect_left([p.time_us for p in points], t) - 1
        point = points[index]
        del points[index + 1 :]
        cut = bisect.bisect_right([f.time_us for f in self._journal], point.time_us)
        again = self._journal[cut:]
        del self._journal[cut:]
        bisect.insort(again, fix, key=lambda f: f.time_us)
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
                raw.extend(self.machine.apply_enrichment(flight_id, kind, airport, runway))
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
        hows: dict[uuid.UUID, str] = {}
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
                out.append(FlightOpened(row, hows.get(row.id, "first_seen")))
            if not row.is_open and row.id not in self._closed:
                out.append(FlightClosed(row, row.end_reason or "landed"))
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
        """Make the fix's receive time one no other stored fix of the aircraft has (+1 µs)."""
        seen = self._received
        received = fix.received_us
        while received in seen:
            received += 1
        fix.received_us = received
        seen.add(received)
        self._received_order.append(received)
        if len(self._received_order) > RECEIVE_KEYS:
            seen.discard(self._received_order.popleft())


__all__ = ["REORDER_WINDOW_US", "SUPERSEDED", "EnrichmentDue", "OrderedTrack"]
