"""LVH-014 chardev_tls: Guests' TCP character devices are covered by chardev TLS (chardev_tls = 1)."""

from guestward.audit.engine import Verdict, conf_value
from guestward.audit.model import Status


def evaluate(host, domains, params):
    tcp = sorted({d.name for d in domains for tag in ("serial", "console", "channel", "parallel")
                  for el in d.root.iterfind(f"devices/{tag}[@type='tcp']")})
    if not tcp:
        return Verdict(Status.not_applicable, "no audited guest has a TCP chardev")
    value, where = conf_value(host, "/etc/libvirt/qemu.conf", "chardev_tls", 0)
    if str(value) != "1":
        return Verdict(Status.failed, f"{where}; TCP chardevs in {', '.join(tcp[:5])}")
    return Verdict(Status.passed, where)
