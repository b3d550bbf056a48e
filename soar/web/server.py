"""The HTTP server of every role: the listening socket bound at start-up, and hypercorn on it.

`listen_socket` binds before anything else starts, so an address in use is one line naming the
setting to change; `serve_web` runs hypercorn (trio worker) with the quart-trio app on it.
"""

from __future__ import annotations

import errno
import os
import socket

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from soar.config import ConfigError, Settings, env_name, split_host_port
from soar.web.app import WebContext, create_app
from soar.web.connections import count_accept_errors


def listen_socket(settings: Settings, key: str) -> socket.socket:
    """A socket listening on the address of setting `key` (`http_addr`, `metrics_addr`).

    Bound at start-up, before the database or the pipeline, and handed to hypercorn later:
    an address in use (another soar?) is a ConfigError naming the setting, not a traceback
    after the whole process has started.
    """
    addr = getattr(settings, key)
    host, port = split_host_port(addr, key)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        # as hypercorn does: a restart does not wait for the old connections' TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(HypercornConfig().backlog)  # listening now holds the port against others
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{key}: {addr} is already in use (another soar running?); "
                f"set {env_name(key)} to a free host:port"
            ) from None
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"{key}: cannot listen on {addr}: {reason}; set {env_name(key)} to a local host:port"
        ) from None
    return sock


async def serve_web(
    settings: Settings,
    ctx: WebContext,
    stop: trio.Event,
    *,
    bind: str | None = None,
    sock: socket.socket | None = None,
    api: bool = True,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn on `sock` (from `listen_socket`), else on `bind` (default `http_addr`) until
    `stop` is set; `api=False`: health and metrics only (see `create_app`)."""
    config = HypercornConfig()
    if sock is not None:
        # hypercorn adopts a descriptor (`fd://`) and closes it itself: give it its own copy,
        # so the caller's socket object stays the caller's to close
        config.bind = [f"fd://{os.dup(sock.fileno())}"]
    else:
        config.bind = [bind or settings.http_addr]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 5.0
    # An idle keep-alive connection costs a descriptor: close it after a while (a held one
    # each from thousands of clients exhausted the process's descriptors).
    config.keep_alive_timeout = settings.http_keep_alive
    count_accept_errors()
    ctx.api_token = settings.api_token
    app = create_app(ctx, api=api)
    await hypercorn_serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)
