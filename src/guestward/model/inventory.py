"""What runs where: hosts, guests and their vNICs, as read from libvirt."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

from guestward.model.labels import Labels

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True, order=True)
class Interface:
    """One vNIC of a guest: its host-side port name (the tap), its MAC, its declared addresses.

    `port` is None when libvirt has not named the tap yet (a defined guest without `<target dev>`).
    """

    mac: str
    port: str | None = None
    addresses: tuple[IPAddress, ...] = ()

    @staticmethod
    def of(mac: str, port: str | None, addresses: list[str] | tuple[str, ...] = ()) -> Interface:
        addrs = tuple(sorted({ip_address(a) for a in addresses}, key=lambda a: (a.version, int(a))))
        return Interface(mac.lower(), port, addrs)


@dataclass(frozen=True)
class Guest:
    """A guest as guestward sees it. `active` is True when it runs (or is about to) on `host`.

    `also_on`: other hosts that hold a live copy of this same guest at this moment: the two ends of
    a live migration, or a save being restored. Its vNICs stay bound there too, so neither end is
    without policy while the guest switches over; its addresses are still claimed once."""

    name: str
    uuid: str
    host: str
    labels: Labels = field(default_factory=Labels)
    interfaces: tuple[Interface, ...] = ()
    active: bool = True
    also_on: tuple[str, ...] = ()
    bound_since: float | None = None

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
