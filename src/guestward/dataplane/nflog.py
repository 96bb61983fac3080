"""NFLOG (nfnetlink_log) messages: the config requests a listener sends, and the packets it gets. Pure.

Wire format (linux/netfilter/nfnetlink_log.h): a netlink message (nlmsghdr, 16 bytes, host order),
an nfgenmsg (family, version, res_id = group, big endian), then attributes (nla_len, nla_type, padded
to 4). A packet message is type NFNL_SUBSYS_ULOG<<8 | NFULNL_MSG_PACKET; its attributes are big
endian. With queue thresholds above 1 the kernel puts several messages in one datagram.

Contracts:
- `parse_datagram` never raises: a truncated, oversized or otherwise hostile message ends the walk
  of that datagram (counted in `Datagram.malformed`), an attribute that does not fit is skipped, a
  payload that is too short to decode leaves the fields it would have given at None;
- it reads nothing outside the buffer it is given.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from guestward.dataplane.netlink import NLMSG_ERROR, attributes, error_code, messages, nla

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4

# packet attributes
NFULA_PACKET_HDR, NFULA_MARK, NFULA_TIMESTAMP = 1, 2, 3
NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV, NFULA_IFINDEX_PHYSINDEV, NFULA_IFINDEX_PHYSOUTDEV = 4, 5, 6, 7
NFULA_HWADDR, NFULA_PAYLOAD, NFULA_PREFIX, NFULA_SEQ = 8, 9, 10, 12
# config attributes and values
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_NLBUFSIZ = 1, 2, 3
NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH, NFULA_CFG_FLAGS = 4, 5, 6
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NFULNL_CFG_F_SEQ = 0x0001

FAMILIES = {2: "ipv4", 7: "bridge", 10: "ipv6"}
HOOKS = {"bridge": ("prerouting", "input", "forward", "output", "postrouting"),
         "ip": ("prerouting", "input", "forward", "output", "postrouting")}
PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
TCP_FLAGS = "FSRPAUEC"  # bit 0 .. bit 7


@dataclass
class NflogPacket:
    """One logged packet. Interface fields are ifindexes (names are the reader's business: they live
    in its namespace). Addresses are strings; ports and flags are set for tcp/udp only."""

    family: str = "?"
    group: int = 0
    hook: str | None = None
    hw_protocol: int = 0
    prefix: str = ""
    mark: int | None = None
    seq: int | None = None
    indev: int | None = None
    outdev: int | None = None
    physindev: int | None = None
    physoutdev: int | None = None
    mac: str | None = None
    time: float | None = None
    proto: str | None = None
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    tcpflags: str | None = None
    icmp_type: int | None = None
    length: int | None = None


@dataclass
class Datagram:
    packets: list[NflogPacket] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)  # errno of NLMSG_ERROR replies (0: an ack)
    malformed: int = 0


def config_request(group: int, attrs: bytes, seq: int = 1, family: int = 0) -> bytes:
    """One NFULNL_MSG_CONFIG request for `group`, asking for an ack."""
    body = struct.pack("!BBH", family, 0, group) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                       NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def bind_request(group: int, copy_range: int = 96, qthresh: int = 32, timeout_cs: int = 10, seq: int = 1) -> bytes:
    """Bind `group`, copy the first `copy_range` bytes of each packet, number messages (NFULNL_CFG_F_SEQ,
    so losses show as gaps), and batch up to `qthresh` messages or `timeout_cs` hundredths of a second."""
    attrs = nla(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))
    attrs += nla(NFULA_CFG_MODE, struct.pack("!IBB", copy_range, NFULNL_COPY_PACKET, 0))
    attrs += nla(NFULA_CFG_FLAGS, struct.pack("!H", NFULNL_CFG_F_SEQ))
    attrs += nla(NFULA_CFG_QTHRESH, struct.pack("!I", qthresh))
    attrs += nla(NFULA_CFG_TIMEOUT, struct.pack("!I", timeout_cs))
    return config_request(group, attrs, seq)


def unbind_request(group: int, seq: int = 2) -> bytes:
    return config_request(group, nla(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND])), seq)


def _u32(data: bytes) -> int | None:
    return struct.unpack("!I", data[:4])[0] if len(data) >= 4 else None


def decode_payload(p: NflogPacket, payload: bytes) -> None:
    """Fill in the L3/L4 fields from the copied start of the packet (network header first)."""
    if p.family == "ipv4" or (p.family == "bridge" and p.hw_protocol == 0x0800):
        _ipv4(p, payload)
    elif p.family == "ipv6" or (p.family == "bridge" and p.hw_protocol == 0x86DD):
        _ipv6(p, payload)
    elif p.family == "bridge" and p.hw_protocol == 0x0806 and len(payload) >= 28:
        p.proto = "arp"
        hlen, plen = payload[4], payload[5]
        if hlen == 6 and plen == 4:
            p.icmp_type = struct.unpack_from("!H", payload, 6)[0]  # the ARP op
            p.src = str(IPv4Address(payload[14:18]))
            p.dst = str(IPv4Address(payload[24:28]))


def _ipv4(p: NflogPacket, b: bytes) -> None:
    if len(b) < 20 or b[0] >> 4 != 4:
        return
    ihl = (b[0] & 0x0F) * 4
    p.length = struct.unpack_from("!H", b, 2)[0]
    p.src, p.dst = str(IPv4Address(b[12:16])), str(IPv4Address(b[16:20]))
    proto = b[9]
    p.proto = PROTOS.get(proto, str(proto))
    fragment_offset = struct.unpack_from("!H", b, 6)[0] & 0x1FFF
    if ihl >= 20 and fragment_offset == 0:
        _l4(p, proto, b[ihl:])


def _ipv6(p: NflogPacket, b: bytes) -> None:
    if len(b) < 40 or b[0] >> 4 != 6:
        return
    p.length = 40 + struct.unpack_from("!H", b, 4)[0]
    p.src, p.dst = str(IPv6Address(b[8:24])), str(IPv6Address(b[24:40]))
    proto = b[6]
    p.proto = PROTOS.get(proto, str(proto))
    _l4(p, proto, b[40:])  # extension headers are not walked: a packet with them shows no ports


def _l4(p: NflogPacket, proto: int, b: bytes) -> None:
    if proto in (6, 17, 132) and len(b) >= 4:
        p.sport, p.dport = struct.unpack_from("!HH", b, 0)
        if proto == 6 and len(b) >= 14:
            p.tcpflags = "".join(f for i, f in enumerate(TCP_FLAGS) if b[13] & (1 << i))
    elif proto in (1, 58) and len(b) >= 1:
        p.icmp_type = b[0]


def parse_packet(buf: bytes, start: int, end: int, family: int, group: int) -> NflogPacket:
    p = NflogPacket(family=FAMILIES.get(family, str(family)), group=group)
    payload = b""
    for kind, data in attributes(buf, start, end):
        if kind == NFULA_PACKET_HDR and len(data) >= 3:
            p.hw_protocol, hook = struct.unpack_from("!HB", data, 0)
            names = HOOKS["bridge" if p.family == "bridge" else "ip"]
            p.hook = names[hook] if hook < len(names) else str(hook)
        elif kind == NFULA_PREFIX:
            p.prefix = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == NFULA_MARK:
            p.mark = _u32(data)
        elif kind == NFULA_SEQ:
            p.seq = _u32(data)
        elif kind == NFULA_IFINDEX_INDEV:
            p.indev = _u32(data)
        elif kind == NFULA_IFINDEX_OUTDEV:
            p.outdev = _u32(data)
        elif kind == NFULA_IFINDEX_PHYSINDEV:
            p.physindev = _u32(data)
        elif kind == NFULA_IFINDEX_PHYSOUTDEV:
            p.physoutdev = _u32(data)
        elif kind == NFULA_HWADDR and len(data) >= 4:
            n = min(struct.unpack_from("!H", data, 0)[0], len(data) - 4, 8)
            p.mac = ":".join(f"{x:02x}" for x in data[4:4 + n]) if n else None
        elif kind == NFULA_TIMESTAMP and len(data) >= 16:
            sec, usec = struct.unpack_from("!QQ", data, 0)
            p.time = sec + usec / 1e6
        elif kind == NFULA_PAYLOAD:
            payload = data
    decode_payload(p, payload)
    return p


def parse_datagram(buf: bytes) -> Datagram:
    """Every message in one received datagram."""
    out = Datagram()
    walk = messages(buf)
    for kind, off, length in walk.items:
        if kind == NLMSG_ERROR:
            if (code := error_code(buf, off, length)) is not None:
                out.errors.append(code)
            else:
                out.malformed += 1
        elif kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            if length < 20:
                out.malformed += 1
            else:
                family, _version, group = struct.unpack_from("!BBH", buf, off + 16)
                out.packets.append(parse_packet(buf, off + 20, off + length, family, group))
        # anything else (NLMSG_NOOP, NLMSG_DONE, other types) is not ours to read: skipped
    if walk.broken or (walk.end < len(buf) and any(buf[walk.end:])):
        out.malformed += 1
    return out


class SeqTracker:
    """Lost messages from NFULNL_CFG_F_SEQ numbers: the kernel numbers each message it builds for the
    group (u32, wrapping); one it could not deliver (the socket buffer was full) leaves a gap."""

    def __init__(self) -> None:
        self.expected: int | None = None
        self.lost = 0

    def see(self, seq: int | None) -> int:
        """The number of messages lost just before this one (0 when none, or no number)."""
        if seq is None:
            return 0
        gap = 0 if self.expected is None else (seq - self.expected) & 0xFFFFFFFF
        if gap > 0x7FFFFFFF:  # older than expected (reordered or a restart): not a loss
            gap = 0
        self.expected = (seq + 1) & 0xFFFFFFFF
        self.lost += gap
        return gap
