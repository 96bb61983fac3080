"""The synthetic fleet every benchmark uses: guests with labels and addresses, and a policy set.

Shape (the same at every size, so only the number of guests changes):
- `apps` applications (default 1000); guest k belongs to app `k % apps`, slot `k // apps`;
- labels: `app=app-NNNN`, `team=team-NN` (app // 10), `env=prod|staging` (by app), so there is one
  identity per app;
- addresses: app a owns the /24 `10.(16 + a // 256).(a % 256).0/24`; guest slot s has `.s+1` there
  (at most 254 guests per app). That topology is what lets the linear baseline write the same policy
  as one rule per (source prefix, destination prefix, port);
- one policy per app (tier application), `rules_per_policy` rules (default 10): rule j allows
  app a -> app (a + 37 j) on tcp/(8000 + j); the last rule allows app a -> app a + 1 on tcp/5201,
  udp/5201 and icmp (what iperf3 and ping use), so guest 0 (app 0) may reach guest 1 (app 1) and
  the test traffic walks the whole of its identity's chain before it is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network

from guestward.model import Guest, Host, Interface, Labels
from guestward.policy import Policy, parse_policies

TEST_PORT = 5201


@dataclass(frozen=True)
class Shape:
    guests: int
    hosts: int = 1
    apps: int = 1000
    rules_per_policy: int = 10

    @property
    def rules(self) -> int:
        return self.apps * self.rules_per_policy


def app_name(a: int) -> str:
    return f"app-{a:04d}"


def app_prefix(a: int) -> IPv4Network:
    return IPv4Network(f"10.{16 + a // 256}.{a % 256}.0/24")


def guest_address(k: int, apps: int) -> str:
    a, slot = k % apps, k // apps
    if slot >= 254:
        raise ValueError(f"guest {k}: more than 254 guests per app")
    net = app_prefix(a)
    return str(net.network_address + slot + 1)


def guest_mac(k: int) -> str:
    return "52:54:" + ":".join(f"{b:02x}" for b in k.to_bytes(4, "big"))


def host_name(i: int) -> str:
    return f"hv{i:03d}"


def guest_labels(a: int) -> Labels:
    return Labels({"app": app_name(a), "team": f"team-{a // 10:02d}", "env": "prod" if a % 3 else "staging"})


def make_guest(k: int, shape: Shape, port: str | None = None, labels: Labels | None = None) -> Guest:
    """Guest k: app a = k % apps, slot s = k // apps, on host (a + s) % hosts (an app spreads over hosts
    and every host mixes apps); vNIC port `port` (default `v<k>`)."""
    a = k % shape.apps
    nic = Interface.of(guest_mac(k), port or f"v{k:07d}", [guest_address(k, shape.apps)])
    host = host_name((k + k // shape.apps) % shape.hosts)
    return Guest(f"g{k:07d}", f"00000000-0000-4000-8000-{k:012d}", host,
                 labels or guest_labels(a), (nic,))


def make_hosts(shape: Shape, uplinks: tuple[str, ...] = ()) -> tuple[Host, ...]:
    return tuple(Host(host_name(i), f"test:///{host_name(i)}", uplinks) for i in range(shape.hosts))


def make_guests(shape: Shape, ports: dict[int, str] | None = None) -> list[Guest]:
    """Every guest; `ports` renames the vNIC port of some guests (the real netns guests)."""
    ports = ports or {}
    return [make_guest(k, shape, ports.get(k)) for k in range(shape.guests)]


def peer_apps(a: int, shape: Shape) -> list[tuple[int, list[str]]]:
    """(destination app, ports) for each rule of app a's policy, in rule order."""
    out = [((a + 37 * (j + 1)) % shape.apps, [f"tcp/{8000 + j}"]) for j in range(shape.rules_per_policy - 1)]
    out.append(((a + 1) % shape.apps, [f"tcp/{TEST_PORT}", f"udp/{TEST_PORT}", "icmp"]))
    return out


def policy_yaml(a: int, shape: Shape) -> str:
    rules = "".join(
        f"    - name: to-{app_name(b)}-{j}\n"
        f"      action: allow\n"
        f"      from: {{guests: {{app: {app_name(a)}}}}}\n"
        f"      to: {{guests: {{app: {app_name(b)}}}}}\n"
        f"      ports: [{', '.join(ports)}]\n"
        for j, (b, ports) in enumerate(peer_apps(a, shape)))
    return (f"apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {{name: {app_name(a)}}}\n"
            f"spec:\n  tier: application\n  order: {a}\n  rules:\n{rules}")


def policy_sources(shape: Shape) -> list[tuple[str, str]]:
    return [(f"{app_name(a)}.yaml", policy_yaml(a, shape)) for a in range(shape.apps)]


def make_policies(shape: Shape) -> list[Policy]:
    return parse_policies(policy_sources(shape))
