"""The libvirt `qemu` hook: a guest's vNICs get their policy before its CPUs run.

libvirt runs `/etc/libvirt/hooks/qemu GUEST OP SUBOP EXTRA` synchronously, with the domain XML on
stdin, inside libvirtd's namespaces (so `nft` here reaches this host's bridges). guestward's hook
script execs `python -m guestward.reconcile.hook --config FILE --host NAME` with those arguments.

Contract:
- on `prepare`, `start`, `started`, `migrate`, `restore` and `reconnect` (all `begin`) the guest, as the
  XML describes it, joins this host in the stored inventory snapshot (the last one a full sync stored,
  with what hooks added since), and this host's tables are made to hold the plan compiled from that
  snapshot and the stored policies; on `stopped` and `release`
  (`end`) it leaves this host. No libvirt call is made (libvirtd is waiting for us), and nothing
  needs the agent: the store on disk is enough.
- `stopped`/`release` first unbind the guest's ports without the lock (`enforce/unbind.py`: the
  elements naming its taps and the ports carrying its MACs, and its addresses' identity dispatch),
  whatever fails afterwards (store, snapshot, lock, compile, the full diff), so no later guest on its
  tap, with its MAC or its address, can pass as it.
- a guest that guestward refuses (`Guest.refusal`: a hostile port name, malformed metadata) joins
  the snapshot bound nowhere, so it gets no traffic, and a `refused` event is recorded; a guest with
  a vNIC that bypasses the bridge (direct/macvtap, hostdev, vhostuser, ...: no traffic cannot be
  enforced there) and is not in the configuration's `bypass_allowed` is not let start: exit 1 on
  `prepare`, `migrate` and `restore`.
- it fails closed: a vNIC guestward has not bound gets no traffic (the bridge table drops unknown
  ports). If the hook cannot enforce (no snapshot yet, the store unreadable, the lock busy for 10 s,
  nft failing), it exits 1 on `prepare`, `start`, `migrate` and `restore`, so libvirt refuses the
  start, unless the kernel provably binds every vNIC of the guest as itself already (`bound_as`: its
  own tap, MAC, addresses and identity; nothing of it elsewhere); on `start` it also unbinds the
  guest's taps, on `started` and `reconnect` (too late to abort) a tap bound to anyone else.
- once libvirt has made the guest's taps (`start`, `started`, `reconnect`), any other guest the
  snapshot still has on one of them is stale and leaves this host in the snapshot.
- every run is recorded in the event log (`hook` events) with its duration.
- the guest is admitted as the controller admits it (reconcile/admission.py): an address the
  configuration refuses is not bound, and guestward's store decides quarantine, not the XML alone.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from guestward.compile import HostPlan, compile_state
from guestward.enforce import Enforcer, NftRunner
from guestward.enforce.unbind import Footprint, bound_as, foreign_on_own_ports, unbind, unbind_commands
from guestward.hypervisor.domain_xml import MAX_XML_BYTES, guest_from_xml, unallowed_bypass
from guestward.model import Guest, Inventory
from guestward.reconcile.admission import admitted
from guestward.store.config import Config, load_config
from guestward.store.lock import LockTimeout, enforcement_lock
from guestward.store.sqlite import Store

log = logging.getLogger("guestward.hook")

BIND_OPS = {"prepare", "start", "started", "migrate", "restore", "reconnect"}
UNBIND_OPS = {"stopped", "release"}
# Ops where a failing hook makes libvirt abort the start / incoming migration / restore.
ABORTING_OPS = {"prepare", "start", "migrate", "restore"}
# Ops at which libvirt has made the guest's taps (they exist, and are this guest's).
TAP_OWNING_OPS = {"start", "started", "reconnect"}
LOCK_TIMEOUT = 10.0  # libvirtd waits on us: never forever


def joined(snapshot: Guest | None, seen: Guest, host: str, now: float) -> Guest:
    """The guest after it became live on `host`: as its XML says now, also kept wherever else it is
    live (the other end of a migration), each address claimed since it was first declared running."""
    seen = seen.claiming_since(snapshot, now)
    if snapshot is None or not snapshot.active:
        return replace(seen, host=host, also_on=(), ports_elsewhere=())
    if host == snapshot.host:  # labels and ports as this host's XML says; the other ends kept
        return replace(seen, also_on=snapshot.also_on, ports_elsewhere=snapshot.ports_elsewhere)
    # Live elsewhere too: labels and addresses from this XML, port names per host.
    primary_ports = {nic.mac: nic.port for nic in snapshot.interfaces}
    here = replace(seen, host=snapshot.host, also_on=snapshot.also_on, ports_elsewhere=snapshot.ports_elsewhere,
                   interfaces=tuple(replace(nic, port=primary_ports.get(nic.mac, nic.port)) for nic in seen.interfaces),
                   refusal=seen.refusal or snapshot.refusal)  # refused at either end: refused on both
    return here.live_on(host, seen)


def left(snapshot: Guest, host: str) -> Guest:
    """The guest after it stopped being live on `host`."""
    if any(h != host for h in snapshot.hosts):
        return snapshot.gone_from(host)
    # Its claims stay: an owner keeps its addresses through a stop (Guest.claimed).
    return replace(snapshot, host=host, also_on=(), active=False, ports_elsewhere=())


def snapshot_plan(config: Config, store: Store, guests: list[Guest], host: str) -> HostPlan:
    """`host`'s plan for an inventory snapshot and the stored policies (no libvirt call)."""
    inventory = Inventory(tuple(h.host() for h in config.hosts), tuple(guests))
    return compile_state(inventory, store.load_policies()).hosts[host]


