"""The decode step of each protocol pipeline: envelope in, routable items and store rows out.

Stateless per message except for the receivers a via path names, which are coalesced here so
that `receivers.latest_packet_at` costs one row per receiver per flush, not a write per fix,
and the clock of each feed: every position leaves here with its own time. An OGN beacon's
`hhmmss` placed on the receive date (`ogn.beacon_time_us`); a Beast frame's 12 MHz counter
anchored to the wall clock per source (`beast.MlatClock`: derived from the envelope's
receive time and the frame alone, so a spooled, archived or re-delivered envelope gets the
same time again); an SBS message's generated time, corrected for a feed that writes local
time (`sbs.SbsClock`). A time more than 10 s after its receive time is rejected and counted.
ADS-B CPR and SBS accumulation are stateful per aircraft and so happen in the shards; this step
only finds the aircraft address to route by.

May import: soar.log, soar.protocols, soar.records, soar.tracking
"""

from __future__ import annotations

import math
from collections import Counter as CounterDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from prometheus_client import Counter

from soar.log import RateLimited
from soar.protocols import beast, modes, ogn, sbs, text
from soar.records import (
    AddressType,
    Envelope,
    Fix,
    Protocol,
    ReceiverRow,
    ReceiverStatusRow,
    ServerMessageRow,
    aircraft_id,
)
from soar.tracking.inputs import ModeSInput, SbsInput

log = structlog.get_logger(__name__)

MESSAGES = Counter("soar_messages_decoded_total", "Envelopes through the decode step", ["protocol"])
REJECTS = Counter(
    "soar_messages_rejected_total", "Messages rejected by the decode step", ["protocol", "reason"]
)

TEXT_CLEANED = Counter(
    "soar_messages_text_cleaned_total",
    "Text fields the decode step cleaned: control characters removed (kind=control) or bytes "
    "that were not UTF-8 replaced by U+FFFD (kind=invalid_utf8)",
    ["protocol", "field", "kind"],
)

ShardItem = Fix | ModeSInput | SbsInput
UNUSED = Counter(
    "soar_messages_unused_total", "Messages parsed but not stored (weather, tracker status)",
    ["protocol", "kind"],
)

R = TypeVar("R")

StoreRow = ReceiverRow | ReceiverStatusRow | ServerMessageRow

RECEIVER_FLUSH_US = 5_000_000


@dataclass(slots=True)
class Decoded:
    """What one envelope became: items for the shards (with their aircraft id) and store rows."""

    shard_items: list[tuple[int, ShardItem]] = field(default_factory=list)
    store_rows: list[StoreRow] = field(default_factory=list)


