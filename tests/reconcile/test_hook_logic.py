"""The hook's bookkeeping (where a guest is live after each hook call), the store's snapshot round
trip, and how copies of one guest found on several hosts become one guest."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from guestward.hypervisor.inventory import merge_copies
from guestward.reconcile.hook import joined, left
from guestward.store.sqlite import Store
from tests.compile.builders import guest

WEB = guest("web", "h1", {"zone": "web"}, "10.0.0.1")


def test_start_from_nothing_binds_here_since_now() -> None:
    g = joined(None, replace(WEB, host="h2"), "h2", 42.0)
    assert (g.host, g.also_on, g.active, g.bound_since) == ("h2", (), True, 42.0)
    stopped = replace(WEB, active=False)
    assert joined(stopped, WEB, "h1", 43.0).bound_since == 43.0


def test_incoming_migration_keeps_the_source_and_the_binding_time() -> None:
    running = replace(WEB, bound_since=10.0)
    g = joined(running, replace(WEB, host="h2", labels=WEB.labels.with_label("env", "prod")), "h2", 99.0)
    assert (g.host, g.also_on, g.bound_since) == ("h1", ("h2",), 10.0)
    assert g.labels["env"] == "prod"  # the XML the hook was given is the truth about labels
    # a second hook call on the destination (prepare after migrate) changes nothing
    assert joined(g, replace(WEB, host="h2", labels=g.labels), "h2", 100.0) == g


def test_release_on_the_source_leaves_the_destination_and_the_last_release_stops_it() -> None:
    both = replace(WEB, also_on=("h2",), bound_since=10.0)
    after = left(both, "h1")
    assert (after.host, after.also_on, after.active) == ("h2", (), True)
    gone = left(after, "h2")
    assert (gone.active, gone.also_on, gone.bound_since) == (False, (), None)


def test_snapshot_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    g = replace(guest("web", "h1", {"zone": "web", "env": "prod"}, "10.0.0.1", "fd00::1"),
                also_on=("h2",), bound_since=12.5)
    store.put_guests([g, guest("db", "h2", {"zone": "db"}, "10.0.0.2")])
    assert {x.uuid: x for x in store.guests()}[g.uuid] == g
    assert store.guests_changed_since(0.0).keys() == {g.uuid, "uuid-db"}
    assert store.guests_changed_since(time.time() + 1) == {}
    store.put_guest(replace(g, active=False))
    assert {x.uuid: x for x in store.guests()}[g.uuid].active is False


def test_copies_of_one_guest_merge_where_its_cpus_run() -> None:
    src, dst = replace(WEB, host="h1"), replace(WEB, host="h2")
    assert merge_copies([(src, True), (dst, False)]) == replace(src, also_on=("h2",))
    assert merge_copies([(src, False), (dst, True)]) == replace(dst, also_on=("h1",))
    # the source's inactive definition after a migration is dropped
    assert merge_copies([(replace(src, active=False), False), (dst, True)]) == dst
    assert merge_copies([(replace(src, active=False), False)]).active is False
