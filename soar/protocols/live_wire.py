"""Live fixes on the wire between a track (shard) process and the web side (pure: no I/O).

Owns: the JSON form of a live fix (`fix_to_wire`), the grouping of a flush's fixes into one
body per topic (a 1° square and an aircraft), the pynng framing of a topic and its body, and
decoding a body back into fix objects. Imports `soar.records` only.

A body is a JSON array of fix objects. `protocol` is the enum's explicit string value ("ogn",
"beast", "sbs": `Protocol` is a StrEnum whose values are the stored and API values), never its
position, so a reordered enum cannot relabel fixes between processes of different versions.

Topics are named by the caller (`TopicNames`): pynng uses ``aircraft.area.<lat>.<lon>`` and
``aircraft.fix.<id>``; NATS uses the subjects of `soar.broker.subjects`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from soar.records import AircraftType, Fix

#: Ends the topic of a pynng message: SUB matching is by prefix, and without a terminator a
#: subscription to ``aircraft.area.4.1`` would also match ``aircraft.area.4.12``.
TOPIC_END = b"\x00"


class LiveWireError(ValueError):
    """A live message that is not what a publisher sends; the text says what is wrong."""


@dataclass(frozen=True, slots=True)
class TopicNames:
    """How one transport names the topic of a square and of an aircraft."""

    area_prefix: str  # the area name is f"{area_prefix}{lat}.{lon}"
    aircraft_prefix: str  # the aircraft name is f"{aircraft_prefix}{id}"

    def area(self, lat: int, lon: int) -> str:
        return f"{self.area_prefix}{lat}.{lon}"

    def area_of(self, lat: float, lon: float) -> str:
        return self.area(math.floor(lat), math.floor(lon))

    def aircraft(self, aircraft_id: int) -> str:
        return f"{self.aircraft_prefix}{aircraft_id}"

    def is_area(self, topic: str) -> bool:
        return topic.startswith(self.area_prefix)


PYNNG_TOPICS = TopicNames("aircraft.area.", "aircraft.fix.")


def fix_to_wire(fix: Fix) -> dict[str, Any]:
    """The JSON-ready form of a fix as it travels to the web side (and, enriched, to clients)."""
    kind = fix.aircraft_type
    return {
        "id": fix.aircraft_id,
        "address_type": fix.address_type.value,
        "address": f"{fix.address:06X}",
        "protocol": fix.protocol.value,
        "time_us": fix.time_us or fix.received_us,  # when the aircraft was there
        "received_us": fix.received_us,
        "lat": round(fix.lat, 6),
        "lon": round(fix.lon, 6),
        "altitude_ft": fix.altitude_ft,
        "ground_speed_kt": fix.ground_speed_kt,
        "track_deg": fix.track_deg,
        "climb_fpm": fix.climb_fpm,
        "callsign": fix.callsign,
        "aircraft_type": None if kind is None else AircraftType(kind).name.lower(),
        "flight_id": None if fix.flight_id is None else str(fix.flight_id),
    }


def group_by_topic(
    fixes: Iterable[Fix], names: TopicNames, max_body: int | None = None
) -> list[tuple[str, bytes]]:
    """(topic, body) pairs: every fix once under its square and once under its aircraft, in
    order within a topic. With `max_body`, a topic whose fixes do not fit one body gets several
    (a single fix larger than `max_body` still goes alone: the transport then refuses it)."""
    grouped: dict[str, list[bytes]] = {}
    for fix in fixes:
        body = orjson.dumps(fix_to_wire(fix))
        grouped.setdefault(names.area_of(fix.lat, fix.lon), []).append(body)
        grouped.setdefault(names.aircraft(fix.aircraft_id), []).append(body)
    out: list[tuple[str, bytes]] = []
    for topic, bodies in grouped.items():
        out.extend((topic, body) for body in _arrays(bodies, max_body))
    return out


def _arrays(items: list[bytes], max_body: int | None) -> Iterable[bytes]:
    if max_body is None:
        yield b"[" + b",".join(items) + b"]"
        return
    chunk: list[bytes] = []
    size = 2  # the brackets
    for item in items:
        grown = size + len(item) + (1 if chunk else 0)
        if chunk and grown > max_body:
            yield b"[" + b",".join(chunk) + b"]"
            chunk, grown = [], 2 + len(item)
        chunk.append(item)
        size = grown
    if chunk:
        yield b"[" + b",".join(chunk) + b"]"


def decode_fixes(body: bytes) -> list[Any]:
    """The elements of one body (the caller checks each is a fix object). LiveWireError when
    the body is not a JSON array."""
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise LiveWireError(f"body is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise LiveWireError("body is not a JSON array")
    return items


def frame(topic: str, body: bytes) -> bytes:
    """One pynng PUB message: the topic, its terminator, the body."""
    return topic.encode() + TOPIC_END + body


def unframe(message: bytes) -> tuple[str, bytes]:
    """The topic and body of one pynng message; LiveWireError when it has no topic."""
    topic, sep, body = message.partition(TOPIC_END)
    if not sep:
        raise LiveWireError("no topic terminator")
    try:
        return topic.decode(), body
    except UnicodeDecodeError:
        raise LiveWireError("topic is not UTF-8") from None


def encode_batches(fixes: Iterable[Fix], names: TopicNames = PYNNG_TOPICS) -> list[bytes]:
    """The pynng messages of one flush: one per topic."""
    return [frame(topic, body) for topic, body in group_by_topic(fixes, names)]


def decode_message(message: bytes) -> tuple[str, list[Any]]:
    """The topic and fixes of one pynng message. Raises LiveWireError (a ValueError) on garbage."""
    topic, body = unframe(message)
    return topic, decode_fixes(body)


def wire_square(raw: dict[str, Any]) -> tuple[tuple[int, int], int]:
    """The square and aircraft id of one decoded fix object. LiveWireError when it lacks them."""
    try:
        lat, lon, ident = raw["lat"], raw["lon"], raw["id"]
        if isinstance(ident, bool) or not isinstance(ident, int):
            raise TypeError
        return (math.floor(lat), math.floor(lon)), ident
    except (KeyError, TypeError, ValueError, OverflowError):
        raise LiveWireError("fix object without lat, lon or integer id") from None

