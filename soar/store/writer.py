"""The store writer: one trio task per table family, batching rows into binary COPY commits.

    writer = StoreWriter(pool, FixFamily(), spool_dir=data_dir / "spool" / "store" / "fixes")
    nursery.start_soon(writer.run, receive_fixes)   # returns once the channel closes and all is flushed

Batches close at `max_rows` rows or `max_age` seconds after their first row (trio's clock).
Each batch is prepared (records -> tuples) and committed in a worker thread through a
`psycopg_pool.ConnectionPool` (psycopg's async API does not run under trio). While one batch
commits, the next one fills.

Failures:
- Database unreachable (connection errors, admin shutdown, pool timeout, ...): the batch goes to
  the on-disk spool and the writer keeps accepting input, spooling every batch, while it retries
  the oldest spooled batch with exponential backoff; once one commits it replays the spool in
  order and then resumes direct commits. Every replay is idempotent in the database
  (see `soar.store.tables`), so a batch whose commit outcome was lost is simply written again.
  The spool is `soar.spool.DiskSpool`, fsynced per batch. When it refuses a batch (past
  `spool_max_bytes`, less than its reserve free on the disk, or ENOSPC: on a shared disk PostgreSQL's
  `DiskFull` usually means the spool is full too) the writer holds the batch and stops reading its
  input (backpressure: `stalled`, `soar_store_stalled`), never drops, and tries the database and
  the spool again with backoff until one takes it.
- A row the database refuses (constraint, bad value): the batch is bisected until the row is
  alone; it is logged with its content and counted in `soar_store_rows_rejected_total`, and
  every other row commits.

A row is acknowledged (counted committed, reported to `on_commit`) only after its commit.

Progress for an upstream that acknowledges its own input (JetStream) only once it is safe:
`taken` counts items taken from the input channel, `settled` the items whose batch is committed
or durably spooled. Batches settle in the order they were taken, so the first `settled` items
taken are all safe; an item that stores no row (coalesced away, skipped, refused) settles with
its batch.

May import: soar.backoff, soar.log, soar.spool, soar.store.spill, soar.store.tables
"""

from __future__ import annotations

import functools
import math
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from weakref import WeakSet

import psycopg
import structlog
import trio
from prometheus_client import Counter, Gauge, Histogram
from psycopg_pool import ConnectionPool, PoolTimeout

from soar.backoff import Backoff
from soar.log import RateLimited
from soar.spool import DiskSpool, SpoolError, SpoolFull, SyncPolicy, spool_corrupt
from soar.store.spill import import_legacy_batches
from soar.store.tables import SPECS, Family, TableBatch, spooled_batch

log = structlog.get_logger(__name__)
_REJECTED_LOG = RateLimited(log)

T = TypeVar("T")

