"""A bounded on-disk FIFO spool: append-only segment files of length + CRC32 framed records.

Used where data must outlive a full channel or a database outage: the store writer spools its
batches while PostgreSQL is down and replays them in order; sources spill raw input to it when
their channels are full.

    spool = DiskSpool(Path("var/spool/writer"), max_bytes=1 << 30)
    spool.append(batch_bytes)                  # or append_many([...]) for one flush
    records = spool.read(100)                  # oldest unacknowledged first, in order
    ... write them somewhere ...
    spool.commit()                             # acknowledged: never delivered again
    # or spool.rewind(): the next read() delivers the same records again

On disk, in `directory`:

- `000000000001.seg`, `000000000002.seg`, …: records as `<u32 length><u32 crc32(payload)>payload`,
  little-endian. Only the newest segment is appended to; a new one starts when it would grow past
  `segment_bytes` (a single larger record gets a segment of its own).
- `cursor.json`: `{"segment": n, "offset": m}`, the first unacknowledged byte, replaced
  atomically (write + rename) on every `commit()`. Segments before it are deleted at commit.

Delivery is at-least-once: a crash between `read()` and `commit()` delivers those records again
after the restart, never loses them.

Bounded: when an append would take the segment files past `max_bytes`, the oldest segment is
deleted and its unacknowledged records are counted in `dropped_records` (and
`soar_spool_dropped_records_total{spool}`), so keep `segment_bytes` well below `max_bytes`: a
segment is what a drop costs. Records already handed out by `read()` and lost this way are
counted when they cannot be acknowledged any more (at `rewind()` or `close()`); if they are
committed, they were delivered and are not counted.

Corruption: every record's CRC is checked on read (and on the scan at open); a bad one is skipped
and counted in `corrupt_records`, never returned. A length field that runs past the end of its
segment (a torn write after a crash, or a corrupt length) makes the rest of that segment
unreadable — there is no way to find the next record boundary — so reading resyncs at the next
segment, counting the records the rest held as corrupt (at least one). Nothing is rewritten or
truncated on disk.

Depth: `depth_records` and `depth_bytes` count unacknowledged records (in-flight ones
included). They are exact after the scan at open, which reads every segment once (about as fast
as the disk reads), and stay exact under appends, reads, commits and drops; only on-disk
corruption that appears while the spool is open is counted when a read reaches it.

All I/O is synchronous and guarded by a lock, so a trio program calls it through
`trio.to_thread.run_sync` from any number of tasks. Write durability is `sync`: NONE leaves
records in the process buffer until a read, `flush()` or `close()`; FLUSH (default) hands each
append to the OS (survives the process dying, not the machine); FSYNC also fsyncs the segment
and the cursor.

An unusable directory (cannot create, read or write) raises `SpoolError` naming the path.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import struct
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog
from prometheus_client import Counter, Gauge

log = structlog.get_logger(__name__)

HEADER = struct.Struct("<II")
SEGMENT_SUFFIX = ".seg"
CURSOR_NAME = "cursor.json"
MAX_RECORD = 2**32 - 1

spool_dropped = Counter(
    "soar_spool_dropped_records",
    "Records dropped unacknowledged from a full on-disk spool (oldest segment first)",
    ["spool"],
)
spool_corrupt = Counter(
    "soar_spool_corrupt_records", "Spool records skipped for a bad CRC or length", ["spool"]
)
spool_depth_records = Gauge(
    "soar_spool_depth_records", "Unacknowledged records in the on-disk spool", ["spool"]
)
spool_depth_bytes = Gauge(
    "soar_spool_depth_bytes", "Unacknowledged bytes in the on-disk spool", ["spool"]
)


class SpoolError(Exception):
    """The spool's directory or files cannot be used; `path` says which."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(f"{message}: {path}")
        self.path = path


class SyncPolicy(enum.Enum):
    NONE = "none"
    FLUSH = "flush"
    FSYNC = "fsync"


