"""The NFLOG parser: packets the kernel would send decode to the right fields; hostile, truncated and
oversized input never raises and never yields a packet from outside the buffer."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from guestward.dataplane.nflog import (
    NFULA_CFG_CMD,
    NFULA_CFG_FLAGS,
    NFULA_CFG_MODE,
    NFULNL_CFG_F_SEQ,
    SeqTracker,
    bind_request,
    parse_datagram,
)


def nla(kind: int, data: bytes) -> bytes:
    body = struct.pack("=HH", 4 + len(data), kind) + data
    return body + b"\0" * (-len(body) % 4)


def message(attrs: bytes, family: int = 2, group: int = 7, kind: int = (4 << 8) | 0) -> bytes:
    body = struct.pack("!BBH", family, 0, group) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def ipv4_udp(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 1, 0, 64, 17, 0, src, dst)
    return ip + struct.pack("!HHHH", sport, dport, 26, 0) + b"x" * 18


def ipv4_tcp(flags: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0x4000, 64, 6, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return ip + struct.pack("!HHIIBBHHH", 40000, 22, 1, 0, 5 << 4, flags, 65535, 0, 0)


def logged(prefix: str, payload: bytes, seq: int = 5, family: int = 2, hw: int = 0x0800, hook: int = 2,
           physin: int | None = 3) -> bytes:
    attrs = nla(1, struct.pack("!HBB", hw, hook, 0))
    attrs += nla(2, struct.pack("!I", 0x10000000))
    attrs += nla(4, struct.pack("!I", 2)) + nla(5, struct.pack("!I", 2))
    if physin is not None:
        attrs += nla(6 | 0x4000, struct.pack("!I", physin))  # NLA_F_NET_BYTEORDER set, as some kernels do
    attrs += nla(8, struct.pack("!HH", 6, 0) + bytes.fromhex("525400880001") + b"\0\0")
    attrs += nla(9, payload)
    attrs += nla(10, prefix.encode() + b"\0")
    attrs += nla(12, struct.pack("!I", seq))
    return message(attrs, family)


def test_a_logged_ipv4_udp_packet_decodes() -> None:
    dg = parse_datagram(logged("gw deny eg-0123456789 application/shop/no-ssh",
                               ipv4_udp(bytes([10, 88, 0, 1]), bytes([10, 88, 0, 2]), 40000, 9999)))
    assert dg.malformed == 0 and len(dg.packets) == 1
    p = dg.packets[0]
    assert (p.family, p.group, p.hook, p.hw_protocol) == ("ipv4", 7, "forward", 0x0800)
    assert p.prefix == "gw deny eg-0123456789 application/shop/no-ssh"
    assert (p.mark, p.seq, p.indev, p.outdev, p.physindev, p.physoutdev) == (0x10000000, 5, 2, 2, 3, None)
    assert (p.proto, p.src, p.dst, p.sport, p.dport, p.length) == ("udp", "10.88.0.1", "10.88.0.2", 40000, 9999, 46)
    assert p.mac == "52:54:00:88:00:01"


def test_tcp_flags_and_several_messages_in_one_datagram() -> None:
    buf = logged("gw a", ipv4_tcp(0x02), seq=1) + logged("gw b", ipv4_tcp(0x12), seq=2) + message(b"", kind=3)
    dg = parse_datagram(buf)
    assert [p.tcpflags for p in dg.packets] == ["S", "SA"]
    assert [p.seq for p in dg.packets] == [1, 2]
    assert dg.malformed == 0


def test_bridge_family_ipv6_and_arp_payloads() -> None:
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, 8, 17, 64, bytes(15) + b"\1", bytes(15) + b"\2") + struct.pack(
        "!HHHH", 5, 53, 8, 0)
    p = parse_datagram(logged("gw x", ip6, family=7, hw=0x86DD, hook=0)).packets[0]
    assert (p.family, p.hook, p.proto, p.src, p.dst, p.sport, p.dport) == ("bridge", "prerouting", "udp", "::1",
                                                                           "::2", 5, 53)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, bytes(6), bytes([10, 0, 0, 9]), bytes(6),
                      bytes([10, 0, 0, 1]))
    p = parse_datagram(logged("gw spoof src-guard spoof: arp", arp, family=7, hw=0x0806, hook=0)).packets[0]
    assert (p.proto, p.src, p.dst, p.icmp_type) == ("arp", "10.0.0.9", "10.0.0.1", 1)


def test_errors_and_acks_are_reported() -> None:
    ack = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", 0) + bytes(16)
    busy = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -16) + bytes(16)
    assert parse_datagram(ack + busy).errors == [0, 16]


def test_truncations_at_every_offset_never_raise_and_never_invent_packets() -> None:
    full = logged("gw deny eg-1 a/b/c", ipv4_tcp(0x02)) + logged("gw deny eg-1 a/b/c", ipv4_tcp(0x10), seq=6)
    for cut in range(len(full)):
        dg = parse_datagram(full[:cut])
        assert len(dg.packets) <= 2
        if cut < len(full) // 2:
            assert len(dg.packets) == 0
    assert len(parse_datagram(full).packets) == 2


def test_lengths_that_lie_end_the_walk() -> None:
    good = logged("gw deny eg-1 a/b/c", ipv4_tcp(0x02))
    too_long = bytearray(good)
    struct.pack_into("=I", too_long, 0, len(good) + 100)
    assert parse_datagram(bytes(too_long)).packets == [] and parse_datagram(bytes(too_long)).malformed == 1
    zero = bytearray(good)
    struct.pack_into("=I", zero, 0, 0)
    assert parse_datagram(bytes(zero)).malformed == 1
    # an attribute claiming more than its message holds: skipped, the packet still comes out
    bad_attr = message(nla(10, b"gw x\0") + struct.pack("=HH", 400, 9) + b"abcd")
    dg = parse_datagram(bad_attr)
    assert len(dg.packets) == 1 and dg.packets[0].prefix == "gw x" and dg.packets[0].src is None
    # a payload too short for its headers leaves the fields unset
    short = parse_datagram(logged("gw x", ipv4_udp(bytes(4), bytes(4), 1, 2)[:22])).packets[0]
    assert short.src == "0.0.0.0" and short.sport is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data: bytes) -> None:
    parse_datagram(data)
    parse_datagram(logged("gw x", data))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_corruption_of_a_real_message_never_raises(data: st.DataObject) -> None:
    buf = bytearray(logged("gw deny eg-1 a/b/c", ipv4_tcp(0x02)) * 2)
    for _ in range(data.draw(st.integers(1, 8))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    dg = parse_datagram(bytes(buf))
    assert len(dg.packets) <= 2


def test_bind_request_asks_for_sequence_numbers_and_a_small_copy() -> None:
    req = bind_request(7, copy_range=96)
    length, kind, flags = struct.unpack_from("=IHH", req, 0)
    assert length == len(req) and kind == (4 << 8) | 1 and flags & 0x4  # NFULNL_MSG_CONFIG, ack wanted
    assert struct.unpack_from("!H", req, 18)[0] == 7
    attrs = {}
    off = 20
    while off < len(req):
        n, t = struct.unpack_from("=HH", req, off)
        attrs[t] = req[off + 4:off + n]
        off += (n + 3) & ~3
    assert attrs[NFULA_CFG_CMD] == b"\x01"
    assert struct.unpack("!IBB", attrs[NFULA_CFG_MODE]) == (96, 2, 0)
    assert struct.unpack("!H", attrs[NFULA_CFG_FLAGS])[0] == NFULNL_CFG_F_SEQ


def test_sequence_gaps_count_losses_across_the_wrap() -> None:
    t = SeqTracker()
    assert [t.see(s) for s in (10, 11, 15, 16, None)] == [0, 0, 3, 0, 0]
    assert t.lost == 3
    t = SeqTracker()
    assert [t.see(s) for s in (0xFFFFFFFE, 0xFFFFFFFF, 2)] == [0, 0, 2]
    assert t.see(1) == 0, "an older number (a restarted instance) is not a loss"
