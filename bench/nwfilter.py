"""Instantiating a 1,000-rule policy for one guest: libvirt nwfilter against guestward.

Both on the same "host": a netns `gwb-nwf` with bridge `gwbbr0` and a tap `gwbtap0` on it, and our
own virtlogd + libvirtd in that netns and a private mount + UTS namespace (as lab/hosts.py starts
its hosts), with configuration and state under /var/tmp/guestward-bench/nwfilter.

- nwfilter (TESTBED.md 5): `nwfilterDefineXML` of a filter (chain root, iptables): 1,000 rules
  `accept out tcp dstipaddr=X dstportstart=80` and a final drop; then `nwfilterBindingCreateXML` of
  that filter on the tap (the instantiation, timed); then the binding's delete (timed).
- guestward: the same policy in guestward's language (1,000 rules `allow from {app: solo} to
  {cidr: [X/32]} ports [tcp/80]`; default deny is built in): parse, compile, and `Enforcer.sync`
  into the same netns (one nft transaction); then `Enforcer.remove`.

Usage: .venv/bin/python bench/nwfilter.py [--reps N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import libvirt
from common import summary, table, timed, write_result
from netns import add_netns, del_netns, in_ns, kill_pidfile, remove_run_dir, sh

from guestward.compile import compile_state
from guestward.enforce import Enforcer, NftRunner
from guestward.lab import hosts
from guestward.model import Guest, Host, Interface, Inventory, Labels
from guestward.policy import parse_policies

NS = "gwb-nwf"
BRIDGE, TAP = "gwbbr0", "gwbtap0"
BASE = Path("/var/tmp/guestward-bench/nwfilter")
MAC, ADDRESS = "52:54:00:77:00:11", "10.250.0.10"
RULES = 1000
FILTER = "gwb-1000"


def targets(n: int = RULES) -> list[str]:
    return [f"10.200.{i // 250}.{i % 250 + 1}" for i in range(n)]


# -- our own libvirtd ---------------------------------------------------------------------------------

def start_libvirtd(d: Path) -> str:
    """virtlogd + libvirtd in netns NS and a private mount + UTS namespace, config and state under d
    (the lab's own starter)."""
    return hosts.start_private_libvirtd(NS, d, NS, "guestward-bench/nwfilter")


def connect(uri: str, timeout: float = 60.0) -> libvirt.virConnect:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stop_libvirtd(d: Path) -> None:
    kill_pidfile(d / "run" / "libvirtd.pid")
    kill_pidfile(d / "run" / "virtlogd.pid")


# -- the two ways ---------------------------------------------------------------------------------------

def filter_xml() -> str:
    rules = "".join(f"  <rule action='accept' direction='out' priority='500'>"
                    f"<tcp dstipaddr='{ip}' dstportstart='80'/></rule>\n" for ip in targets())
    return (f"<filter name='{FILTER}' chain='root'>\n{rules}"
            "  <rule action='drop' direction='inout' priority='1000'><all/></rule>\n</filter>\n")


def binding_xml() -> str:
    return (f"<filterbinding><owner><name>solo</name><uuid>{uuid.uuid5(uuid.NAMESPACE_URL, 'gwb/solo')}</uuid>"
            f"</owner><portdev name='{TAP}'/><mac address='{MAC}'/><filterref filter='{FILTER}'/></filterbinding>")


def firewall_lines() -> int:
    """Rules the iptables-nft / ebtables-nft binaries see in our netns (what nwfilter instantiated)."""
    v4 = sh(*in_ns(NS, "iptables-save"), check=False)
    eb = sh(*in_ns(NS, "ebtables-save"), check=False)
    return sum(1 for line in (v4 + eb).splitlines() if line.startswith("-A"))


def nwfilter_once(conn: libvirt.virConnect) -> dict[str, float]:
    define_s, nwf = timed(lambda: conn.nwfilterDefineXML(filter_xml()))
    bind_s, binding = timed(lambda: conn.nwfilterBindingCreateXML(binding_xml(), 0))
    lines = firewall_lines()
    delete_s, _ = timed(binding.delete)
    nwf.undefine()
    return {"define_s": define_s, "bind_s": bind_s, "delete_s": delete_s, "total_s": define_s + bind_s,
            "firewall_rules": lines}


def policy_text() -> str:
    rules = "".join(f"    - name: r{i}\n      action: allow\n      from: {{guests: {{app: solo}}}}\n"
                    f"      to: {{cidr: [{ip}/32]}}\n      ports: [tcp/80]\n" for i, ip in enumerate(targets()))
    return (f"apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {{name: solo-{RULES}}}\n"
            f"spec:\n  tier: application\n  rules:\n{rules}")


def guestward_once() -> dict[str, float]:
    host = Host("nwf", "qemu:///system")
    guest = Guest("solo", str(uuid.uuid5(uuid.NAMESPACE_URL, "gwb/solo")), host.name, Labels({"app": "solo"}),
                  (Interface.of(MAC, TAP, [ADDRESS]),))
    parse_s, policies = timed(lambda: parse_policies([("solo.yaml", policy_text())]))
    compile_s, state = timed(lambda: compile_state(Inventory((host,), (guest,)), policies))
    enforcer = Enforcer(NftRunner(NS))
    sync_s, result = timed(lambda: enforcer.sync(state.hosts[host.name]))
    rules = nft_rule_count()
    remove_s, _ = timed(enforcer.remove)
    return {"parse_s": parse_s, "compile_s": compile_s, "sync_s": sync_s, "compile_sync_s": compile_s + sync_s,
            "total_s": parse_s + compile_s + sync_s, "remove_s": remove_s, "commands": result.commands,
            "nft_rules": rules}


def nft_rule_count() -> int:
    out = sh("nsenter", f"--net=/run/netns/{NS}", "nft", "-a", "list", "table", "inet", "guestward")
    return sum(1 for line in out.splitlines() if "# handle" in line and "chain " not in line and "set " not in line)


# -- main ---------------------------------------------------------------------------------------------

def setup_network() -> None:
    add_netns(NS)
    sh("ip", "-n", NS, "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "-n", NS, "link", "set", BRIDGE, "up")
    sh(*in_ns(NS, "ip", "tuntap", "add", "dev", TAP, "mode", "tap"))
    sh("ip", "-n", NS, "link", "set", TAP, "master", BRIDGE, "up")
    sh(*in_ns(NS, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2, help="nwfilter repetitions (about 13 s each)")
    ap.add_argument("--gw-reps", type=int, default=5, help="guestward repetitions")
    args = ap.parse_args(argv)
    shutil.rmtree(BASE, ignore_errors=True)
    del_netns(NS)
    nwf: list[dict[str, float]] = []
    gw: list[dict[str, float]] = []
    try:
        setup_network()
        start_s, uri = timed(lambda: start_libvirtd(BASE))
        conn_s, conn = timed(lambda: connect(uri))
        try:
            for _ in range(args.reps):  # interleaved, so both see the same machine load
                nwf.append(nwfilter_once(conn))
                gw.append(guestward_once())
                print(f"  nwfilter bind {nwf[-1]['bind_s']:.2f} s; "
                      f"guestward compile+sync {gw[-1]['compile_sync_s']:.3f} s", flush=True)
            gw += [guestward_once() for _ in range(max(0, args.gw_reps - args.reps))]
        finally:
            conn.close()
    finally:
        stop_libvirtd(BASE)
        del_netns(NS)
        remove_run_dir(BASE)
    res = summarise(nwf, gw, start_s + conn_s)
    print(report(res))
    print(f"\nwritten: {write_result('nwfilter', res)}")
    return 0


def summarise(nwf: list[dict[str, float]], gw: list[dict[str, float]], daemon_start_s: float) -> dict[str, Any]:
    n = {k: summary([r[k] for r in nwf]) for k in nwf[0]}
    g = {k: summary([r[k] for r in gw]) for k in gw[0]}
    return {"rules": RULES, "libvirtd_start_s": daemon_start_s, "nwfilter": n, "guestward": g,
            "ratio_bind_vs_compile_sync": n["bind_s"]["median"] / g["compile_sync_s"]["median"],
            "ratio_define_bind_vs_parse_compile_sync": n["total_s"]["median"] / g["total_s"]["median"],
            "samples": {"nwfilter": nwf, "guestward": gw}}


def report(res: dict[str, Any]) -> str:
    n, g = res["nwfilter"], res["guestward"]
    rows = [["nwfilter: nwfilterDefineXML", n["define_s"]["median"], n["define_s"]["min"], n["define_s"]["max"]],
            ["nwfilter: nwfilterBindingCreateXML (instantiate)", n["bind_s"]["median"], n["bind_s"]["min"],
             n["bind_s"]["max"]],
            ["nwfilter: binding delete", n["delete_s"]["median"], n["delete_s"]["min"], n["delete_s"]["max"]],
            ["guestward: parse policy", g["parse_s"]["median"], g["parse_s"]["min"], g["parse_s"]["max"]],
            ["guestward: compile", g["compile_s"]["median"], g["compile_s"]["min"], g["compile_s"]["max"]],
            ["guestward: Enforcer.sync (one nft transaction)", g["sync_s"]["median"], g["sync_s"]["min"],
             g["sync_s"]["max"]],
            ["guestward: compile + sync", g["compile_sync_s"]["median"], g["compile_sync_s"]["min"],
             g["compile_sync_s"]["max"]],
            ["guestward: remove", g["remove_s"]["median"], g["remove_s"]["min"], g["remove_s"]["max"]]]
    return "\n".join([
        f"{res['rules']:,}-rule policy for one guest (seconds; nwfilter n={n['bind_s']['n']}, "
        f"guestward n={g['sync_s']['n']}); libvirtd start {res['libvirtd_start_s']:.1f} s",
        table(["step", "median", "min", "max"], rows),
        f"firewall rules nwfilter created: {n['firewall_rules']['median']:.0f}; "
        f"nft rules guestward created: {g['nft_rules']['median']:.0f}",
        f"ratio nwfilter instantiate / guestward compile+sync: {res['ratio_bind_vs_compile_sync']:.0f}x; "
        f"define+instantiate / parse+compile+sync: {res['ratio_define_bind_vs_parse_compile_sync']:.0f}x"])


if __name__ == "__main__":
    sys.exit(main())
