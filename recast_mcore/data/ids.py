"""Raw user/item ids as they are stored in a prepared dataset's ``items.tsv`` and ``users.tsv``.

Readers decode input bytes as UTF-8 with ``surrogateescape``: an undecodable byte ``b`` becomes the lone
surrogate ``U+DC00 + b``, so two ids that differ only in invalid bytes stay two ids (``errors="replace"``
would map both to U+FFFD and merge them). Such strings, and ids holding a tab or newline (Amazon JSON can
carry them), cannot be written into a TSV as they are. ``escape_id`` makes every id one printable,
valid-UTF-8 field; ``unescape_id`` inverts it exactly:

    \\\\       a backslash
    \\xNN     the raw input byte 0xNN that was not valid UTF-8
    \\uNNNN   the character U+NNNN: control characters (tab, CR, LF, ...), U+2028/U+2029

Ordinary ids (no backslash, control character or invalid byte) are written unchanged.
"""

from __future__ import annotations

import re

_NEEDS_ESCAPE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\udc80-\udcff]")
_ESCAPED = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


def _escape_char(match: re.Match) -> str:
    ch = match.group(0)
    code = ord(ch)
    if ch == "\\":
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def _unescape_seq(match: re.Match) -> str:
    seq = match.group(1)
    if seq == "\\":
        return "\\"
    if seq[0] == "x":
        return chr(0xDC00 + int(seq[1:], 16))
    return chr(int(seq[1:], 16))


def escape_id(raw: str) -> str:
    """The TSV-safe form of a raw id (see module docstring)."""
    return _NEEDS_ESCAPE.sub(_escape_char, raw)


def unescape_id(text: str) -> str:
    """Inverse of ``escape_id``."""
    return _ESCAPED.sub(_unescape_seq, text)


def id_bytes(raw: str) -> bytes:
    """The input bytes a raw id was read from (undoes ``surrogateescape``)."""
    return raw.encode("utf-8", "surrogateescape")
