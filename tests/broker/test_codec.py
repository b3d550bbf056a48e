"""The envelope batch codec: real captures round-trip; garbage raises CodecError and nothing else."""

from __future__ import annotations

import contextlib
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from soar.broker.codec import (
    MAGIC,
    PROTOCOL_CODES,
    VERSION,
    CodecError,
    decode_batch,
    encode_batch,
)
from soar.records import Envelope, Protocol


def test_real_envelopes_of_every_protocol_round_trip(real_envelopes: list[Envelope]) -> None:
    assert {e.protocol for e in real_envelopes} == set(Protocol)
    for start in range(0, len(real_envelopes), 100):
        batch = real_envelopes[start : start + 100]
        assert decode_batch(encode_batch(batch)) == batch


def test_protocol_codes_are_explicit_and_cover_every_protocol() -> None:
    # Written down, never the enum's order: these bytes are on the wire between versions.
    assert dict(PROTOCOL_CODES) == {Protocol.OGN: 1, Protocol.BEAST: 2, Protocol.SBS: 3}
    body = encode_batch([Envelope(Protocol.SBS, 7, b"MSG,3", "x")])
    assert body[:3] == MAGIC + bytes([VERSION])
    assert body[7] == 3  # the first record's protocol byte


def test_empty_batch_round_trips() -> None:
    assert decode_batch(encode_batch([])) == []


def test_every_truncation_and_extension_of_a_real_batch_is_a_codec_error(
    real_envelopes: list[Envelope],
) -> None:
    body = encode_batch(real_envelopes[295:305])  # OGN and SBS
    for cut in range(len(body)):
        try:
            decode_batch(body[:cut])
        except CodecError:
            continue
        raise AssertionError(f"a batch cut at {cut} of {len(body)} bytes was accepted")
    try:
        decode_batch(body + b"\x00")
    except CodecError as exc:
        assert "after the last envelope" in str(exc)
    else:
        raise AssertionError("trailing bytes accepted")


def test_unknown_version_protocol_and_bad_utf8_are_refused() -> None:
    good = encode_batch([Envelope(Protocol.OGN, 1, b"line", "src")])
    cases = {
        "version": good[:2] + bytes([VERSION + 1]) + good[3:],
        "protocol": good[:7] + b"\x09" + good[8:],
        "source": good.replace(b"src", b"\xff\xfe\xfd"),
        "magic": b"XX" + good[2:],
        "count": good[:3] + struct.pack(">I", 10**9) + good[7:],
    }
    for what, body in cases.items():
        try:
            decode_batch(body)
        except CodecError:
            continue
        raise AssertionError(f"bad {what} accepted")


envelopes = st.builds(
    Envelope,
    st.sampled_from(list(Protocol)),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.binary(max_size=300),
    st.text(max_size=40),
)


@given(st.lists(envelopes, max_size=30))
def test_any_batch_round_trips(batch: list[Envelope]) -> None:
    assert decode_batch(encode_batch(batch)) == batch


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_garbage_raises_codec_error_only(body: bytes) -> None:
    with contextlib.suppress(CodecError):  # anything else fails the test
        decode_batch(body)


@settings(max_examples=300)
@given(st.lists(envelopes, min_size=1, max_size=5), st.data())
def test_mutated_batches_raise_codec_error_only(batch: list[Envelope], data: st.DataObject) -> None:
    body = bytearray(encode_batch(batch))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(body) - 1))
        body[index] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_batch(bytes(body))
    except CodecError:
        return
    assert all(isinstance(e, Envelope) for e in decoded)
