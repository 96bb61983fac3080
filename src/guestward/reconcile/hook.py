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
- it fails closed: a vNIC guestward has not bound gets no traffic (the bridge table drops unknown
  ports). If the hook cannot enforce (no snapshot yet, the lock busy for 10 s, nft failing) and it
  cannot see both tables in place with none of the guest's ports bound, it exits 1 on `prepare`,
  `migrate` and `restore`, and libvirt refuses to start the guest rather than run it unprotected.
- every run is recorded in the event log (`hook` events) with its duration.
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
from guestward.hypervisor.domain_xml import guest_from_xml
from guestward.model import Guest, Inventory
from guestward.store.config import Config, load_config
from guestward.store.lock import enforcement_lock
from guestward.store.sqlite import Store

log = logging.getLogger("guestward.hook")

BIND_OPS = {"prepare", "start", "started", "migrate", "restore", "reconnect"}
UNBIND_OPS = {"stopped", "release"}
# Ops where a failing hook makes libvirt abort the start / incoming migration / restore.
ABORTING_OPS = {"prepare", "migrate", "restore"}
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
                   interfaces=tuple(replace(nic, port=primary_ports.get(nic.mac, nic.port)) for nic in seen.interfaces))
    return here.live_on(host, seen)


def left(snapshot: Guest, host: str) -> Guest:
    """The guest after it stopped being live on `host`."""
    if any(h != host for h in snapshot.hosts):
        return snapshot.gone_from(host)
    return replace(snapshot, host=host, also_on=(), active=False, claimed=(), ports_elsewhere=())


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
    try:
        store = Store(config.state_dir / "guestward.db")
        seen = guest_from_xml(xml, host, True)
        name = seen.name
        if not store.seeded:
            # No full sync ever stored the snapshot: compiling from it would unbind every other guest
            # of this host. This guest's vNICs stay unbound (dropped) until `guestward sync`.
            raise RuntimeError("no inventory snapshot yet (run `guestward sync` once): vNICs left unbound")
        with enforcement_lock(config.state_dir, timeout=LOCK_TIMEOUT):
            snapshot = {g.uuid: g for g in store.guests()}
            prev = snapshot.get(seen.uuid)
            if op in BIND_OPS:
                now_guest = joined(prev, seen, host, time.time())
            elif prev is not None and host in prev.hosts and prev.active:
                now_guest = left(prev, host)
            else:
                return 0
            snapshot[seen.uuid] = now_guest
            result = enforcer.sync(snapshot_plan(config, store, list(snapshot.values()), host))
            store.put_guest(now_guest)
        store.record("hook", name, host=host, op=f"{op}/{subop}", commands=result.commands,
                     ms=round((time.monotonic() - start) * 1000, 1))
        return 0
    except Exception as exc:
        print(f"guestward hook {host} {name} {op}/{subop}: {exc}", file=sys.stderr)
        if store is not None:
            with contextlib.suppress(Exception):  # the store itself may be what failed
                store.record("hook-error", name, host=host, op=f"{op}/{subop}", error=str(exc))
        if op in ABORTING_OPS and not _fails_closed(enforcer, xml, host):
            return 1
        return 0
    finally:
        if store is not None:
            store.close()


def _fails_closed(enforcer: Enforcer, xml: str, host: str) -> bool:
    """Both our tables are in place and none of the guest's ports is bound (to a stale owner, say),
    so the guest gets no traffic as things stand."""
    try:
        objects, missing = enforcer.read()
        ports = {nic.port for nic in guest_from_xml(xml, host, True).interfaces}
    except Exception:
        return False
    return not missing and not any(p in ports for p in objects.bound_ports())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="guestward-hook")
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("guest")
    parser.add_argument("op")
    parser.add_argument("subop")
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args(argv)
    xml = sys.stdin.read()
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
