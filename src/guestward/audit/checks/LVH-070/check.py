"""LVH-070 iommu_enabled: The IOMMU is on where guests have PCI host devices."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status


def evaluate(host, domains, params):
    users = sorted({d.name for d in domains if d.root.find("devices/hostdev[@type='pci']") is not None
                    or d.root.find("devices/interface[@type='hostdev']") is not None})
    if not users:
        return Verdict(Status.not_applicable, "no audited guest has a PCI host device")
    groups = [p for p in host.meta if p.startswith("/sys/kernel/iommu_groups/")]
    cmdline = host.files.get("/proc/cmdline", "")
    if groups or "intel_iommu=on" in cmdline or ("amd_iommu" in cmdline and "amd_iommu=off" not in cmdline):
        return Verdict(Status.passed, f"{len(groups)} IOMMU group(s)")
    return Verdict(Status.failed, f"no IOMMU groups; PCI host devices in {', '.join(users[:5])}")
