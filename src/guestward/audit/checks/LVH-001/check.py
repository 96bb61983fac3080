"""LVH-001 mac_driver_enabled: A mandatory access control driver (SELinux or AppArmor) confines QEMU."""

from guestward.audit.engine import Verdict, conf_value
from guestward.audit.model import Status


def evaluate(host, domains, params):
    value, where = conf_value(host, "/etc/libvirt/qemu.conf", "security_driver", None)
    drivers = value if isinstance(value, list) else ([] if value is None else [value])
    if value is not None and (not drivers or all(str(d) == "none" for d in drivers)):
        return Verdict(Status.failed, where)
    mode = host.files.get("/sys/fs/selinux/enforce")
    aa = host.files.get("/sys/module/apparmor/parameters/enabled")
    if mode is not None and mode.strip() == "0" and not (aa and aa.strip() == "Y"):
        return Verdict(Status.failed, "SELinux is permissive (/sys/fs/selinux/enforce = 0)")
    if value is None and mode is None and aa is not None and aa.strip() != "Y":
        return Verdict(Status.failed, "neither SELinux nor AppArmor is enabled on the host")
    return Verdict(Status.passed, where)
