"""The OGN device database (DDB): who is flying, and who asked not to be tracked or named.

`soar ddb import [FILE|URL]` loads the DDB JSON (default: the public download) into the
`aircraft` table: registration, competition number, model, device type, tracked,
identified. The import is an upsert keyed by `aircraft.id` (= `aircraft_id(address type,
address)`, device type F → flarm, I → icao, O → ogn) that only touches rows whose DDB fields
changed, so running it twice changes nothing. Malformed devices are counted and logged,
never fatal.

`refresh_forever` re-imports daily inside `soar run` and hands the new privacy snapshot to
`on_update`; a failed download or import is logged and counted and tracking goes on.

May import: soar.database, soar.records, soar.tracking
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import structlog
import trio
from prometheus_client import Counter

from soar.records import AddressType, aircraft_id
from soar.tracking.privacy import PrivacyDirectory, read_directory

log = structlog.get_logger(__name__)

DEFAULT_URL = "http://ddb.glidernet.org/download/?j=1&t=1"
DOWNLOAD_TIMEOUT_S = 60.0
BATCH = 2_000
DAY_S = 24 * 3600.0
RETRY_S = 3600.0

DEVICE_TYPES: dict[str, AddressType] = {
    "F": AddressType.FLARM,
    "I": AddressType.ICAO,
    "O": AddressType.OGN,
}
DEVICE_FAMILY = {"F": "FLARM", "I": "ICAO", "O": "OGN"}
_HEX6 = re.compile(r"[0-9A-Fa-f]{6}")
_FLAGS = {"Y": True, "N": False, "": True}

DDB_ROWS = Counter(
    "soar_ddb_rows_total", "DDB devices read by the importer, by outcome", ["result"]
)
DDB_REFRESH = Counter("soar_ddb_refresh_total", "Background DDB refreshes, by outcome", ["result"])


class DdbError(Exception):
    """The DDB could not be read at all (download, file or JSON); one line for the user."""


@dataclass(slots=True, frozen=True)
class DdbDevice:
    aircraft_id: int
    address_type: AddressType
    address: int
    device_type: str
    model: str | None
    registration: str | None
    competition_number: str | None
    tracked: bool
    identified: bool


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def parse_device(raw: object) -> DdbDevice | str:
    """One DDB device, or the reason it cannot be used."""
    if not isinstance(raw, dict):
        return "not_an_object"
    kind = str(raw.get("device_type", "")).strip().upper()
    address_type = DEVICE_TYPES.get(kind)
    if address_type is None:
        return "device_type"
    device_id = str(raw.get("device_id", "")).strip()
    if not _HEX6.fullmatch(device_id):
        return "device_id"
    tracked = _FLAGS.get(str(raw.get("tracked", "")).strip().upper())
    identified = _FLAGS.get(str(raw.get("identified", "")).strip().upper())
    if tracked is None or identified is None:
        return "flag"
    address = int(device_id, 16)
    return DdbDevice(
        aircraft_id=aircraft_id(address_type, address),
        address_type=address_type,
        address=address,
        device_type=DEVICE_FAMILY[kind],
        model=_text(raw.get("aircraft_model")),
        registration=_text(raw.get("registration")),
        competition_number=_text(raw.get("cn")),
        tracked=tracked,
        identified=identified,
    )


def parse_ddb(data: bytes | str) -> tuple[list[DdbDevice], dict[str, int]]:
    """The usable devices (the last of any duplicate id wins) and rejections by reason."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DdbError(f"not DDB JSON: {exc}") from None
    devices = document.get("devices") if isinstance(document, dict) else None
    if not isinstance(devices, list):
        raise DdbError('not DDB JSON: no "devices" list')
    by_id: dict[int, DdbDevice] = {}
    rejected: dict[str, int] = {}
    for raw in devices:
        device = parse_device(raw)
        if isinstance(device, str):
            rejected[device] = rejected.get(device, 0) + 1
            log.warning("ddb.rejected", reason=device, device=repr(raw)[:200])
            continue
        if device.aircraft_id in by_id:
            rejected["duplicate"] = rejected.get("duplicate", 0) + 1
        by_id[device.aircraft_id] = device
    return list(by_id.values()), rejected


def read_source(source: str | Path | None) -> bytes:
    """The DDB bytes from a file or an http(s) URL (default: the public download)."""
    location = str(source) if source is not None else DEFAULT_URL
    if location.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(location, timeout=DOWNLOAD_TIMEOUT_S) as response:
                body: bytes = response.read()
                return body
        except OSError as exc:
            raise DdbError(f"cannot download {location}: {exc}") from None
    try:
        return Path(location).read_bytes()
    except OSError as exc:
        raise DdbError(f"cannot read {location}: {exc.strerror or exc}") from None


