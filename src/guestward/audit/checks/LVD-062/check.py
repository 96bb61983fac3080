"""LVD-062 fs_share_writable: Host directories shared into the guest are read-only."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status


def evaluate(d, params):
    shares = list(d.root.iterfind("devices/filesystem"))
    if not shares:
        return Verdict(Status.not_applicable, "no <filesystem>")
    writable = [fs for fs in shares if fs.find("readonly") is None]
    if writable:
        src = writable[0].find("source")
        where = (src.get("dir") or src.get("socket") or src.get("file") or "?") if src is not None else "?"
        return Verdict(Status.failed, f"{len(writable)} writable share(s), e.g. {where}")
    return Verdict(Status.passed)
