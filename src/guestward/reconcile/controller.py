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
unreachable host does not stop enforcement on the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from guestward.compile import CompiledState, HostPlan, compile_state
from guestward.enforce import Enforcer, NftRunner
from guestward.hypervisor import domains
from guestward.hypervisor.errors import HypervisorError
from guestward.hypervisor.inventory import merge_copies, read_copies, running_twice
from guestward.model import Guest, Inventory
from guestward.policy import Diagnostic, Policy, PolicyError, parse_policies
from guestward.policy.canonical import dump
from guestward.reconcile.hook import snapshot_plan
from guestward.reconcile.sources import read_sources
from guestward.store.config import Config
from guestward.store.lock import enforcement_lock, writer_lock
from guestward.store.sqlite import Store, StoredPolicy

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
        self.conflicts: list[str] = []
        self.duplicates: list[str] = []
        self.enforced: dict[str, tuple[HostPlan, int]] = {}

    # -- reading ---------------------------------------------------------------------------------

    def policies(self) -> list[Policy]:
        """The installed policies. Raises PolicyError naming a stored policy that does not parse."""
        return self.store.load_policies()

    def inventory(self, starting: Iterable[str] = ()) -> Inventory:
        """Every guest on every configured host, one per uuid (see `merge_copies`); guests named in
        `starting` count as running. Running guests keep the claim times the snapshot gave their
        addresses."""
        snapshot = {g.uuid: g for g in self.store.guests()}
        copies: dict[str, list[tuple[Guest, bool]]] = {}
        self.unreachable = []
        for h in self.config.hosts:
            try:
                found = read_copies(h.host())
            except HypervisorError as exc:
                log.warning("%s; keeping its guests as last seen", exc)
                self.unreachable.append(h.name)
                found = [(replace(g, host=h.name, also_on=()), g.host == h.name)
                         for g in snapshot.values() if h.name in g.hosts or (not g.active and g.host == h.name)]
            for g, running in found:
                copies.setdefault(g.uuid, []).append((g, running))
        starting = set(starting)
        now = time.time()
        guests = []
        self.duplicates = []
        for pairs in copies.values():
            g = merge_copies(pairs)
            if twice := running_twice(pairs):
                self.duplicates.append(f"guest {g.name} ({g.uuid}) runs on {' and '.join(twice)} at once: "
                                       f"bound on {g.host} only")
            if g.name in starting or g.uuid in starting:
                g = replace(g, active=True)
            if g.active:
                g = g.claiming_since(snapshot.get(g.uuid), now)
            guests.append(g)
        return Inventory(tuple(h.host() for h in self.config.hosts), tuple(guests))

    def compiled(self, policies: list[Policy] | None = None, starting: Iterable[str] = ()) -> CompiledState:
        return compile_state(self.inventory(starting), self.policies() if policies is None else policies)

    def enforcer(self, host: str) -> Enforcer:
        return Enforcer(NftRunner(self.config.host(host).netns), self.config.settings())

    # -- changing --------------------------------------------------------------------------------

    def sync(self, starting: Iterable[str] = ()) -> dict[str, int]:
        """Enforce the stored policies on the current inventory, on every host; returns the number of
        nft commands each host needed (0: it already held the right state)."""
        with writer_lock(self.config.state_dir):
            return self._sync(starting)

    def _sync(self, starting: Iterable[str]) -> dict[str, int]:
        read_at = self.store.tick()
        read = self.inventory(starting)
        with enforcement_lock(self.config.state_dir) as generation:
            inventory = self._newer_from_hook(read, read_at)
            state = compile_state(inventory, self.policies())
            self.conflicts = [str(c) for c in state.conflicts] + self.duplicates
            previous = {g.uuid: g for g in self.store.guests()}
            newly_quarantined = [g.uuid for g in inventory.guests if g.active and g.labels.quarantined
                                 and not (g.uuid in previous and previous[g.uuid].labels.quarantined)]
            self.store.add_pending_cuts(newly_quarantined)
            # The snapshot is what is desired, stored before enforcing: if a host fails, drift repair
            # and the hook work towards the new state, never back to the old one.
            self.store.put_guests(list(inventory.guests), read_at)
            commands = {h: self._enforce(h, plan, generation) for h, plan in state.hosts.items()
                        if h in self.local_hosts}
            self._cut_pending(inventory)
            return commands

    def _cut_pending(self, inventory: Inventory) -> None:
        """Cut the open connections of every guest that became quarantined (by anyone, through any
        sync): kept pending in the store until the cut succeeded, so a failed cut is retried."""
        for uuid in self.store.pending_cuts():
            g = next((x for x in inventory.guests if x.uuid == uuid), None)
            if g is not None and g.active and g.labels.quarantined:
                self.forget_connections(g)
                self.store.record("cut", g.name, addresses=[str(a) for a in g.addresses])
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

    def set_label(self, guest: str, key: str, value: str | None, reason: str | None = None) -> dict[str, int]:
        """Set or remove a label on every definition of `guest` (any host), then enforce.
        Raises KeyError when no configured host defines the guest."""
        with writer_lock(self.config.state_dir):
            found = [h.name for h in self.config.hosts if domains.set_label(h.uri, guest, key, value)]
            if not found:
                raise KeyError(guest)
            self.store.record("label", guest, key=key, value=value, hosts=found, reason=reason)
            return self.sync()  # a guest that became quarantined has its open connections cut there

    def forget_connections(self, g: Guest) -> None:
        """Quarantine also cuts what is already open: the guest's connections are judged again, by
        the quarantine tier only, on every host this process enforces."""
        addresses = [str(a) for a in g.addresses]
        for h in sorted(self.local_hosts):
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
