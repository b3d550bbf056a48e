"""DiskSpool: FIFO across segments and restarts, corruption, bounded size, unusable directories."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from soar.spool import HEADER, DiskSpool, SpoolError, SpoolFull, SyncPolicy


@pytest.fixture(scope="module")
def sbs_lines(testdata: Path) -> list[bytes]:
    with gzip.open(testdata / "sbs" / "adsbhub-sbs-sample-20260224.txt.gz", "rb") as f:
        return [line.rstrip(b"\r\n") for _, line in zip(range(2000), f, strict=False)]


@pytest.fixture(scope="module")
def ogn_lines(testdata: Path) -> list[bytes]:
    path = testdata / "ogn" / "soar-flight-descended-out-of-range-then-took-off.txt"
    return path.read_bytes().splitlines()


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def drain(spool: DiskSpool, batch: int = 37) -> list[bytes]:
    out: list[bytes] = []
    while records := spool.read(batch):
        out.extend(records)
        assert spool.commit() == len(records)
    return out


def frame_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        (length, _crc) = HEADER.unpack_from(data, offset)
        offset += HEADER.size + length
    return offsets


def test_round_trip_in_order_across_segments(tmp_path: Path, sbs_lines: list[bytes]) -> None:
    with DiskSpool(tmp_path / "s", max_bytes=1 << 20, segment_bytes=8192) as spool:
        spool.append_many(sbs_lines[:1000])
        for line in sbs_lines[1000:]:
            spool.append(line)
        assert len(segments(tmp_path / "s")) > 10
        assert spool.depth_records == len(sbs_lines)
        assert spool.depth_bytes == sum(HEADER.size + len(line) for line in sbs_lines)
        assert drain(spool) == sbs_lines
        assert spool.depth_records == 0 and spool.depth_bytes == 0
        # Consumed segments are deleted; only the one still being appended to is left.
        assert len(segments(tmp_path / "s")) == 1
        assert spool.full_refusals == spool.corrupt_records == 0


def test_reads_interleaved_with_appends(tmp_path: Path, ogn_lines: list[bytes]) -> None:
    with DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=4096, sync=SyncPolicy.NONE) as spool:
        got: list[bytes] = []
        for i in range(0, len(ogn_lines), 50):
            spool.append_many(ogn_lines[i : i + 50])
            got += spool.read(30)
            spool.commit()
        got += drain(spool)
        assert got == ogn_lines
        assert spool.read(10) == []


@pytest.mark.parametrize("sync", list(SyncPolicy))
def test_position_survives_restart(
    tmp_path: Path, ogn_lines: list[bytes], sync: SyncPolicy
) -> None:
    records = ogn_lines[:300]
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=4096, sync=sync)
    spool.append_many(records)
    assert spool.read(120) == records[:120]
    spool.commit()
    assert spool.read(50) == records[120:170]  # read, never acknowledged
    spool.close()

    spool = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    assert spool.depth_records == 180
    assert spool.depth_bytes == sum(HEADER.size + len(r) for r in records[120:])
    spool.append_many(ogn_lines[300:310])
    assert drain(spool) == records[120:] + ogn_lines[300:310]
    spool.close()

    spool = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    assert spool.depth_records == 0
    assert spool.read(10) == []
    spool.close()


def test_crash_between_read_and_commit_redelivers(tmp_path: Path, ogn_lines: list[bytes]) -> None:
    crashed = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    crashed.append_many(ogn_lines[:100])
    assert crashed.read(40) == ogn_lines[:40]
    crashed.commit()
    assert crashed.read(40) == ogn_lines[40:80]
    # No close(): the process died. FLUSH already handed every append to the OS.
    restarted = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    assert drain(restarted) == ogn_lines[40:100]
    restarted.close()


def test_rewind_delivers_the_same_records_again(tmp_path: Path, ogn_lines: list[bytes]) -> None:
    with DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=2048) as spool:
        spool.append_many(ogn_lines[:100])
        first = spool.read(60)
        assert spool.in_flight == 60
        spool.rewind()
        assert spool.in_flight == 0
        assert spool.read(60) == first == ogn_lines[:60]
        assert spool.depth_records == 100


def test_corrupt_payload_is_skipped_and_counted_after_restart(
    tmp_path: Path, ogn_lines: list[bytes]
) -> None:
    records = ogn_lines[:200]
    with DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=4096) as spool:
        spool.append_many(records)
    first, victim = segments(tmp_path)[:2]
    offsets = frame_offsets(victim)
    data = bytearray(victim.read_bytes())
    data[offsets[3] + HEADER.size + 5] ^= 0x40  # a payload byte of the segment's 4th record
    victim.write_bytes(bytes(data))
    lost_index = len(frame_offsets(first)) + 3

    with DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=4096) as spool:
        assert spool.corrupt_records == 1
        assert spool.depth_records == len(records) - 1
        got = drain(spool)
        assert got == records[:lost_index] + records[lost_index + 1 :]
        assert spool.corrupt_records == 1, "counted once, at the scan"
        assert REGISTRY.get_sample_value(
            "soar_spool_corrupt_records_total", {"spool": spool.name}
        ) == pytest.approx(1)


def test_corruption_found_while_open_is_counted_once(
    tmp_path: Path, ogn_lines: list[bytes]
) -> None:
    with DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16) as spool:
        spool.append_many(ogn_lines[:10])
        path = segments(tmp_path)[0]
        offset = frame_offsets(path)[2]
        with path.open("r+b") as f:
            f.seek(offset + HEADER.size)
            byte = f.read(1)
            f.seek(offset + HEADER.size)
            f.write(bytes([byte[0] ^ 0xFF]))
        assert spool.read(10) == ogn_lines[:2] + ogn_lines[3:10]
        assert spool.corrupt_records == 1
        assert spool.depth_records == 9
        spool.rewind()
        assert spool.read(10) == ogn_lines[:2] + ogn_lines[3:10]
        assert spool.corrupt_records == 1
        spool.commit()
        assert spool.depth_records == 0


def test_corrupt_length_resyncs_at_the_next_segment(tmp_path: Path, ogn_lines: list[bytes]) -> None:
    records = ogn_lines[:200]
    with DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=4096) as spool:
        spool.append_many(records)
    first, second = segments(tmp_path)[:2]
    in_first = len(frame_offsets(first))
    offsets = frame_offsets(second)
    in_second = len(offsets)
    with second.open("r+b") as f:
        f.seek(offsets[2])
        f.write(struct.pack("<I", 0xFFFF0000))

    with DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=4096) as spool:
        assert spool.corrupt_records == 1  # the rest of the segment, unknown how many records
        got = drain(spool)
    # The two records before the bad length are delivered; the rest of that segment is not.
    assert got == records[: in_first + 2] + records[in_first + in_second :]


def test_torn_tail_after_crash(tmp_path: Path, ogn_lines: list[bytes]) -> None:
    with DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16) as spool:
        spool.append_many(ogn_lines[:20])
    path = segments(tmp_path)[0]
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 7)  # the last record was half written

    with DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16) as spool:
        assert spool.corrupt_records == 1
        assert spool.depth_records == 19
        spool.append_many(ogn_lines[20:25])  # goes to a fresh segment, not behind the torn bytes
        assert len(segments(tmp_path)) == 2
        assert drain(spool) == ogn_lines[:19] + ogn_lines[20:25]


def test_length_corruption_found_while_open(tmp_path: Path) -> None:
    records = [bytes([i]) * 30 for i in range(10)]
    with DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16) as spool:
        spool.append_many(records)
        path = segments(tmp_path)[0]
        with path.open("r+b") as f:
            f.seek(frame_offsets(path)[4])
            f.write(struct.pack("<I", 10_000))
        assert spool.read(100) == records[:4]
        assert spool.corrupt_records == 6  # the six records from the bad length on
        assert spool.depth_records == 4
        spool.append(b"after")  # lands in a new segment, readable
        assert spool.read(100) == [b"after"]
        spool.commit()
        assert spool.depth_records == 0


def test_full_spool_refuses_and_keeps_everything(tmp_path: Path) -> None:
    records = [i.to_bytes(4, "big") + b"." * 38 for i in range(200)]  # 50 bytes framed
    spool = DiskSpool(tmp_path, max_bytes=1000, segment_bytes=250, name="test-full")
    before = REGISTRY.get_sample_value(
        "soar_spool_full_total", {"spool": "test-full", "reason": "max_bytes"}
    )
    accepted = 0
    with pytest.raises(SpoolFull) as info:
        for record in records:
            spool.append(record)
            accepted += 1
    assert info.value.reason == "max_bytes" and spool.full == "max_bytes"
    assert accepted == 20 and spool.disk_bytes == 1000
    assert spool.depth_records == accepted
    after = REGISTRY.get_sample_value(
        "soar_spool_full_total", {"spool": "test-full", "reason": "max_bytes"}
    )
    assert (after or 0.0) - (before or 0.0) == 1
    # Reading and acknowledging makes room again, down to the last segment.
    assert drain(spool) == records[:accepted]
    spool.append_many(records[accepted : accepted + 20])
    assert spool.full is None
    assert drain(spool) == records[accepted : accepted + 20]
    spool.close()


def test_append_many_is_all_or_nothing(tmp_path: Path) -> None:
    records = [i.to_bytes(4, "big") + b"." * 38 for i in range(30)]
    with DiskSpool(tmp_path, max_bytes=1000, segment_bytes=250) as spool:
        spool.append_many(records[:15])
        with pytest.raises(SpoolFull):
            spool.append_many(records[15:])  # 15 more would not fit
        assert spool.depth_records == 15
        assert drain(spool) == records[:15]


def test_record_larger_than_the_spool_goes_alone_into_an_empty_one(tmp_path: Path) -> None:
    with DiskSpool(tmp_path, max_bytes=100, segment_bytes=100) as spool:
        spool.append(b"x" * 200)
        with pytest.raises(SpoolFull):
            spool.append(b"ok")
        assert drain(spool) == [b"x" * 200]
        spool.append(b"ok")
        assert drain(spool) == [b"ok"]


def test_the_disk_reserve_is_kept(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with DiskSpool(tmp_path / "a", max_bytes=1 << 20, min_free_bytes=free * 2) as spool:
        with pytest.raises(SpoolFull) as info:
            spool.append(b"record")
        assert info.value.reason == "disk_reserve"
        assert spool.depth_records == 0 and spool.disk_bytes == 0
    with DiskSpool(tmp_path / "b", max_bytes=1 << 20, min_free_bytes=0) as spool:
        spool.append(b"record")
        assert drain(spool) == [b"record"]


def test_directory_that_is_a_file_raises_spool_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    with pytest.raises(SpoolError) as info:
        DiskSpool(blocker / "spool", max_bytes=1 << 20)
    assert "not-a-dir" in str(info.value)
    assert info.value.path == blocker / "spool"


_OPEN_SPOOL = """
import sys
from soar.spool import DiskSpool, SpoolError
try:
    DiskSpool(sys.argv[1], max_bytes=1 << 20)
