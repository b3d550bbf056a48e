"""Capture files for `soar replay`: read them as envelopes stamped with their RECORDED times.

Formats (auto-detected from the first recognisable line, or named explicitly):

- ``ogn``: ``<ISO-8601 time> <APRS line>`` per line (the recorded OGN traces). A time without
  a zone is UTC. Or a raw APRS-IS capture, the lines as the server sent them (what
  ``nc aprs.glidernet.org 10152`` writes), which records no receive times: see below.
- ``sbs``: SBS/BaseStation CSV lines. The time is the message's *generated* date and time
  (fields 7 and 8, e.g. ``2026/02/24,14:57:36.000``), read as UTC, falling back to the logged
  date and time (fields 9 and 10); a leading ``<ISO-8601 time> `` before the CSV wins when
  present (captures recorded the OGN way).
- ``beast``: a raw Beast byte stream (what port 30005 sends). Beast carries no wall time, only
  each receiver's 48-bit 12 MHz MLAT counter, so a frame's time is ``start_us`` plus the counter
  ticks since the first frame (÷ 12 per µs); ``start_us`` defaults to the file's modification
  time. Time is the counter's high-water mark: a frame behind it (the counter stepped back)
  is a frame the receiver sent again, recognised by its counter and payload among the frames
  of the last 10 minutes and skipped (counted as ``beast_repeated``: a repeated block is
  neither new data nor elapsed time); or an older frame, at most 10 s back, placed at its own
  counter time without moving the clock; or, further back, a receiver restart. A restart, a
  jump forward of more than an hour or the 48-bit wrap re-bases the counter there, the time
  standing still. A counter of 0 (receivers without one) does not move the time.
- ``archive``: soar's own raw archive (`soar.ingest.archive`): ``received_us<TAB>payload``,
  payload the line itself for OGN/SBS and hex for Beast; the protocol comes from the file
  name (``ogn-2026-02-24.log.gz``) unless given.

Receive times of a raw APRS-IS capture: the server writes a keep-alive comment every 20 s
carrying its clock (``# aprsc 2.1.4-g408ed49 19 Apr 2017 15:23:32 GMT GLIDERN2 …``). The most
recent keep-alive is the anchor of the lines after it; lines before the first keep-alive take
``start_us`` when given, else the first keep-alive's time. All the lines between two keep-alives
would share one instant, and the tracker (which orders and de-duplicates fixes by time) would
see them as duplicates, so a line that carries its own APRS time (``/hhmmssh``) takes that time,
placed on the anchor's day, when it lies within 10 minutes of the anchor; other lines (server
and status lines, odd clocks) take the anchor. With no keep-alive and no ``start_us`` the lines
have no time: each is rejected as ``no_receive_time`` (`receive_time_problem` says so first).

Any of them may be gzip-compressed: recognised by its magic bytes, whatever the file is called.
A malformed line or stray bytes are counted in `CaptureStats.rejects` (and the
`soar_source_rejects_total` metric) and skipped, never an exception.

May import: soar.ingest.metrics, soar.protocols, soar.records, soar.timeconv
"""

from __future__ import annotations

import enum
import gzip
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import structlog

from soar.ingest import metrics
from soar.protocols.beast import BeastDeframer
from soar.records import Envelope, Protocol
from soar.timeconv import us

