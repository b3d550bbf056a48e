"""The web worker: `soar run`'s HTTP clients, served by a child process.

A crowd of clients allocates tens of megabytes of small objects while it is connected: a
thousand map clients on `/api/live`, two hundred API clients asking for every aircraft. In the
tracker's process the blocks they free sit in pymalloc arenas between the tracker's long-lived
objects allocated meanwhile (fixes, flights), and an arena goes back to the system only when it
is wholly empty: RSS stayed 30 % above its level before a crowd long after the crowd had gone
(docs/performance.md, "Where the memory of a crowd goes"). Here the crowd never touches the
tracker's heap:

    soar run                                             web worker (soar.web.worker.main)
    front door (thread): /healthz, /readyz, /metrics
      every other connection ── SCM_RIGHTS, unread ──▶  hypercorn + quart (API, pages),
                                                         trio-websocket (/api/live)
    LivePublisher (PUB: inproc + ipc) ─── pynng ipc ──▶  LiveHub (SUB) ◀─ AircraftDirectory
    the tree and readiness, every second ─────────────▶  (for /api/status, the map's feeds)
    /metrics (door thread) ── "M" ────────────────────▶  a thread: its registry, worker="web"

The worker is a supervised child of the process tree (`web.worker`, optional). While it is not
up (starting, restarting after a crash, stopped after too many, or `SOAR_WEB_WORKER=false`),
the door hands connections to soar's own server as before: nothing waits for it.

Once a crowd has gone (`recycle_after` connections served, none open for RECYCLE_IDLE_S) and
the worker's memory has grown past its start by `recycle_growth`, it retires: it asks the parent
to stop handing it connections, and a fresh worker starts at once; the old one ends once its
last connection (one that came as it asked) has closed. No connection is cut for it.

The handover socket (AF_UNIX, SOCK_SEQPACKET: one message each, a descriptor attached):
    parent → worker   b"FL" / b"FO" + a descriptor: a connection, its request still unread,
                      asking for /api/live (L) or anything else (O)
                      b"T" + JSON {"tree", "ready", "feeds"}: the parent's state, each second
                      b"A": you get no more connections (the answer to b"D")
    worker → parent   b"R": ready, hand me connections
                      b"D": I have no connection and would retire
The metrics socket (a stream): b"M" + a 4-byte sequence number asks; the answer is the same
number, a 4-byte length and the worker's exposition text. A late answer to a request that
timed out is recognised by its number and skipped.

The process itself is `soar.web.worker_process`; how its metrics join soar's,
`soar.web.worker_metrics`.

May import: soar.config, soar.web.door, soar.web.map_api, soar.web.worker_metrics
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import prometheus_client
import structlog
import trio
from prometheus_client.metrics_core import Metric

from soar.config import Settings
from soar.web.door import HeadKind
from soar.web.worker_metrics import CUMULATIVE, labelled, shown_families, summed

log = structlog.get_logger(__name__)

#: The environment variables the worker finds the database URL and the settings in: not
#: arguments, which `ps` would show with their passwords and token to every user of the host.
DATABASE_ENV = "_SOAR_WORKER_DATABASE_URL"
SETTINGS_ENV = "_SOAR_WORKER_SETTINGS"
#: How long a /metrics of the parent waits for the worker's families.
METRICS_TIMEOUT_S = 2.0
#: How long the worker has to say goodbye to its clients (1001), finish the requests under
#: way and exit, before SIGKILL.
STOP_S = 4.0
#: ... of which the requests under way get this much (hypercorn's graceful_timeout).
GRACEFUL_S = 2.0
#: /readyz waits this long at most for the first worker to come up.
FIRST_START_S = 30.0
#: How long the door waits for a worker that has a burst of connections queued already.
HANDOVER_WAIT_S = 1.0
#: How often the parent sends the worker its tree and readiness.
STATE_EVERY_S = 1.0
#: No client for this long after a crowd, and the worker retires (if it grew).
RECYCLE_IDLE_S = 5.0
#: How often the worker looks whether it should retire.
RECYCLE_CHECK_S = 1.0

HANDOVERS = prometheus_client.Counter(
    "soar_web_handovers_total",
    "New HTTP connections the front door did not answer itself, by who serves them: the web"
    " worker, or this process (while the worker is not up)",
    ["to"],
)
WORKER_UP = prometheus_client.Gauge(
    "soar_web_worker_up", "1 while the web worker process takes connections"
)
WORKER_EXITS = prometheus_client.Counter(
    "soar_web_worker_exits_total",
    "Web worker processes ended: retired after a crowd (a fresh one took over) or failed",
    ["reason"],
)
WORKER_SCRAPE_FAILED = prometheus_client.Counter(
    "soar_web_worker_scrape_failures_total",
    "Times /metrics went without the web worker's metrics (it did not answer in time)",
)


_KINDS = {HeadKind.LIVE: b"FL", HeadKind.OTHER: b"FO"}
KIND_OF_MESSAGE = {message: kind for kind, message in _KINDS.items()}


class WebWorkerExited(Exception):
    """The worker process ended on its own, not retired: the supervisor restarts it."""


#: What the worker process runs: `soar.web.worker_process.main` imported by its name, not with
#: `-m`, which would load that module twice (as __main__ too) and register metrics twice.
WORKER_CODE = "import sys; from soar.web.worker_process import main; sys.exit(main())"


def _argv(handover_fd: int, metrics_fd: int, publisher: str) -> list[str]:
    return [sys.executable, "-c", WORKER_CODE, "--handover-fd", str(handover_fd),
            "--metrics-fd", str(metrics_fd), "--publisher", publisher]


def settings_json(settings: Settings) -> str:
    """`settings` for the worker's environment: it has the parent's, whatever file or flags
    they came from."""
    return json.dumps(dataclasses.asdict(settings), default=str)


@contextlib.contextmanager
def publisher_address() -> Iterator[str]:
    """An ipc:// address in a directory of its own (mode 0700: only this user may dial it)."""
    folder = tempfile.mkdtemp(prefix="soar-live-")
    try:
        yield f"ipc://{Path(folder, 'live.sock')}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the parent's side ---------------------------------------------------------------------