@dataclass
class _Segment:
    seq: int
    path: Path
    size: int
    """Bytes in the file, as written by this process or found at open."""
    end: int
    """Readable limit: `size`, unless a bad length field cut the segment short."""
    records: int
    """Readable records in [0, end) (known-corrupt ones excluded)."""


@dataclass(frozen=True)
class _Position:
    seq: int
    offset: int
    index: int
    """Readable records before `offset` in segment `seq`."""


class DiskSpool:
    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        segment_bytes: int = 4 * 1024 * 1024,
        *,
        sync: SyncPolicy = SyncPolicy.FLUSH,
        name: str | None = None,
    ) -> None:
        if max_bytes <= HEADER.size:
            raise ValueError(f"spool max_bytes must exceed {HEADER.size}, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, min(segment_bytes, max_bytes))
        self.sync = sync
        self.name = name if name is not None else self.directory.name
        self.dropped_records = 0
        self.corrupt_records = 0
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._disk_bytes = 0
        self._bad: set[tuple[int, int]] = set()
        self._writer: BinaryIO | None = None
        self._reader: BinaryIO | None = None
        self._reader_seq = -1
        self._reader_offset = -1
        self._in_flight = 0
        self._in_flight_dropped = 0
        self._closed = False
        self._committed = self._read_pos = _Position(0, 0, 0)
        self._open()
        spool_depth_records.labels(self.name).set_function(lambda: self.depth_records)
        spool_depth_bytes.labels(self.name).set_function(lambda: self.depth_bytes)

    # -- public API -----------------------------------------------------------------------------

    def append(self, record: bytes) -> None:
        self.append_many((record,))

    def append_many(self, records: Iterable[bytes]) -> None:
        with self._lock:
            self._check_open()
            written: list[int] = []  # sizes of the records this call put in the newest segment
            for record in records:
                seq = self._segments[-1].seq if self._segments else None
                before = self._segments[-1].records if self._segments else 0
                self._append(record)
                if self._segments and self._segments[-1].seq != seq:
                    written.clear()  # rolled: earlier ones were flushed with the old segment
                if self._segments and self._segments[-1].records > before:
                    written.append(HEADER.size + len(record))
            try:
                self._sync_writer()
            except SpoolError:
                # Never reached the file: they are not in the spool (no phantom depth, no
                # "corrupt" tail to find later). The caller counts the failure.
                self._forget_unflushed(written)
                raise

    def _forget_unflushed(self, sizes: list[int]) -> None:
        seg = self._segments[-1]
        for need in sizes:
            seg.size -= need
            seg.end -= need
            seg.records -= 1
            self._disk_bytes -= need

    def read(self, max_records: int) -> list[bytes]:
        """Up to `max_records` of the oldest records not yet read since the last commit/rewind."""
        with self._lock:
            self._check_open()
            out = self._read(max_records)
            self._in_flight += len(out)
            return out

    def commit(self) -> int:
        """Acknowledge everything read since the last commit/rewind; returns how many records.

        Records read and then dropped from a full spool still count as acknowledged here: the
        caller has them."""
        with self._lock:
            self._check_open()
            acked = self._in_flight
            self._in_flight = self._in_flight_dropped = 0
            if self._read_pos != self._committed:
                self._committed = self._read_pos
                self._write_cursor()
                while self._segments[0].seq < self._committed.seq:
                    self._delete(self._segments.pop(0))
            return acked

    def rewind(self) -> None:
        """Forget what was read since the last commit: the next read() delivers it again."""
        with self._lock:
            self._check_open()
            self._rewind()

    def flush(self) -> None:
        with self._lock:
            self._check_open()
            self._flush_writer(fsync=self.sync is SyncPolicy.FSYNC)

    def close(self) -> None:
        """Flush and close the files. Unacknowledged reads are delivered again after re-open."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._rewind()
            try:
                self._flush_writer(fsync=self.sync is SyncPolicy.FSYNC)
            finally:
                for handle in (self._writer, self._reader):
                    if handle is not None:
                        with contextlib.suppress(OSError):
                            handle.close()
                self._writer = self._reader = None

    def __enter__(self) -> DiskSpool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def depth_records(self) -> int:
        """Unacknowledged records (read but not committed ones included)."""
        segments = self._segments
        return sum(seg.records for seg in segments) - self._committed.index

    @property
    def depth_bytes(self) -> int:
        return self._disk_bytes - self._committed.offset

    @property
    def disk_bytes(self) -> int:
        """Size of all segment files: what `max_bytes` bounds."""
        return self._disk_bytes

    @property
    def in_flight(self) -> int:
        """Records returned by read() and not yet committed or rewound."""
        return self._in_flight

    # -- open: scan what a previous process left ------------------------------------------------

    def _open(self) -> None:
        try:
            self._open_files()
        except OSError as exc:
            path = Path(exc.filename) if exc.filename else self.directory
            raise SpoolError(f"spool directory unusable ({exc.strerror or exc})", path) from exc

    def _open_files(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        cursor_seq, cursor_offset = self._load_cursor()
        found = sorted(
            (int(p.stem), p)
            for p in self.directory.iterdir()
            if p.suffix == SEGMENT_SUFFIX and p.stem.isdigit()
        )

        committed = _Position(0, 0, 0)
        clean_tail = False
        for seq, path in found:
            if seq < cursor_seq:
                # Consumed; left over from a crash between the cursor write and the delete.
                self._unlink(path)
                continue
            start = cursor_offset if seq == cursor_seq else 0
            seg, before, clean_tail = self._scan(seq, path, start)
            if not self._segments:
                committed = (
                    _Position(seq, min(start, seg.end), before)
                    if seq == cursor_seq
                    else _Position(seq, 0, 0)
                )
            self._segments.append(seg)
            self._disk_bytes += seg.size

        last = self._segments[-1] if self._segments else None
        if last is not None and clean_tail and last.size < self.segment_bytes:
            self._open_writer(last)
        else:
            seq = max(last.seq if last is not None else 0, cursor_seq) + 1
            self._segments.append(self._new_segment(seq))
            if last is None:
                committed = _Position(seq, 0, 0)
        self._committed = self._read_pos = committed
        if self.depth_records:
            log.info(
                "spool.opened",
                spool=self.name,
                records=self.depth_records,
                bytes=self.depth_bytes,
                segments=len(self._segments),
                corrupt=self.corrupt_records,
            )

    def _load_cursor(self) -> tuple[int, int]:
        path = self.directory / CURSOR_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return 0, 0
        try:
            data = json.loads(raw)
            seq, offset = int(data["segment"]), int(data["offset"])
        except (ValueError, KeyError, TypeError) as exc:
            # Re-deliver from the oldest segment rather than guess and lose data.
            log.warning("spool.cursor_unreadable", spool=self.name, path=str(path), error=str(exc))
            return 0, 0
        return seq, offset

    def _scan(self, seq: int, path: Path, start: int) -> tuple[_Segment, int, bool]:
        """Walk a segment's records: the segment, readable records before `start`, and whether
        the file ends exactly on a record boundary."""
        records = before = 0
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            offset = 0
            while offset + HEADER.size <= size:
                length, crc = HEADER.unpack(f.read(HEADER.size))
                if offset + HEADER.size + length > size:
                    break
                payload = f.read(length)
                if zlib.crc32(payload) == crc:
                    records += 1
                    before += offset < start
                elif offset >= start:
                    self._bad.add((seq, offset))
                    self._count_corrupt(1, seq, offset, "crc")
                offset += HEADER.size + length
        tail = size - offset
        if tail and offset >= start:
            self._count_corrupt(1, seq, offset, "truncated", tail_bytes=tail)
        return _Segment(seq, path, size, offset, records), before, tail == 0

    # -- append ---------------------------------------------------------------------------------

    def _append(self, record: bytes) -> None:
        need = HEADER.size + len(record)
        if need > self.max_bytes or len(record) > MAX_RECORD:
            self._count_dropped(1, reason="record_too_large", bytes=len(record))
            return
        active = self._segments[-1]
        if self._writer is None or (active.size and active.size + need > self.segment_bytes):
            self._roll()
        while self._disk_bytes + need > self.max_bytes:
            self._drop_oldest()
        active = self._segments[-1]
        assert self._writer is not None
        try:
            self._writer.write(HEADER.pack(len(record), zlib.crc32(record)))
            self._writer.write(record)
        except OSError as exc:
            # The file may now end in a partial record: never append after it again.
            self._abandon_writer()
            raise SpoolError(f"cannot write spool segment ({exc.strerror})", active.path) from exc
        active.size += need
        active.end += need
        active.records += 1
        self._disk_bytes += need

    def _roll(self) -> None:
        """Start a new segment for appends (the old one, if any, is sealed)."""
        active = self._segments[-1]
        if self._writer is not None:
            self._flush_writer(fsync=self.sync is SyncPolicy.FSYNC)
            self._writer.close()
            self._writer = None
        if active.size == 0 and _file_size(active.path) == 0:
            self._open_writer(active)  # an empty segment is as good as a new one
            return
        self._segments.append(self._new_segment(active.seq + 1))

    def _new_segment(self, seq: int) -> _Segment:
        seg = _Segment(seq, self.directory / f"{seq:012d}{SEGMENT_SUFFIX}", 0, 0, 0)
        self._open_writer(seg)
        if self.sync is SyncPolicy.FSYNC:
            try:
                self._fsync_directory()
            except OSError as exc:
                raise SpoolError(f"cannot sync spool directory ({exc.strerror})", seg.path) from exc
        return seg

    def _fsync_directory(self) -> None:
        """Make a new or renamed file's directory entry durable, not only its contents."""
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _open_writer(self, seg: _Segment) -> None:
        try:
            self._writer = seg.path.open("ab", buffering=1 << 16)
        except OSError as exc:
            raise SpoolError(f"cannot open spool segment ({exc.strerror})", seg.path) from exc

    def _abandon_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            self._writer = None

    def _drop_oldest(self) -> None:
        if len(self._segments) == 1:
            self._roll()
        seg = self._segments.pop(0)
        committed, read = self._committed, self._read_pos
        unacked = seg.records - committed.index
        in_flight = (read.index if read.seq == seg.seq else seg.records) - committed.index
        head = self._segments[0]
        self._committed = _Position(head.seq, 0, 0)
        if read.seq == seg.seq:
            self._read_pos = self._committed
        self._in_flight_dropped += in_flight
        self._delete(seg)
        if unacked:
            log.warning(
                "spool.full_dropped_oldest",
                spool=self.name,
                segment=seg.seq,
                records=unacked,
                in_flight=in_flight,
                bytes=seg.size,
            )
        self._count_dropped(unacked - in_flight)

    # -- read -----------------------------------------------------------------------------------

    def _read(self, max_records: int) -> list[bytes]:
        out: list[bytes] = []
        pos = self._read_pos
        seg = self._segment(pos.seq)
        seq, offset, index = pos.seq, pos.offset, pos.index
        flushed = False
        while len(out) < max_records:
            if offset >= seg.end:
                if seg is self._segments[-1]:
                    break
                seg = self._segments[self._segments.index(seg) + 1]
                seq, offset, index = seg.seq, 0, 0
                continue
            if seg is self._segments[-1] and not flushed:
                self._flush_writer(fsync=False)
                flushed = True
            f = self._reader_at(seg, offset)
            header = f.read(HEADER.size)
            length, crc = HEADER.unpack(header) if len(header) == HEADER.size else (-1, 0)
            payload = f.read(length) if 0 <= length <= seg.end - offset - HEADER.size else b""
            self._reader_offset = offset + len(header) + len(payload)
            if len(payload) != length:
                self._resync(seg, offset, index)
                continue
            frame = (seq, offset)
            offset += HEADER.size + length
            if frame in self._bad:
                continue
            if zlib.crc32(payload) != crc:
                self._bad.add(frame)
                seg.records -= 1
                self._count_corrupt(1, seq, frame[1], "crc")
                continue
            out.append(payload)
            index += 1
        self._read_pos = _Position(seq, offset, index)
        return out

    def _resync(self, seg: _Segment, offset: int, index: int) -> None:
        """The length at `offset` runs past the segment: give up on the rest of it."""
        lost = seg.records - index
        self._count_corrupt(max(lost, 1), seg.seq, offset, "length", tail_bytes=seg.end - offset)
        seg.records = index
        seg.end = offset
        if seg is self._segments[-1]:
            self._roll()  # appends must not land behind the unreadable bytes

    def _reader_at(self, seg: _Segment, offset: int) -> BinaryIO:
        if self._reader is None or self._reader_seq != seg.seq:
            self._close_reader()
            try:
                self._reader = seg.path.open("rb")
            except OSError as exc:
                raise SpoolError(f"cannot read spool segment ({exc.strerror})", seg.path) from exc
            self._reader_seq = seg.seq
            self._reader_offset = 0
        if self._reader_offset != offset:
            self._reader.seek(offset)
            self._reader_offset = offset
        return self._reader

    def _close_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(OSError):
                self._reader.close()
        self._reader = None
        self._reader_seq = -1

    def _segment(self, seq: int) -> _Segment:
        for seg in self._segments:
            if seg.seq == seq:
                return seg
        raise AssertionError(f"spool position in missing segment {seq}")  # pragma: no cover

    def _rewind(self) -> None:
        if self._in_flight_dropped:
            # Delivered once, dropped from disk since, and now not acknowledged: lost.
            self._count_dropped(self._in_flight_dropped, reason="dropped_while_in_flight")
        self._in_flight = self._in_flight_dropped = 0
        self._read_pos = self._committed

    # -- files ----------------------------------------------------------------------------------

    def _write_cursor(self) -> None:
        path = self.directory / CURSOR_NAME
        tmp = path.with_suffix(".tmp")
        data = json.dumps({"segment": self._committed.seq, "offset": self._committed.offset})
        try:
            with tmp.open("w") as f:
                f.write(data)
                if self.sync is SyncPolicy.FSYNC:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if self.sync is SyncPolicy.FSYNC:
                self._fsync_directory()
        except OSError as exc:
            raise SpoolError(f"cannot write spool cursor ({exc.strerror})", path) from exc

    def _sync_writer(self) -> None:
        if self.sync is not SyncPolicy.NONE:
            self._flush_writer(fsync=self.sync is SyncPolicy.FSYNC)

    def _flush_writer(self, *, fsync: bool) -> None:
        if self._writer is None:
            return
        try:
            self._writer.flush()
            if fsync:
                os.fsync(self._writer.fileno())
        except OSError as exc:
            self._abandon_writer()
            raise SpoolError(
                f"cannot write spool segment ({exc.strerror})", self._segments[-1].path
            ) from exc

    def _delete(self, seg: _Segment) -> None:
        if self._reader_seq == seg.seq:
            self._close_reader()
        self._disk_bytes -= seg.size
        self._bad = {frame for frame in self._bad if frame[0] != seg.seq}
        self._unlink(seg.path)

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot delete spool segment ({exc.strerror})", path) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError("spool is closed", self.directory)

    # -- accounting -----------------------------------------------------------------------------

    def _count_dropped(self, n: int, **fields: object) -> None:
        if n <= 0:
            return
        self.dropped_records += n
        spool_dropped.labels(self.name).inc(n)
        if fields:
            log.warning("spool.record_dropped", spool=self.name, records=n, **fields)

    def _count_corrupt(self, n: int, seq: int, offset: int, kind: str, **fields: object) -> None:
        self.corrupt_records += n
        spool_corrupt.labels(self.name).inc(n)
        log.warning(
            "spool.corrupt_record",
            spool=self.name,
            segment=seq,
            offset=offset,
            kind=kind,
            records=n,
            **fields,
        )


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
