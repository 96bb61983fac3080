"""Connection-tracking entries as values: parsed from `conntrack -L -o extended`, written back as the
lines `conntrack -R` loads. Pure.

Why these formats: `-o save` drops the ct mark (CONNTRACK-FLOWS-NOTES.md 1.4) and `-o xml` drops the
ICMP type/code/id; the extended listing carries the tuples of both directions, the timeout, the TCP
state, the status flags, the mark and the zone. `conntrack -R` creates entries window-liberal, which
is what a copied entry needs: its TCP window state cannot be copied, so the destination must
re-learn it from the next packets instead of judging them INVALID.

What an entry keeps: family, protocol, remaining timeout, protocol state (tcp, sctp, dccp), both
tuples with their layer-4 keys (ports, ICMP type/code/id), the UNREPLIED/ASSURED flags,
mark and zone. What it does not: ct labels, the secmark, expectations and helpers, NAT sequence
adjustments, and protocols other than tcp, udp, udplite, dccp, icmp and icmpv6 (GRE's
create needs keys `conntrack` cannot take for the reply) (those lines are skipped and
counted, see `parse_extended`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import ip_address

PORT_PROTOCOLS = frozenset({"tcp", "udp", "udplite", "dccp"})
STATEFUL_PROTOCOLS = frozenset({"tcp", "dccp"})
ICMP_OPTIONS = {"icmp": "--icmp", "icmpv6": "--icmpv6"}


class ConntrackFormatError(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Tuple:
    """One direction of a connection: addresses and the protocol's layer-4 keys, in listing order."""

    src: str
    dst: str
    keys: tuple[tuple[str, str], ...] = ()

    def key(self, name: str) -> str | None:
        return dict(self.keys).get(name)


@dataclass(frozen=True, order=True)
class Entry:
    family: str  # "ipv4" or "ipv6"
    protocol: str  # "tcp", "udp", "icmp", "icmpv6", "gre", ...
    timeout: int
    original: Tuple
    reply: Tuple
    state: str | None = None
    unreplied: bool = False
    assured: bool = False
    mark: int = 0
    zone: int = 0

    def involves(self, addresses: Iterable[str]) -> bool:
        ours = set(addresses)
        return bool(ours & {self.original.src, self.original.dst, self.reply.src, self.reply.dst})

    def peers(self, addresses: Iterable[str]) -> set[str]:
        """The addresses on the other end of this entry from `addresses` (both tuples' view)."""
        ours = set(addresses)
        ends = {self.original.src, self.original.dst, self.reply.src, self.reply.dst}
        return ends - ours if ends & ours else set()


def _parse_line(line: str) -> Entry | None:
    """One listing line, or None for a protocol we cannot write back."""
    fields = line.split()
    if len(fields) < 5:
        raise ConntrackFormatError(f"too short: {line!r}")
    family, protocol = fields[0], fields[2]
    if family not in ("ipv4", "ipv6"):
        raise ConntrackFormatError(f"unknown family {family!r}: {line!r}")
    try:
        timeout = int(fields[4])
    except ValueError:
        raise ConntrackFormatError(f"no timeout: {line!r}") from None
    state: str | None = None
    tuples: list[list[tuple[str, str]]] = []
    flags: set[str] = set()
    extra: dict[str, str] = {}
    for token in fields[5:]:
        if token.startswith("[") and token.endswith("]"):
            flags.add(token[1:-1])
        elif "=" in token:
            name, _, value = token.partition("=")
            if name == "src":
                tuples.append([])
            if name in ("src", "dst", "sport", "dport", "type", "code", "id") and tuples \
                    and len(tuples) <= 2 and name not in dict(tuples[-1]):
                tuples[-1].append((name, value))
            else:
                extra[name] = value
        elif not tuples and token.isupper():
            state = token
    if len(tuples) != 2:
        raise ConntrackFormatError(f"expected two tuples: {line!r}")
    if protocol not in PORT_PROTOCOLS | set(ICMP_OPTIONS):
        return None
    both = []
    for t in tuples:
        d = dict(t)
        if "src" not in d or "dst" not in d:
            raise ConntrackFormatError(f"tuple without addresses: {line!r}")
        for a in (d["src"], d["dst"]):
            ip_address(a)  # raises ValueError on anything else
        both.append(Tuple(d["src"], d["dst"], tuple((k, v) for k, v in t if k not in ("src", "dst"))))
    try:
        mark, zone = int(extra.get("mark", "0"), 0), int(extra.get("zone", "0"), 0)
    except ValueError:
        raise ConntrackFormatError(f"bad mark or zone: {line!r}") from None
    return Entry(family, protocol, timeout, both[0], both[1], state if protocol in STATEFUL_PROTOCOLS else None,
                 "UNREPLIED" in flags, "ASSURED" in flags, mark, zone)


