"""`soar replay`'s rejects say which: frames a receiver sent twice, ADS-B positions thinned to one
a second, and the same report heard twice are three reasons, not one `duplicate` (issue 15)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from soar.config import load_settings
from soar.protocols.beast import MODE_S_LONG, MODE_S_SHORT, BeastFrame
from soar.replay import run_replay

MLAT_MASK = (1 << 48) - 1
START_US = 1_457_996_400_000_000  # 2016-03-14 23:00 UTC, the sample's first second


def sample_frames(testdata: Path) -> list[BeastFrame]:
    """The pyModeS ADS-B sample (one aircraft, 730 s) as Beast frames, the counter at 12 MHz
    from the recorded times (derived: the sample has no Beast framing of its own)."""
    with (testdata / "adsb" / "pymodes-sample_data_adsb.csv").open(encoding="utf-8-sig") as f:
        rows = [(int(r[0]), bytes.fromhex(r[1])) for r in csv.reader(f)]
    return [
        BeastFrame(MODE_S_LONG if len(msg) == 14 else MODE_S_SHORT,
                   (seconds * 12_000_000 + i * 1_200) & MLAT_MASK, 0x80, msg)
        for i, (seconds, msg) in enumerate(rows)
    ]


async def replay_frames(frames: list[BeastFrame], tmp_path: Path, db_url: str) -> dict[str, Any]:
    path = tmp_path / "capture.beast"
    path.write_bytes(b"".join(f.encode() for f in frames))
    settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path / "var")})
    return await run_replay(settings, db_url, [path], start_us=START_US)


@pytest.mark.time_limit(120)
async def test_adsb_positions_over_one_a_second_are_thinned_not_duplicates(
    testdata: Path, tmp_path: Path, db_url: str
) -> None:
    summary = await replay_frames(sample_frames(testdata), tmp_path, db_url)
    # two positions a second, one kept: 632 of the 933 decoded
    assert summary["reject_reasons"] == {"thinned": 301}
    assert summary["fixes"] == 632


@pytest.mark.time_limit(120)
async def test_frames_a_receiver_sent_twice_are_their_own_reason(
    testdata: Path, tmp_path: Path, db_url: str
) -> None:
    frames = sample_frames(testdata)
    resent = [*frames[:1000], *frames[800:]]  # frames 800..999 sent again after frame 999
    summary = await replay_frames(resent, tmp_path, db_url)
    assert summary["reject_reasons"] == {"capture: beast_repeated": 200, "thinned": 301}
    assert summary["fixes"] == 632  # the same fixes as sent once
