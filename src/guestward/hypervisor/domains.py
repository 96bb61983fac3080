"""Domain operations the lab and the CLI need, behind plain functions (URIs and XML in, values out)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

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


def labels(uri: str, name: str) -> dict[str, str]:
    """The guestward labels a guest has now (live definition when it runs)."""
    return dict(parse_metadata(guest_element(str(_dom(uri, name).XMLDesc(0)))).labels)


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

    def relabel(labels: dict[str, str], _addresses: list[tuple[str, str]]) -> None:
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value

    _call(f"label {name}", lambda: _rewrite_metadata(dom, relabel))
    return True


def _rewrite_metadata(dom: libvirt.virDomain,
                      edit: Callable[[dict[str, str], list[tuple[str, str]]], None]) -> None:
    """Rewrite a guest's `<gw:guest>` element after `edit` changed its labels and (mac, address)
    pairs in place; audit waivers are kept. Live definition when it runs, persistent one when it has one."""
    guest_el = guest_element(str(dom.XMLDesc(0)))
    labels = dict(parse_metadata(guest_el).labels)
    addresses = metadata_addresses(guest_el)
    edit(labels, addresses)
    body = metadata_xml(labels, addresses, for_set_metadata=True, waivers=metadata_waivers(guest_el))
    flags = (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0) | (
        libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0)
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, body, "gw", NS, flags)


def _dom(uri: str, name: str) -> libvirt.virDomain:
    try:
        return _conn(uri).lookupByName(name)
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"{name}: {exc.get_error_message()}") from None


def _call(what: str, fn: Callable[[], object]) -> object:
    try:
        return fn()
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"{what}: {exc.get_error_message()}") from None


def inactive_xml(uri: str, name: str) -> str:
    return str(_dom(uri, name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))


def migrate(src_uri: str, dst_uri: str, name: str, rewrite: Callable[[str], str], migration_uri: str,
            switchover: Callable[[], None] | None = None) -> dict[str, int]:
    """Live-migrate `name` (live, persistent on the destination, undefined on the source). `rewrite`
    turns the source's XML into the destination's (host-specific paths); `migration_uri` is where the
    destination QEMU listens (tcp://ADDRESS). Returns the completed job's statistics (ms).

    `switchover`: called once the guest has arrived, paused, on the destination, before it runs
    there: the migration leaves it paused (`VIR_MIGRATE_PAUSED`), this waits for the destination's
    Finish phase (the guest paused there by libvirt, not for migration any more), calls
    `switchover`, and resumes the guest, without waiting for the source's Confirm phase, which
    takes seconds to stop the source QEMU (a normal migration resumes at Finish as well). The
    statistics then also hold `added_downtime` (ms from arrival to running). If `switchover`
    raises, the guest is resumed all the same and the error is raised after the migration ends."""
    dom = _dom(src_uri, name)
    dest_xml = rewrite(str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)))
    persist_xml = rewrite(str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_INACTIVE)))
    flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if switchover is not None:
        flags |= libvirt.VIR_MIGRATE_PAUSED
    params = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: dest_xml, libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: persist_xml,
              libvirt.VIR_MIGRATE_PARAM_URI: migration_uri}
    dst = _conn(dst_uri)
    if switchover is None:
        new = _call(f"migrate {name}", lambda: dom.migrate3(dst, params, flags))
        return _job_stats(new)
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["domain"] = dom.migrate3(dst, params, flags)
        except libvirt.libvirtError as exc:
            result["error"] = exc.get_error_message()

    worker = threading.Thread(target=run, name=f"migrate-{name}", daemon=True)
    worker.start()
    watcher = _conn(dst_uri)  # its own connection: the migration's may be busy
    added: float | None = None
    failure: Exception | None = None
    while added is None:
        done = not worker.is_alive()
        if _arrived_paused(watcher, name):
            arrived = time.monotonic()
            try:
                switchover()
            except Exception as exc:  # resume regardless: see the docstring
                failure = exc
            _call(f"resume {name}", lambda: watcher.lookupByName(name).resume())
            added = (time.monotonic() - arrived) * 1000
        elif done:
            break
        else:
            time.sleep(0.005)
    worker.join()
    if "error" in result:
        raise HypervisorError(f"migrate {name}: {result['error']}")
    if added is None:
        raise HypervisorError(f"migrate {name}: finished without the guest arriving paused on the destination")
    if failure is not None:
        raise failure
    stats = _job_stats(result["domain"])
    stats["added_downtime"] = round(added)
    return stats


def _arrived_paused(conn: libvirt.virConnect, name: str) -> bool:
    """The incoming guest is paused by libvirt's Finish (`VIR_MIGRATE_PAUSED`), not for migration."""
    try:
        state, reason = conn.lookupByName(name).state()
    except libvirt.libvirtError:
        return False  # not there yet
    return bool(state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_USER)


def _job_stats(new: object) -> dict[str, int]:
    assert isinstance(new, libvirt.virDomain)
    try:
        stats = new.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        stats = {}
    return {k: int(stats[k]) for k in ("time_elapsed", "downtime") if k in stats}


def save(uri: str, name: str, path: str) -> None:
    """Save the running guest's memory to `path` and stop it."""
    _call(f"save {name}", lambda: _dom(uri, name).save(path))


def restore(uri: str, path: str) -> None:
    _call(f"restore {path}", lambda: _conn(uri).restore(path))


def managed_save(uri: str, name: str) -> None:
    _call(f"managedsave {name}", lambda: _dom(uri, name).managedSave(0))


def snapshot(uri: str, name: str, snap: str) -> None:
    """A snapshot of the running guest, memory included (internal: the guest needs a qcow2 disk)."""
    xml = f"<domainsnapshot><name>{snap}</name></domainsnapshot>"
    _call(f"snapshot {name}", lambda: _dom(uri, name).snapshotCreateXML(xml, 0))


def revert(uri: str, name: str, snap: str) -> None:
    dom = _dom(uri, name)
    _call(f"revert {name}", lambda: dom.revertToSnapshot(dom.snapshotLookupByName(snap, 0), 0))


def undefine(uri: str, name: str) -> None:
    _call(f"undefine {name}", lambda: _dom(uri, name).undefineFlags(
        libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA))


def attach_device(uri: str, name: str, xml: str) -> None:
    """Hot-plug a device into the running guest (live and persistent when the guest has a definition)."""
    dom = _dom(uri, name)
    flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0)
    _call(f"attach to {name}", lambda: dom.attachDeviceFlags(xml, flags))


def detach_device(uri: str, name: str, xml: str) -> None:
    dom = _dom(uri, name)
    flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0)
    _call(f"detach from {name}", lambda: dom.detachDeviceFlags(xml, flags))


def set_addresses(uri: str, name: str, addresses: list[tuple[str, str]]) -> None:
    """Replace the declared (mac, address) pairs in a guest's `<metadata>`, labels and audit waivers kept."""
    dom = _dom(uri, name)

    def readdress(_labels: dict[str, str], current: list[tuple[str, str]]) -> None:
        current[:] = addresses

    _call(f"metadata {name}", lambda: _rewrite_metadata(dom, readdress))
