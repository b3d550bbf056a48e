"""Live sources against real TCP servers on 127.0.0.1 replaying the real captures.

Timer behaviour (keepalive, dead link, backoff) runs on a MockClock with a small autojump
threshold: time jumps only after every task has been blocked for 50 ms of real time, which
loopback traffic between the server and client tasks never is, so a jump always means "nothing
left to do but wait for the next timer".
"""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from prometheus_client import REGISTRY

import soar
from soar.backoff import Backoff
from soar.hostport import APRS_IS_PORT, BEAST_PORT, SBS_PORT, parse_host_port
from soar.ingest.aprs import AprsIsSource, login_line
from soar.ingest.beast_source import BeastSource
from soar.ingest.sbs_source import SbsSource
from soar.ingest.tcp import Connection, EnvelopeSink, LineSplitter, TcpSource
from soar.records import Envelope, Protocol
from tests.ingest.ingest_servers import (
    APRSC_BANNER,
    FeedServer,
    FixedResolver,
    ServedConnection,
    beast_frames,
    close_at_once,
    crlf,
    hold_for,
    never_answer,
    ogn_aprs_lines,
    per_connection,
    refused_port,
    replay,
    sbs_lines,
    trickle,
)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def fast_backoff() -> Backoff:
    return Backoff(base=0.01, cap=0.05, healthy_after=60.0)


async def run_until(source: Any, count: int, *, timeout: float = 20.0) -> list[Envelope]:
    """Run `source` until it has produced `count` envelopes, then stop it."""
    send, receive = trio.open_memory_channel[Envelope](0)
    got: list[Envelope] = []
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, send)
            async for env in receive:
                got.append(env)
                if len(got) == count:
                    break
            nursery.cancel_scope.cancel()
    return got


async def drain(receive: trio.MemoryReceiveChannel[Envelope]) -> None:
    async for _env in receive:
        pass


# ---- pure pieces ---------------------------------------------------------------------------


def test_line_splitter_any_chunking(testdata: Path) -> None:
    lines = ogn_aprs_lines(testdata)
    data = crlf(lines)
    rng = random.Random(7)
    for _ in range(5):
        splitter = LineSplitter(1024)
        out: list[bytes] = []
        pos = 0
        while pos < len(data):
            size = rng.randint(1, 300)
            out += splitter.feed(data[pos : pos + size])
            pos += size
        assert out == lines
        assert splitter.too_long == 0 and splitter.pending == 0


def test_line_splitter_over_long_spanning_reads() -> None:
    splitter = LineSplitter(10)
    assert splitter.feed(b"short\nxxxxxxxx") == [b"short"]
    assert splitter.feed(b"xxxxxxxxxxxx") == []  # over the limit: discarded, not buffered
    assert splitter.pending == 0
    assert splitter.feed(b"xxx\r\nok\n" + b"y" * 11 + b"\nexactly10!\n") == [b"ok", b"exactly10!"]
    assert splitter.too_long == 2


def test_parse_host_port() -> None:
    assert parse_host_port("aprs.glidernet.org:10152") == ("aprs.glidernet.org", 10152)
    assert parse_host_port(" aprs.glidernet.org ", APRS_IS_PORT) == ("aprs.glidernet.org", 14580)
    assert parse_host_port("[::1]:30005") == ("::1", 30005)
    assert parse_host_port("[::1]", BEAST_PORT) == ("::1", 30005)
    assert parse_host_port("fe80::1%eth0", SBS_PORT) == ("fe80::1%eth0", 30003)
    assert parse_host_port("10.0.0.7", SBS_PORT) == ("10.0.0.7", 30003)
    for bad in ("nohost", "::1:30005", "[::1]30005", "host:0", "host:65536", "host:http",
                ":30005", "[nonsense]:1", "two words:1", ""):
        with pytest.raises(ValueError, match="expected host"):
            parse_host_port(bad)
    with pytest.raises(ValueError, match="expected host"):
        parse_host_port("::1:30005", BEAST_PORT)  # an IPv6 address with a port needs brackets