ROWS_COMMITTED = Counter(
    "soar_store_rows_committed_total", "Rows acknowledged as committed", ["table"]
)
ROWS_DUPLICATE = Counter(
    "soar_store_rows_duplicate_total",
    "Committed rows that were already in the table (replays), so inserted nothing",
    ["table"],
)
ROWS_REJECTED = Counter(
    "soar_store_rows_rejected_total", "Rows the database refused, isolated and logged", ["table"]
)
ROWS_SKIPPED = Counter(
    "soar_store_rows_skipped_total", "Records deliberately not stored", ["family", "reason"]
)
BATCH_SECONDS = Histogram(
    "soar_store_batch_seconds",
    "Time to commit one batch (prepare, COPY, merge, commit)",
    ["family"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RETRIES = Counter("soar_store_retries_total", "Commit attempts retried after an outage", ["family"])
SPOOL_DEPTH = Gauge("soar_store_spool_depth", "Batches waiting in the outage spool", ["family"])
STALLED = Gauge(
    "soar_store_stalled",
    "1 while the writer holds input that neither the database nor its spool takes",
    ["family"],
)
STORE_UP = Gauge("soar_store_up", "1 when the writer's last database attempt worked", ["family"])
COMMIT_LAG = Histogram(
    "soar_store_commit_lag_seconds",
    "From a row's receive time to its commit",
    ["table"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)

# SQLSTATE classes that mean "the database is not (fully) there": connection exceptions,
# insufficient resources, operator intervention (shutdown), system errors, transaction
# rollback (deadlock, serialization) and undefined objects (schema not migrated yet). Anything
# else is a problem with the rows and is isolated by bisection.
_OUTAGE_CLASSES = frozenset({"08", "53", "57", "58", "40", "42", "55"})


def is_outage(exc: BaseException) -> bool:
    if isinstance(exc, PoolTimeout | psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        # client-side failure: no server answer at all (socket gone, connect refused)
        return True
    return state[:2] in _OUTAGE_CLASSES


class Outage(Exception):
    """The database could not be reached; the batch was not (wholly) committed."""


@dataclass(frozen=True, slots=True)
class CommitReport:
    """What one commit acknowledged, for the `on_commit` hook (e.g. receive->commit latency)."""

    table: str
    rows: int
    inserted: int
    rejected: int
    stamps_us: Sequence[int]
    committed_us: int


@dataclass(slots=True)
class _Batch(Generic[T]):
    records: list[T]
    items: int
    """Input items the records came from (a list item holds several; an empty one none)."""


@dataclass(slots=True)
class _Held(Generic[T]):
    """A batch taken from the batcher and not yet settled."""

    batch: _Batch[T]
    prepared: list[TableBatch] | None = None


@dataclass(slots=True)
class _Result:
    reports: list[CommitReport] = field(default_factory=list)


class StoreWriter(Generic[T]):
    """Writes one family's records; `run` is the trio task."""

    def __init__(
        self,
        pool: ConnectionPool,
        family: Family[T],
        *,
        spool_dir: Path,
        max_rows: int = 5000,
        max_age: float = 0.2,
        spool_max_bytes: int = 1 << 30,
        backoff: Backoff | None = None,
        connection_timeout: float = 2.0,
        on_commit: Callable[[CommitReport], None] | None = None,
        pending_batches: int = 2,
    ) -> None:
        self.pool = pool
        self.family = family
        self.name = family.name
        self.max_rows = max_rows
        self.max_age = max_age
        # FSYNC: a spooled batch is settled, and an upstream acknowledges on that.
        self.spool = DiskSpool(
            spool_dir, spool_max_bytes, sync=SyncPolicy.FSYNC, name=f"store.{family.name}"
        )
        import_legacy_batches(Path(spool_dir), self.spool)
        self.backoff = backoff or Backoff(base=0.2, cap=10.0, healthy_after=0.0)
        self.connection_timeout = connection_timeout
        self.on_commit = on_commit
        self.pending_batches = pending_batches
        self._up = True
        self.taken = 0
        """Input items (records or lists) taken from the channel, total."""
        self.settled = 0
        """Of `taken`, the first ones whose batch is committed or durably spooled."""
        self.stalled = False
        """Holding input that neither the database nor the spool takes (backpressure)."""
        self._held: _Held[T] | None = None
        self._batches_sent = 0
        self._batches_settled = 0
        self._staged: WeakSet[psycopg.Connection[Any]] = WeakSet()
        STORE_UP.labels(self.name).set(1)
        STALLED.labels(self.name).set(0)
        SPOOL_DEPTH.labels(self.name).set(self.spool.depth_records)

    @property
    def healthy(self) -> bool:
        """The database took the last attempt (for /readyz)."""
        return self._up

    @property
    def idle(self) -> bool:
        """Nothing taken from the input is waiting: all committed or spooled to disk."""
        return self.settled == self.taken

    async def run(self, receive: trio.MemoryReceiveChannel[T | list[T]]) -> None:
        """Batch and commit until `receive` closes, then flush everything and return.

        Items are records or lists of records: a producer that has several at once (a shard
        after a chunk of input) saves a channel round trip per record by sending a list.

        Anything left in the spool from a previous run is replayed first, in order.
        """
        send_batch, receive_batch = trio.open_memory_channel[_Batch[T]](self.pending_batches)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._commit_loop, receive_batch)
            async with send_batch:
                await self._batch_loop(receive, send_batch)

    async def _batch_loop(
        self,
        receive: trio.MemoryReceiveChannel[T | list[T]],
        send_batch: trio.MemorySendChannel[_Batch[T]],
    ) -> None:
        # Records are converted to rows in the commit thread, not here: a second busy thread
        # would contend for the GIL with the one running COPY (measured: ~10 % slower).
        max_rows = self.max_rows
        pending: list[T] = []
        items = 0  # input items in `pending`; an empty list is one item and no record
        deadline = math.inf

        def take(item: T | list[T]) -> None:
            nonlocal items
            items += 1
            self.taken += 1
            if isinstance(item, list):
                pending.extend(item)
            else:
                pending.append(item)

        async with receive:
            while True:
                if items:
                    with trio.move_on_at(deadline):
                        try:
                            take(await receive.receive())
                        except trio.EndOfChannel:
                            break
                else:
                    try:
                        take(await receive.receive())
                    except trio.EndOfChannel:
                        break
                    deadline = trio.current_time() + self.max_age
                # Take what is already buffered without a checkpoint per row.
                while len(pending) < max_rows:
                    try:
                        take(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                if len(pending) >= max_rows or trio.current_time() >= deadline:
                    self._batches_sent += 1
                    await send_batch.send(_Batch(pending, items))
                    pending = []
                    items = 0
                    deadline = math.inf
        if items:
            self._batches_sent += 1
            await send_batch.send(_Batch(pending, items))

    def _settle(self, batch: _Batch[T]) -> None:
        """The batch is committed or safe in the on-disk spool."""
        self._batches_settled += 1
        self.settled += batch.items
        self._unstall()

    def _stall(self) -> None:
        """Neither the database nor the spool takes the next batch: the input waits."""
        if not self.stalled:
            self.stalled = True
            STALLED.labels(self.name).set(1)
            log.warning("store.stalled", family=self.name, spool=self.spool.full,
                        database_up=self._up, spool_bytes=self.spool.disk_bytes,
                        spooled_batches=self.spool.depth_records)

    def _unstall(self) -> None:
        if self.stalled:
            self.stalled = False
            STALLED.labels(self.name).set(0)
            log.info("store.unstalled", family=self.name)

    async def _commit_loop(self, batches: trio.MemoryReceiveChannel[_Batch[T]]) -> None:
        input_open = True
        async with batches:
            while True:
                if self.spool.depth_records:
                    input_open = await self._drain_spool(batches, input_open)
                    continue
                ready: list[TableBatch] | None = None
                if self._held is not None:
                    batch, ready, self._held = self._held.batch, self._held.prepared, None
                elif not input_open:
                    return
                else:
                    try:
                        batch = await batches.receive()
                    except trio.EndOfChannel:
                        return
                if not batch.records:
                    self._settle(batch)
                    continue
                # Convert and COPY in one trip to the worker thread: a second hand-off per
                # batch cost more than the conversion it moved off the event loop.
                prepared_box: list[list[TableBatch]] = []

                def prepare_and_commit(
                    items: list[T] = batch.records,
                    box: list[list[TableBatch]] = prepared_box,
                    ready: list[TableBatch] | None = ready,
                ) -> _Result:
                    box.append(ready if ready is not None else self._prepare(items))
                    return self._commit_sync(box[0], True)

                try:
                    await self._commit([], call=prepare_and_commit)
                except Outage:
                    prepared = prepared_box[0] if prepared_box else await trio.to_thread.run_sync(
                        self._prepare, batch.records
                    )
                    await self._spool_append(prepared)
                self._settle(batch)

    async def _drain_spool(
        self, batches: trio.MemoryReceiveChannel[_Batch[T]], input_open: bool
    ) -> bool:
        """Replay the spool oldest first until it is empty, spooling new input meanwhile."""
        while self.spool.depth_records:
            prepared = await self._peek()
            if prepared is None:
                break
            try:
                await self._commit(prepared)
            except Outage:
                RETRIES.labels(self.name).inc()
                delay = self.backoff.next_delay()
                log.info(
                    "store.retry_later",
                    family=self.name,
                    delay_s=round(delay, 3),
                    spooled_batches=self.spool.depth_records,
                )
                with trio.move_on_after(delay):
                    input_open = await self._spool_input(batches, input_open)
                continue
            await self._pop()
            self._unstall()
        self.backoff.reset()
        log.info("store.spool_drained", family=self.name)
        return input_open

    async def _peek(self) -> list[TableBatch] | None:
        """The oldest spooled batch; a record that does not decode is counted, logged and
        skipped like a torn one."""
        while True:
            payload = await trio.to_thread.run_sync(self._read_head)
            if payload is None:
                return None
            try:
                return [spooled_batch(*parts) for parts in pickle.loads(payload)]
            except Exception as exc:  # whatever does not decode is skipped, never a crash
                spool_corrupt.labels(self.spool.name).inc()
                self.spool.corrupt_records += 1
                log.error("spool.undecodable_record", spool=self.spool.name,
                          error=repr(exc)[:300], size=len(payload))
                await self._pop()

    def _read_head(self) -> bytes | None:
        self.spool.rewind()
        records = self.spool.read(1)
        return records[0] if records else None

    async def _pop(self) -> None:
        await trio.to_thread.run_sync(self.spool.commit)
        SPOOL_DEPTH.labels(self.name).set(self.spool.depth_records)

    async def _spool_input(
        self, batches: trio.MemoryReceiveChannel[_Batch[T]], input_open: bool
    ) -> bool:
        """While waiting to retry: move new batches to the spool, so the input keeps flowing.

        A batch received is held in `_held` until it is spooled: the retry timer cancels this
        at any point, and a held batch is spooled or committed before any later one."""
        while True:
            if self._held is None:
                if not input_open:
                    break
                try:
                    self._held = _Held(await batches.receive())
                except trio.EndOfChannel:
                    input_open = False
                    break
            held = self._held
            if held.prepared is None:
                held.prepared = await trio.to_thread.run_sync(self._prepare, held.batch.records)
            if not await self._spool_write(held.prepared):
                break
            self._held = None
            self._settle(held.batch)
        if self._held is not None:
            self._stall()
        await trio.sleep_forever()
        return input_open  # pragma: no cover - left by the caller's cancel scope

    async def _spool_write(self, prepared: list[TableBatch]) -> bool:
        """Append to the spool; False when it cannot take the batch now (counted and logged by
        the spool; the caller holds the batch and tries again later)."""
        if not any(batch.rows for batch in prepared):
            return True
        payload = pickle.dumps(
            [(b.table, b.rows, b.stamps_us) for b in prepared], protocol=pickle.HIGHEST_PROTOCOL
        )
        try:
            await trio.to_thread.run_sync(self.spool.append, payload)
        except SpoolFull:
            return False
        except SpoolError as exc:
            # Not a full disk (read-only, I/O error): the same remedy, held and retried.
            log.error("store.spool_write_failed", family=self.name, error=str(exc))
            return False
        SPOOL_DEPTH.labels(self.name).set(self.spool.depth_records)
        return True

    async def _spool_append(self, prepared: list[TableBatch]) -> None:
        """A direct commit failed: spool the batch, or hold it (and, by not returning, the
        input) trying the database and the spool by turns until one takes it."""
        while not await self._spool_write(prepared):
            self._stall()
            await trio.sleep(self.backoff.next_delay())
            if self.spool.depth_records:
                if not await self._try_replay_head():
                    continue
                if self.spool.depth_records:
                    continue  # room now, maybe: the spool first, to keep the order
            try:
                await self._commit(prepared)  # nothing spooled before it: order is kept
            except Outage:
                RETRIES.labels(self.name).inc()
                continue
            return

    async def _try_replay_head(self) -> bool:
        prepared = await self._peek()
        if prepared is None:
            return True
        try:
            await self._commit(prepared)
        except Outage:
            RETRIES.labels(self.name).inc()
            return False
        await self._pop()
        return True

    def _prepare(self, items: list[T]) -> list[TableBatch]:
        prepared = self.family.prepare(items)
        stored = sum(len(batch.rows) for batch in prepared)
        if self.name == "fixes" and stored < len(items):
            ROWS_SKIPPED.labels(self.name, "no_track").inc(len(items) - stored)
        return prepared

    async def _commit(
        self,
        prepared: list[TableBatch],
        *,
        direct: bool = False,
        call: Callable[[], _Result] | None = None,
    ) -> None:
        """Commit a prepared batch or raise Outage; acknowledge what committed.

        `direct`: the batch is new (not a replay), so try the insert-only fast path first.
        """
        started = time.perf_counter()
        try:
            result = await trio.to_thread.run_sync(
                call if call is not None else functools.partial(self._commit_sync, prepared, direct)
            )
        except Outage as exc:
            if self._up:
                log.warning("store.down", family=self.name, error=(str(exc).splitlines() or [type(exc).__name__])[0][:300])
            self._up = False
            STORE_UP.labels(self.name).set(0)
            raise
        if not self._up:
            log.info("store.up", family=self.name)
        self._up = True
        STORE_UP.labels(self.name).set(1)
        BATCH_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        for report in result.reports:
            self._acknowledge(report)

    def _acknowledge(self, report: CommitReport) -> None:
        ROWS_COMMITTED.labels(report.table).inc(report.rows)
        if report.rows > report.inserted:
            ROWS_DUPLICATE.labels(report.table).inc(report.rows - report.inserted)
        lag = COMMIT_LAG.labels(report.table)
        now_us = report.committed_us
        # sample: observing every row of a 5,000-row batch would cost more than the commit
        step = max(1, len(report.stamps_us) // 64)
        for stamp in report.stamps_us[::step]:
            lag.observe(max(0.0, (now_us - stamp) / 1e6))
        if self.on_commit is not None:
            self.on_commit(report)

    # ---- worker thread -------------------------------------------------------------------

    def _commit_sync(self, prepared: list[TableBatch], direct: bool = False) -> _Result:
        result = _Result()
        for batch in prepared:
            if not batch.rows:
                continue
            if direct and SPECS[batch.table].insert_only and self._copy_direct(batch, result):
                continue
            rejected = self._commit_isolating(batch, result)
            if rejected:
                ROWS_REJECTED.labels(batch.table).inc(rejected)
        return result

    def _commit_isolating(self, batch: TableBatch, result: _Result) -> int:
        """Commit `batch`, bisecting around rows the database refuses; return how many."""
        try:
            inserted = self._copy_merge(batch)
        except (psycopg.Error, TypeError, ValueError, OverflowError) as exc:
            # TypeError & co: a value psycopg cannot dump as the column's type.
            if is_outage(exc):
                raise Outage(str(exc)) from exc
            if len(batch.rows) == 1:
                sqlstate = getattr(exc, "sqlstate", None)
                # A feed can send the same bad value at line rate: one line a minute per table
                # and kind of refusal, with the count; every row is in soar_store_rows_rejected.
                _REJECTED_LOG.log(
                    (batch.table, sqlstate, type(exc).__name__),
                    "error",
                    "store.row_rejected",
                    table=batch.table,
                    row=repr(batch.rows[0])[:500],
                    error=str(exc).strip()[:500],
                    sqlstate=sqlstate,
                )
                return 1
            left, right = batch.split()
            return self._commit_isolating(left, result) + self._commit_isolating(right, result)
        result.reports.append(
            CommitReport(
                table=batch.table,
                rows=len(batch.rows),
                inserted=inserted,
                rejected=0,
                stamps_us=batch.stamps_us,
                committed_us=time.time_ns() // 1000,
            )
        )
        return 0

    def _copy_direct(self, batch: TableBatch, result: _Result) -> bool:
        """COPY straight into the table: twice the speed of staging + merge.

        COPY is all or nothing, so any row that would conflict (a replay, a duplicate) or be
        refused fails the whole attempt, and the batch takes the staging path instead.
        Returns whether the batch committed this way.
        """
        spec = SPECS[batch.table]
        try:
            with (
                self.pool.connection(timeout=self.connection_timeout) as conn,
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(spec.direct_copy_sql) as copy,
            ):
                copy.set_types(spec.types)
                for row in batch.rows:
                    copy.write_row(row)
        except (psycopg.Error, TypeError, ValueError, OverflowError) as exc:
            if is_outage(exc):
                raise Outage(str(exc)) from exc
            return False
        result.reports.append(
            CommitReport(
                table=batch.table,
                rows=len(batch.rows),
                inserted=len(batch.rows),
                rejected=0,
                stamps_us=batch.stamps_us,
                committed_us=time.time_ns() // 1000,
            )
        )
        return True

    def _copy_merge(self, batch: TableBatch) -> int:
        spec = SPECS[batch.table]
        with self.pool.connection(timeout=self.connection_timeout) as conn:
            if conn not in self._staged:
                with conn.transaction():
                    for other in SPECS.values():
                        conn.execute(other.create_stage_sql)
                self._staged.add(conn)
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(spec.copy_sql) as copy:
                    copy.set_types(spec.types)
                    for row in batch.rows:
                        copy.write_row(row)
                cur.execute(spec.merge_sql)
                return max(cur.rowcount, 0)


def open_pool(url: str, *, size: int = 4, name: str = "soar-store") -> ConnectionPool:
    """A pool for the writers: checked on checkout, so connections a restart killed are replaced."""
    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        name=name,
        open=False,
        check=ConnectionPool.check_connection,
        # psycopg_pool's own reconnect backoff doubles without a cap; giving up after a few
        # seconds hands the retry timing back to the writer (the next checkout reconnects).
        reconnect_timeout=5.0,
        kwargs={"connect_timeout": 5},
    )
    pool.open(wait=False)
    return pool
