"""LVH-009 console_listen_public: Default console listeners are local, or public only with TLS and x509 verification."""

from guestward.audit.engine import Verdict, conf_value
from guestward.audit.helpers import is_local
from guestward.audit.model import Status


def evaluate(host, domains, params):
    q = "/etc/libvirt/qemu.conf"
    bad = []
    for proto in ("vnc", "spice"):
        listen, where = conf_value(host, q, f"{proto}_listen", "127.0.0.1")
        if is_local(str(listen)):
            continue
        tls, _ = conf_value(host, q, f"{proto}_tls", 0)
        verify, _ = conf_value(host, q, f"{proto}_tls_x509_verify" if proto == "vnc" else "default_tls_x509_verify", 1)
        if str(tls) != "1" or str(verify) != "1":
            bad.append(f"{where} without {proto}_tls + x509 verification")
    if bad:
        return Verdict(Status.failed, "; ".join(bad))
    return Verdict(Status.passed)
