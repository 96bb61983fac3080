"""LVD-111 sev_policy_bits: An SEV guest's policy forbids debugging and key sharing (NODBG, NOKS)."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status


def evaluate(d, params):
    ls = d.root.find("launchSecurity[@type='sev']")
    if ls is None:
        return Verdict(Status.not_applicable, "no SEV launchSecurity")
    try:
        policy = int((ls.findtext("policy") or "0").strip(), 0)
    except ValueError:
        return Verdict(Status.failed, f"unreadable policy {ls.findtext('policy')!r}")
    missing = [n for bit, n in ((0x1, "NODBG"), (0x2, "NOKS")) if not policy & bit]
    if missing:
        return Verdict(Status.failed, f"policy {policy:#x} lacks {', '.join(missing)}")
    return Verdict(Status.passed, f"policy {policy:#x}")
