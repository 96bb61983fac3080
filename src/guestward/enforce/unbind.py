"""Unbinding a guest's vNICs without the lock, and proving what the kernel binds for a guest.

A port is bound by its elements in the bridge table's sets and maps (`dataplane/render.py`:
`ports-in`/`ports-out` send it to the guards, `macs`, `bind4/6` and `dst4/6` say what it may send
and receive); a port with no element there is dropped by the base chains (`unknown port: fail
closed`). So taking a guest off a host needs no snapshot and no compile: delete the elements naming
its ports, and those of the ports that carry its MACs (the tap may have been renamed since it was
bound), then the identity dispatch (`eg4/in4/eg6/in6`) of its addresses once no remaining port binds
them, and the uplink guard's `own4/own6` elements (its addresses, its MACs' link-local ones) once
no remaining port contributes them. Uplinks (`ports-in` verdict `goto:uplink-guard`) are never
touched, whatever a domain XML names.

Interleaving with a full diff (`Enforcer.sync`, which holds the enforcement lock): the unbind reads
our tables and deletes what it found in one transaction; it takes no lock, so it can run while a
full diff is between its read-back and its commit. nft applies each transaction whole, so the two
commit in some order:
- the diff commits first: the unbind's read may be stale; its transaction then either still
  deletes exactly the elements present, or fails whole (a `delete` of a missing element is ENOENT)
  and is recomputed from a fresh read (`unbind`, bounded attempts);
- the unbind commits first: the diff's own transaction may fail the same way (it deletes an element
  the unbind already deleted); `Enforcer.sync` recomputes from a fresh read-back. If the diff's plan
  still binds the port (its snapshot was read before the guest stopped), it binds it again: a
  stale binding of a tap that libvirt has destroyed, which no packet can use until a tap of that
  name exists again. The next guest on that tap is checked at its `start` hook on the real tap
  (`own_ports_clean`), which unbinds it and aborts the start if it is bound to anyone else, and the
  hook's next successful sync takes the stale owner out of the snapshot (`hook.run`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from guestward.compile.plan import identity_id
from guestward.dataplane import NftObjects, diff_objects
from guestward.dataplane.objects import NftSet
from guestward.dataplane.render import Settings, link_local, nd_chain_name, skeleton
from guestward.enforce.enforcer import EnforceError, Enforcer
from guestward.model import Guest

BR, INET = "bridge", "inet"
PORT_SETS = ("ports-in", "ports-out", "macs", "bind4", "bind6", "dst4", "dst6", "nd-ports")  # first field: the port
OWN_SETS = ("own4", "own6")  # the addresses of local-only guests (and their link-local ones) uplinks may not bring
BIND_SETS = ("bind4", "bind6")  # (port, mac, address)
DST_SETS = ("dst4", "dst6")  # (port, address)
DISPATCH = ("eg4", "in4", "eg6", "in6")  # address -> the identity's chain
ATTEMPTS = 5


@dataclass(frozen=True)
class Footprint:
    """What names a guest in our tables on one host: its tap names (those known), MACs, addresses."""

    ports: frozenset[str]
    macs: frozenset[str]
    addresses: frozenset[str]

    @staticmethod
    def of(guest: Guest, host: str | None = None) -> Footprint:
        nics = guest.interfaces_on(host) if host is not None else guest.interfaces
        return Footprint(frozenset(n.port for n in nics if n.port), frozenset(n.mac.lower() for n in nics),
                         frozenset(str(a) for n in nics for a in n.addresses))


def _items(objects: NftObjects, name: str) -> Iterable[Any]:
    return objects.elements.get((BR, name), set())


def _port(item: Any) -> str:
    return str(item[0] if isinstance(item, tuple) else item)


def ports_to_clear(objects: NftObjects, fp: Footprint) -> set[str]:
    """The guest's ports, and every port bound with one of its MACs; never an uplink."""
    ports = set(fp.ports)
    for name in ("macs", *BIND_SETS):
        ports |= {_port(i) for i in _items(objects, name) if isinstance(i, tuple) and i[1].lower() in fp.macs}
    return ports - objects.uplinks()


