"""The reference verdict of a flow (POLICY.md 2.3 and 2.5)."""

from __future__ import annotations

import random

from guestward.compile import decide
from guestward.model import QUARANTINE_LABEL, Expression, Operator
from guestward.policy import Policy
from tests.compile.builders import guest_end, outside, policy, rule, sel

WEB = guest_end("10.0.0.1", zone="web", env="prod")
DB = guest_end("10.0.0.2", zone="db", env="prod")
DEV = guest_end("10.0.0.3", zone="web", env="dev")
QWEB = guest_end("10.0.0.4", zone="web", **{QUARANTINE_LABEL[0]: QUARANTINE_LABEL[1]})
EXT = outside("192.0.2.7")


def verdict(policies: list[Policy], src: object, dst: object, proto: str = "tcp", port: int = 5432) -> tuple:
    d = decide(policies, src, dst, proto, port)  # type: ignore[arg-type]
    return d.allowed, d.tier, d.policy, d.rule


def in_every_order(policies: list[Policy], src: object, dst: object, proto: str = "tcp", port: int = 5432) -> tuple:
    """The verdict, checked to be the same whatever order the policies are given in."""
    first = verdict(policies, src, dst, proto, port)
    for seed in range(6):
        shuffled = policies[:]
        random.Random(seed).shuffle(shuffled)
        assert verdict(shuffled, src, dst, proto, port) == first
    return first


def test_no_policy_is_default_deny() -> None:
    d = decide([], WEB, DB, "tcp", 5432)
    assert not d.allowed and d.rule is None and "default deny" in d.reason and d.explain() == d.reason


def test_tiers_in_order() -> None:
    ps = [policy("late", "baseline", rule("deny-all", "deny")),
          policy("app", "application", rule("allow-db", "allow", {"zone": "web"}, {"zone": "db"})),
          policy("plat", "platform", rule("no-db", "deny", None, {"zone": "db"})),
          policy("q", "quarantine", rule("nothing", "deny", {"zone": "nope"}))]
    assert in_every_order(ps, WEB, DB) == (False, "platform", "plat", "no-db")
    assert in_every_order(ps[:2], WEB, DB) == (True, "application", "app", "allow-db")
    assert in_every_order([ps[0]], WEB, DB) == (False, "baseline", "late", "deny-all")
    assert decide([ps[0]], WEB, DB, "tcp", 1).explain() == "denied by tier baseline, policy late, rule deny-all"


def test_within_a_tier_order_then_name() -> None:
    allow = rule("r", "allow")
    deny = rule("r", "deny")
    assert in_every_order([policy("b", "platform", allow, order=5), policy("a", "platform", deny, order=10)],
                          WEB, DB)[:3] == (True, "platform", "b")
    assert in_every_order([policy("b", "platform", allow), policy("a", "platform", deny)], WEB, DB)[:3] == (
        False, "platform", "a")
    assert in_every_order([policy("a", "platform", allow), policy("b", "platform", deny)], WEB, DB)[:3] == (
        True, "platform", "a")
    # order beats name, and a lower order in a later tier does not jump the tier
    assert in_every_order([policy("z", "application", allow, order=0), policy("a", "platform", deny, order=999)],
                          WEB, DB)[:3] == (False, "platform", "a")


def test_first_matching_rule_wins_in_written_order() -> None:
    p = policy("p", "application",
               rule("other-port", "deny", ports=("tcp/80",)),
               rule("first", "allow", {"zone": "web"}, ports=("tcp/5432",)),
               rule("second", "deny", {"zone": "web"}))
    assert verdict([p], WEB, DB) == (True, "application", "p", "first")
    assert verdict([p], WEB, DB, "tcp", 80) == (False, "application", "p", "other-port")
    assert verdict([p], WEB, DB, "udp", 5432) == (False, "application", "p", "second")
    assert verdict([p], DB, WEB) == (False, None, None, None)


def test_pass_skips_the_rest_of_its_tier_only() -> None:
    ps = [policy("a-pass", "platform", rule("hand-off", "pass", {"zone": "web"}), rule("never", "deny"), order=1),
          policy("b-deny", "platform", rule("skipped", "deny"), order=2),
          policy("app", "application", rule("allow", "allow", {"zone": "web"}, {"zone": "db"}))]
    assert in_every_order(ps, WEB, DB) == (True, "application", "app", "allow")
    # a guest the pass does not select is decided in the tier as usual
    assert in_every_order(ps, DB, WEB) == (False, "platform", "a-pass", "never")
    # a pass with nothing after it: default deny
    d = decide(ps[:2], WEB, DB, "tcp", 5432)
    assert not d.allowed and d.rule is None and "default deny" in d.reason
    # rules before the pass still decide first
    early = policy("a-pass", "platform", rule("early", "deny", None, {"zone": "db"}), rule("hand-off", "pass"), order=1)
    assert in_every_order([early, *ps[1:]], WEB, DB) == (False, "platform", "a-pass", "early")


def test_pass_in_every_tier_falls_through_to_baseline_then_deny() -> None:
    ps = [policy(t, t, rule("p", "pass")) for t in ("quarantine", "platform", "application")]
    assert not decide(ps, WEB, DB, "tcp", 1).allowed
    assert verdict([*ps, policy("base", "baseline", rule("ok", "allow"))], WEB, DB) == (True, "baseline", "base", "ok")


