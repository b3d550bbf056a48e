"""Which live track owns which partition: rendezvous (highest random weight) hashing. Pure.

Every track computes the same answer from the same set of live track ids, with no coordination:
partition p goes to the track whose `weight(track, p)` is highest. When a track joins, it takes
only the partitions it now wins, from whoever held them; when one leaves, only its partitions
move, each to the next-highest weight. So a returning track gets back exactly what it had.
The weight is BLAKE2b of the track id and partition: stable across processes and versions.

May import: nothing of soar
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(track: str, partition: int) -> int:
    digest = hashlib.blake2b(f"{track}\x00{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(partition: int, tracks: Iterable[str]) -> str | None:
    """The track that owns `partition` (None when there is no track)."""
    best: tuple[int, str] | None = None
    for track in tracks:
        candidate = (weight(track, partition), track)  # ties (never seen) broken by id
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]


def assignment(partitions: int, tracks: Iterable[str]) -> dict[int, str]:
    """partition -> owning track, for every partition (empty when no track is live)."""
    live = sorted(set(tracks))
    if not live:
        return {}
    return {p: owner(p, live) or live[0] for p in range(partitions)}


def share(track: str, partitions: int, tracks: Iterable[str]) -> frozenset[int]:
    """The partitions `track` owns when `tracks` are live (itself counted as live)."""
    live = set(tracks) | {track}
    return frozenset(p for p, t in assignment(partitions, live).items() if t == track)
