"""`host:port` as every setting and feed client reads it: one parser, so the configuration check
and the source that later connects can never disagree about what an address means.

Accepted: `host:port`, `[v6addr]:port`, and — where the protocol has a standard port — a bare
`host`, `[v6addr]` or unbracketed `v6addr`. An IPv6 address with a port needs its brackets
(`::1:30005` is not an address with a port).

`free_loopback_port()` picks a port for a child process that must be told its address (tests,
benches): outside the kernel's ephemeral range, so no outgoing connection can take it between
the pick and the child's bind.

May import: nothing of soar
"""

from __future__ import annotations

import ipaddress
import random
import socket
from pathlib import Path

#: The standard ports a bare host means, per feed protocol.
APRS_IS_PORT = 14580  # aprsc's filtered port; 10152 is the unfiltered full feed
BEAST_PORT = 30005
SBS_PORT = 30003


def parse_host_port(spec: str, default_port: int | None = None) -> tuple[str, int]:
    """(host, port) of `spec`; ValueError saying what was expected when it is not an address."""
    text = spec.strip()
    expected = "host:port" if default_port is None else "host[:port]"
    if text.startswith("["):
        inner, closed, rest = text[1:].partition("]")
        if not closed or not _is_ipv6(inner):
            raise ValueError(f"expected {expected} ([v6addr]:port for IPv6), got {spec!r}")
        host, port = inner, rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            raise ValueError(f"expected {expected}, got {spec!r}")
    elif text.count(":") > 1:  # a bare IPv6 address: only without a port
        if not _is_ipv6(text) or default_port is None:
            raise ValueError(f"expected {expected} ([v6addr]:port for IPv6), got {spec!r}")
        return text, default_port
    else:
        host, colon, port_text = text.partition(":")
        port = port_text if colon else None
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"expected {expected}, got {spec!r}")
    if port is None:
        if default_port is None:
            raise ValueError(f"expected host:port (no standard port here), got {spec!r}")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected {expected} with a port from 1 to 65535, got {spec!r}")
    return host, int(port)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.partition("%")[0])  # a zone id (%eth0) is allowed
    except ValueError:
        return False
    return True


#: Where `free_loopback_port` looks when the ephemeral range leaves room below it.
PICK_RANGE = (10_000, 32_767)


def free_loopback_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on or connects from on `host` now, for a child to bind.

    A port the kernel hands out for `bind(..., 0)` comes from its ephemeral range, which every
    outgoing connection draws from too: with thousands of test clients connecting, one of them
    could take the port before the child binds it. So the port is picked at random below that
    range (each pick is checked with a bind).
    """
    low, high = PICK_RANGE
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        high = min(high, ephemeral_low - 1)
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randint(low, high) if high > low else 0
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError(f"no free port found on {host} in {low}..{high}")