def test_quarantined_guest_at_either_end_sees_only_the_quarantine_tier() -> None:
    ps = [policy("plat", "platform", rule("all", "allow")),
          policy("q", "quarantine", rule("to-db", "allow", None, {"zone": "db"}, ("tcp/5432",)),
                 rule("hand-off", "pass", None, {"zone": "web"}))]
    assert verdict(ps, QWEB, DB) == (True, "quarantine", "q", "to-db")
    assert not decide(ps, QWEB, DB, "tcp", 22).allowed
    assert "quarantined" in decide(ps, QWEB, DB, "tcp", 22).reason
    assert not decide(ps, DB, QWEB, "tcp", 5432).allowed  # to a quarantined guest: only the quarantine tier
    assert not decide(ps, EXT, QWEB, "tcp", 80).allowed
    assert not decide(ps, QWEB, EXT, "tcp", 80).allowed
    # a pass in the quarantine tier does not reach the platform allow for a quarantined guest
    assert not decide(ps, QWEB, WEB, "tcp", 80).allowed
    # ... but does for everyone else
    assert verdict(ps, DB, WEB, "tcp", 80) == (True, "platform", "plat", "all")
    # the quarantine tier applies to every flow, first
    assert verdict(ps, WEB, DB) == (True, "quarantine", "q", "to-db")


def test_quarantine_label_must_be_exactly_true() -> None:
    almost = guest_end("10.0.0.9", zone="web", **{QUARANTINE_LABEL[0]: "yes"})
    ps = [policy("plat", "platform", rule("all", "allow"))]
    assert decide(ps, almost, DB, "tcp", 1).allowed


def test_cidr_peers() -> None:
    ps = [policy("p", "application",
                 rule("admins-in", "allow", ["192.0.2.0/24", "2001:db8::/32"], {"zone": "web"}, ("tcp/22",)),
                 rule("web-out", "allow", {"zone": "web"}, ["198.51.100.0/24"]),
                 rule("lan", "allow", ["10.0.0.0/30"], ["10.0.0.0/30"], ("udp/53",)))]
    assert decide(ps, EXT, WEB, "tcp", 22).allowed
    assert not decide(ps, outside("192.0.3.1"), WEB, "tcp", 22).allowed
    assert decide(ps, outside("2001:db8::5"), guest_end("fd00::1", zone="web"), "tcp", 22).allowed
    assert not decide(ps, outside("2001:db9::5"), guest_end("fd00::1", zone="web"), "tcp", 22).allowed
    assert not decide(ps, EXT, DB, "tcp", 22).allowed
    assert decide(ps, WEB, outside("198.51.100.200"), "udp", 9).allowed
    assert not decide(ps, DB, outside("198.51.100.200"), "udp", 9).allowed
    # a cidr matches managed guests' addresses too, whatever their labels
    assert decide(ps, WEB, DB, "udp", 53).allowed and decide(ps, DEV, DB, "udp", 53).allowed
    assert not decide(ps, WEB, guest_end("10.0.0.5", zone="db"), "udp", 53).allowed
    # an IPv4 prefix never matches an IPv6 address
    v4_mapped = outside("::ffff:192.0.2.7")
    assert not decide(ps, v4_mapped, WEB, "tcp", 22).allowed


def test_guest_selectors_never_match_outside_addresses() -> None:
    ps = [policy("p", "application", rule("any-guest", "allow", {}, {}))]
    assert decide(ps, WEB, DB, "tcp", 1).allowed
    assert not decide(ps, EXT, DB, "tcp", 1).allowed and not decide(ps, WEB, EXT, "tcp", 1).allowed
    anything = [policy("p", "application", rule("anything", "allow"))]
    assert decide(anything, EXT, DB, "tcp", 1).allowed and decide(anything, WEB, EXT, "icmp").allowed


def test_match_expressions_in_peers() -> None:
    ps = [policy("p", "application", rule("prod-web", "allow",
                                          sel({"zone": "web"}, Expression("env", Operator.NOT_IN, ("dev",))),
                                          sel({}, Expression("zone", Operator.IN, ("db", "cache")))))]
    assert decide(ps, WEB, DB, "tcp", 1).allowed
    assert not decide(ps, DEV, DB, "tcp", 1).allowed
    assert decide(ps, guest_end("10.0.0.8", zone="web"), DB, "tcp", 1).allowed  # NotIn: key missing is fine


def test_ports_and_protocols() -> None:
    p = [policy("p", "application", rule("svc", "allow", ports=("tcp/8000-8080", "udp/53", "icmp")))]
    cases = [(("tcp", 8000), True), (("tcp", 8080), True), (("tcp", 7999), False), (("tcp", 8081), False),
             (("udp", 53), True), (("tcp", 53), False), (("udp", 8000), False), (("icmp", 0), True),
             (("icmpv6", 0), False)]
    for (proto, port), ok in cases:
        assert decide(p, WEB, DB, proto, port).allowed == ok, (proto, port)
    anyp = [policy("p", "application", rule("any", "allow", ports=("any",)))]
    assert all(decide(anyp, WEB, DB, proto, 7).allowed for proto in ("tcp", "udp", "icmp", "icmpv6"))
    omitted = [policy("p", "application", rule("all", "allow"))]
    assert all(decide(omitted, WEB, DB, proto, 7).allowed for proto in ("tcp", "udp", "icmp", "icmpv6"))