async def test_bare_host_connects_to_the_protocols_standard_port() -> None:
    """`SOAR_APRS_SERVER=aprs.glidernet.org` means port 14580; the sources and config agree."""
    from soar.config import load_settings

    settings = load_settings(environ={"SOAR_APRS_SERVER": "aprs.glidernet.org",
                                      "SOAR_BEAST_SERVERS": "radar.local,[::1]",
                                      "SOAR_SBS_SERVERS": "radar.local"})
    assert settings.aprs_server is not None
    aprs = AprsIsSource(settings.aprs_server, "N0CALL")
    beast = [BeastSource(addr) for addr in settings.beast_servers]
    sbs = SbsSource(settings.sbs_servers[0])
    assert (aprs.client.host, aprs.client.port) == ("aprs.glidernet.org", 14580)
    assert [(b.client.host, b.client.port) for b in beast] == [("radar.local", 30005),
                                                               ("::1", 30005)]
    assert (sbs.client.host, sbs.client.port) == ("radar.local", 30003)


def test_the_three_feeds_are_one_template_with_their_port() -> None:
    feeds = [(AprsIsSource, "aprs", APRS_IS_PORT), (BeastSource, "beast", BEAST_PORT),
             (SbsSource, "sbs", SBS_PORT)]
    for feed, scheme, port in feeds:
        assert issubclass(feed, TcpSource)
        assert (feed.scheme, feed.default_port) == (scheme, port)
        # everything but the session is the template's
        assert feed.run is TcpSource.run and feed.session is not TcpSource.session


async def test_a_new_feed_is_its_session_alone_and_reconnects(testdata: Path) -> None:
    """A feed of raw chunks written on the template in five lines: connected, named,
    reconnected after the server hung up, every byte of both connections delivered."""

    class Chunks(TcpSource):
        protocol = Protocol.SBS
        scheme = "chunks"
        default_port = SBS_PORT

        async def session(self, conn: Connection, send: EnvelopeSink) -> None:
            while True:
                data, received_us = await conn.receive()
                await send.send(Envelope(self.protocol, received_us, data, self.source))

    data = crlf(sbs_lines(testdata)[:2000])
    server = FeedServer(per_connection(replay(data, then="close"), replay(data)))
    send, receive = trio.open_memory_channel[Envelope](0)
    got = bytearray()
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        feed = Chunks(server.address, backoff=fast_backoff())
        nursery.start_soon(feed.run, send)
        with trio.fail_after(20):
            async for env in receive:
                got += env.data
                if len(got) == 2 * len(data):
                    break
        nursery.cancel_scope.cancel()
    assert bytes(got) == data + data
    assert feed.source == f"chunks:127.0.0.1:{server.port}" and feed.client.connections == 2


async def test_a_feed_that_cannot_connect_is_a_warning_with_address_error_and_retry(
    clock: trio.testing.MockClock,
) -> None:
    port = refused_port()
    with structlog.testing.capture_logs() as logs:
        source = SbsSource(f"127.0.0.1:{port}", source="t-refused",
                           backoff=Backoff(base=2.0, cap=60.0, jitter=0.0))
        with trio.move_on_after(2.0 + 4.0 + 0.5):  # three attempts: at 0, 2 and 6 s
            await source.run(trio.open_memory_channel[Envelope](1)[0])
    failed = [e for e in logs if e["event"] == "source.connect_failed"]
    assert [e["log_level"] for e in failed] == ["warning"] * 3
    assert [e["retry_in_s"] for e in failed] == [2.0, 4.0, 8.0]
    for event in failed:
        assert event["address"] == f"127.0.0.1:{port}"
        assert "Connection refused" in event["error"] or "ECONNREFUSED" in event["error"]
    assert not [e for e in logs if e["event"] == "source.disconnected"]  # it never connected


def test_login_line() -> None:
    assert login_line("N0CALL", -1, "r/47/8/500", "1.2.3") == (
        b"user N0CALL pass -1 vers soar 1.2.3 filter r/47/8/500\r\n"
    )
    assert (
        login_line("N0CALL", -1) == f"user N0CALL pass -1 vers soar {soar.__version__}\r\n".encode()
    )


