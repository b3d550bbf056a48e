"""HTTP and WebSocket: the API, the pages, the live hub and the server that runs them.

Owns everything served on `http_addr` (`app`, `api`, `queries`, `map_api`, `pages`, `live`,
`openapi`, `connections`, `server`). Its modules may import any lower layer (`soar.store`,
`soar.tracking`, `soar.protocols`, `soar.ingest`'s metrics, `soar.live`, `soar.broker`,
`soar.config`, ...: `LAYERS` in tests/test_layering.py); nothing below imports them, and the
pipeline beside them neither. The public names are exported here, loaded on first use: this
module imports only its own.

May import: soar.web
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soar.web.app import WebContext, open_api_pool
    from soar.web.live import AircraftDirectory, LiveHub
    from soar.web.server import listen_socket, serve_web

# name -> module: a name is imported with its module when first asked for, so importing
# the package costs nothing and cannot create an import cycle
_EXPORTS = {
    "AircraftDirectory": "live",
    "LiveHub": "live",
    "WebContext": "app",
    "listen_socket": "server",
    "open_api_pool": "app",
    "serve_web": "server",
}

__all__ = [
    "AircraftDirectory",
    "LiveHub",
    "WebContext",
    "listen_socket",
    "open_api_pool",
    "serve_web",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
