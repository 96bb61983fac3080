"""The compiler: from inventory and policies to per-host plans, from scratch or one guest at a time.

Invariants (checked by property tests):
- the result does not depend on the order of policies, rules' policies, or guests;
- after any sequence of `upsert_guest`/`remove_guest`, `state()` equals `compile_state` of the same
  inputs, and the returned `HostDelta`s replayed on the previous state give the new state;
- an address claimed by two guests belongs to the one that claimed it strictly first, else to neither
  (fail closed), and is reported; a stopped guest still claims the addresses it claimed while it ran
  (it owns them unbound: a guest started later with one of them gets no traffic on it).
- a refused guest (`Guest.refusal`) binds no vNIC, claims no address and joins no set: it gets no
  traffic. It still claims its port names, so a stale guest naming the same tap is not bound to it.

Cost of one guest change: proportional to its addresses, the distinct selectors in the policy set,
and the other guests claiming its addresses; independent of the number of guests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from guestward.compile.chains import RuleIndex, identity_chains
from guestward.compile.plan import (
    ChainPlan,
    CompiledState,
    Conflict,
    HostPlan,
    IPAddress,
    VnicBinding,
    identity_id,
)
from guestward.compile.selector_cache import SelectorCache, policy_selectors
from guestward.model import Guest, Host, Inventory, Labels
from guestward.policy import CidrPeer, Policy

_MISSING = object()
K = TypeVar("K")


@dataclass
class HostDelta:
    """What changed on one host. `None` values mean removed."""

    vnics: dict[str, VnicBinding | None] = field(default_factory=dict)
    dispatch: dict[IPAddress, str | None] = field(default_factory=dict)
    chains: dict[str, ChainPlan | None] = field(default_factory=dict)
    sets_added: dict[str, frozenset[IPAddress]] = field(default_factory=dict)
    sets_removed: set[str] = field(default_factory=set)
    elements_added: dict[str, set[IPAddress]] = field(default_factory=dict)
    elements_removed: dict[str, set[IPAddress]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any((self.vnics, self.dispatch, self.chains, self.sets_added, self.sets_removed,
                    self.elements_added, self.elements_removed))

    def apply_to(self, plan: HostPlan) -> None:
        """Replay this delta on a plan (used by tests to check deltas against from-scratch results)."""
        for port, b in self.vnics.items():
            _put(plan.vnics, port, b)
        for addr, ident in self.dispatch.items():
            _put(plan.dispatch, addr, ident)
        for name, chain in self.chains.items():
            _put(plan.chains, name, chain)
        for d in self.sets_removed:
            plan.sets.pop(d, None)
        plan.sets.update(self.sets_added)
        for d, add in self.elements_added.items():
            plan.sets[d] = plan.sets[d] | add
        for d, rm in self.elements_removed.items():
            plan.sets[d] = plan.sets[d] - rm


def _put(d: dict, key: object, value: object) -> None:  # type: ignore[type-arg]
    if value is None:
        d.pop(key, None)
    else:
        d[key] = value


class _HostState:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.vnics: dict[str, VnicBinding] = {}
        self.dispatch: dict[IPAddress, str] = {}
        self.ident_refs: Counter[str] = Counter()
        self.chains: dict[str, ChainPlan] = {}
        self.set_refs: Counter[str] = Counter()
        self.sets: dict[str, set[IPAddress]] = {}


class Compiler:
    """Holds the inputs and the compiled result, and updates the result one guest at a time."""

    def __init__(self, hosts: Iterable[Host], policies: Iterable[Policy] = ()) -> None:
        self._host_defs = {h.name: h for h in hosts}
        self._guests: dict[str, Guest] = {}
        self._claims: dict[IPAddress, set[str]] = {}
        # (host, port) -> active guests naming that tap: libvirt reuses tap names (vnetN), so two guests'
        # updates can overlap; a port claimed twice is bound to neither until one lets go (fail closed).
        self._port_claims: dict[tuple[str, str], set[str]] = {}
        self.set_policies(list(policies))

    # -- inputs -----------------------------------------------------------------------------------

    def set_policies(self, policies: list[Policy]) -> dict[str, HostDelta]:
        """Replace the policy set. Recompiles everything; returns the per-host deltas."""
        before = self.state() if hasattr(self, "_hosts") else None
        self._policies = sorted(policies, key=lambda p: p.sort_key)
        self._selectors = policy_selectors(self._policies)
        self._selector_cache = SelectorCache(self._selectors)
        self._rule_index = RuleIndex(self._policies, self._selector_cache)
        self._chain_cache: dict[Labels, dict[str, ChainPlan]] = {}
        self._members: dict[str, set[IPAddress]] = {d: set() for d in self._selectors}
        self._hosts = {name: _HostState(h) for name, h in self._host_defs.items()}
        self._contrib: dict[str, _Contribution] = {}
        self._begin()
        for uuid in sorted(self._guests):
            self._add(self._guests[uuid])
        self._end()
        after = self.state()
        return {h: diff_plans(before.hosts[h] if before else HostPlan(h), after.hosts[h]) for h in after.hosts}

    def upsert_guest(self, guest: Guest) -> dict[str, HostDelta]:
        """Add or replace one guest (by uuid). Returns only what changed, per host."""
        return self._change([(self._guests.get(guest.uuid), guest)])

    def upsert_guests(self, guests: Iterable[Guest]) -> dict[str, HostDelta]:
        """Add or replace many guests in one step: the same result as upserting them one by one (the
        last of two guests with one uuid wins), with one delta per host instead of one per guest."""
        latest = {g.uuid: g for g in guests}
        return self._change([(self._guests.get(uuid), g) for uuid, g in latest.items()])

    def remove_guest(self, uuid: str) -> dict[str, HostDelta]:
        old = self._guests.get(uuid)
        if old is None:
            return {}
        return self._change([(old, None)])

    # -- outputs ----------------------------------------------------------------------------------

    def state(self) -> CompiledState:
        hosts = {
            name: HostPlan(
                host=name,
                uplinks=frozenset(hs.host.uplinks),
                vnics=dict(hs.vnics),
                dispatch=dict(hs.dispatch),
                chains=dict(hs.chains),
                sets={d: frozenset(m) for d, m in hs.sets.items()},
            )
            for name, hs in self._hosts.items()
        }
        conflicts = tuple(sorted(
            (Conflict(a, tuple(sorted(self._guests[u].name for u in uuids)), self._owner_name(a))
             for a, uuids in self._claims.items() if len(uuids) > 1),
            key=lambda c: (c.address.version, int(c.address), c.guests),  # IPv4 and IPv6 do not compare
        ))
        identities = {identity_id(g.labels): g.labels for g in self._guests.values()
                      if g.active and g.refusal is None}
        return CompiledState(hosts, conflicts, dict(sorted(identities.items())))

    @property
    def policies(self) -> list[Policy]:
        return list(self._policies)

    @property
    def guests(self) -> list[Guest]:
        return [self._guests[u] for u in sorted(self._guests)]

    # -- incremental machinery ---------------------------------------------------------------------

    def _change(self, changes: list[tuple[Guest | None, Guest | None]]) -> dict[str, HostDelta]:
        """Replace each (old, new) pair of one uuid (None: absent), re-deriving every guest that shares
        an address with one of them (ownership of a shared address changes with them)."""
        addrs: set[IPAddress] = set()
        ports: set[tuple[str, str]] = set()
        affected: set[str] = set()
        for old, new in changes:
            for g in (old, new):
                if g is not None:
                    affected.add(g.uuid)
                    addrs.update(_claiming(g))
                    if g.active:
                        ports.update(_ports(g))
        affected |= {u for a in addrs for u in self._claims.get(a, ())}
        affected |= {u for p in ports for u in self._port_claims.get(p, ())}
        self._begin()
        for uuid in sorted(affected):
            if uuid in self._guests:
                self._remove(self._guests[uuid])
        for old, new in changes:
            if new is None:
                assert old is not None
                self._guests.pop(old.uuid, None)
            else:
                self._guests[new.uuid] = new
        for uuid in sorted(affected):
            if uuid in self._guests:
                self._add(self._guests[uuid])
        return self._end()

    def _claim(self, g: Guest, sign: int) -> None:
        if g.refusal is None:
            _tally(self._claims, _claiming(g), g.uuid, sign)
        if g.active:
            _tally(self._port_claims, _ports(g), g.uuid, sign)

    def _owner(self, addr: IPAddress) -> str | None:
        """The uuid that holds `addr`: its only claimant, or the one that claimed it strictly first."""
        claimants = self._claims.get(addr)
        if not claimants:
            return None
        if len(claimants) == 1:
            return next(iter(claimants))
        times = [(self._guests[u].claimed_at(addr), u) for u in claimants]
        if any(t is None for t, _ in times):
            return None
        first, second = sorted(times)[:2]  # type: ignore[type-var]
        return first[1] if first[0] != second[0] else None

    def _owner_name(self, addr: IPAddress) -> str | None:
        owner = self._owner(addr)
        return self._guests[owner].name if owner is not None else None

    def _owned(self, g: Guest, addresses: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
        return tuple(a for a in addresses if self._owner(a) == g.uuid)

    def _add(self, g: Guest) -> None:
        self._claim(g, +1)
        if not g.active or g.refusal is not None:
            self._contrib[g.uuid] = _Contribution()
            return
        # Ownership of every address of this guest is final only once all affected guests have
        # claimed, so contributions are computed lazily in _end().
        self._pending.add(g.uuid)

    def _remove(self, g: Guest) -> None:
        c = self._contrib.pop(g.uuid, None)
        if c is not None:
            self._withdraw(g, c)
        self._pending.discard(g.uuid)
        self._claim(g, -1)

    def _contribute_members(self, g: Guest) -> _Contribution:
        """The guest's owned addresses join the sets of the selectors that select it (on every host)."""
        c = _Contribution()
        c.owned = self._owned(g, g.addresses)
        c.selectors = self._selector_cache.matching(g.labels)
        for d in c.selectors:
            for a in c.owned:
                self._member(d, a, +1)
        return c

    def _contribute_local(self, g: Guest, c: _Contribution) -> None:
        """The guest's vNICs, dispatch entries and identity chains on each host that holds it."""
        ident = identity_id(g.labels)
        for host in g.hosts:
            hs = self._hosts.get(host)
            if hs is None:
                continue
            bound = False
            nics = g.interfaces_on(host)
            named = Counter(nic.port for nic in nics)  # (a count per vNIC would be quadratic)
            for nic in nics:
                # A port that another guest, or another vNIC of this one, also names is bound to none.
                if nic.port is None or named[nic.port] > 1:
                    continue
                if self._port_claims.get((host, nic.port)) != {g.uuid}:
                    continue
                nic_owned = self._owned(g, nic.addresses)
                self._set_vnic(hs, nic.port, VnicBinding(nic.port, nic.mac, g.name, ident, nic_owned,
                                                         local_only=len(g.hosts) == 1))
                for a in nic_owned:
                    self._set_dispatch(hs, a, ident)
                c.ports.append((host, nic.port))
                bound = True
            if bound:
                c.ident = ident
                c.ident_hosts.append(host)
                self._ref_identity(hs, g.labels, ident, +1)
        self._contrib[g.uuid] = c

    def _withdraw(self, g: Guest, c: _Contribution) -> None:
        for d in c.selectors:
            for a in c.owned:
                self._member(d, a, -1)
        for host, port in c.ports:
            hs = self._hosts[host]
            binding = hs.vnics.get(port)
            if binding is not None and binding.guest == g.name:
                for a in binding.addresses:
                    if hs.dispatch.get(a) == binding.identity:
                        self._set_dispatch(hs, a, None)
                self._set_vnic(hs, port, None)
        if c.ident is not None:
            for host in c.ident_hosts:
                self._ref_identity(self._hosts[host], g.labels, c.ident, -1)

    # -- tracked primitives: every change goes through these, so deltas fall out -------------------

    def _begin(self) -> None:
        self._pending: set[str] = set()
        self._orig_vnics: dict[tuple[str, str], object] = {}
        self._orig_dispatch: dict[tuple[str, IPAddress], object] = {}
        self._orig_chains: dict[tuple[str, str], object] = {}
        self._orig_sets: dict[tuple[str, str], bool] = {}
        self._orig_elems: dict[tuple[str, str], dict[IPAddress, bool]] = {}

    def _end(self) -> dict[str, HostDelta]:
        # Every membership first: a set this change creates on a host is then copied once from its
        # final members, instead of growing one element at a time (a from-scratch compile).
        guests = [self._guests[uuid] for uuid in sorted(self._pending)]
        contributions = [(g, self._contribute_members(g)) for g in guests]
        for g, c in contributions:
            self._contribute_local(g, c)
        self._pending.clear()
        deltas: dict[str, HostDelta] = {}

        def delta(host: str) -> HostDelta:
            d = deltas.get(host)
            if d is None:  # not setdefault: that would build a HostDelta for every changed item
                d = deltas[host] = HostDelta()
            return d

        for (h, port), orig in self._orig_vnics.items():
            now = self._hosts[h].vnics.get(port)
            if now != (None if orig is _MISSING else orig):
                delta(h).vnics[port] = now
        for (h, addr), orig in self._orig_dispatch.items():
            now_i = self._hosts[h].dispatch.get(addr)
            if now_i != (None if orig is _MISSING else orig):
                delta(h).dispatch[addr] = now_i
        for (h, name), orig in self._orig_chains.items():
            now_c = self._hosts[h].chains.get(name)
            if now_c != (None if orig is _MISSING else orig):
                delta(h).chains[name] = now_c
        for (h, d), was in self._orig_sets.items():
            present = d in self._hosts[h].sets
            if present and not was:
                delta(h).sets_added[d] = frozenset(self._hosts[h].sets[d])
            elif was and not present:
                delta(h).sets_removed.add(d)
        for (h, d), elems in self._orig_elems.items():
            if self._orig_sets.get((h, d), True) is False or d not in self._hosts[h].sets:
                continue  # added or removed whole
            members = self._hosts[h].sets[d]
            for a, was_in in elems.items():
                if (a in members) != was_in:
                    bucket = delta(h).elements_added if a in members else delta(h).elements_removed
                    bucket.setdefault(d, set()).add(a)
        return {h: d for h, d in deltas.items() if d}

    def _set_vnic(self, hs: _HostState, port: str, binding: VnicBinding | None) -> None:
        self._orig_vnics.setdefault((hs.host.name, port), hs.vnics.get(port, _MISSING))
        _put(hs.vnics, port, binding)

    def _set_dispatch(self, hs: _HostState, addr: IPAddress, ident: str | None) -> None:
        self._orig_dispatch.setdefault((hs.host.name, addr), hs.dispatch.get(addr, _MISSING))
        _put(hs.dispatch, addr, ident)

    def _chains_for(self, labels: Labels, ident: str) -> dict[str, ChainPlan]:
        chains = self._chain_cache.get(labels)
        if chains is None:
            chains = identity_chains(self._policies, labels, ident, self._rule_index)
            self._chain_cache[labels] = chains
        return chains

    def _ref_identity(self, hs: _HostState, labels: Labels, ident: str, sign: int) -> None:
        before = hs.ident_refs[ident]
        hs.ident_refs[ident] += sign
        if hs.ident_refs[ident] <= 0:
            del hs.ident_refs[ident]
        after = before + sign
        if (before, after) in ((0, 1), (1, 0)):  # the first local guest of this identity, or the last
            for name, chain in self._chains_for(labels, ident).items():
                self._orig_chains.setdefault((hs.host.name, name), hs.chains.get(name, _MISSING))
                _put(hs.chains, name, chain if sign > 0 else None)
                for d in chain.referenced_sets:
                    self._ref_set(hs, d, sign)

    def _ref_set(self, hs: _HostState, digest: str, sign: int) -> None:
        key = (hs.host.name, digest)
        self._orig_sets.setdefault(key, digest in hs.sets)
        hs.set_refs[digest] += sign
        # A set dropped and re-created within one change must still report its element changes:
        # membership changes while it is absent are not seen by _member, so record every element it
        # leaves with (untouched so far, hence original) and every element it comes back with.
        if hs.set_refs[digest] <= 0:
            del hs.set_refs[digest]
            self._record_elements(key, hs.sets.pop(digest, ()), True)
        elif digest not in hs.sets:
            hs.sets[digest] = set(self._members.get(digest, ()))
            self._record_elements(key, hs.sets[digest], False)

    def _record_elements(self, key: tuple[str, str], addrs: Iterable[IPAddress], was_in: bool) -> None:
        # A set this change created is reported whole (sets_added), so its elements need no record:
        # that keeps a from-scratch compile from tracking every element of every set of every host.
        if self._orig_sets.get(key, True):
            elems = self._orig_elems.setdefault(key, {})
            for a in addrs:
                elems.setdefault(a, was_in)

    def _member(self, digest: str, addr: IPAddress, sign: int) -> None:
        members = self._members.setdefault(digest, set())
        if sign > 0:
            members.add(addr)
        else:
            members.discard(addr)
        for hs in self._hosts.values():
            s = hs.sets.get(digest)
            if s is None:
                continue
            key = (hs.host.name, digest)
            if self._orig_sets.get(key, True):  # see _record_elements
                self._orig_elems.setdefault(key, {}).setdefault(addr, addr in s)
            if sign > 0:
                s.add(addr)
            else:
                s.discard(addr)


