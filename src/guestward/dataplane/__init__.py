"""Desired state as nftables values; render to one nft JSON transaction; diff against a read-back. Pure.

guestward owns two tables per host and nothing else:

`bridge guestward` (stateless guards on bridge ports; runs before br_netfilter's ip hooks)
  prerouting -300: `iifname vmap @ports-in`: a known vNIC goes to `src-guard` (its MAC, its declared
    addresses, ARP for them, ND through its own `nd-<hash>` chain (`@nd-ports`), no router adverts;
    marks the packet "from a local vNIC"), an uplink goes to `uplink-guard` (no source, ARP sender or
    ND target that is an address of a guest living on this host alone: `@own4`/`@own6`, `uplink-nd`),
    any other port is dropped (fail closed).
  forward -200: `oifname vmap @ports-out`: a packet to a known vNIC must be for one of its addresses
    (marked "to a local vNIC"), uplinks pass, unknown ports are dropped.
`inet guestward` (stateful policy, through br_netfilter's conntrack; TESTBED.md 4.1)
  forward/input 0: established/related pass when the connection's ct mark holds the current policy
    revision (revision.py), replies and related always; anything else is judged: a packet from a
    local vNIC goes through its identity's egress chain (`ip saddr vmap @eg4`); then every packet to
    a local guest's address goes through
    that receiver's ingress chain (`ip daddr vmap @in4`), whichever way it came (a local vNIC, an
    uplink, or routed by the host); both must allow, and the accept (chain `accepted`) writes the
    revision into the connection's mark. output 0: the host's own packets to a local guest get the
    same ingress chain. Identity chains reference one set per selector.

Every rule carries a counter (counters.py reads them back). Every drop rule is preceded by a log
rule with the same matches: `update @lim4-R-B { ip saddr limit rate R/second burst B packets }
counter log prefix "gw <reason> <chain> <label>" group N` (the limiter set is keyed on the guest's
address in the inet table and on its vNIC port in the bridge table; render.py `_drop`). nflog.py
parses what the kernel sends to a listener, flowlog.py turns it into flow records, nft_netlink.py
parses the kernel's rule dumps for fast counter reads.
"""

from guestward.dataplane.diff import diff_objects, replace_tables
from guestward.dataplane.objects import NftChain, NftObjects, NftSet
from guestward.dataplane.render import Settings, render_delta, render_plan

__all__ = [
    "NftChain",
    "NftObjects",
    "NftSet",
    "Settings",
    "diff_objects",
    "render_delta",
    "render_plan",
    "replace_tables",
]