class Decoder:
    """One per protocol pipeline (it keeps the receiver coalescing state of that pipeline)."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.messages = 0
        self.rejects: CounterDict[str] = CounterDict()
        self._receivers_seen: dict[str, int] = {}
        self._last_receiver_flush_us = 0
        self._messages_metric = MESSAGES.labels(protocol=protocol.value)
        self._mlat_clocks: dict[str, beast.MlatClock] = {}
        self._sbs_clocks: dict[str, sbs.SbsClock] = {}
        # A feed can repeat a bad line thousands of times a minute: the metric counts each one,
        # the log says so once a minute per field and kind.
        self._text_log = RateLimited(log)

    def decode(self, env: Envelope) -> Decoded:
        self.messages += 1
        self._messages_metric.inc()
        out = Decoded()
        if env.protocol is Protocol.OGN:
            self._decode_ogn(env, out)
        elif env.protocol is Protocol.BEAST:
            self._decode_beast(env, out)
        else:
            self._decode_sbs(env, out)
        if env.received_us - self._last_receiver_flush_us >= RECEIVER_FLUSH_US:
            out.store_rows.extend(self.flush_receivers())
            self._last_receiver_flush_us = env.received_us
        return out

    def flush_receivers(self) -> list[StoreRow]:
        rows: list[StoreRow] = [ReceiverRow(name, t) for name, t in self._receivers_seen.items()]
        self._receivers_seen.clear()
        return rows

    def reject(self, reason: str, raw: bytes | str) -> None:
        self.rejects[reason] += 1
        REJECTS.labels(protocol=self.protocol.value, reason=reason).inc()
        log.debug("message.rejected", protocol=self.protocol.value, reason=reason, raw=str(raw)[:200])

    def _parse(self, env: Envelope, parse: Callable[[str], R]) -> tuple[str, R]:
        """Decode and parse one line; a line with control characters or bytes that are not
        UTF-8 has its record's text fields cleaned, each one counted."""
        line, invalid = text.decode(env.data)
        record = parse(line)
        if not invalid and text.is_clean(line):
            return line, record
        record, found = text.clean_record(record, invalid)
        protocol = self.protocol.value
        for field_name, kind in found:
            TEXT_CLEANED.labels(protocol=protocol, field=field_name, kind=kind).inc()
            self._text_log.log(
                (field_name, kind), "warning", "message.text_cleaned", protocol=protocol,
                field=field_name, kind=kind, line=_private(record) or repr(line)[:200],
            )
        return line, record

    def _decode_ogn(self, env: Envelope, out: Decoded) -> None:
        line, parsed = self._parse(env, ogn.parse_line)
        if isinstance(parsed, ogn.AircraftBeacon):
            time_us = ogn.beacon_time_us(parsed, env.received_us)
            if time_us is None:
                self.reject(ogn.REASON_FUTURE, _private(parsed) or line)
                return
            fix = ogn.to_fix(parsed, env.received_us, env.source, time_us)
            if fix.receiver:
                self._receivers_seen[fix.receiver] = env.received_us
            out.shard_items.append((fix.aircraft_id, fix))
        elif isinstance(parsed, ogn.ReceiverBeacon):
            out.store_rows.append(ogn.receiver_row(parsed, env.received_us))
            if parsed.status is not None:
                out.store_rows.append(ogn.receiver_status_row(parsed.status, env.received_us))
        elif isinstance(parsed, ogn.ReceiverStatus):
            out.store_rows.append(ogn.receiver_status_row(parsed, env.received_us))
        elif isinstance(parsed, ogn.ServerLine):
            out.store_rows.append(ServerMessageRow(env.received_us, env.source, parsed.text))
        elif isinstance(parsed, ogn.AircraftStatus | ogn.WeatherBeacon):
            # Parsed and understood, but soar keeps no table for them (yet): counted, not lost.
            UNUSED.labels(protocol=self.protocol.value, kind=type(parsed).__name__).inc()
        else:
            self.reject(parsed.reason, line)

    def _decode_beast(self, env: Envelope, out: Decoded) -> None:
        try:
            frame = beast.BeastFrame.from_bytes(env.data)
        except ValueError:
            self.reject("beast_bad_frame", env.data)
            return
        if frame.kind == beast.MODE_AC:
            self.reject("mode_ac", env.data)  # no address to track it by
            return
        payload = frame.payload
        remainder = modes.crc_remainder(payload)
        address = modes.icao_address(payload, remainder)
        if address is None:
            self.reject("modes_no_address", payload.hex())
            return
        # The signal byte is an amplitude: readsb/dump1090 report it as dBFS of its square.
        signal_db = 20 * math.log10(frame.signal / 255) if frame.signal else None
        clock = self._mlat_clocks.get(env.source)
        if clock is None:
            clock = self._mlat_clocks[env.source] = beast.MlatClock()
        time_us = clock.time_us(frame.mlat, env.received_us)
        item = ModeSInput(payload, env.received_us, env.source, signal_db, remainder, time_us)
        out.shard_items.append((aircraft_id(AddressType.ICAO, address), item))

    def _decode_sbs(self, env: Envelope, out: Decoded) -> None:
        line, parsed = self._parse(env, sbs.parse_line)
        if isinstance(parsed, sbs.SbsMessage):
            clock = self._sbs_clocks.get(env.source)
            if clock is None:
                clock = self._sbs_clocks[env.source] = sbs.SbsClock()
            time_us = clock.time_us(parsed, env.received_us)
            if time_us is None:
                self.reject(sbs.REASON_FUTURE, line)
                return
            item = SbsInput(parsed, env.received_us, env.source, time_us)
            out.shard_items.append((aircraft_id(AddressType.ICAO, parsed.icao), item))
        else:
            self.reject(parsed.reason, line)


def _private(record: object) -> str | None:
    """What a log line shows instead of a beacon that must not identify its aircraft (stealth
    or no-track bit); None for any other record."""
    if isinstance(record, ogn.AircraftBeacon) and (record.stealth or record.no_track):
        return "(a stealth or no-track beacon: not logged)"
    return None
