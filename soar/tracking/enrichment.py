"""Airport and runway of takeoffs and landings, computed off the hot path.

The shard sends `EnrichmentDue` requests with `send_nowait` into a bounded channel (a full
channel drops the request and counts it: enrichment is an extra, fix processing is not). The
`Enricher` runs each request in its own nursery task, at most `concurrency` at a time, each
under `trio.move_on_after(timeout_s)`; results go back to the shard, which owns the flight
row, merges them and upserts the row. A slow or failing lookup costs only its own request.

The runway is the circular mean of the ground tracks within ±20 s of the event, as a runway
number (true, not magnetic, heading: the declination is not applied).

May import: soar.tracking.airports, soar.tracking.flight, soar.tracking.metrics
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
import trio

from soar.tracking.airports import AirportIndex
from soar.tracking.flight import (
    EnrichmentDue,
    EnrichmentKind,
    runway_designator,
    runway_heading,
)
from soar.tracking.metrics import ENRICHMENT

log = structlog.get_logger(__name__)

AIRPORT_RADIUS_M = 2000.0


@dataclass(slots=True, frozen=True)
class EnrichmentResult:
    aircraft_id: int
    flight_id: uuid.UUID
    kind: EnrichmentKind
    airport: str | None
    runway: str | None


EnrichFn = Callable[[EnrichmentDue], Awaitable[EnrichmentResult]]


def lookup(request: EnrichmentDue, airports: AirportIndex | None) -> EnrichmentResult:
    airport = airports.nearest(request.lat, request.lon, AIRPORT_RADIUS_M) if airports else None
    heading = runway_heading(request.tracks_deg)
    return EnrichmentResult(
        aircraft_id=request.aircraft_id,
        flight_id=request.flight_id,
        kind=request.kind,
        airport=airport.code if airport else None,
        runway=runway_designator(heading) if heading is not None else None,
    )


def airport_enrich(airports: AirportIndex | None) -> EnrichFn:
    """The standard enrichment: nearest airport within 2 km and the runway from the tracks."""

    async def enrich(request: EnrichmentDue) -> EnrichmentResult:
        return lookup(request, airports)

    return enrich


class Enricher:
    def __init__(self, enrich: EnrichFn, timeout_s: float = 5.0, concurrency: int = 4) -> None:
        self.enrich = enrich
        self.timeout_s = timeout_s
        self._slots = trio.Semaphore(concurrency)

    async def run(
        self,
        requests: trio.MemoryReceiveChannel[EnrichmentDue],
        results: trio.MemorySendChannel[EnrichmentResult],
    ) -> None:
        """Serve requests until their channel closes; then finish in-flight ones and close."""
        async with results, requests, trio.open_nursery() as nursery:
            async for request in requests:
                await self._slots.acquire()
                nursery.start_soon(self._one, request, results)

    async def _one(
        self, request: EnrichmentDue, results: trio.MemorySendChannel[EnrichmentResult]
    ) -> None:
        try:
            result: EnrichmentResult | None = None
            with trio.move_on_after(self.timeout_s):
                result = await self.enrich(request)
            if result is None:
                ENRICHMENT.labels("timeout").inc()
                log.warning("enrichment.timeout", flight=str(request.flight_id), kind=request.kind)
                return
            ENRICHMENT.labels("ok").inc()
            await results.send(result)
        except Exception as exc:
            ENRICHMENT.labels("error").inc()
            log.warning(
                "enrichment.failed",
                flight=str(request.flight_id),
                kind=request.kind,
                error=repr(exc),
            )
        finally:
            self._slots.release()
