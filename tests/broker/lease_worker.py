"""A track process for the lease takeover test: holds partition leases until it is killed."""

from __future__ import annotations

import sys

import trio

from soar.broker.client import open_link
from soar.broker.lease import PartitionLeases


async def main(url: str, bucket: str, track: str, partitions: int, lease_s: float) -> None:
    async with open_link(url) as link:
        store = await link.lease_bucket(bucket, lease_s)
        await PartitionLeases(store, track, partitions, lease_s).run()


if __name__ == "__main__":
    url, bucket, track, partitions, lease_s = sys.argv[1:6]
    trio.run(main, url, bucket, track, int(partitions), float(lease_s))
