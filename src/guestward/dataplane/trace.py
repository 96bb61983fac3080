"""`nft monitor trace` lines -> what guestward's tables did to each traced packet (pure).

nft prints, per traced packet (one `trace id`), a `packet:` line each time the packet enters a base
chain, then one line per rule that gave a verdict (`rule ... (verdict goto eg-x)`) and `policy ...`
when a base chain ended without one. `parse_traces` groups the lines by id; `PacketTrace` reads them:

- `packet` the first packet line (addresses, protocol, ports, in/out interfaces) as key/value pairs;
- `verdict` "drop" when any of our rules (or base-chain policies) dropped it, else "accept";
- `decided_by` the label (rule comment without its digest) of what decided: the drop when it was
  dropped, else the last policy rule met, else the last of our rules met;
- `egress` / `ingress` the last rule met in a sender's / receiver's identity chain (`eg-*` / `in-*`),
  i.e. the policy rule that decided that end on this host (None: that end is not on this host).

Labels name policy rules as `tier/policy/rule`; the others are the skeleton's own comments
(`default deny`, `spoof: ...`, `unknown port: fail closed`, ...), see dataplane/render.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from guestward.dataplane.revision import ACCEPTED

LINE = re.compile(r"trace id (\S+) (\S+) (\S+) (\S+) (packet|rule|policy|verdict):? ?(.*?)\s*$")
COMMENT = re.compile(r'comment "([^"]*)"')
VERDICT = re.compile(r"\(verdict ([^)]*)\)$")
DIGEST = re.compile(r"\s+#[0-9a-f]{10}$")
TERMINAL = ("accept", "drop")


@dataclass(frozen=True)
class Step:
    family: str
    table: str
    chain: str
    kind: str  # packet | rule | policy | verdict
    text: str  # the rest of the line
    label: str = ""  # a rule's comment without its digest
    verdict: str = ""  # "accept", "drop", "goto eg-x", "continue", ...


def _step(m: re.Match[str]) -> Step:
    _, family, table, chain, kind, text = m.groups()
    label = verdict = ""
    if kind == "rule":
        if c := COMMENT.search(text):
            label = DIGEST.sub("", c.group(1))
        if v := VERDICT.search(text):
            verdict = v.group(1)
    elif kind in ("policy", "verdict"):
        verdict = text.split()[0] if text else ""
    return Step(family, table, chain, kind, text, label, verdict)


def packet_fields(text: str) -> dict[str, str]:
    """`iif "x" ip saddr 1.2.3.4 tcp dport 80 ...` -> {"iif": "x", "ip saddr": "1.2.3.4", "tcp dport": "80"}."""
    words = text.split()
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("iif", "oif") and i + 1 < len(words):
            out[w] = words[i + 1].strip('"')
            i += 2
        elif i + 2 < len(words) and not words[i + 1].startswith("@"):
            key = f"{w} {words[i + 1]}"
            value = words[i + 3] if words[i + 2] == "==" and i + 3 < len(words) else words[i + 2]
            out.setdefault(key, value)
            i += 4 if words[i + 2] == "==" else 3
        else:
            i += 1
    return out


@dataclass(frozen=True)
class PacketTrace:
    id: str
    steps: tuple[Step, ...]
    table: str = "guestward"

    @property
    def packet(self) -> dict[str, str]:
        first = next((s for s in self.steps if s.kind == "packet"), None)
        return packet_fields(first.text) if first else {}

    @property
    def ours(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.table == self.table and s.kind != "packet")

    @property
    def dropped_by(self) -> Step | None:
        return next((s for s in self.ours if s.verdict == "drop"), None)

    @property
    def verdict(self) -> str:
        return "drop" if self.dropped_by is not None else "accept"

    def _last_in(self, prefix: str) -> Step | None:
        steps = [s for s in self.ours if s.kind == "rule" and s.family == "inet" and s.chain.startswith(prefix)]
        return steps[-1] if steps else None

    @property
    def egress(self) -> Step | None:
        return self._last_in("eg-")

    @property
    def ingress(self) -> Step | None:
        return self._last_in("in-")

    @property
    def decided_by(self) -> str:
        drop = self.dropped_by
        if drop is not None:
            return drop.label or f"{drop.chain}: policy drop"
        policy = [s for s in (self.egress, self.ingress) if s is not None]
        if policy:
            return policy[-1].label
        rules = [s for s in self.ours if s.kind == "rule"]
        return rules[-1].label if rules else "not seen by guestward's tables"

    def lines(self) -> list[str]:
        """Our steps, one line each: `bridge prerouting: dispatch ... -> goto src-guard`."""
        return [f"{s.family} {s.chain}: {s.label or s.kind} -> {s.verdict}" for s in self.ours if s.verdict]


def parse_traces(lines: list[str], table: str = "guestward") -> list[PacketTrace]:
    """Group trace lines by trace id, in order of each id's first line; other lines are ignored."""
    steps: dict[str, list[Step]] = {}
    for line in lines:
        m = LINE.match(line.strip())
        if m:
            steps.setdefault(m.group(1), []).append(_step(m))
    return [PacketTrace(i, tuple(s), table) for i, s in steps.items()]


