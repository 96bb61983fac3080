"""LVD-101 loader_integrity: Firmware code is read-only and comes from the distribution's firmware directories."""

import re

from guestward.audit.engine import Verdict
from guestward.audit.model import Status

FW = re.compile(r"^/usr/(share|lib)/(OVMF|edk2|edk2-ovmf|qemu|AAVMF|seabios|ovmf|qemu-efi-aarch64|ipxe|sgabios"
                r"|slof|qemu-efi|kvm|vgabios)(/|$)")
NVRAM = re.compile(r"^/var/lib/libvirt/qemu/nvram/")


def evaluate(d, params):
    loader, nvram = d.root.find("os/loader"), d.root.find("os/nvram")
    if loader is None and nvram is None:
        return Verdict(Status.not_applicable, "firmware chosen by libvirt")
    if loader is not None:
        if loader.get("type") == "pflash" and loader.get("readonly") == "no":
            return Verdict(Status.failed, "pflash loader is writable (readonly='no')")
        path = (loader.text or "").strip()
        if path and not FW.search(path):
            return Verdict(Status.failed, f"loader {path} is outside the firmware directories")
    if nvram is not None:
        tmpl, path = nvram.get("template"), (nvram.text or "").strip()
        if tmpl and not FW.search(tmpl):
            return Verdict(Status.failed, f"NVRAM template {tmpl} is outside the firmware directories")
        if path and not NVRAM.search(path) and nvram.get("type") is None:
            return Verdict(Status.failed, f"NVRAM {path} is outside /var/lib/libvirt/qemu/nvram")
    return Verdict(Status.passed)
