"""soar.timeconv: µs since the epoch and aware datetimes convert both ways without loss."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from soar.ingest.capture import keepalive_us
from soar.timeconv import EPOCH, ts, ts_or_none, us, us_or_none

#: every µs a datetime can hold, 0001-01-01 to 9999-12-31
MICROS = st.integers(min_value=us(dt.datetime.min.replace(tzinfo=dt.UTC)),
                     max_value=us(dt.datetime.max.replace(tzinfo=dt.UTC)))


@given(MICROS)
def test_microseconds_round_trip_exactly(micros: int) -> None:
    moment = ts(micros)
    assert moment.tzinfo is dt.UTC
    assert us(moment) == micros
    assert ts_or_none(micros) == moment and us_or_none(moment) == micros


#: fixed offsets: an ambiguous local time (a DST fold) never compares equal across zones
OFFSETS = st.builds(dt.timezone, st.timedeltas(min_value=-dt.timedelta(hours=23, minutes=59),
                                               max_value=dt.timedelta(hours=23, minutes=59)))


@given(st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31),
                    timezones=OFFSETS))
def test_an_aware_datetime_in_any_offset_is_the_same_instant(moment: dt.datetime) -> None:
    assert ts(us(moment)) == moment


def test_known_instants(testdata: Path) -> None:
    assert us(EPOCH) == 0
    # a real APRS-IS keep-alive line, read as captures read it
    path = testdata / "ogn" / "ognclientjava-server-sentences-20141015.txt"
    line = next(raw for raw in path.read_bytes().splitlines() if keepalive_us(raw) is not None)
    assert b"15 Oct 2014 10:25:54 GMT" in line
    assert keepalive_us(line) == 1_413_368_754_000_000
    assert ts(1_413_368_754_000_000) == dt.datetime(2014, 10, 15, 10, 25, 54, tzinfo=dt.UTC)
    assert ts(-1) == dt.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC)
    assert ts_or_none(None) is None and us_or_none(None) is None
