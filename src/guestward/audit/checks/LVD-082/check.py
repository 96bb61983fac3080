"""LVD-082 graphics_password_weak: A network console is not protected by a VNC password alone."""

from guestward.audit.engine import Verdict
from guestward.audit.helpers import is_local
from guestward.audit.model import Status


def evaluate(d, params):
    gs = [g for g in d.root.iterfind("devices/graphics[@type='vnc']") if g.get("passwd")]
    if not gs:
        return Verdict(Status.not_applicable, "no password-protected VNC console")
    for g in gs:
        addrs = [li.get("address") for li in g.iterfind("listen[@type='address']")] or [g.get("listen")]
        if any(a is not None and not is_local(a) for a in addrs):
            return Verdict(Status.failed, "VNC password is the only control on a network listener")
    return Verdict(Status.passed)
