"""The policy follows every guest through its lifecycle (stop, start, save/restore, managed save,
clone, undefine, label and address changes at run time, hot-plug, libvirtd restart), and drift is
repaired. After each step, real packets (`lab probe --all`) must equal the truth table; nothing here
calls `guestward sync`: the libvirt hook and the agent do the work."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from guestward.dataplane import diff_objects
from guestward.enforce import Enforcer, NftRunner
from guestward.enforce.enforcer import without_dynamic_elements
from guestward.hypervisor import domains
from guestward.lab import hosts
from guestward.lab.lab import Lab
from tests.conftest import guestward
from tests.lab.lifecycle_helpers import assert_matrix, wait_for

pytestmark = pytest.mark.lab


def probe(lab: Lab, src: str, dst: str, port: str) -> bool:
    r = guestward("lab", "probe", src, dst, port)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode == 0


def eventually(lab: Lab, src: str, dst: str, port: str, want: bool, timeout: float = 10) -> float:
    """Seconds until a probe gave `want` (the agent works asynchronously)."""
    took = wait_for(lambda: probe(lab, src, dst, port) == want, timeout, interval=0.1)
    assert took is not None, f"{src} -> {dst} {port} never became {'allowed' if want else 'blocked'}"
    return took


def events(kind: str) -> list[dict[str, object]]:
    r = guestward("events", "--kind", kind, "--json", "--limit", "20")
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def test_stop_and_start(lab: Lab) -> None:
    lab.stop("web2")
    assert assert_matrix(lab, step="stop web2") == 75  # the 33 flows from and to web2 are gone, the rest unchanged
    lab.start("web2")
    assert assert_matrix(lab, step="start web2") == 108


def test_save_and_restore(lab: Lab) -> None:
    path = lab.dir / "db1.save"
    domains.save(lab.uri("hv2"), "db1", str(path))
    assert not domains.is_active(lab.uri("hv2"), "db1")
    assert_matrix(lab, step="save db1")
    domains.restore(lab.uri("hv2"), str(path))
    path.unlink()
    lab.wait_guests(["db1"])
    assert_matrix(lab, step="restore db1")


def test_managed_save_and_start(lab: Lab) -> None:
    domains.managed_save(lab.uri("hv2"), "dns1")
    assert not domains.is_active(lab.uri("hv2"), "dns1")
    lab.start("dns1")
    assert_matrix(lab, step="managed save and start of dns1")


def test_libvirtd_restart_keeps_guests_and_policy(lab: Lab) -> None:
    since = time.time()
    hosts.restart_libvirtd(lab.dir, "hv1")
    domains.wait_for_daemon(lab.uri("hv1"), timeout=60)
    assert wait_for(lambda: any(e["op"] == "reconnect/begin" and float(e["at"]) >= since  # type: ignore[arg-type]
                                for e in events("hook")), 30) is not None
    assert_matrix(lab, step="libvirtd restart on hv1")


def test_label_change_at_run_time_is_enforced_without_the_cli(lab: Lab) -> None:
    # setMetadata straight through libvirt, as any other tool would: web2 (dev) becomes prod.
    assert not probe(lab, "web2", "db1", "tcp/5432")
    domains.set_label(lab.uri("hv2"), "web2", "env", "prod")
    try:
        took = eventually(lab, "web2", "db1", "tcp/5432", True)
    finally:
        domains.set_label(lab.uri("hv2"), "web2", "env", "dev")
    eventually(lab, "web2", "db1", "tcp/5432", False)
    print(f"label change enforced after {took:.2f} s (probe included)")


def test_address_change_in_metadata_moves_the_binding(lab: Lab) -> None:
    mac = lab.scenario().guest("mon1").mac
    assert probe(lab, "mon1", "dns1", "udp/53")
    domains.set_addresses(lab.uri("hv1"), "mon1", [(mac, "10.77.0.44")])
    try:
        # mon1 still sends from 10.77.0.14 inside, which is no longer its address: anti-spoofing drops it
        eventually(lab, "mon1", "dns1", "udp/53", False)
    finally:
        domains.set_addresses(lab.uri("hv1"), "mon1", [(mac, "10.77.0.14")])
    eventually(lab, "mon1", "dns1", "udp/53", True)


def test_clone_inherits_labels_and_policy_from_the_first_packet_then_undefine_and_destroy(lab: Lab) -> None:
    r = guestward("lab", "clone", "web1", "web3", "--host", "hv2", timeout=600)
    assert r.returncode == 0, r.stderr
    try:
        assert assert_matrix(lab, clones={"web3": "web1"}, step="clone web1 as web3") == 147
        # undefined while running: it is transient now, and still enforced
        domains.undefine(lab.uri("hv2"), "web3")
        assert probe(lab, "lb1", "web3", "tcp/443") and not probe(lab, "web3", "external", "tcp/80")
        domains.destroy(lab.uri("hv2"), "web3")
        assert wait_for(lambda: "gwt-web3" not in bridge_table("hv2"), 10) is not None
    finally:
        lab.remove("web3")
    assert_matrix(lab, step="clone removed")


def test_second_guest_claiming_a_bound_address_gets_no_traffic_and_is_reported(lab: Lab) -> None:
    # 'dup' is a copy of web1 that also claims web1's address 10.77.0.11 (another MAC, another tap)
    spec = lab.scenario().guest("web1").model_copy(update={"name": "dup", "host": "hv2"})
    from guestward.lab.domain import domain_xml

    domains.define(lab.uri("hv2"), domain_xml(lab.dir, lab.scenario(), spec))
    domains.start(lab.uri("hv2"), "dup")
    try:
        r = guestward("sync")
        assert "conflict: address 10.77.0.11 claimed by dup, web1: web1 keeps it" in r.stderr, r.stderr
        assert probe(lab, "lb1", "web1", "tcp/443")       # the owner keeps its traffic
        # dup's vNIC may not use the address: none of web1's rights for it
        table = bridge_table("hv2")
        assert "gwt-dup" in table  # its port is known (MAC-bound) ...
        # ... but not the address
        assert not [line for line in table.splitlines() if '"gwt-dup"' in line and "10.77.0.11" in line]
    finally:
        domains.destroy(lab.uri("hv2"), "dup", undefine=True)
    assert wait_for(lambda: "gwt-dup" not in bridge_table("hv2"), 10) is not None
    assert_matrix(lab, step="a duplicate address claimed and given up")


def test_hot_plugged_vnic_gets_nothing_until_compiled_then_its_policy(lab: Lab) -> None:
    mac, tap = "52:54:00:77:00:41", "gwt-mon1b"
    nic = (f"<interface type='bridge'><source bridge='gwbr0'/><mac address='{mac}'/><model type='virtio'/>"
           f"<target dev='{tap}'/></interface>")
    uri = lab.uri("hv1")
    own = lab.scenario().guest("mon1").mac
    domains.set_addresses(uri, "mon1", [(own, "10.77.0.14"), (mac, "10.77.0.41")])
    domains.attach_device(uri, "mon1", nic)
    try:
        took = wait_for(lambda: tap in bridge_table("hv1"), 10)
        assert took is not None, "the hot-plugged vNIC was never bound"
        setup = ("for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth1 ] && break; sleep 0.5; done; "
                 "ip link set eth1 up && ip addr add 10.77.0.41/32 dev eth1 && "
                 "ip route add 10.77.0.250/32 dev eth1 src 10.77.0.41")
        assert lab.exec("mon1", [setup]).status == 0
        # mon1 may ping the outside: through the new vNIC too, with the address declared for it
        assert wait_for(lambda: lab.exec("mon1", ["ping -c 1 -W 2 10.77.0.250 >/dev/null"]).status == 0, 20)
        print(f"hot-plugged vNIC bound {took:.2f} s after attach")
    finally:
        domains.detach_device(uri, "mon1", nic)
        domains.set_addresses(uri, "mon1", [(own, "10.77.0.14")])
    assert wait_for(lambda: tap not in bridge_table("hv1"), 15) is not None
    assert_matrix(lab, step="hot-plug and unplug on mon1")


def test_flushed_ruleset_is_back_within_a_second_and_the_repair_is_recorded(lab: Lab) -> None:
    enforcer = Enforcer(NftRunner("gwl-hv1"))
    before, _ = enforcer.read()

    def restored() -> bool:  # the same objects (a rebuilt chain may list in another order)
        now, missing = enforcer.read()
        return not missing and not diff_objects(now, before) and not diff_objects(before, now)

    since = time.time()
    start = time.monotonic()
    subprocess.run(["ip", "netns", "exec", "gwl-hv1", "nft", "flush", "ruleset"], check=True)
    took = wait_for(restored, 5, interval=0.01)
    assert took is not None, "guestward's tables did not come back"
    assert time.monotonic() - start < 1.0 + 0.05, f"restored after {took:.3f} s"
    drift = [e for e in events("drift") if float(e["at"]) >= since]  # type: ignore[arg-type]
    assert drift and drift[0]["subject"] == "hv1" and "nft" in str(drift[0]["by"]), drift
    assert probe(lab, "web1", "db1", "tcp/5432") and not probe(lab, "web2", "db1", "tcp/5432")
    print(f"flushed ruleset restored after {took * 1000:.0f} ms; recorded: {drift[0]}")


def bridge_table(host: str) -> str:
    """The bridge table as enforced: without what packets put in the log limiters (a port that had a
    drop logged stays in its limiter's elements for a minute after it is unbound)."""
    return without_dynamic_elements(subprocess.run(
        ["ip", "netns", "exec", f"gwl-{host}", "nft", "list", "table", "bridge", "guestward"],
        capture_output=True, text=True, check=False).stdout)



def test_snapshot_revert_brings_back_the_labels_of_the_snapshot_and_their_policy(lab: Lab) -> None:
    from guestward.lab.scenario import GuestSpec, Scenario

    # a web server with a qcow2 disk, so that libvirt can snapshot it with its memory
    data = lab.scenario().model_dump(mode="json")
    data["guests"].append({"name": "snap1", "host": "hv1", "labels": {"zone": "web", "env": "prod"},
                           "listen": ["tcp/80"], "disk": True})
    sc = Scenario.model_validate(data)
    spec: GuestSpec = sc.guest("snap1")
    lab._define(sc, spec)
    lab._save(sc)
    uri = lab.uri("hv1")
    try:
        domains.start(uri, "snap1")
        lab.wait_guests(["snap1"])
        eventually(lab, "snap1", "db1", "tcp/5432", True)       # web-to-db: prod web
        domains.snapshot(uri, "snap1", "prod")
        domains.set_label(uri, "snap1", "env", "dev")
        eventually(lab, "snap1", "db1", "tcp/5432", False)      # no-dev-to-db
        domains.revert(uri, "snap1", "prod")
        assert domains.labels(uri, "snap1")["env"] == "prod"
        took = eventually(lab, "snap1", "db1", "tcp/5432", True)
        print(f"policy of the reverted labels enforced within {took:.2f} s (probe included)")
    finally:
        lab.remove("snap1")
    assert_matrix(lab, step="snapshot revert")
