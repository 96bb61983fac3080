"""What the policy revision in the ct mark costs established packets (dataplane/revision.py).

Side by side, interleaved rounds, the data_plane.py topology (two guest netns on a bridge, the 1k-guest
synthetic fleet's state, guests 0 -> 1 allowed):
- `none`: no tables;
- `before`: guestward's tables with the inet fast accept as it was: `ct state established,related accept`;
- `after`: guestward's tables as rendered now: established/related *and* ct mark revision current, then
  replies, then related, then the policy.
Metrics: iperf3 UDP 64 B received pkt/s (client CPU 0, server CPU 1), ping RTT (established).

Usage: .venv/bin/python bench/ct_revision.py [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from common import median, summary, table, write_result
from data_plane import RUN_DIR, _servers, guest_end, ping_rtt, udp_pps
from netns import make_testbed, remove_all, remove_run_dir, remove_testbed
from workload import Shape, host_name, make_guests, make_hosts, make_policies

from guestward.compile import compile_state
from guestward.dataplane import NftObjects, render_plan, replace_tables
from guestward.dataplane.render import COUNTER, _m, _rule
from guestward.enforce import NftRunner
from guestward.model import Inventory

NS_PREFIX = "gwb-ctrev-"
GUESTS = 1_000


def before(objects: NftObjects) -> NftObjects:
    """The same tables with the old fast accept in forward (what every established packet met)."""
    old = _rule("forward: replies and related", _m({"ct": {"key": "state"}}, ["established", "related"], "in"),
                COUNTER, {"accept": None})
    chain = objects.chains[("inet", "forward")]
    objects.chains[("inet", "forward")] = replace(chain, rules=(old, *chain.rules[3:]))
    return objects


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=2)
    args = ap.parse_args(argv)
    remove_all(NS_PREFIX)
    shape = Shape(GUESTS, hosts=1)
    state = compile_state(Inventory(make_hosts(shape), tuple(make_guests(shape))), make_policies(shape))
    plan = state.hosts[host_name(0)]
    a, b = guest_end(0, shape), guest_end(1, shape)
    beds = {}
    samples: dict[str, list[dict[str, float]]] = {}
    try:
        for name in ("none", "before", "after"):
            beds[name] = make_testbed(f"ctrev-{name}", a, b)
            samples[name] = []
        for name, objects in (("before", before(render_plan(plan))), ("after", render_plan(plan))):
            NftRunner(beds[name].host).run_json(replace_tables(objects))
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        with _servers(beds):
            for r in range(args.rounds):
                names = list(beds)
                for name in names[r % 3:] + names[:r % 3]:
                    pps = udp_pps(beds[name], args.seconds, "0,1")
                    rtt = ping_rtt(beds[name])
                    samples[name].append({"round": r, "pps": pps, "rtt_ms": rtt["avg_ms"],
                                          "received": rtt["received"]})
                    print(f"  round {r} {name:7s} {pps:9.0f} pkt/s  rtt {rtt['avg_ms']:.3f} ms", flush=True)
    finally:
        for tb in beds.values():
            remove_testbed(tb)
        remove_all(NS_PREFIX)
        remove_run_dir(RUN_DIR)
    res: dict[str, Any] = {"configs": {}}
    rows = []
    for name, rs in samples.items():
        base = {s["round"]: s for s in samples["before"]}
        vs = median([s["pps"] / base[s["round"]]["pps"] for s in rs])
        res["configs"][name] = {"pps": summary([s["pps"] for s in rs]), "rtt_ms": summary([s["rtt_ms"] for s in rs]),
                                "pps_vs_before": vs}
        rows.append([name, median([s["pps"] for s in rs]), vs, median([s["rtt_ms"] for s in rs]) * 1e3])
    print(table(["config", "pps median", "/ before", "RTT us"], rows))
    print(f"written: {write_result('ct_revision', res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
