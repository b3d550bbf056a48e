"""A batch of envelopes as one JetStream message body (sans-io: bytes in, envelopes out).

Wire format, version 1, big-endian:

    header   magic b"SE" | version u8 | count u32
    record   protocol u8 | received_us i64 | source_len u16 | data_len u32 | source | data
             (count records, then nothing: trailing bytes are an error)

Protocol codes are written down here, not taken from the enum's order, so that adding or
reordering a `Protocol` member can never make one process read another's OGN line as Beast.
`decode_batch` validates everything and raises `CodecError` (one type) for any malformed body,
never `struct.error` or `UnicodeDecodeError`: the consumer counts it and terminates the message.

May import: soar.records
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from soar.records import Envelope, Protocol

MAGIC = b"SE"
VERSION = 1

#: Stable wire codes; never renumber one, only add.
PROTOCOL_CODES: Mapping[Protocol, int] = {Protocol.OGN: 1, Protocol.BEAST: 2, Protocol.SBS: 3}
_PROTOCOL_OF_CODE = {code: protocol for protocol, code in PROTOCOL_CODES.items()}

_HEADER = struct.Struct(">2sBI")
_RECORD = struct.Struct(">BqHI")
MAX_SOURCE_BYTES = 0xFFFF


class CodecError(ValueError):
    """A JetStream message body is not a valid envelope batch; the text says what is wrong."""


def encode_batch(envelopes: Iterable[Envelope]) -> bytes:
    """One message body for `envelopes`, in order. ValueError for an unencodable envelope
    (a source name over 65,535 bytes of UTF-8): that is the caller's bug, not bad input."""
    parts = [b""]
    count = 0
    for env in envelopes:
        source = env.source.encode()
        if len(source) > MAX_SOURCE_BYTES:
            raise ValueError(f"envelope source name too long ({len(source)} bytes)")
        parts.append(_RECORD.pack(PROTOCOL_CODES[env.protocol], env.received_us,
                                  len(source), len(env.data)))
        parts.append(source)
        parts.append(env.data)
        count += 1
    parts[0] = _HEADER.pack(MAGIC, VERSION, count)
    return b"".join(parts)


def decode_batch(body: bytes) -> list[Envelope]:
    """The envelopes in a message body; CodecError when anything about it is malformed."""
    body = bytes(body)
    size = len(body)
    if size < _HEADER.size:
        raise CodecError(f"short batch: {size} bytes")
    magic, version, count = _HEADER.unpack_from(body)
    if magic != MAGIC:
        raise CodecError(f"not an envelope batch (magic {magic!r})")
    if version != VERSION:
        raise CodecError(f"unsupported batch version {version}")
    # every record takes at least its fixed part: refuse absurd counts before allocating
    if count * _RECORD.size > size - _HEADER.size:
        raise CodecError(f"batch claims {count} envelopes in {size} bytes")
    envelopes: list[Envelope] = []
    append = envelopes.append
    unpack_from = _RECORD.unpack_from
    protocols = _PROTOCOL_OF_CODE
    record_size = _RECORD.size
    offset = _HEADER.size
    for index in range(count):
        if offset + record_size > size:
            raise CodecError(f"envelope {index}: truncated header")
        code, received_us, source_len, data_len = unpack_from(body, offset)
        offset += record_size
        protocol = protocols.get(code)
        if protocol is None:
            raise CodecError(f"envelope {index}: unknown protocol code {code}")
        middle = offset + source_len
        end = middle + data_len
        if end > size:
            raise CodecError(f"envelope {index}: truncated body")
        try:
            source = body[offset:middle].decode()
        except UnicodeDecodeError:
            raise CodecError(f"envelope {index}: source is not UTF-8") from None
        append(Envelope(protocol, received_us, body[middle:end], source))
        offset = end
    if offset != size:
        raise CodecError(f"{size - offset} bytes after the last envelope")
    return envelopes