log = structlog.get_logger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
_BEAST_TICKS_PER_US = 12
_BEAST_MAX_STEP = 3600 * 12_000_000  # a longer jump is a discontinuity, not elapsed time
_BEAST_REPEAT_TICKS = 600 * 12_000_000  # how far back a re-sent frame is looked for
_BEAST_REPEAT_FRAMES = 1 << 18  # and at most this many frames back (memory of a busy feed)
_BEAST_OLDER_TICKS = 10 * 12_000_000  # an unseen frame further back is a receiver restart
_MLAT_MOD = 1 << 48
_SBS_TYPES = rb"(?:MSG|SEL|ID|AIR|STA|CLK)"
_ISO_PREFIX = rb"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\S*"
_ARCHIVE_LINE = re.compile(rb"^\d+\t")
_SBS_LINE = re.compile(rb"^(?:" + _ISO_PREFIX + rb"\s+)?" + _SBS_TYPES + rb",")
_OGN_LINE = re.compile(rb"^" + _ISO_PREFIX + rb"\s+\S")
_APRS_IS_LINE = re.compile(rb"^[A-Za-z0-9-]{1,16}>[A-Za-z0-9-]{1,16}[,:]")
_SERVER_COMMENT = re.compile(rb"^#\s*(?:aprsc|javAPRS\w*|logresp)\b")
_KEEPALIVE = re.compile(
    rb"^#.*?\b(\d{1,2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (\d{4})"
    rb" (\d\d):(\d\d):(\d\d) GMT\b"
)
_MONTHS = {m: i for i, m in enumerate(
    (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"),
    start=1)}
_PACKET_TIME = re.compile(rb":[/@>](\d\d)(\d\d)(\d\d)h")
_PACKET_TIME_WINDOW_US = 600_000_000
_DAY_US = 86_400_000_000
_SNIFF_BYTES = 8192
_MAX_LEADING_JUNK = 5  # logger chatter before the data ("connecting to server")
_ARCHIVE_NAME = re.compile(r"^(ogn|sbs|beast)-\d{4}-\d\d-\d\d\.log(?:\.gz)?$")
_PROGRESS_EVERY = 256


class CaptureFormat(enum.StrEnum):
    OGN = "ogn"
    SBS = "sbs"
    BEAST = "beast"
    ARCHIVE = "archive"


@dataclass(slots=True)
class CaptureStats:
    messages: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    bytes_read: int = 0  # of the file on disk (compressed, if it is)
    bytes_total: int = 0

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())


