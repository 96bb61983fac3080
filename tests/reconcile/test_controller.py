"""`Controller.sync` over hosts that fail in different ways, and guests guestward must refuse.

Real parts: libvirt's test driver (in-process, a node file per host, guests running with the tap
names written there), real nft in private network namespaces. hv1 holds good guests and bad ones
(hostile tap names, malformed metadata, a macvtap vNIC, an allowed macvtap vNIC); hv2's libvirt does
not answer; hv3's network namespace is gone. Every host that can be enforced is, each failure is
reported, the bad guests are bound nowhere and reported, the good ones are bound."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from guestward.enforce import Enforcer, NftRunner
from guestward.hypervisor.domain_xml import NS
from guestward.policy import parse_policies
from guestward.reconcile.controller import Controller
from guestward.store.config import Config, HostConfig
from guestward.store.sqlite import StoredPolicy
from tests.conftest import guestward
from tests.enforce.conftest import netns  # noqa: F401  (the fixture)

pytestmark = pytest.mark.nft

POLICY = """
apiVersion: guestward.dev/v1
kind: Policy
metadata: {name: shop}
spec:
  tier: application
  rules:
    - {name: lb-to-web, action: allow, from: {guests: {zone: lb}}, to: {guests: {zone: web}}, ports: [tcp/80]}
    - name: not-db
      action: allow
      from: {guests: {zone: lb}}
      to: {guests: {matchExpressions: [{key: zone, operator: NotIn, values: [db]}]}}
      ports: [tcp/22]
