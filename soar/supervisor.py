"""Erlang/OTP `one_for_one` supervision on trio.

A `Supervisor` runs each child in its own nursery. A child that crashes is logged with its
traceback, counted in `soar_task_restarts_total{task}` and restarted after a jittered
exponential backoff; only that child restarts, the others keep running. More than
`max_restarts` restarts (of any child) within `period` seconds means restarting is not helping:
the supervisor cancels all its children and raises `SupervisorEscalation` to its parent, which
decides in turn. `Supervisor.run` is itself a child function, so trees nest:

    pipelines = Supervisor("pipelines", [ChildSpec("ogn", ogn.run), ChildSpec("beast", beast.run)])
    root = Supervisor("root", [ChildSpec("pipelines", pipelines.run), ChildSpec("web", web)])
    await root.run()

Restart policies (when a child ends):

    ===========  ===============  ==============
    policy       returned         raised
    ===========  ===============  ==============
    PERMANENT    restarted        restarted
    TRANSIENT    finished         restarted
    TEMPORARY    finished         failed (kept)
    ===========  ===============  ==============

Cancellation is never a crash: `trio.Cancelled` (bare or in an ExceptionGroup of nothing but
cancellations) passes straight through, and an error raised while the supervisor is being
cancelled is logged but neither counted nor restarted. `KeyboardInterrupt` and `SystemExit`
also pass through untouched.

A child may be optional (`ChildSpec(essential=False)`): when restarting it does not help it is
stopped and reported, and its supervisor runs on without it (see `soar.topology`).

Child names are metric labels and the `task` field of every log line the child writes (bound
with structlog contextvars inside the child's task), so keep them unique across the whole tree
("source.ogn", "shard.3").

May import: soar.backoff
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio
from prometheus_client import Counter, Gauge

from soar.backoff import Backoff

log = structlog.get_logger(__name__)

task_restarts = Counter(
    "soar_task_restarts",
    "Supervised tasks restarted after a crash or an unexpected return",
    ["task"],
)
task_running = Gauge("soar_task_running", "1 while the supervised task is running", ["task"])
stage_stopped = Gauge(
    "soar_stage_stopped",
    "1 when an optional task kept crashing and was stopped (the process runs on without it)",
    ["stage"],
)
supervisor_escalations = Counter(
    "soar_supervisor_escalations",
    "Supervisors that gave up (too many restarts within their period) and failed to their parent",
    ["supervisor"],
)


class RestartPolicy(enum.Enum):
    PERMANENT = "permanent"
    """Always restarted, even after a normal return: a task that should run forever."""
    TRANSIENT = "transient"
    """Restarted only after a crash: a task that may finish its work."""
    TEMPORARY = "temporary"
    """Never restarted: a crash is logged and the child stays failed."""


class ChildState(enum.StrEnum):
    """What /healthz shows for each child (the string values are its API)."""

    STARTING = "starting"
    RUNNING = "running"
    BACKING_OFF = "backing_off"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    """An optional child that kept crashing, given up on without failing its supervisor."""


class SupervisorState(enum.StrEnum):
    """What /healthz shows for each supervisor (the string values are its API)."""

    IDLE = "idle"
    RUNNING = "running"
    STOPPED = "stopped"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True)
class ChildSpec:
    name: str
    fn: Callable[[], Awaitable[None]]
    """Called with no arguments at each (re)start; use functools.partial or a closure for args."""
    policy: RestartPolicy = RestartPolicy.PERMANENT
    backoff_base: float | None = None
    """First restart delay in seconds; None takes the supervisor's."""
    backoff_cap: float | None = None
    essential: bool = True
    """False: when restarting does not help (more than the supervisor's `max_restarts` of this
    child within its `period`), the child is stopped and reported (`soar_stage_stopped`, a
    `task.stopped` log line, state `stopped` with its last error) and its siblings run on.
    Its restarts count against its own budget, not its siblings'."""
    subtree: Supervisor | None = None
    """The supervisor `fn` runs, when it is not `Supervisor.run` itself: shown nested."""


class SupervisorEscalation(Exception):
    """A supervisor gave up: `child` crashed once too often. Raised `from` that crash."""

    def __init__(
        self, supervisor: str, child: str, error: BaseException | None, restarts: int, period: float
    ) -> None:
        what = _describe(error) if error is not None else "returned (permanent task)"
        super().__init__(
            f"supervisor {supervisor!r}: child {child!r} {what}; more than {restarts} restarts "
            f"within {period:g} s, giving up"
        )
        self.supervisor = supervisor
        self.child = child
        self.error = error


