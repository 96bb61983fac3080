"""LVH-008 cgroup_devices: QEMU's device cgroup allows only the default device nodes."""

from guestward.audit.engine import Verdict, conf_value
from guestward.audit.model import Severity, Status

DEFAULT = {"/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/ptmx", "/dev/kvm",
           "/dev/userfaultfd", "/dev/rtc", "/dev/hpet", "/dev/sev", "/dev/kqemu", "/dev/vfio/vfio"}


def evaluate(host, domains, params):
    ctl, where = conf_value(host, "/etc/libvirt/qemu.conf", "cgroup_controllers", None)
    if isinstance(ctl, list) and "devices" not in ctl:
        return Verdict(Status.failed, f"{where}: no devices controller")
    acl, where = conf_value(host, "/etc/libvirt/qemu.conf", "cgroup_device_acl", None)
    extra = sorted(set(acl) - DEFAULT) if isinstance(acl, list) else []
    if extra:
        disks = ("/dev/sd", "/dev/nvme", "/dev/mem", "/dev/vd", "/dev/dm-", "/dev/mapper")
        sev = Severity.high if any(e.startswith(disks) for e in extra) else None
        return Verdict(Status.failed, f"cgroup_device_acl adds {', '.join(extra)}", severity=sev)
    return Verdict(Status.passed)
