"""The compiler on hand-made worlds: what lands on which host, identities shared, migration, the lab example."""

from __future__ import annotations

from ipaddress import ip_address

from guestward.compile import Compiler, Endpoint, compile_state, decide
from guestward.compile.chains import identity_chains
from guestward.compile.plan import QUARANTINE_SET, identity_id
from guestward.model import QUARANTINE_LABEL, Guest, Host, Interface, Inventory, Labels
from guestward.policy import parse_port
from tests.compile import plan_interpreter
from tests.compile.builders import guest, lab_example, policy, rule

HOSTS = (Host("h1", "test:///1", ("up1",)), Host("h2", "test:///2"))
WEB_TO_DB = [policy("p", "application", rule("web-db", "allow", {"zone": "web"}, {"zone": "db"}, ("tcp/5432",)))]


def test_plans_hold_local_vnics_and_identities_and_the_sets_their_chains_use() -> None:
    web = guest("web", "h1", {"zone": "web"}, "10.0.0.1", "fd00::1")
    db = guest("db", "h2", {"zone": "db"}, "10.0.0.2")
    s = compile_state(Inventory(HOSTS, (web, db)), WEB_TO_DB)
    h1, h2 = s.hosts["h1"], s.hosts["h2"]
    assert h1.uplinks == frozenset({"up1"}) and h2.uplinks == frozenset()
    assert set(h1.vnics) == {"tap-web"} and set(h2.vnics) == {"tap-db"}
    web_id, db_id = identity_id(web.labels), identity_id(db.labels)
    assert h1.vnics["tap-web"].identity == web_id and h1.vnics["tap-web"].mac == web.interfaces[0].mac
    assert h1.dispatch == {ip_address("10.0.0.1"): web_id, ip_address("fd00::1"): web_id}
    assert h2.dispatch == {ip_address("10.0.0.2"): db_id}
    assert {n for n in h1.chains} == {f"eg-{web_id}", f"eg-{web_id}-q", f"in-{web_id}", f"in-{web_id}-q"}
    assert all(web_id not in n for n in h2.chains)
    db_sel = WEB_TO_DB[0].rules[0].destination.selector.digest  # type: ignore[union-attr]
    web_sel = WEB_TO_DB[0].rules[0].source.selector.digest  # type: ignore[union-attr]
    # web's egress matches on the db set; db's ingress on the web set; both detour on quarantine
    assert set(h1.sets) == {db_sel, QUARANTINE_SET} and h1.sets[db_sel] == frozenset({ip_address("10.0.0.2")})
    assert set(h2.sets) == {web_sel, QUARANTINE_SET}
    assert h2.sets[web_sel] == frozenset({ip_address("10.0.0.1"), ip_address("fd00::1")})
    assert s.identities == {web_id: web.labels, db_id: db.labels}


def test_guests_with_the_same_labels_share_one_identity_until_the_last_goes() -> None:
    a = guest("a", "h1", {"zone": "web"}, "10.0.0.1")
    b = guest("b", "h1", {"zone": "web"}, "10.0.0.2")
    c = Compiler(HOSTS, WEB_TO_DB)
    c.upsert_guest(a)
    chains = dict(c.state().hosts["h1"].chains)
    deltas = c.upsert_guest(b)
    assert "h1" in deltas and deltas["h1"].chains == {}  # the identity's chains exist already
    assert c.state().hosts["h1"].chains == chains
    deltas = c.remove_guest(a.uuid)
    assert deltas["h1"].chains == {} and c.state().hosts["h1"].chains == chains
    assert c.state().hosts["h1"].dispatch == {ip_address("10.0.0.2"): identity_id(b.labels)}
    deltas = c.remove_guest(b.uuid)
    assert set(deltas["h1"].chains) == set(chains) and all(v is None for v in deltas["h1"].chains.values())
    assert c.state().hosts["h1"].chains == {} and c.state().hosts["h1"].sets == {}
    assert c.remove_guest(b.uuid) == {}


