"""A guest with hostile tap names on a lab host: refused and reported, and nothing else changes.

The kernel accepts `@gw` and `gw*` as interface names; nft would read them as a set reference and a
wildcard (finding 3 of issue 11). The guest runs on hv1's bridge, is bound nowhere (its taps fall to
the bridge table's drop of unknown ports), `guestward sync` and `guestward status` report it, and
every flow of the truth table stays as it was. The guest is removed afterwards, whatever happens.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from guestward.lab import hosts
from guestward.lab.lab import Lab
from tests.conftest import guestward
from tests.lab.lifecycle_helpers import assert_matrix

pytestmark = pytest.mark.lab

NAME, TAPS = "hostile1", ("@gw", "gw*")
MACS = ("52:54:00:66:00:01", "52:54:00:66:00:02")


def hostile_xml() -> str:
    nics = "".join(f"<interface type='bridge'><source bridge='{hosts.BRIDGE}'/><mac address='{mac}'/>"
                   f"<model type='virtio'/><target dev='{tap}'/></interface>"
                   for tap, mac in zip(TAPS, MACS, strict=True))
    # No OS: the firmware finds nothing to boot and idles; the taps are what matters.
    return (f"<domain type='qemu'><name>{NAME}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            "<on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>"
            f"<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{nics}<memballoon model='none'/>"
            "</devices></domain>")


def virsh(lab: Lab, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["virsh", "-c", lab.uri("hv1"), *argv], capture_output=True, text=True, timeout=120,
                       check=False)
    assert not check or r.returncode == 0, r.stderr
    return r


def bridge_ports(ns: str) -> set[str]:
    r = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "master", hosts.BRIDGE], capture_output=True,
                       text=True, check=True)
    return {link["ifname"] for link in json.loads(r.stdout)}


def bound_ports(ns: str) -> set[str]:
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "map", "bridge", "guestward", "ports-in"],
                       capture_output=True, text=True, check=True)
    elems = next(x["map"] for x in json.loads(r.stdout)["nftables"] if "map" in x).get("elem", [])
    return {e[0] for e in elems}


def test_a_guest_with_hostile_tap_names_is_refused_and_the_truth_table_holds(lab: Lab, tmp_path: Path) -> None:
    ns = hosts.netns_name("hv1")
    before = bound_ports(ns)
    virsh(lab, "destroy", NAME, check=False)
    virsh(lab, "undefine", NAME, check=False)
    xml = tmp_path / "hostile.xml"
    xml.write_text(hostile_xml())
    try:
        virsh(lab, "define", str(xml))
        virsh(lab, "start", NAME)  # the hook lets it start: it gets no traffic, it does not bypass
        assert set(TAPS) <= bridge_ports(ns)  # the kernel took the names, and they are on the bridge
        sync = guestward("sync")
        assert sync.returncode == 0, sync.stderr  # refusing a guest is not a failure of the sync
        assert f"refused: '{NAME}' on hv1: no traffic: vNIC {MACS[0]}: port name '@gw'" in sync.stderr, sync.stderr
        bound = bound_ports(ns)
        assert bound == before and not set(TAPS) & bound  # nothing of it bound, everything else as before
        st = guestward("status", "--json")
        assert st.returncode == 1, st.stderr  # something to report: the refused guest
        report = json.loads(st.stdout)
        assert all(h["reachable"] and h["enforced"] for h in report["hosts"]), report["hosts"]
        [g] = [g for g in report["guests"] if g["name"] == NAME]
        assert g["host"] == "hv1" and g["state"] == "running" and g["refusal"].count("is not a plain interface") == 2
        assert [(n["mac"], n["port"], n["bound"]) for n in g["vnics"]] == [(m, None, False) for m in MACS]
        assert not [x for x in report["guests"] if x["name"] != NAME and x["refusal"]]
        events = [e for e in lab.controller().store.events("refused") if e["subject"] == NAME]
        assert events and "port name '@gw'" in str(events[0]["reason"])
        assert_matrix(lab, step=f"{NAME} with taps {TAPS} running on hv1")
    finally:
        virsh(lab, "destroy", NAME, check=False)
        virsh(lab, "undefine", NAME, check=False)
        assert guestward("sync").returncode == 0