def _packet_lines(t: PacketTrace) -> list[dict[str, str]]:
    return [packet_fields(s.text) for s in t.steps if s.kind == "packet"]


def through(t: PacketTrace, *, entered: str | None = None, left: str | None = None) -> bool:
    """Whether the traced packet came in on bridge port `entered` / was sent to port `left`."""
    fields = _packet_lines(t)
    return (entered is not None and any(f.get("iif") == entered for f in fields)) or (
        left is not None and any(f.get("oif") == left for f in fields))


@dataclass(frozen=True)
class Hop:
    host: str
    role: str  # "source", "destination", or "source and destination" (both ends on this host)
    trace: PacketTrace

    def lines(self) -> list[str]:
        t = self.trace
        head = f"{self.host} ({self.role}): {'dropped' if t.verdict == 'drop' else 'passed'}"
        ends = [f"egress rule {t.egress.label} -> {t.egress.verdict}"] if t.egress else []
        # `goto accepted` only stamps the connection with the policy revision, then accepts
        ingress = "accept" if t.ingress and t.ingress.verdict == f"goto {ACCEPTED}" else t.ingress and t.ingress.verdict
        ends += [f"ingress rule {t.ingress.label} -> {ingress}"] if t.ingress else []
        if t.dropped_by is not None and t.dropped_by not in (t.egress, t.ingress):
            ends.append(f"dropped by {t.decided_by}")
        return [head + (": " + "; ".join(ends) if ends else "")]


@dataclass(frozen=True)
class FlowTrace:
    """What one real packet of a flow met, host by host (source's host first). Verdict: "blocked" when a
    hop dropped it, "allowed" when it passed every hop it was seen at, "unseen" when no hop saw it."""

    hops: tuple[Hop, ...]

    @property
    def verdict(self) -> str:
        if not self.hops:
            return "unseen"
        return "blocked" if any(h.trace.verdict == "drop" for h in self.hops) else "allowed"

    @property
    def decided_by(self) -> str | None:
        """The label that decided: the first drop's, else the last policy rule met, else the last rule met."""
        for h in self.hops:
            if h.trace.verdict == "drop":
                return h.trace.decided_by
        return self.hops[-1].trace.decided_by if self.hops else None

    def agrees(self, allowed: bool, label: str) -> bool:
        """Whether this trace says what the compiled policy says: the verdict and the deciding label."""
        return self.verdict == ("allowed" if allowed else "blocked") and self.decided_by == label


def flow_trace(per_host: dict[str, list[PacketTrace]], src: tuple[str, str] | None,
               dst: tuple[str, str] | None) -> FlowTrace:
    """The hops of one flow from the traces of its packets on each host. `src`/`dst`: (host, bridge
    port) of a local end, None for an end outside the hosts. A host's hop is its first trace of a packet
    that came in on the source's port or was sent to the destination's port (flooded copies to other
    ports, and hosts the flow only crosses, are left out)."""
    hops: list[Hop] = []
    for host, role, entered, left in _ends(src, dst):
        first = next((t for t in per_host.get(host, []) if through(t, entered=entered, left=left)), None)
        if first is not None:
            hops.append(Hop(host, role, first))
    return FlowTrace(tuple(hops))


def _ends(src: tuple[str, str] | None, dst: tuple[str, str] | None) -> list[tuple[str, str, str | None, str | None]]:
    if src and dst and src[0] == dst[0]:
        return [(src[0], "source and destination", src[1], dst[1])]
    out: list[tuple[str, str, str | None, str | None]] = []
    if src:
        out.append((src[0], "source", src[1], None))
    if dst:
        out.append((dst[0], "destination", None, dst[1]))
    return out


def of_flow(traces: list[PacketTrace], src: str | None, dst: str, protocol: str, port: int | None) -> list[PacketTrace]:
    """The traces whose first packet belongs to the flow (`src` None: from anywhere); addresses as nft
    prints them."""
    out = []
    for t in traces:
        p = t.packet
        fam = "ip" if "ip daddr" in p else "ip6"
        if p.get(f"{fam} daddr") != dst or (src is not None and p.get(f"{fam} saddr") != src):
            continue
        proto = p.get("ip protocol") or p.get("ip6 nexthdr") or ""
        if protocol in ("tcp", "udp"):
            ok = proto == protocol and p.get(f"{protocol} dport") == str(port)
        else:
            ok = p.get(f"{protocol} type") == "echo-request"
        if ok:
            out.append(t)
    return out
