"""The outage spool of soar before the one disk FIFO: read once at start, moved into `DiskSpool`.

Until the store writer spooled to `soar.spool.DiskSpool`, it wrote one file per batch,
`<sequence>.batch`: a 4-byte big-endian length, a 4-byte CRC32 of the payload, then the payload
(the same pickle of database-ready row tuples the writer spools today). An operator who upgrades
while the database is down must not lose those rows, so the writer calls `import_legacy_batches`
when it opens its spool: every intact file, oldest first, is appended to the new spool (fsynced)
and then deleted; a file that fails its length or CRC check is renamed `<name>.corrupt`,
counted in `soar_spool_corrupt_records_total` and logged, never silently dropped. A crash
half-way imports a batch twice at worst, and replays are idempotent in the database.

Delete this module once no installation can hold a spool written before the change.

May import: soar.spool
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import structlog

from soar.spool import DiskSpool, SpoolFull, spool_corrupt

log = structlog.get_logger(__name__)

_HEADER = struct.Struct(">II")
LEGACY_SUFFIX = ".batch"


def legacy_payload(data: bytes) -> bytes | None:
    """The payload of a legacy batch file, or None when it is torn or corrupt."""
    if len(data) < _HEADER.size:
        return None
    length, crc = _HEADER.unpack_from(data)
    payload = data[_HEADER.size :]
    if len(payload) != length or zlib.crc32(payload) != crc:
        return None
    return payload


def import_legacy_batches(directory: Path, spool: DiskSpool) -> int:
    """Move the legacy batch files in `directory` into `spool`, oldest first; how many moved.

    A spool that refuses (full) leaves the remaining files for the next start, logged."""
    for stale in directory.glob("*.tmp"):
        stale.unlink(missing_ok=True)  # a write the old version never finished: not acknowledged
    files = sorted(directory.glob(f"*{LEGACY_SUFFIX}"))
    moved = 0
    for path in files:
        data = path.read_bytes()
        payload = legacy_payload(data)
        if payload is None:
            spool.corrupt_records += 1
            spool_corrupt.labels(spool.name).inc()
            log.error("spool.legacy_corrupt_record", spool=spool.name, path=str(path),
                      size=len(data))
            path.rename(path.with_name(path.name + ".corrupt"))
            continue
        try:
            spool.append(payload)
        except SpoolFull as exc:
            log.error("spool.legacy_import_incomplete", spool=spool.name, moved=moved,
                      left=len(files) - moved, error=str(exc))
            break
        path.unlink()
        moved += 1
    if moved:
        log.info("spool.legacy_imported", spool=spool.name, batches=moved)
    return moved
