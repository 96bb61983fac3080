"""LVD-146 readonly_media: CD-ROM media is attached read-only."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status


def evaluate(d, params):
    cds = list(d.root.iterfind("devices/disk[@device='cdrom']"))
    if not cds:
        return Verdict(Status.not_applicable, "no cdrom")
    if any(c.find("readonly") is None for c in cds):
        return Verdict(Status.failed, "cdrom without <readonly/>")
    return Verdict(Status.passed)
