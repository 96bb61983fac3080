"""LVH-073 selinux_virt_booleans: SELinux booleans that widen what confined QEMU may access are off."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status

PREFIX = "/sys/fs/selinux/booleans/"


def evaluate(host, domains, params):
    booleans = {p[len(PREFIX):]: t.split() for p, t in host.files.items() if p.startswith(PREFIX)}
    if not booleans:
        return Verdict(Status.not_applicable, "no SELinux booleans in this host root")
    watched = [b for b in booleans if b in params["booleans"] or b.startswith(tuple(params["prefixes"]))]
    on = sorted(b for b in watched if booleans[b][:1] == ["1"])
    if on:
        return Verdict(Status.failed, "on: " + ", ".join(on))
    return Verdict(Status.passed, f"{len(watched)} virt booleans off")
