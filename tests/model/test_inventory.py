"""Inventory values: vNICs normalise what they are given, lookups find by name or uuid."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from guestward.model import Guest, Host, Interface, Inventory, Labels


def test_interface_normalises_mac_and_addresses() -> None:
    nic = Interface.of("52:54:00:AA:00:11", "vnet0", ["fd00::11", "10.0.0.2", "10.0.0.10", "10.0.0.2", "FD00::0011"])
    assert nic.mac == "52:54:00:aa:00:11" and nic.port == "vnet0"
    assert nic.addresses == (ip_address("10.0.0.2"), ip_address("10.0.0.10"), ip_address("fd00::11"))
    assert Interface.of("52:54:00:aa:00:11", "vnet0", ["10.0.0.10", "fd00::11", "10.0.0.2"]) == nic


def test_interface_rejects_what_is_not_an_address() -> None:
    with pytest.raises(ValueError):
        Interface.of("52:54:00:aa:00:11", None, ["10.0.0.300"])


def test_guest_addresses_and_inventory_lookups() -> None:
    g = Guest("web1", "u-1", "hv1", Labels({"zone": "web"}), (
        Interface.of("52:54:00:00:00:01", "vnet0", ["10.0.0.1"]),
        Interface.of("52:54:00:00:00:02", "vnet1", ["10.0.0.2", "fd00::2"]),
    ))
    assert g.addresses == (ip_address("10.0.0.1"), ip_address("10.0.0.2"), ip_address("fd00::2"))
    assert g.active and Guest("x", "u", "h").labels == Labels()
    inv = Inventory((Host("hv1", "qemu:///system"),), (g,))
    assert inv.guest("web1") is g and inv.guest("u-1") is g and inv.guest("nope") is None
    assert inv.host("hv1") == Host("hv1", "qemu:///system") and inv.host("hv2") is None
    assert hash(g) == hash(Guest("web1", "u-1", "hv1", Labels({"zone": "web"}), g.interfaces))