def test_migration_moves_binding_dispatch_and_chains() -> None:
    web = guest("web", "h1", {"zone": "web"}, "10.0.0.1")
    c = Compiler(HOSTS, WEB_TO_DB)
    c.upsert_guest(web)
    c.upsert_guest(guest("db", "h2", {"zone": "db"}, "10.0.0.2"))
    moved = Guest(web.name, web.uuid, "h2", web.labels, (Interface.of(web.interfaces[0].mac, "vnet7", ["10.0.0.1"]),))
    deltas = c.upsert_guest(moved)
    s = c.state()
    assert set(deltas) == {"h1", "h2"}
    assert deltas["h1"].vnics == {"tap-web": None} and deltas["h2"].vnics["vnet7"] is not None
    assert s.hosts["h1"].vnics == {} and s.hosts["h1"].chains == {} and s.hosts["h1"].dispatch == {}
    assert s.hosts["h2"].dispatch[ip_address("10.0.0.1")] == identity_id(web.labels)
    assert s == compile_state(Inventory(HOSTS, (moved, *[g for g in c.guests if g.uuid != web.uuid])), WEB_TO_DB)


def test_stopped_guests_and_vnics_without_port() -> None:
    stopped = guest("off", "h1", {"zone": "db"}, "10.0.0.3", active=False)
    portless = guest("np", "h1", {"zone": "db"}, "10.0.0.4", port=None)
    web = guest("web", "h1", {"zone": "web"}, "10.0.0.1")
    s = compile_state(Inventory(HOSTS, (stopped, portless, web)), WEB_TO_DB)
    h1 = s.hosts["h1"]
    assert set(h1.vnics) == {"tap-web"} and set(h1.dispatch) == {ip_address("10.0.0.1")}
    db_sel = WEB_TO_DB[0].rules[0].destination.selector.digest  # type: ignore[union-attr]
    # the port-less guest still owns its address (others' rules match it); the stopped one does not
    assert h1.sets[db_sel] == frozenset({ip_address("10.0.0.4")})
    assert identity_id(stopped.labels) in s.identities  # same labels as the port-less one
    assert len(s.identities) == 2


def test_identity_chains_layout() -> None:
    ps = [policy("q", "quarantine", rule("fix", "allow", None, ["192.0.2.0/24"])),
          policy("plat", "platform", rule("hand-off", "pass", {"zone": "web"}), rule("no", "deny")),
          policy("app", "application", rule("ok", "allow", {"zone": "web"}))]
    ident = "x"
    chains = identity_chains(ps, Labels({"zone": "web"}), ident)
    assert set(chains) == {"eg-x", "eg-x-q", "eg-x-t2", "in-x", "in-x-q", "in-x-t2"}
    eg = chains["eg-x"].rules
    assert eg[0].verdict == "goto:eg-x-q" and eg[0].match.peer_set == QUARANTINE_SET
    assert [(r.policy, r.rule, r.verdict) for r in eg[1:]] == [
        ("q", "fix", "allow"), ("plat", "hand-off", "goto:eg-x-t2"), ("plat", "no", "deny"), ("app", "ok", "allow")]
    assert [(r.policy, r.rule) for r in chains["eg-x-t2"].rules] == [("app", "ok")]
    assert [r.rule for r in chains["eg-x-q"].rules] == ["fix"]
    # ingress: "fix" can be for us when our own address is in its `to` prefix: checked per packet
    assert [(r.rule, r.verdict) for r in chains["in-x"].rules[1:]] == [
        ("fix", "allow"), ("hand-off", "goto:in-x-t2"), ("no", "deny"), ("ok", "allow")]
    assert chains["in-x"].rules[1].match.self_cidrs == ps[0].rules[0].destination.networks  # type: ignore[union-attr]
    assert chains["eg-x"].rules[1].match.peer_cidrs == ps[0].rules[0].destination.networks  # type: ignore[union-attr]
    assert all(c.default == "deny" for c in chains.values())

    q = identity_chains(ps, Labels({"zone": "web", QUARANTINE_LABEL[0]: QUARANTINE_LABEL[1]}), "y")
    assert set(q) == {"eg-y", "in-y"} and [r.rule for r in q["eg-y"].rules] == ["fix"]
    assert [r.rule for r in q["in-y"].rules] == ["fix"]
    # a guest that no selector-side rule selects gets only the rules with `from` anything or a cidr
    other = identity_chains(ps, Labels({"zone": "db"}), "z")
    assert [r.rule for r in other["eg-z"].rules[1:]] == ["fix", "no"]


