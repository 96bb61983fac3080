"""LVD-090 chardev_network: No serial console, channel or parallel port listens on the network without TLS."""

from guestward.audit.engine import Verdict
from guestward.audit.helpers import is_local
from guestward.audit.model import Severity, Status


def evaluate(d, params):
    devs = [el for tag in ("serial", "console", "parallel", "channel") for el in d.root.iterfind(f"devices/{tag}")
            if el.get("type") in ("tcp", "udp", "telnet", "telnets", "tls")]
    if not devs:
        return Verdict(Status.not_applicable, "no network chardev")
    for el in devs:
        tag = el.tag
        if el.get("type") == "udp":
            return Verdict(Status.failed, f"<{tag} type='udp'>: unauthenticated network console")
        for src in el.iterfind("source"):
            if src.get("mode") == "bind" and src.get("tls") != "yes" and not is_local(src.get("host") or "0.0.0.0"):
                where = src.get("host") or "all addresses"
                return Verdict(Status.failed, f"<{tag} type='{el.get('type')}'> bound on {where}"
                                              f":{src.get('service')} without TLS")
        proto = el.find("protocol")
        if proto is not None and proto.get("type") == "telnet":
            return Verdict(Status.failed, f"<{tag}> uses cleartext telnet", severity=Severity.medium)
    return Verdict(Status.passed)
