"""LVD-070 nwfilter_missing: Every vNIC is protected against MAC/IP/ARP spoofing (guestward metadata or an nwfilter)."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status

NS = "https://guestward.dev/xmlns/1"


def evaluate(d, params):
    nics = [i for i in d.root.iterfind("devices/interface") if i.get("type") in ("bridge", "network", "ethernet")]
    if not nics:
        return Verdict(Status.not_applicable, "no bridged/network/ethernet vNIC")
    if d.root.find(f"metadata/{{{NS}}}guest") is not None:
        return Verdict(Status.passed, "managed by guestward: anti-spoofing always on")
    bare = [i for i in nics if i.find("filterref") is None]
    if bare:
        mac = bare[0].find("mac")
        return Verdict(Status.failed, f"{len(bare)} vNIC(s) without filterref"
                       + (f", e.g. {mac.get('address')}" if mac is not None else ""))
    return Verdict(Status.passed)
