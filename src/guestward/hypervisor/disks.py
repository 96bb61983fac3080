"""A guest's disks as its domain XML names them, and point-in-time copies of a running guest's disks.

The chain of every disk is taken from `<disk>`: the top layer's format from `<driver type>`, each backing
layer from `<backingStore>` with its `<format type>`. Nothing is probed. A disk without `<backingStore>`
(an inactive domain's XML usually has none) is returned with `open_end=True`, to be completed under
guestward.inspect.chain's rule; `<backingStore/>` (empty) closes the chain.

Running guests are copied with libvirt's backup **push** mode (`virDomainBackupBegin`, full backup): QEMU
copies each disk's point-in-time content into a new standalone qcow2 file through a copy-before-write
filter, while the guest runs. The guest's disk chain is never changed (no snapshot to merge back, no
pivot), and a failed or aborted job leaves only our own file behind. Pull mode would do the same over
NBD, which we would then need an NBD client for; an external snapshot would rewrite the chain and need a
block commit to undo, which is exactly the risk this avoids.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
import libvirt

from guestward.hypervisor import inventory as _inventory  # noqa: F401  (installs the quiet error handler)
from guestward.hypervisor.domain_xml import MAX_XML_BYTES
from guestward.hypervisor.errors import HypervisorError
from guestward.model.disks import DiskChain, DiskLayer


def _source(el: Element) -> str | None:
    src = el.find("source")
    if src is None:
        return None
    return src.get("file") or src.get("dev")


def chains_from_xml(xml: str) -> tuple[list[DiskChain], list[str]]:
    """(the chains of the domain's disks, notes on disks that are skipped: cdroms, network disks...)."""
    if len(xml) > MAX_XML_BYTES:
        raise HypervisorError("domain XML too large")
    root = SafeET.fromstring(xml)
    chains, notes = [], []
    for disk in root.findall("./devices/disk"):
        target = (disk.find("target").get("dev") if disk.find("target") is not None else None) or "?"
        if disk.get("device", "disk") != "disk":
            notes.append(f"{target}: {disk.get('device')} skipped")
            continue
        if disk.get("type", "file") not in ("file", "block"):
            notes.append(f"{target}: {disk.get('type')} disk skipped (only file and block disks are read)")
            continue
        path = _source(disk)
        driver = disk.find("driver")
        fmt = driver.get("type") if driver is not None else None
        if path is None:
            notes.append(f"{target}: no source (empty drive) skipped")
            continue
        if fmt is None:
            raise HypervisorError(f"disk {target}: no <driver type>: guestward never probes a disk's format")
        layers = [DiskLayer(path, fmt)]
        cur, open_end = disk, True
        while True:
            bs = cur.find("backingStore")
            if bs is None:
                open_end = layers[-1].format != "raw"
                break
            bpath, bfmt_el = _source(bs), bs.find("format")
            if bpath is None:
                open_end = False  # <backingStore/>: explicitly the end
                break
            if bfmt_el is None or not bfmt_el.get("type"):
                raise HypervisorError(f"disk {target}: backing store {bpath} has no <format type>")
            layers.append(DiskLayer(bpath, str(bfmt_el.get("type"))))
            cur = bs
        try:
            chains.append(DiskChain(target, tuple(layers), open_end=open_end))
        except ValueError as exc:
            raise HypervisorError(str(exc)) from None
    return chains, notes


def _domain(uri: str, name: str) -> libvirt.virDomain:
    try:
        return libvirt.open(uri).lookupByName(name)
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"{uri}: {name}: {exc.get_error_message()}") from None


def guest_disks(uri: str, name: str) -> tuple[bool, list[DiskChain], list[str]]:
    """(running?, disk chains, notes) of guest `name`: the live XML for a running guest (libvirt fills in
    `<backingStore>`), the inactive definition otherwise."""
    dom = _domain(uri, name)
    try:
        active = bool(dom.isActive())
        xml = dom.XMLDesc(0 if active else libvirt.VIR_DOMAIN_XML_INACTIVE)
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"{name}: {exc.get_error_message()}") from None
    chains, notes = chains_from_xml(xml)
    return active, chains, notes


def backup_xml(chains: list[DiskChain], directory: Path) -> str:
    disks = "".join(
        f"<disk name='{c.target}' backup='yes' type='file'><driver type='qcow2'/>"
        f"<target file='{directory / (c.target + '.qcow2')}'/></disk>" for c in chains)
    return f"<domainbackup mode='push'><disks>{disks}</disks></domainbackup>"


@contextlib.contextmanager
def point_in_time(uri: str, name: str, workdir: Path, timeout: float = 600.0) -> Iterator[list[DiskChain]]:
    """Point-in-time copies of running guest `name`'s disks (backup push mode, full), as standalone qcow2
    chains, deleted on exit. The guest's own disk chain is not touched."""
    active, chains, _ = guest_disks(uri, name)
    if not active:
        raise HypervisorError(f"{name} is not running: read its disks directly")
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(os.path.realpath(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir)))  # opened without following links
    os.chmod(tmp, 0o711)  # qemu (possibly not root) writes the copies here
    dom = _domain(uri, name)
    try:
        try:
            dom.backupBegin(backup_xml(chains, tmp), None, 0)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"{name}: backup (push mode) refused: {exc.get_error_message()}") from None
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind = dom.jobInfo()[0]
            except libvirt.libvirtError as exc:
                raise HypervisorError(f"{name}: backup job: {exc.get_error_message()}") from None
            if kind == libvirt.VIR_DOMAIN_JOB_NONE:
                break
            if time.monotonic() > deadline:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.abortJob()
                raise HypervisorError(f"{name}: backup did not finish within {timeout:g} s (aborted)")
            time.sleep(0.1)
        try:
            stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        except libvirt.libvirtError:
            stats = {}
        if stats.get("type") not in (None, libvirt.VIR_DOMAIN_JOB_COMPLETED):
            raise HypervisorError(f"{name}: backup failed: {stats.get('errmsg', stats)}")
        copies = [DiskChain(c.target, (DiskLayer(str(tmp / (c.target + ".qcow2")), "qcow2"),)) for c in chains]
        for c in copies:
            if not Path(c.layers[0].path).is_file():
                raise HypervisorError(f"{name}: backup of {c.target} produced no file")
        yield copies
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
