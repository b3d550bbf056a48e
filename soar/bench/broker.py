"""JetStream throughput from trio through each bridge, beside plain asyncio nats-py (baseline).

    python -m soar.bench.broker [--envelopes 200000] [--per-message 100] [--partitions 4]

On one embedded nats-server (a temporary data directory), for each bridge (`thread`,
`trio-asyncio`) and for nats-py alone under `asyncio.run` in a worker thread (`asyncio`, the
baseline: no trio in the path), each in a fresh process of its own:

- publish: real OGN lines (the 5,000-line full-feed capture, repeated) as envelopes, encoded
  `--per-message` to a JetStream message, published with a msg id to `--partitions` partitions,
  `--window` messages in flight per bridge crossing, each waiting for its PubAck;
- pull+ack: one durable pull consumer per partition, all partitions concurrently, fetch in
  batches of `--fetch` messages and acknowledge each batch (one crossing), until every message
  published is in.

Rates are envelopes per second of wall time. The codec's own rate (encode and decode, no I/O)
is one more row. Each bridge gets a fresh stream, so runs do not see each other's messages.

May import: soar.broker, soar.records
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from soar.broker.bridge import BRIDGE_KINDS
from soar.broker.client import MSG_ID_HEADER, StreamSpec, open_link
from soar.broker.codec import decode_batch, encode_batch
from soar.broker.embedded import EmbeddedNats
from soar.records import Envelope, Protocol

CAPTURE = Path("ogn") / "svoop-ogn-full-feed-5000-20170419.txt"


@dataclass(frozen=True, slots=True)
class Row:
    runtime: str
    step: str
    envelopes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.envelopes / self.seconds if self.seconds > 0 else 0.0


def testdata_dir() -> Path:
    default = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return Path(os.environ.get("SOAR_TESTDATA", str(default)))


def load_envelopes(count: int, data_dir: Path | None = None) -> list[Envelope]:
    """`count` envelopes of real OGN lines, the capture repeated with advancing receive times."""
    lines = [line for line in (data_dir or testdata_dir()).joinpath(CAPTURE).read_bytes().splitlines()
             if line and not line.startswith(b"#")]
    start = 1_492_615_351_000_000
    return [Envelope(Protocol.OGN, start + i * 1000, lines[i % len(lines)], "bench")
            for i in range(count)]


def make_bodies(envelopes: Sequence[Envelope], per_message: int) -> list[bytes]:
    return [encode_batch(envelopes[i : i + per_message])
            for i in range(0, len(envelopes), per_message)]


def codec_rows(envelopes: Sequence[Envelope], per_message: int) -> list[Row]:
    started = time.perf_counter()
    bodies = make_bodies(envelopes, per_message)
    encoded = time.perf_counter() - started
    started = time.perf_counter()
    decoded = sum(len(decode_batch(body)) for body in bodies)
    return [Row("codec", "encode", len(envelopes), encoded),
            Row("codec", "decode", decoded, time.perf_counter() - started)]


# -- through a bridge, from trio --------------------------------------------------------------------


async def bridge_rows(url: str, bridge: Any, bodies: Sequence[bytes], per_message: int,
                      partitions: int, window: int, fetch: int) -> list[Row]:
    spec = StreamSpec(partitions=partitions, name=f"BENCH_{bridge.replace('-', '_').upper()}",
                      subject_prefix=f"bench.{bridge}", file_storage=True)
    total = len(bodies)
    envelopes = total * per_message
    async with open_link(url, bridge=bridge) as link:
        stream = await link.ensure_stream(spec)
        items = [(i % partitions, f"bench-{i}", body) for i, body in enumerate(bodies)]
        started = time.perf_counter()
        for i in range(0, total, window):
            await stream.publish_batches(items[i : i + window])
        published = time.perf_counter() - started

        received = 0
        started = time.perf_counter()

        async def drain(partition: int, expected: int) -> None:
            nonlocal received
            got = 0
            async with stream.consumer(partition) as consumer:
                while got < expected:
                    deliveries = await consumer.fetch(fetch, timeout=2.0)
                    await consumer.ack(deliveries)
                    got += len(deliveries)
            received += got

        async with trio.open_nursery() as nursery:
            for p in range(partitions):
                nursery.start_soon(drain, p, len(range(p, total, partitions)))
        pulled = time.perf_counter() - started
        assert received == total, (received, total)
    return [Row(bridge, "publish", envelopes, published),
            Row(bridge, "pull+ack", envelopes, pulled)]


# -- nats-py alone under asyncio: the baseline --------------------------------------------------------


def asyncio_rows(url: str, bodies: Sequence[bytes], per_message: int, partitions: int,
                 window: int, fetch: int) -> list[Row]:
    return asyncio.run(_asyncio_rows(url, bodies, per_message, partitions, window, fetch))


async def _asyncio_rows(url: str, bodies: Sequence[bytes], per_message: int, partitions: int,
                        window: int, fetch: int) -> list[Row]:
    import nats
    from nats.js import api

    spec = StreamSpec(partitions=partitions, name="BENCH_ASYNCIO", subject_prefix="bench.asyncio")
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(
        name=spec.name, subjects=[f"{spec.subject_prefix}.*"],
        retention=api.RetentionPolicy.WORK_QUEUE, storage=api.StorageType.FILE))
    total = len(bodies)
    started = time.perf_counter()
    for i in range(0, total, window):
        await asyncio.gather(*(
            js.publish(spec.subject(j % partitions), bodies[j], headers={MSG_ID_HEADER: f"b-{j}"})
            for j in range(i, min(i + window, total))))
    published = time.perf_counter() - started

    async def drain(partition: int, expected: int) -> int:
        await js.add_consumer(spec.name, api.ConsumerConfig(
            durable_name=spec.durable(partition), filter_subject=spec.subject(partition),
            ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=10_000))
        sub = await js.pull_subscribe_bind(durable=spec.durable(partition), stream=spec.name)
        got = 0
        while got < expected:
            try:
                msgs = await sub.fetch(fetch, timeout=2.0)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
            got += len(msgs)
        return got

    started = time.perf_counter()
    counts = await asyncio.gather(*(drain(p, len(range(p, total, partitions)))
                                    for p in range(partitions)))
    pulled = time.perf_counter() - started
    assert sum(counts) == total
    await nc.close()
    envelopes = total * per_message
    return [Row(BASELINE, "publish", envelopes, published),
            Row(BASELINE, "pull+ack", envelopes, pulled)]


# -- running it ------------------------------------------------------------------------------------

#: runtime names: the bridges, and nats-py alone
BASELINE = "asyncio"
RUNTIMES = (*BRIDGE_KINDS, BASELINE)


async def run_one(args: argparse.Namespace) -> list[Row]:
    """One runtime against the server at args.url (in a process of its own: importing
    trio_asyncio patches asyncio for the whole process, which would tax the others)."""
    bodies = make_bodies(load_envelopes(args.envelopes), args.per_message)
    if args.runtime == BASELINE:
        return await trio.to_thread.run_sync(
            asyncio_rows, args.url, bodies, args.per_message, args.partitions, args.window,
            args.fetch)
    return await bridge_rows(args.url, args.runtime, bodies, args.per_message, args.partitions,
                             args.window, args.fetch)


async def run(args: argparse.Namespace) -> list[Row]:
    envelopes = load_envelopes(args.envelopes)
    rows = codec_rows(envelopes, args.per_message)
    common = [f"--envelopes={args.envelopes}", f"--per-message={args.per_message}",
              f"--partitions={args.partitions}", f"--window={args.window}",
              f"--fetch={args.fetch}"]
    with tempfile.TemporaryDirectory(prefix="soar-bench-broker-") as tmp:
        server = EmbeddedNats(Path(tmp))
        url = await trio.to_thread.run_sync(server.start)
        # the child processes authenticate with the token as the URL's user (nats-py's way)
        url = url.replace("nats://", f"nats://{server.token}@", 1)
        try:
            for runtime in args.runtimes:
                done = await trio.run_process(
                    [sys.executable, "-m", "soar.bench.broker", *common, f"--url={url}",
                     f"--runtime={runtime}"], capture_stdout=True)
                rows += [Row(**json.loads(line)) for line in done.stdout.decode().splitlines()]
        finally:
            await trio.to_thread.run_sync(server.stop)
    return rows


def format_rows(rows: Sequence[Row]) -> str:
    lines = [f"{'runtime':<14} {'step':<9} {'envelopes':>10} {'seconds':>8} {'envelopes/s':>12}"]
    for row in rows:
        lines.append(f"{row.runtime:<14} {row.step:<9} {row.envelopes:>10} "
                     f"{row.seconds:>8.2f} {row.rate:>12,.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soar.bench.broker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envelopes", type=int, default=200_000)
    parser.add_argument("--per-message", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--window", type=int, default=64, help="publishes in flight per crossing")
    parser.add_argument("--fetch", type=int, default=64, help="messages per fetch")
    parser.add_argument("--only", dest="runtimes", action="append", choices=RUNTIMES,
                        help="runtime to measure (repeatable; default: all)")
    # internal: one runtime, in this process, against a running server; JSON rows out
    parser.add_argument("--runtime", choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.runtime:
        for row in trio.run(run_one, args):
            print(json.dumps(dataclasses.asdict(row)))
        return 0
    args.runtimes = args.runtimes or list(RUNTIMES)
    print(format_rows(trio.run(run, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
