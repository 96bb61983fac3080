"""Untrusted text made safe for a terminal: the one place every command's output goes through.

A guest's name, an image's `/etc/hostname`, a passwd entry, a feed's package name, a file name, a
domain XML attribute, an exception message that quotes any of them: all of it is *data*, written by
someone other than the operator. Printed as it is, it can run terminal escapes (`ESC]0;title BEL`,
`ESC[8m` hides what follows), reorder a line (bidi overrides), hide text (zero-width characters), or,
through rich, be read as markup (`[/x]` crashes with MarkupError, `[black on black]` hides a finding)
or as an emoji code (`:red_circle:`).

Contract:

* `clean(value)` -> `str`: every character a terminal would act on or that is invisible (C0 and C1
  controls, DEL, newline and tab too, Unicode format characters such as bidi overrides, zero-width
  and BOM, line/paragraph separators, lone surrogates that stand for undecodable bytes, private-use
  and unassigned code points) becomes a visible escape (`\\x1b`, `\\u202e`); everything else is kept
  as it is. Bytes are decoded as UTF-8 with invalid bytes shown as `\\xNN`, and so is a str that
  carries undecodable bytes as surrogateescape stand-ins (`os.fsdecode` of a file name). Idempotent
  in what it shows: the result contains no character that `clean` would change.
* `text(value, style)` -> `rich.text.Text`: the cleaned value as a Text, which rich never parses for
  markup or emoji: use it for table cells and for anything passed to `Console.print`.
* `line(*parts)` -> `Text`: guestward's own markup literals (`Own("[red]error:[/]")`) joined with
  untrusted values (everything else), for one-line messages.
* `console(stderr=False)`: a rich Console with markup for our literals but no emoji codes and no
  automatic highlighting (which would recolour data), full width on a pipe.
* `plain(value)`: `clean` for lines written with `print()` (flows, events): the same escapes.

JSON output needs none of this: `json.dumps` (ensure_ascii, the default) escapes every control and
non-ASCII character, and the reader is a program.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from rich.console import Console
from rich.markup import escape as _markup_escape
from rich.text import Text

# Categories of characters that are never shown as themselves: controls (Cc), format (Cf: bidi
# overrides and isolates, ZWSP/ZWJ, BOM, soft hyphen), surrogates (Cs: undecodable bytes from
# surrogateescape), private use (Co), unassigned (Cn), line and paragraph separators (Zl, Zp).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


@lru_cache(maxsize=65536)
def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in _UNSAFE_CATEGORIES


def _escape_char(ch: str) -> str:
    n = ord(ch)
    if 0xDC80 <= n <= 0xDCFF:  # surrogateescape's stand-in for an undecodable byte: show the byte
        return f"\\x{n - 0xDC00:02x}"
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def clean(value: object) -> str:
    """`value` as text with every control, format or invisible character replaced by a visible escape."""
    if isinstance(value, bytes | bytearray):
        s = bytes(value).decode("utf-8", errors="backslashreplace")
    else:
        s = value if isinstance(value, str) else str(value)
    if s.isascii() and s.isprintable():  # the common case: nothing to do
        return s
    return "".join(_escape_char(ch) if _unsafe(ch) else ch for ch in s)


plain = clean


def escape(value: object) -> str:
    """`value` cleaned and escaped for interpolation into a rich markup string (printed by a console
    from `console()`, which does not replace emoji codes). Prefer `text` or `line`."""
    return _markup_escape(clean(value))


def text(value: object, style: str = "") -> Text:
    """An untrusted value as a rich Text: cleaned, never parsed for markup or emoji."""
    return Text(clean(value), style=style)


@dataclass(frozen=True)
class Own:
    """guestward's own markup literal (never built from data), for `line`."""

    markup: str


def line(*parts: object, style: str = "") -> Text:
    """One line: `Own` parts are our markup, `Text` parts are kept as built, anything else is data."""
    out = Text(style=style)
    for p in parts:
        if isinstance(p, Own):
            out.append_text(Text.from_markup(p.markup, emoji=False))
        elif isinstance(p, Text):
            out.append_text(p)
        else:
            out.append(clean(p))
    return out


def error_line(message: object) -> Text:
    """`error: MESSAGE`, the message being data (it quotes inputs)."""
    return line(Own("[red]error:[/] "), message)


def console(stderr: bool = False) -> Console:
    """A Console for guestward's output: our markup, no emoji codes, no highlighter recolouring data;
    stdout on a pipe gets full-width tables (160 columns, or $COLUMNS if wider) so CI logs and tests
    see whole rows."""
    if stderr:
        return Console(stderr=True, soft_wrap=True, emoji=False, highlight=False)
    if sys.stdout.isatty():
        return Console(emoji=False, highlight=False)
    try:
        wide = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        wide = 0
    return Console(width=max(160, wide), emoji=False, highlight=False)
