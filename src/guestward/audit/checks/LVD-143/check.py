"""LVD-143 network_disk_transport: Network disks use authenticated, encrypted transports."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status


def evaluate(d, params):
    disks = list(d.root.iterfind("devices/disk[@type='network']"))
    if not disks:
        return Verdict(Status.not_applicable, "no network disk")
    for x in disks:
        src = x.find("source")
        proto = src.get("protocol", "") if src is not None else ""
        if proto in ("http", "ftp", "tftp"):
            return Verdict(Status.failed, f"{proto} disk: cleartext")
        if proto == "nbd" and src.get("tls") != "yes":
            return Verdict(Status.failed, "NBD disk without tls='yes'")
        if proto in ("iscsi", "rbd", "gluster") and x.find("auth") is None and src.find("auth") is None:
            return Verdict(Status.failed, f"{proto} disk without <auth>")
    return Verdict(Status.passed)
