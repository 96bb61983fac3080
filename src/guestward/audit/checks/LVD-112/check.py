"""LVD-112 snp_debug: An SEV-SNP guest's policy does not allow debugging."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status


def evaluate(d, params):
    ls = d.root.find("launchSecurity[@type='sev-snp']")
    if ls is None:
        return Verdict(Status.not_applicable, "no SEV-SNP launchSecurity")
    text = (ls.findtext("policy") or "0x00030000").strip()
    try:
        policy = int(text, 0)
    except ValueError:
        return Verdict(Status.failed, f"unreadable policy {text!r}")
    if policy & 0x80000:
        return Verdict(Status.failed, f"policy {policy:#x} allows debugging")
    return Verdict(Status.passed, f"policy {policy:#x}")