class WebWorker:
    """The parent's handle on its web worker: `run` (a task of the tree) keeps one running,
    `take` (the door's thread) hands it a connection, `families` (any thread) reads its
    metrics. `tree()` and `ready()` are the parent's, sent to the worker every second."""

    def __init__(
        self, settings: Settings, database_url: str, publisher: str, *,
        tree: Callable[[], dict[str, Any]], ready: Callable[[], bool],
    ) -> None:
        self._env = {**os.environ, DATABASE_ENV: database_url,
                     SETTINGS_ENV: settings_json(settings)}
        self._publisher = publisher
        self._tree = tree
        self._ready = ready
        self._lock = threading.Lock()  # `take` against retiring: no connection after b"A"
        self._stalled = False
        self._handover: socket.socket | None = None  # the worker taking connections, if any
        self._metrics_lock = threading.Lock()
        #: the metrics sockets of the workers alive: the current one, and one retiring while
        #: a client that came as it retired is still connected
        self._metrics: list[socket.socket] = []
        self._sequence = 0
        self._carried: list[Metric] = []  # the summed counters of the workers that retired
        self._stopping = False
        self._processes: set[trio.Process] = set()
        self._ready_once = False
        self._created = time.monotonic()

    def ready_check(self) -> bool:
        """For /readyz: the first worker has come up (or not in FIRST_START_S: then soar
        serves its clients itself, which a restart of the worker changes nothing to)."""
        return self._ready_once or time.monotonic() - self._created > FIRST_START_S

    # -- the door's thread --------------------------------------------------------------

    def take(self, sock: socket.socket, kind: HeadKind) -> bool:
        """Hand `sock` to the worker; False (keep it) when no worker takes connections now.

        The kernel queues a few hundred connections in flight (net.unix.max_dgram_qlen); in a
        burst past that, wait up to HANDOVER_WAIT_S for the worker to take some, rather than
        serve the rest here. A worker that took none in that time is stalled: until it takes
        one again, connections are served here at once."""
        with self._lock:
            handover = self._handover
            if handover is None:
                HANDOVERS.labels(to="parent").inc()
                return False
            deadline = time.monotonic() + HANDOVER_WAIT_S
            while True:
                try:
                    socket.send_fds(handover, [_KINDS[kind]], [sock.fileno()])
                    self._stalled = False
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if self._stalled or left <= 0:
                        self._stalled = True
                        HANDOVERS.labels(to="parent").inc()
                        return False
                    select.select([], [handover], [], left)
                except OSError:
                    HANDOVERS.labels(to="parent").inc()
                    self._handover = None  # the worker is gone
                    WORKER_UP.set(0)
                    return False
        HANDOVERS.labels(to="worker").inc()
        sock.close()  # the worker holds its own copy now
        return True

    # -- /metrics -------------------------------------------------------------------------

    def families(self) -> list[Metric]:
        """The workers' metric families, summed, each sample labelled worker="web", their
        counters carried on from the workers that retired; none from a worker that does not
        answer within METRICS_TIMEOUT_S."""
        with self._metrics_lock:
            shown = [self._scrape(sock) for sock in self._metrics]
            carried = self._carried
        return [labelled(family) for family in summed([*shown, carried])]

    def _scrape(self, sock: socket.socket) -> list[Metric]:
        """One worker's families as it shows them (holding `_metrics_lock`)."""
        self._sequence = (self._sequence + 1) % 2**32
        asked = self._sequence.to_bytes(4, "big")
        try:
            sock.settimeout(METRICS_TIMEOUT_S)
            sock.sendall(b"M" + asked)
            while True:
                answered = receive_exactly(sock, 4)
                body = receive_exactly(sock, int.from_bytes(receive_exactly(sock, 4), "big"))
                if answered == asked:
                    break  # an earlier, timed-out request's answer is skipped
        except OSError:  # TimeoutError included
            WORKER_SCRAPE_FAILED.inc()
            return []
        return shown_families(body)

    def _last_scrape(self, sock: socket.socket) -> None:
        """A retired worker's counters, read once its last client has gone, are carried on to
        its successors': a worker's retirement is not a counter reset. Then its metrics socket
        is closed, which lets it end."""
        with self._metrics_lock:
            final = [family for family in self._scrape(sock) if family.type in CUMULATIVE]
            self._carried = summed([self._carried, final])
            if sock in self._metrics:
                self._metrics.remove(sock)
            sock.close()

    # -- the task -------------------------------------------------------------------------

    def stop(self) -> None:
        """At shutdown: no more connections; the workers say goodbye (1001) to their clients
        and end, and none is started again."""
        self._stopping = True
        with self._lock:
            self._handover = None
            WORKER_UP.set(0)
        for process in self._processes:
            if process.returncode is None:
                with contextlib.suppress(OSError):
                    process.terminate()

    async def run(self) -> None:
        """Keep one worker taking connections: a fresh one as soon as one retires (which
        finishes with its last clients meanwhile); WebWorkerExited, for the supervisor's
        back-off, when one ends otherwise."""
        async with trio.open_nursery() as workers:
            while not self._stopping:
                await workers.start(self._run_one)

    async def _run_one(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One worker process, until it ends; started (for `run`) once it retires."""
        handover, handover_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        metrics, metrics_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        retiring = False
        process: trio.Process | None = None
        try:
            argv = _argv(handover_child.fileno(), metrics_child.fileno(), self._publisher)
            async with trio.open_nursery() as nursery:
                # its own session: a Ctrl-C at the terminal is the parent's to handle
                process = await nursery.start(partial(
                    trio.run_process, argv, env=self._env, check=False, start_new_session=True,
                    pass_fds=(handover_child.fileno(), metrics_child.fileno()),
                    deliver_cancel=_terminate))
                assert process is not None
                self._processes.add(process)
                handover_child.close()
                metrics_child.close()
                with self._metrics_lock:
                    self._metrics.append(metrics)
                handover.setblocking(False)
                nursery.start_soon(self._send_state, handover)
                retiring = await self._follow(handover, process.pid, task_status)
                if retiring:
                    await trio.to_thread.run_sync(self._last_scrape, metrics)
                await process.wait()
                nursery.cancel_scope.cancel()  # the state sender
        finally:
            with self._lock:
                if self._handover is handover:
                    self._handover = None
                    WORKER_UP.set(0)
            with self._metrics_lock:
                if metrics in self._metrics:
                    self._metrics.remove(metrics)
            if process is not None:
                self._processes.discard(process)
            for sock in (handover, handover_child, metrics, metrics_child):
                sock.close()
        code = process.returncode
        if retiring and code == 0:
            WORKER_EXITS.labels(reason="retired").inc()
            log.info("web.worker.retired", pid=process.pid)
            return
        if self._stopping:
            if not retiring:
                task_status.started()
            return
        WORKER_EXITS.labels(reason="failed").inc()
        raise WebWorkerExited(f"web worker (pid {process.pid}) ended with status {code}")

    async def _send_state(self, handover: socket.socket) -> None:
        """The parent's tree and readiness, every STATE_EVERY_S, for the worker's pages."""
        from soar.web.map_api import feed_states

        failing = False
        while True:
            tree = self._tree()
            message = b"T" + orjson.dumps(
                {"tree": tree, "ready": self._ready(), "feeds": feed_states(tree)}, default=str)
            # never wait for the lock in the loop: the door may hold it while the worker is slow
            if self._lock.acquire(blocking=False):
                try:
                    handover.send(message)
                    failing = False
                except BlockingIOError:
                    pass  # the worker is busy: the next one will do
                except OSError as exc:
                    if not failing:  # EMSGSIZE: a tree too large for one message
                        log.warning("web.worker.state_not_sent", error=str(exc),
                                    size=len(message))
                    failing = True
                finally:
                    self._lock.release()
            await trio.sleep(STATE_EVERY_S)

    async def _follow(
        self, handover: socket.socket, pid: int, task_status: trio.TaskStatus[None]
    ) -> bool:
        """The worker's messages until it closes its end; True if it retired (then
        `task_status` is started, for its successor to start)."""
        retiring = False
        while True:
            await trio.lowlevel.wait_readable(handover)
            try:
                message = handover.recv(16)
            except BlockingIOError:
                continue
            except OSError:
                message = b""
            if not message:
                return retiring  # the worker has ended (or closed its end: it is ending)
            if message == b"R" and not self._stopping:
                with self._lock:
                    self._handover = handover
                    WORKER_UP.set(1)
                self._ready_once = True
                log.info("web.worker.ready", pid=pid)
            elif message == b"D" and not retiring:
                with self._lock:  # after every b"F" already sent, before any other
                    if self._handover is handover:
                        self._handover = None
                        WORKER_UP.set(0)
                    with contextlib.suppress(OSError):
                        handover.send(b"A")
                retiring = True
                task_status.started()


async def _terminate(process: trio.Process) -> None:
    """Cancelled: SIGTERM (the worker says goodbye to its clients), SIGKILL after STOP_S."""
    with contextlib.suppress(OSError):
        process.terminate()
    with trio.move_on_after(STOP_S):
        await process.wait()
        return
    log.warning("web.worker.killed", pid=process.pid, after_s=STOP_S)
    with contextlib.suppress(OSError):
        process.kill()


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("the web worker closed its metrics socket")
        data += chunk
    return bytes(data)
