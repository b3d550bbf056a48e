"""soar's times (integer microseconds since the Unix epoch, UTC; see `soar.records`) to and from
aware datetimes, exactly: integer arithmetic on timedeltas, no float seconds to round.

The store writes datetimes (PostgreSQL `timestamptz`) and reads them back, captures carry
calendar times; everything between holds the integer.

May import: nothing of soar
"""

from __future__ import annotations

import datetime as dt

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def ts(us: int) -> dt.datetime:
    """Microseconds since the epoch to a UTC datetime."""
    return EPOCH + dt.timedelta(microseconds=us)


def ts_or_none(us: int | None) -> dt.datetime | None:
    return None if us is None else ts(us)


def us(moment: dt.datetime) -> int:
    """An aware datetime to microseconds since the epoch."""
    return (moment - EPOCH) // _MICROSECOND


def us_or_none(moment: dt.datetime | None) -> int | None:
    return None if moment is None else us(moment)
