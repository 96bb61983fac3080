"""Live migration with the guest's connections: its conntrack entries reach the destination before
the guest runs there.

The sequence (CONNTRACK-FLOWS-NOTES.md 1.5):
1. libvirt migrates the guest live and leaves it paused on the destination (`VIR_MIGRATE_PAUSED`;
   `domains.migrate` resumes it as soon as libvirt's Finish phase is done there);
   the policy is already bound on both ends by the hook (`migrate`/`prepare` on the destination,
   `stopped` on the source); at the switchover the source also enforces the guest as live on both
   ends (its uplink guard must let the guest's packets from the destination in);
2. while it is paused, its entries are copied from the source to the destination (`handover`);
3. the guest resumes, and QEMU's announcement moves the switches' tables over;
4. the source forgets the entries it no longer forwards (those whose other end is a guest still on
   the source stay: the source forwards that guest's side of the connection).

The added downtime is step 2 plus the resume. If the copy fails, the guest is resumed anyway (a
paused guest helps nobody): its connections then depend on conntrack picking them up mid-stream, as
without guestward, and the failure is recorded. The policy is never weakened by a failed copy: every
packet still meets the rules, only established connections may be cut.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from guestward.compile.address_trust import vet
from guestward.enforce import Enforcer, NftRunner
from guestward.enforce.conntrack import Conntrack, Handover, forget, handover
from guestward.hypervisor import domains
from guestward.hypervisor.domain_xml import guest_from_xml
from guestward.hypervisor.errors import HypervisorError
from guestward.model import Guest
from guestward.reconcile.hook import LOCK_TIMEOUT, snapshot_plan
from guestward.store.config import Config
from guestward.store.lock import enforcement_lock
from guestward.store.sqlite import Store

log = logging.getLogger(__name__)


@dataclass
class MigrationReport:
    """Times in milliseconds. `downtime`: libvirt's measured switchover plus what guestward added
    while the guest waited paused on the destination (the copy and the resume)."""

    guest: str
    source: str
    destination: str
    time_elapsed: int = 0
    libvirt_downtime: int = 0
    added_downtime: float = 0.0
    handover: Handover = field(default_factory=Handover)
    forgotten: int = 0
    error: str | None = None

    @property
    def downtime(self) -> int:
        return round(self.libvirt_downtime + self.added_downtime)

    def stats(self) -> dict[str, int]:
        return {"time_elapsed": self.time_elapsed, "downtime": self.downtime,
                "libvirt_downtime": self.libvirt_downtime, "added_downtime": round(self.added_downtime),
                "conntrack_moved": self.handover.moved, "conntrack_missing": self.handover.missing,
                "conntrack_forgotten": self.forgotten}


def conntrack_of(config: Config, host: str) -> Conntrack:
    return Conntrack(NftRunner(config.host(host).netns))


def live_migrate(config: Config, name: str, source: str, destination: str, *,
                 rewrite: Callable[[str], str] = lambda xml: xml, migration_uri: str) -> MigrationReport:
    """Migrate guest `name` from host `source` to `destination` carrying its connections (see the
    module docstring). Raises HypervisorError when libvirt cannot migrate; the guest then still runs
    on the source."""
    src_uri, dst_uri = config.host(source).uri, config.host(destination).uri
    # Only addresses the configuration lets it have: a gateway's or a host's declared in its XML must
    # not get their connections moved or forgotten (docs/SECURITY.md, Domain XML).
    seen = vet(guest_from_xml(domains.live_xml(src_uri, name), source, True), config.address_trust())
    addresses = sorted(str(a) for a in seen.addresses)
    report = MigrationReport(name, source, destination)
    src_ct, dst_ct = conntrack_of(config, source), conntrack_of(config, destination)

    # The source's tables still hold the guest as living there alone, so its uplink guard would drop
    # the guest's packets coming back from the destination until libvirt's Confirm phase (seconds)
    # runs the source's release hook. At switchover the store already holds the guest live on both
    # ends (the destination's hook): the source enforces that, beside the resume, not before it.
    letting_go = threading.Thread(target=_source_lets_go, args=(config, source), name=f"unguard-{name}",
                                  daemon=True)

    def switchover() -> None:
        report.handover = handover(src_ct, dst_ct, addresses)
        letting_go.start()

    try:
        stats = domains.migrate(src_uri, dst_uri, name, rewrite, migration_uri, switchover=switchover)
    except HypervisorError:
        raise
    except Exception as exc:  # the copy failed; the guest was resumed (see domains.migrate)
        report.error = f"conntrack handover failed: {exc}"
        log.warning("%s: %s", name, report.error)
        stats = {}
    report.time_elapsed, report.libvirt_downtime = stats.get("time_elapsed", 0), stats.get("downtime", 0)
    report.added_downtime = stats.get("added_downtime", 0)
    if letting_go.is_alive():
        letting_go.join(timeout=LOCK_TIMEOUT + 20)
    store = Store(config.state_dir / "guestward.db")
    try:
        try:
            report.forgotten = _forget_on_source(store, src_ct, source, name, addresses)
        except Exception as exc:
            report.error = (report.error + "; " if report.error else "") + f"source cleanup failed: {exc}"
        _record(store, report)
    finally:
        store.close()
    return report


def _source_lets_go(config: Config, source: str) -> None:
    """Make the source hold the stored snapshot's plan (the guest live on both ends: its addresses
    no longer refused on the source's uplinks). Best effort: the release hook does it later anyway."""
    store = Store(config.state_dir / "guestward.db")
    try:
        with enforcement_lock(config.state_dir, timeout=LOCK_TIMEOUT):
            plan = snapshot_plan(config, store, store.guests(), source)
            Enforcer(NftRunner(config.host(source).netns), config.settings()).sync(plan)
    except Exception as exc:
        log.warning("%s: could not let the migrated guest go from the uplink guard yet: %s", source, exc)
    finally:
        store.close()