# ---- APRS-IS -------------------------------------------------------------------------------


async def test_aprs_normal_server_delivers_every_line_in_order(testdata: Path) -> None:
    lines = ogn_aprs_lines(testdata)
    server = FeedServer(replay(crlf(lines), greet=APRSC_BANNER, wait_login=True))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        source = AprsIsSource(
            server.address, "N0CALL", server_filter="r/47/8/500", source="t-aprs-normal"
        )
        before = time.time_ns() // 1000
        got = await run_until(source, len(lines) + 1)
        after = time.time_ns() // 1000
        nursery.cancel_scope.cancel()
    assert [e.data for e in got] == [APRSC_BANNER, *lines]
    assert {e.protocol for e in got} == {Protocol.OGN}
    assert {e.source for e in got} == {"t-aprs-normal"}
    times = [e.received_us for e in got]
    assert times == sorted(times) and before <= times[0] and times[-1] <= after
    assert server.connections[0].received[0][1] == (
        f"user N0CALL pass -1 vers soar {soar.__version__} filter r/47/8/500\r\n".encode()
    )
    assert sample("soar_source_messages_total", source="t-aprs-normal", protocol="ogn") == len(got)
    assert sample("soar_source_bytes_total", source="t-aprs-normal", protocol="ogn") == len(
        crlf([APRSC_BANNER, *lines])
    )


async def test_aprs_login_with_computed_passcode(testdata: Path) -> None:
    del testdata
    server = FeedServer(
        replay(b"# logresp N0CALL-1 verified, server GLIDERN1\r\n", wait_login=True)
    )
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        source = AprsIsSource(server.address, "N0CALL-1", passcode="auto", source="t-aprs-pass")
        got = await run_until(source, 1)
        nursery.cancel_scope.cancel()
    assert got[0].data.startswith(b"# logresp")
    # the passcode APRS-IS derives from the base callsign (aprslib's algorithm gives 13023)
    assert server.connections[0].received[0][1] == (
        f"user N0CALL-1 pass 13023 vers soar {soar.__version__}\r\n".encode()
    )


async def test_aprs_keepalive_every_20s_whatever_the_traffic(
    testdata: Path, clock: trio.testing.MockClock
) -> None:
    lines = ogn_aprs_lines(testdata)[:25]

    async def chatty(stream: trio.SocketStream, conn: ServedConnection) -> None:
        del conn
        for line in lines:  # a line every 3 s: the link is never quiet
            await stream.send_all(line + b"\r\n")
            await trio.sleep(3)
        await trio.sleep_forever()

    server = FeedServer(chatty)
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        source = AprsIsSource(server.address, "N0CALL", source="t-aprs-keepalive")
        got = await run_until(source, len(lines), timeout=1000)
        nursery.cancel_scope.cancel()
    assert [e.data for e in got] == lines
    conn = server.connections[0]
    login_at, login = conn.received[0]
    assert login.startswith(b"user N0CALL pass -1 ")
    keepalives = [t - login_at for t, line in conn.received[1:]]
    assert all(line.startswith(b"#") for _t, line in conn.received[1:])
    # 25 lines 3 s apart: the last arrives at 72 s, so keepalives went out at 20, 40 and 60
    assert keepalives == pytest.approx([20.0, 40.0, 60.0])


async def test_aprs_silent_server_is_dead_after_300s_and_reconnects(
    testdata: Path, clock: trio.testing.MockClock
) -> None:
    lines = ogn_aprs_lines(testdata)[:5]
    server = FeedServer(replay(crlf(lines), then="hold"))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        source = AprsIsSource(server.address, "N0CALL", source="t-aprs-silent")
        got = await run_until(source, 2 * len(lines), timeout=2000)
        nursery.cancel_scope.cancel()
    assert [e.data for e in got] == lines + lines
    first, second = server.connections[:2]
    assert first.sent_until is not None and first.closed_at is not None
    assert first.closed_at - first.sent_until == pytest.approx(300.0)
    # first reconnect: 1 s jittered downward by at most 20 %
    assert 0.8 <= second.accepted_at - first.closed_at <= 1.0
    # the client kept sending keepalives into the silence
    # (the one due at 300 s races the dead-link verdict due at the same instant)
    keepalives = [t for t, _line in first.received[1:]]
    assert keepalives[:14] == pytest.approx(list(range(20, 300, 20)))
    assert keepalives[14:] in ([], [pytest.approx(300.0)])
    assert sample("soar_source_reconnects_total", source="t-aprs-silent", protocol="ogn") == 1


