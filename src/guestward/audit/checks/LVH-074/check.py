"""LVH-074 apparmor_profiles: Per-guest AppArmor profiles are enforcing (not in complain mode)."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status


def evaluate(host, domains, params):
    profiles = {p: t for p, t in host.files.items() if p.startswith("/etc/apparmor.d/libvirt/")}
    if not profiles:
        return Verdict(Status.not_applicable, "no /etc/apparmor.d/libvirt profiles")
    lax = sorted(p for p, t in profiles.items() if "complain" in t and "flags=" in t)
    if lax:
        return Verdict(Status.failed, "complain mode: " + ", ".join(lax[:5]))
    return Verdict(Status.passed, f"{len(profiles)} profile file(s)")
