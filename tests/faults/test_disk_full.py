"""A full disk (issue 18, item 2) on a real tmpfs holding the whole data directory: the embedded
PostgreSQL's cluster and every spool.

The SBS capture is fed over TCP; after the first commits the tmpfs is filled to the last byte
and the rest of the capture is let go. PostgreSQL refuses (`DiskFull`, or its WAL cannot grow
and it restarts), the writers' spools refuse too (no space, or less than their reserve free),
so the writers stall and the pressure travels up to the overflow sink, which blocks the source:
TCP stops being read. Nothing may crash, escalate or be dropped. The filler is then deleted and
everything resumes by itself: every message of the capture is read and decoded, and every fix
the tracker handed the store writer is in the table, once.

Why not compare with the fault-free replay (`reference`) as other fault tests do: fed live with
these small edges, the tracker itself stores one fix more or less at the capture's last second
in some runs with no fault at all (seen with this test's body minus the filler), so the exact
check is made where a full disk acts, between the tracker and the table.

Needs root for `mount -t tmpfs`; skipped with a message where that is not permitted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from soar.database import Database, open_database
from soar.pipeline import Pipeline
from soar.records import Protocol
from soar.spool import DiskSpool, SpoolFull, spool_full
from soar.store.tables import TableBatch
from soar.store.writer import StoreWriter
from soar.supervisor import supervisor_escalations, task_restarts
from tests.faults.faultkit import (
    Capture,
    Corpus,
    LiveSource,
    fault_settings,
    run_sources,
    stored,
    wait_for,
)

TMPFS_SIZE = "256m"
#: the share of the capture sent before the disk fills (the rest is held back until then)
FIRST_SHARE = 0.05


def _total(counter: object, **labels: str) -> float:
    total = 0.0
    for metric in counter.collect():  # type: ignore[attr-defined]
        for sample in metric.samples:
            if sample.name.endswith("_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


@contextlib.contextmanager
def mounted_tmpfs(size: str) -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are mode 0700 and the embedded server runs as the
    # `pgserver` user when we are root.
    mountpoint = Path(tempfile.mkdtemp(prefix="soar-disk-full-"))
    mountpoint.chmod(0o755)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(mountpoint)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    with mounted_tmpfs(TMPFS_SIZE) as path:
        yield path


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    with mounted_tmpfs("1m") as path:
        yield path


def fill(directory: Path) -> int:
    """Write a file until the filesystem has no byte left; its size."""
    path = directory / "filler"
    written = 0
    chunk = b"\0" * (1 << 20)
    with path.open("wb", buffering=0) as out:
        while True:
            try:
                written += out.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 16 or 1]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def watch_handed(monkeypatch: pytest.MonkeyPatch, handed: set[tuple[int, int]]) -> None:
    """Record the key of every fix a fixes writer is given to store (what its batches hold):
    an observer on the real writer, which still does all the work."""
    prepare = StoreWriter._prepare

    def recording(self: StoreWriter[Any], items: list[Any]) -> list[TableBatch]:
        if self.name == "fixes":
            handed.update((f.aircraft_id, f.received_us) for f in items if not f.no_track)
        return prepare(self, items)

    monkeypatch.setattr(StoreWriter, "_prepare", recording)


def free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


class GatedFeed:
    """The capture over TCP on 127.0.0.1: the first `first` messages, then the rest once `gate`
    is set, from wherever the client has got to (a reconnect resumes there)."""

    def __init__(self, capture: Capture, first: int, position: Callable[[], int]) -> None:
        self.messages = capture.wire_messages()
        self.first = first
        self.position = position
        self.gate = trio.Event()
        self.port = 0
        self.connections = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        start = self.position()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_discard_input, stream)
            if start < self.first:
                await stream.send_all(b"".join(self.messages[start : self.first]))
                start = self.first
            await self.gate.wait()
            for at in range(start, len(self.messages), 500):
                await stream.send_all(b"".join(self.messages[at : at + 500]))
            await trio.sleep_forever()


async def _discard_input(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await stream.receive_some(4096):
            pass


@pytest.mark.time_limit(420)  # a cluster to create, a stall, a recovery with back-off
async def test_full_disk_holds_the_feed_loses_nothing_and_resumes(
    corpus: Corpus, tmpfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = corpus[Protocol.SBS]
    total = len(capture.envelopes)
    # Small edges and batches: the pipeline holds little, so a stall soon reaches the source.
    settings = fault_settings(tmpfs / "var", channel_size=200, batch_rows=500)
    db: Database = await trio.to_thread.run_sync(open_database, settings)
    restarts_before = _total(task_restarts)
    escalations_before = _total(supervisor_escalations)
    refused_before = _total(spool_full, spool="ingest.sbs")
    seen: dict[str, object] = {}
    handed: set[tuple[int, int]] = set()
    watch_handed(monkeypatch, handed)
    try:
        async with trio.open_nursery() as nursery:
            live: LiveSource | None = None
            feed = GatedFeed(capture, int(total * FIRST_SHARE),
                             lambda: live.delivered if live is not None else 0)
            await nursery.start(feed.run)
            live = LiveSource(capture, feed.address)

            async def disk_full(pipeline: Pipeline) -> None:
                await wait_for(lambda: pipeline.committed["fixes"] > 0, 120, "the first commit")
                seen["filler_bytes"] = await trio.to_thread.run_sync(fill, tmpfs)
                seen["free_when_full"] = free_bytes(tmpfs)
                feed.gate.set()
                fixes = pipeline.writers["fixes"]
                await wait_for(lambda: fixes.stalled, 180, "the fixes writer to stall")
                await wait_for(
                    lambda: _total(spool_full, spool="ingest.sbs") > refused_before, 120,
                    "the overflow sink to find its spool refusing",
                )
                # The sink now blocks the source: it cannot have handed everything on.
                seen["delivered_when_stalled"] = live.delivered
                seen["committed_when_stalled"] = pipeline.committed["fixes"]
                seen["stalled_spool_reason"] = fixes.spool.full
                await trio.to_thread.run_sync(partial((tmpfs / "filler").unlink))
                seen["freed"] = True

            pipeline = await run_sources(
                settings, db.url, [live.spec()],
                until=lambda: "freed" in seen and live is not None and live.done,
                during=disk_full, timeout=360,
            )
            nursery.cancel_scope.cancel()
        got = await trio.to_thread.run_sync(stored, db.url)
        decoded = pipeline.decoders[Protocol.SBS].messages
    finally:
        await trio.to_thread.run_sync(db.stop)

    print(seen, dict(pipeline.committed))
    assert seen["free_when_full"] == 0
    assert seen["stalled_spool_reason"] in ("no_space", "disk_reserve")
    delivered = seen["delivered_when_stalled"]
    assert isinstance(delivered, int) and delivered < total, (
        "the source kept handing envelopes on while the pipeline was stalled"
    )
    assert feed.connections == 1, "the feed connection was held, not dropped"
    # Nothing crashed, restarted or escalated; nothing read was lost or stored twice.
    assert _total(task_restarts) == restarts_before
    assert _total(supervisor_escalations) == escalations_before
    # Every message read was decoded; every fix handed to the writer is stored, once.
    assert live.done and decoded == total
    assert handed, "the writer was never watched"
    want = {(ident, EPOCH + timedelta(microseconds=us)) for ident, us in handed}
    have = got.keys([Protocol.SBS])
    assert want - have == set(), f"{len(want - have)} fixes lost"
    assert have - want == set(), f"{len(have - want)} fixes stored that were never handed over"
    assert got.fix_rows == len(have)


def test_spool_on_a_full_disk_refuses_whole_records_and_keeps_the_rest(
    small_tmpfs: Path, testdata: Path
) -> None:
    """ENOSPC part-way through a record: the spool refuses it, nothing of it stays on disk
    (no "corrupt" tail after a restart), and every record it accepted reads back."""
    import gzip

    with gzip.open(testdata / "sbs" / "adsbhub-sbs-sample-20260224.txt.gz", "rb") as f:
        lines = f.read().splitlines()
    records = [b"\n".join(lines[i : i + 37]) for i in range(0, len(lines), 37)]  # ~3.5 kB each
    spool = DiskSpool(small_tmpfs / "spool", max_bytes=1 << 30, segment_bytes=256 << 10,
                      min_free_bytes=0, name="test-enospc")
    accepted = 0
    with pytest.raises(SpoolFull) as info:
        for record in records:
            spool.append(record)
            accepted += 1
    assert info.value.reason == "no_space"
    assert 0 < accepted < len(records)
    on_disk = sum(p.stat().st_size for p in (small_tmpfs / "spool").glob("*.seg"))
    assert on_disk == spool.disk_bytes, "a refused record left bytes behind"
    spool.close()
    reopened = DiskSpool(small_tmpfs / "spool", max_bytes=1 << 30, min_free_bytes=0)
    got: list[bytes] = []
    while batch := reopened.read(100):
        got.extend(batch)
        reopened.commit()  # deletes consumed segments first: works on the full disk
    assert got == records[:accepted]
    assert reopened.corrupt_records == 0
    # Room again: the spool takes records.
    reopened.append(records[accepted])
    assert reopened.read(1) == [records[accepted]]
    reopened.close()