async def test_aprs_server_that_never_answers(clock: trio.testing.MockClock) -> None:
    server = FeedServer(never_answer)
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        source = AprsIsSource(server.address, "N0CALL", source="t-aprs-mute")
        nursery.start_soon(source.run, trio.open_memory_channel[Envelope](1)[0])
        await server.wait_connections(3)
        nursery.cancel_scope.cancel()
    a, b, c = server.connections[:3]
    assert a.closed_at is not None and b.closed_at is not None
    assert a.closed_at - a.accepted_at == pytest.approx(300.0)
    assert 0.8 <= b.accepted_at - a.closed_at <= 1.0
    assert 1.6 <= c.accepted_at - b.closed_at <= 2.0


async def test_aprs_cut_mid_line_drops_only_the_partial_line(testdata: Path) -> None:
    lines = ogn_aprs_lines(testdata)[:200]
    cut = crlf(lines[:100]) + lines[100][:37]
    server = FeedServer(per_connection(replay(cut, then="close"), replay(crlf(lines))))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        source = AprsIsSource(server.address, "N0CALL", source="t-aprs-cut", backoff=fast_backoff())
        got = await run_until(source, 300)
        nursery.cancel_scope.cancel()
    assert [e.data for e in got] == lines[:100] + lines
    assert (
        sample(
            "soar_source_rejects_total",
            source="t-aprs-cut",
            protocol="ogn",
            reason="truncated_line",
        )
        == 1
    )
    assert sample("soar_source_reconnects_total", source="t-aprs-cut", protocol="ogn") == 1


async def test_aprs_garbage_and_over_long_lines_are_counted(testdata: Path) -> None:
    lines = ogn_aprs_lines(testdata)[:300]
    junk = bytes(random.Random(3).randrange(256) for _ in range(3000)).replace(b"\n", b"")
    stream = (
        crlf(lines[:100])
        + junk
        + b"\r\n"  # 3000 bytes: over the 1024-byte limit
        + b"\x00\xff garbage that is short enough\r\n"  # passed on: the parser rejects it
        + b"A" * 1024
        + b"\n"  # exactly the limit: kept
        + b"B" * 1025
        + b"\r\n"  # one over: rejected
        + crlf(lines[100:])
    )
    server = FeedServer(replay(stream))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        source = AprsIsSource(server.address, "N0CALL", source="t-aprs-garbage")
        got = await run_until(source, 302)
        nursery.cancel_scope.cancel()
    assert [e.data for e in got] == [
        *lines[:100],
        b"\x00\xff garbage that is short enough",
        b"A" * 1024,
        *lines[100:],
    ]
    assert (
        sample(
            "soar_source_rejects_total",
            source="t-aprs-garbage",
            protocol="ogn",
            reason="line_too_long",
        )
        == 2
    )
    assert len(server.connections) == 1  # garbage is no reason to drop the link


async def test_reconnect_backoff_doubles_to_60s_with_jitter(
    clock: trio.testing.MockClock,
) -> None:
    server = FeedServer(close_at_once)
    seed = 20260224
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        source = SbsSource(
            server.address, source="t-backoff", backoff=Backoff(rng=random.Random(seed))
        )
        nursery.start_soon(source.run, trio.open_memory_channel[Envelope](1)[0])
        await server.wait_connections(10)
        nursery.cancel_scope.cancel()
    conns = server.connections[:10]
    gaps = [b.accepted_at - a.accepted_at for a, b in itertools.pairwise(conns)]
    bases = [1, 2, 4, 8, 16, 32, 60, 60, 60]
    for gap, base in zip(gaps, bases, strict=True):
        assert 0.8 * base <= gap <= base
    assert len({round(g / b, 6) for g, b in zip(gaps, bases, strict=True)}) > 1  # jittered
    twin = Backoff(rng=random.Random(seed))  # the same draws, so exactly the same delays
    assert gaps == pytest.approx([twin.next_delay() for _ in bases])


