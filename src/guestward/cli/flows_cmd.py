"""`guestward stats` (per-rule counters from the real tables) and `guestward flows` (the drop log)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from guestward.cli.output import clean, line, text
from guestward.cli.policy_cmd import ConfigOpt, controller, fail, out
from guestward.compile.plan import identity_id
from guestward.dataplane.counters import RuleStat, by_rule, drops_by_reason
from guestward.dataplane.flowlog import FlowRecord
from guestward.enforce import EnforceError, NftRunner
from guestward.enforce.counters import read_tables
from guestward.model import Guest

VERDICTS = ("blocked", "allowed")


def identities_on(guests: list[Guest], host: str) -> dict[str, list[str]]:
    """identity id -> names of the running guests on `host` that have it (sorted)."""
    out_: dict[str, list[str]] = {}
    for g in guests:
        if g.active and host in g.hosts:
            out_.setdefault(identity_id(g.labels), []).append(g.name)
    return {k: sorted(v) for k, v in out_.items()}


def where(row: RuleStat, identities: dict[str, list[str]]) -> str:
    """Who a row's chain is for: the identity's guests and the direction, or the table's chain."""
    ident = row.identity
    if ident is None:
        return f"{row.family} {row.chain}"
    names = ",".join(identities.get(ident, [])) or f"identity {ident}"
    direction = "egress" if row.chain.startswith("eg-") else "ingress"
    return f"{names} {direction}{' (quarantine)' if row.chain.endswith('-q') else ''}"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def flow_line(r: FlowRecord) -> str:
    """One flow record as one line of text."""
    when = datetime.fromtimestamp(r.at).isoformat(timespec="milliseconds")
    src = f"{r.src}:{r.sport}" if r.sport is not None else f"{r.src}"
    dst = f"{r.dst}:{r.dport}" if r.dport is not None else f"{r.dst}"
    flags = f" [{r.tcpflags}]" if r.tcpflags else ""
    lost = f" ({r.lost} lost before)" if r.lost else ""
    mac = f" mac {r.mac}" if r.mac and r.reason == "spoof" else ""
    who = r.guest or f"port {r.port}" if r.port else (r.guest or "-")
    return (f"{when} {r.host} {r.verdict} {who} {r.direction or '-'} {r.proto or '-'} {src} -> {dst}{flags} "
            f"{r.reason} {r.rule} ({r.chain}){mac}{lost}")


def register(app: typer.Typer) -> None:
    @app.command()
    def stats(
        host: Annotated[list[str] | None, typer.Option("--host", help="only this host (repeatable)")] = None,
        guest: Annotated[str | None, typer.Option("--guest", help="only the chains of this guest's identity")] = None,
        as_json: Annotated[bool, typer.Option("--json")] = False,
        config: ConfigOpt = None,
    ) -> None:
        """Packets and bytes per rule (tier/policy/rule, default deny, spoofing, unknown vNIC, ...) as
        the kernel counted them, per host and per guest identity; how many drops were logged."""
        ctl = controller(config)
        names = {h.name for h in ctl.config.hosts}
        if unknown := [h for h in host or [] if h not in names]:
            raise fail(f"unknown host(s) {', '.join(unknown)}")
        guests = ctl.store.guests()
        wanted: Guest | None = None
        if guest is not None:
            wanted = next((g for g in guests if g.name == guest), None)
            if wanted is None:
                raise fail(f"no guest {guest!r} in the enforced inventory")
        result: dict[str, Any] = {}
        for h in ctl.config.hosts:
            if host and h.name not in host:
                continue
            if wanted is not None and h.name not in wanted.hosts:
                continue
            try:
                tables = read_tables(NftRunner(h.netns))
            except EnforceError as exc:
                raise fail(f"{h.name}: {exc}") from None
            identities = identities_on(guests, h.name)
            rows = by_rule(tables.counters)
            if wanted is not None:
                rows = [r for r in rows if r.identity == identity_id(wanted.labels)]
            result[h.name] = {
                "rules": tables.rules, "sets": tables.sets, "missing_tables": tables.missing,
                "drops": {k: {"packets": p, "bytes": b}
                          for k, (p, b) in sorted(drops_by_reason(tables.counters).items())},
                "counters": [{"family": r.family, "chain": r.chain, "identity": r.identity,
                              "guests": identities.get(r.identity, []) if r.identity else [],
                              "direction": None if r.identity is None else (
                                  "egress" if r.chain.startswith("eg-") else "ingress"),
                              "rule": r.label, "verdict": r.verdict, "reason": r.reason, "packets": r.packets,
                              "bytes": r.bytes, "logged": r.logged} for r in rows],
                "_rows": rows, "_identities": identities,
            }
        if as_json:
            print(json.dumps({h: {k: v for k, v in d.items() if not k.startswith("_")} for h, d in result.items()},
                             indent=1))
            return
        for h, d in result.items():
            drops = ", ".join(f"{k} {v['packets']}" for k, v in d["drops"].items()) or "none"
            missing = f" (tables missing: {', '.join(d['missing_tables'])})" if d["missing_tables"] else ""
            out.print(line(f"{h}: {d['rules']} rules, {d['sets']} sets{missing}; dropped packets by reason: {drops}"))
            table = Table("where", "rule", "verdict", "packets", "bytes", "logged")
            for r in d["_rows"]:
                table.add_row(text(where(r, d["_identities"])), text(r.label), text(r.verdict), str(r.packets),
                              _fmt_bytes(r.bytes), str(r.logged) if r.reason else "")
            out.print(table)

    @app.command()
    def flows(
        follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new records as they come")] = False,
        guest: Annotated[str | None, typer.Option("--guest", help="only this guest's")] = None,
        verdict: Annotated[str | None, typer.Option("--verdict", help="blocked (only drops are logged so far)")] = None,
        host: Annotated[str | None, typer.Option("--host", help="only this host's")] = None,
        limit: Annotated[int, typer.Option("--limit", help="the newest N records")] = 50,
        as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
        config: ConfigOpt = None,
    ) -> None:
        """The drop log: every dropped packet the agent's NFLOG readers recorded (rate-limited per guest),
        with the guest, direction, 5-tuple, reason and deciding rule; oldest first."""
        if verdict is not None and verdict not in VERDICTS:
            raise fail(f"--verdict takes {' or '.join(VERDICTS)}")
        ctl = controller(config)

        def show(rows: list[tuple[int, FlowRecord]]) -> int:
            last = 0
            for i, r in rows:
                print(json.dumps({"id": i, **r.as_dict()}) if as_json else clean(flow_line(r)), flush=True)
                last = i
            return last

        rows = ctl.store.flows(guest=guest, host=host, verdict=verdict, limit=limit)
        last = show(rows) or (rows[-1][0] if rows else 0)
        if not follow:
            return
        if not rows:  # start after everything already stored
            newest = ctl.store.flows(limit=1)
            last = newest[-1][0] if newest else 0
        try:
            while True:
                time.sleep(0.3)
                new = ctl.store.flows(guest=guest, host=host, verdict=verdict, after_id=last, limit=10_000)
                last = show(new) or last
        except KeyboardInterrupt:
            return
