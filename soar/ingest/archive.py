"""Raw archive: every envelope as it came in, one file per protocol per UTC day.

Layout: ``<directory>/<protocol>-<YYYY-MM-DD>.log`` while the day is being written, gzip-
compressed to ``…log.gz`` once the day is over (the day of a message is the UTC day of its
receive time; a file also counts as over once the wall clock has passed its day, and on start-up
every stale ``.log`` is compressed). One line per message::

    <received_us>\\t<payload>\\n

with the payload the line itself for OGN and SBS (a line never holds a newline) and the frame in
hex for Beast. `soar.ingest.capture` reads these files back (format ``archive``), so an archive
can be replayed.

A message that arrives for a day already compressed (late, or replayed from the spool) is
written to a fresh ``.log`` for that day and compressed again as an extra gzip member appended
to the ``.gz``: gzip readers read concatenated members as one stream.

Whether the archive runs at all is the caller's choice (setting ``archive_raw``): the pipeline
starts `RawArchive.run` only when it is on.

May import: soar.ingest.metrics, soar.ingest.tcp, soar.records
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import BinaryIO

import structlog
import trio

from soar.ingest import metrics
from soar.ingest.tcp import NowUs, wall_clock_us
from soar.records import Envelope, Protocol

log = structlog.get_logger(__name__)

_DAY_FILE = re.compile(r"^(ogn|sbs|beast)-(\d{4}-\d\d-\d\d)\.log$")


def utc_day(received_us: int) -> date:
    return datetime.fromtimestamp(received_us // 1_000_000, UTC).date()


#: the OGN id token: `idFFAAAAAA` (flags, address), Naviter `idFFFFAAAAAA`, Wingman `idFF<name>AAAAAA`
_ID_TOKEN = re.compile(rb" id([0-9A-F]{2})([0-9A-F]{2})?")


def asks_not_to_be_tracked(line: bytes) -> bool:
    """Whether an OGN beacon carries the no-track bit (checked on the raw line, before decoding).

    The owner of a device with the bit set asked that its positions be neither shown nor kept:
    such a beacon must not reach the disk, the raw archive included. A Naviter id has 16 flag
    bits (no-track 0x4000) ahead of its address, every other id 8 (no-track 0x40).
    """
    for match in _ID_TOKEN.finditer(line):
        end = line.find(b" ", match.start() + 1)
        token = line[match.start() + 1 : None if end < 0 else end].rstrip(b"\r")
        if len(token) == 12 and match.group(2) is not None:  # "id" + 4 flag + 6 address digits
            try:
                return bool(int(token[2:6], 16) & 0x4000)
            except ValueError:
                pass
        return bool(int(match.group(1), 16) & 0x40)
    return False


def archive_line(envelope: Envelope) -> bytes:
    payload = envelope.data.hex().encode() if envelope.protocol is Protocol.BEAST else envelope.data
    return b"%d\t%s\n" % (envelope.received_us, payload)


class RawArchive:
    """Buffered appends to the day files; all methods are blocking (run them in a thread)."""

    def __init__(
        self, directory: Path | str, *, buffer_size: int = 1 << 20, now_us: NowUs = wall_clock_us
    ) -> None:
        self.directory = Path(directory)
        self.buffer_size = buffer_size
        self._now_us = now_us
        self._files: dict[tuple[Protocol, date], BinaryIO] = {}
        self._newest: dict[Protocol, date] = {}

    def path_for(self, protocol: Protocol, day: date) -> Path:
        return self.directory / f"{protocol.value}-{day.isoformat()}.log"

    def open(self) -> list[Path]:
        """Create the directory and compress what earlier runs left of past days."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("*.log.gz.tmp"):
            leftover.unlink()  # a compression cut short: its .log is still there
        return self.compress_stale()

    def compress_stale(self) -> list[Path]:
        """Compress every closed `.log` of a day before today (UTC, wall clock)."""
        today = utc_day(self._now_us())
        done = []
        for path in sorted(self.directory.glob("*.log")):
            match = _DAY_FILE.match(path.name)
            if match is None:
                continue
            key = (Protocol(match.group(1)), date.fromisoformat(match.group(2)))
            if key[1] < today and key not in self._files:
                done.append(compress_day_file(path))
        return done

    def write_batch(self, envelopes: Iterable[Envelope]) -> None:
        """Append `envelopes`, flush, and close and compress every day that is over."""
        counts: dict[Protocol, int] = {}
        for envelope in envelopes:
            if envelope.protocol is Protocol.OGN and asks_not_to_be_tracked(envelope.data):
                metrics.ARCHIVE_WITHHELD.labels(envelope.protocol.value).inc()
                continue
            day = utc_day(envelope.received_us)
            key = (envelope.protocol, day)
            file = self._files.get(key)
            if file is None:
                file = self._open(key)
            file.write(archive_line(envelope))
            newest = self._newest.get(envelope.protocol)
            if newest is None or day > newest:
                self._newest[envelope.protocol] = day
            counts[envelope.protocol] = counts.get(envelope.protocol, 0) + 1
        for protocol, count in counts.items():
            metrics.ARCHIVE_MESSAGES.labels(protocol.value).inc(count)
        self.flush()
        self._roll_over()

    def flush(self) -> None:
        for file in self._files.values():
            file.flush()

    def close(self) -> None:
        """Flush and close the open day files (the current day stays uncompressed)."""
        for file in self._files.values():
            file.close()
        self._files.clear()

    def _open(self, key: tuple[Protocol, date]) -> BinaryIO:
        self.directory.mkdir(parents=True, exist_ok=True)
        file = self.path_for(*key).open("ab", buffering=self.buffer_size)
        self._files[key] = file
        return file

    def _roll_over(self) -> None:
        today = utc_day(self._now_us())
        for key in list(self._files):
            protocol, day = key
            if day < self._newest.get(protocol, day) or day < today:
                self._files.pop(key).close()
                compress_day_file(self.path_for(protocol, day))

    async def run(
        self,
        receive: trio.MemoryReceiveChannel[Envelope],
        *,
        batch_size: int = 5000,
        check_interval: float = 60.0,
    ) -> None:
        """Archive what `receive` yields until it is closed; file I/O in a worker thread.

        Whatever is waiting is written as one batch. With nothing arriving, the day rollover is
        still checked every `check_interval` seconds.
        """
        await trio.to_thread.run_sync(self.open)
        try:
            while True:
                batch: list[Envelope] = []
                with trio.move_on_after(check_interval):
                    try:
                        batch.append(await receive.receive())
                    except trio.EndOfChannel:
                        break
                while len(batch) < batch_size:
                    try:
                        batch.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await trio.to_thread.run_sync(self.write_batch, batch)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.close)


def compress_day_file(path: Path) -> Path:
    """gzip `path` to `path.gz` (appending a member if that exists) and remove `path`."""
    target = path.with_name(path.name + ".gz")
    tmp = path.with_name(path.name + ".gz.tmp")
    with path.open("rb") as source, gzip.open(tmp, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
    with tmp.open("rb+") as written:
        os.fsync(written.fileno())
    if target.exists():
        with target.open("ab") as existing, tmp.open("rb") as member:
            shutil.copyfileobj(member, existing, 1 << 20)
            existing.flush()
            os.fsync(existing.fileno())
        tmp.unlink()
    else:
        tmp.replace(target)
    path.unlink()
    metrics.ARCHIVE_COMPRESSED_FILES.inc()
    log.info("archive.compressed", path=str(target))
    return target
