"""A real soar (`python -m soar`, embedded PostgreSQL) fed by real captures over real TCP, for
the map page tests.

- SBS: the ADSBHub sample. It holds two snapshots of the sky (14:57:36 and 14:57:44); the
  first is sent when soar connects, the second when the test calls `release_second()`, then
  the feed closes and refuses every later connection (soar shows it as reconnecting).
- OGN: an APRS-IS server (banner, login, logresp) sending the 5,000-line full-feed capture of
  2017-04-19 with every `hhmmss` moved by one offset so that its last beacon is a few seconds
  old (a mechanical time shift: positions, order and spacing are the capture's), then staying
  connected.
- Beast: not configured.
"""

from __future__ import annotations

import contextlib
import gzip
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from soar.protocols.ogn import ReceiverBeacon
from soar.protocols.ogn import parse_line as parse_ogn
from soar.protocols.sbs import SbsMessage, parse_line
from tests.support import free_port, soar_env, wait_ready

SBS_SAMPLE = "sbs/adsbhub-sbs-sample-20260224.txt.gz"
OGN_FULL_FEED = "ogn/svoop-ogn-full-feed-5000-20170419.txt"
#: the APRS timestamp of a position or status: `/hhmmssh` or `>hhmmssh` after the header
_APRS_TIME = re.compile(rb"(:[/@>])(\d{2})(\d{2})(\d{2})h")


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


@dataclass
class SbsFeed:
    first: list[bytes]
    second: list[bytes]
    sock: socket.socket = field(default_factory=_listener)
    connections: int = 0
    first_sent: threading.Event = field(default_factory=threading.Event)
    second_sent: threading.Event = field(default_factory=threading.Event)
    _release: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def from_capture(cls, testdata: Path) -> SbsFeed:
        with gzip.open(testdata / SBS_SAMPLE, "rb") as f:
            lines = [line.rstrip(b"\r\n") for line in f if line.strip()]
        times = sorted({line.split(b",")[7] for line in lines if line.count(b",") > 7})
        first = [line for line in lines if line.split(b",")[7:8] == [times[0]]]
        second = [line for line in lines if line.split(b",")[7:8] != [times[0]]]
        return cls(first, second)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def first_positioned(self, west: float, south: float, east: float, north: float) -> set[str]:
        """The hex addresses of the aircraft with a position inside the box in the first
        snapshot: what soar stores of it there, once the snapshot has gone through."""
        found = set()
        for line in self.first:
            msg = parse_line(line.decode())
            if (isinstance(msg, SbsMessage) and msg.lat is not None and msg.lon is not None
                    and west <= msg.lon <= east and south <= msg.lat <= north):
                found.add(f"{msg.icao:06X}")
        return found

    def release_second(self) -> None:
        self._release.set()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                if self.connections > 1:
                    continue  # the capture is over: every later connection is refused at once
                try:
                    conn.sendall(b"".join(line + b"\r\n" for line in self.first))
                    self.first_sent.set()
                    self._release.wait()
                    conn.sendall(b"".join(line + b"\r\n" for line in self.second))
                    self.second_sent.set()
                except OSError:
                    pass  # soar went away (stopped at the end of the tests)


@dataclass
class OgnFeed:
    lines: list[bytes]
    sock: socket.socket = field(default_factory=_listener)
    sent: threading.Event = field(default_factory=threading.Event)
    offset_s: int = 0
    newest: float = 0.0
    oldest: float = 0.0
    stopping: bool = False

    @classmethod
    def from_capture(cls, testdata: Path) -> OgnFeed:
        raw = (testdata / OGN_FULL_FEED).read_bytes().splitlines()
        return cls([line for line in raw if line.strip()])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def positioned_receivers(self) -> set[str]:
        """The names of the receivers that send their own position in the capture: what soar
        stores as positioned receivers, once the capture has gone through."""
        records = (parse_ogn(line.decode(errors="replace")) for line in self.lines)
        return {r.header.name for r in records if isinstance(r, ReceiverBeacon)}

    def shifted(self) -> list[bytes]:
        """The capture with every beacon time moved so the newest is 5 s before now."""
        seconds = [int(m[2]) * 3600 + int(m[3]) * 60 + int(m[4])
                   for m in (_APRS_TIME.search(line) for line in self.lines) if m]
        now = time.time()
        self.offset_s = round(now - 5 - now // 86400 * 86400) - max(seconds)
        # unix times of the newest and the oldest beacon as sent
        self.newest = now // 86400 * 86400 + max(seconds) + self.offset_s
        self.oldest = self.newest - (max(seconds) - min(seconds))

        def shift(m: re.Match[bytes]) -> bytes:
            t = (int(m[2]) * 3600 + int(m[3]) * 60 + int(m[4]) + self.offset_s) % 86400
            return m[1] + b"%02d%02d%02dh" % (t // 3600, t // 60 % 60, t % 60)

        return [_APRS_TIME.sub(shift, line, count=1) for line in self.lines]

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"# aprsc 2.1.14-g5e22b37\r\n")
                login = b""
                while b"\n" not in login:
                    chunk = conn.recv(1024)
                    if not chunk:
                        break
                    login += chunk
                conn.sendall(b"# logresp SOAR unverified, server TEST\r\n")
                conn.sendall(b"".join(line + b"\r\n" for line in self.shifted()))
                self.sent.set()
                conn.settimeout(0.5)
                while not self.stopping:  # stay connected, reading the keepalives
                    try:
                        if not conn.recv(1024):
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        break


@dataclass
class RunningSoar:
    base: str
    sbs: SbsFeed
    ogn: OgnFeed
    process: subprocess.Popen[bytes]
    log: Path
    inactive_after_s: int


@contextlib.contextmanager
def run_soar(testdata: Path, tmp: Path, inactive_after_s: int = 300) -> Iterator[RunningSoar]:
    sbs, ogn = SbsFeed.from_capture(testdata), OgnFeed.from_capture(testdata)
    threads = [threading.Thread(target=feed.serve, daemon=True) for feed in (sbs, ogn)]
    for thread in threads:
        thread.start()
    port = free_port()
    env = soar_env(
        SOAR_DATA_DIR=str(tmp / "var"), SOAR_HTTP_ADDR=f"127.0.0.1:{port}",
        SOAR_LOG_FORMAT="json", SOAR_SHUTDOWN_DEADLINE="20",
        SOAR_SBS_SERVERS=sbs.address, SOAR_APRS_SERVER=ogn.address,
        SOAR_ELEVATION_DIR=str(testdata / "elevation"),
        SOAR_MAP_INACTIVE_AFTER=str(inactive_after_s),
    )
    log = tmp / "soar.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "soar"], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, 180, log)
        yield RunningSoar(base, sbs, ogn, process, log, inactive_after_s)
    finally:
        ogn.stopping = True
        sbs.release_second()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for feed in (sbs, ogn):
            with contextlib.suppress(OSError):
                feed.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            feed.sock.close()
