"""LVH-004 qemu_not_root: QEMU runs as an unprivileged user and group (qemu.conf user/group not root)."""

from guestward.audit.engine import Verdict, conf_value
from guestward.audit.model import Status


def _uid(name, table):
    name = str(name)
    if name.startswith("+"):
        return int(name[1:]) if name[1:].isdigit() else None
    if name.isdigit():
        return int(name)
    if name == "root":
        return 0
    for line in (table or "").splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[0] == name and parts[2].isdigit():
            return int(parts[2])
    return None


def evaluate(host, domains, params):
    bad = []
    for key, table in (("user", host.files.get("/etc/passwd")), ("group", host.files.get("/etc/group"))):
        value, where = conf_value(host, "/etc/libvirt/qemu.conf", key, None)
        if value is not None and _uid(value, table) == 0:
            bad.append(where)
    if bad:
        return Verdict(Status.failed, "; ".join(bad))
    return Verdict(Status.passed, "user/group unprivileged (or the build default)")
