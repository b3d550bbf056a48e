"""Supervisor semantics under MockClock: restart with backoff, intensity, escalation, policies."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Awaitable, Callable

import pytest
import structlog
import trio
import trio.testing
from prometheus_client import REGISTRY

from soar.supervisor import (
    ChildSpec,
    ChildState,
    RestartPolicy,
    Supervisor,
    SupervisorEscalation,
)


def restarts_metric(task: str) -> float:
    return REGISTRY.get_sample_value("soar_task_restarts_total", {"task": task}) or 0.0


def running_metric(task: str) -> float | None:
    return REGISTRY.get_sample_value("soar_task_running", {"task": task})


class Script:
    """A child that records when it starts and crashes its first `crashes` runs."""

    def __init__(self, crashes: int, *, then: str = "sleep", run_for: float = 0.0) -> None:
        self.crashes = crashes
        self.then = then
        self.run_for = run_for
        self.starts: list[float] = []

    async def __call__(self) -> None:
        self.starts.append(trio.current_time())
        if self.run_for:
            await trio.sleep(self.run_for)
        if len(self.starts) <= self.crashes:
            raise ValueError(f"boom {len(self.starts)}")
        if self.then == "sleep":
            await trio.sleep_forever()


def supervisor(name: str, children: list[ChildSpec], **kwargs: float) -> Supervisor:
    kwargs.setdefault("backoff_base", 1.0)
    kwargs.setdefault("backoff_cap", 60.0)
    return Supervisor(name, children, jitter=0.0, **kwargs)  # type: ignore[arg-type]


async def run_for(sup: Supervisor, seconds: float) -> None:
    with trio.move_on_after(seconds):
        await sup.run()


async def test_crashed_child_is_restarted_after_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    child = Script(crashes=3)
    steady = Script(crashes=0)
    sup = supervisor("t1", [ChildSpec("t1.flaky", child), ChildSpec("t1.steady", steady)])
    before = restarts_metric("t1.flaky")

    with structlog.testing.capture_logs() as logs:
        await run_for(sup, 100)

    # 1 s doubling: restarts at +1, +1+2, +1+2+4.
    assert [t - t0 for t in child.starts] == pytest.approx([0, 1, 3, 7])
    assert restarts_metric("t1.flaky") - before == 3
    assert restarts_metric("t1.steady") == 0
    # one_for_one: the sibling was never restarted.
    assert [t - t0 for t in steady.starts] == [0]
    crashes = [e for e in logs if e["event"] == "task.crashed"]
    assert len(crashes) == 3
    assert all(e["task"] == "t1.flaky" and e["exc_info"] is True for e in crashes)
    assert crashes[0]["error"] == "ValueError: boom 1"
    assert crashes[0]["log_level"] == "error"


async def test_jittered_delays_stay_within_the_jitter_band(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    child = Script(crashes=5)
    sup = Supervisor(
        "t2",
        [ChildSpec("t2.flaky", child)],
        max_restarts=10,
        backoff_base=1.0,
        backoff_cap=4.0,
        jitter=0.5,
        rng=random.Random(7),
    )
    await run_for(sup, 100)
    gaps = [b - a for a, b in itertools.pairwise(child.starts)]
    assert len(gaps) == 5
    for gap, nominal in zip(gaps, [1, 2, 4, 4, 4], strict=True):
        assert nominal * 0.5 <= gap <= nominal
    assert len(set(gaps[2:])) == 3, "jitter spreads delays at the cap"
    assert child.starts[0] == t0


async def test_too_many_crashes_within_period_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    always = Script(crashes=10**6)
    sibling_cancelled = trio.Event()

    async def sibling() -> None:
        try:
            await trio.sleep_forever()
        finally:
            sibling_cancelled.set()

    sup = supervisor(
        "t3", [ChildSpec("t3.always", always), ChildSpec("t3.sibling", sibling)], max_restarts=3
    )
    with pytest.raises(SupervisorEscalation) as info:
        await sup.run()

    # Crashes at 0, 1, 3, 7: the fourth is one more than max_restarts=3 within 60 s.
    assert [t - t0 for t in always.starts] == pytest.approx([0, 1, 3, 7])
    assert trio.current_time() - t0 == pytest.approx(7)
    assert info.value.child == "t3.always"
    assert info.value.supervisor == "t3"
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.__cause__) == "boom 4"
    assert "t3.always" in str(info.value) and "boom 4" in str(info.value)
    assert sibling_cancelled.is_set()
    assert sup.state == "failed"
    assert sup.tree()["children"]["t3.always"]["state"] == "failed"
    assert REGISTRY.get_sample_value("soar_supervisor_escalations_total", {"supervisor": "t3"}) == 1


async def test_crashes_spread_over_more_than_period_do_not_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Each run lasts 20 s before crashing: never more than 2 crashes in any 30 s window.
    child = Script(crashes=10**6, run_for=20.0)
    sup = supervisor(
        "t4", [ChildSpec("t4.slow", child)], max_restarts=2, period=30.0, backoff_cap=5.0
    )
    await run_for(sup, 300)
    assert len(child.starts) >= 8
    assert sup.tree()["children"]["t4.slow"]["restarts"] == len(child.starts) - 1


async def test_crash_after_a_healthy_period_restarts_quickly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Two quick crashes push the backoff to 4 s; a run longer than the period resets it to 1 s.
    runs = iter([0.0, 0.0, 100.0, 0.0])
    starts: list[float] = []

    async def child() -> None:
        starts.append(trio.current_time())
        await trio.sleep(next(runs, 1000.0))
        raise ValueError("boom")

    sup = supervisor("t5", [ChildSpec("t5.child", child)], max_restarts=10, period=50.0)
    await run_for(sup, 200)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Without the reset the third gap would be 100 + 4.
    assert gaps[:4] == pytest.approx([1, 2, 100 + 1, 2])


async def test_escalation_through_two_levels(autojump_clock: trio.testing.MockClock) -> None:
    always = Script(crashes=10**6)
    inner = supervisor("t6.inner", [ChildSpec("t6.leaf", always)], max_restarts=1)
    outer = supervisor("t6.outer", [ChildSpec("t6.inner", inner.run)], max_restarts=1)
    before = restarts_metric("t6.inner")

    with pytest.raises(SupervisorEscalation) as info:
        await outer.run()

    # inner gives up after 2 leaf crashes; outer restarts it once, then gives up too.
    assert len(always.starts) == 4
    assert info.value.supervisor == "t6.outer" and info.value.child == "t6.inner"
    inner_escalation = info.value.__cause__
    assert isinstance(inner_escalation, SupervisorEscalation)
    assert inner_escalation.supervisor == "t6.inner" and inner_escalation.child == "t6.leaf"
    assert isinstance(inner_escalation.__cause__, ValueError)
    assert restarts_metric("t6.inner") - before == 1


async def test_outer_restart_of_inner_supervisor_recovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    leaf = Script(crashes=3)  # inner escalates after 2, the restarted inner survives the 3rd
    other = Script(crashes=0)
    inner = supervisor("t7.inner", [ChildSpec("t7.leaf", leaf)], max_restarts=1)
    outer = supervisor(
        "t7.outer",
        [ChildSpec("t7.inner", inner.run), ChildSpec("t7.other", other)],
        max_restarts=3,
    )
    seen: dict[str, object] = {}

    async def probe() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outer.run)
            await trio.sleep(100)
            seen.update(outer.tree())
            outer.stop()

    await probe()
    assert len(leaf.starts) == 4
    assert len(other.starts) == 1, "a sibling of the failed subtree is not restarted"
    assert seen["state"] == "running"
    children = seen["children"]
    assert isinstance(children, dict)
    node = children["t7.inner"]
    assert node["state"] == "running"
    assert node["restarts"] == 1
    assert node["last_error"].startswith("SupervisorEscalation: supervisor 't7.inner'")
    nested = node["supervisor"]
    assert nested["name"] == "t7.inner"
    assert nested["children"]["t7.leaf"] == {
        "state": "running",
        "policy": "permanent",
        # Cumulative across the inner supervisor's runs; the escalating crash is no restart.
        "restarts": 2,
        "crashes": 3,
        "last_error": "ValueError: boom 3",
    }
    assert children["t7.other"]["restarts"] == 0
    assert outer.state == "stopped"


async def test_cancellation_is_never_a_crash(autojump_clock: trio.testing.MockClock) -> None:
    async def plain() -> None:
        await trio.sleep_forever()

    async def with_nursery() -> None:
        # Cancellation arrives here through a nursery of several tasks.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(trio.sleep_forever)

    async def raises_on_cancel() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise RuntimeError("cleanup failed")

    async def returns_on_cancel() -> None:
        # Some servers end their serve loop by returning once shutdown starts.
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            return

    names = ["t8.plain", "t8.nursery", "t8.cleanup", "t8.returns"]
    before = {n: restarts_metric(n) for n in names}
    sup = supervisor(
        "t8",
        [
            ChildSpec("t8.plain", plain),
            ChildSpec("t8.nursery", with_nursery),
            ChildSpec("t8.cleanup", raises_on_cancel),
            ChildSpec("t8.returns", returns_on_cancel),
        ],
        max_restarts=0,
    )
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(10)
            assert all(running_metric(n) == 1 for n in names)
            sup.stop()

    assert sup.state == "stopped"
    assert {n: restarts_metric(n) for n in names} == before
    tree = sup.tree()["children"]
    assert all(tree[n]["restarts"] == 0 for n in names)
    assert all(running_metric(n) == 0 for n in names)
    assert [e["event"] for e in logs if e["event"].startswith("task.crash")] == [
        "task.crashed_during_shutdown"
    ]
    assert not [
        e for e in logs if e["event"] in ("task.crashed", "task.restarting", "task.returned")
    ]
    assert all(tree[n]["state"] == "finished" for n in names)


async def test_outer_cancellation_propagates_through_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup = supervisor("t9", [ChildSpec("t9.sleeper", Script(crashes=0))])
    with trio.move_on_after(5) as scope:
        await sup.run()
    assert scope.cancelled_caught
    assert sup.state == "stopped"
    assert sup.tree()["children"]["t9.sleeper"]["state"] == "finished"


async def test_restart_policies_on_normal_return(autojump_clock: trio.testing.MockClock) -> None:
    counts = {"permanent": 0, "transient": 0, "temporary": 0}

    def returning(kind: str, times: int) -> Callable[[], Awaitable[None]]:
        async def child() -> None:
            counts[kind] += 1
            if counts[kind] > times:
                await trio.sleep_forever()

        return child

    sup = supervisor(
        "t10",
        [
            ChildSpec("t10.permanent", returning("permanent", 2), RestartPolicy.PERMANENT),
            ChildSpec("t10.transient", returning("transient", 2), RestartPolicy.TRANSIENT),
            ChildSpec("t10.temporary", returning("temporary", 2), RestartPolicy.TEMPORARY),
        ],
    )
    await run_for(sup, 50)
    assert counts == {"permanent": 3, "transient": 1, "temporary": 1}
    tree = sup.tree()["children"]
    assert tree["t10.permanent"]["restarts"] == 2
    assert tree["t10.transient"]["state"] == "finished"
    assert tree["t10.temporary"]["state"] == "finished"


async def test_restart_policies_on_crash(autojump_clock: trio.testing.MockClock) -> None:
    transient = Script(crashes=1, then="return")
    temporary = Script(crashes=1, then="return")
    before = restarts_metric("t11.temporary")
    sup = supervisor(
        "t11",
        [
            ChildSpec("t11.transient", transient, RestartPolicy.TRANSIENT),
            ChildSpec("t11.temporary", temporary, RestartPolicy.TEMPORARY),
        ],
    )
    # Both end for good (transient after its restart returns), so run() returns by itself.
    await sup.run()
    assert len(transient.starts) == 2
    assert len(temporary.starts) == 1
    assert restarts_metric("t11.temporary") == before
    tree = sup.tree()
    assert tree["state"] == "finished"
    assert tree["children"]["t11.transient"]["state"] == "finished"
    assert tree["children"]["t11.temporary"]["state"] == "failed"
    assert tree["children"]["t11.temporary"]["last_error"] == "ValueError: boom 1"


async def test_permanent_child_that_keeps_returning_escalates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def returns() -> None:
        return

    sup = supervisor("t12", [ChildSpec("t12.returns", returns)], max_restarts=2)
    with pytest.raises(SupervisorEscalation) as info:
        await sup.run()
    assert info.value.__cause__ is None
    assert "returned" in str(info.value)


async def test_tree_states_while_running_and_backing_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Script(crashes=10**6, run_for=1.0)
    sup = supervisor(
        "t13",
        [ChildSpec("t13.flaky", flaky, backoff_base=10.0), ChildSpec("t13.ok", Script(crashes=0))],
        max_restarts=10,
    )
    assert sup.tree()["children"]["t13.flaky"]["state"] == "starting"
    snapshots: list[dict[str, object]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep(0.5)  # flaky is running its first second
        snapshots.append(sup.tree())
        await trio.sleep(1.0)  # crashed at 1 s, backing off 10 s
        snapshots.append(sup.tree())
        nursery.cancel_scope.cancel()
    running, backing_off = (s["children"] for s in snapshots)
    assert isinstance(running, dict) and isinstance(backing_off, dict)
    assert running["t13.flaky"] == {
        "state": "running",
        "policy": "permanent",
        "restarts": 0,
        "crashes": 0,
        "last_error": None,
    }
    assert backing_off["t13.flaky"]["state"] == "backing_off"
    assert backing_off["t13.flaky"]["restarts"] == 1
    assert backing_off["t13.flaky"]["last_error"] == "ValueError: boom 1"
    assert backing_off["t13.ok"]["state"] == "running"
    assert snapshots[1]["recent_restarts"] == 1
    json.dumps(snapshots)  # JSON-able as /healthz serves it


async def test_child_log_lines_carry_the_task_name(autojump_clock: trio.testing.MockClock) -> None:
    child_log = structlog.get_logger("test.child")

    async def child() -> None:
        child_log.info("child.working")
        raise ValueError("boom")

    sup = supervisor("t14", [ChildSpec("t14.child", child, RestartPolicy.TEMPORARY)])
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        await sup.run()
        child_log.info("outside")
    by_event = {e["event"]: e for e in logs}
    assert by_event["child.working"]["task"] == "t14.child"
    assert "task" not in by_event["outside"]


def test_duplicate_child_names_are_rejected() -> None:
    async def noop() -> None:
        return

    with pytest.raises(ValueError, match="duplicate"):
        Supervisor("t15", [ChildSpec("a", noop), ChildSpec("a", noop)])


async def test_stop_before_run_returns_at_once(autojump_clock: trio.testing.MockClock) -> None:
    child = Script(crashes=0)
    sup = supervisor("t16", [ChildSpec("t16.child", child)])
    sup.stop()
    await sup.run()
    assert sup.state == "stopped"
    assert child.starts == []
    assert ChildState.FINISHED.value == "finished"


def test_states_are_enums_whose_values_are_what_healthz_shows() -> None:
    from soar.supervisor import SupervisorState

    assert [s.value for s in ChildState] == [
        "starting", "running", "backing_off", "finished", "failed", "stopped"]
    assert [s.value for s in SupervisorState] == [
        "idle", "running", "stopped", "finished", "failed"]
    sup = Supervisor("t14", [ChildSpec("t14.child", trio.sleep_forever)])
    tree = json.loads(json.dumps(sup.tree()))  # plain strings on the wire
    assert tree["state"] == "idle" and tree["children"]["t14.child"]["state"] == "starting"


async def test_an_optional_child_that_keeps_crashing_is_stopped_and_its_siblings_run_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Script(crashes=100)
    steady = Script(crashes=0, then="sleep")
    sup = Supervisor("t15", [ChildSpec("t15.flaky", flaky, essential=False),
                             ChildSpec("t15.steady", steady)], max_restarts=3, period=60.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep(50)  # mock clock: backoffs 0.5 + 1 + 2 s, then given up
        tree = sup.tree()
        assert tree["state"] == "running"
        assert tree["children"]["t15.flaky"]["state"] == "stopped"
        assert tree["children"]["t15.flaky"]["essential"] is False
        assert tree["children"]["t15.steady"]["state"] == "running"
        assert len(flaky.starts) == 4  # the first run and three restarts
        assert REGISTRY.get_sample_value("soar_stage_stopped", {"stage": "t15.flaky"}) == 1
        assert tree["recent_restarts"] == 0, "its restarts do not eat its siblings' budget"
        sup.stop()
    assert sup.state == "stopped"
