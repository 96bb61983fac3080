"""LVH-040 tcp_listener: No daemon listens on cleartext TCP (listen_tcp, *-tcp.socket units)."""

from guestward.audit.engine import Verdict, conf_value
from guestward.audit.model import Status

UNITS = ("libvirtd-tcp.socket", "virtproxyd-tcp.socket")
WANTS = ("/etc/systemd/system/sockets.target.wants/", "/etc/systemd/system/multi-user.target.wants/")


def evaluate(host, domains, params):
    bad = []
    for f in ("/etc/libvirt/libvirtd.conf", "/etc/libvirt/virtproxyd.conf"):
        value, where = conf_value(host, f, "listen_tcp", 0)
        if str(value) == "1" and f in host.files:
            bad.append(where)
    bad += [f"{w}{u} is enabled" for w in WANTS for u in UNITS if (w + u) in host.meta]
    if bad:
        return Verdict(Status.failed, "; ".join(bad))
    return Verdict(Status.passed)