def parse_extended(text: str) -> tuple[list[Entry], int]:
    """The entries of a `conntrack -L -o extended` listing, and how many lines were skipped because
    their protocol cannot be written back. Summary lines ("N flow entries ...") are ignored; anything
    else malformed raises ConntrackFormatError."""
    entries, skipped = [], 0
    for line in text.splitlines():
        if not line.strip() or line.startswith("conntrack v"):
            continue
        try:
            entry = _parse_line(line)
        except ValueError as exc:
            raise ConntrackFormatError(str(exc)) from None
        if entry is None:
            skipped += 1
        else:
            entries.append(entry)
    return entries, skipped


def _tuple_options(e: Entry, reply: bool) -> list[str]:
    t = e.reply if reply else e.original
    out: list[str] = []
    if e.protocol in PORT_PROTOCOLS:
        if reply:
            out += ["--reply-port-src", t.key("sport") or "0", "--reply-port-dst", t.key("dport") or "0"]
        else:
            out += ["--sport", t.key("sport") or "0", "--dport", t.key("dport") or "0"]
    elif e.protocol in ICMP_OPTIONS and not reply:
        opt = ICMP_OPTIONS[e.protocol]
        out += [f"{opt}-type", t.key("type") or "0", f"{opt}-code", t.key("code") or "0", f"{opt}-id",
                t.key("id") or "0"]
    return out


def _selector(e: Entry, reply: bool = False) -> list[str]:
    """What names the entry for `-D`: the original tuple, or with `reply` the reply tuple taken as an
    original one (how an entry picked up the other way round is named)."""
    t = e.reply if reply else e.original
    out = ["-s", t.src, "-d", t.dst, "-p", e.protocol]
    if reply and e.protocol in PORT_PROTOCOLS:
        out += ["--sport", t.key("sport") or "0", "--dport", t.key("dport") or "0"]
    elif not reply:
        out += _tuple_options(e, reply=False)
    return out + (["-w", str(e.zone)] if e.zone else [])


def create_line(e: Entry) -> str:
    """The `conntrack -R` line that creates `e` as it was (mark and zone included)."""
    status = ",".join(s for s, on in (("SEEN_REPLY", not e.unreplied), ("ASSURED", e.assured)) if on) or "UNSET"
    argv = ["-A", "-t", str(max(e.timeout, 1)), "-u", status]
    argv += ["-w", str(e.zone)] if e.zone else []
    argv += ["-m", str(e.mark)] if e.mark else []
    argv += ["-s", e.original.src, "-d", e.original.dst, "-r", e.reply.src, "-q", e.reply.dst, "-p", e.protocol]
    argv += _tuple_options(e, reply=False) + _tuple_options(e, reply=True)
    argv += ["--state", e.state] if e.state else []
    return " ".join(argv)


def delete_lines(e: Entry) -> list[str]:
    """`conntrack -R` lines that delete whatever holds `e`'s tuple, in either orientation. Each `-D`
    walks the whole table (about 24 ms per line at 10k entries), so these are for a few entries
    only; whole addresses go with `conntrack -D -s/-d ADDR`."""
    lines = [" ".join(["-D", *_selector(e)])]
    if e.protocol in PORT_PROTOCOLS:
        lines.append(" ".join(["-D", *_selector(e, reply=True)]))
    return lines


def create_script(entries: Iterable[Entry]) -> str:
    return "".join(f"{create_line(e)}\n" for e in entries)


def replace_script(entries: Iterable[Entry]) -> str:
    """A `conntrack -R` file that puts `entries` in place of whatever holds their tuples (a transit
    entry, or one the kernel picked up mid-stream the other way round, makes a create fail)."""
    return "".join("".join(f"{line}\n" for line in delete_lines(e)) + f"{create_line(e)}\n" for e in entries)


def identity(e: Entry) -> tuple[str, str, str, tuple[tuple[str, str], ...], int]:
    """What makes two listings of the same connection equal (timeouts and flags move on)."""
    return (e.protocol, e.original.src, e.original.dst, e.original.keys, e.zone)
