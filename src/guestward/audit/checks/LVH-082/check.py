"""LVH-082 monolithic_vs_modular: Only one daemon model is enabled (libvirtd or the modular virtqemud/virtproxyd)."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status

WANTS = ("/etc/systemd/system/sockets.target.wants/", "/etc/systemd/system/multi-user.target.wants/")


def evaluate(host, domains, params):
    on = {u for w in WANTS for u in ("libvirtd.socket", "libvirtd.service", "virtqemud.socket", "virtqemud.service")
          if (w + u) in host.meta}
    mono, modular = any(u.startswith("libvirtd") for u in on), any(u.startswith("virtqemud") for u in on)
    if mono and modular:
        return Verdict(Status.failed, "both libvirtd and virtqemud are enabled: " + ", ".join(sorted(on)))
    return Verdict(Status.passed, ", ".join(sorted(on)) or "no unit links found")
