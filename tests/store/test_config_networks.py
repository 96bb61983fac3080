"""The configuration's guest networks and hosts' addresses (store/config.py): a bad entry is a short
error naming it, and a configuration written before networks existed still loads (the compatible
default of compile/address_trust.py)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from guestward.store.config import ConfigError, load_config

OLD = """state_dir: /tmp/gw
hosts:
  - {name: hv1, uri: "qemu:///system", uplinks: [eno1]}
"""
NEW = OLD.replace("uplinks: [eno1]}", "uplinks: [eno1], addresses: [10.77.0.254]}") + """networks:
  - name: lab
    cidrs: [10.77.0.0/24, "fd77::/64"]
    gateways: [10.77.0.1, "fd77::1"]
    reserved: [10.77.0.250]
"""


def test_a_configuration_without_networks_still_loads(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(OLD)
    trust = load_config(str(tmp_path / "c.yaml")).address_trust()
    assert trust.networks == () and trust.hosts == ()


def test_networks_and_host_addresses_become_the_address_trust(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(NEW)
    trust = load_config(str(tmp_path / "c.yaml")).address_trust()
    (net,) = trust.networks
    assert net.cidrs == (ip_network("10.77.0.0/24"), ip_network("fd77::/64"))
    assert net.gateways == (ip_address("10.77.0.1"), ip_address("fd77::1"))
    assert trust.hosts == (("hv1", ip_address("10.77.0.254")),)
    assert trust.refusal(ip_address("10.77.0.254")) == "an address of host hv1"


@pytest.mark.parametrize("bad, needle", [
    (NEW.replace("10.77.0.0/24", "10.77.0.1/24"), "cidr '10.77.0.1/24'"),
    (NEW.replace("10.77.0.0/24", "10.77.0.0/33"), "cidr '10.77.0.0/33'"),
    (NEW.replace("gateways: [10.77.0.1", "gateways: [gateway.example"), "gateway.example"),
    (NEW.replace("reserved: [10.77.0.250]", "reserved: [fe80::1%eth0]"), "zone index"),
    (NEW.replace("addresses: [10.77.0.254]", "addresses: [10.77.0.999]"), "10.77.0.999"),
    (NEW.replace("cidrs: [10.77.0.0/24, \"fd77::/64\"]", "cidrs: []"), "cidrs"),
    (NEW + "  - name: lab\n    cidrs: [10.78.0.0/24]\n", "network names given twice: lab"),
    (NEW.replace("    reserved", "    dhcp: true\n    reserved"), "dhcp"),
])
def test_a_bad_network_entry_is_a_short_error_naming_it(tmp_path: Path, bad: str, needle: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(bad)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(path) in str(err.value) and needle in str(err.value), str(err.value)
