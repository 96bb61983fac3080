"""Prometheus metrics of the agent, read at scrape time (a custom collector: nothing is threaded
through the code; every value comes from the kernel's tables or the store when Prometheus asks).

Per host: `guestward_rules`, `guestward_sets` (in our tables, as the kernel holds them),
`guestward_guests` (running guests bound there, from the snapshot), `guestward_dropped_packets_total`
and `guestward_dropped_bytes_total` by reason, `guestward_logged_drops_total` by reason (what the
per-guest rate let through to the drop log), `guestward_drift_repairs_total` (`drift` events),
`guestward_conntrack_entries_moved_total` (the `moved` of `conntrack` events), `guestward_host_up`
(1 when its tables could be read). Global: `guestward_enforcement_latency_seconds` (histogram of
the agent's reconciles and the hook's runs, from their recorded `ms`), and the drop log's own
`guestward_flow_records_total` / `guestward_flow_log_lost_total` when a FlowLog is given.

Kernel counters restart at 0 when a chain is rewritten; Prometheus' counter semantics absorb that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from guestward.dataplane.counters import drops_by_reason
from guestward.enforce import NftRunner
from guestward.enforce.counters import HostTables, read_tables
from guestward.reconcile.flowlog import FlowLog
from guestward.store.sqlite import Store

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GuestwardCollector:
    def __init__(self, runners: dict[str, NftRunner], store_path: Path, flowlog: FlowLog | None = None,
                 read: Callable[[NftRunner], HostTables] = read_tables) -> None:
        self.runners = runners
        self.store_path = store_path
        self.flowlog = flowlog
        self.read = read

    def collect(self) -> Iterator[Metric]:
        rules = GaugeMetricFamily("guestward_rules", "nft rules in guestward's tables", labels=["host"])
        sets = GaugeMetricFamily("guestward_sets", "sets and maps in guestward's tables", labels=["host"])
        up = GaugeMetricFamily("guestward_host_up", "1 when the host's tables could be read", labels=["host"])
        dropped = CounterMetricFamily("guestward_dropped_packets", "packets dropped, by reason",
                                      labels=["host", "reason"])
        dropped_bytes = CounterMetricFamily("guestward_dropped_bytes", "bytes dropped, by reason",
                                            labels=["host", "reason"])
        logged = CounterMetricFamily("guestward_logged_drops", "drops logged (under the per-guest rate), by reason",
                                     labels=["host", "reason"])
        for host, runner in sorted(self.runners.items()):
            try:
                tables = self.read(runner)
            except Exception as exc:  # one unreadable host must not hide the others
                log.warning("%s: metrics: cannot read tables: %s", host, exc)
                up.add_metric([host], 0)
                continue
            up.add_metric([host], 1)
            rules.add_metric([host], tables.rules)
            sets.add_metric([host], tables.sets)
            for reason, (p, b) in sorted(drops_by_reason(tables.counters).items()):
                dropped.add_metric([host, reason], p)
                dropped_bytes.add_metric([host, reason], b)
            per_reason: dict[str, int] = {}
            for c in tables.counters:
                if c.logged and c.reason is not None:
                    per_reason[c.reason] = per_reason.get(c.reason, 0) + c.packets
            for reason, n in sorted(per_reason.items()):
                logged.add_metric([host, reason], n)
        yield from (rules, sets, up, dropped, dropped_bytes, logged)
        yield from self._from_store()
        if self.flowlog is not None:
            records = CounterMetricFamily("guestward_flow_records", "flow records stored by this agent")
            records.add_metric([], self.flowlog.stored)
            lost = CounterMetricFamily("guestward_flow_log_lost", "logged drops the reader lost (sequence gaps)",
                                       labels=["host"])
            for host in sorted(self.runners):
                lost.add_metric([host], self.flowlog.lost.get(host, 0))
            yield from (records, lost)

    def _from_store(self) -> Iterator[Metric]:
        store = Store(self.store_path)  # per scrape: the HTTP thread's own connection
        try:
            guests = GaugeMetricFamily("guestward_guests", "running guests bound on the host (snapshot)",
                                       labels=["host"])
            counts = dict.fromkeys(self.runners, 0)
            for g in store.guests():
                for h in g.hosts if g.active else ():
                    if h in counts:
                        counts[h] += 1
            for h, n in sorted(counts.items()):
                guests.add_metric([h], n)
            drift = CounterMetricFamily("guestward_drift_repairs", "repairs of tables someone else changed",
                                        labels=["host"])
            for h, n in sorted(store.event_counts("drift").items()):
                drift.add_metric([h], n)
            moved = CounterMetricFamily("guestward_conntrack_entries_moved", "conntrack entries moved to the host",
                                        labels=["host"])
            for h, n in sorted(store.event_counts("conntrack", "moved").items()):
                moved.add_metric([h], n)
            latency = HistogramMetricFamily("guestward_enforcement_latency_seconds",
                                            "from a change seen to its enforcement (agent) / a hook run",
                                            labels=["source"])
            for source, kind in (("agent", "reconcile"), ("hook", "hook")):
                values = [ms / 1000 for ms in store.event_values(kind, "ms")]
                buckets = [(str(b), float(sum(v <= b for v in values))) for b in LATENCY_BUCKETS]
                buckets.append(("+Inf", float(len(values))))
                latency.add_metric([source], buckets, sum_value=sum(values))
            yield from (guests, drift, moved, latency)
        finally:
            store.close()


def parse_listen(text: str) -> tuple[str, int] | None:
    """`ADDR:PORT` -> (addr, port); `off` -> None. Raises ValueError otherwise."""
    if text.strip().lower() == "off":
        return None
    addr, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics takes ADDR:PORT or off, not {text!r}")
    return addr.strip("[]") or "127.0.0.1", int(port)


def serve(collector: GuestwardCollector, listen: tuple[str, int]) -> CollectorRegistry:
    """Serve the collector's metrics over HTTP on `listen` (a daemon thread). Raises OSError when the
    address cannot be bound."""
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    start_http_server(listen[1], addr=listen[0], registry=registry)
    return registry
