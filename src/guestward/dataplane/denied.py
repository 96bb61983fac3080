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
from guestward.policy import Policy

JUDGED = frozenset({"tcp", "udp", "icmp", "icmpv6"})  # what policies name; others are left alone


def owners(state: CompiledState) -> dict[str, Endpoint]:
    """Every owned guest address (as conntrack prints it) -> its endpoint, from every host's plan."""
    out: dict[str, Endpoint] = {}
    for plan in state.hosts.values():
        for addr, ident in plan.dispatch.items():
            out[str(addr)] = Endpoint(addr, state.identities.get(ident))
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
