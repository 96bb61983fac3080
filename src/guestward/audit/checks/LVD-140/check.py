"""LVD-140 explicit_format: Every disk declares its image format (driver type)."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status


def evaluate(d, params):
    disks = [x for x in d.root.iterfind("devices/disk") if x.get("device", "disk") in ("disk", "cdrom", "lun")
             and x.find("source") is not None and any(x.find("source").attrib.values())]
    if not disks:
        return Verdict(Status.not_applicable, "no disk with a source")
    for x in disks:
        drv = x.find("driver")
        if drv is None or not drv.get("type"):
            tgt = x.find("target")
            return Verdict(Status.failed, f"disk {tgt.get('dev') if tgt is not None else '?'} has no driver type")
    return Verdict(Status.passed)