async def test_backoff_resets_after_60s_healthy(
    testdata: Path, clock: trio.testing.MockClock
) -> None:
    lines = sbs_lines(testdata)[:20]
    server = FeedServer(
        per_connection(
            close_at_once,
            close_at_once,
            close_at_once,  # delays 1, 2, 4
            hold_for(90.0),  # up 90 s but silent: no reset, 8
            trickle(lines, 5.0, 55.0),  # data for 55 s: not healthy long enough, 16
            trickle(lines, 5.0, 60.0),  # data for 60 s: healthy, back to 1 s
            close_at_once,  # then 2 s
        )
    )
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        source = SbsSource(server.address, source="t-reset")
        send, receive = trio.open_memory_channel[Envelope](0)
        nursery.start_soon(source.run, send)
        nursery.start_soon(drain, receive)
        await server.wait_connections(8)
        nursery.cancel_scope.cancel()
    c = server.connections
    waits = [c[i + 1].accepted_at - c[i].closed_at for i in range(7)]  # type: ignore[operator]
    assert c[5].sent_until is not None and c[5].sent_until - c[5].accepted_at == 60.0
    for wait, base in zip(waits, [1, 2, 4, 8, 16, 1, 2], strict=True):
        assert 0.8 * base <= wait <= base


async def test_every_resolved_address_is_tried_in_turn(clock: trio.testing.MockClock) -> None:
    accepts: list[tuple[str, float]] = []
    a = FeedServer(close_at_once, accepts, "a")
    b = FeedServer(close_at_once, accepts, "b")
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        resolver = FixedResolver("feed.test", [refused_port(), a.port, b.port])
        trio.socket.set_custom_hostname_resolver(resolver)
        source = BeastSource("feed.test:30005", source="t-addresses")
        nursery.start_soon(source.run, trio.open_memory_channel[Envelope](1)[0])
        await b.wait_connections(3)
        nursery.cancel_scope.cancel()
    # the refused address is skipped within a round; the two live ones take turns
    assert [name for name, _t in accepts[:6]] == ["a", "b", "a", "b", "a", "b"]
    assert resolver.lookups >= 6
    assert sample("soar_source_connected", source="t-addresses", protocol="beast") == 0


async def test_unresolvable_host_is_retried(clock: trio.testing.MockClock) -> None:
    resolver = FixedResolver("feed.test", [])
    trio.socket.set_custom_hostname_resolver(resolver)
    source = SbsSource("nowhere.test:30003", source="t-unresolvable")
    with trio.move_on_after(1.0 + 2.0 + 4.0 + 0.5):
        await source.run(trio.open_memory_channel[Envelope](1)[0])
    assert sample("soar_source_reconnects_total", source="t-unresolvable", protocol="sbs") == 4


async def test_out_of_descriptors_is_a_retried_connection_loss_not_a_crash(
    testdata: Path, clock: trio.testing.MockClock
) -> None:
    """EMFILE on the source's own socket() once escalated and ended the whole process."""
    import os
    import resource

    lines = sbs_lines(testdata)[:50]
    server = FeedServer(replay(crlf(lines)))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    labels = {"source": "t-emfile", "protocol": "sbs", "errno": "EMFILE"}
    before = sample("soar_source_socket_errors_total", **labels)
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        source = SbsSource(server.address, source="t-emfile", backoff=fast_backoff())
        send, receive = trio.open_memory_channel[Envelope](len(lines))
        # No descriptor left for this process: a low limit, and every free number below it
        # taken, so the next socket() fails with EMFILE.
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        fillers: list[int] = []
        try:
            while True:
                try:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    break
            nursery.start_soon(source.run, send)
            while sample("soar_source_socket_errors_total", **labels) < before + 3:
                await trio.sleep(0.01)
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        got = [await receive.receive() for _ in lines]  # descriptors back: it reconnects
        nursery.cancel_scope.cancel()
    assert [e.data for e in got] == lines
    assert server.connections, "the source reached the server once it could"


