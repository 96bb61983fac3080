"""LVH-047 unix_rw_auth: The read-write socket is not open to every local user without authentication."""

import re

from guestward.audit.engine import Verdict, conf_value
from guestward.audit.model import Status


def evaluate(host, domains, params):
    bad = []
    for f in ("/etc/libvirt/libvirtd.conf", "/etc/libvirt/virtqemud.conf", "/etc/libvirt/virtproxyd.conf"):
        if f not in host.files:
            continue
        auth, where = conf_value(host, f, "auth_unix_rw", "polkit")
        if str(auth) != "none":
            continue
        perms, _pwhere = conf_value(host, f, "unix_sock_rw_perms", "0770")
        modes = [int(str(perms), 8)] if re.fullmatch(r"0?[0-7]{3}", str(perms)) else [0o777]
        daemon = f.rsplit("/", 1)[-1].removesuffix(".conf")
        for unit, text in host.files.items():
            if not unit.startswith(f"/etc/systemd/system/{daemon}.socket"):
                continue
            if m := re.search(r"^SocketMode=([0-7]+)", text, re.M):
                modes.append(int(m.group(1), 8))
        if any(mode & 0o007 for mode in modes):
            bad.append(f"{where} and socket mode {', '.join(oct(x) for x in modes)}")
    if bad:
        return Verdict(Status.failed, "; ".join(bad))
    return Verdict(Status.passed)
