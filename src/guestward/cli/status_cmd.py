"""`guestward status`: what guestward enforces now, host by host and guest by guest, and what it cannot.

Read-only: it reads libvirt and each host's tables, compiles what a sync would enforce, and changes
nothing. Per host: whether its libvirtd answered (else the error) and whether its tables hold that
plan (else how many nft commands a sync would need, or why they could not be read). Per guest: host,
state, vNICs (port, MAC, addresses, bound or not) and the refusal, when guestward refuses it
(`Guest.refusal`: it gets no traffic). Exit status: 0 when every host is reachable and enforced and
no guest is refused, 1 when something is reported, 2 on an error of the command itself.

Everything shown that came from a domain XML is escaped to printable text first: a guest's name or
port can hold any character, and a terminal or a log must not act on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from guestward.cli.output import clean
from guestward.cli.policy_cmd import ConfigOpt, controller, err, out
from guestward.compile import compile_state
from guestward.dataplane import diff_objects, render_plan
from guestward.model import Guest
from guestward.reconcile.controller import Controller


@dataclass
class HostStatus:
    name: str
    reachable: bool
    error: str | None = None  # why libvirt did not answer
    enforced: bool | None = None  # None: the tables could not be read
    differences: int | None = None  # nft commands a sync would run
    enforce_error: str | None = None
    bound: set[str] = field(default_factory=set)


def printable(text: object, limit: int = 200) -> str:
    """`text` as `cli/output.clean` shows it (every control, format or undecodable character as a
    visible escape), cut at `limit` characters."""
    s = clean(text)
    return s if len(s) <= limit else s[:limit] + "..."


def host_status(ctl: Controller, plans: dict[str, Any]) -> list[HostStatus]:
    hosts = []
    for h in ctl.config.hosts:
        st = HostStatus(h.name, h.name not in ctl.unreachable, ctl.unreachable_errors.get(h.name))
        try:
            enforcer = ctl.enforcer(h.name)
            current, missing = enforcer.read()
            n = len(diff_objects(current, render_plan(plans[h.name], enforcer.settings))) + len(missing)
            st.enforced, st.differences, st.bound = n == 0, n, current.bound_ports()
        except Exception as exc:  # a gone namespace, nft failing: this host only
            st.enforce_error = printable(str(exc) or type(exc).__name__, 500)
        hosts.append(st)
    return hosts


def guest_state(g: Guest) -> str:
    if not g.active:
        return "defined"
    return "running" + (f" (also on {', '.join(g.also_on)})" if g.also_on else "")


def guest_rows(guests: list[Guest], hosts: list[HostStatus]) -> list[dict[str, Any]]:
    bound = {h.name: h.bound for h in hosts}
    rows = []
    for g in sorted(guests, key=lambda g: (g.host, g.name, g.uuid)):
        vnics = [{"mac": nic.mac, "port": None if nic.port is None else printable(nic.port, 32),
                  "addresses": [str(a) for a in nic.addresses],
                  "refused": [{"address": str(a), "reason": printable(r, 200)} for a, r in nic.refused],
                  "bound": g.active and nic.port is not None and nic.port in bound.get(g.host, set())}
                 for nic in g.interfaces]
        rows.append({"name": printable(g.name, 100), "uuid": printable(g.uuid, 64), "host": g.host,
                     "state": guest_state(g), "quarantined": g.labels.quarantined, "vnics": vnics,
                     "refusal": None if g.refusal is None else printable(g.refusal, 1200)})
    return rows


def register(app: typer.Typer) -> None:
    @app.command()
    def status(as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False,
               config: ConfigOpt = None) -> None:
        """Hosts (reachable, enforced, or the error) and guests (host, state, quarantine, vNICs, the
        refusal of the guest or of its addresses): what
        guestward enforces now and what it cannot. Exit 1 when anything needs attention."""
        ctl = controller(config)
        inventory = ctl.inventory()
        state = compile_state(inventory, ctl.policies())
        hosts = host_status(ctl, state.hosts)
        guests = guest_rows(list(inventory.guests), hosts)
        problems = (any(not h.reachable or not h.enforced for h in hosts) or any(g["refusal"] for g in guests)
                    or any(n["refused"] for g in guests for n in g["vnics"]))
        if as_json:
            print(json.dumps({"hosts": [{"name": h.name, "reachable": h.reachable, "error": h.error,
                                         "enforced": h.enforced, "differences": h.differences,
                                         "enforce_error": h.enforce_error} for h in hosts],
                              "guests": guests, "conflicts": [printable(c, 500) for c in state.conflicts]},
                             indent=2))
            raise typer.Exit(1 if problems else 0)
        table = Table("host", "libvirt", "tables", box=None)
        for h in hosts:
            tables = ("enforced" if h.enforced else f"{h.differences} difference(s): run `guestward sync`"
                      if h.enforced is False else f"error: {h.enforce_error}")
            table.add_row(escape(h.name), "reachable" if h.reachable else f"unreachable: {escape(h.error or '')}",
                          escape(tables))
        out.print(table)
        table = Table("guest", "host", "state", "vNICs", "refused", box=None)
        for g in guests:
            nics = ", ".join(f"{n['port'] or '-'} {n['mac']}{' bound' if n['bound'] else ''}" for n in g["vnics"])
            refused = [f"address {r['address']} ({r['reason']})" for n in g["vnics"] for r in n["refused"]]
            shown = g["state"] + (", quarantined" if g["quarantined"] else "")
            table.add_row(escape(g["name"]), escape(g["host"]), shown, escape(nics) or "-",
                          escape("; ".join(([g["refusal"]] if g["refusal"] else []) + refused) or "-"))
        out.print(table)
        for c in state.conflicts:
            err.print(f"[yellow]conflict:[/] {escape(printable(c, 500))}", highlight=False)
        raise typer.Exit(1 if problems else 0)