# ---- SBS -----------------------------------------------------------------------------------


async def test_sbs_normal_server(testdata: Path) -> None:
    lines = sbs_lines(testdata)
    server = FeedServer(replay(crlf(lines)))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        got = await run_until(SbsSource(server.address, source="t-sbs"), len(lines))
        nursery.cancel_scope.cancel()
    assert len(got) == 38_112
    assert [e.data for e in got] == lines
    assert {e.protocol for e in got} == {Protocol.SBS}


# ---- Beast ---------------------------------------------------------------------------------


async def test_beast_normal_server(testdata: Path) -> None:
    frames = beast_frames(testdata)
    server = FeedServer(replay(b"".join(f.encode() for f in frames)))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        got = await run_until(BeastSource(server.address, source="t-beast"), len(frames))
        nursery.cancel_scope.cancel()
    assert [e.data for e in got] == [f.to_bytes() for f in frames]
    assert {e.protocol for e in got} == {Protocol.BEAST}
    assert sample("soar_source_messages_total", source="t-beast", protocol="beast") == 2000


async def test_beast_cut_mid_frame_and_garbage(testdata: Path) -> None:
    frames = beast_frames(testdata)[:500]
    wire = [f.encode() for f in frames]
    cut = b"".join(wire[:100]) + wire[100][:9]  # the connection dies inside frame 100
    junk = bytes(random.Random(5).randrange(256) for _ in range(400)).replace(b"\x1a", b"")
    dirty = b"".join(wire[:250]) + junk + b"".join(wire[250:])
    server = FeedServer(per_connection(replay(cut, then="close"), replay(dirty)))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        source = BeastSource(server.address, source="t-beast-cut", backoff=fast_backoff())
        got = await run_until(source, 600)
        nursery.cancel_scope.cancel()
    # a new deframer per connection: the half frame is not glued to the next stream
    assert [e.data for e in got] == [f.to_bytes() for f in frames[:100] + frames]
    labels = {"source": "t-beast-cut", "protocol": "beast"}
    assert sample("soar_source_rejects_total", **labels, reason="truncated_frame") == 1
    assert sample("soar_source_rejects_total", **labels, reason="beast_resync") == 1
    assert sample("soar_source_garbage_bytes_total", **labels) == len(junk)


async def test_connected_gauge_follows_the_link(clock: trio.testing.MockClock) -> None:
    server = FeedServer(never_answer)
    labels = {"source": "t-gauge", "protocol": "sbs"}
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        source = SbsSource(server.address, source="t-gauge", idle_timeout=30.0)
        nursery.start_soon(source.run, trio.open_memory_channel[Envelope](1)[0])
        await server.wait_connections(1)
        await trio.sleep(10)
        assert sample("soar_source_connected", **labels) == 1
        await trio.sleep(20.5)  # dead at 30 s, reconnecting after 0.8-1 s
        assert sample("soar_source_connected", **labels) == 0
        await server.wait_connections(2)
        await trio.sleep(1)
        assert sample("soar_source_connected", **labels) == 1
        nursery.cancel_scope.cancel()
    assert sample("soar_source_connected", **labels) == 0


async def test_a_closed_downstream_is_not_a_connection_problem(testdata: Path) -> None:
    server = FeedServer(replay(crlf(sbs_lines(testdata)[:10])))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        send, receive = trio.open_memory_channel[Envelope](1)
        receive.close()
        with pytest.raises(trio.BrokenResourceError):
            await SbsSource(server.address, source="t-downstream").run(send)
        nursery.cancel_scope.cancel()
    assert len(server.connections) == 1  # propagated to the supervisor, not retried
