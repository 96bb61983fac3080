"""A small world for the hook's fail-closed tests: guests as domain XML, a seeded store, the kernel's
tables in a private network namespace brought to a plan, faults to inject, and what the bridge
table binds, read back from real nft."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from guestward.enforce import EnforceError, Enforcer, NftRunner
from guestward.hypervisor.domain_xml import guest_from_xml, metadata_xml
from guestward.model import Guest
from guestward.reconcile import hook
from guestward.store.config import Config, HostConfig
from guestward.store.sqlite import Store

HOST = "h1"


@dataclass(frozen=True)
class Nic:
    mac: str
    tap: str | None  # None: no <target dev> (libvirt names it later)
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Dom:
    name: str
    nics: tuple[Nic, ...]
    labels: tuple[tuple[str, str], ...] = (("zone", "web"),)

    @property
    def uuid(self) -> str:
        digest = hashlib.sha256(self.name.encode()).hexdigest()
        return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"

    def xml(self, *, with_taps: bool = True) -> str:
        pairs = [(n.mac, a) for n in self.nics for a in n.addresses]
        devices = "".join(f"<interface type='bridge'><mac address='{n.mac}'/>"
                          + (f"<target dev='{n.tap}'/>" if n.tap and with_taps else "") + "</interface>"
                          for n in self.nics)
        return (f"<domain type='qemu'><name>{self.name}</name><uuid>{self.uuid}</uuid>"
                f"<metadata>{metadata_xml(dict(self.labels), pairs)}</metadata><devices>{devices}</devices></domain>")

    def guest(self) -> Guest:
        return guest_from_xml(self.xml(), HOST, True)

    def with_nics(self, *nics: Nic) -> Dom:
        return Dom(self.name, nics, self.labels)


def config(state: Path) -> Config:
    return Config(state_dir=state, hosts=[HostConfig(name=HOST, uri="test:///default")])


class FlakyRunner(NftRunner):
    """Real nft, with transactions made to fail as nft would (EnforceError): from the `fail_from`-th
    one on (counting from 0), and/or every one that adds anything (`fail_adds`: a full diff that
    binds; an unbind only deletes)."""

    def __init__(self, netns: str, fail_from: int | None = None, fail_adds: bool = False) -> None:
        super().__init__(netns)
        object.__setattr__(self, "_state", {"n": 0, "fail_from": fail_from, "fail_adds": fail_adds})

    def run_payload(self, text: str) -> None:
        st_: dict[str, Any] = self._state  # type: ignore[attr-defined]
        n, st_["n"] = st_["n"], st_["n"] + 1
        if (st_["fail_from"] is not None and n >= st_["fail_from"]) or (st_["fail_adds"] and '"add"' in text):
            raise EnforceError("nft transaction failed: Error: Could not process rule: Cannot allocate memory")
        super().run_payload(text)


@dataclass
class World:
    netns: str
    state: Path
    runner: NftRunner = field(init=False)

    def __post_init__(self) -> None:
        self.runner = NftRunner(self.netns)

    @property
    def config(self) -> Config:
        return config(self.state)

    def store(self) -> Store:
        return Store(self.state / "guestward.db")

    def seed(self, doms: list[Dom], *, enforce: list[Dom] | None = None) -> None:
        """The snapshot holds `doms` (running here); the kernel holds the plan of `enforce` (default: the
        same guests), as if a sync had run."""
        store = self.store()
        store.put_guests([d.guest() for d in doms], store.tick())
        kernel = [d.guest() for d in (doms if enforce is None else enforce)]
        Enforcer(self.runner).sync(hook.snapshot_plan(self.config, store, kernel, HOST))
        store.close()

    def enforce_only(self, doms: list[Dom]) -> None:
        """The kernel binds `doms`, whatever the store says (a binding left behind)."""
        store = self.store()
        Enforcer(self.runner).sync(hook.snapshot_plan(self.config, store, [d.guest() for d in doms], HOST))
        store.close()

    def bridge(self) -> dict[str, Any]:
        objects, missing = Enforcer(self.runner).read()
        assert not missing
        return {name: objects.elements[("bridge", name)] for (fam, name) in objects.sets if fam == "bridge"
                and not objects.sets[(fam, name)].dynamic} | {
            name: objects.elements[("inet", name)] for name in ("eg4", "in4", "eg6", "in6")}

    def naming(self, tap: str | None = None, mac: str | None = None, address: str | None = None) -> list[str]:
        """Every element of our tables that names this tap, MAC or address."""
        found = []
        for name, items in self.bridge().items():
            for item in items:
                fields = item if isinstance(item, tuple) else (item,)
                if (tap and tap in fields) or (mac and mac in fields) or (address and address in fields):
                    found.append(f"{name} {item}")
        return found

    def footprint(self, dom: Dom) -> list[str]:
        out: list[str] = []
        for n in dom.nics:
            out += self.naming(n.tap, n.mac)
            for a in n.addresses:
                out += self.naming(address=a)
        return sorted(set(out))

    def binding(self, tap: str) -> set[Any]:
        """The elements on `tap` (its guards, MAC, addresses), as (set, element)."""
        return {(name, item) for name, items in self.bridge().items() for item in items
                if (item[0] if isinstance(item, tuple) else item) == tap and name not in ("eg4", "in4", "eg6", "in6")}

    def run(self, op: str, dom: Dom, runner: NftRunner | None = None, *, with_taps: bool = True) -> int:
        subop = "end" if op in hook.UNBIND_OPS else "begin"
        return hook.run(self.config, HOST, op, subop, dom.xml(with_taps=with_taps), runner or self.runner)

    def reset(self) -> None:
        Enforcer(self.runner).remove()


@contextmanager
def unreadable_store(state: Path) -> Iterator[None]:
    """The store's database replaced by garbage (a disk error, a half-written file)."""
    db = state / "guestward.db"
    saved = db.read_bytes() if db.exists() else None
    for suffix in ("-wal", "-shm"):
        (state / f"guestward.db{suffix}").unlink(missing_ok=True)
    db.write_bytes(os.urandom(4096))
    try:
        yield
    finally:
        if saved is not None:
            db.write_bytes(saved)
        else:
            db.unlink()


