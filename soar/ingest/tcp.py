"""The reconnecting TCP client every live source runs on (APRS-IS, Beast, SBS): one implementation.

`TcpSource` is the template of a feed client: it reads its `host[:port]` setting with the feed's
standard port (`soar.hostport`), names itself, and runs its `session` on every connection
`ReconnectingClient` makes. A feed is a subclass with its protocol, name, default port and
session: what it sends (the APRS-IS login and keepalives) and how it cuts bytes into messages.

`ReconnectingClient.run(session)` resolves the feed's host, connects to one of its addresses
(a failed address moves on to the next; each new connection starts after the address used last,
so a pool of servers is rounded through), hands the connection to `session`, and when the
connection ends for any reason — refused, reset, closed by the peer, silent for longer than
`idle_timeout` — sleeps a `soar.backoff.Backoff` delay on trio's clock and starts again (by
default 1 s doubling to 60 s, jittered). The backoff resets after a healthy connection: one that
delivered data for at least 60 s, from its first byte to its last — a server that accepts and
never answers, or answers once and goes silent, keeps the delays growing. Each failure is a
warning: `source.connect_failed` (address, error, `retry_in_s`) when no connection came up,
`source.disconnected` when one was lost.

Only connection trouble is retried: `Connection` turns socket errors into `ConnectionLost`, so
an error anywhere else (a closed downstream channel, a bug) propagates to the supervisor.
The receive time of every chunk is taken right after the socket read returns, with the
injectable wall clock `now_us`; timeouts and backoff use trio's clock, so MockClock drives them.

May import: soar.backoff, soar.hostport, soar.ingest.metrics, soar.records
"""

from __future__ import annotations

import errno
import socket as _stdlib_socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, NoReturn
from typing import Protocol as TypingProtocol

import structlog
import trio

from soar.backoff import Backoff
from soar.hostport import parse_host_port
from soar.ingest import metrics
from soar.records import Envelope, Protocol

log = structlog.get_logger(__name__)

NowUs = Callable[[], int]
READ_SIZE = 65536


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class EnvelopeSink(TypingProtocol):
    """Where a source puts its envelopes; a `trio.MemorySendChannel[Envelope]` is one."""

    async def send(self, value: Envelope, /) -> None: ...


def default_backoff() -> Backoff:
    """1 s doubling to 60 s, jittered, reset after 60 s of healthy connection."""
    return Backoff(base=1.0, cap=60.0, healthy_after=60.0)


