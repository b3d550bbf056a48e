"""A bounded on-disk FIFO spool: append-only segment files of length + CRC32 framed records.

The one disk FIFO of soar: the store writer spools its batches to it while PostgreSQL is down
and replays them in order (`soar.store.writer`); the ingest overflow spills envelopes to it when
their edge is full (`soar.overflow`).

    spool = DiskSpool(Path("var/spool/store/fixes"), max_bytes=1 << 30)
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

Bounded, never lossy: an append that would take the segment files past `max_bytes`, or leave
less than `min_free_bytes` free on the filesystem (checked with `statvfs`: a spool shares its
disk with PostgreSQL, which must not be starved of the space it needs to come back), or that the
disk refuses (ENOSPC, EDQUOT), raises `SpoolFull` and leaves nothing of the record behind (a
partly written record is truncated away). The caller holds the record and applies
back-pressure; it is counted in `soar_spool_full_total{spool,reason}`. An empty spool takes one
record past `max_bytes`, so a record larger than the bound still makes progress.

Corruption: every record's CRC is checked on read (and on the scan at open); a bad one is skipped
and counted in `corrupt_records`, never returned. A length field that runs past the end of its
segment (a torn write after a crash, or a corrupt length) makes the rest of that segment
unreadable — there is no way to find the next record boundary — so reading resyncs at the next
segment, counting the records the rest held as corrupt (at least one). Nothing is rewritten or
truncated on disk.

Depth: `depth_records` and `depth_bytes` count unacknowledged records (in-flight ones
included). They are exact after the scan at open, which reads every segment once (about as fast
as the disk reads), and stay exact under appends, reads and commits; only on-disk corruption
that appears while the spool is open is counted when a read reaches it.

A commit deletes fully consumed segments before it writes the cursor, so it frees space first;
a cursor that cannot be written (disk full) is counted and logged and written at the next
commit: a restart then delivers some acknowledged records again, never loses any.

All I/O is synchronous and guarded by a lock, so a trio program calls it through
`trio.to_thread.run_sync` from any number of tasks. Write durability is `sync`: NONE leaves
records in the process buffer until a read, `flush()` or `close()`; FLUSH (default) hands each
append to the OS (survives the process dying, not the machine); FSYNC also fsyncs the segment
and the cursor.

An unusable directory (cannot create, read or write) raises `SpoolError` naming the path.

Metrics, one family for every spool, labelled by the spool's name: `soar_spool_depth_records`,
`soar_spool_depth_bytes`, `soar_spool_full_total`, `soar_spool_corrupt_records_total`,
`soar_spool_errors_total`.

May import: nothing of soar
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import os
import struct
import threading
import time
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

spool_full = Counter(
    "soar_spool_full",
    "Appends refused, the caller holding the record (max_bytes, disk_reserve, no_space)",
    ["spool", "reason"],
)
spool_errors = Counter(
    "soar_spool_errors",
    "Spool I/O failures other than a full disk (cursor writes included)",
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


class SpoolFull(SpoolError):
    """No room for the record (`reason`: max_bytes, disk_reserve, no_space); nothing of it was
    kept. Hold it and try again later."""

    def __init__(self, message: str, path: Path, reason: str) -> None:
        super().__init__(message, path)
        self.reason = reason


#: Free space a spool leaves on its filesystem by default: room for PostgreSQL to checkpoint and
#: come back on a disk it shares with the spools.
DEFAULT_MIN_FREE_BYTES = 16 * 1024 * 1024
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
#: How stale a statvfs answer may be: another process (PostgreSQL) fills the same disk.
_STATVFS_MAX_AGE_S = 0.05


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
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    ) -> None:
        if max_bytes <= HEADER.size:
            raise ValueError(f"spool max_bytes must exceed {HEADER.size}, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, min(segment_bytes, max_bytes))
        self.sync = sync
        self.name = name if name is not None else self.directory.name
        self.min_free_bytes = min_free_bytes
        self.corrupt_records = 0
        self.full_refusals = 0
        self._full_reason: str | None = None
        self._free_checked = -1.0
        self._free_bytes = 0
        self._cursor_dirty = False
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._disk_bytes = 0
        self._bad: set[tuple[int, int]] = set()
        self._writer: BinaryIO | None = None
        self._reader: BinaryIO | None = None
        self._reader_seq = -1
        self._reader_offset = -1
        self._in_flight = 0
        self._closed = False
        self._committed = self._read_pos = _Position(0, 0, 0)
        self._open()
        spool_depth_records.labels(self.name).set_function(lambda: self.depth_records)
        spool_depth_bytes.labels(self.name).set_function(lambda: self.depth_bytes)

    # -- public API -----------------------------------------------------------------------------

    def append(self, record: bytes) -> None:
        self.append_many((record,))

    def append_many(self, records: Iterable[bytes]) -> None:
        """Append all of `records` or, raising `SpoolFull` or `SpoolError`, none of them."""
        batch = list(records)
        with self._lock:
            self._check_open()
            for record in batch:
                if len(record) > MAX_RECORD:
                    raise ValueError(f"spool record of {len(record)} bytes is too large")
            need = sum(HEADER.size + len(record) for record in batch)
            self._check_room(need)
            first = len(self._segments) - 1
            marks = [(seg.size, seg.end, seg.records) for seg in self._segments[first:]]
            disk_bytes = self._disk_bytes
            try:
                for record in batch:
                    self._append(record)
                self._sync_writer()
            except (OSError, SpoolError) as exc:
                # Never (wholly) reached the file: not in the spool. Cut off any partial bytes
                # so no "corrupt" tail is found later and the space is given back.
                path = self._segments[-1].path
                self._abandon_writer()
                for seg in self._segments[first + 1 :]:
                    self._disk_bytes -= seg.size
                    with contextlib.suppress(OSError):
                        seg.path.unlink()
                del self._segments[first + 1 :]
                seg = self._segments[first]
                seg.size, seg.end, seg.records = marks[0]
                self._disk_bytes = disk_bytes
                with contextlib.suppress(OSError):
                    os.truncate(seg.path, seg.size)
                cause = exc if isinstance(exc, OSError) else exc.__cause__
                if isinstance(cause, OSError):
                    raise self._write_error(cause, path) from exc
                raise
        self._accepting()

    def _check_room(self, need: int) -> None:
        if self._disk_bytes + need > self.max_bytes:
            self._reclaim()
        if self._disk_bytes + need > self.max_bytes and self.depth_records:
            self._refuse(
                "max_bytes", f"spool full ({self._disk_bytes} of {self.max_bytes} bytes)"
            )
        if self.min_free_bytes > 0:
            now = time.monotonic()
            if now - self._free_checked > _STATVFS_MAX_AGE_S or self._full_reason:
                try:
                    stat = os.statvfs(self.directory)
                except OSError as exc:
                    raise self._write_error(exc, self.directory) from exc
                self._free_bytes = stat.f_bavail * stat.f_frsize
                self._free_checked = now
            if self._free_bytes - need < self.min_free_bytes:
                self._refuse(
                    "disk_reserve",
                    f"{self._free_bytes} bytes free on the spool's disk, keeping "
                    f"{self.min_free_bytes}",
                )
            self._free_bytes -= need

    def _reclaim(self) -> None:
        """Everything written was acknowledged: start a new segment and delete the old ones."""
        if self.depth_records or not self._segments[-1].size:
            return
        self._flush_writer(fsync=False)
        self._abandon_writer()
        seq = self._segments[-1].seq + 1
        self._segments.append(self._new_segment(seq))
        self._committed = self._read_pos = _Position(seq, 0, 0)
        while self._segments[0].seq < seq:
            self._delete(self._segments.pop(0))

    def _refuse(self, reason: str, message: str) -> None:
        self.full_refusals += 1
        spool_full.labels(self.name, reason).inc()
        if self._full_reason != reason:
            self._full_reason = reason
            log.warning("spool.full", spool=self.name, reason=reason, detail=message,
                        depth_records=self.depth_records, disk_bytes=self._disk_bytes)
        raise SpoolFull(message, self.directory, reason)

    def _accepting(self) -> None:
        if self._full_reason is not None:
            log.info("spool.accepting_again", spool=self.name, after=self._full_reason)
            self._full_reason = None

    def _write_error(self, exc: OSError, path: Path) -> SpoolError:
        if exc.errno in _NO_SPACE:
            try:
                self._refuse("no_space", f"no space left on the spool's disk ({exc.strerror})")
            except SpoolFull as full:
                return full
        spool_errors.labels(self.name).inc()
        return SpoolError(f"cannot write spool segment ({exc.strerror or exc})", path)

    @property
    def full(self) -> str | None:
        """Why the last append was refused, until one is accepted again; None when accepting."""
        return self._full_reason

    def read(self, max_records: int) -> list[bytes]:
        """Up to `max_records` of the oldest records not yet read since the last commit/rewind."""
        with self._lock:
            self._check_open()
            out = self._read(max_records)
            self._in_flight += len(out)
            return out

    def commit(self) -> int:
        """Acknowledge everything read since the last commit/rewind; returns how many records."""
        with self._lock:
            self._check_open()
            acked = self._in_flight
            self._in_flight = 0
            if self._read_pos != self._committed or self._cursor_dirty:
                self._committed = self._read_pos
                # Deleting first frees space, so the cursor can be written on a full disk.
                while self._segments[0].seq < self._committed.seq:
                    self._delete(self._segments.pop(0))
                try:
                    self._write_cursor()
                except SpoolError as exc:
                    # The old cursor is behind this one: a restart delivers again, loses nothing.
                    spool_errors.labels(self.name).inc()
                    if not self._cursor_dirty:
                        log.warning("spool.cursor_write_failed", spool=self.name, error=str(exc))
                    self._cursor_dirty = True
                else:
                    self._cursor_dirty = False
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
        """Write one record (room already checked); OSError is left to `append_many`."""
        need = HEADER.size + len(record)
        active = self._segments[-1]
        if self._writer is None or (active.size and active.size + need > self.segment_bytes):
            self._roll()
        active = self._segments[-1]
        assert self._writer is not None
        self._writer.write(HEADER.pack(len(record), zlib.crc32(record)))
        self._writer.write(record)
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
        self._in_flight = 0
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