def _forget_on_source(store: Store, source_ct: Conntrack, source: str, name: str, addresses: list[str]) -> int:
    """The source's half once the guest left: keep the entries whose other end still runs there."""
    staying = {str(a) for g in store.guests() if g.active and g.host == source and g.name != name
               for a in g.addresses}
    return forget(source_ct, addresses, staying)


def _record(store: Store, r: MigrationReport, **extra: object) -> None:
    try:
        store.record("conntrack", r.destination, guest=r.guest, source=r.source, moved=r.handover.moved,
                     missing=r.handover.missing, skipped=r.handover.skipped, read_ms=r.handover.read_ms,
                     write_ms=r.handover.write_ms, added_downtime_ms=r.added_downtime,
                     libvirt_downtime_ms=r.libvirt_downtime, forgotten=r.forgotten, error=r.error, **extra)
    except Exception as exc:  # best effort, like every event record
        log.warning("could not record the conntrack handover: %s", exc)


def follow(config: Config, destination: str, uuid: str) -> MigrationReport | None:
    """After a live migration guestward did not run (`virsh migrate`): the guest already runs on
    `destination`, so copy its entries from the host it came from now, as fast as we can. Best
    effort: until the copy lands (about 100 ms) its connections depend on mid-stream pickup, and an
    entry the destination made for a connection opened in between is replaced by nothing (its next
    packet is judged by the policy again). Returns None when the source is not known."""
    store = Store(config.state_dir / "guestward.db")
    try:
        guest = next((g for g in store.guests() if g.uuid == uuid), None)
        source = _came_from(store, guest, destination, {h.name for h in config.hosts}) if guest else None
        if guest is None or source is None:
            return None
        addresses = sorted(str(a) for a in guest.addresses)
        src_ct = conntrack_of(config, source)
        report = MigrationReport(guest.name, source, destination)
        report.handover = handover(src_ct, conntrack_of(config, destination), addresses)
        report.forgotten = _forget_on_source(store, src_ct, source, guest.name, addresses)
        _record(store, report, after_resume=True)
        return report
    finally:
        store.close()


def _came_from(store: Store, guest: Guest, destination: str, hosts: set[str]) -> str | None:
    """The other end of the guest's migration: a host it is still live on in the snapshot, or else the
    host whose hook took it off last within a minute (the source's `stopped` may have run already)."""
    for h in (guest.host, *guest.also_on):
        if h != destination and h in hosts:
            return h
    for e in store.events(kind="hook", limit=50, since=time.time() - 60):
        if e["subject"] == guest.name and e.get("host") in hosts - {destination} \
                and str(e.get("op", "")).startswith(("stopped", "release")):
            return str(e["host"])
    return None
