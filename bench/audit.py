"""The hardening audit: domain XMLs audited per second (full catalogue), and a whole live host.

- Throughput: at least 1,000 varied domain XML files, generated at run time in a temp dir from the
  shared virt-manager corpus (`../shared/corpus/virt-manager-domains`, never copied into the repo):
  every corpus domain, renamed, with one of several fault/label variations inserted (host devices,
  public VNC, seclabel none, qemu:commandline, untrusted labels, in-XML waivers, ...). Timed: read
  the files + parse (defusedxml) + every check of the catalogue + waivers, as `guestward audit` does.
- Live host: our own libvirtd in network namespace `gwa-bench` (state under
  /var/tmp/guestward-bench/audit), 50 defined TCG guests, 2 of them running; timed: collect every
  domain's inactive and live XML (VIR_DOMAIN_XML_SECURE) and audit it all, in-process, plus one
  wall-clock run of the `guestward audit --uri` command (Python start-up included).

Usage: .venv/bin/python bench/audit.py [--files N] [--reps N] [--guests N] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import summary, table, timed, write_result

from guestward.audit.catalogue import load_catalogue
from guestward.audit.engine import audit, parse_domains
from guestward.audit.facts import FactError, parse_domain_docs
from guestward.hypervisor.audit_facts import read_domain_files, read_live
from guestward.hypervisor.domains import define, destroy, domain_names, start, wait_for_daemon
from guestward.lab.hosts import kill_pidfile, start_private_libvirtd

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "virt-manager-domains"
NETNS = "gwa-bench"
STATE = Path("/var/tmp/guestward-bench/audit")
KERNEL = Path("/var/cache/guestward/assets/kernel/vmlinuz")
TODAY = dt.date.today()
GW = "https://guestward.dev/xmlns/1"

VARIATIONS = [
    "",
    "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x06' slot='0x02'"
    " function='0x0'/></source></hostdev>",
    "<graphics type='vnc' port='5900' listen='0.0.0.0'><listen type='address' address='0.0.0.0'/></graphics>",
    "<serial type='tcp'><source mode='bind' host='0.0.0.0' service='4555'/><protocol type='telnet'/>"
    "<target port='1'/></serial>",
    "<filesystem type='mount' accessmode='passthrough'><source dir='/etc'/><target dir='etc'/></filesystem>",
    "<shmem name='s0'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>",
    "<disk type='block' device='disk'><source dev='/dev/sda'/><target dev='vdz' bus='virtio'/></disk>",
    "<redirdev bus='usb' type='spicevmc'/><smartcard mode='passthrough' type='spicevmc'/>",
]
TOP = [
    "",
    "<seclabel type='none'/>",
    f"<metadata><gw:guest xmlns:gw='{GW}'><gw:label key='trust'>untrusted</gw:label>"
    "<gw:waiver check='LVD-040' expires='2099-01-01'>bench</gw:waiver></gw:guest></metadata>",
    "<memtune><hard_limit unit='MiB'>2048</hard_limit></memtune>",
]


def corpus_domains() -> list[str]:
    """The corpus's parseable <domain> documents, as text."""
    out = []
    for f in sorted(CORPUS.glob("*.xml")):
        text = f.read_text(errors="replace")
        try:
            docs = parse_domain_docs(text, str(f))
        except FactError:
            continue
        if len(docs) == 1 and "</devices>" in text and not text.lstrip().startswith("<node"):
            out.append(re.sub(r"<\?xml[^>]*\?>", "", text).strip())
    return out


def variants(n: int, seed: int = 4) -> list[str]:
    rng = random.Random(seed)
    base = corpus_domains()
    docs = []
    for i in range(n):
        text = base[i % len(base)]
        text = re.sub(r"<name>[^<]*</name>", f"<name>bench-{i:05d}</name>", text, count=1)
        dev = rng.choice(VARIATIONS)
        text = text.replace("</devices>", dev + "</devices>", 1)
        top = rng.choice(TOP)
        if top and ("<metadata" not in text or not top.startswith("<metadata")):
            text = re.sub(r"(</name>)", r"\1" + top.replace("\\", "\\\\"), text, count=1)
        docs.append(text)
    return docs


def audit_files(folder: Path, checks: list[Any]) -> tuple[int, int]:
    docs, errs = read_domain_files([folder])
    domains, perrs = parse_domains(docs)
    report = audit(checks, domains, today=TODAY, errors=errs + perrs)
    return len(domains), len(report.results)