_UPSERT = """
INSERT INTO aircraft AS a (id, address_type, address, registration, competition_number,
                           model, device_type, tracked, identified)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], %s::text[],
                     %s::text[], %s::text[], %s::bool[], %s::bool[])
ON CONFLICT (id) DO UPDATE SET
    registration = excluded.registration,
    competition_number = excluded.competition_number,
    model = excluded.model,
    device_type = excluded.device_type,
    tracked = excluded.tracked,
    identified = excluded.identified
WHERE (a.registration, a.competition_number, a.model, a.device_type, a.tracked, a.identified)
      IS DISTINCT FROM
      (excluded.registration, excluded.competition_number, excluded.model,
       excluded.device_type, excluded.tracked, excluded.identified)
RETURNING (xmax = 0) AS inserted
"""


def _batches(devices: list[DdbDevice], size: int) -> Iterator[list[DdbDevice]]:
    for start in range(0, len(devices), size):
        yield devices[start : start + size]


def _columns(batch: Iterable[DdbDevice]) -> list[list[Any]]:
    rows = [
        (
            d.aircraft_id,
            d.address_type.value,
            d.address,
            d.registration,
            d.competition_number,
            d.model,
            d.device_type,
            d.tracked,
            d.identified,
        )
        for d in batch
    ]
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 9


def import_ddb(
    database_url: str, source: str | Path | None, *, progress: bool | None = None
) -> dict[str, int]:
    """Load the DDB into `aircraft`; the summary counts read/inserted/updated/unchanged/rejected.

    Blocking (run it in a thread under trio). One transaction: a failed import leaves the
    table as it was. `progress` None shows a bar only on a terminal.
    """
    from tqdm import tqdm

    devices, rejected = parse_ddb(read_source(source))
    summary = {"read": len(devices) + sum(rejected.values()), "inserted": 0, "updated": 0}
    show = sys.stderr.isatty() if progress is None else progress
    with (
        psycopg.connect(database_url) as conn,
        conn.transaction(),
        tqdm(total=len(devices), unit="device", desc="ddb", disable=not show) as bar,
    ):
        for batch in _batches(devices, BATCH):
            for (inserted,) in conn.execute(_UPSERT, _columns(batch)).fetchall():
                summary["inserted" if inserted else "updated"] += 1
            bar.update(len(batch))
    summary["unchanged"] = len(devices) - summary["inserted"] - summary["updated"]
    summary["rejected"] = sum(rejected.values())
    for reason, count in rejected.items():
        summary[f"rejected_{reason}"] = count
    for result in ("inserted", "updated", "unchanged", "rejected"):
        DDB_ROWS.labels(result).inc(summary[result])
    log.info("ddb.imported", source=str(source or DEFAULT_URL), **summary)
    return summary


def load_privacy(database_url: str) -> PrivacyDirectory:
    """The privacy snapshot from `aircraft` (the one query of `soar.tracking.privacy`). Blocking."""
    with psycopg.connect(database_url) as conn:
        return read_directory(conn)


def tow_ids_for(database_url: str, registrations: Iterable[str]) -> frozenset[int]:
    """The aircraft ids of configured tow plane registrations (case-insensitive). Blocking."""
    wanted = sorted({r.strip().upper() for r in registrations if r.strip()})
    if not wanted:
        return frozenset()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id FROM aircraft WHERE upper(registration) = ANY(%s)", (wanted,)
        ).fetchall()
    return frozenset(int(row[0]) for row in rows)


async def refresh_forever(
    url: str,
    source: str | Path | None,
    on_update: Callable[[PrivacyDirectory], None],
    *,
    every_s: float = DAY_S,
    retry_s: float = RETRY_S,
    on_failure: Callable[[BaseException], None] | None = None,
) -> None:
    """Re-import the DDB every `every_s` seconds and hand `on_update` the new snapshot.

    A failure (download, JSON, database) is logged and counted and retried after `retry_s`;
    it never ends this task or anything else. Runs until cancelled.
    """
    while True:
        try:
            summary = await trio.to_thread.run_sync(
                lambda: import_ddb(url, source, progress=False), abandon_on_cancel=True
            )
            directory = await trio.to_thread.run_sync(load_privacy, url, abandon_on_cancel=True)
        except (DdbError, psycopg.Error, OSError) as exc:
            DDB_REFRESH.labels("failed").inc()
            log.warning("ddb.refresh_failed", error=_first_line(exc), retry_s=retry_s)
            if on_failure is not None:
                on_failure(exc)
            await trio.sleep(retry_s)
            continue
        on_update(directory)
        DDB_REFRESH.labels("ok").inc()
        log.info("ddb.refreshed", devices=summary["read"], private=len(directory))
        await trio.sleep(every_s)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def ddb_command(settings: Any, args: Any) -> int:
    """`soar ddb import [FILE|URL]`: import, print the summary, exit 0 (1 if unreadable)."""
    from soar.database import open_database

    db = open_database(settings)
    try:
        summary = import_ddb(db.url, getattr(args, "source", None))
    except DdbError as exc:
        print(f"soar: ddb: {exc}", file=sys.stderr)
        return 1
    finally:
        db.stop()
    print(" ".join(f"{key}={value}" for key, value in summary.items()))
    return 0
