"""LVD-025 usb: The guest has no USB controller, hub, USB input or USB host device."""

from guestward.audit.engine import Verdict
from guestward.audit.model import Status


def evaluate(d, params):
    usb = d.root.iterfind("devices/controller[@type='usb']")
    found = [f"<controller type='usb' model='{c.get('model', '(default)')}'>" for c in usb
             if c.get("model") != "none"]
    found += ["<hub>" for _ in d.root.iterfind("devices/hub")]
    found += ["<input bus='usb'>" for _ in d.root.iterfind("devices/input[@bus='usb']")]
    found += ["<hostdev type='usb'>" for _ in d.root.iterfind("devices/hostdev[@type='usb']")]
    if found:
        return Verdict(Status.failed, "found " + ", ".join(found[:4]))
    return Verdict(Status.passed)
