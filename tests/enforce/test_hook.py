"""The libvirt hook, run for real against nftables in a private network namespace (no libvirtd
needed: the hook never calls it). Exit statuses per op, fail closed, and what it binds."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from guestward.enforce import Enforcer, NftRunner
from guestward.hypervisor.domain_xml import metadata_xml
from guestward.reconcile import hook
from guestward.store.config import Config, HostConfig
from guestward.store.lock import enforcement_lock
from guestward.store.sqlite import Store

pytestmark = pytest.mark.nft

XML = f"""<domain type='qemu'><name>web</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
<metadata>{metadata_xml({"zone": "web"}, [("52:54:00:00:00:01", "10.0.0.1")])}</metadata>
<devices><interface type='bridge'><mac address='52:54:00:00:00:01'/><target dev='tap-web'/></interface></devices>
</domain>"""


def config(tmp_path: Path) -> Config:
    return Config(state_dir=tmp_path, hosts=[HostConfig(name="h1", uri="test:///default")])


def bound(netns: str) -> set[str]:
    objects, missing = Enforcer(NftRunner(netns)).read()
    return set() if missing else objects.bound_ports()


def test_without_a_snapshot_the_hook_binds_nothing_and_aborts_a_start_it_cannot_protect(
        tmp_path: Path, netns: str) -> None:
    runner = NftRunner(netns)
    # no table, no snapshot: nothing would drop the guest's port, so prepare/migrate/restore fail
    assert hook.run(config(tmp_path), "h1", "prepare", "begin", XML, runner) == 1
    assert hook.run(config(tmp_path), "h1", "migrate", "begin", XML, runner) == 1
    assert hook.run(config(tmp_path), "h1", "started", "begin", XML, runner) == 0  # too late to abort
    assert bound(netns) == set()
    errors = Store(tmp_path / "guestward.db").events("hook-error")
    assert errors and "no inventory snapshot" in str(errors[0]["error"])


def test_with_a_snapshot_the_hook_binds_the_guest_and_release_unbinds_it(tmp_path: Path, netns: str) -> None:
    store = Store(tmp_path / "guestward.db")
    store.put_guests([], store.tick())  # what a first `guestward sync` leaves
    runner = NftRunner(netns)
    assert hook.run(config(tmp_path), "h1", "prepare", "begin", XML, runner) == 0
    assert bound(netns) == {"tap-web"}
    (g,) = store.guests()
    assert (g.name, g.host, g.active) == ("web", "h1", True)
    assert hook.run(config(tmp_path), "h1", "release", "end", XML, runner) == 0
    assert bound(netns) == set() and not store.guests()[0].active
    # a release of a guest this host never had changes nothing and succeeds
    other = XML.replace("11111111", "99999999").replace("<name>web", "<name>other")
    assert hook.run(config(tmp_path), "h1", "release", "end", other, runner) == 0


def test_a_busy_lock_makes_the_hook_fail_closed_in_bounded_time(tmp_path: Path, netns: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "guestward.db")
    store.put_guests([], store.tick())
    runner = NftRunner(netns)
    assert hook.run(config(tmp_path), "h1", "prepare", "begin", XML, runner) == 0  # tables in place
    assert hook.run(config(tmp_path), "h1", "release", "end", XML, runner) == 0
    monkeypatch.setattr(hook, "LOCK_TIMEOUT", 0.3)
    with enforcement_lock(tmp_path):  # someone holds it (a stopped `guestward apply`, say)
        # a start the hook could not enforce is aborted, though the tables would drop its port
        assert hook.run(config(tmp_path), "h1", "prepare", "begin", XML, runner) == 1
        assert bound(netns) == set()
    assert "lock busy" in str(store.events("hook-error")[0]["error"])


def _bindings(netns: str) -> dict[str, object]:
    objects, _ = Enforcer(NftRunner(netns)).read()
    return {"bind4": objects.elements[("bridge", "bind4")], "eg4": objects.elements[("inet", "eg4")]}


def test_the_hook_quarantines_from_the_store_and_refuses_hostile_addresses(tmp_path: Path, netns: str) -> None:
    """A guest started with its quarantine label removed from the XML, and claiming the gateway and a
    host's address besides its own: the hook binds its own address only, to the quarantine identity."""
    from guestward.compile.plan import identity_id
    from guestward.model import QUARANTINE_LABEL, Labels
    from guestward.store.config import NetworkConfig

    cfg = Config(state_dir=tmp_path, hosts=[HostConfig(name="h1", uri="test:///default", addresses=["10.0.0.254"])],
                 networks=[NetworkConfig(name="n", cidrs=["10.0.0.0/24"], gateways=["10.0.0.1"])])
    store = Store(tmp_path / "guestward.db")
    store.put_guests([], store.tick())
    store.quarantine("11111111-2222-3333-4444-555555555555", "web")
    hostile = XML.replace(
        metadata_xml({"zone": "web"}, [("52:54:00:00:00:01", "10.0.0.1")]),
        metadata_xml({"zone": "web"}, [("52:54:00:00:00:01", a) for a in ("10.0.0.7", "10.0.0.1", "10.0.0.254")]))
    runner = NftRunner(netns)
    assert hook.run(cfg, "h1", "prepare", "begin", hostile, runner) == 0
    quarantined = identity_id(Labels({"zone": "web"}).with_label(*QUARANTINE_LABEL))
    assert _bindings(netns) == {"bind4": {("tap-web", "52:54:00:00:00:01", "10.0.0.7")},
                                "eg4": {"10.0.0.7": f"goto:eg-{quarantined}"}}
    (g,) = store.guests()
    assert g.labels.quarantined
    assert g.interfaces[0].refused == ((ip_address("10.0.0.1"), "the gateway of network n"),
                                       (ip_address("10.0.0.254"), "an address of host h1"))
