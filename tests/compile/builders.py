"""Short constructors for policy and inventory values in tests (no YAML round trip)."""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path

import yaml

from guestward.compile import Endpoint
from guestward.lab.scenario import Scenario
from guestward.model import Expression, Guest, Host, Interface, Labels, Selector
from guestward.policy import Action, AnyPeer, CidrPeer, GuestsPeer, Peer, Policy, Rule, parse_policies, parse_port

IPAddress = IPv4Address | IPv6Address

PeerSpec = dict[str, str] | Selector | list[str] | None


def peer(spec: PeerSpec) -> Peer:
    if spec is None:
        return AnyPeer()
    if isinstance(spec, Selector):
        return GuestsPeer(spec)
    if isinstance(spec, dict):
        return GuestsPeer(Selector.of(spec))
    return CidrPeer(tuple(ip_network(n) for n in spec))


def rule(name: str, action: str, src: PeerSpec = None, dst: PeerSpec = None, ports: tuple[str, ...] = ()) -> Rule:
    return Rule(name, Action(action), peer(src), peer(dst), tuple(sorted({parse_port(p) for p in ports})))


def policy(name: str, tier: str, *rules: Rule, order: int = 1000) -> Policy:
    return Policy(name, tier, order, tuple(rules))


def sel(match_labels: dict[str, str] | None = None, *exprs: Expression) -> Selector:
    return Selector.of(match_labels or {}, list(exprs))


def guest_end(address: str, **labels: str) -> Endpoint:
    return Endpoint(ip_address(address), Labels(labels), name=address)


def outside(address: str) -> Endpoint:
    return Endpoint(ip_address(address))


def guest(name: str, host: str, labels: dict[str, str], *addresses: str, port: str | None = "",
          active: bool = True, uuid: str | None = None) -> Guest:
    mac = "52:54:00:" + ":".join(f"{b:02x}" for b in hashlib.sha256(name.encode()).digest()[:3])
    nic = Interface.of(mac, f"tap-{name}" if port == "" else port, list(addresses))
    return Guest(name, uuid or f"uuid-{name}", host, Labels(labels), (nic,), active)


def lab_example() -> tuple[tuple[Host, ...], tuple[Guest, ...], list[Policy], IPAddress | None]:
    """The lab example of examples/lab/ (scenario and policy) as compiler inputs, and the external address."""
    root = Path(__file__).resolve().parents[2] / "examples" / "lab"
    scenario = Scenario.model_validate(yaml.safe_load((root / "scenario.yaml").read_text()))
    policy_path = root / "policy.yaml"
    policies = parse_policies([(str(policy_path), policy_path.read_text())])
    guests = tuple(Guest(g.name, f"uuid-{g.name}", g.host, Labels(g.labels),
                         (Interface.of(g.mac, g.tap, [str(g.address)]),)) for g in scenario.guests)
    hosts = tuple(Host(h, f"test:///{h}", ("uplink",)) for h in scenario.hosts)
    return hosts, guests, policies, scenario.external
