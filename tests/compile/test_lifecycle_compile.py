"""The compiler's part of the lifecycle: a guest live on two hosts (migration), and the first-bound
claimant of an address keeping it (POLICY.md section 1)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from guestward.compile import Compiler, compile_state
from guestward.model import Host, Inventory
from tests.compile.builders import guest, policy, rule

HOSTS = (Host("h1", "test:///1"), Host("h2", "test:///2"), Host("h3", "test:///3"))
WEB_TO_DB = [policy("p", "application", rule("web-db", "allow", {"zone": "web"}, {"zone": "db"}, ("tcp/5432",)))]
A = IPv4Address("10.0.0.1")


def test_a_migrating_guest_is_bound_on_both_ends_and_its_address_claimed_once() -> None:
    web = replace(guest("web", "h1", {"zone": "web"}, "10.0.0.1"), also_on=("h2",))
    db = guest("db", "h3", {"zone": "db"}, "10.0.0.2")
    s = compile_state(Inventory(HOSTS, (web, db)), WEB_TO_DB)
    assert s.conflicts == ()
    for h in ("h1", "h2"):
        assert s.hosts[h].vnics["tap-web"].addresses == (A,)
        assert s.hosts[h].dispatch[A] == s.hosts[h].vnics["tap-web"].identity
        assert any(n.startswith("eg-") for n in s.hosts[h].chains)
    assert "tap-web" not in s.hosts["h3"].vnics
    # every host's sets hold the address once, wherever the guest is
    assert all(A in members for members in s.hosts["h3"].sets.values() if members)


def test_the_migration_source_lets_go_and_the_destination_holds_it_alone() -> None:
    web = replace(guest("web", "h1", {"zone": "web"}, "10.0.0.1"), also_on=("h2",))
    db = guest("db", "h3", {"zone": "db"}, "10.0.0.2")
    c = Compiler(HOSTS, WEB_TO_DB)
    c.upsert_guests([web, db])
    deltas = c.upsert_guest(replace(web, host="h2", also_on=()))  # switched over, the source is gone
    assert set(deltas) == {"h1", "h2"}, "the other hosts keep what they had"
    # the destination keeps its binding, only now the guest is its alone (its addresses are then
    # refused as sources on h2's uplinks)
    assert set(deltas["h2"].vnics) == {"tap-web"} and deltas["h2"].vnics["tap-web"].local_only
    assert not deltas["h2"].dispatch and not deltas["h2"].chains and not deltas["h2"].sets_added
    s = c.state()
    assert "tap-web" not in s.hosts["h1"].vnics and not s.hosts["h1"].chains
    assert s == compile_state(Inventory(HOSTS, (replace(web, host="h2", also_on=()), db)), WEB_TO_DB)


def test_the_first_bound_guest_keeps_a_contested_address() -> None:
    first = replace(guest("first", "h1", {"zone": "web"}, "10.0.0.1"), claimed=((A, 100.0),))
    second = replace(guest("second", "h2", {"zone": "web"}, "10.0.0.1"), claimed=((A, 200.0),))
    c = Compiler(HOSTS, WEB_TO_DB)
    c.upsert_guest(first)
    deltas = c.upsert_guest(second)
    s = c.state()
    assert "h1" not in deltas, "the owner is not disturbed"
    assert s.hosts["h1"].vnics["tap-first"].addresses == (A,)
    assert s.hosts["h2"].vnics["tap-second"].addresses == ()
    (conflict,) = s.conflicts
    assert conflict.owner == "first"
    assert str(conflict) == ("address 10.0.0.1 claimed by first, second: first keeps it (claimed first), "
                             "no traffic on it for second")
    assert s == compile_state(Inventory(HOSTS, (second, first)), WEB_TO_DB)  # order does not matter


def test_an_older_guest_that_adds_an_owned_address_later_does_not_take_it() -> None:
    owner = replace(guest("owner", "h1", {"zone": "web"}, "10.0.0.1"), claimed=((A, 200.0),))
    # "thief" has run since 100, but declared 10.0.0.1 only at 300
    thief = replace(guest("thief", "h2", {"zone": "web"}, "10.0.0.1"), claimed=((A, 300.0),))
    s = compile_state(Inventory(HOSTS, (owner, thief)), WEB_TO_DB)
    assert s.conflicts[0].owner == "owner" and s.hosts["h1"].vnics["tap-owner"].addresses == (A,)


def test_a_tie_or_an_unknown_binding_time_gives_the_address_to_nobody() -> None:
    for t1, t2 in ((100.0, 100.0), (None, 100.0)):
        a = replace(guest("a", "h1", {"zone": "web"}, "10.0.0.1"), claimed=((A, t1),) if t1 is not None else ())
        b = replace(guest("b", "h2", {"zone": "web"}, "10.0.0.1"), claimed=((A, t2),) if t2 is not None else ())
        s = compile_state(Inventory(HOSTS, (a, b)), WEB_TO_DB)
        assert s.hosts["h1"].vnics["tap-a"].addresses == () and s.hosts["h2"].vnics["tap-b"].addresses == ()
        assert s.conflicts[0].owner is None and "no traffic on it for any of them" in str(s.conflicts[0])


def test_each_end_of_a_migration_binds_the_tap_it_named_itself() -> None:
    web = guest("web", "h1", {"zone": "web"}, "10.0.0.1", port="vnet3")
    moving = replace(web, also_on=("h2",), ports_elsewhere=(("h2", web.interfaces[0].mac, "vnet0"),))
    s = compile_state(Inventory(HOSTS, (moving,)), WEB_TO_DB)
    assert set(s.hosts["h1"].vnics) == {"vnet3"} and set(s.hosts["h2"].vnics) == {"vnet0"}
    # the source stops: the destination's own name stays, now as the guest's primary port
    arrived = moving.gone_from("h1")
    assert (arrived.host, arrived.interfaces[0].port, arrived.also_on) == ("h2", "vnet0", ())
    assert set(compile_state(Inventory(HOSTS, (arrived,)), WEB_TO_DB).hosts["h2"].vnics) == {"vnet0"}
