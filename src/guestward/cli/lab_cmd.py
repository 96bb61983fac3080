"""`guestward lab`: the real test bed (POLICY.md section 4)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from guestward.cli.output import Own, clean, console, error_line, line, text
from guestward.cli.policy_cmd import FlowJudge
from guestward.lab.lab import Flow, Lab, LabError
from guestward.policy import PolicyError, parse_port

app = typer.Typer(help="Real libvirt hosts and QEMU guests on this machine, to try policy with real packets.",
                  no_args_is_help=True)
out = console()  # a pipe or CI log gets full tables
err = console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err.print(error_line(message))
    return typer.Exit(2)


@app.command()
def up(
    file: Annotated[Path, typer.Option("-f", "--file", help="scenario file")],
    policy: Annotated[Path | None, typer.Option("--policy", help="policy file or directory")] = None,
) -> None:
    """Start the hosts, boot every guest (QEMU/TCG), and enforce the policy on every host."""
    lab = Lab()
    try:
        with out.status("bringing up the lab (hosts, guests, policy)..."):
            lab.up(file, policy)
    except PolicyError as exc:
        for d in exc.diagnostics:
            print(clean(d), file=sys.stderr)  # never wrapped: file:line: message
        raise typer.Exit(2) from None
    except (LabError, ValueError, OSError, RuntimeError) as exc:
        err.print(line(Own("[red]lab up failed:[/] "), exc))
        if lab.is_up:
            err.print("the partial lab is left for inspection; `guestward lab down` removes it")
        raise typer.Exit(2) from None
    sc = lab.scenario()
    out.print(f"lab up: {len(sc.hosts)} hosts, {len(sc.guests)} guests running, policy enforced")


@app.command()
def down() -> None:
    """Stop everything the lab started and remove what it made."""
    Lab().down()
    out.print("lab down")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Hosts and guests of the running lab."""
    lab = Lab()
    try:
        st = lab.status()
    except LabError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps(st, indent=1))
        return
    t = Table(title=text(f"lab in {st['dir']}"))
    for c in ("guest", "host", "address", "labels", "listens on", "vNIC"):
        t.add_column(c)
    for g in st["guests"]:
        t.add_row(text(g["name"]), text(g["host"]), text(g["address"]),
                  text(", ".join(f"{k}={v}" for k, v in g["labels"].items())), text(" ".join(map(str, g["listen"]))),
                  text(g["tap"]))
    out.print(t)
    hosts = ", ".join(f"{h['name']} ({h['address']})" for h in st["hosts"])
    out.print(line(f"hosts: {hosts}; external: {st['external'] or '-'}"))


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(guest: str, command: Annotated[list[str], typer.Argument(help="command (after --)")]) -> None:
    """Run a command inside a guest; its output and exit status are the command's."""
    try:
        result = Lab().exec(guest, command)
    except (LabError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    print(result.output, end="")
    raise typer.Exit(result.status)


@app.command()
def probe(
    src: Annotated[str | None, typer.Argument()] = None,
    dst: Annotated[str | None, typer.Argument()] = None,
    port: Annotated[str | None, typer.Argument(metavar="PROTO/PORT")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every pair, every port the destination listens on")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send real packets from SRC to DST and report whether they got through."""
    lab = Lab()
    try:
        if all_:
            flows = lab.all_flows()
        else:
            if not (src and dst and port):
                raise _fail("give SRC DST PROTO/PORT, or --all")
            flow_port = parse_port(port)
            if flow_port.protocol == "any" or flow_port.first != flow_port.last:
                raise _fail("a probe is one flow: tcp/PORT, udp/PORT or icmp")
            flows = [Flow(src, dst, flow_port)]
        results = lab.probe(flows)
    except (LabError, ValueError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    if not all_:
        (f, ok), = results.items()
        print(json.dumps({"src": f.src, "dst": f.dst, "port": str(f.port), "verdict": _verdict(ok)})
              if as_json else clean(f"{f}: {_verdict(ok)}"))
        raise typer.Exit(0 if ok else 1)
    judge = FlowJudge(lab.controller())
    compiled = {f: judge.decide(f.src, f.dst, f.port).allowed for f in results}
    if as_json:
        print(json.dumps([{"src": f.src, "dst": f.dst, "port": str(f.port), "verdict": _verdict(ok),
                           "explain": _verdict(compiled[f])} for f, ok in results.items()], indent=1))
    else:
        _matrix(results, compiled)


def _verdict(allowed: bool) -> str:
    return "allowed" if allowed else "blocked"


def _matrix(results: dict[Flow, bool], compiled: dict[Flow, bool]) -> None:
    ends = sorted({f.src for f in results} | {f.dst for f in results}, key=lambda e: (e == "external", e))
    t = Table(title="measured with real packets (rows: from, columns: to; green = echo came back)",
              show_lines=True)
    t.add_column("from \\ to", style="bold")
    for d in ends:
        t.add_column(text(d))
    for s in ends:
        cells = []
        for d in ends:
            flows = sorted((f for f in results if f.src == s and f.dst == d), key=lambda f: str(f.port))
            cells.append(Text("\n").join(_cell(f, results[f], compiled[f]) for f in flows) if flows
                         else Text("·", "dim"))
        t.add_row(text(s), *cells)
    out.print(t)
    allowed = sum(results.values())
    out.print(f"{len(results)} flows probed: {allowed} allowed, {len(results) - allowed} blocked")
    disagree = [f for f in results if results[f] != compiled[f]]
    if disagree:
        out.print(line(Own(f"[red]{len(disagree)} flow(s) disagree with compiled policy (marked !):[/] "),
                       ", ".join(f"{f}: measured {_verdict(results[f])}" for f in disagree)))
    else:
        out.print(f"all {len(results)} agree with compiled policy (`guestward explain`)")


def _cell(flow: Flow, measured: bool, compiled: bool) -> Text:
    cell = text(f"✓ {flow.port}", "green") if measured else text(f"✗ {flow.port}", "red")
    return cell + (Text("") if measured == compiled else Text(" ") + Text("!", "bold red"))


@app.command()
def migrate(guest: str, host: str) -> None:
    """Live-migrate a running guest to HOST with its open connections; its policy is enforced there
    before it resumes."""
    try:
        stats = Lab().migrate(guest, host)
    except (LabError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    detail = ", ".join(f"{k.replace('_', ' ')} {v}" + ("" if k.startswith("conntrack") else " ms")
                       for k, v in stats.items())
    out.print(line(f"{guest} migrated to {host}" + (f" ({detail})" if detail else "")))


@app.command()
def clone(guest: str, new: str, host: Annotated[str | None, typer.Option("--host")] = None) -> None:
    """Copy GUEST as NEW (new UUID, MAC, vNIC and address; the same labels) and boot it."""
    try:
        spec = Lab().clone(guest, new, host)
    except (LabError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    out.print(line(f"{new} cloned from {guest} on {spec.host}, address {spec.address}"))


@app.command()
def stop(guest: str) -> None:
    """Stop (destroy) a running guest; its definition stays."""
    try:
        Lab().stop(guest)
    except (LabError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    out.print(line(f"{guest} stopped"))


@app.command()
def start(guest: str) -> None:
    """Boot a stopped guest where it is defined."""
    try:
        Lab().start(guest)
    except (LabError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    out.print(line(f"{guest} started"))