def run(config: Config, host: str, op: str, subop: str, xml: str, runner: NftRunner | None = None) -> int:
    """Handle one hook call. Returns the exit status for libvirt."""
    if op not in BIND_OPS | UNBIND_OPS:
        return 0
    start = time.monotonic()
    # libvirtd runs us inside this host's network namespace
    enforcer = Enforcer(runner or NftRunner(None), config.settings())
    name = "?"
    store: Store | None = None
    seen: Guest | None = None
    try:
        seen = guest_from_xml(xml, host, True, config.bypass_uuids())
        name = seen.name
        unbound, unbind_error = 0, None
        if op in UNBIND_OPS:
            # First, and whatever fails next (store, lock, compile): a stopped guest's ports never
            # stay bound, so no later guest on its tap, MAC or address can pass as it.
            try:
                unbound = _unbind_first(enforcer, seen, host, config.state_dir)
            except Exception as exc:
                unbind_error = exc
        store = Store(config.state_dir / "guestward.db")
        if seen.refusal is not None:
            store.record("refused", name, uuid=seen.uuid, host=host, op=f"{op}/{subop}", reason=seen.refusal)
            if op in ABORTING_OPS and (bypass := unallowed_bypass(xml, config.bypass_uuids())):
                print(f"guestward hook {host} {name} {op}/{subop}: refused to start: {'; '.join(bypass)} "
                      f"bypass(es) the bridge (not in bypass_allowed)", file=sys.stderr)
                return 1
        if not store.seeded:
            # No full sync ever stored the snapshot: compiling from it would unbind every other guest
            # of this host. This guest's vNICs stay unbound (dropped) until `guestward sync`.
            raise RuntimeError("no inventory snapshot yet (run `guestward sync` once): vNICs left unbound")
        with enforcement_lock(config.state_dir, timeout=LOCK_TIMEOUT):
            snapshot = {g.uuid: g for g in store.guests()}
            prev = snapshot.get(seen.uuid)
            if op in BIND_OPS:
                # As the controller would see it: addresses vetted, quarantine from the store.
                seen, _ = admitted(seen, prev, time.time(), config.address_trust(), store.quarantined())
                now_guest = joined(prev, seen, host, time.time())
                # libvirt gives a tap to one guest at a time: once it has made it for this guest,
                # whoever else the snapshot has on it is stale (an XML's name alone proves nothing)
                evicted = [left(g, host) for g in snapshot.values()
                           if op in TAP_OWNING_OPS and _shares_a_port(g, seen, host)]
            elif prev is not None and host in prev.hosts and prev.active:
                now_guest, evicted = left(prev, host), []
            else:
                now_guest, evicted = None, []
            if now_guest is not None:
                for g in (*evicted, now_guest):
                    snapshot[g.uuid] = g
                result = enforcer.sync(snapshot_plan(config, store, list(snapshot.values()), host))
                for g in (*evicted, now_guest):
                    store.put_guest(g)
        if unbind_error is not None and unbind_commands(enforcer.read()[0], Footprint.of(seen, host)):
            raise RuntimeError(f"could not unbind the stopped guest's ports: {unbind_error}")
        if op in BIND_OPS and (foreign := foreign_on_own_ports(enforcer.read()[0], seen, host)):
            raise RuntimeError(f"its tap is bound to another guest: {', '.join(foreign[:4])}")
        if now_guest is not None or unbound:
            store.record("hook", name, host=host, op=f"{op}/{subop}", unbound=unbound,
                         commands=result.commands if now_guest is not None else 0,
                         evicted=[g.name for g in evicted], ms=round((time.monotonic() - start) * 1000, 1))
        return 0
    except Exception as exc:
        print(f"guestward hook {host} {name} {op}/{subop}: {exc}", file=sys.stderr)
        if store is not None:
            with contextlib.suppress(Exception):  # the store itself may be what failed
                store.record("hook-error", name, host=host, op=f"{op}/{subop}", error=str(exc))
            if op in UNBIND_OPS and seen is not None and isinstance(exc, LockTimeout):
                with contextlib.suppress(Exception):
                    _record_left(store, seen, host)
        return _fail_closed(enforcer, seen, host, op)
    finally:
        if store is not None:
            store.close()


