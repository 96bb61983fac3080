"""The hook's bookkeeping (where a guest is live after each hook call), the store's snapshot round
trip, and how copies of one guest found on several hosts become one guest."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

from guestward.hypervisor.inventory import merge_copies
from guestward.model import Interface
from guestward.reconcile.hook import joined, left
from guestward.store.sqlite import Store
from tests.compile.builders import guest

WEB = guest("web", "h1", {"zone": "web"}, "10.0.0.1")
A = ip_address("10.0.0.1")


def test_start_from_nothing_binds_here_since_now() -> None:
    g = joined(None, replace(WEB, host="h2"), "h2", 42.0)
    assert (g.host, g.also_on, g.active, g.claimed_at(A)) == ("h2", (), True, 42.0)
    # A stopped owner kept its claim (docs/SECURITY.md): starting again, it still holds it from then.
    stopped = replace(WEB, active=False, claimed=((A, 1.0),))
    assert joined(stopped, WEB, "h1", 43.0).claimed_at(A) == 1.0
    never_ran = replace(WEB, active=False)
    assert joined(never_ran, WEB, "h1", 43.0).claimed_at(A) == 43.0


def test_incoming_migration_keeps_the_source_and_the_binding_time() -> None:
    running = replace(WEB, claimed=((A, 10.0),))
    g = joined(running, replace(WEB, host="h2", labels=WEB.labels.with_label("env", "prod")), "h2", 99.0)
    assert (g.host, g.also_on, g.claimed_at(A)) == ("h1", ("h2",), 10.0)
    assert g.labels["env"] == "prod"  # the XML the hook was given is the truth about labels
    # a second hook call on the destination (prepare after migrate) changes nothing
    assert joined(g, replace(WEB, host="h2", labels=g.labels), "h2", 100.0) == g


def test_release_on_the_source_leaves_the_destination_and_the_last_release_stops_it() -> None:
    both = replace(WEB, also_on=("h2",), claimed=((A, 10.0),))
    after = left(both, "h1")
    assert (after.host, after.also_on, after.active) == ("h2", (), True)
    gone = left(after, "h2")
    assert (gone.active, gone.also_on, gone.claimed) == (False, (), ((A, 10.0),))  # the claim survives the stop


def test_an_address_added_later_is_claimed_from_then_on() -> None:
    running = replace(WEB, claimed=((A, 10.0),))
    more = replace(WEB, interfaces=(Interface.of(WEB.interfaces[0].mac, "tap-web", ["10.0.0.1", "10.0.0.9"]),))
    g = more.claiming_since(running, 50.0)
    assert (g.claimed_at(A), g.claimed_at(ip_address("10.0.0.9"))) == (10.0, 50.0)


def test_snapshot_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    g = replace(guest("web", "h1", {"zone": "web", "env": "prod"}, "10.0.0.1", "fd00::1"),
                also_on=("h2",), claimed=((A, 12.5),))
    assert not store.seeded
    read_at = store.tick()
    store.put_guests([g, guest("db", "h2", {"zone": "db"}, "10.0.0.2")], read_at)
    assert store.seeded
    assert {x.uuid: x for x in store.guests()}[g.uuid] == g
    # a full sync's rows carry the stamp of when its read began: not newer than a read begun later
    later_read = store.tick()
    assert store.guests_changed_since(read_at - 1).keys() == {g.uuid, "uuid-db"}
    assert store.guests_changed_since(later_read) == {}
    store.put_guest(replace(g, labels=g.labels.with_label("x", "y")))  # a hook, after that read began
    assert store.guests_changed_since(later_read).keys() == {g.uuid}
    store.put_guest(replace(g, active=False))
    assert {x.uuid: x for x in store.guests()}[g.uuid].active is False


def test_copies_of_one_guest_merge_where_its_cpus_run() -> None:
    src, dst = replace(WEB, host="h1"), replace(WEB, host="h2")
    assert merge_copies([(src, True), (dst, False)]).hosts == ("h1", "h2")
    assert merge_copies([(src, False), (dst, True)]).hosts == ("h2", "h1")
    # the source's inactive definition after a migration is dropped
    assert merge_copies([(replace(src, active=False), False), (dst, True)]) == dst
    assert merge_copies([(replace(src, active=False), False)]).active is False


def test_an_incoming_migration_with_its_own_tap_name_binds_each_end_by_its_name() -> None:
    mac = WEB.interfaces[0].mac
    running = replace(WEB, interfaces=(Interface.of(mac, "vnet3", ["10.0.0.1"]),), claimed=((A, 1.0),))
    arriving = replace(WEB, host="h2", interfaces=(Interface.of(mac, "vnet0", ["10.0.0.1"]),))
    both = joined(running, arriving, "h2", 5.0)
    assert both.interfaces_on("h1")[0].port == "vnet3" and both.interfaces_on("h2")[0].port == "vnet0"
    after = left(both, "h1")
    assert (after.host, after.interfaces[0].port, after.ports_elsewhere) == ("h2", "vnet0", ())


def test_copies_with_their_own_tap_names_merge_with_both_names() -> None:
    mac = WEB.interfaces[0].mac
    src = replace(WEB, host="h1", interfaces=(Interface.of(mac, "vnet3", ["10.0.0.1"]),))
    dst = replace(WEB, host="h2", interfaces=(Interface.of(mac, "vnet0", ["10.0.0.1"]),))
    g = merge_copies([(src, True), (dst, False)])
    assert (g.host, g.also_on) == ("h1", ("h2",))
    assert g.interfaces_on("h1")[0].port == "vnet3" and g.interfaces_on("h2")[0].port == "vnet0"


def test_a_guest_running_on_two_hosts_at_once_is_bound_once_and_reported() -> None:
    from guestward.hypervisor.inventory import running_twice

    src, dst = replace(WEB, host="h1"), replace(WEB, host="h2")
    copies = [(src, True), (dst, True)]
    assert merge_copies(copies).hosts == ("h1",)  # the second running copy stays unbound
    assert running_twice(copies) == ["h1", "h2"]
    assert running_twice([(src, True), (dst, False)]) == []


def test_pending_cuts_stay_until_done(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.add_pending_cuts(["a", "b", "a"])
    assert store.pending_cuts() == ["a", "b"]
    store.done_cut("a")
    assert store.pending_cuts() == ["b"]