except SpoolError as exc:
    print(f"SpoolError path={exc.path} {exc}")
"""


def test_read_only_directory_raises_spool_error(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    # root ignores file modes: as root, open the spool in a child that has lost the
    # capabilities which let root write anywhere (as soar running as a service user would be)
    command = [sys.executable, "-c", _OPEN_SPOOL, str(directory / "spool")]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "util-linux setpriv is needed to test file modes as root"
        command = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *command]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        directory.chmod(0o700)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"SpoolError path={directory / 'spool'} "), result.stdout
    assert "ro" in result.stdout


def test_directory_removed_while_running_raises_spool_error(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path / "gone", max_bytes=1 << 20, segment_bytes=100)
    shutil.rmtree(tmp_path / "gone")
    (tmp_path / "gone").write_bytes(b"")  # and something else took its place
    with pytest.raises(SpoolError) as info:
        for _ in range(10):  # the second segment cannot be created
            spool.append(b"r" * 40)
    assert str(tmp_path / "gone") in str(info.value)
    spool.close()


def test_unreadable_cursor_redelivers_from_the_oldest(tmp_path: Path) -> None:
    records = [b"a", b"b", b"c"]
    with DiskSpool(tmp_path, max_bytes=1 << 20) as spool:
        spool.append_many(records)
        spool.read(2)
        spool.commit()
    (tmp_path / "cursor.json").write_text("{garbage")
    with DiskSpool(tmp_path, max_bytes=1 << 20) as spool:
        assert drain(spool) == records


def test_closed_spool_refuses(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=1 << 20)
    spool.close()
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        spool.append(b"x")


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 12), st.integers(0, 60)),
        st.tuples(st.just("read"), st.integers(1, 15), st.just(0)),
        st.tuples(st.just("commit"), st.just(0), st.just(0)),
        st.tuples(st.just("rewind"), st.just(0), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, max_bytes=st.sampled_from([400, 1500, 1 << 20]))
def test_fifo_no_duplicates_no_silent_loss(ops: list[tuple[str, int, int]], max_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)

        def open_spool() -> DiskSpool:
            return DiskSpool(directory, max_bytes=max_bytes, segment_bytes=max_bytes // 4)

        spool = open_spool()
        appended = 0
        acked: list[int] = []
        in_flight: list[int] = []

        def check_accounting() -> None:
            assert appended == len(acked) + spool.depth_records

        for op, n, size in ops:
            if op == "append":
                for _ in range(n):
                    try:
                        spool.append(appended.to_bytes(4, "big") + b"p" * size)
                    except SpoolFull:
                        assert spool.depth_records > 0, "an empty spool takes a record"
                        break
                    appended += 1
                    assert spool.disk_bytes <= max(max_bytes, HEADER.size + 4 + size)
            elif op == "read":
                got = [int.from_bytes(r[:4], "big") for r in spool.read(n)]
                in_flight += got
                delivered = acked + in_flight
                assert delivered == sorted(set(delivered)), "FIFO, never twice"
            elif op == "commit":
                assert spool.commit() == len(in_flight)
                acked += in_flight
                in_flight = []
                check_accounting()
            elif op == "rewind":
                spool.rewind()
                in_flight = []
                check_accounting()
            else:
                spool.close()
                spool = open_spool()
                in_flight = []
                check_accounting()
        spool.rewind()
        in_flight = []
        while records := spool.read(50):
            acked += [int.from_bytes(r[:4], "big") for r in records]
            spool.commit()
        assert acked == sorted(set(acked))
        assert spool.depth_records == 0
        assert spool.corrupt_records == 0
        assert acked == list(range(appended)), "nothing lost, nothing twice"
        spool.close()
