"""The writer's outage spill: whole prepared batches on disk, oldest first, bounded in bytes.

One file per batch, `<sequence>.batch`, written to a temporary name, fsynced and renamed, so a
crash leaves either the whole batch or none of it. A file holds a 4-byte big-endian length, a
4-byte CRC32 of the payload, then the payload. The writer acknowledges (deletes) a batch only
after its rows are committed, so a restart replays whatever was not yet committed; replays are
idempotent in the database. A file that fails its length or CRC check is renamed
`<name>.corrupt`, logged and counted, never silently dropped.

The payload is a pickle of the batch's database-ready row tuples (ints, floats, str, bool,
None, datetime, UUID): no soar classes, so a spool written by one version of soar reads back in
the next. Only this process writes the directory; it is not an exchange format.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import structlog
from prometheus_client import Counter

log = structlog.get_logger(__name__)

SPILL_CORRUPT = Counter(
    "soar_store_spool_corrupt_total", "Spooled batches that failed their CRC and were set aside"
)

_HEADER = struct.Struct(">II")


class SpoolFull(Exception):
    """The spool has no room for this record; the caller holds it and applies backpressure."""


class BatchSpool:
    """A FIFO of byte records in a directory, bounded by `max_bytes`, surviving restarts."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        for stale in self.directory.glob("*.tmp"):
            stale.unlink()
        self._files: list[Path] = sorted(self.directory.glob("*.batch"))
        self._bytes = sum(path.stat().st_size for path in self._files)
        self._next_seq = int(self._files[-1].stem) + 1 if self._files else 0

    @property
    def depth(self) -> int:
        """Records waiting."""
        return len(self._files)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def has_room(self) -> bool:
        return self._bytes < self.max_bytes

    def append(self, payload: bytes) -> None:
        size = _HEADER.size + len(payload)
        # An empty spool always takes one record, however big, so progress is always possible.
        if self._files and self._bytes + size > self.max_bytes:
            raise SpoolFull(
                f"spool {self.directory} full ({self._bytes} of {self.max_bytes} bytes)"
            )
        path = self.directory / f"{self._next_seq:020d}.batch"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            out.write(_HEADER.pack(len(payload), zlib.crc32(payload)))
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        tmp.rename(path)
        self._next_seq += 1
        self._files.append(path)
        self._bytes += size

    def peek(self) -> bytes | None:
        """The oldest record, or None when empty. Corrupt records are set aside and skipped."""
        while self._files:
            path = self._files[0]
            data = path.read_bytes()
            if len(data) >= _HEADER.size:
                length, crc = _HEADER.unpack_from(data)
                payload = data[_HEADER.size :]
                if len(payload) == length and zlib.crc32(payload) == crc:
                    return payload
            SPILL_CORRUPT.inc()
            log.error("spool.corrupt_record", path=str(path), size=len(data))
            path.rename(path.with_name(path.name + ".corrupt"))
            self._forget_head(len(data))
        return None

    def pop(self) -> None:
        """Acknowledge the oldest record: it is committed and can go."""
        if not self._files:
            return
        path = self._files[0]
        size = path.stat().st_size
        path.unlink()
        self._forget_head(size)

    def _forget_head(self, size: int) -> None:
        self._files.pop(0)
        self._bytes -= size
