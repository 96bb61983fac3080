"""The lab scenario file (POLICY.md section 4): validation and address allocation. Pure: no lab is started."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from guestward.lab.scenario import Scenario, load_scenario
from guestward.policy import PortRange

ROOT = Path(__file__).resolve().parents[2]


def scenario(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"hosts": ["hv1", "hv2"], "network": "10.77.0.0/24",
                            "guests": [{"name": "web1", "host": "hv1"}, {"name": "db1", "host": "hv2"}]}
    base.update(overrides)
    return base


def invalid(data: dict[str, Any], *words: str) -> None:
    with pytest.raises(ValidationError) as info:
        Scenario.model_validate(data)
    text = str(info.value)
    for w in words:
        assert w in text, text


def test_the_example_scenario() -> None:
    s = load_scenario(ROOT / "examples" / "lab" / "scenario.yaml")
    assert s.hosts == ["hv1", "hv2"] and s.network == IPv4Network("10.77.0.0/24")
    assert s.external == IPv4Address("10.77.0.250")
    assert [g.name for g in s.guests] == ["lb1", "web1", "web2", "db1", "mon1", "dns1"]
    assert s.guest("db1").services == [PortRange("tcp", 5432, 5432)]
    assert s.guest("web1").labels == {"zone": "web", "env": "prod"}
    assert len({g.address for g in s.guests}) == len(s.guests)
    assert len({g.mac for g in s.guests}) == len(s.guests) and all(g.mac.startswith("52:54:00:") for g in s.guests)
    assert s.guest("lb1").tap == "gwt-lb1"
    with pytest.raises(KeyError):
        s.guest("nope")


def test_defaults() -> None:
    s = Scenario.model_validate({"hosts": ["hv1"], "guests": [{"name": "a", "host": "hv1"}]})
    assert s.network == IPv4Network("10.77.0.0/24") and s.external is None
    assert s.guest("a").services == [PortRange("tcp", 80, 80), PortRange("udp", 53, 53)]


def test_unknown_host() -> None:
    invalid(scenario(guests=[{"name": "web1", "host": "hv9"}]), "web1", "unknown host", "hv9")


def test_duplicate_names() -> None:
    invalid(scenario(guests=[{"name": "web1", "host": "hv1"}, {"name": "web1", "host": "hv2"}]),
            "duplicate guest names")
    invalid(scenario(hosts=["hv1", "hv1"]), "duplicate host names")


@pytest.mark.parametrize(("field", "value", "words"), [
    ("address", "10.78.0.5", ("outside network", "10.78.0.5")),
    ("address", "10.77.0.300", ("address",)),
    ("address", "fd00::5", ("address",)),
])
def test_address_outside_network_or_not_ipv4(field: str, value: str, words: tuple[str, ...]) -> None:
    invalid(scenario(guests=[{"name": "web1", "host": "hv1", field: value}]), *words)


def test_external_outside_network_and_taken_addresses() -> None:
    invalid(scenario(external="192.0.2.1"), "external", "outside network")
    invalid(scenario(external="10.77.0.20", guests=[{"name": "web1", "host": "hv1", "address": "10.77.0.20"}]),
            "already in use")
    invalid(scenario(guests=[{"name": "a", "host": "hv1", "address": "10.77.0.20"},
                             {"name": "b", "host": "hv1", "address": "10.77.0.20"}]), "b", "already in use")
    # the hosts' own addresses (top of the range) are taken too
    invalid(scenario(guests=[{"name": "a", "host": "hv1", "address": "10.77.0.254"}]), "already in use")


@pytest.mark.parametrize("listen", [["tcp/80-81"], ["icmp"], ["any"], ["http"], ["tcp/0"], ["udp/70000"]])
def test_bad_listen_spec(listen: list[str]) -> None:
    invalid(scenario(guests=[{"name": "web1", "host": "hv1", "listen": listen}]), "listen")


@pytest.mark.parametrize("name", ["Web1", "web_1", "-web", "a-very-long-name", ""])
def test_bad_names(name: str) -> None:
    invalid(scenario(guests=[{"name": name, "host": "hv1"}]), "name")
    invalid(scenario(hosts=[name or "X"], guests=[]), "host")


def test_unknown_fields_are_refused() -> None:
    invalid(scenario(hostz=["x"]), "hostz")
    invalid(scenario(guests=[{"name": "a", "host": "hv1", "lables": {}}]), "lables")


def test_allocation_avoids_taken_addresses_and_is_stable() -> None:
    data = scenario(external="10.77.0.11", guests=[
        {"name": "a", "host": "hv1"},
        {"name": "b", "host": "hv1", "address": "10.77.0.12"},
        {"name": "c", "host": "hv2"},
        {"name": "d", "host": "hv2", "address": "10.77.0.14"},
        {"name": "e", "host": "hv1"},
    ])
    s = Scenario.model_validate(data)
    addresses = {g.name: g.address for g in s.guests}
    taken = {s.external, *(s.host_address(h) for h in s.hosts)}
    assert addresses["b"] == IPv4Address("10.77.0.12") and addresses["d"] == IPv4Address("10.77.0.14")
    assert len(set(addresses.values())) == 5 and not set(addresses.values()) & taken
    assert all(a in s.network and a not in (s.network.network_address, s.network.broadcast_address)
               for a in addresses.values())
    # allocated from the bottom (after the first ten), in guest order, skipping what is taken
    allocated = [addresses[n] for n in ("a", "c", "e")]
    assert allocated == sorted(allocated) and allocated[0] >= list(s.network.hosts())[10]
    assert Scenario.model_validate(data) == s  # the same file gives the same addresses
    assert s.host_address("hv1") != s.host_address("hv2")
    assert s.interface(addresses["a"]).network == s.network


def test_load_scenario_reports_the_file_and_field(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(scenario(guests=[{"name": "a", "host": "hv1", "address": "10.99.0.1"}])))
    with pytest.raises(ValueError, match=r"s\.yaml: .*outside network"):
        load_scenario(f)
    f.write_text("hosts: [hv1\n")
    with pytest.raises(ValueError, match=r"s\.yaml"):
        load_scenario(f)
    with pytest.raises(ValueError, match="missing"):
        load_scenario(tmp_path / "missing.yaml")