# -- strategies ------------------------------------------------------------------------------------

taps = st.from_regex(r"[a-z][a-z0-9_-]{0,9}", fullmatch=True).map(lambda s: "gt" + s)
macs = st.integers(1, 2**24 - 1).map(lambda i: "52:54:00:" + ":".join(f"{b:02x}" for b in i.to_bytes(3, "big")))
v4 = st.integers(1, 2**16 - 2).map(lambda i: f"10.{(i >> 8) & 255}.{i & 255}.1")
v6 = st.integers(1, 2**32 - 1).map(lambda i: str(ipaddress.IPv6Address(f"fd00::{i >> 16:x}:{i & 0xffff:x}")))
addresses = st.lists(st.one_of(v4, v6), min_size=1, max_size=3, unique=True).map(tuple)


@st.composite
def two_guests(draw: st.DrawFn) -> tuple[Dom, Dom]:
    """Two guests with distinct taps, MACs and addresses (one or two vNICs each)."""
    n_x, n_w = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    tap_list = draw(st.lists(taps, min_size=n_x + n_w, max_size=n_x + n_w, unique=True))
    mac_list = draw(st.lists(macs, min_size=n_x + n_w, max_size=n_x + n_w, unique=True))
    addr_list = draw(st.lists(st.one_of(v4, v6), min_size=n_x + n_w, max_size=n_x + n_w, unique=True))
    nics = [Nic(m, t, (a,)) for t, m, a in zip(tap_list, mac_list, addr_list, strict=True)]
    x = Dom("x", tuple(nics[:n_x]), (("zone", "web"), ("who", "x")))
    w = Dom("w", tuple(nics[n_x:]), (("zone", "db"), ("who", "w")))
    return x, w