"""
ALLOWED_UUID = "77777777-7777-7777-7777-777777777777"


def dom(name: str, uuid: str, nic: str, labels: dict[str, str] | None = None, extra_meta: str = "") -> str:
    meta = "".join(f'<gw:label key="{k}">{v}</gw:label>' for k, v in (labels or {}).items()) + extra_meta
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>65536</memory>"
            f"<os><type>hvm</type></os><metadata><gw:guest xmlns:gw='{NS}'>{meta}</gw:guest></metadata>"
            f"<devices>{nic}</devices></domain>")


def bridged(mac: str, tap: str) -> str:
    return f"<interface type='bridge'><mac address='{mac}'/><source bridge='br0'/><target dev='{tap}'/></interface>"


def address(mac: str, addr: str) -> str:
    return f'<gw:address mac="{mac}">{addr}</gw:address>'


HV1 = [
    dom("web1", "11111111-0000-0000-0000-000000000001", bridged("52:54:00:00:00:01", "tap1"), {"zone": "web"},
        address("52:54:00:00:00:01", "10.0.0.1")),
    dom("lb1", "11111111-0000-0000-0000-000000000002", bridged("52:54:00:00:00:02", "tap2"), {"zone": "lb"},
        address("52:54:00:00:00:02", "10.0.0.2")),
    dom("evil-at", "11111111-0000-0000-0000-000000000003", bridged("52:54:00:00:00:03", "@x"), {"zone": "web"},
        address("52:54:00:00:00:03", "10.0.0.3")),
    dom("evil-star", "11111111-0000-0000-0000-000000000004", bridged("52:54:00:00:00:04", "*"), {"zone": "web"},
        address("52:54:00:00:00:04", "10.0.0.4")),
    # a db guest whose zone label is malformed: dropping just the label would match `NotIn [db]`
    dom("db-bad", "11111111-0000-0000-0000-000000000005", bridged("52:54:00:00:00:05", "tap5"), {},
        '<gw:label key="zone">db!</gw:label>' + address("52:54:00:00:00:05", "10.0.0.5")),
    dom("mvt", "11111111-0000-0000-0000-000000000006",
        "<interface type='direct'><mac address='52:54:00:00:00:06'/><source dev='eth0' mode='bridge'/>"
        "<target dev='mvt6'/></interface>", {"zone": "web"}),
    dom("mvt-ok", ALLOWED_UUID,
        "<interface type='direct'><mac address='52:54:00:00:00:07'/><source dev='eth0' mode='bridge'/>"
        "<target dev='mvt7'/></interface>", {"zone": "web"}),
]
HV3 = [dom("web3", "33333333-0000-0000-0000-000000000001", bridged("52:54:00:00:03:01", "tap1"), {"zone": "web"})]


@pytest.fixture
def world(netns: str, tmp_path: Path) -> Iterator[tuple[Config, Path]]:  # noqa: F811
    second = f"gwt-nft2-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", second], check=True)
    try:
        for name, doms in (("hv1", HV1), ("hv3", HV3)):
            (tmp_path / f"{name}.xml").write_text(f"<node>{''.join(doms)}</node>")
        config = Config(state_dir=tmp_path / "state", bypass_allowed=[ALLOWED_UUID], hosts=[
            HostConfig(name="hv1", uri=f"test://{tmp_path}/hv1.xml", netns=netns, uplinks=["up0"]),
            HostConfig(name="hv2", uri=f"qemu+unix:///system?socket={tmp_path}/no-such-socket", netns=second),
            HostConfig(name="hv3", uri=f"test://{tmp_path}/hv3.xml", netns=f"gwt-gone-{os.getpid()}"),
        ])
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        ctl = Controller(config)
        ctl.store.put_policies([StoredPolicy(p.name, p.file, p.line, p.source)
                                for p in parse_policies([("p.yaml", POLICY)])])
        yield config, path
    finally:
        subprocess.run(["ip", "netns", "del", second], check=False)


def test_sync_enforces_every_host_it_can_and_reports_the_others(world: tuple[Config, Path]) -> None:
    config, _ = world
    ctl = Controller(config)
    commands = ctl.sync()
    assert set(commands) == {"hv1", "hv2"} and commands["hv1"] > 0 and commands["hv2"] > 0
    assert ctl.unreachable == ["hv2"] and "no-such-socket" in ctl.unreachable_errors["hv2"]
    assert set(ctl.failed) == {"hv3"} and "gwt-gone" in ctl.failed["hv3"], ctl.failed
    hv1 = Enforcer(NftRunner(config.host("hv1").netns), config.settings())
    objects, missing = hv1.read()
    # the good guests and the allowed macvtap guest are bound; the refused ones are not
    assert missing == [] and objects.bound_ports() == {"tap1", "tap2", "mvt7"}
    assert set(objects.elements[("inet", "in4")]) == {"10.0.0.1", "10.0.0.2"}  # type: ignore[arg-type]
    hv2_objects, hv2_missing = Enforcer(NftRunner(config.host("hv2").netns), config.settings()).read()
    assert hv2_missing == [] and hv2_objects.bound_ports() == set()  # enforced: its (no) guests as last seen
    refusals = {g.name: g.refusal for g in ctl.last_inventory.guests if g.refusal}  # type: ignore[union-attr]
    assert set(refusals) == {"evil-at", "evil-star", "db-bad", "mvt"}
    assert refusals["evil-at"].startswith("vNIC 52:54:00:00:00:03: port name '@x' is not a plain interface name")
    assert refusals["evil-star"].startswith("vNIC 52:54:00:00:00:04: port name '*' is not a plain")
    assert refusals["db-bad"].startswith("malformed guestward metadata: invalid label value 'db!'")
    assert refusals["mvt"].startswith("vNIC 52:54:00:00:00:06 (type 'direct') bypasses the bridge")
    events = ctl.store.events("refused")
    assert sorted(str(e["subject"]) for e in events) == sorted(refusals)
    assert [e for e in ctl.store.events("sync-error") if e["subject"] == "hv3"]
    # a second sync: hv1 already right, the refusals not recorded again, hv3 still reported
    assert ctl.sync()["hv1"] == 0 and len(ctl.store.events("refused")) == 4 and set(ctl.failed) == {"hv3"}


def test_sync_and_status_commands_report_each_problem(world: tuple[Config, Path]) -> None:
    _, path = world
    r = guestward("sync", "--config", str(path))
    assert r.returncode == 2, (r.stdout, r.stderr)  # a host failed: non-zero, but the others were enforced
    assert r.stdout.split(",")[0].startswith("hv1: ") and "hv2: " in r.stdout
    lines = r.stderr.splitlines()
    assert any(line.startswith("failed: hv3: ") for line in lines), r.stderr
    assert "unreachable: hv2: its guests kept as last seen" in lines
    assert any(line.startswith("refused: 'evil-at' on hv1: no traffic: vNIC 52:54:00:00:00:03: port name '@x'")
               for line in lines), r.stderr
    r = guestward("status", "--json", "--config", str(path))
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    hosts = {h["name"]: h for h in report["hosts"]}
    assert (hosts["hv1"]["reachable"], hosts["hv1"]["enforced"], hosts["hv1"]["differences"]) == (True, True, 0)
    assert hosts["hv2"]["reachable"] is False and "no-such-socket" in hosts["hv2"]["error"]
    assert hosts["hv2"]["enforced"] is True
    assert hosts["hv3"]["reachable"] is True and hosts["hv3"]["enforced"] is None and hosts["hv3"]["enforce_error"]
    guests = {g["name"]: g for g in report["guests"]}
    assert guests["web1"]["refusal"] is None and guests["web1"]["vnics"] == [
        {"mac": "52:54:00:00:00:01", "port": "tap1", "addresses": ["10.0.0.1"], "refused": [], "bound": True}]
    assert guests["evil-star"]["vnics"][0]["port"] is None and not guests["evil-star"]["vnics"][0]["bound"]
    assert "port name '*'" in guests["evil-star"]["refusal"] and guests["evil-star"]["state"] == "running"
    assert "bypasses the bridge" in guests["mvt"]["refusal"] and guests["mvt-ok"]["refusal"] is None
    r = guestward("status", "--config", str(path))
    assert r.returncode == 1 and "evil-at" in r.stdout and "unreachable" in r.stdout, r.stderr
    assert "Traceback" not in r.stderr and "port name '@x'" in r.stdout
    # explain agrees with the tables: labelled zone=web like web1, but refused, so blocked
    assert guestward("explain", "lb1", "web1", "tcp/80", "--config", str(path)).returncode == 0
    r = guestward("explain", "lb1", "evil-at", "tcp/80", "--json", "--config", str(path))
    assert r.returncode == 1 and json.loads(r.stdout)["reason"].startswith("evil-at is refused, no traffic: vNIC")
