"""What guestward believes of a guest read from its domain XML, before compiling it.

The XML is written by whoever can define a guest; guestward's store and configuration are written by
its operators. So, for every guest read (by the controller from libvirt, by the hook from stdin):
- its declared addresses are vetted against the configured networks (compile/address_trust.py): the
  refused ones stay on the `Interface` as data and are never bound;
- it is quarantined if guestward's store says so, whatever the XML says; a quarantine label in the
  XML that the store does not hold also quarantines it (fail closed) and is reported;
- its claims are kept from the last snapshot (an owner keeps its addresses through a stop).

Each problem found is a `Finding` (kind, subject, detail); the controller stores the current ones and
records each new one once as an event (`guestward events --kind KIND`). Kinds:
`address-refused`, `address-in-cidr-peer`, `quarantine-unconfirmed` (label without the store),
`quarantine-label-missing` (store without the label: the mirror was removed), `networks-unconfigured`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from guestward.compile.address_trust import AddressTrust, cidr_peer_claims, refusals, vet
from guestward.model import QUARANTINE_LABEL, Guest
from guestward.policy import Policy
from guestward.store.sqlite import Finding


def admitted(g: Guest, previous: Guest | None, now: float, trust: AddressTrust,
             quarantined: Mapping[str, str]) -> tuple[Guest, list[Finding]]:
    """The guest as guestward compiles it, and what is wrong with what its XML says."""
    g = vet(g, trust)
    found = [Finding("address-refused", g.name, {"uuid": g.uuid, "mac": mac, "address": str(a), "reason": why})
             for mac, a, why in refusals(g)]
    labelled = g.labels.quarantined
    if g.uuid in quarantined:
        if not labelled:
            found.append(Finding("quarantine-label-missing", g.name, {"uuid": g.uuid}))
            g = replace(g, labels=g.labels.with_label(*QUARANTINE_LABEL))
    elif labelled:
        found.append(Finding("quarantine-unconfirmed", g.name, {"uuid": g.uuid}))
    return g.claiming_since(previous, now), found


def inventory_findings(guests: Iterable[Guest], policies: Iterable[Policy], trust: AddressTrust) -> list[Finding]:
    """Findings about the whole inventory: bound addresses inside a cidr peer, no networks configured."""
    found = [Finding("address-in-cidr-peer", name, {"address": str(a), "policy": policy, "cidr": str(net)})
             for name, a, policy, net in cidr_peer_claims([g for g in guests if g.active], policies)]
    if not trust.networks:
        found.append(Finding("networks-unconfigured", "config", {
            "note": "no networks configured: guest addresses are checked against special ranges, hosts "
                    "and gateways only (docs/SECURITY.md)"}))
    return found
