"""LVH-072 ksm: Kernel same-page merging is off, or confidential guests opt out (nosharepages)."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Severity, Status

NS = "https://guestward.dev/xmlns/1"


def evaluate(host, domains, params):
    run = host.files.get("/sys/kernel/mm/ksm/run")
    if run is None:
        return Verdict(Status.not_applicable, "no /sys/kernel/mm/ksm/run in this host root")
    if run.strip() != "1":
        return Verdict(Status.passed, "KSM is off")
    exposed = sorted(d.name for d in domains if d.labels.get("confidential") == "true"
                     and d.root.find("memoryBacking/nosharepages") is None)
    if exposed:
        return Verdict(Status.failed, f"KSM on; confidential guests without nosharepages: {', '.join(exposed[:5])}")
    if not domains:
        return Verdict(Status.failed, "KSM is on (no guests audited with it)", severity=Severity.low)
    return Verdict(Status.passed, "KSM on; no exposed confidential guests")
