"""Text that is safe to show: control characters in keys made visible, never obeyed.

An S3 key may hold any character, a newline and an escape sequence included, and keys
reach the daemon log, the journal and the admin's terminal (`s3fuse status`, `sync`,
`pin`). Printed raw, a key `x\\n<0>evil` forges a journald entry of the highest priority
and `\\x1b[2J` clears the screen of whoever reads the status. Every place that shows a
key, a path or an error text passes it through `printable` (log records through the
handler filter in logs.py), so it is written the same way everywhere.
"""
from __future__ import annotations

import re

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


#: C0/C1 controls and DEL (category Cc), lone surrogates (Cs, from undecodable bytes), line
#: and paragraph separators (Zl, Zp) and the bidirectional overrides and isolates, which
#: reorder what a terminal shows (Trojan Source). tests/test_printable.py checks the ranges
#: against unicodedata.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """`text` (str() of it) with every unsafe character written as a Python-style escape
    (`\\n`, `\\x1b`, `\\u202e`); everything else, backslashes included, unchanged."""
    return _UNSAFE.sub(_escape, str(text))


def printable_lines(text: str) -> str:
    """Multi-line `text` (a traceback) kept on its lines, each line made printable."""
    return "\n".join(printable(line) for line in text.split("\n"))