def test_lab_example_compiles_to_the_reference_verdicts() -> None:
    hosts, guests, policies, external = lab_example()
    state = compile_state(Inventory(hosts, guests), policies)
    assert state.conflicts == ()
    ends = [(Endpoint(g.addresses[0], g.labels, g.name), g.host) for g in guests]
    assert external is not None
    ends.append((Endpoint(external, None, "external"), None))
    probes = [parse_port(p) for p in ("tcp/80", "tcp/443", "tcp/5432", "udp/53", "tcp/53", "udp/161", "icmp")]
    verdicts = {}
    for src, sh in ends:
        for dst, dh in ends:
            if src is dst:
                continue
            for p in probes:
                want = decide(policies, src, dst, p.protocol, p.first)
                got = plan_interpreter.flow(state, src.address, sh, dst.address, dh, p.protocol, p.first)
                assert got.allowed == want.allowed, (str(src), str(dst), str(p), want, got)
                verdicts[(src.name, dst.name, str(p))] = want.allowed
    # a few verdicts that the example's comments promise
    assert verdicts[("lb1", "web1", "tcp/443")] and verdicts[("web1", "db1", "tcp/5432")]
    assert not verdicts[("web2", "db1", "tcp/5432")]  # dev never reaches the database
    assert verdicts[("external", "lb1", "icmp")] and not verdicts[("external", "web1", "tcp/80")]
    assert verdicts[("mon1", "db1", "udp/161")] and verdicts[("db1", "dns1", "udp/53")]
    assert not verdicts[("web1", "external", "tcp/80")] and verdicts[("db1", "external", "tcp/80")]
    assert sum(verdicts.values()) and not all(verdicts.values())


def test_a_tap_name_that_two_guests_claim_is_bound_to_neither_until_one_lets_go() -> None:
    # libvirt reuses vnetN: the next guest's start may be seen before the last one's stop.
    ps = [policy("p", "application", rule("all", "allow"))]
    old = guest("old", "h1", {"zone": "web"}, "10.0.0.1", port="vnet0")
    new = guest("new", "h1", {"zone": "db"}, "10.0.0.2", port="vnet0")
    for first, second in ((old, new), (new, old)):
        c = Compiler(HOSTS, ps)
        c.upsert_guest(first)
        c.upsert_guest(second)
        h1 = c.state().hosts["h1"]
        assert h1.vnics == {} and h1.dispatch == {}  # fail closed, whatever the order
        c.remove_guest(old.uuid)
        h1 = c.state().hosts["h1"]
        assert h1.vnics["vnet0"].guest == "new" and h1.dispatch == {ip_address("10.0.0.2"): identity_id(new.labels)}
        assert all(identity_id(old.labels) not in name for name in h1.chains)
    two_nics = Guest("g", "u", "h1", Labels(), (Interface.of("52:54:00:00:00:01", "vnet0", ["10.0.0.1"]),
                                                 Interface.of("52:54:00:00:00:02", "vnet0", ["10.0.0.2"])))
    c = Compiler(HOSTS, ps)
    c.upsert_guest(two_nics)
    assert c.state().hosts["h1"].vnics == {} and c.state().hosts["h1"].dispatch == {}
    c.remove_guest("u")
    assert c.state() == compile_state(Inventory(HOSTS, ()), ps)