def stale(objects: NftObjects, fp: Footprint) -> NftObjects:
    """The elements an unbind of `fp` deletes, in their sets (read from `objects`)."""
    ports = ports_to_clear(objects, fp)
    out = NftObjects(table=objects.table)
    for (family, name), s in objects.sets.items():
        if family == BR and name in PORT_SETS:
            items = objects.elements[(family, name)]
            _copy(out, s, items, lambda i: _port(i) in ports)
    still_bound = {i[2] for n in BIND_SETS for i in _items(objects, n) if isinstance(i, tuple) and i[0] not in ports}
    # own4/own6 are keyed by address alone: an element stays while a port that is not cleared binds it
    macs_of = {(_port(i), str(i[1]).lower()) for i in _items(objects, "macs") if isinstance(i, tuple)}
    on_cleared = {_addr(i[2]) for n in BIND_SETS for i in _items(objects, n) if isinstance(i, tuple) and i[0] in ports}
    cleared_own = set(fp.addresses) | on_cleared | {str(link_local(m)) for p, m in macs_of if p in ports}
    kept_own = {_addr(a) for a in still_bound} | {str(link_local(m)) for p, m in macs_of if p not in ports}
    for (family, name), s in objects.sets.items():
        if family == BR and name in OWN_SETS:
            _copy(out, s, objects.elements[(family, name)],
                  lambda i: _addr(i) in cleared_own and _addr(i) not in kept_own)
    # a cleared port's ND chain (named by a hash of the port) goes with its `nd-ports` element
    for port in ports:
        if (chain := objects.chains.get((BR, nd_chain_name(port)))) is not None:
            out.add_chain(chain)
    for (family, name), s in objects.sets.items():
        if family == INET and name in DISPATCH:
            _copy(out, s, objects.elements[(family, name)],
                  lambda i: str(i) in fp.addresses and str(i) not in still_bound)
    return out


def _addr(item: Any) -> str:
    """An address element in the canonical text `str(ip_address)` gives (a read-back may not be)."""
    try:
        return str(ip_address(str(item)))
    except ValueError:
        return str(item)


def _copy(out: NftObjects, s: NftSet, items: Any, keep: Any) -> None:
    out.add_set(s)
    target = out.elements[(s.family, s.name)]
    if isinstance(items, dict):
        assert isinstance(target, dict)
        target.update({k: v for k, v in items.items() if keep(k)})
    else:
        assert isinstance(target, set)
        target.update(i for i in items if keep(i))


def unbind_commands(objects: NftObjects, fp: Footprint) -> list[dict[str, Any]]:
    """`delete element` commands for exactly the elements `stale` found, and `delete chain` for the
    cleared ports' ND chains (none: an empty list)."""
    before = stale(objects, fp)
    after = NftObjects(table=objects.table)
    for s in before.sets.values():
        after.add_set(s)
    return diff_objects(before, after)


def unbind(enforcer: Enforcer, fp: Footprint, attempts: int = ATTEMPTS) -> int:
    """Delete the elements binding `fp` from our tables, without the lock (see the module docstring
    for how this interleaves with a full diff). Returns how many commands the deleting transaction
    had (0: nothing was bound). Raises EnforceError when nft keeps failing."""
    error: Exception | None = None
    for _ in range(attempts):
        objects, _missing = enforcer.read()
        commands = unbind_commands(objects, fp)
        if not commands:
            return 0
        try:
            enforcer.runner.run_json(commands)
            return len(commands)
        except EnforceError as exc:  # an element went under us: read again
            error = exc
    raise EnforceError(f"unbind failed {attempts} times: {error}")


# -- proofs -------------------------------------------------------------------------------------

def drops_unknown_ports(objects: NftObjects, missing: list[str], settings: Settings) -> bool:
    """Both tables exist and the bridge base chains are ours, hooked, with policy drop and nothing but
    our rules: a port with no element gets no traffic."""
    if missing:
        return False
    want = skeleton(settings)
    for name in ("prerouting", "forward"):
        have, ours = objects.chains.get((BR, name)), want.chains[(BR, name)]
        if have is None or have.hook != ours.hook or have.policy != "drop" or not set(have.rules) <= set(ours.rules):
            return False
    return True


