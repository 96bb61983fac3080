"""Which open connections a policy set denies: the conntrack entries an `apply` deletes (pure).

The ct-mark revision (revision.py) re-judges a connection at its next original-direction packet; a
connection whose original side stays silent (ask once, stream answers back) never sends one, and its
answers keep its entry alive. So after an apply the controller also deletes the entries whose
original tuple the new policies deny, judged by the reference evaluation (`compile.decide`, which
the rendered tables are property-tested against). A deleted entry of a flow that is still allowed
would only be picked up again as new and allowed; an entry with no managed guest at either end is
not guestward's and is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import ip_address

from guestward.compile import CompiledState, Endpoint, decide
from guestward.dataplane.conntrack import Entry
from guestward.model import Guest
from guestward.policy import Policy

JUDGED = frozenset({"tcp", "udp", "icmp", "icmpv6"})  # what policies name; others are left alone


def owners(guests: Iterable[Guest], state: CompiledState) -> dict[str, Endpoint]:
    """Every address an active guest owns (on any host: the selector sets hold them all), as conntrack
    prints it -> its endpoint. An address two guests claim belongs to the conflict's owner, or to
    nobody (`state.conflicts`)."""
    conflicts = {c.address: c for c in state.conflicts}
    out: dict[str, Endpoint] = {}
    for g in guests:
        if not g.active:
            continue
        for a in g.addresses:
            c = conflicts.get(a)
            if c is None or c.owner == g.name:
                out[str(a)] = Endpoint(a, g.labels, g.name)
    return out


def denied(entries: Iterable[Entry], endpoints: Mapping[str, Endpoint], policies: list[Policy]) -> list[Entry]:
    """The entries with a managed guest at one end at least whose original tuple `policies` deny."""
    out = []
    for e in entries:
        if e.protocol not in JUDGED:
            continue
        src, dst = endpoints.get(e.original.src), endpoints.get(e.original.dst)
        if src is None and dst is None:
            continue
        try:
            src = src or Endpoint(ip_address(e.original.src))
            dst = dst or Endpoint(ip_address(e.original.dst))
            port = int(e.original.key("dport") or 0) if e.protocol in ("tcp", "udp") else 0
        except ValueError:
            continue  # not an address or port we could have judged
        if not decide(policies, src, dst, e.protocol, port).allowed:
            out.append(e)
    return out