def _claiming(g: Guest) -> set[IPAddress]:
    """The addresses `g` claims: all it declares while active; stopped, those it claimed while it ran
    (an owner's claim survives its stop: it keeps the address from a guest started after it)."""
    if g.active:
        return set(g.addresses)
    declared = set(g.addresses)
    return {a for a, _ in g.claimed if a in declared}


def _ports(g: Guest) -> set[tuple[str, str]]:
    return {(host, nic.port) for host in g.hosts for nic in g.interfaces_on(host) if nic.port is not None}


def _tally(claims: dict[K, set[str]], keys: Iterable[K], uuid: str, sign: int) -> None:
    for key in keys:
        claimants = claims.setdefault(key, set())
        if sign > 0:
            claimants.add(uuid)
        else:
            claimants.discard(uuid)
            if not claimants:
                del claims[key]


@dataclass
class _Contribution:
    owned: tuple[IPAddress, ...] = ()
    selectors: tuple[str, ...] = ()
    ports: list[tuple[str, str]] = field(default_factory=list)  # (host, port)
    ident: str | None = None
    ident_hosts: list[str] = field(default_factory=list)


def compile_state(inventory: Inventory, policies: Iterable[Policy]) -> CompiledState:
    """Compile from scratch."""
    compiler = Compiler(inventory.hosts, policies)
    compiler.upsert_guests(inventory.guests)
    return compiler.state()


