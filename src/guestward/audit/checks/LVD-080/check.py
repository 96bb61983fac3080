"""LVD-080 graphics_listen_public: Graphical consoles listen only on loopback or a UNIX socket."""

from guestward.audit.engine import Verdict
from guestward.audit.helpers import is_local, listen_addresses
from guestward.audit.model import Status


def evaluate(d, params):
    gs = [g for g in d.root.iterfind("devices/graphics") if g.get("type") in ("vnc", "spice", "rdp")]
    if not gs:
        return Verdict(Status.not_applicable, "no vnc/spice/rdp graphics")
    for g in gs:
        for kind, addr in listen_addresses(g):
            if kind == "network" or (kind == "address" and not is_local(addr)):
                return Verdict(Status.failed, f"{g.get('type')} console listens on {addr or 'all addresses'}")
    return Verdict(Status.passed)
