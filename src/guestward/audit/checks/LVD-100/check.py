"""LVD-100 secure_boot: The guest boots UEFI with Secure Boot and enrolled keys."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status


def evaluate(d, params):
    os_el = d.root.find("os")
    if os_el is None:
        return Verdict(Status.failed, "no <os> element")
    arch = (os_el.find("type").get("arch") if os_el.find("type") is not None else None) or "x86_64"
    if arch not in ("x86_64", "i686", "aarch64"):
        return Verdict(Status.not_applicable, f"no UEFI Secure Boot on {arch}")
    feats = {f.get("name"): f.get("enabled") for f in os_el.iterfind("firmware/feature")}
    loader = os_el.find("loader")
    efi = os_el.get("firmware") == "efi" or (loader is not None and loader.get("type") == "pflash")
    if not efi:
        return Verdict(Status.failed, "BIOS firmware: no Secure Boot")
    if feats.get("enrolled-keys") == "no":
        return Verdict(Status.failed, "Secure Boot without enrolled keys boots unsigned binaries")
    if feats.get("secure-boot") == "yes" or (loader is not None and loader.get("secure") == "yes"):
        return Verdict(Status.passed)
    return Verdict(Status.failed, "UEFI without Secure Boot requested")
