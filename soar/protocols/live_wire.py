"""Live fixes on the wire between a track (shard) process and the web side (pure: no I/O).

Owns: the JSON form of a live fix (`fix_to_wire`), the grouping of a flush's fixes into one
body per topic (a 1° square and an aircraft), the pynng framing of a topic and its body,
decoding a body back into fix objects, and what a WebSocket client may ask for: its messages
parsed into requests (`parse_client_message`) and a map view turned into 1° squares
(`squares_in_bounds`). Imports `soar.records` only; metrics and sockets are the callers'.

A body is a JSON array of fix objects. `protocol` is the enum's explicit string value ("ogn",
"beast", "sbs": `Protocol` is a StrEnum whose values are the stored and API values), never its
position, so a reordered enum cannot relabel fixes between processes of different versions.

Topics are named by the caller (`TopicNames`): pynng uses ``aircraft.area.<lat>.<lon>`` and
``aircraft.fix.<id>``; NATS uses the subjects of `soar.broker.subjects`.

May import: soar.records
"""

from __future__ import annotations

import json
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
        wire = fix_to_wire(fix)
        body = orjson.dumps(wire)
        # the square of the rounded position, as the receiver computes it from the body
        grouped.setdefault(names.area_of(wire["lat"], wire["lon"]), []).append(body)
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



# -- what a WebSocket client may ask for -------------------------------------------------------

#: A client may follow at most this many 1x1 degree squares (a 20x20 degree view): each square
#: is one topic on the source (a SUB prefix nng matches linearly, or a NATS subscription).
MAX_SQUARES_PER_CLIENT = 400
MAX_AIRCRAFT_PER_CLIENT = 100

Square = tuple[int, int]


class BadRequest(ValueError):
    """A client message that cannot be honoured; its text goes back to the client."""


def squares_in_bounds(north: float, south: float, east: float, west: float) -> list[Square]:
    """The 1x1 degree squares (floor(lat), floor(lon)) covering the bounds; west > east crosses 180°.

    Raises BadRequest for out-of-range values or more than MAX_SQUARES_PER_CLIENT squares.
    """
    for name, value, limit in (
        ("north", north, 90.0), ("south", south, 90.0), ("east", east, 180.0), ("west", west, 180.0)
    ):
        if not math.isfinite(value) or abs(value) > limit:
            raise BadRequest(f"bounds.{name} out of range")
    if south > north:
        raise BadRequest("bounds.south is north of bounds.north")
    lat_lo, lat_hi = math.floor(south), _upper_square(north, south, 89)
    if west <= east:
        lon_ranges = [(math.floor(west), _upper_square(east, west, 179))]
    else:
        lon_ranges = [(math.floor(west), 179), (-180, _upper_square(east, -180.0, 179))]
    count = (lat_hi - lat_lo + 1) * sum(hi - lo + 1 for lo, hi in lon_ranges)
    if count > MAX_SQUARES_PER_CLIENT:
        raise BadRequest(f"area too large: {count} squares (at most {MAX_SQUARES_PER_CLIENT})")
    return [
        (lat, lon)
        for lat in range(lat_lo, lat_hi + 1)
        for lo, hi in lon_ranges
        for lon in range(lo, hi + 1)
    ]


def _upper_square(high: float, low: float, cap: int) -> int:
    # An edge exactly on a whole degree does not reach into the next square.
    square = math.floor(high)
    if square == high and high > low:
        square -= 1
    return min(square, cap)


@dataclass(frozen=True, slots=True)
class SetOptions:
    """`{"type":"options","batch":true}`: several fixes per WebSocket message from now on."""

    batch: bool


@dataclass(frozen=True, slots=True)
class AreaRequest:
    """Follow (or stop following) the squares of a map view."""

    subscribe: bool
    squares: list[Square]


@dataclass(frozen=True, slots=True)
class AircraftRequest:
    """Follow (or stop following) one aircraft wherever it flies."""

    subscribe: bool
    ident: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message refused: `reason` labels the metric, `text` goes back to the client."""

    reason: str
    text: str

    def reply(self) -> dict[str, Any]:
        return {"type": "error", "error": self.text}


ClientRequest = SetOptions | AreaRequest | AircraftRequest


def parse_client_message(text: str | bytes) -> ClientRequest | Rejection:
    """What one client message asks for, or why it is refused. Never raises."""
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Rejection("invalid_json", "message is not JSON")
    if not isinstance(message, dict):
        return Rejection("not_object", "message must be a JSON object")
    kind, action = message.get("type"), message.get("action")
    if kind == "options":
        # Opt-in extension: several fixes per WebSocket message, {"type":"fixes","fixes":[…]},
        # each element a "fix" message. A busy map needs it; the default stays one per message.
        batch = message.get("batch")
        if not isinstance(batch, bool):
            return Rejection("bad_request", "options.batch must be true or false")
        return SetOptions(batch)
    if action not in ("subscribe", "unsubscribe"):
        return Rejection("bad_action", "action must be subscribe or unsubscribe")
    subscribe = action == "subscribe"
    try:
        if kind == "area_bulk":
            return AreaRequest(subscribe, squares_in_bounds(**_bounds(message.get("bounds"))))
        if kind == "aircraft":
            return AircraftRequest(subscribe, _aircraft_id(message.get("id")))
    except BadRequest as exc:
        return Rejection("bad_request", str(exc))
    return Rejection("bad_type", "type must be area_bulk, aircraft or options")


def _bounds(bounds: object) -> dict[str, float]:
    if not isinstance(bounds, dict):
        raise BadRequest("bounds must be an object with north, south, east, west")
    values = {}
    for name in ("north", "south", "east", "west"):
        value = bounds.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequest(f"bounds.{name} must be a number")
        try:
            values[name] = float(value)
        except OverflowError:
            raise BadRequest(f"bounds.{name} out of range") from None
    return values


def _aircraft_id(ident: object) -> int:
    if isinstance(ident, str) and ident.isascii() and ident.isdigit():
        ident = int(ident)
    if isinstance(ident, bool) or not isinstance(ident, int) or not 0 <= ident < 2**31:
        raise BadRequest("id must be an aircraft id (integer)")
    return ident


def acknowledgement(request: ClientRequest, total_squares: int) -> dict[str, Any]:
    """The reply to a request the hub has applied (`total_squares`: the client's, after it)."""
    if isinstance(request, SetOptions):
        return {"type": "options", "batch": request.batch}
    kind = "subscribed" if request.subscribe else "unsubscribed"
    if isinstance(request, AreaRequest):
        return {"type": kind, "what": "area_bulk", "squares": len(request.squares),
                "total_squares": total_squares}
    return {"type": kind, "what": "aircraft", "id": request.ident}
