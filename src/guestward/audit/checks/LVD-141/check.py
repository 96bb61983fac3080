"""LVD-141 backing_chain: No disk's backing chain uses network storage or paths outside /var/lib/libvirt."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status


def evaluate(d, params):
    chains = list(d.root.iterfind("devices/disk//backingStore/source"))
    if not chains:
        return Verdict(Status.not_applicable, "no backingStore recorded")
    for src in chains:
        if src.get("protocol"):
            return Verdict(Status.failed, f"backing store over {src.get('protocol')}")
        path = src.get("file") or src.get("dev") or ""
        if path and not path.startswith(("/var/lib/libvirt/", "/dev/")):
            return Verdict(Status.failed, f"backing file {path} outside /var/lib/libvirt")
    return Verdict(Status.passed)
