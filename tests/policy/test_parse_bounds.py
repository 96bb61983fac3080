"""Hostile policy text costs bounded time and memory, and gets one clear `file:line: message`:
huge files, many nodes, aliases (billion laughs), deep nesting, multi-byte text over the byte cap,
non-ASCII digits in ports, characters YAML does not allow (their real line)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestward.policy import PolicyError, parse_policies, parse_port
from guestward.policy.parse import MAX_SOURCE_BYTES

AS_LIMIT = 768 * 1024 * 1024  # address space of the child: the interpreter, pydantic and the input
SECONDS = 20.0  # on this shared 2-core machine under load; about 3 s when idle

HOSTILE = {
    # name: (python expression building the text, expected line, words of the message)
    "many-nodes": ('"- a\\n" * (2 * 1024 * 1024)', 200_000, "too many YAML nodes"),
    "flow-nodes": ('"[" + "a," * (3 * 1024 * 1024) + "a]"', 1, "too many YAML nodes"),
    "billion-laughs": ('"a: &a [x, x]\\n" + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, '
                       '*{chr(97 + i)}]\\n" for i in range(20))', 1, "anchors and aliases"),
    "deep-flow": ('"[" * 4_000_000', 1, "nested too deeply"),
    "deep-block": ('"".join(" " * i + "- \\n" for i in range(2000))', 65, "nested too deeply"),
    "over-cap-bytes": ('"# " + "\\u00e9" * (MAX // 2)', 1, "larger than 8 MiB"),
    "over-cap-ascii": ('"#" * (MAX + 1)', 1, "larger than 8 MiB"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_text_is_refused_within_bounds(name: str) -> None:
    build, line, words = HOSTILE[name]
    code = textwrap.dedent(f"""
        import json, resource, sys, time
        from guestward.policy import PolicyError, parse_policies
        from guestward.policy.parse import MAX_SOURCE_BYTES as MAX
        text = {build}
        resource.setrlimit(resource.RLIMIT_AS, ({AS_LIMIT}, {AS_LIMIT}))
        start = time.monotonic()
        try:
            parse_policies([("hostile.yaml", text)])
            out = None
        except PolicyError as exc:
            out = [str(d) for d in exc.diagnostics]
        print(json.dumps({{"diagnostics": out, "seconds": time.monotonic() - start,
                          "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]  # a MemoryError under the limit would fail here
    got = json.loads(r.stdout)
    assert got["diagnostics"] and len(got["diagnostics"]) == 1, got
    d = got["diagnostics"][0]
    assert d.startswith(f"hostile.yaml:{line}: ") and words in d and "\n" not in d, d
    assert got["seconds"] < SECONDS, got


def test_the_byte_cap_counts_bytes_and_the_cap_itself_is_allowed() -> None:
    ok = "#" * (MAX_SOURCE_BYTES - 1) + "\n"
    assert parse_policies([("ok.yaml", ok)]) == []
    with pytest.raises(PolicyError, match=r"^wide.yaml:1: larger than 8 MiB$"):
        parse_policies([("wide.yaml", "#" + "\u20ac" * (MAX_SOURCE_BYTES // 3 + 1))])  # 1/3 the characters


NON_ASCII_DIGITS = st.characters(categories=["Nd"]).filter(lambda c: not c.isascii())


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["tcp", "udp"]), st.integers(1, 65535), st.data())
def test_ports_are_ascii_digits_only(proto: str, port: int, data: st.DataObject) -> None:
    digits = list(str(port))
    i = data.draw(st.integers(0, len(digits) - 1))
    digits[i] = data.draw(NON_ASCII_DIGITS)
    spec = data.draw(st.sampled_from(["{p}/{d}", "{p}/1-{d}", "{p}/{d}-65535"])).format(p=proto, d="".join(digits))
    with pytest.raises(ValueError, match="invalid port"):
        parse_port(spec)
    doc = (f"apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {{name: p}}\nspec:\n  tier: baseline\n"
           f"  rules:\n  - name: r\n    action: allow\n    ports:\n    - {json.dumps(spec, ensure_ascii=False)}\n")
    with pytest.raises(PolicyError) as exc:
        parse_policies([("ports.yaml", doc)])
    assert [str(d) for d in exc.value.diagnostics] == [f"ports.yaml:10: invalid port {spec!r}: expected tcp/PORT, "
                                                        "tcp/FIRST-LAST, udp/..., icmp, icmpv6 or any"]


BAD_CHARS = st.sampled_from(["\x00", "\x01", "\x07", "\x1b", "\x7f", "\ufffe", "\x9f"])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(0, 30), BAD_CHARS, st.sampled_from(["\n", "\r\n", "\r"]))
def test_a_disallowed_character_is_reported_on_its_own_line(line: int, column: int, bad: str, eol: str) -> None:
    lines = [f"k{i}: value number {i}" for i in range(1, 41)]
    text_line = lines[line - 1]
    column = min(column, len(text_line))
    lines[line - 1] = text_line[:column] + bad + text_line[column:]
    with pytest.raises(PolicyError) as exc:
        parse_policies([("nul.yaml", eol.join(lines) + eol)])
    (d,) = exc.value.diagnostics
    assert (d.file, d.line) == ("nul.yaml", line), str(d)
    assert re.fullmatch(rf"invalid YAML: character {re.escape(repr(bad))} is not allowed in YAML", d.message)
