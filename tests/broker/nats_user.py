"""A second process using the embedded nats-server: prints its URL, stops when stdin closes."""

from __future__ import annotations

import sys
from pathlib import Path

from soar.broker.embedded import EmbeddedNats

if __name__ == "__main__":
    server = EmbeddedNats(Path(sys.argv[1]))
    print(server.start(), flush=True)
    sys.stdin.read()
    server.stop()
