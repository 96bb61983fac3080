"""LVH-071 cpu_vuln_mitigations: the host kernel mitigates CPU vulnerabilities (none Vulnerable, no mitigations=off)."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status


def evaluate(host, domains, params):
    prefix = "/sys/devices/system/cpu/vulnerabilities/"
    vulns = {p[len(prefix):]: t.strip() for p, t in host.files.items() if p.startswith(prefix)}
    cmdline = host.files.get("/proc/cmdline")
    if not vulns and cmdline is None:
        return Verdict(Status.not_applicable, "no live /sys and /proc in this host root")
    bad = [f"{k}: {v}" for k, v in sorted(vulns.items()) if v.startswith("Vulnerable")]
    if cmdline and "mitigations=off" in cmdline.split():
        bad.insert(0, "kernel command line has mitigations=off")
    if bad:
        return Verdict(Status.failed, "; ".join(bad[:6]))
    return Verdict(Status.passed, f"{len(vulns)} vulnerability entries mitigated or not affected")