def throughput(n_files: int, reps: int) -> dict[str, Any]:
    checks = load_catalogue()
    with tempfile.TemporaryDirectory(prefix="gw-audit-bench-") as tmp:
        folder = Path(tmp)
        docs = variants(n_files)
        for i, text in enumerate(docs):
            (folder / f"d{i:05d}.xml").write_text(text)
        n_docs, n_results = audit_files(folder, checks)  # warm-up (and the counts)
        walls = [timed(lambda: audit_files(folder, checks))[0] for _ in range(reps)]
        files = sorted(folder.glob("*.xml"))
        raw = [(str(f), f.read_bytes(), "file") for f in files]
        parse_s = [timed(lambda: parse_domains(raw))[0] for _ in range(reps)]
        parsed, _ = parse_domains(raw)
        check_s = [timed(lambda: audit(checks, parsed, today=TODAY))[0] for _ in range(reps)]
    return {"files": n_files, "domains": n_docs, "checks": len(checks), "results": n_results,
            "wall_s": summary(walls), "docs_per_s": n_docs / summary(walls)["median"],
            "parse_s": summary(parse_s), "checks_s": summary(check_s)}


def lab_guest(i: int) -> str:
    definable = VARIATIONS[:6]  # libvirt refuses the others here (a spicevmc channel without spice, ...)
    faults = [definable[i % len(definable)], TOP[i % len(TOP)]]
    return f"""<domain type='qemu'>
  <name>bg{i:02d}</name>{faults[1]}
  <memory unit='MiB'>160</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{KERNEL}</kernel>
    <cmdline>console=ttyS0 root=/dev/vda rootwait panic=0</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><memballoon model='none'/>{faults[0]}</devices>
</domain>"""


def cleanup() -> None:
    for pid in (STATE / "run" / "qemu").glob("*.pid") if (STATE / "run" / "qemu").exists() else ():
        kill_pidfile(pid, timeout=2.0)
    for name in ("libvirtd", "virtlogd"):
        kill_pidfile(STATE / "run" / f"{name}.pid")
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    shutil.rmtree(STATE, ignore_errors=True)


def live_host(n_guests: int, reps: int) -> dict[str, Any]:
    checks = load_catalogue()
    cleanup()
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        uri = start_private_libvirtd(NETNS, STATE, NETNS, "guestward-bench/audit")
        wait_for_daemon(uri)
        for i in range(n_guests):
            define(uri, lab_guest(i))
        running = [f"bg{i:02d}" for i in (0, 2)]
        for name in running:
            start(uri, name)

        def once() -> int:
            docs, errs = read_live(uri)
            domains, perrs = parse_domains(docs)
            return len(audit(checks, domains, today=TODAY, errors=errs + perrs).results)

        n_results = once()
        walls = [timed(once)[0] for _ in range(reps)]
        cli = REPO / ".venv" / "bin" / "guestward"
        cli_s = []
        for _ in range(3):
            t0 = time.perf_counter()
            proc = subprocess.run([str(cli), "audit", "--uri", uri, "-f", "json", "-o", "/dev/null"], check=False,
                                  capture_output=True, text=True)
            cli_s.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr)
        return {"guests": n_guests, "running": len(running), "documents": n_guests + len(running),
                "results": n_results, "in_process_s": summary(walls), "cli_wall_s": summary(cli_s)}
    finally:
        try:
            for name in domain_names(uri):
                destroy(uri, name, undefine=True)
        except Exception:
            pass
        cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--guests", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1,000 files, 2 repetitions")
    args = ap.parse_args(argv)
    if args.quick:
        args.files, args.reps = 1000, 2
    tp = throughput(args.files, args.reps)
    print(table(["files", "domains", "checks", "results", "wall s (median)", "docs/s", "parse s", "checks s"],
                [[tp["files"], tp["domains"], tp["checks"], tp["results"], tp["wall_s"]["median"], tp["docs_per_s"],
                  tp["parse_s"]["median"], tp["checks_s"]["median"]]]))
    lh = live_host(args.guests, args.reps)
    print(table(["guests", "running", "XML documents", "results", "in-process s (median)", "CLI wall s (median)",
                 "CLI wall s (max)"],
                [[lh["guests"], lh["running"], lh["documents"], lh["results"], lh["in_process_s"]["median"],
                  lh["cli_wall_s"]["median"], lh["cli_wall_s"]["max"]]]))
    res = {"throughput": tp, "live_host": lh,
           "goals": {"docs_per_s>=500": tp["docs_per_s"] >= 500,
                     "live_host_under_2s": lh["cli_wall_s"]["median"] < 2.0}}
    print(f"\nwritten: {write_result('audit', res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