def diff_plans(old: HostPlan, new: HostPlan) -> HostDelta:
    """The delta that turns `old` into `new` (full comparison)."""
    d = HostDelta()
    for port in old.vnics.keys() | new.vnics.keys():
        if old.vnics.get(port) != new.vnics.get(port):
            d.vnics[port] = new.vnics.get(port)
    for addr in old.dispatch.keys() | new.dispatch.keys():
        if old.dispatch.get(addr) != new.dispatch.get(addr):
            d.dispatch[addr] = new.dispatch.get(addr)
    for name in old.chains.keys() | new.chains.keys():
        if old.chains.get(name) != new.chains.get(name):
            d.chains[name] = new.chains.get(name)
    for s in old.sets.keys() - new.sets.keys():
        d.sets_removed.add(s)
    for s in new.sets.keys() - old.sets.keys():
        d.sets_added[s] = new.sets[s]
    for s in old.sets.keys() & new.sets.keys():
        if add := new.sets[s] - old.sets[s]:
            d.elements_added[s] = set(add)
        if rm := old.sets[s] - new.sets[s]:
            d.elements_removed[s] = set(rm)
    return d


def cidr_networks(policies: Iterable[Policy]) -> set[object]:
    """Every prefix named by a cidr peer (for reporting)."""
    return {n for p in policies for r in p.rules for peer in (r.source, r.destination)
            if isinstance(peer, CidrPeer) for n in peer.networks}