@dataclass
class _Child:
    spec: ChildSpec
    backoff: Backoff
    state: ChildState = ChildState.STARTING
    restarts: int = 0
    crashes: int = 0
    last_error: str | None = None
    started_at: float | None = None
    #: restart times of an optional child (an essential one counts in the supervisor's)
    own_restarts: deque[float] = field(default_factory=deque)


class Supervisor:
    def __init__(
        self,
        name: str,
        children: list[ChildSpec],
        max_restarts: int = 5,
        period: float = 60.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        *,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        names = [spec.name for spec in children]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"supervisor {name!r}: duplicate child names {duplicates}")
        if max_restarts < 0 or period <= 0:
            raise ValueError("max_restarts must be >= 0 and period > 0")
        self.name = name
        self.max_restarts = max_restarts
        self.period = period
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        rng = rng if rng is not None else random.Random()
        self._children = {
            spec.name: _Child(
                spec,
                Backoff(
                    spec.backoff_base if spec.backoff_base is not None else backoff_base,
                    spec.backoff_cap if spec.backoff_cap is not None else backoff_cap,
                    jitter=jitter,
                    # A child that ran for a whole intensity period before failing is treated
                    # like a fresh one: its next restart is quick again.
                    healthy_after=period,
                    rng=rng,
                ),
            )
            for spec in children
        }
        self._restart_times: deque[float] = deque()
        self._scope: trio.CancelScope | None = None
        self._stop_requested = False
        self.state = SupervisorState.IDLE

    # -- running --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the children until every one has finished per its policy, `stop()` is called,
        or the restart intensity is exceeded (raises `SupervisorEscalation`)."""
        if self._stop_requested:
            self._stop_requested = False
            self.state = SupervisorState.STOPPED
            return
        self._restart_times.clear()
        for child in self._children.values():
            child.state = ChildState.STARTING
            child.backoff.reset()
            child.own_restarts.clear()
            if not child.spec.essential:
                stage_stopped.labels(child.spec.name).set(0)
        self.state = SupervisorState.RUNNING
        stopped = False
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    for child in self._children.values():
                        nursery.start_soon(
                            self._supervise, child, name=f"{self.name}/{child.spec.name}"
                        )
            stopped = scope.cancelled_caught
        except BaseExceptionGroup as group:
            escalation = _sole_escalation(group)
            if escalation is None:
                self.state = SupervisorState.STOPPED
                raise
            self.state = SupervisorState.FAILED
            # Unwrapped, so the parent sees this supervisor's failure as one plain crash; the
            # child's crash stays attached as __cause__.
            raise escalation from escalation.__cause__
        except BaseException:
            self.state = SupervisorState.STOPPED
            raise
        finally:
            self._scope = None
            self._stop_requested = False
        self.state = SupervisorState.STOPPED if stopped else SupervisorState.FINISHED

    def stop(self) -> None:
        """Cancel this supervisor's children; `run()` then returns normally.

        For a subtree nested in another supervisor, give its ChildSpec a TRANSIENT policy, or
        the parent restarts it (a PERMANENT child that returns is restarted).
        """
        if self._scope is not None:
            self._scope.cancel()
        else:
            self._stop_requested = True

    async def _supervise(self, child: _Child) -> None:
        spec = child.spec
        with structlog.contextvars.bound_contextvars(task=spec.name):
            while True:
                child.state = ChildState.RUNNING
                child.started_at = trio.current_time()
                child.backoff.succeeded_at(child.started_at)
                running = task_running.labels(spec.name)
                running.set(1)
                error: BaseException | None = None
                try:
                    await spec.fn()
                except BaseException as exc:
                    if not _is_crash(exc):
                        child.state = ChildState.FINISHED
                        raise
                    child.last_error = _describe(exc)
                    child.crashes += 1
                    if _being_cancelled():
                        child.state = ChildState.FINISHED
                        log.exception(
                            "task.crashed_during_shutdown", task=spec.name, supervisor=self.name
                        )
                        await trio.lowlevel.checkpoint()  # raises the pending Cancelled
                        raise  # unreachable while cancelled; keeps the error if it were not
                    log.exception(
                        "task.crashed",
                        task=spec.name,
                        supervisor=self.name,
                        policy=spec.policy.value,
                        restarts=child.restarts,
                        error=child.last_error,
                    )
                    error = exc
                finally:
                    running.set(0)

                if error is None and _being_cancelled():
                    # Returned because it saw the shutdown coming: not a reason to restart.
                    child.state = ChildState.FINISHED
                    await trio.lowlevel.checkpoint()
                    return
                if error is None and spec.policy is not RestartPolicy.PERMANENT:
                    child.state = ChildState.FINISHED
                    log.debug("task.finished", task=spec.name, supervisor=self.name)
                    return
                if error is not None and spec.policy is RestartPolicy.TEMPORARY:
                    child.state = ChildState.FAILED
                    return
                if error is None:
                    log.warning(
                        "task.returned", task=spec.name, supervisor=self.name, policy="permanent"
                    )

                now = trio.current_time()
                if not spec.essential and self._gives_up(child, now):
                    return
                if spec.essential:
                    self._note_restart(child, error, now)
                child.restarts += 1
                task_restarts.labels(spec.name).inc()
                delay = child.backoff.failed_at(now)
                child.state = ChildState.BACKING_OFF
                log.warning(
                    "task.restarting",
                    task=spec.name,
                    supervisor=self.name,
                    restarts=child.restarts,
                    delay_s=round(delay, 3),
                )
                await trio.sleep(delay)

    def _gives_up(self, child: _Child, now: float) -> bool:
        """For an optional child: True (and the child stopped and reported) when it has
        restarted more than `max_restarts` times within `period`."""
        window = child.own_restarts
        window.append(now)
        while window and window[0] <= now - self.period:
            window.popleft()
        if len(window) <= self.max_restarts:
            return False
        child.state = ChildState.STOPPED
        stage_stopped.labels(child.spec.name).set(1)
        log.error(
            "task.stopped",
            task=child.spec.name,
            supervisor=self.name,
            restarts=len(window) - 1,
            period_s=self.period,
            error=child.last_error or "returned",
            essential=False,
        )
        return True

    def _note_restart(self, child: _Child, error: BaseException | None, now: float) -> None:
        """Count a restart against the intensity; escalate when it is exceeded."""
        window = self._restart_times
        window.append(now)
        while window and window[0] <= now - self.period:
            window.popleft()
        if len(window) <= self.max_restarts:
            return
        child.state = ChildState.FAILED
        supervisor_escalations.labels(self.name).inc()
        log.error(
            "supervisor.escalating",
            supervisor=self.name,
            task=child.spec.name,
            restarts=len(window) - 1,
            period_s=self.period,
            error=child.last_error if error is not None else "returned",
        )
        raise SupervisorEscalation(
            self.name, child.spec.name, error, self.max_restarts, self.period
        ) from error

    # -- introspection --------------------------------------------------------------------------

    def tree(self) -> dict[str, Any]:
        """A JSON-able snapshot of this supervisor and its children, nested supervisors inline."""
        children: dict[str, Any] = {}
        for name, child in self._children.items():
            node: dict[str, Any] = {
                "state": child.state.value,
                "policy": child.spec.policy.value,
                "restarts": child.restarts,
                "crashes": child.crashes,
                "last_error": child.last_error,
            }
            if not child.spec.essential:
                node["essential"] = False
            nested = child.spec.subtree or getattr(child.spec.fn, "__self__", None)
            if isinstance(nested, Supervisor):
                node["supervisor"] = nested.tree()
            children[name] = node
        return {
            "name": self.name,
            "state": self.state.value,
            "max_restarts": self.max_restarts,
            "period_s": self.period,
            "recent_restarts": len(self._restart_times),
            "children": children,
        }


def _is_crash(exc: BaseException) -> bool:
    """True for errors a restart may cure; False for cancellation and interpreter exits."""
    if isinstance(exc, BaseExceptionGroup):
        errors, others = exc.split(Exception)
        if errors is None:
            return False
        # Errors beside cancellations are crashes; beside a KeyboardInterrupt they are not ours.
        return others is None or others.split(trio.Cancelled)[1] is None
    return isinstance(exc, Exception)


def _being_cancelled() -> bool:
    return trio.current_effective_deadline() == float("-inf")


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _sole_escalation(group: BaseExceptionGroup[BaseException]) -> SupervisorEscalation | None:
    matched, rest = group.split(SupervisorEscalation)
    if matched is None or rest is not None:
        return None
    leaves = list(_leaves(matched))
    if len(leaves) != 1 or not isinstance(leaves[0], SupervisorEscalation):
        return None
    return leaves[0]


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc
