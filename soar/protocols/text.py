"""Text from the feeds made storable: bytes to str, control characters out (sans-io).

A feed is free to send any byte. PostgreSQL refuses a NUL anywhere in a `text` value, and the
writer refuses the whole row for it (one NUL in an SBS callsign cost every later fix of that
aircraft, its aircraft row and its flight rows); other control characters (ESC sequences, BEL,
backspace) are stored but garble every page and terminal that shows them. So the decode step
removes C0 and C1 control characters from every text field of a parsed record, and replaces
bytes that are not UTF-8 with U+FFFD, and says which fields it touched so that each is counted.

Cleaning is per field, after parsing: a control character inside a number is still a bad number
(a rejected line, counted), never a different number. Clean lines, almost all of them, cost one
`str.isprintable()` of the line.

May import: nothing of soar
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, TypeVar

#: C0 controls (NUL, BEL, ESC, tab, ...), DEL and the C1 controls
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
REPLACEMENT = "\ufffd"

#: what was done to a field: control characters removed / bytes that were not UTF-8 replaced
CONTROL = "control"
INVALID_UTF8 = "invalid_utf8"

#: the field label of invalid bytes that ended up in no parsed text field (a rejected line, or
#: a field no record keeps)
LINE = "line"

#: `raw` keeps the line as it was sent, for the rejection log; no table stores it
_SKIPPED = frozenset({"raw"})

R = TypeVar("R")


def decode(data: bytes) -> tuple[str, bool]:
    """`data` as text, and whether some of it was not UTF-8 (replaced by U+FFFD)."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def is_clean(line: str) -> bool:
    """True when no field parsed from `line` can need cleaning (the fast path).

    Conservative: also False for printable-but-unusual characters such as a no-break space,
    which `clean_record` then leaves as they are.
    """
    return line.isprintable()


def strip_controls(value: str) -> str:
    return _CONTROL.sub("", value)


def clean_record(record: R, invalid_utf8: bool = False) -> tuple[R, list[tuple[str, str]]]:
    """`record` (a dataclass, possibly nesting others) with control characters removed from
    every `str` field, and the (field, kind) pairs of what was cleaned.

    With `invalid_utf8` (the line had bytes that were not UTF-8), fields holding U+FFFD are
    reported as `INVALID_UTF8`; when none does, `(LINE, INVALID_UTF8)` is, so every such line is
    counted once at least. Records are rebuilt with `dataclasses.replace`, so frozen ones work.
    """
    found: list[tuple[str, str]] = []
    cleaned = _clean(record, "", found)
    if invalid_utf8 and not any(kind == INVALID_UTF8 for _field, kind in found):
        found.append((LINE, INVALID_UTF8))
    return cleaned, found


def _clean(value: Any, name: str, found: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        if REPLACEMENT in value:
            found.append((name, INVALID_UTF8))
        if _CONTROL.search(value) is None:
            return value
        found.append((name, CONTROL))
        # parsers strip their fields: a control character at an end leaves a space behind
        return strip_controls(value).strip()
    if isinstance(value, tuple):
        items = tuple(_clean(item, name, found) for item in value)
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            if f.name in _SKIPPED:
                continue
            old = getattr(value, f.name)
            new = _clean(old, f"{name}.{f.name}" if name else f.name, found)
            if new is not old:
                # Nothing left (a callsign that was all NUL): absent, as the parser says an
                # empty field is, not "" (which would replace a good callsign and split a flight).
                if new == "" and f.default is None:
                    new = None
                changes[f.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    return value