def bound_elsewhere(objects: NftObjects, fp: Footprint) -> list[str]:
    """Bindings of the guest's MACs or addresses on ports that are not the guest's (stale owners)."""
    found = []
    for name in ("macs", *BIND_SETS):
        for i in _items(objects, name):
            if isinstance(i, tuple) and i[0] not in fp.ports and i[1].lower() in fp.macs:
                found.append(f"{name} {i}")
    for name in (*BIND_SETS, *DST_SETS):
        for i in _items(objects, name):
            if isinstance(i, tuple) and i[0] not in fp.ports and i[-1] in fp.addresses:
                found.append(f"{name} {i}")
    return sorted(set(found))


def _identity(objects: NftObjects, address: str) -> tuple[str | None, str | None]:
    """The identity chains the inet table dispatches `address` to (egress, ingress)."""
    v = 6 if ":" in address else 4
    eg, ing = objects.elements.get((INET, f"eg{v}"), {}), objects.elements.get((INET, f"in{v}"), {})
    assert isinstance(eg, dict) and isinstance(ing, dict)
    return eg.get(address), ing.get(address)


def by_port(objects: NftObjects) -> dict[str, list[tuple[str, Any]]]:
    """The bridge elements of each port, as (set, element): one pass, so that checking a guest with
    many vNICs stays linear in the size of the tables."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for name in ("macs", *BIND_SETS, *DST_SETS):
        for i in _items(objects, name):
            if isinstance(i, tuple):
                out.setdefault(str(i[0]), []).append((name, i))
    return out


def foreign_on_own_ports(objects: NftObjects, guest: Guest, host: str,
                         index: dict[str, list[tuple[str, Any]]] | None = None) -> list[str]:
    """Elements on the guest's known ports that bind something else than this guest's own MAC and
    addresses for that vNIC, or an address of it that the inet table judges as another identity
    (a stale owner of the tap, even one with the same MAC and address: its labels differ)."""
    index = by_port(objects) if index is None else index
    found = []
    own = (f"goto:eg-{identity_id(guest.labels)}", f"goto:in-{identity_id(guest.labels)}")
    for nic in guest.interfaces_on(host):
        if not nic.port:
            continue
        addresses = {str(a) for a in nic.addresses}
        for name, i in index.get(nic.port, ()):
            if name == "macs" and i[1].lower() != nic.mac.lower():
                found.append(f"{name} {i}")
            elif name in BIND_SETS:
                if i[1].lower() != nic.mac.lower() or i[2] not in addresses:
                    found.append(f"{name} {i}")
                judged = _identity(objects, i[2])
                found += [f"{i[2]} judged as {j}" for j, o in zip(judged, own, strict=True) if j not in (None, o)]
            elif name in DST_SETS and i[1] not in addresses:
                found.append(f"{name} {i}")
    return sorted(found)


def bound_as(objects: NftObjects, missing: list[str], guest: Guest, host: str, settings: Settings) -> bool:
    """Every vNIC of the guest has a known tap that is bound to its guards with the guest's own MAC
    (and at most its own addresses, each judged by the identity chains of the guest's own labels),
    and no other port carries its MACs or addresses: the kernel already enforces this guest as
    itself."""
    nics = guest.interfaces_on(host)
    if not nics or any(not n.port for n in nics) or not drops_unknown_ports(objects, missing, settings):
        return False
    fp = Footprint.of(guest, host)
    ports_in = objects.elements.get((BR, "ports-in"), {})
    ports_out = objects.elements.get((BR, "ports-out"), {})
    assert isinstance(ports_in, dict) and isinstance(ports_out, dict)
    own = (f"goto:eg-{identity_id(guest.labels)}", f"goto:in-{identity_id(guest.labels)}")
    index = by_port(objects)
    for n in nics:
        if ports_in.get(n.port) != "goto:src-guard" or ports_out.get(n.port) != "goto:dst-guard":
            return False
        if (n.port, n.mac.lower()) not in _items(objects, "macs"):
            return False
        bound = {i[2] for name, i in index.get(str(n.port), ()) if name in BIND_SETS}
        if any(_identity(objects, a) != own for a in bound):  # judged as this guest's labels, none else
            return False
    return not foreign_on_own_ports(objects, guest, host, index) and not bound_elsewhere(objects, fp)