def _unbind_first(enforcer: Enforcer, seen: Guest, host: str, state_dir: Path) -> int:
    """Unbind a stopped guest's ports (`enforce/unbind.py`), under the enforcement lock when it is free
    at once, else without it. Held, the unbind is a legitimate hold like any other: the agent's drift
    guard (reconcile/drift.py) sees the generation move and never puts the binding back from its cached
    tables. Not held, whoever holds the lock keeps the guard from its fast path until it is released,
    and by then that hold has moved the generation too."""
    try:
        with enforcement_lock(state_dir, timeout=0):
            return unbind(enforcer, Footprint.of(seen, host))
    except LockTimeout:
        return unbind(enforcer, Footprint.of(seen, host))


def _record_left(store: Store, seen: Guest, host: str) -> None:
    """The stopped guest leaves `host` in the stored snapshot although the lock could not be had:
    otherwise the next full repair from the snapshot (the agent's, once the lock is free) would bind
    its ports again. The snapshot is SQLite, atomic without the lock, and full syncs merge what hooks
    wrote after their own read (`Controller._newer_from_hook`)."""
    prev = next((g for g in store.guests() if g.uuid == seen.uuid), None)
    if prev is not None and prev.active and host in prev.hosts:
        store.put_guest(left(prev, host))


def _shares_a_port(other: Guest, seen: Guest, host: str) -> bool:
    """`other` is another guest live on `host` on one of the tap names `seen` has there."""
    ours = {n.port for n in seen.interfaces_on(host) if n.port}
    return (other.uuid != seen.uuid and other.active and host in other.hosts
            and any(n.port in ours for n in other.interfaces_on(host)))


def _fail_closed(enforcer: Enforcer, seen: Guest | None, host: str, op: str) -> int:
    """After a failed run: leave nothing of the guest usable that the kernel cannot prove is its own,
    and say whether libvirt may go on.

    - `stopped`/`release`: the unbind is tried once more; libvirt cannot be stopped anyway (0).
    - a bind op: libvirt may go on only when the kernel already binds every vNIC of the guest as
      itself (`bound_as`: known taps, its MAC and addresses only, none of them bound elsewhere, and
      the bridge table drops unknown ports). Otherwise `prepare`, `start`, `migrate` and `restore`
      exit 1, so libvirt aborts the start: a start guestward could not enforce fails, even when its
      ports are unbound (it would run cut off, and unrecorded, until the next sync). Once libvirt
      has made the guest's taps (`start`, `started`, `reconnect`) they are unbound too: on `start`
      always, on `started`/`reconnect` (too late to abort) when anyone else's binding is on them,
      so the bridge table drops them."""
    if seen is None:  # the XML itself could not be read: nothing is known about its ports
        return 1 if op in ABORTING_OPS else 0
    try:
        if op in UNBIND_OPS:
            unbind(enforcer, Footprint.of(seen, host))
            return 0
        objects, missing = enforcer.read()
        if bound_as(objects, missing, seen, host, enforcer.settings):
            return 0
        own = frozenset(n.port for n in seen.interfaces_on(host) if n.port)
        # Only a tap libvirt has made for this guest is its own: before that (`prepare`, `migrate`,
        # `restore`) a name in the XML proves nothing, and unbinding it could cut another guest off.
        if own and op in TAP_OWNING_OPS and (op in ABORTING_OPS or foreign_on_own_ports(objects, seen, host)):
            unbind(enforcer, Footprint(own, frozenset(), frozenset()))
    except Exception as exc:
        print(f"guestward hook {host} {seen.name} {op}: cannot fail closed: {exc}", file=sys.stderr)
    return 1 if op in ABORTING_OPS else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="guestward-hook")
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("guest")
    parser.add_argument("op")
    parser.add_argument("subop")
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args(argv)
    xml = sys.stdin.read(MAX_XML_BYTES + 1)  # more is refused by the parser: never read it all
    try:
        config = load_config(args.config)
    except Exception as exc:
        print(f"guestward hook: {exc}", file=sys.stderr)
        sys.exit(1 if args.op in ABORTING_OPS else 0)
    sys.exit(run(config, args.host, args.op, args.subop, xml))


def script(python: str, config: Path, host: str) -> str:
    """The text of `/etc/libvirt/hooks/qemu` for one host."""
    return (f"#!/bin/sh\n# installed by guestward: policy for a guest's vNICs before its CPUs run\n"
            f"exec {python} -m guestward.reconcile.hook --config {config} --host {host} \"$@\"\n")


if __name__ == "__main__":
    main()
