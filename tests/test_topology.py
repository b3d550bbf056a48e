"""Edges (each full-edge policy, with its metrics and counts) and stages under one root."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from prometheus_client import REGISTRY

from soar.overflow import OverflowSink
from soar.records import Envelope, Protocol
from soar.supervisor import ChildSpec, RestartPolicy, SupervisorEscalation
from soar.topology import Edge, EdgePolicy, Stage, Topology

OGN_TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"


def envelopes(testdata: Path, n: int) -> list[Envelope]:
    """The first `n` lines of a real OGN capture, as the APRS-IS client makes them."""
    lines = (testdata / OGN_TRACE).read_text().splitlines()[:n]
    assert len(lines) == n
    return [Envelope(Protocol.OGN, i * 1000, line.partition(" ")[2].encode(), "test")
            for i, line in enumerate(lines)]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_block_edge_waits_for_room_and_loses_nothing(testdata: Path) -> None:
    edge = Edge[Envelope]("t.block", 3, EdgePolicy.BLOCK)
    items = envelopes(testdata, 10)
    got: list[Envelope] = []

    async def consume() -> None:
        async for env in edge.receiver():
            got.append(env)

    async with trio.open_nursery() as nursery:
        for env in items[:3]:
            await edge.send(env)
        assert edge.depth == 3 and sample("soar_edge_depth", edge="t.block") == 3
        with trio.move_on_after(0.05) as blocked:  # full: the fourth send waits
            await edge.send(items[3])
        assert blocked.cancelled_caught and edge.sent == 3
        nursery.start_soon(consume)
        for env in items[3:]:
            await edge.send(env)
        await edge.aclose()
    assert got == items
    assert edge.sent == edge.done == 10
    assert sample("soar_edge_dropped_total", edge="t.block", reason="full") == 0


async def test_drop_newest_edge_refuses_when_full_and_counts_it(testdata: Path) -> None:
    edge = Edge[Envelope]("t.newest", 4, EdgePolicy.DROP_NEWEST)
    items = envelopes(testdata, 10)
    for env in items:
        await edge.send(env)  # never waits
    assert edge.sent == 4 and edge.depth == 4
    assert sample("soar_edge_dropped_total", edge="t.newest", reason="full") == 6
    receiver = edge.receiver()
    await edge.aclose()
    assert [env async for env in receiver] == items[:4]
    assert edge.done == 4


async def test_drop_oldest_edge_keeps_the_newest_and_counts_the_evicted_done(
    testdata: Path,
) -> None:
    edge = Edge[Envelope]("t.oldest", 4, EdgePolicy.DROP_OLDEST)
    receiver = edge.receiver()
    items = envelopes(testdata, 10)
    for env in items:
        assert edge.offer(env)
    assert edge.sent == 10 and edge.depth == 4
    assert edge.done == 6, "an evicted item is finished with: a watermark must not wait for it"
    assert sample("soar_edge_dropped_total", edge="t.oldest", reason="evicted") == 6
    await edge.aclose()
    assert [env async for env in receiver] == items[6:]
    assert edge.done == edge.sent


async def test_dropping_edge_with_its_consumer_gone_counts_closed(testdata: Path) -> None:
    edge = Edge[Envelope]("t.gone", 4, EdgePolicy.DROP_NEWEST)
    edge.receiver().close()
    edge._receive.close()  # the edge's own end too: nobody can read any more
    assert not edge.offer(envelopes(testdata, 1)[0])
    assert sample("soar_edge_dropped_total", edge="t.gone", reason="closed") == 1


async def test_spill_edge_spools_when_full_and_feeds_back_in_order(
    testdata: Path, tmp_path: Path
) -> None:
    edge = Edge[Envelope](
        "t.spill", 5, EdgePolicy.SPILL,
        spill=lambda send: OverflowSink(Protocol.OGN, send, tmp_path / "spool", 1 << 20),
    )
    assert edge.spill is not None
    edge.spill.open()
    items = envelopes(testdata, 50)
    for env in items:
        await edge.send(env)  # never waits: what does not fit goes to disk
    assert edge.sent == 50
    assert sample("soar_edge_spilled_total", edge="t.spill") == 45
    assert edge.depth == 50, "the depth counts what waits on disk too"
    got: list[Envelope] = []
    receiver = edge.receiver()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(edge.spill.drain)
        while len(got) < 50:
            got.append(await receiver.receive())
        nursery.cancel_scope.cancel()
    receiver.finished()
    assert got == items
    assert edge.done == 50 and edge.depth == 0


async def test_receiver_counts_done_only_when_the_next_item_is_asked_for(testdata: Path) -> None:
    edge = Edge[Envelope]("t.done", 10, EdgePolicy.BLOCK)
    for env in envelopes(testdata, 3):
        await edge.send(env)
    receiver = edge.receiver()
    receiver.receive_nowait()
    assert edge.done == 0, "the consumer still holds the first item"
    await receiver.receive()
    assert edge.done == 1
    receiver.close()
    assert edge.done == 2


def test_edge_policy_and_spill_buffer_go_together() -> None:
    with pytest.raises(ValueError, match="SPILL"):
        Edge[Envelope]("t.bad", 4, EdgePolicy.SPILL)
    with pytest.raises(ValueError, match="bound"):
        Edge[Envelope]("t.bad0", 0, EdgePolicy.DROP_OLDEST)


# -- stages --------------------------------------------------------------------------------


async def test_a_stage_closes_its_outputs_when_it_ends_so_the_next_one_drains(
    testdata: Path,
) -> None:
    first = Edge[Envelope]("t.chain.a", 2)
    second = Edge[Envelope]("t.chain.b", 2)
    items = envelopes(testdata, 20)
    out: list[Envelope] = []

    async def produce() -> None:
        for env in items:
            await first.send(env)

    async def relay() -> None:
        async for env in first.receiver():
            await second.send(env)

    async def sink() -> None:
        async for env in second.receiver():
            out.append(env)

    topology = Topology("t.chain", [
        Stage("produce", [ChildSpec("t.chain.produce", produce, RestartPolicy.TRANSIENT)],
              outputs=[first]),
        Stage("relay", [ChildSpec("t.chain.relay", relay, RestartPolicy.TRANSIENT)],
              outputs=[second]),
        Stage("sink", [ChildSpec("t.chain.sink", sink, RestartPolicy.TRANSIENT)]),
    ])
    with trio.fail_after(10):
        await topology.run()
    assert out == items
    assert set(topology.edges) == {"t.chain.a", "t.chain.b"}
    assert (first.sent, first.done, second.sent, second.done) == (20, 20, 20, 20)
    tree = topology.tree()
    assert tree["name"] == "t.chain" and tree["state"] == "finished"
    node = tree["children"]["relay"]
    assert node["state"] == "finished"
    assert node["supervisor"]["children"]["t.chain.relay"]["state"] == "finished"


async def test_an_optional_stage_that_keeps_crashing_is_stopped_and_reported() -> None:
    crashes = 0
    beats = 0

    async def broken() -> None:
        nonlocal crashes
        crashes += 1
        raise OSError(28, "No space left on device")

    async def essential() -> None:
        nonlocal beats
        while True:
            beats += 1
            await trio.sleep(0.001)

    archive = Stage("t.opt.archive",
                    [ChildSpec("t.opt.archive.task", broken, backoff_base=0.001,
                               backoff_cap=0.001)],
                    essential=False, max_restarts=3)
    core = Stage("t.opt.core", [ChildSpec("t.opt.core.task", essential)])
    topology = Topology("t.opt", [archive, core])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(topology.run)
        with trio.fail_after(10):
            while archive.supervisor.state != "finished":
                await trio.sleep(0.01)
        beats_then = beats
        with trio.fail_after(10):
            while beats < beats_then + 10:  # the rest runs on
                await trio.sleep(0.01)
        tree = topology.tree()
        assert tree["state"] == "running"
        node = tree["children"]["t.opt.archive"]["supervisor"]["children"]["t.opt.archive.task"]
        assert node["state"] == "stopped" and node["essential"] is False
        assert "No space left on device" in node["last_error"]
        assert sample("soar_stage_stopped", stage="t.opt.archive.task") == 1
        topology.stop()
    assert crashes == 4  # the first run and three restarts


async def test_an_essential_stage_that_keeps_crashing_fails_the_process() -> None:
    async def broken() -> None:
        raise RuntimeError("corrupt state")

    async def other() -> None:
        await trio.sleep_forever()

    topology = Topology("t.ess", [
        Stage("t.ess.shards", [ChildSpec("t.ess.shard", broken, backoff_base=0.001,
                                         backoff_cap=0.001)], max_restarts=2),
        Stage("t.ess.web", [ChildSpec("t.ess.web.task", other)]),
    ])
    with pytest.raises(SupervisorEscalation) as raised, trio.fail_after(10):
        await topology.run()
    assert raised.value.supervisor == "t.ess"
    assert raised.value.child == "t.ess.shards"
    assert topology.tree()["state"] == "failed"
    assert topology.tree()["children"]["t.ess.shards"]["supervisor"]["state"] == "failed"


# -- the data path's optional stage, for real --------------------------------------------------


@pytest.mark.slow
async def test_raw_archive_on_an_unwritable_disk_is_stopped_and_the_fixes_still_committed(
    testdata: Path, tmp_path: Path, db_url: str
) -> None:
    import shutil

    from structlog.testing import capture_logs

    from soar.config import load_settings
    from soar.pipeline import EnvelopeSink, Pipeline, SourceSpec

    if shutil.which("chattr") is None:
        pytest.skip("chattr not installed")
    settings = load_settings(environ={}, overrides={
        "data_dir": str(tmp_path / "var"), "shards": 2, "archive_raw": True, "channel_size": 64})
    archive_dir = tmp_path / "var" / "archive"
    archive_dir.mkdir(parents=True)
    items = envelopes(testdata, 1183)
    holder: list[Pipeline] = []

    def archive_state() -> dict[str, object]:
        tree = holder[0].tree()
        node: dict[str, object] = tree["children"]["archive"]["supervisor"]["children"]["archive"]
        return node

    async def feed(sink: EnvelopeSink) -> None:
        # keep feeding until the archive has given up: each of its restarts crashes on the
        # next batch it tries to write (chmod would not do: tests run as root)
        sent = 0
        while archive_state()["state"] != "stopped":
            assert sent < len(items), "the archive never stopped"
            await sink.send(items[sent])
            sent += 1
            await trio.sleep(0.01)
        for env in items[sent:]:
            await sink.send(env)

    pipeline = Pipeline(settings, db_url, sources=[
        SourceSpec("ogn", Protocol.OGN, feed, RestartPolicy.TEMPORARY)])
    holder.append(pipeline)
    await pipeline.open()
    await trio.run_process(["chattr", "+i", str(archive_dir)], capture_stdout=True)
    try:
        with capture_logs() as logs, trio.fail_after(180):
            await pipeline.run()  # ends normally: the process was not taken down
    finally:
        await trio.run_process(["chattr", "-i", str(archive_dir)], capture_stdout=True)
        await pipeline.close()
    node = archive_state()
    assert node["state"] == "stopped" and node["essential"] is False
    assert "Operation not permitted" in str(node["last_error"])
    assert sample("soar_stage_stopped", stage="archive") == 1
    assert [e for e in logs if e["event"] == "task.stopped" and e["task"] == "archive"]
    assert pipeline.tree()["state"] == "finished"
    summary = pipeline.summary()
    assert summary["messages"] == 1183 and summary["fixes"] > 1000
    # what the archive could not take was counted, not lost silently
    assert sample("soar_edge_dropped_total", edge="archive", reason="full") > 0
