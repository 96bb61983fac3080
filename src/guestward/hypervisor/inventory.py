"""Inventory from libvirt: every domain on every configured host, as Guests."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import libvirt

from guestward.hypervisor.domain_xml import guest_from_xml
from guestward.hypervisor.errors import HypervisorError
from guestward.model import Guest, Host, Inventory

log = logging.getLogger(__name__)


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error on stderr by default; we report errors ourselves."""


libvirt.registerErrorHandler(_quiet, None)


def open_host(host: Host) -> libvirt.virConnect:
    try:
        return libvirt.open(host.uri)
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"host {host.name} ({host.uri}): {exc.get_error_message()}") from None


def read_guests(host: Host, conn: libvirt.virConnect | None = None) -> list[Guest]:
    conn = conn or open_host(host)
    guests = []
    try:
        domains = conn.listAllDomains()
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"host {host.name}: {exc.get_error_message()}") from None
    for dom in domains:
        try:
            active = bool(dom.isActive())
            guests.append(guest_from_xml(dom.XMLDesc(0), host.name, active))
        except libvirt.libvirtError as exc:  # the domain went away while we looked
            log.debug("skipping domain: %s", exc)
        except ValueError as exc:
            log.warning("%s: unreadable domain XML: %s", host.name, exc)
    return guests


def read_inventory(hosts: Iterable[Host]) -> Inventory:
    hosts = tuple(hosts)
    guests: list[Guest] = []
    for h in hosts:
        guests += read_guests(h)
    return Inventory(hosts, tuple(guests))
