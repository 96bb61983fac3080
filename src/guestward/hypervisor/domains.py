"""Domain operations the lab and the CLI need, behind plain functions (URIs and XML in, values out)."""

from __future__ import annotations

import time

import libvirt

from guestward.hypervisor import inventory as _inventory  # noqa: F401  (installs the quiet error handler)
from guestward.hypervisor.domain_xml import (
    NS,
    guest_element,
    metadata_addresses,
    metadata_waivers,
    metadata_xml,
    parse_metadata,
)
from guestward.hypervisor.errors import HypervisorError


def _conn(uri: str) -> libvirt.virConnect:
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"{uri}: {exc.get_error_message()}") from None


def wait_for_daemon(uri: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            libvirt.open(uri).close()
            return
        except libvirt.libvirtError as exc:
            if time.monotonic() > deadline:
                raise HypervisorError(f"{uri}: libvirtd did not answer: {exc.get_error_message()}") from None
            time.sleep(0.1)


def define(uri: str, xml: str) -> str:
    try:
        return str(_conn(uri).defineXML(xml).UUIDString())
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"define: {exc.get_error_message()}") from None


def start(uri: str, name: str) -> None:
    try:
        _conn(uri).lookupByName(name).create()
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"start {name}: {exc.get_error_message()}") from None


def create_transient(uri: str, xml: str) -> None:
    try:
        _conn(uri).createXML(xml, 0)
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"create: {exc.get_error_message()}") from None


def destroy(uri: str, name: str, undefine: bool = False) -> None:
    """Stop a guest (and optionally remove its definition); a guest that is not there is fine."""
    try:
        dom = _conn(uri).lookupByName(name)
    except libvirt.libvirtError:
        return
    try:
        if dom.isActive():
            dom.destroy()
        if undefine and dom.isPersistent():
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"destroy {name}: {exc.get_error_message()}") from None


def is_active(uri: str, name: str) -> bool:
    try:
        return bool(_conn(uri).lookupByName(name).isActive())
    except libvirt.libvirtError:
        return False


def domain_names(uri: str) -> list[str]:
    return sorted(d.name() for d in _conn(uri).listAllDomains())


def live_xml(uri: str, name: str) -> str:
    return str(_conn(uri).lookupByName(name).XMLDesc(0))


def set_label(uri: str, name: str, key: str, value: str | None) -> bool:
    """Set (or, with value None, remove) one guestward label in a guest's `<metadata>`, in its live
    definition when it runs and in its persistent one when it has one; addresses are kept as they
    are. Returns False when the guest is not defined on this host."""
    try:
        dom = _conn(uri).lookupByName(name)
    except libvirt.libvirtError:
        return False
    try:
        guest_el = guest_element(dom.XMLDesc(0))
        labels = dict(parse_metadata(guest_el).labels)
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
        body = metadata_xml(labels, metadata_addresses(guest_el), for_set_metadata=True,
                            waivers=metadata_waivers(guest_el))
        flags = (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0) | (
            libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0)
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, body, "gw", NS, flags)
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"label {name}: {exc.get_error_message()}") from None
    return True
