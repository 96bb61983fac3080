"""An owner's claim survives its stop (Guest.claimed, compile/compiler.py): a guest started later with
the stopped owner's address gets no traffic on it, until the owner is undefined or drops the address
from its XML. Checked incrementally and from scratch, over IPv4 and IPv6 addresses and change orders."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st

from guestward.compile import Compiler, compile_state
from guestward.model import Host, Inventory
from tests.compile.builders import guest, policy, rule

HOSTS = (Host("h1", "x"), Host("h2", "y"))
POLICIES = [policy("p", "application", rule("web-to-db", "allow", {"zone": "web"}, {"zone": "db"}, ("tcp/5432",)))]
SHARED = st.sampled_from(["10.0.0.5", "10.0.0.200", "fd00::5", "2001:db8::77"])


@settings(max_examples=60, deadline=None)
@given(SHARED, st.sampled_from(["h1", "h2"]), st.booleans(), st.one_of(st.none(), st.floats(101.0, 1e9)))
def test_a_stopped_owner_keeps_its_address_from_a_guest_started_later(
        shared: str, thief_host: str, owner_first: bool, thief_since: float | None) -> None:
    a = ip_address(shared)
    owner = replace(guest("owner", "h1", {"zone": "db"}, shared, "10.0.0.1"), active=False, claimed=((a, 100.0),))
    thief = guest("thief", thief_host, {"zone": "db"}, shared, "10.0.0.2")
    if thief_since is not None:
        thief = replace(thief, claimed=((a, thief_since),))
    c = Compiler(HOSTS)
    c.set_policies(POLICIES)
    c.upsert_guests([owner, thief] if owner_first else [thief, owner])
    s = c.state()
    assert s == compile_state(Inventory(HOSTS, (owner, thief)), POLICIES)
    plan = s.hosts[thief_host]
    # the thief is bound, with its other address only; the shared one dispatches to nobody
    assert plan.vnics["tap-thief"].addresses == (ip_address("10.0.0.2"),)
    assert a not in plan.dispatch and all(a not in members for members in plan.sets.values())
    assert "tap-owner" not in s.hosts["h1"].vnics  # the owner is stopped: bound nowhere
    (conflict,) = s.conflicts
    # reported; named as the owner when the thief's claim time is known (unknown: nobody keeps it)
    expected_owner = "owner" if thief_since is not None else None
    assert (conflict.address, conflict.guests, conflict.owner) == (a, ("owner", "thief"), expected_owner)

    # the owner is undefined: the thief gets it (the delta equals the from-scratch result)
    c.remove_guest(owner.uuid)
    assert c.state() == compile_state(Inventory(HOSTS, (thief,)), POLICIES)
    assert set(c.state().hosts[thief_host].vnics["tap-thief"].addresses) == {a, ip_address("10.0.0.2")}


@settings(max_examples=30, deadline=None)
@given(SHARED)
def test_the_owner_dropping_the_address_from_its_xml_lets_it_go(shared: str) -> None:
    a = ip_address(shared)
    owner = replace(guest("owner", "h1", {"zone": "db"}, shared), active=False, claimed=((a, 100.0),))
    thief = guest("thief", "h2", {"zone": "db"}, shared)
    c = Compiler(HOSTS, POLICIES)
    c.upsert_guests([owner, thief])
    assert c.state().hosts["h2"].vnics["tap-thief"].addresses == ()
    # its XML no longer declares it (the claim time, read from an older snapshot, no longer counts)
    c.upsert_guest(replace(guest("owner", "h1", {"zone": "db"}), active=False, claimed=((a, 100.0),)))
    assert c.state().hosts["h2"].vnics["tap-thief"].addresses == (a,)
    assert c.state().conflicts == ()


@settings(max_examples=30, deadline=None)
@given(SHARED)
def test_a_defined_guest_that_never_ran_claims_nothing(shared: str) -> None:
    a = ip_address(shared)
    never_ran = guest("never", "h1", {"zone": "db"}, shared, active=False)
    thief = guest("thief", "h2", {"zone": "db"}, shared)
    s = compile_state(Inventory(HOSTS, (never_ran, thief)), POLICIES)
    assert s.hosts["h2"].vnics["tap-thief"].addresses == (a,) and s.conflicts == ()


def test_claiming_since_keeps_a_stopped_owners_time_and_makes_no_new_claim_while_stopped() -> None:
    a, b = ip_address("10.0.0.5"), ip_address("10.0.0.6")
    running = replace(guest("g", "h1", {}, "10.0.0.5"), claimed=((a, 100.0),))
    stopped = replace(running, active=False).claiming_since(running, 200.0)
    assert stopped.claimed == ((a, 100.0),)
    # an address added to the XML while it is stopped is not claimed until it runs with it
    readdressed = replace(guest("g", "h1", {}, "10.0.0.5", "10.0.0.6"), active=False).claiming_since(stopped, 300.0)
    assert readdressed.claimed == ((a, 100.0),)
    started = replace(readdressed, active=True).claiming_since(readdressed, 400.0)
    assert started.claimed == ((a, 100.0), (b, 400.0))
