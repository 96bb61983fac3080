"""The controller: policies from the store, inventory from libvirt, plans from the compiler,
tables through the enforcer.

Contract of `apply`: the new policy set is validated (whole) and compiled before anything is
enforced; if enforcing fails on any host, the hosts already changed are put back to the previous
plan, the store is not changed, and the error is raised. Nothing of a bad change sticks.

`delete` is all or nothing the same way; an unknown name changes nothing.

Every command that changes the store or the tables (apply, delete, set_label, sync) runs whole under
the writer lock (store/lock.py), so concurrent commands serialise. Its enforcing runs under the
enforcement lock (shared with the agent and the libvirt hook) and ends by storing the inventory it
enforced: that snapshot is what the hook compiles from when a guest starts or arrives while no agent
runs. libvirt is never called while the enforcement lock is held: libvirtd may be waiting on a hook
that waits on it. So the inventory is read first, and a guest the hook
rewrote in the snapshot meanwhile keeps the hook's version (it is newer than what was read).

`enforced` remembers, per host, the plan this process last made the host hold and the generation
of the enforcement-lock hold it did that under (what fast drift repair restores, reconcile/drift.py).

A host whose libvirtd does not answer keeps its guests as the snapshot last saw them, so one
unreachable host does not stop enforcement on the others. `sync` enforces every host it can: a host
whose enforcing fails (its namespace gone, nft failing) is reported in `failed` with its error, and
the others are enforced all the same; `unreachable` and `failed` are what `guestward sync` and
`guestward status` report. A guest that guestward refuses (`Guest.refusal`) is bound nowhere; a
refusal that is new since the last stored snapshot is recorded as a `refused` event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from guestward.compile import CompiledState, HostPlan, compile_state
from guestward.dataplane.denied import owners
from guestward.enforce import Enforcer, NftRunner
from guestward.enforce.enforcer import EnforceError
from guestward.hypervisor import domains
from guestward.hypervisor.errors import HypervisorError
from guestward.hypervisor.inventory import merge_copies, read_copies, running_twice
from guestward.model import QUARANTINE_LABEL, Guest, Inventory
from guestward.policy import Diagnostic, Policy, PolicyError, parse_policies
from guestward.policy.canonical import dump
from guestward.reconcile.admission import admitted, inventory_findings
from guestward.reconcile.hook import snapshot_plan
from guestward.reconcile.sources import read_sources
from guestward.store.config import Config
from guestward.store.lock import enforcement_lock, writer_lock
from guestward.store.sqlite import Finding, Store, StoredPolicy

log = logging.getLogger(__name__)


@dataclass
class ApplyReport:
    policies: list[str]
    commands: dict[str, int]
    conflicts: list[str]


__all__ = ["ApplyReport", "Controller", "read_sources"]


class Controller:
    def __init__(self, config: Config, only_hosts: Iterable[str] = ()) -> None:
        self.config = config
        self.only_hosts = tuple(only_hosts)
        self.store = Store(config.state_dir / "guestward.db")
        self.unreachable: list[str] = []
        self.unreachable_errors: dict[str, str] = {}
        self.failed: dict[str, str] = {}  # host -> why enforcing it failed (last sync)
        self.last_inventory: Inventory | None = None  # what the last sync enforced
        self.conflicts: list[str] = []
        self.duplicates: list[str] = []
        self.findings: list[Finding] = []
        self.enforced: dict[str, tuple[HostPlan, int]] = {}

    # -- reading ---------------------------------------------------------------------------------

    def policies(self) -> list[Policy]:
        """The installed policies. Raises PolicyError naming a stored policy that does not parse."""
        return self.store.load_policies()

    def inventory(self, starting: Iterable[str] = ()) -> Inventory:
        """Every guest on every configured host, one per uuid (see `merge_copies`); guests named in
        `starting` count as running. Every guest is admitted (reconcile/admission.py): addresses vetted
        against the configured networks, quarantine from the store, claim times kept from the snapshot
        (`findings` holds what was wrong)."""
        snapshot = {g.uuid: g for g in self.store.guests()}
        copies: dict[str, list[tuple[Guest, bool]]] = {}
        self.unreachable, self.unreachable_errors = [], {}
        allowed = self.config.bypass_uuids()
        for h in self.config.hosts:
            try:
                found = read_copies(h.host(), bypass_allowed=allowed)
            except Exception as exc:  # HypervisorError, or anything else: this host only
                log.warning("%s; keeping its guests as last seen", exc)
                self.unreachable.append(h.name)
                self.unreachable_errors[h.name] = str(exc) if isinstance(exc, HypervisorError) else (
                    f"host {h.name}: {type(exc).__name__}: {exc}")
                found = [(replace(g, host=h.name, also_on=()), g.host == h.name)
                         for g in snapshot.values() if h.name in g.hosts or (not g.active and g.host == h.name)]
            for g, running in found:
                copies.setdefault(g.uuid, []).append((g, running))
        starting = set(starting)
        now = time.time()
        trust, quarantined = self.config.address_trust(), self.store.quarantined()
        guests = []
        self.duplicates = []
        self.findings = []
        for pairs in copies.values():
            g = merge_copies(pairs)
            if twice := running_twice(pairs):
                self.duplicates.append(f"guest {g.name} ({g.uuid}) runs on {' and '.join(twice)} at once: "
                                       f"bound on {g.host} only")
            if g.name in starting or g.uuid in starting:
                g = replace(g, active=True)
            g, found = admitted(g, snapshot.get(g.uuid), now, trust, quarantined)
            self.findings += found
            guests.append(g)
        return Inventory(tuple(h.host() for h in self.config.hosts), tuple(guests))

    def compiled(self, policies: list[Policy] | None = None, starting: Iterable[str] = ()) -> CompiledState:
        return compile_state(self.inventory(starting), self.policies() if policies is None else policies)

    def enforcer(self, host: str) -> Enforcer:
        return Enforcer(NftRunner(self.config.host(host).netns), self.config.settings())

    # -- changing --------------------------------------------------------------------------------

    def sync(self, starting: Iterable[str] = ()) -> dict[str, int]:
        """Enforce the stored policies on the current inventory, on every host it can; returns the
        number of nft commands each enforced host needed (0: it already held the right state). A host
        that failed is not in the result but in `failed` (host -> error): it never stops the others."""
        with writer_lock(self.config.state_dir):
            return self._sync(starting)

    def _sync(self, starting: Iterable[str]) -> dict[str, int]:
        read_at = self.store.tick()
        read = self.inventory(starting)
        with enforcement_lock(self.config.state_dir) as generation:
            inventory = self._newer_from_hook(read, read_at)
            policies = self.policies()
            state = compile_state(inventory, policies)
            self.conflicts = [str(c) for c in state.conflicts] + self.duplicates
            self._report(inventory, policies)
            previous = {g.uuid: g for g in self.store.guests()}
            newly_quarantined = [g.uuid for g in inventory.guests if g.active and g.labels.quarantined
                                 and not (g.uuid in previous and previous[g.uuid].labels.quarantined)]
            self.store.add_pending_cuts(newly_quarantined)
            # The snapshot is what is desired, stored before enforcing: if a host fails, drift repair
            # and the hook work towards the new state, never back to the old one.
            self.last_inventory = inventory
            self._record_refusals(inventory, previous)
            self.store.put_guests(list(inventory.guests), read_at)
            commands: dict[str, int] = {}
            self.failed = {}
            for h, plan in sorted(state.hosts.items()):
                if h not in self.local_hosts:
                    continue
                try:
                    commands[h] = self._enforce(h, plan, generation)
                except Exception as exc:  # one failing host never blocks the others
                    log.error("enforcing %s failed: %s", h, exc)
                    self.failed[h] = str(exc) or type(exc).__name__
                    self.store.record("sync-error", h, error=self.failed[h])
            self._cut_pending(inventory)
            return commands

    def _record_refusals(self, inventory: Inventory, previous: dict[str, Guest]) -> None:
        """A `refused` event for each guest refused now and not (or not for this reason) before."""
        for g in inventory.guests:
            if g.refusal is not None and (g.uuid not in previous or previous[g.uuid].refusal != g.refusal):
                log.warning("guest %r on %s refused: %s", g.name, g.host, g.refusal)
                self.store.record("refused", g.name, uuid=g.uuid, host=g.host, reason=g.refusal)

    def _report(self, inventory: Inventory, policies: list[Policy]) -> None:
        """Keep the current findings in the store; record each new one once as an event."""
        found = self.findings + inventory_findings(inventory.guests, policies, self.config.address_trust())
        for f in self.store.put_findings(found):
            self.store.record(f.kind, f.subject, **f.detail)

    def _cut_pending(self, inventory: Inventory) -> None:
        """Cut the open connections of every guest that became quarantined (by anyone, through any
        sync): kept pending in the store until the cut succeeded, so a failed cut is retried."""
        for uuid in self.store.pending_cuts():
            g = next((x for x in inventory.guests if x.uuid == uuid), None)
            if g is not None and g.active and g.labels.quarantined:
                self.forget_connections(g)
                self.store.record("cut", g.name, addresses=[str(a) for a in g.addresses])
            if not self.failed:  # a host that failed has not cut yet: the next sync cuts there too
                self.store.done_cut(uuid)

    @property
    def local_hosts(self) -> set[str]:
        """The hosts whose tables this process enforces (`only_hosts`, or every configured host)."""
        return set(self.only_hosts) if self.only_hosts else {h.name for h in self.config.hosts}

    def _newer_from_hook(self, inventory: Inventory, read_at: int) -> Inventory:
        newer = self.store.guests_changed_since(read_at)
        if not newer:
            return inventory
        guests = {g.uuid: g for g in inventory.guests}
        guests.update(newer)
        return Inventory(inventory.hosts, tuple(guests.values()))

    def enforce_snapshot(self, host: str) -> int:
        """Make `host`'s tables hold the plan of the stored snapshot again (no libvirt call): the
        repair after someone changed or flushed them. Returns the number of nft commands needed."""
        with enforcement_lock(self.config.state_dir) as generation:
            return self._enforce(host, snapshot_plan(self.config, self.store, self.store.guests(), host), generation)

    def _enforce(self, host: str, plan: HostPlan, generation: int) -> int:
        self.enforced.pop(host, None)  # a failed sync leaves the host in no state we know
        commands = self.enforcer(host).sync(plan).commands
        self.enforced[host] = (plan, generation)
        return commands

    def _cut_denied(self, inventory: Inventory, state: CompiledState, policies: list[Policy]) -> None:
        """Delete the open connections the new policies deny (dataplane/denied.py) on every local host.
        The ct-mark revision already stops them at their next original-direction packet; this ends
        the ones that only answer. A failure is logged: the tables are right, the cut is a second line."""
        endpoints = owners(inventory.guests, state)
        for host, plan in state.hosts.items():
            if host not in self.local_hosts or not plan.dispatch:
                continue
            try:
                cut = self.enforcer(host).cut_denied([str(a) for a in plan.dispatch], endpoints, policies)
            except (EnforceError, OSError) as exc:
                log.error("cutting the connections the new policy denies on %s failed: %s", host, exc)
                continue
            if cut:
                self.store.record("cut-denied", host, connections=cut)

    def set_label(self, guest: str, key: str, value: str | None, reason: str | None = None) -> dict[str, int]:
        """Set or remove a label on every definition of `guest` (any host), then enforce.
        Raises KeyError when no configured host defines the guest."""
        with writer_lock(self.config.state_dir):
            found = [h.name for h in self.config.hosts if domains.set_label(h.uri, guest, key, value)]
            if not found:
                raise KeyError(guest)
            self.store.record("label", guest, key=key, value=value, hosts=found, reason=reason)
            return self.sync()  # a guest that became quarantined has its open connections cut there

    def set_quarantine(self, guest: str, on: bool, reason: str | None = None) -> dict[str, int]:
        """Quarantine `guest` (or release it) in guestward's store, the source of truth, then mirror it
        as the label in its domain XML and enforce. A label left in the XML still quarantines (fail
        closed), so a release whose label cannot be removed raises and the guest stays quarantined.
        Raises KeyError when no configured host defines the guest."""
        g = self.inventory().guest(guest)
        if g is None:
            raise KeyError(guest)
        if on:
            self.store.quarantine(g.uuid, g.name, reason)
        else:
            self.store.release(g.uuid)
        self.store.record("quarantine" if on else "release", g.name, uuid=g.uuid, reason=reason)
        return self.set_label(g.name, QUARANTINE_LABEL[0], QUARANTINE_LABEL[1] if on else None, reason)

    def forget_connections(self, g: Guest) -> None:
        """Quarantine also cuts what is already open: the guest's connections are judged again, by
        the quarantine tier only, on every host this process enforces."""
        addresses = [str(a) for a in g.addresses]
        for h in sorted(self.local_hosts - set(self.failed)):
            self.enforcer(h).forget_connections(addresses)

    def apply(self, sources: list[tuple[str, str]], *, replace_all: bool = False, allow_empty: bool = False,
              starting: Iterable[str] = ()) -> ApplyReport:
        """Validate `sources` whole and install them (see the module's contract). Raises PolicyError,
        and changes nothing, when they are invalid, when a policy's stored form would not parse
        again identically, or when they hold no policy and `allow_empty` is not given (with
        `replace_all`, that would silently remove every installed policy)."""
        new = parse_policies(sources)  # raises PolicyError: nothing changed
        if not new and not allow_empty:
            what = ("`apply --replace` would remove every installed policy (--allow-empty to mean it)"
                    if replace_all else "nothing to apply")
            raise PolicyError([Diagnostic(f, 1, f"no policy documents: {what}") for f, _ in sources]
                              or [Diagnostic("-", 1, f"no policy documents: {what}")])
        stored = []
        for p in new:
            try:
                stored.append(StoredPolicy.of(dump(p)))
            except ValueError as exc:
                raise PolicyError([Diagnostic(p.file, p.line, str(exc))]) from None
        with writer_lock(self.config.state_dir):
            current = self._installed(without={p.name for p in new}, replace_all=replace_all)
            read_at = self.store.tick()
            read = self.inventory(starting)
            with enforcement_lock(self.config.state_dir) as generation:
                inventory = self._newer_from_hook(read, read_at)
                previous = compile_state(inventory, current if not replace_all else self._rollback_policies())
                merged = {**{p.name: p for p in current}, **{p.name: p for p in new}}
                desired = compile_state(inventory, list(merged.values()))
                commands = self._enforce_all(desired, previous, generation)
                self._cut_denied(inventory, desired, list(merged.values()))
                self.store.put_guests(list(inventory.guests), read_at)
                self.store.put_policies(stored, replace_all=replace_all)
            self.store.record("apply", ",".join(sorted(p.name for p in new)), commands=commands)
            return ApplyReport(sorted(p.name for p in new), commands, [str(c) for c in desired.conflicts])

    def delete(self, names: list[str], *, starting: Iterable[str] = ()) -> ApplyReport:
        """Remove the named policies and enforce what remains on every host, all or nothing: KeyError
        (the unknown names) when one is not installed, and then nothing changes. A stored policy that
        no longer parses can be deleted (only the remaining ones are parsed)."""
        gone = frozenset(names)
        with writer_lock(self.config.state_dir):
            if missing := sorted(gone - {p.name for p in self.store.policies()}):
                raise KeyError(missing)
            remaining = self.store.load_policies(without=gone)
            read_at = self.store.tick()
            read = self.inventory(starting)
            with enforcement_lock(self.config.state_dir) as generation:
                inventory = self._newer_from_hook(read, read_at)
                previous = compile_state(inventory, self._rollback_policies())
                desired = compile_state(inventory, remaining)
                commands = self._enforce_all(desired, previous, generation)
                self._cut_denied(inventory, desired, remaining)
                self.store.put_guests(list(inventory.guests), read_at)
                self.store.delete_policies(sorted(gone))
            self.store.record("delete", ",".join(sorted(gone)), commands=commands)
            return ApplyReport(sorted(gone), commands, [str(c) for c in desired.conflicts])

    def _installed(self, *, without: set[str], replace_all: bool) -> list[Policy]:
        """The installed policies that stay beside new ones (none with `replace_all`; a stored policy
        that a new one replaces is not parsed, so a broken one can be replaced)."""
        return [] if replace_all else self.store.load_policies(without=frozenset(without))

    def _rollback_policies(self) -> list[Policy]:
        """What a failed change rolls back to: the installed policies, or none (every guest denied:
        fail closed) when the store holds one that does not parse."""
        try:
            return self.store.load_policies()
        except PolicyError as exc:
            log.warning("installed policies do not parse; a rollback would deny everything: %s", exc)
            return []

    def _enforce_all(self, desired: CompiledState, previous: CompiledState, generation: int) -> dict[str, int]:
        """Enforce `desired` on every local host; if one fails, put the hosts done back to `previous`."""
        done: list[str] = []
        commands: dict[str, int] = {}
        try:
            for host, plan in desired.hosts.items():
                if host not in self.local_hosts:
                    continue
                commands[host] = self._enforce(host, plan, generation)
                done.append(host)
        except Exception:
            for host in done:
                try:
                    self._enforce(host, previous.hosts[host], generation)
                except Exception as exc:  # keep rolling back the others
                    log.error("rollback on %s failed: %s", host, exc)
            raise
        return commands
