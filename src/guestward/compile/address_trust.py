"""Which addresses a guest may have: the domain XML declares them, the configuration decides.

A guest's addresses come from its domain XML, which whoever can define a guest writes. guestward binds
a declared address to the vNIC only if the configuration allows it (`vet`); every other one is kept on
the `Interface` as refused, with the reason, and reported. Never allowed, whatever the configuration:
unspecified, loopback, multicast, link-local, the IPv4 broadcast and reserved ranges, IPv4-mapped
IPv6, an address of a host (`AddressTrust.hosts`), a network's gateways and reserved addresses, and
a configured network's own network and broadcast address. With networks configured, an address must
also be inside one of them. With none (a configuration written before networks existed), only the
fixed rules apply: documented as the compatible default, and reported by the caller.

`cidr_peer_claims` finds bound addresses inside a cidr peer of a policy: such a guest would be let in
wherever that cidr is (an "admins" range, say), so the claim is reported (not refused: the operator's
networks may legitimately overlap a cidr peer).

Pure: values in, values out. `vet` is idempotent and re-judges every declared address (bound or
refused before), so a configuration change takes effect on the next read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from guestward.model import Guest, Interface
from guestward.policy import CidrPeer, Policy

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_MAPPED = IPv6Network("::ffff:0:0/96")
_THIS_NETWORK = IPv4Network("0.0.0.0/8")
_BROADCAST = IPv4Address("255.255.255.255")


@dataclass(frozen=True)
class Network:
    """A guest network: the ranges guests' addresses come from, and the addresses in them that are
    not a guest's (its gateways, and others the operator reserves: DNS, metadata, appliances)."""

    name: str
    cidrs: tuple[IPNetwork, ...]
    gateways: tuple[IPAddress, ...] = ()
    reserved: tuple[IPAddress, ...] = ()


@dataclass(frozen=True)
class AddressTrust:
    """What the configuration says about guest addresses. `hosts`: (host, address) of every
    hypervisor's own addresses on guest networks."""

    networks: tuple[Network, ...] = ()
    hosts: tuple[tuple[str, IPAddress], ...] = ()

    def refusal(self, addr: IPAddress) -> str | None:
        """Why a guest may not have `addr` (None: it may)."""
        if special := special_range(addr):
            return special
        for host, a in self.hosts:
            if a == addr:
                return f"an address of host {host}"
        for net in self.networks:
            if addr in net.gateways:
                return f"the gateway of network {net.name}"
            if addr in net.reserved:
                return f"reserved in network {net.name}"
        if not self.networks:
            return None
        inside = [(net, c) for net in self.networks for c in net.cidrs if addr in c]
        if not inside:
            return "outside every configured network"
        for net, c in inside:
            if isinstance(c, IPv4Network) and c.prefixlen <= 30:
                if addr == c.network_address:
                    return f"the network address of {c} ({net.name})"
                if addr == c.broadcast_address:
                    return f"the broadcast address of {c} ({net.name})"
        return None


def special_range(addr: IPAddress) -> str | None:
    """The special range `addr` is in, that is never a guest's own (None: an ordinary unicast address)."""
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_multicast:
        return "multicast"
    if addr.is_link_local:
        return "link-local"
    if addr == _BROADCAST:
        return "broadcast"
    if isinstance(addr, IPv4Address) and addr in _THIS_NETWORK:
        return "reserved (this network, 0.0.0.0/8)"
    if isinstance(addr, IPv6Address) and addr in _MAPPED:
        return "IPv4-mapped IPv6"
    if addr.is_reserved or (isinstance(addr, IPv6Address) and addr.is_site_local):
        return "reserved"
    return None


def declared(nic: Interface) -> tuple[IPAddress, ...]:
    """Every address the XML declared for the vNIC (bound or refused)."""
    return tuple({*nic.addresses, *(a for a, _ in nic.refused)})


def vet(guest: Guest, trust: AddressTrust) -> Guest:
    """`guest` with each vNIC's declared addresses split into bound and refused (with the reason)."""
    nics = []
    for nic in guest.interfaces:
        bound: list[IPAddress] = []
        refused: list[tuple[IPAddress, str]] = []
        for a in sorted(declared(nic), key=_order):
            reason = trust.refusal(a)
            if reason is None:
                bound.append(a)
            else:
                refused.append((a, reason))
        nics.append(replace(nic, addresses=tuple(bound), refused=tuple(refused)))
    return replace(guest, interfaces=tuple(nics))


def refusals(guest: Guest) -> list[tuple[str, IPAddress, str]]:
    """(mac, address, reason) of every refused address of `guest`."""
    return [(nic.mac, a, r) for nic in guest.interfaces for a, r in nic.refused]


def cidr_peer_claims(guests: Iterable[Guest],
                     policies: Iterable[Policy]) -> list[tuple[str, IPAddress, str, IPNetwork]]:
    """(guest, address, policy, prefix) for every bound address of a guest inside a cidr peer."""
    prefixes = sorted({(p.name, n) for p in policies for r in p.rules for peer in (r.source, r.destination)
                       if isinstance(peer, CidrPeer) for n in peer.networks}, key=lambda x: (x[0], str(x[1])))
    out = []
    for g in guests:
        for a in g.addresses:
            out += [(g.name, a, name, n) for name, n in prefixes if a.version == n.version and a in n]
    return out


def parse_address(text: str) -> IPAddress:
    """An address of the configuration (no zone index)."""
    addr = ip_address(text)
    if getattr(addr, "scope_id", None):
        raise ValueError(f"{text!r}: an address with a zone index")
    return addr


def _order(a: IPAddress) -> tuple[int, int]:
    return (a.version, int(a))