def open_capture(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(reader of the content, the raw file): gunzips when the file starts with gzip's magic."""
    raw = path.open("rb")
    try:
        magic = raw.read(2)
        raw.seek(0)
        if magic == GZIP_MAGIC:
            return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    except BaseException:
        raw.close()
        raise
    return raw, raw


def detect_format(path: Path) -> CaptureFormat:
    return _sniff(path)[0]


def is_raw_aprs_is(path: Path) -> bool:
    """An OGN capture without receive times: APRS-IS lines exactly as the server sent them."""
    try:
        return _sniff(path) == (CaptureFormat.OGN, True)
    except ValueError:
        return False


def _sniff(path: Path) -> tuple[CaptureFormat, bool]:
    """(format, raw APRS-IS) from the first recognisable line of the file."""
    reader, raw = open_capture(path)
    with raw, reader:
        head = reader.read(_SNIFF_BYTES)
    if head[:1] == b"\x1a":
        return CaptureFormat.BEAST, False
    junk = 0
    for line in head.splitlines():
        if not line.strip():
            continue
        if _ARCHIVE_LINE.match(line):
            return CaptureFormat.ARCHIVE, False
        if _SBS_LINE.match(line):
            return CaptureFormat.SBS, False
        if _OGN_LINE.match(line):
            return CaptureFormat.OGN, False
        if _APRS_IS_LINE.match(line) or _SERVER_COMMENT.match(line):
            return CaptureFormat.OGN, True
        junk += 1
        if junk > _MAX_LEADING_JUNK:
            break
    raise ValueError(f"{path}: not a capture format soar knows (ogn, sbs, beast, archive)")


def receive_time_problem(
    path: Path, fmt: CaptureFormat | str | None = None, start_us: int | None = None
) -> str | None:
    """Why `path` cannot be replayed with these receive times (None: it can), in a sentence.

    A raw APRS-IS capture needs a server keep-alive line or `start_us`; `start_us` means
    something only to captures that record no absolute time (Beast, raw APRS-IS).
    """
    kind = CaptureFormat(fmt) if fmt is not None else detect_format(path)
    raw_aprs = kind is CaptureFormat.OGN and is_raw_aprs_is(path)
    if start_us is not None and kind is not CaptureFormat.BEAST and not raw_aprs:
        return (
            f"{path}: --start is for captures without recorded times (Beast, raw APRS-IS); "
            f"this {kind.value} capture records its own"
        )
    if raw_aprs and start_us is None and first_keepalive_us(path) is None:
        return (
            f"{path}: a raw APRS-IS capture with no server keep-alive line "
            "('# aprsc … 19 Apr 2017 15:23:32 GMT …') to take receive times from; "
            "pass --start with the UTC time the capture began"
        )
    return None


def keepalive_us(line: bytes) -> int | None:
    """The server time (µs) of an APRS-IS keep-alive comment line, else None."""
    match = _KEEPALIVE.match(line)
    if match is None:
        return None
    day, month, year, hours, minutes, seconds = match.groups()
    try:
        moment = datetime(int(year), _MONTHS[month], int(day), int(hours), int(minutes),
                          int(seconds), tzinfo=UTC)
    except ValueError:  # 31 Feb, 25:00:00
        return None
    return us(moment)


def first_keepalive_us(path: Path) -> int | None:
    """The server time of the first keep-alive line in the capture (reads up to it)."""
    reader, raw = open_capture(path)
    with raw, reader:
        try:
            for line in reader:
                if line.startswith(b"#"):
                    found = keepalive_us(line)
                    if found is not None:
                        return found
        except (OSError, EOFError):  # unreadable further on: the reader counts that
            pass
    return None


def packet_time_us(line: bytes, anchor_us: int) -> int | None:
    """The APRS line's own `hhmmssh` time placed on the day that puts it nearest `anchor_us`,
    if that is within 10 minutes of it; None otherwise."""
    match = _PACKET_TIME.match(line, max(line.find(b":"), 0))
    if match is None:
        return None
    hours, minutes, seconds = (int(g) for g in match.groups())
    if hours > 23 or minutes > 59 or seconds > 59:
        return None
    of_day = ((hours * 60 + minutes) * 60 + seconds) * 1_000_000
    day_start = anchor_us - anchor_us % _DAY_US
    best = min((day_start + shift + of_day for shift in (-_DAY_US, 0, _DAY_US)),
               key=lambda t: abs(t - anchor_us))
    return best if abs(best - anchor_us) <= _PACKET_TIME_WINDOW_US else None


def iso_to_us(text: str) -> int:
    """Microseconds since the epoch of an ISO-8601 time; UTC when it names no zone."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return us(moment)


class SbsDayClock:
    """SBS date/time fields to µs, caching the start of each day (they repeat on every line)."""

    def __init__(self) -> None:
        self._days: dict[bytes, int] = {}

    def to_us(self, date: bytes, clock: bytes) -> int:
        day_us = self._days.get(date)
        if day_us is None:
            year, month, day = (int(part) for part in date.split(b"/"))
            day_us = us(datetime(year, month, day, tzinfo=UTC))
            self._days[date] = day_us
        hours, minutes, seconds = clock.split(b":")
        whole, _dot, fraction = seconds.partition(b".")
        micros = int((fraction + b"000000")[:6]) if fraction else 0
        if not (0 <= int(hours) < 24 and 0 <= int(minutes) < 60 and 0 <= int(whole) < 61):
            raise ValueError("time out of range")
        return day_us + ((int(hours) * 60 + int(minutes)) * 60 + int(whole)) * 1_000_000 + micros


def beast_first_frame_us(path: Path, start_us: int | None) -> int:
    """When a Beast capture's first frame is taken to be: `start_us`, else the file's mtime
    (a Beast file records only a 12 MHz counter; every time in it hangs on this one)."""
    return start_us if start_us is not None else path.stat().st_mtime_ns // 1000


def iter_capture(
    path: Path | str,
    fmt: CaptureFormat | str | None = None,
    *,
    source: str | None = None,
    stats: CaptureStats | None = None,
    start_us: int | None = None,
    archive_protocol: Protocol | None = None,
) -> Iterator[Envelope]:
    """The envelopes of one capture file, in file order, with their recorded receive times.

    `start_us` is when a capture without recorded times began: a Beast capture's first frame
    (default: the file's modification time), a raw APRS-IS capture's lines before its first
    keep-alive. Captures that record their own times do not use it.
    """
    path = Path(path)
    kind = CaptureFormat(fmt) if fmt is not None else detect_format(path)
    stats = stats if stats is not None else CaptureStats()
    stats.bytes_total = path.stat().st_size
    name = source or path.name
    if kind is CaptureFormat.BEAST:
        first_us = beast_first_frame_us(path, start_us)
        yield from _counted(_beast(path, name, first_us, stats), name, Protocol.BEAST, stats)
        return
    if kind is CaptureFormat.ARCHIVE:
        protocol = archive_protocol or archive_file_protocol(path)
        parse: Callable[[bytes], tuple[int, bytes]] = _archive_parser(protocol)
    elif kind is CaptureFormat.OGN and is_raw_aprs_is(path):
        protocol, parse = Protocol.OGN, _AprsIsClock(path, start_us).parse
    elif kind is CaptureFormat.OGN:
        protocol, parse = Protocol.OGN, _parse_ogn
    else:
        protocol, parse = Protocol.SBS, _sbs_parser()
    yield from _counted(_lines(path, name, protocol, parse, stats), name, protocol, stats)


def _counted(
    envelopes: Iterator[Envelope], name: str, protocol: Protocol, stats: CaptureStats
) -> Iterator[Envelope]:
    counter = metrics.SOURCE_MESSAGES.labels(name, protocol.value)
    for envelope in envelopes:
        stats.messages += 1
        counter.inc()
        yield envelope


def _reject(stats: CaptureStats, name: str, protocol: Protocol, reason: str, raw: bytes) -> None:
    stats.rejects[reason] += 1
    metrics.SOURCE_REJECTS.labels(name, protocol.value, reason).inc()
    if stats.rejects[reason] <= 10:  # enough to see what is wrong without flooding the log
        log.warning("capture.reject", source=name, reason=reason, raw=raw[:200])


def _lines(
    path: Path,
    name: str,
    protocol: Protocol,
    parse: Callable[[bytes], tuple[int, bytes]],
    stats: CaptureStats,
) -> Iterator[Envelope]:
    reader, raw = open_capture(path)
    with raw, reader:
        try:
            for number, line in enumerate(reader):
                if number % _PROGRESS_EVERY == 0:
                    stats.bytes_read = raw.tell()
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                try:
                    received_us, data = parse(line)
                except (ValueError, IndexError) as exc:
                    _reject(
                        stats, name, protocol, str(exc.args[0]) if exc.args else "bad_line", line
                    )
                    continue
                yield Envelope(protocol, received_us, data, name)
        except (OSError, EOFError) as exc:  # a truncated gzip, a bad CRC
            _reject(stats, name, protocol, "unreadable", repr(exc).encode())
        stats.bytes_read = stats.bytes_total


def _parse_ogn(line: bytes) -> tuple[int, bytes]:
    stamp, _sep, rest = line.partition(b" ")
    try:
        received_us = iso_to_us(stamp.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ValueError("bad_timestamp") from None
    rest = rest.lstrip(b" ")
    if not rest:
        raise ValueError("empty_line")
    return received_us, rest


class _AprsIsClock:
    """Receive times for a raw APRS-IS capture's lines (see the module doc)."""

    def __init__(self, path: Path, start_us: int | None) -> None:
        self._path = path
        self._anchor_us = start_us
        self._looked_ahead = False

    def parse(self, line: bytes) -> tuple[int, bytes]:
        if line.startswith(b"#"):
            server_us = keepalive_us(line)
            if server_us is not None:
                self._anchor_us = server_us
                return server_us, line
        anchor_us = self._anchor_us
        if anchor_us is None and not self._looked_ahead:
            self._looked_ahead = True
            anchor_us = self._anchor_us = first_keepalive_us(self._path)
        if anchor_us is None:
            raise ValueError("no_receive_time")
        own_us = packet_time_us(line, anchor_us)
        return (anchor_us if own_us is None else own_us), line


def _sbs_parser() -> Callable[[bytes], tuple[int, bytes]]:
    clock = SbsDayClock()

    def parse(line: bytes) -> tuple[int, bytes]:
        if line[:1].isdigit():  # a leading ISO time, the OGN capture way
            stamp, _sep, rest = line.partition(b" ")
            try:
                return iso_to_us(stamp.decode("ascii")), rest.lstrip(b" ")
            except (ValueError, UnicodeDecodeError):
                raise ValueError("bad_timestamp") from None
        fields = line.split(b",")
        if len(fields) < 10:
            raise ValueError("too_few_fields")
        for date, time_of_day in ((fields[6], fields[7]), (fields[8], fields[9])):
            if date and time_of_day:
                try:
                    return clock.to_us(date, time_of_day), line
                except ValueError:
                    raise ValueError("bad_timestamp") from None
        raise ValueError("no_timestamp")

    return parse


def archive_file_protocol(path: Path) -> Protocol:
    """The protocol of a soar archive file, from its name (`ogn-2026-02-24.log.gz`)."""
    match = _ARCHIVE_NAME.match(path.name)
    if match is None:
        raise ValueError(
            f"{path}: cannot tell the protocol of an archive file not named "
            "<protocol>-YYYY-MM-DD.log[.gz]; pass archive_protocol"
        )
    return Protocol(match.group(1))


def _archive_parser(protocol: Protocol) -> Callable[[bytes], tuple[int, bytes]]:
    def parse(line: bytes) -> tuple[int, bytes]:
        stamp, tab, payload = line.partition(b"\t")
        if not tab or not stamp.isdigit():
            raise ValueError("bad_timestamp")
        if protocol is Protocol.BEAST:
            try:
                payload = bytes.fromhex(payload.decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                raise ValueError("bad_hex") from None
        if not payload:
            raise ValueError("empty_line")
        return int(stamp), payload

    return parse


def _beast(path: Path, name: str, start_us: int, stats: CaptureStats) -> Iterator[Envelope]:
    reader, raw = open_capture(path)
    deframer = BeastDeframer()
    clock = _BeastCaptureClock()
    resyncs = 0
    with raw, reader:
        while True:
            try:
                chunk = reader.read(65536)
            except (OSError, EOFError) as exc:
                _reject(stats, name, Protocol.BEAST, "unreadable", repr(exc).encode())
                break
            stats.bytes_read = raw.tell()
            if not chunk:
                break
            frames = deframer.feed(chunk)
            if deframer.resyncs != resyncs:
                for _ in range(deframer.resyncs - resyncs):
                    _reject(stats, name, Protocol.BEAST, "beast_resync", b"")
                resyncs = deframer.resyncs
            for frame in frames:
                ticks = clock.ticks(frame.mlat, frame.payload)
                if ticks is None:
                    _reject(stats, name, Protocol.BEAST, "beast_repeated", frame.payload.hex().encode())
                    continue
                received_us = start_us + ticks // _BEAST_TICKS_PER_US
                yield Envelope(Protocol.BEAST, received_us, frame.to_bytes(), name)
    if deframer.buffered:
        _reject(stats, name, Protocol.BEAST, "truncated_frame", b"")


class _BeastCaptureClock:
    """12 MHz ticks since a capture's first frame, on the counter's high-water mark (see the
    module doc); None for a frame the receiver sent again."""

    def __init__(self) -> None:
        self._ticks = 0  # at the high-water mark, summed step by step across re-bases
        self._high: int | None = None
        # (counter, payload) of recent frames, oldest first, to recognise a re-sent block
        self._recent: dict[tuple[int, bytes], None] = {}

    def ticks(self, mlat: int, payload: bytes) -> int | None:
        if not mlat:
            return self._ticks
        high = self._high
        if high is None:
            self._high = mlat
            self._remember(mlat, payload)
            return self._ticks
        forward = (mlat - high) % _MLAT_MOD
        if forward <= _BEAST_MAX_STEP:
            if (mlat, payload) in self._recent:
                return None  # sent twice in a row: the same frame, the same counter
            self._ticks += forward
            self._high = mlat
            self._remember(mlat, payload)
            return self._ticks
        back = (high - mlat) % _MLAT_MOD
        if back <= _BEAST_REPEAT_TICKS and (mlat, payload) in self._recent:
            return None
        if back <= _BEAST_OLDER_TICKS:
            self._remember(mlat, payload)
            return self._ticks - back  # an older frame: its own time, the clock stays
        self._high = mlat  # restart or wrap: re-based, the time stands
        self._recent.clear()
        self._remember(mlat, payload)
        return self._ticks

    def _remember(self, mlat: int, payload: bytes) -> None:
        recent = self._recent
        recent[(mlat, payload)] = None
        high = self._high if self._high is not None else mlat
        # forget frames more than the repeat horizon behind the high-water mark
        while len(recent) > 1:
            oldest = next(iter(recent))
            behind = (high - oldest[0]) % _MLAT_MOD
            if behind <= _BEAST_REPEAT_TICKS and len(recent) <= _BEAST_REPEAT_FRAMES:
                break
            del recent[oldest]
