"""LVH-079 tainted_domains: no guest has been tainted by libvirt (no "is tainted" in the QEMU logs)."""

import re

from guestward.audit.engine import Verdict
from guestward.audit.model import Severity, Status

LOGS = "/var/log/libvirt/qemu/"
TAINT = re.compile(r"Domain id=\d+ is tainted: ([\w-]+)|is tainted: ([\w-]+)")


def evaluate(host, domains, params):
    logs = {p: t for p, t in host.files.items() if p.startswith(LOGS) and p.endswith(".log")}
    if not logs:
        return Verdict(Status.not_applicable, "no QEMU logs in this host root")
    found = {}
    for path, text in logs.items():
        for m in TAINT.finditer(text):
            found.setdefault(path[len(LOGS):-4], set()).add(m.group(1) or m.group(2))
    if not found:
        return Verdict(Status.passed, f"{len(logs)} logs without taint")
    flags = {f for fs in found.values() for f in fs}
    sev = Severity.high if flags & set(params["high"]) else None
    shown = "; ".join(f"{g}: {', '.join(sorted(fs))}" for g, fs in sorted(found.items())[:6])
    return Verdict(Status.failed, shown, severity=sev)
