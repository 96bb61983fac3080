"""Frozen values shared by every part: hosts, guests, interfaces, labels, selectors, identities.

Pure: no libvirt, no nft, no files, no clock. Everything here is hashable and compares by value, so
compiled results can be compared and cached.
"""

from guestward.model.inventory import Guest, Host, Interface, Inventory
from guestward.model.labels import QUARANTINE_LABEL, Labels, label_key_error
from guestward.model.selector import Expression, Operator, Selector

__all__ = [
    "QUARANTINE_LABEL",
    "Expression",
    "Guest",
    "Host",
    "Interface",
    "Inventory",
    "Labels",
    "Operator",
    "Selector",
    "label_key_error",
]
