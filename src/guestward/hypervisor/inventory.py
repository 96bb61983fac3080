"""Inventory from libvirt: every domain on every configured host, as Guests."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import replace

import libvirt

from guestward.hypervisor.domain_xml import guest_from_xml
from guestward.hypervisor.errors import HypervisorError
from guestward.model import Guest, Host

log = logging.getLogger(__name__)


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error on stderr by default; we report errors ourselves."""


libvirt.registerErrorHandler(_quiet, None)


def open_host(host: Host) -> libvirt.virConnect:
    try:
        return libvirt.open(host.uri)
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"host {host.name} ({host.uri}): {exc.get_error_message()}") from None


def read_guests(host: Host, conn: libvirt.virConnect | None = None,
                bypass_allowed: Collection[str] = ()) -> list[Guest]:
    return [g for g, _ in read_copies(host, conn, bypass_allowed)]


def read_copies(host: Host, conn: libvirt.virConnect | None = None,
                bypass_allowed: Collection[str] = ()) -> list[tuple[Guest, bool]]:
    """(guest, its CPUs run here) for every domain of the host. A domain whose XML cannot be read is
    a refused guest without vNICs (so it is reported, and its ports stay unbound)."""
    conn = conn or open_host(host)
    guests = []
    try:
        domains = conn.listAllDomains()
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"host {host.name}: {exc.get_error_message()}") from None
    for dom in domains:
        try:
            state, _reason = dom.state()
            active = state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED, libvirt.VIR_DOMAIN_NOSTATE)
            running = state == libvirt.VIR_DOMAIN_RUNNING
            try:
                guest = guest_from_xml(dom.XMLDesc(0), host.name, active, bypass_allowed)
            except (ValueError, SyntaxError) as exc:  # defusedxml's refusals, ParseError
                log.warning("%s: unreadable domain XML of %s: %s", host.name, dom.name(), exc)
                guest = Guest(dom.name(), dom.UUIDString(), host.name, active=active,
                              refusal=f"unreadable domain XML: {str(exc)[:200]}")
            guests.append((guest, running))
        except libvirt.libvirtError as exc:  # the domain went away while we looked
            log.debug("skipping domain: %s", exc)
    return guests


def merge_copies(copies: list[tuple[Guest, bool]]) -> Guest:
    """One Guest from the copies of one uuid found on several hosts.

    A guest live on two hosts at once (both ends of a live migration) is one Guest: its `host` is where
    its CPUs run (else where it was found first) and `also_on` the other ends, so its vNICs stay bound
    on both while it switches over. Inactive definitions of a guest that runs elsewhere (the source's
    persistent copy after a migration) are dropped."""
    live = [(g, running) for g, running in copies if g.active]
    if not live:
        return copies[0][0]
    primary = next((g for g, running in live if running), live[0][0])
    for g, running in live:
        # A second copy whose CPUs run too (an aborted migration resumed on both ends) is not a
        # migration: it stays unbound (fail closed), and `running_twice` lets the caller report it.
        if g.host != primary.host and not running:
            primary = primary.live_on(g.host, g)
    # One end refused (say, a hostile tap name on the destination) refuses the guest on every end.
    refusals = list(dict.fromkeys(f"on {g.host}: {g.refusal}" if len(live) > 1 else g.refusal
                                  for g, _ in live if g.refusal is not None))
    return replace(primary, refusal="; ".join(refusals)) if refusals else primary


def running_twice(copies: list[tuple[Guest, bool]]) -> list[str]:
    """The hosts where one guest's CPUs run at the same time, when there is more than one."""
    hosts = [g.host for g, running in copies if g.active and running]
    return hosts if len(hosts) > 1 else []
