"""Helpers more than one test folder needs, imported as `tests.support` (tests/ is a package)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import trio


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a child process that must be told its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_processes(data_dir: Path) -> list[str]:
    """Command lines of the postgres processes running on `data_dir`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "postgres" in cmdline and str(data_dir) in cmdline:
            found.append(cmdline)
    return found


async def write_rows(url: str, family: Any, items: list[Any], spool_dir: Path) -> None:
    """Commit `items` through a real StoreWriter of `family` (one batch), then close its pool."""
    from soar.store.writer import StoreWriter, open_pool

    pool = open_pool(url, size=1)
    try:
        writer = StoreWriter(pool, family, spool_dir=spool_dir)
        send, receive = trio.open_memory_channel[object](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, receive)
            async with send:
                await send.send(list(items))
    finally:
        await trio.to_thread.run_sync(pool.close)
