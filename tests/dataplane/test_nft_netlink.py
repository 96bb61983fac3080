"""The nf_tables dump parser: rules built as the kernel sends them decode; hostile or cut input never
raises. (tests/enforce/test_counters.py checks it against nft's own listing on a real table.)"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from guestward.dataplane.nft_netlink import Dump, dump_request, parse_dump


def nla(kind: int, data: bytes) -> bytes:
    body = struct.pack("=HH", 4 + len(data), kind) + data
    return body + b"\0" * (-len(body) % 4)


def expr(name: str, data: bytes) -> bytes:
    return nla(1 | 0x8000, nla(1, name.encode() + b"\0") + nla(2 | 0x8000, data))


def rule_msg(chain: str, comment: str, packets: int, verdict: int, target: str = "", logs: bool = False) -> bytes:
    exprs = expr("counter", nla(1, struct.pack("!Q", packets * 60)) + nla(2, struct.pack("!Q", packets)))
    if logs:
        exprs += expr("log", nla(2, b"gw x\0"))
    vdata = nla(1, struct.pack("!i", verdict)) + (nla(2, target.encode() + b"\0") if target else b"")
    exprs += expr("immediate", nla(1, struct.pack("!I", 0)) + nla(2 | 0x8000, nla(2 | 0x8000, vdata)))
    text = comment.encode() + b"\0"
    attrs = (nla(1, b"guestward\0") + nla(2, chain.encode() + b"\0") + nla(3, struct.pack("!Q", 42))
             + nla(4 | 0x8000, exprs) + nla(7, bytes([0, len(text)]) + text))
    body = struct.pack("!BBH", 1, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), (10 << 8) | 6, 2, 1, 0) + body


DONE = struct.pack("=IHHII", 20, 3, 2, 1, 0) + bytes(4)


def test_rules_decode_with_counter_verdict_comment_and_log() -> None:
    buf = (rule_msg("eg-abc", "a/p/r #1234567890", 7, 0) + rule_msg("forward", "to ingress #1", 3, -4, "ingress")
           + rule_msg("eg-abc", "log: a/p/r #2", 2, 0, logs=True) + DONE)
    d = parse_dump(buf)
    assert d.done and d.malformed == 0
    assert [(r.chain, r.comment, r.packets, r.bytes, r.verdict, r.logs, r.handle) for r in d.rules] == [
        ("eg-abc", "a/p/r #1234567890", 7, 420, "drop", False, 42),
        ("forward", "to ingress #1", 3, 180, "goto:ingress", False, 42),
        ("eg-abc", "log: a/p/r #2", 2, 120, "drop", True, 42)]


def test_a_dump_split_over_datagrams_completes_only_at_done() -> None:
    d = Dump()
    parse_dump(rule_msg("c", "x #1", 1, 1), d)
    assert not d.done and len(d.rules) == 1
    parse_dump(DONE, d)
    assert d.done


def test_errors_are_reported() -> None:
    err = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -2) + bytes(16)
    assert parse_dump(err).errors == [2]


def test_truncations_never_raise() -> None:
    full = rule_msg("eg-abc", "a/p/r #1", 7, 0, logs=True) + DONE
    for cut in range(len(full)):
        d = parse_dump(full[:cut])
        assert not d.done and len(d.rules) <= 1


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.data())
def test_random_and_corrupted_input_never_raises(data: bytes, draw: st.DataObject) -> None:
    parse_dump(data)
    buf = bytearray(rule_msg("eg-abc", "a/p/r #1", 7, 0) * 2)
    for _ in range(draw.draw(st.integers(1, 6))):
        buf[draw.draw(st.integers(0, len(buf) - 1))] = draw.draw(st.integers(0, 255))
    assert len(parse_dump(bytes(buf)).rules) <= 2


def test_the_request_names_the_table_and_asks_for_a_dump() -> None:
    req = dump_request("rules", "bridge", "guestward")
    length, kind, flags = struct.unpack_from("=IHH", req, 0)
    assert (length, kind, flags & 0x300, req[16]) == (len(req), (10 << 8) | 7, 0x300, 7)
    assert b"guestward\0" in req
    assert struct.unpack_from("=H", dump_request("sets", "inet", "guestward"), 4)[0] == (10 << 8) | 10
