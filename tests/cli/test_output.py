"""`cli/output.py` through a real rich Console writing ANSI colour: for every hostile class, the
value's visible text is shown (escaped), no control or invisible character from it reaches the
output, its markup changes no style, and it never raises (MarkupError)."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table

from guestward.cli.output import Own, clean, error_line, escape, line, text
from tests.cli.hostile import CLASSES, SGR, hostile, shown, unsafe_chars


def _render(*renderables: object) -> str:
    buf = io.StringIO()
    c = Console(file=buf, force_terminal=True, color_system="truecolor", width=10_000, emoji=False,
                highlight=False)
    for r in renderables:
        c.print(r)
    return buf.getvalue()


def _table(value: str) -> Table:
    t = Table("severity", "finding", title=text(value, "bold"))
    t.add_row(text("critical", "bold red"), text(value))
    t.add_row(text("high", "red"), text("CVE-2026-0001 visible"))
    return t


BASELINE = set(SGR.findall(_render(_table("benign"), error_line("benign"), line(Own("[yellow]w:[/] "), "x"))))


@pytest.mark.parametrize("cls", sorted(CLASSES))
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_hostile_text_is_shown_escaped_and_never_run(cls: str, data: st.DataObject) -> None:
    value = data.draw(hostile(cls))
    out = _render(_table(value), error_line(value), line(Own("[yellow]w:[/] "), value), text(value))
    assert unsafe_chars(out) == []
    bare = SGR.sub("", out)
    assert bare.count(shown(value)) >= 4  # title, cell, error line, warning line (and the bare Text)
    assert "CVE-2026-0001 visible" in bare  # the finding markup tried to hide is there...
    assert set(SGR.findall(out)) <= BASELINE  # ...and no style came from the data (no conceal, no black on black)


@given(st.text())
def test_clean_leaves_nothing_to_clean_and_keeps_ordinary_text(s: str) -> None:
    c = clean(s)
    assert clean(c) == c
    assert unsafe_chars(c) == [] and "\n" not in c
    if s.isprintable():
        assert c == s


@pytest.mark.parametrize("raw, want", [
    ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"), ("\u202eevil", "\\u202eevil"), ("a\x00b", "a\\x00b"),
    (b"\xff\x1b".decode("utf-8", "surrogateescape"), "\\xff\\x1b"), (b"ok\xc3(", "ok\\xc3("),
    ("[/x]evil", "[/x]evil"), ("\x9b31m", "\\x9b31m"), ("caf\u00e9 \u65e5\u672c", "caf\u00e9 \u65e5\u672c"),
])
def test_clean_shows_each_class_as_its_escape(raw: str | bytes, want: str) -> None:
    assert clean(raw) == want


@given(hostile("markup"))
def test_escape_is_inert_in_a_markup_string(value: str) -> None:
    out = _render(f"[green]ok[/] [bold]{escape(value)}[/] [red]end[/]")
    assert SGR.sub("", out).rstrip("\n") == "ok " + shown(value) + " end"
    assert set(SGR.findall(out)) <= set(SGR.findall(_render("[green]ok[/] [bold]x[/] [red]end[/]")))
