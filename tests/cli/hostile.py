"""Hostile text for output tests: the classes of finding 6 (rich markup and emoji codes, ANSI CSI and
OSC sequences, C0/C1 controls, bidi overrides and zero-width characters, NUL, invalid UTF-8), as
fixed examples and as hypothesis strategies that mix them with ordinary text."""

from __future__ import annotations

import re
import unicodedata

from hypothesis import strategies as st

from guestward.cli.output import clean

CLASSES: dict[str, list[str]] = {
    "markup": ["[/x]evil", "[black on black]hidden[/]", "[/]", "[link=http://e.test]x[/link]", "[conceal]c",
               "[bold", "\\[red]", "tail\\", ":red_circle:", "[@click=quit]", "[#ff0000]r"],
    "csi": ["\x1b[8m", "\x1b[2J\x1b[H", "\x1b[30;40m", "\x9b31m", "\x1b[?1049h"],
    "osc": ["\x1b]0;pwned\x07", "\x1b]8;;http://e.test\x1b\\link\x1b]8;;\x1b\\", "\x9d0;t\x9c", "\x1bP+q\x1b\\"],
    "c0c1": ["\x07", "\b\b\bok", "\r", "a\nb", "\t", "\x7f", "\x85", "\x90", "\x1b"],
    "bidi": ["\u202eevil\u202c", "\u2066x\u2069", "\u200b", "\u200d", "\ufeff", "\u2028", "\u061c", "\u00ad"],
    "nul": ["\x00", "a\x00b"],
    # undecodable bytes, as a str carries them after os.fsdecode / surrogateescape
    "invalid_utf8": [b.decode("utf-8", "surrogateescape") for b in (b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x80x")],
}

_ATOMS = st.sampled_from([a for v in CLASSES.values() for a in v])
_PLAIN = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=4)


def hostile(cls: str | None = None) -> st.SearchStrategy[str]:
    """A short string of hostile atoms (of one class, or of all) mixed with any other characters."""
    atoms = st.sampled_from(CLASSES[cls]) if cls else _ATOMS
    return st.lists(st.one_of(atoms, atoms, _PLAIN), min_size=1, max_size=4).map("".join).filter(
        lambda s: any(a in s for a in (CLASSES[cls] if cls else [x for v in CLASSES.values() for x in v])))


SGR = re.compile(r"\x1b\[[0-9;]*m")
_SAFE_CONTROLS = {"\n"}


def unsafe_chars(output: str) -> list[str]:
    """Characters of `output` (after removing rich's own SGR colour codes) that a terminal would act on
    or that are invisible; must be empty."""
    bare = SGR.sub("", output)
    return [c for c in bare if c not in _SAFE_CONTROLS
            and unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}]


def shown(value: str) -> str:
    """What a value must look like on the terminal."""
    return clean(value)
