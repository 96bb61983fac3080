"""What runs where: hosts, guests and their vNICs, as read from libvirt."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address

from guestward.model.labels import Labels

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True, order=True)
class Interface:
    """One vNIC of a guest: its host-side port name (the tap), its MAC, its declared addresses.

    `port` is None when libvirt has not named the tap yet (a defined guest without `<target dev>`).
    `refused`: addresses the domain XML declared for this vNIC that guestward does not bind, each with
    the reason (outside the configured networks, a gateway's, a special range...); `addresses` holds
    only the others.
    """

    mac: str
    port: str | None = None
    addresses: tuple[IPAddress, ...] = ()
    refused: tuple[tuple[IPAddress, str], ...] = ()

    @staticmethod
    def of(mac: str, port: str | None, addresses: list[str] | tuple[str, ...] = ()) -> Interface:
        addrs = tuple(sorted({ip_address(a) for a in addresses}, key=lambda a: (a.version, int(a))))
        return Interface(mac.lower(), port, addrs)


@dataclass(frozen=True)
class Guest:
    """A guest as guestward sees it. `active` is True when it runs (or is about to) on `host`.

    `also_on`: other hosts that hold a live copy of this same guest at this moment: the two ends of
    a live migration, or a save being restored. Its vNICs stay bound there too, so neither end is
    without policy while the guest switches over; its addresses are still claimed once.

    `ports_elsewhere`: (host, mac, port) for the `also_on` hosts: a host picks its own tap names
    (libvirt's `vnetN`), so the destination of a migration may name a vNIC differently; a vNIC with no
    entry for a host has the same port name there as on `host`.

    `claimed`: (address, since) pairs: when guestward first saw this guest running with that address
    declared (absent: not known). Of two guests that claim one address, the one that claimed it
    first keeps it and the later one gets no traffic on it (POLICY.md section 1); when that cannot be
    told, neither keeps it. A stopped guest keeps its claims (it holds the address, unbound), so
    another guest started with that address does not take it while the owner is down.

    `refusal`: why guestward cannot enforce policy on this guest (a port name outside the allowed
    set, malformed guestward metadata, a vNIC that bypasses the bridge): when set, none of its vNICs
    is bound on any host, so it gets no traffic at all (the bridge drops unknown ports), and the
    reason is reported (`guestward status`, the event log). None: nothing stands in the way."""

    name: str
    uuid: str
    host: str
    labels: Labels = field(default_factory=Labels)
    interfaces: tuple[Interface, ...] = ()
    active: bool = True
    also_on: tuple[str, ...] = ()
    claimed: tuple[tuple[IPAddress, float], ...] = ()
    ports_elsewhere: tuple[tuple[str, str, str], ...] = ()
    refusal: str | None = None

    def interfaces_on(self, host: str) -> tuple[Interface, ...]:
        """The vNICs as `host` names them."""
        if host == self.host:
            return self.interfaces
        names = {mac: port for h, mac, port in self.ports_elsewhere if h == host}
        return tuple(replace(nic, port=names.get(nic.mac, nic.port)) for nic in self.interfaces)

    def live_on(self, host: str, named_by: Guest) -> Guest:
        """This guest also live on `host`, whose vNICs `named_by` (the guest as that host sees it) names."""
        also_on = self.also_on if host in self.hosts else (*self.also_on, host)
        if host == self.host:
            return replace(self, also_on=also_on)
        entries = [(h, m, p) for h, m, p in self.ports_elsewhere if h != host]
        entries += [(host, nic.mac, nic.port) for nic in named_by.interfaces if nic.port is not None]
        return replace(self, also_on=also_on, ports_elsewhere=tuple(entries))

    def gone_from(self, host: str) -> Guest:
        """This guest no longer live on `host` (it must be live somewhere else): the next host holding
        it becomes its `host`, with its own port names."""
        remaining = [h for h in self.hosts if h != host]
        primary = remaining[0]
        return replace(self, host=primary, interfaces=self.interfaces_on(primary), also_on=tuple(remaining[1:]),
                       ports_elsewhere=tuple(e for e in self.ports_elsewhere if e[0] in remaining[1:]))

    def claimed_at(self, address: IPAddress) -> float | None:
        return next((t for a, t in self.claimed if a == address), None)

    def claiming_since(self, previous: Guest | None, now: float) -> Guest:
        """This guest with the claim times of its addresses: kept from `previous` (the same guest as
        last seen, running or not) for addresses it still declares; for the others `now` if this
        guest is active, else none (a claim is made by running with the address, and an owner keeps
        it through a stop until the address leaves its XML or the guest is undefined)."""
        def since(a: IPAddress) -> float | None:
            t = previous.claimed_at(a) if previous is not None else None
            return t if t is not None or not self.active else now
        times = ((a, since(a)) for a in set(self.addresses))
        claimed = tuple(sorted(((a, t) for a, t in times if t is not None), key=lambda c: (c[0].version, int(c[0]))))
        return replace(self, claimed=claimed)

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every host where this guest's vNICs are bound: `host` first."""
        return (self.host, *(h for h in self.also_on if h != self.host))

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        return tuple(a for i in self.interfaces for a in i.addresses)


@dataclass(frozen=True)
class Host:
    """A hypervisor host. `uplinks` are bridge ports that carry traffic to other hosts or the
    outside world; every other bridge port is a guest port and is dropped unless guestward knows it."""

    name: str
    uri: str
    uplinks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Inventory:
    hosts: tuple[Host, ...]
    guests: tuple[Guest, ...]

    def guest(self, name_or_uuid: str) -> Guest | None:
        for g in self.guests:
            if name_or_uuid in (g.name, g.uuid):
                return g
        return None

    def host(self, name: str) -> Host | None:
        for h in self.hosts:
            if h.name == name:
                return h
        return None
