"""LVD-081 graphics_no_auth: Network-reachable consoles require a password."""

from guestward.audit.engine import Verdict
from guestward.audit.helpers import is_local, listen_addresses
from guestward.audit.model import Severity, Status


def evaluate(d, params):
    gs = [g for g in d.root.iterfind("devices/graphics") if g.get("type") in ("vnc", "spice")]
    if not gs:
        return Verdict(Status.not_applicable, "no vnc/spice graphics")
    worst = None
    for g in gs:
        if g.get("passwd"):
            continue
        for kind, addr in listen_addresses(g):
            if kind == "network" or (kind == "address" and not is_local(addr)):
                return Verdict(Status.failed, f"{g.get('type')} on {addr or 'all addresses'} without a password")
            if kind in ("address", "default"):
                worst = Verdict(Status.failed, f"{g.get('type')} on loopback without a password (any local user)",
                                severity=Severity.medium)
    return worst or Verdict(Status.passed)