class ConnectionLost(Exception):
    """The connection to the feed is gone (or never came up); `reason` is a metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class LineSplitter:
    """Sans-io: bytes in, complete lines out (LF or CRLF), over-long lines dropped and counted.

    A line longer than `max_line` bytes is discarded up to its terminator, however many reads
    it spans, and counted once in `too_long`; the lines around it are unaffected.
    """

    __slots__ = ("_buffer", "_discarding", "max_line", "too_long")

    def __init__(self, max_line: int = 1024) -> None:
        self.max_line = max_line
        self.too_long = 0
        self._buffer = bytearray()
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held back (0 while discarding an over-long one)."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        end = len(chunk)
        while start < end:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                if not self._discarding:
                    self._buffer += chunk[start:]
                    if len(self._buffer) > self.max_line:
                        self._buffer.clear()
                        self._discarding = True
                        self.too_long += 1
                break
            if self._discarding:
                self._discarding = False
            else:
                self._buffer += chunk[start:newline]
                line = bytes(self._buffer)
                self._buffer.clear()
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) > self.max_line:
                    self.too_long += 1
                elif line:
                    lines.append(line)
            start = newline + 1
        return lines

    def reset(self) -> bytes:
        """Forget any partial line (the connection it came from is gone); returns it."""
        partial = bytes(self._buffer)
        self._buffer.clear()
        self._discarding = False
        return partial


class Connection:
    """One live connection: reads with an idle timeout, stamps each chunk with the wall clock."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        idle_timeout: float,
        now_us: NowUs,
        source: str,
        protocol: Protocol,
    ) -> None:
        self.stream = stream
        self.idle_timeout = idle_timeout
        self._now_us = now_us
        self._bytes = metrics.SOURCE_BYTES.labels(source, protocol.value)
        self.bytes_received = 0
        self.first_data_at: float | None = None  # trio clock
        self.last_data_at: float | None = None

    async def receive(self) -> tuple[bytes, int]:
        """The next chunk and its receive time (µs); `ConnectionLost` on EOF, error or silence."""
        with trio.move_on_after(self.idle_timeout):
            try:
                data = bytes(await self.stream.receive_some(READ_SIZE))
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionLost("read_error", repr(exc)) from exc
            received_us = self._now_us()
            if not data:
                raise ConnectionLost("closed_by_peer")
            self.bytes_received += len(data)
            self.last_data_at = trio.current_time()
            if self.first_data_at is None:
                self.first_data_at = self.last_data_at
            self._bytes.inc(len(data))
            return data, received_us
        raise ConnectionLost("idle_timeout", f"no data for {self.idle_timeout} s")

    async def send_all(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost("write_error", repr(exc)) from exc


Session = Callable[[Connection], Awaitable[None]]
AddrInfo = tuple[Any, ...]


class ReconnectingClient:
    """Connects to `host:port` for ever, running `session` on each connection (see module doc)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        source: str,
        protocol: Protocol,
        idle_timeout: float = 300.0,
        connect_timeout: float = 30.0,
        backoff: Backoff | None = None,
        now_us: NowUs = wall_clock_us,
    ) -> None:
        self.host = host
        self.port = port
        self.source = source
        self.protocol = protocol
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.backoff = backoff if backoff is not None else default_backoff()
        self.now_us = now_us
        self.connections = 0  # connections that came up, for tests and status pages
        self._next_address = 0
        self._labels = (source, protocol.value)
        self._log = log.bind(source=source, protocol=protocol.value, host=host, port=port)

    async def run(self, session: Session) -> NoReturn:
        connected = metrics.SOURCE_CONNECTED.labels(*self._labels)
        reconnects = metrics.SOURCE_RECONNECTS.labels(*self._labels)
        connected.set(0)
        try:
            while True:
                up_since: float | None = None
                conn: Connection | None = None
                try:
                    stream = await self._connect()
                    up_since = trio.current_time()
                    self.connections += 1
                    connected.set(1)
                    self._log.info("source.connected", connection=self.connections)
                    async with stream:
                        conn = Connection(
                            stream,
                            idle_timeout=self.idle_timeout,
                            now_us=self.now_us,
                            source=self.source,
                            protocol=self.protocol,
                        )
                        await session(conn)
                    lost = ConnectionLost("session_ended")
                except ConnectionLost as exc:
                    lost = exc
                except BaseExceptionGroup as group:
                    # a session that runs helper tasks (the APRS keepalive) loses its connection
                    # inside a nursery; anything besides ConnectionLost in there is not ours
                    matched, rest = group.split(ConnectionLost)
                    if matched is None or rest is not None:
                        raise
                    lost = _first_leaf(matched)
                finally:
                    connected.set(0)
                delay = self._next_delay(conn)
                reconnects.inc()
                if up_since is None:
                    # never connected (host down, refused, unresolvable): the operator needs the
                    # address and the error, not just that a feed is quiet
                    self._log.warning(
                        "source.connect_failed",
                        address=f"{self.host}:{self.port}",
                        reason=lost.reason,
                        error=lost.detail,
                        retry_in_s=round(delay, 3),
                    )
                else:
                    self._log.warning(
                        "source.disconnected",
                        reason=lost.reason,
                        detail=lost.detail,
                        up_s=trio.current_time() - up_since,
                        received_bytes=0 if conn is None else conn.bytes_received,
                        retry_in_s=round(delay, 3),
                    )
                await trio.sleep(delay)
        finally:
            connected.set(0)

    def _next_delay(self, conn: Connection | None) -> float:
        # A connection was healthy for as long as data kept coming: from its first byte to its
        # last. One that was accepted but never answered, or went silent, earns no reset.
        if conn is not None and conn.first_data_at is not None and conn.last_data_at is not None:
            self.backoff.succeeded_at(conn.first_data_at)
            return self.backoff.failed_at(conn.last_data_at)
        return self.backoff.failed_at(trio.current_time())

    async def _resolve(self) -> list[AddrInfo]:
        try:
            infos = await trio.socket.getaddrinfo(
                self.host, self.port, type=_stdlib_socket.SOCK_STREAM
            )
        except OSError as exc:
            raise ConnectionLost("resolve_failed", repr(exc)) from exc
        if not infos:
            raise ConnectionLost("resolve_failed", "no addresses")
        return list(infos)

    async def _connect(self) -> trio.SocketStream:
        infos = await self._resolve()
        count = len(infos)
        first = self._next_address % count
        errors: list[str] = []
        for step in range(count):
            index = (first + step) % count
            family, type_, proto, _canon, sockaddr = infos[index]
            try:
                sock = trio.socket.socket(family, type_, proto)
            except OSError as exc:
                # Out of descriptors (EMFILE/ENFILE) is a lost connection like any other:
                # retried with back-off, never a crash of the source.
                metrics.SOURCE_SOCKET_ERRORS.labels(
                    *self._labels, errno.errorcode.get(exc.errno or 0, "other")
                ).inc()
                raise ConnectionLost("no_socket", repr(exc)) from exc
            error = "connect timeout"
            try:
                with trio.move_on_after(self.connect_timeout):
                    await sock.connect(sockaddr)
                    self._next_address = index + 1
                    return trio.SocketStream(sock)
            except OSError as exc:
                error = repr(exc)
            except BaseException:
                sock.close()
                raise
            sock.close()
            errors.append(f"{sockaddr}: {error}")
            if step < count - 1:  # the last failure is in the warning that follows
                self._log.info("source.address_failed", address=str(sockaddr), error=error)
        self._next_address = first + 1
        raise ConnectionLost("connect_failed", "; ".join(errors))


class TcpSource:
    """A live feed on one reconnecting TCP connection (see the module doc)."""

    protocol: ClassVar[Protocol]
    scheme: ClassVar[str]  # the default source name is `scheme:host:port`
    default_port: ClassVar[int]  # what a bare host in the setting means

    def __init__(
        self,
        server: str,
        *,
        source: str | None = None,
        idle_timeout: float = 300.0,
        connect_timeout: float = 30.0,
        backoff: Backoff | None = None,
        now_us: NowUs = wall_clock_us,
    ) -> None:
        host, port = parse_host_port(server, self.default_port)
        self.source = source or f"{self.scheme}:{host}:{port}"
        self.client = ReconnectingClient(
            host,
            port,
            source=self.source,
            protocol=self.protocol,
            idle_timeout=idle_timeout,
            connect_timeout=connect_timeout,
            backoff=backoff,
            now_us=now_us,
        )

    async def run(self, send: EnvelopeSink) -> NoReturn:
        """Connect, run `session`, reconnect, for ever; only a failure that is not the
        connection's (a closed `send`, a bug) ends it."""
        await self.client.run(lambda conn: self.session(conn, send))

    async def session(self, conn: Connection, send: EnvelopeSink) -> None:
        """One connection's life: returns or raises `ConnectionLost` when it is over."""
        raise NotImplementedError


def _first_leaf(group: BaseExceptionGroup[ConnectionLost]) -> ConnectionLost:
    first = group.exceptions[0]
    return first if isinstance(first, ConnectionLost) else _first_leaf(first)


async def pump_lines(
    conn: Connection,
    send: EnvelopeSink,
    *,
    source: str,
    protocol: Protocol,
    max_line: int = 1024,
    on_line: Callable[[bytes], None] | None = None,
) -> NoReturn:
    """Read lines from `conn` for ever, each one an envelope stamped with its chunk's receive time.

    Over-long lines and a partial line cut off by the end of the connection are rejects
    (`line_too_long`, `truncated_line`), counted and logged.
    """
    splitter = LineSplitter(max_line)
    messages = metrics.SOURCE_MESSAGES.labels(source, protocol.value)
    too_long_seen = 0
    try:
        while True:
            data, received_us = await conn.receive()
            lines = splitter.feed(data)
            if splitter.too_long != too_long_seen:
                metrics.SOURCE_REJECTS.labels(source, protocol.value, "line_too_long").inc(
                    splitter.too_long - too_long_seen
                )
                log.warning(
                    "source.reject",
                    source=source,
                    protocol=protocol.value,
                    reason="line_too_long",
                    max_line=max_line,
                    count=splitter.too_long - too_long_seen,
                )
                too_long_seen = splitter.too_long
            for line in lines:
                if on_line is not None:
                    on_line(line)
                await send.send(Envelope(protocol, received_us, line, source))
            messages.inc(len(lines))
    finally:
        partial = splitter.reset()
        if partial:
            metrics.SOURCE_REJECTS.labels(source, protocol.value, "truncated_line").inc()
            log.warning(
                "source.reject",
                source=source,
                protocol=protocol.value,
                reason="truncated_line",
                raw=partial[:200],
            )
